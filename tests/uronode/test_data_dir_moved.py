"""A data folder moved, renamed or restored under another path keeps every instance, serves it, runs its jobs
and deletes nothing of the place it came from (probe13, finding 1).

The index names each file by its absolute path, and the start-up's orphan removal kept a file only when its
row named that very path: a node started on a moved folder (the default ``uronode-data`` is relative to where
the node starts) or on a backup restored elsewhere deleted every instance older than a minute, and its rows
went on naming the old place. Now the start-up points the rows at the folder it opened (``Store.relocate``)
and orphan removal never deletes a file on account of a row that names a place outside it.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.conftest import query
from tests.factory import write_series
from tests.peers.processes import Node, storescu, wait_until
from tests.uronode.test_destination_results import KnownStones, _queued_job, _settings
from tests.uronode.test_store import encoded, put
from uronode.app.cli import main
from uronode.app.worker import Worker
from uronode.jobs import JobQueue
from uronode.outbox import Outbox
from uronode.retention import purge
from uronode.settings import Settings
from uronode.store import NOTES_FOLDER, ORPHAN_AGE_S, Store
from uronode.supersede import NOTES_FOLDER as SUPERSEDE_NOTES_FOLDER
from uronode.types import JobState

AN_HOUR_AGO = time.time() - 3600


def age_everything(folder: Path) -> None:
    """Every file older than the orphan age, as a restored backup's or a moved folder's files are."""
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))


def instance_files(folder: Path) -> set[Path]:
    """The instance files under a data folder, as paths inside it."""
    return {p.relative_to(folder) for p in (folder / "instances").rglob("*.dcm")}


def paths_in(data: Path, table: str) -> list[str]:
    return [r["path"] for r in query(data, f"SELECT path FROM {table}")]


def plant_orphans(data: Path, study: str, series: str, sop: str) -> list[Path]:
    """A file a stop left between its rename and its commit (another suffix of an indexed SOP Instance UID), and
    a lone series whose only file nothing indexes: both older than the orphan age."""
    beside = data / "instances" / study / series / f"{sop}-0123456789ab.dcm"
    beside.write_bytes(b"never acknowledged")
    lone = data / "instances" / "1.2.9" / "1.2.9.1" / "1.2.9.1.1-0123456789ab.dcm"
    lone.parent.mkdir(parents=True)
    lone.write_bytes(b"left by a cut-off retention pass")
    for path in (beside, lone):
        os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    return [beside, lone]


def assert_serves_every_instance(node: Node, study: str, series: str, sources: list[Path]) -> None:
    base = f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{study}/series/{series}/instances"
    for source in sources:
        original = pydicom.dcmread(source)
        answer = httpx.get(f"{base}/{original.SOPInstanceUID}", timeout=30,
                           headers={"Accept": 'multipart/related; type="application/dicom"'})
        assert answer.status_code == 200, (source, answer.text)
        assert original.PixelData in answer.content


def test_a_moved_or_restored_data_folder_keeps_and_serves_every_instance(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    """As the probe did it, with a real node and storescu: the folder filled by one node, stopped, its checkout
    renamed (the data folder moves with it) and a copy restored under a third path; a node on each keeps and
    serves every instance and still removes a real orphan."""
    first = tmp_path / "checkout" / "uronode-data"
    node = start_node(first)
    study, series, sources = write_series(tmp_path / "ct", 5, size=32)
    assert storescu(node.dicom_port, tmp_path / "ct").returncode == 0
    wait_until(lambda: [r["state"] for r in query(first, "SELECT state FROM series")] == ["complete"], 60,
               "the series to complete")
    assert node.proc is not None and node.proc.stop(signal.SIGINT) == 0
    received = instance_files(first)
    assert len(received) == 5
    # what the index had taken, written by the node for its next start (probe 49: an older index told apart)
    assert (first / "index.seen").read_text() == "5\n"
    jobs = [dict(r) for r in query(first, "SELECT id, state, series_instance_uid FROM jobs")]
    assert [j["state"] for j in jobs] == ["queued"]

    (tmp_path / "checkout").rename(tmp_path / "renamed")  # the checkout moved: ./uronode-data with it
    moved = tmp_path / "renamed" / "uronode-data"
    restored = tmp_path / "restored" / "data"
    shutil.copytree(moved, restored, symlinks=True)  # `cp -a` of a backup, put back under another path
    for folder in (moved, restored):
        age_everything(folder)
    sop = str(pydicom.dcmread(sources[0]).SOPInstanceUID)

    for data in (moved, restored):
        orphans = plant_orphans(data, study, series, sop)
        node = start_node(data)
        assert_serves_every_instance(node, study, series, sources)
        assert instance_files(data) == received, node.proc and node.proc.log_text()
        assert not any(orphan.exists() for orphan in orphans)  # a real orphan is removed all the same
        assert not (data / "instances" / "1.2.9").exists()
        root = f"{data.resolve()}{os.sep}"
        assert all(path.startswith(root) for path in paths_in(data, "instances"))
        assert [dict(r) for r in query(data, "SELECT id, state, series_instance_uid FROM jobs")] == jobs
        assert node.proc is not None and node.proc.stop(signal.SIGINT) == 0
    assert instance_files(moved) == received  # the restored copy's node left the other folder alone


def close(store: Store) -> None:
    """This thread's connection to the index closed, as a stopped node leaves it, before its folder moves."""
    store.conn().close()


def test_the_worker_delivery_and_retention_of_a_restored_copy_use_its_files_never_the_original_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before its start-up the copy's rows name the original's files: a purge on it is refused, since it would
    delete the original's files. After it, the copy's job runs again (superseding its earlier results), its
    deliveries and rejection note are its own, and retention deletes the copy's files, never the original's."""
    settings = _settings(tmp_path / "original", [])
    store = Store(settings.storage.data_dir, fsync=False)
    job_id = _queued_job(store, tmp_path / "original")
    claimed = JobQueue(store).claim()
    assert claimed is not None and claimed.id == job_id
    assert Worker(store, settings, KnownStones()).run_job(claimed) is JobState.DELIVERED
    (result, *_) = [r for r in query(store.root, "SELECT sop_instance_uid, sop_class_uid, path FROM instances"
                                                 " WHERE sop_instance_uid IN (SELECT sop_instance_uid FROM results)")]
    note = store.root / NOTES_FOLDER / "1.2.826.0.1.3680043.99.1.dcm"
    note.parent.mkdir()
    note.write_bytes(b"a rejection note owed to the PACS")
    outbox = Outbox(store)
    with store.transaction() as conn:
        outbox.enqueue_in(conn, destination="pacs", sop_instance_uid=result["sop_instance_uid"],
                          sop_class_uid=result["sop_class_uid"], path=Path(result["path"]), job_id=job_id)
        outbox.enqueue_in(conn, destination="pacs", sop_instance_uid="1.2.826.0.1.3680043.99.1",
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.88.59", path=note, job_id=job_id)
        conn.execute("UPDATE series SET state = 'complete' WHERE series_instance_uid = ?", (claimed.series_instance_uid,))
    close(store)
    original = sorted(p for p in store.root.rglob("*.dcm"))
    original_bytes = {p: p.read_bytes() for p in original}

    copied = tmp_path / "restored" / "data"
    shutil.copytree(store.root, copied, symlinks=True)
    age_everything(copied)
    copy = Store(copied, fsync=False)
    instances = len(query(copied, "SELECT 1 FROM instances"))
    assert copy.rows_elsewhere() == instances + 2  # opening it changes no row: only the node's start-up does
    assert main(["purge", "--data-dir", str(copied), "--older-than-days", "1"]) == 2
    assert "moved or restored from elsewhere" in capsys.readouterr().err

    copy.recover()
    assert copy.rows_elsewhere() == 0
    root = f"{copy.root}{os.sep}"
    for table in ("instances", "deliveries"):
        assert all(path.startswith(root) and Path(path).is_file() for path in paths_in(copied, table)), table
    assert [d.path for d in Outbox(copy).due(now=1e12)["pacs"]] == [copy.root / Path(result["path"]).relative_to(
        store.root), copy.root / NOTES_FOLDER / note.name]
    assert copy.relocate() == 0  # once is enough

    copy_settings = Settings.model_validate({"storage": {"data_dir": str(copied), "fsync": False}})
    JobQueue(copy).requeue(job_id)
    again = JobQueue(copy).claim()
    assert again is not None and again.id == job_id
    assert Worker(copy, copy_settings, KnownStones()).run_job(again) is JobState.DELIVERED
    # made again under the same UID, the copy's own file is kept and owed (probe 32), never the original's
    kept = copy.root / Path(result["path"]).relative_to(store.root)
    assert kept.exists()
    assert Path(query(copied, "SELECT path FROM instances WHERE sop_instance_uid = ?",
                      result["sop_instance_uid"])[0]["path"]) == kept
    later = time.time() + 100 * 86400
    assert purge(copy, 1, now=later).series == []  # its result is still owed to the PACS (review 31)
    with copy.transaction() as conn:
        conn.execute("UPDATE deliveries SET state = 'delivered' WHERE sop_instance_uid IN"
                     " (SELECT sop_instance_uid FROM results)")
    done = purge(copy, 1, now=later)
    assert done.series == [again.series_instance_uid] and done.instances == 4 and done.results
    assert not instance_files(copied)
    assert (copy.root / NOTES_FOLDER / note.name).exists()  # a pending delivery still names it
    assert sorted(p for p in store.root.rglob("*.dcm")) == original  # the original: every file, unchanged
    assert all(p.read_bytes() == data for p, data in original_bytes.items())


def test_orphan_removal_never_deletes_a_file_on_account_of_a_row_that_names_another_place(tmp_path: Path) -> None:
    """Without the start-up's relocation (and for a row in no shape the store gives its files, which it
    leaves as it is), a row naming a path outside the folder keeps the file of its SOP Instance UID; a file
    no row names is removed as before."""
    store = Store(tmp_path / "before" / "data", fsync=False)
    for index in range(3):
        put(store, encoded(index, series="1.2.3.4"))
    odd = store.series_instances("1.2.3.4")[2]
    with store.transaction() as conn:  # a row in no shape of the store's (edited by hand, say)
        conn.execute("UPDATE instances SET path = '/nowhere/odd.dcm' WHERE sop_instance_uid = ?",
                     (odd.header.sop_instance_uid,))
    close(store)
    (tmp_path / "before").rename(tmp_path / "after")
    data = tmp_path / "after" / "data"
    age_everything(data)
    kept = instance_files(data)
    orphan = data / "instances" / "1.2.3" / "1.2.3.4" / "1.2.3.4.99-0123456789ab.dcm"
    orphan.write_bytes(b"nothing indexes this")
    os.utime(orphan, (AN_HOUR_AGO, AN_HOUR_AGO))

    moved = Store(data, fsync=False)
    assert moved.remove_orphans(older_than_s=ORPHAN_AGE_S) == 1  # the rows still name tmp_path/before
    assert instance_files(data) == kept
    moved.recover()
    assert instance_files(data) == kept
    assert moved.rows_elsewhere() == 0 and "/nowhere/odd.dcm" in paths_in(data, "instances")
    assert moved.remove_orphans(older_than_s=0, now=time.time() + 3600) == 0


def test_the_store_names_the_rejection_notes_folder_as_supersede_does() -> None:
    assert NOTES_FOLDER == SUPERSEDE_NOTES_FOLDER
