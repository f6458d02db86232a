"""`uronode reindex`: the index rebuilt from the instance files, when it was lost, damaged, or restored from a
backup older than the files (probe 44 #6: no command did it; the way back was a backup, or nothing)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from tests.uronode.test_store import encoded, put
from uronode import queries
from uronode.app.cli import main
from uronode.app.node import hold_data_dir
from uronode.db import SCHEMA_VERSION, SIDE_FILES, DataDirUnusable
from uronode.retention import purge as retention_purge
from uronode.store import ORPHANS_AT_MOST, REINDEXED, REINDEXED_OWN, Store

STUDY, SERIES, OTHER, RESULTS = "1.2.3.70", "1.2.3.70.1", "1.2.3.70.2", "1.2.3.70.9"


def _node_folder(root: Path) -> Store:
    """Three CT images of one series, two of another, and a result instance of the node's own."""
    store = Store(root, fsync=False)
    for index in range(3):
        put(store, encoded(index, series=SERIES, study=STUDY))
    for index in range(2):
        put(store, encoded(10 + index, series=OTHER, study=STUDY))
    put(store, encoded(20, series=RESULTS, study=STUDY, manufacturer="uronode"))
    return store


def _drop_index(root: Path) -> None:
    for side in ("", *SIDE_FILES):
        Path(f"{root / 'index.sqlite3'}{side}").unlink(missing_ok=True)


def _files(root: Path) -> set[str]:
    return {p.name for p in (root / "instances").rglob("*.dcm")}


def test_a_lost_index_is_rebuilt_from_the_files_and_nothing_is_deleted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    store = _node_folder(root)
    study_row = dict(store.conn().execute("SELECT patient_name, patient_id, study_date FROM studies").fetchone())
    store.db.conn().close()
    before = _files(root)
    # a file the disk damaged, and an older copy of an instance whose newer file is the one to keep
    series_folder = next(p.parent for p in (root / "instances").rglob("*.dcm") if p.parent.name == SERIES)
    newest = sorted(series_folder.glob("*.dcm"))[0]
    (series_folder / "1.2.3.70.1.99-000000000000.dcm").write_bytes(b"\x00" * 200)
    older = series_folder / f"{newest.name.rsplit('-', 1)[0]}-aaaaaaaaaaaa.dcm"
    shutil.copyfile(newest, older)
    os.utime(older, (time.time() - 3600, time.time() - 3600))
    _drop_index(root)
    with pytest.raises(DataDirUnusable, match="uronode reindex"):  # the start refuses, and names the way back
        Store(root, fsync=False)

    assert main(["reindex", "--data-dir", str(root)]) == 0
    said = capsys.readouterr().out
    assert "the index was missing; a new one is made" in said
    assert "indexed 6 instance file(s) the index did not name, in 3 new series" in said
    assert "1 older copies of instances whose newer file is indexed, 1 file(s) that could not be read" in said

    rebuilt = Store(root, fsync=False)
    assert rebuilt.recover() == 0
    assert _files(root) == before  # every instance file where it was; the two others moved aside, not deleted
    (aside,) = root.glob("unindexed-*")
    assert {p.name for p in aside.rglob("*.dcm")} == {older.name, "1.2.3.70.1.99-000000000000.dcm"}
    rows = {r["series_instance_uid"]: r for r in rebuilt.conn().execute("SELECT * FROM series")}
    assert set(rows) == {SERIES, OTHER, RESULTS}
    assert all(r["state"] == "complete" and r["disposition"] == "skipped" for r in rows.values())
    assert rows[SERIES]["reason"] == REINDEXED and rows[RESULTS]["reason"] == REINDEXED_OWN
    assert rows[SERIES]["first_received_at"] <= rows[SERIES]["last_received_at"]
    assert [i.path.name for i in rebuilt.series_instances(SERIES)].count(newest.name) == 1
    assert len(rebuilt.series_instances(SERIES)) == 3 and len(rebuilt.series_instances(OTHER)) == 2
    assert dict(rebuilt.conn().execute("SELECT patient_name, patient_id, study_date FROM studies").fetchone()
                ) == study_row
    # nothing queued: the archive is not analysed again, nor its results sent again
    assert rebuilt.conn().execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    row = queries.series_row(rebuilt.db, SERIES)
    assert row is not None and "uronode reindex" in row["reason"]
    (event,) = [json.loads(line) for line in (root / "audit.log").read_text().splitlines()
                if '"index_rebuilt"' in line]
    assert event["instances"] == 6 and event["replaced"] == "missing"


def test_what_reindex_makes_is_closed_to_other_accounts(tmp_path: Path) -> None:
    """Probe 51: a folder restored with ``cp -r`` (0755) and reindexed under the usual umask had its new index, which
    holds patient names, readable by every local account."""
    root = tmp_path / "data"
    _node_folder(root).db.conn().close()
    (next((root / "instances").rglob("*.dcm")).parent / "1.2.3.70.1.98-000000000000.dcm").write_bytes(b"\x00" * 64)
    _drop_index(root)
    root.chmod(0o755)
    old = os.umask(0o022)
    try:
        assert main(["reindex", "--data-dir", str(root)]) == 0
        assert os.umask(0o022) == 0o022  # main leaves its caller's umask as it was
    finally:
        os.umask(old)
    (aside,) = root.glob("unindexed-*")
    for made in (root, root / "index.sqlite3", aside, *(p for p in aside.rglob("*") if p.is_dir())):
        assert made.stat().st_mode & 0o007 == 0, made


def test_an_erasure_and_retention_reach_what_reindex_set_aside(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Probe 51: after a reindex, ``purge --study`` left an older copy of a CT image under ``unindexed-*`` and the
    earlier index (patient names) beside the new one, and no retention pass ever removed either."""
    root = tmp_path / "data"
    _node_folder(root).db.conn().close()
    newest = next(p for p in (root / "instances").rglob("*.dcm") if p.parent.name == SERIES)
    older = newest.parent / f"{newest.name.rsplit('-', 1)[0]}-aaaaaaaaaaaa.dcm"
    shutil.copyfile(newest, older)
    os.utime(older, (time.time() - 3600, time.time() - 3600))
    (root / "index.sqlite3").write_bytes(b"\x00garbage" * 1024)  # damaged: kept aside whole
    assert main(["reindex", "--data-dir", str(root)]) == 0
    (aside,) = root.glob("unindexed-*")
    (earlier,) = root.glob("index.sqlite3.before-reindex-*")
    assert [p.name for p in aside.rglob("*.dcm")] == [older.name]
    capsys.readouterr()

    assert main(["purge", "--study", STUDY, "--data-dir", str(root)]) == 0
    said = capsys.readouterr().out
    assert "; and 1 file(s) of it that uronode reindex set aside" in said
    assert f"the earlier index(es) uronode reindex kept ({earlier.name}, in {root}) may still name" in said
    assert not list(aside.rglob("*.dcm")) and earlier.exists()  # the copy gone; the earlier index is said, kept
    # a retention pass deletes what was set aside once it is older than the retention, counted from the reindex
    assert main(["purge", "--older-than-days", "1", "--data-dir", str(root)]) == 0
    assert earlier.exists() and aside.exists()
    # what only looks like it is left alone (review 50: a name whose time is no date stopped every pass)
    (root / "unindexed-20260229T120000").mkdir()
    (root / "index.sqlite3.before-reindex-20200101T000000.bak").write_bytes(b"an administrator's copy")
    assert retention_purge(Store(root, fsync=False), 1, now=time.time() + 2 * 86400).set_aside == 1
    assert not earlier.exists() and not aside.exists()
    assert (root / "unindexed-20260229T120000").exists()
    assert (root / "index.sqlite3.before-reindex-20200101T000000.bak").exists()
    events = [json.loads(line) for line in (root / "audit.log").read_text().splitlines()]
    assert {e.get("set_aside") for e in events if e["event"] == "retention"} == {earlier.name, aside.name}


def test_a_damaged_index_is_kept_aside_and_rebuilt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    store = _node_folder(root)
    store.db.conn().close()
    (root / "index.sqlite3").write_bytes(b"\x00garbage" * 1024)
    for side in SIDE_FILES:
        Path(f"{root / 'index.sqlite3'}{side}").unlink(missing_ok=True)
    assert main(["reindex", "--data-dir", str(root)]) == 0
    assert "the index was damaged (" in capsys.readouterr().out
    (kept,) = root.glob("index.sqlite3.before-reindex-*")
    assert kept.read_bytes() == b"\x00garbage" * 1024  # the damaged one is kept, for whoever looks into it
    rebuilt = Store(root, fsync=False)
    rebuilt.recover()
    assert rebuilt.conn().execute("SELECT count(*) FROM instances").fetchone()[0] == 6


def test_an_index_restored_from_an_older_backup_gets_the_files_it_lacks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The files that came after the backup were removed at the next start as leftovers of a crash (when few):
    reindexed first, they are kept, and what the backup knew (its jobs, its series' states) stays."""
    root = tmp_path / "data"
    store = Store(root, fsync=False)
    for index in range(3):
        put(store, encoded(index, series=SERIES, study=STUDY))
    store.conn().execute("UPDATE series SET state = 'complete', disposition = 'queued'")
    backup = tmp_path / "backup.sqlite3"
    store.conn().backup(sqlite3.connect(backup))
    for index in range(2):  # after the backup
        put(store, encoded(10 + index, series=OTHER, study=STUDY))
    store.db.conn().close()
    _drop_index(root)
    shutil.copyfile(backup, root / "index.sqlite3")
    assert main(["reindex", "--data-dir", str(root)]) == 0
    said = capsys.readouterr().out
    assert "the index was" not in said and "indexed 2 instance file(s) the index did not name, in 1 new series" in said
    assert not list(root.glob("index.sqlite3.before-reindex-*"))
    restored = Store(root, fsync=False)
    restored.recover()
    states = dict(restored.conn().execute("SELECT series_instance_uid, disposition FROM series").fetchall())
    assert states == {SERIES: "queued", OTHER: "skipped"}
    assert len(restored.series_instances(OTHER)) == 2
    assert main(["reindex", "--data-dir", str(root)]) == 0  # again: nothing more to do
    assert "indexed 0 instance file(s)" in capsys.readouterr().out


def test_a_run_cut_off_is_finished_by_the_next_and_no_start_comes_between(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Review 48 #1: a run cut off half-way left a half-made index that a start took for the whole: the files
    not yet indexed were removed as leftovers of a crash. Run again, it finishes as one run would have, the newer
    of two copies of an instance indexed whichever it met first."""
    import uronode.store

    root = tmp_path / "data"
    store = _node_folder(root)
    store.db.conn().close()
    before = _files(root)
    folder = next(p.parent for p in (root / "instances").rglob("*.dcm") if p.parent.name == SERIES)
    newest = sorted(folder.glob("*.dcm"))[0]
    older = folder / f"{newest.name.rsplit('-', 1)[0]}-aaaaaaaaaaaa.dcm"
    shutil.copyfile(newest, older)
    os.utime(older, (time.time() - 3600, time.time() - 3600))
    _drop_index(root)
    read, calls = uronode.store.read_header, []

    def cut_off(parts: list[bytes]) -> object:
        calls.append(1)
        if len(calls) == 2:  # the older copy is indexed, then the run stops
            raise KeyboardInterrupt
        return read(parts)

    monkeypatch.setattr(uronode.store, "read_header", cut_off)
    assert main(["reindex", "--data-dir", str(root)]) == 130
    monkeypatch.setattr(uronode.store, "read_header", read)
    with pytest.raises(DataDirUnusable, match="did not finish: run it again"):
        Store(root, fsync=False)  # the start, and every command, refuses
    capsys.readouterr()
    assert main(["reindex", "--data-dir", str(root)]) == 0
    assert "indexed 5 instance file(s)" in capsys.readouterr().out  # the sixth the first run took
    rebuilt = Store(root, fsync=False)
    assert rebuilt.recover() == 0 and _files(root) == before
    (kept,) = [i.path for i in rebuilt.series_instances(SERIES) if i.path.name.startswith(older.name[:-17])]
    assert kept.name == newest.name  # the newer copy, though the cut-off run had indexed the older


def test_a_file_copied_in_under_another_name_is_put_where_the_node_keeps_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Review 48 #2: a file named otherwise than by its UID (copied back by hand) was indexed where it lay, and the
    next start, which finds a file's row by the UID its name carries, removed it: a row without its file."""
    root = tmp_path / "data"
    store = _node_folder(root)
    other_before = {i.header.sop_instance_uid for i in store.series_instances(OTHER)}
    store.db.conn().close()
    stray = root / "instances" / STUDY / SERIES / "IM000050.dcm"
    stray.write_bytes(b"".join(encoded(50, series=OTHER, study=STUDY)))  # of the other series, too
    assert main(["reindex", "--data-dir", str(root)]) == 0
    assert "1 of them moved to where the node keeps them" in capsys.readouterr().out
    store = Store(root, fsync=False)
    assert store.recover() == 0
    assert not stray.exists()
    (moved,) = [i for i in store.series_instances(OTHER) if i.header.sop_instance_uid not in other_before]
    assert moved.path.is_file() and moved.path.parent.name == OTHER
    assert main(["reindex", "--data-dir", str(root)]) == 0  # again: nothing moves, nothing is set aside
    assert "indexed 0 instance file(s)" in (said := capsys.readouterr().out) and "moved to" not in said


def test_a_rebuilt_index_numbers_its_jobs_above_every_earlier_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Review 48 #4: job numbers began at 1 again; another patient's series got job 1, and an upload page that
    followed #jobs=1 showed that patient."""
    import gzip

    root = tmp_path / "data"
    _node_folder(root).db.conn().close()
    (root / "audit.log").write_text('{"time":1,"event":"series_complete","job_id":41}\n')
    with gzip.open(root / "audit-20260101T000000Z.log.gz", "wt") as earlier:
        earlier.write('{"time":0,"event":"job_finished","job_id":77,"state":"failed"}\n')
    _drop_index(root)
    assert main(["reindex", "--data-dir", str(root)]) == 0
    assert "the next job is number 1078" in capsys.readouterr().out
    store = Store(root, fsync=False)
    with store.transaction() as tx:
        tx.execute("INSERT INTO jobs (study_instance_uid, series_instance_uid, series_generation, model, state,"
                   " created_at, updated_at) VALUES (?, ?, 1, 'default', 'queued', 0, 0)", (STUDY, SERIES))
    assert store.conn().execute("SELECT max(id) FROM jobs").fetchone()[0] == 1078
    store.db.conn().close()
    assert main(["reindex", "--data-dir", str(root)]) == 0  # past the others already: left as it is
    assert "the next job is" not in capsys.readouterr().out


def test_refused_while_a_node_serves_on_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    _node_folder(root).db.conn().close()
    held = hold_data_dir(root)  # what `uronode serve` holds while it runs
    try:
        assert main(["reindex", "--data-dir", str(root)]) == 2
        assert "in use by another uronode serve" in capsys.readouterr().err
    finally:
        assert held is not None
        os.close(held)
    assert main(["reindex", "--data-dir", str(tmp_path / "nothing")]) == 2
    assert "no node data in" in capsys.readouterr().err


def test_an_index_older_than_its_folder_stops_the_start_until_reindexed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Probe 49: with its -wal deleted the index was a valid older one; the node started on it, analysed a series
    it held part of, and its next start removed the images it did not name. The folder's record of what the
    index had taken (index.seen, written by the running node) tells such an index from a current one."""
    root = tmp_path / "data"
    store = Store(root, fsync=False)
    for index in range(3):
        put(store, encoded(index, series=SERIES, study=STUDY))
    earlier = tmp_path / "earlier.sqlite3"
    store.conn().backup(sqlite3.connect(earlier))  # what the main file held when the -wal was lost
    for index in range(3, 6):
        put(store, encoded(index, series=SERIES, study=STUDY))
    assert store.note_seen() == 6 and (root / "index.seen").read_text() == "6\n"
    assert store.recover() == 0  # a current index starts
    store.db.conn().close()
    _drop_index(root)
    shutil.copyfile(earlier, root / "index.sqlite3")
    with pytest.raises(DataDirUnusable, match=r"older than its data folder: it has taken 3 instance\(s\), and the"
                                              r" node saw it take 6 .*uronode reindex"):
        Store(root, fsync=False).recover()
    assert len(_files(root)) == 6  # nothing removed
    assert main(["reindex", "--data-dir", str(root)]) == 0
    said = capsys.readouterr().out
    assert "the index is older than its data folder (it has taken 3 instance(s), the node saw it take 6" in said
    assert "indexed 3 instance file(s)" in said
    again = Store(root, fsync=False)
    assert again.recover() == 0 and len(_files(root)) == 6
    assert len(again.series_instances(SERIES)) == 6
    again.db.conn().close()
    # a folder started afresh, its instances/ and index moved away, its record left: nothing to lose, it starts
    shutil.move(root / "instances", tmp_path / "kept-instances")
    _drop_index(root)
    assert Store(root, fsync=False).recover() == 0


def test_a_copy_restored_elsewhere_from_an_older_backup_keeps_an_image_replaced_after_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Probe 49 D4: the backup's row of an image replaced after it named the old place; reindex took the row
    for the image's, skipped the new file, and the start after it removed the file."""
    site = tmp_path / "site"
    store = Store(site, fsync=False)
    for index in range(3):
        put(store, encoded(index, series=SERIES, study=STUDY))
    backup = tmp_path / "backup.sqlite3"
    store.conn().backup(sqlite3.connect(backup))
    assert put(store, encoded(1, series=SERIES, study=STUDY, seed=9)).value == "replaced"  # after the backup
    store.db.conn().close()
    copy = tmp_path / "copy"  # restored on another host, the backup as its index
    shutil.copytree(site, copy)
    _drop_index(copy)
    shutil.copyfile(backup, copy / "index.sqlite3")
    (copy / "index.seen").unlink(missing_ok=True)
    assert main(["reindex", "--data-dir", str(copy)]) == 0
    capsys.readouterr()
    restored = Store(copy, fsync=False)
    assert restored.recover() == 0
    paths = [i.path for i in restored.series_instances(SERIES)]
    assert all(p.is_file() and p.is_relative_to(copy) for p in paths) and len(paths) == 3
    assert {p.name for p in paths} == _files(copy)  # the replacement indexed; the replaced file gone before


def test_refused_on_an_earlier_version_s_index_while_its_ports_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Probe 49 D6: an earlier version takes no lock on its folder; reindex brought its index up to date under
    it, and it refused every image after."""
    import socket

    root = tmp_path / "data"
    store = _node_folder(root)
    store.conn().execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")
    store.db.conn().close()
    with socket.socket() as running:
        running.bind(("127.0.0.1", 0))
        running.listen(1)
        monkeypatch.setenv("URONODE_HOST", "127.0.0.1")
        monkeypatch.setenv("URONODE_SCP__PORT", str(running.getsockname()[1]))
        assert main(["reindex", "--data-dir", str(root)]) == 2
        assert f"an earlier uronode's (schema {SCHEMA_VERSION - 1}), which takes no lock on its folder, and the" \
            " node's DICOM port" in capsys.readouterr().err
    assert main(["reindex", "--data-dir", str(root)]) == 0  # stopped: brought up to date and indexed
    # one of a newer version is refused before any change: no half-made mark is left (review 49)
    store = Store(root, fsync=False)
    store.conn().execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store.db.conn().close()
    assert main(["reindex", "--data-dir", str(root)]) == 2
    assert "written by a newer uronode" in capsys.readouterr().err
    assert not (root / "reindex-unfinished").exists()


def test_an_index_that_never_counted_is_not_taken_for_an_older_one(tmp_path: Path) -> None:
    """Review 49: a roll-back to a version from before index.seen, its backup restored beside this version's
    index.seen, then an upgrade again: the index had never counted, and the start was refused."""
    root = tmp_path / "data"
    store = Store(root, fsync=False)
    for index in range(3):
        put(store, encoded(index, series=SERIES, study=STUDY))
    store.note_seen()
    store.conn().execute("DELETE FROM counters WHERE name = 'instances_taken'")  # the earlier version's index
    assert store.taken() is None and store.behind() is None
    assert store.recover() == 0



def test_many_files_newer_than_the_index_are_never_removed_as_a_crash_s_leftovers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Probe 50: a month-old backup restored with its own index.seen (or one from before index.seen) had the
    month's 25,500 images removed at the start: the bar was the index's own size. A crash leaves a file per store
    in flight, newer than every row; a retention pass or a purge cut off leaves older ones."""
    root = tmp_path / "data"
    store = Store(root, fsync=False)
    for index in range(3):
        put(store, encoded(index, series=SERIES, study=STUDY))
    folder = root / "instances" / STUDY / SERIES
    source = next(folder.glob("*.dcm"))

    def orphans(count: int, age_s: float, prefix: str) -> list[Path]:
        made = []
        for k in range(count):
            path = folder / f"1.2.3.70.1.{prefix}{k}-0123456789ab.dcm"
            shutil.copyfile(source, path)
            os.utime(path, (time.time() - age_s, time.time() - age_s))
            made.append(path)
        return made

    newer = orphans(ORPHANS_AT_MOST + 1, 0, "8")  # what an older index lacks: kept, and said
    assert store.remove_orphans(older_than_s=0) == 0 and all(p.exists() for p in newer)
    assert any("newer than the newest it names: the index is older than the files" in r.getMessage()
               for r in caplog.records)
    for path in newer[5:]:
        path.unlink()
    older = orphans(50, 86_400 * 40, "9")  # a retention pass cut off: a day's old series
    assert store.remove_orphans(older_than_s=0) == 55  # a crash's five and retention's fifty
    assert not any(p.exists() for p in [*newer[:5], *older])


def test_reindex_says_how_far_it_is_and_deliveries_are_found_by_instance(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe 50: seven silent minutes for a year's files; a retention pass beside 10,000 deliveries owed took
    113 s, each old series walking every delivery (schema 19 indexes them by instance)."""
    import uronode.store

    root = tmp_path / "data"
    store = _node_folder(root)
    names = {r["name"] for r in store.conn().execute("PRAGMA index_list(deliveries)")}
    assert "deliveries_instance" in names
    plan = " ".join(str(tuple(r)) for r in store.conn().execute(
        "EXPLAIN QUERY PLAN SELECT 1 FROM deliveries WHERE sop_instance_uid = ? AND state = 'pending'", ("x",)))
    assert "deliveries_instance" in plan
    store.db.conn().close()
    _drop_index(root)
    monkeypatch.setattr(uronode.store, "PROGRESS_EVERY_S", 0.0)
    said: list[tuple[int, int]] = []
    Store(root, fsync=False, rebuilding=True).adopt_files(tmp_path / "aside", progress=lambda n, of: said.append((n, of)))
    assert said and said[-1] == (6, 6) and said[0][1] == 6
