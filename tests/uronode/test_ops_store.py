"""What a stop or a dead process leaves on disk is cleaned up: instance files nothing indexes at start-up
(probe10, section 9), and a receiving process's open associations and temporary files when it dies while the
node goes on (section 8)."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import query
from tests.peers.processes import Node, echoscu, wait_until
from tests.uronode.test_store import encoded, put
from uronode.store import ORPHAN_AGE_S, Store


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_the_start_up_recovery_removes_old_instance_files_nothing_indexes(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    put(store, encoded(0, series="1.2.3.4"))
    (kept,) = store.series_instances("1.2.3.4")
    age(kept.path, 10 * ORPHAN_AGE_S)  # indexed: kept however old
    series_folder = kept.path.parent
    orphan = series_folder / f"{kept.header.sop_instance_uid}-0123456789ab.dcm"  # renamed, never committed
    orphan.write_bytes(b"not acknowledged")
    age(orphan, 2 * ORPHAN_AGE_S)
    young = series_folder / "1.2.3.4.99-0123456789ab.dcm"  # may be being written: kept
    young.write_bytes(b"in flight")
    lone = store.instances_dir / "1.2.9" / "1.2.9.1"  # a series whose only file nothing indexes
    lone.mkdir(parents=True)
    (lone / "1.2.9.1.1-0123456789ab.dcm").write_bytes(b"left by a cut-off retention pass")
    (lone / ".metadata.json").write_text("{}")
    age(lone / "1.2.9.1.1-0123456789ab.dcm", 2 * ORPHAN_AGE_S)

    store.recover()

    assert kept.path.exists() and young.exists() and not orphan.exists()
    assert not (store.instances_dir / "1.2.9").exists()
    assert store.remove_orphans() == 0


def receiving_pids(node: Node) -> list[int]:
    assert node.proc is not None
    pid = node.proc.popen.pid
    children = [c for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_a_dead_receiving_process_s_associations_and_temporary_files_are_cleaned_up(
    start_node: Callable[..., Node]
) -> None:
    node = start_node(URONODE_SCP__PROCESSES="1")  # no worker: the only spawned child receives
    (pid,) = receiving_pids(node)
    index = node.data_dir / "index.sqlite3"
    conn = sqlite3.connect(index, isolation_level=None)
    try:  # an association it held open, as one cut off by its death
        conn.execute("INSERT INTO associations (calling_ae, peer_host, pid, started_at) VALUES ('CT', 'h', ?, ?)",
                     (pid, time.time()))
    finally:
        conn.close()
    spare = node.data_dir / "tmp" / f"{pid}-1-0.part"
    spare.write_bytes(b"")
    os.kill(pid, signal.SIGKILL)

    def cleaned() -> bool:
        rows = query(node.data_dir, "SELECT outcome FROM associations WHERE pid = ?", pid)
        return [r["outcome"] for r in rows] == ["lost"] and not spare.exists()

    wait_until(cleaned, 120, "the dead process's association to be closed and its spare removed")
    wait_until(lambda: len(receiving_pids(node)) == 1 and receiving_pids(node) != [pid], 120, "its restart")
    assert echoscu(node.dicom_port).returncode == 0
