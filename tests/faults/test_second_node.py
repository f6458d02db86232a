"""A second ``uronode serve`` on the data folder of a running node, or on ports a node holds, stops before it
touches anything (probe 31: a new version started before the old one was stopped upgraded the index under it, and
the old node then refused every C-STORE; on other ports it ran beside it on one folder and took its jobs back as
"left running by a previous run")."""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.factory import write_series
from tests.peers.processes import Node, echoscu, free_port, storescu, wait_until

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("URONODE_")}


def serve(data: Path, dicom_port: int, http_port: int) -> subprocess.CompletedProcess[str]:
    env = {**CLEAN_ENV, "URONODE_INFERENCE__WORKERS": "0", "URONODE_DICOMWEB__AUTH": "none"}
    return subprocess.run(
        [sys.executable, "-m", "uronode", "serve", "--host", "127.0.0.1", "--data-dir", str(data),
         "--dicom-port", str(dicom_port), "--http-port", str(http_port)],
        capture_output=True, text=True, env=env, timeout=120)


def old_index(data: Path) -> None:
    """A data folder an earlier version left: its index at schema 2, the folder open to every account."""
    data.mkdir()
    data.chmod(0o755)
    old = sqlite3.connect(data / "index.sqlite3")
    old.executescript(
        "CREATE TABLE series (series_instance_uid TEXT PRIMARY KEY, study_instance_uid TEXT NOT NULL,"
        " state TEXT NOT NULL, first_received_at REAL NOT NULL, last_received_at REAL NOT NULL,"
        " generation INTEGER NOT NULL DEFAULT 1, replaced_count INTEGER NOT NULL DEFAULT 0, completed_at REAL,"
        " disposition TEXT, reason TEXT);"
        "PRAGMA user_version=2;")
    old.commit()
    old.close()


def schema(data: Path) -> int:
    conn = sqlite3.connect(data / "index.sqlite3")
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_a_second_node_on_the_folder_of_a_running_one_stops_and_the_first_goes_on(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    first = start_node()
    second = serve(first.data_dir, free_port(), free_port())
    assert second.returncode == 2, second.stderr[-3000:]
    assert second.stderr.strip() == (f"uronode: the data folder {first.data_dir.resolve()} is in use by another"
                                     " uronode serve (or a uronode reindex): stop that one first"
                                     " (docs/operations.md, \"Upgrading uronode\"), or give this one a data folder"
                                     " of its own (storage.data_dir)")
    assert "queued again" not in second.stderr
    assert echoscu(first.dicom_port).returncode == 0
    write_series(tmp_path / "ct", 3, size=64)
    assert storescu(first.dicom_port, tmp_path / "ct").returncode == 0
    wait_until(lambda: "complete (3 instances)" in (first.proc.log_text() if first.proc else ""), 30,
               "the first node to complete the series")
    first.stop()  # its lock goes with it: a node started now takes the folder
    again = start_node(first.data_dir)
    assert echoscu(again.dicom_port).returncode == 0


def test_a_node_whose_ports_are_taken_leaves_an_earlier_version_s_folder_as_it_was(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old_index(data)
    for taken in ("DICOM", "HTTP"):
        with socket.socket() as holder:  # the earlier version's node, still running
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            done = serve(data, port, free_port()) if taken == "DICOM" else serve(data, free_port(), port)
        assert done.returncode == 1, done.stderr[-3000:]
        assert f"cannot listen for {taken} on 127.0.0.1:{port}: Address already in use" in done.stderr
        assert schema(data) == 2  # not brought up to this version's schema under the running node
        assert stat.S_IMODE(data.stat().st_mode) == 0o755  # not closed either


def test_the_ports_are_checked_on_every_address_of_the_host_and_a_connection_in_time_wait_is_no_user() -> None:
    """Review 31: bound and not listening, a port was no reservation (SO_REUSEADDR lets another bind it), and a
    port listening before the node served held callers; the node checks the ports first and binds them later,
    as it always did."""
    from uronode.app.node import port_free

    port = free_port()
    port_free("", port, "HTTP")  # every interface, both families: free
    with socket.socket() as server, socket.socket() as client:  # a connection closed by the server: TIME_WAIT
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        client.connect(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()
    port_free("127.0.0.1", port, "DICOM")  # a node restarted at once is not refused
    with socket.socket(socket.AF_INET6) as holder:  # an earlier node listening on the IPv6 side only
        holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        holder.bind(("::", port))
        holder.listen()
        port_free("127.0.0.1", port, "HTTP")  # the IPv4 side is free
        try:
            port_free("", port, "HTTP")  # every interface: the IPv6 side is not
        except OSError as exc:
            assert str(exc) == f"[Errno 98] cannot listen for HTTP on *:{port}: Address already in use"
        else:
            raise AssertionError("a port in use on one of the host's addresses was taken for free")


def test_an_admin_command_leaves_an_earlier_version_s_index_to_serve(tmp_path: Path) -> None:
    """Review 30: ``uronode jobs`` of a newer version upgraded the index under a running older node."""
    data = tmp_path / "data"
    old_index(data)
    env = {**CLEAN_ENV, "URONODE_DICOMWEB__AUTH": "none"}
    done = subprocess.run([sys.executable, "-m", "uronode", "jobs", "--data-dir", str(data)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.startswith("uronode: the index was written by an earlier uronode (schema 2; this one is ")
    assert "start this version's uronode serve, which brings it up to date" in done.stderr
    assert schema(data) == 2
