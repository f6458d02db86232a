"""Retention: delete received series once they are old, with what the node derived from them, and the history.

A series is due when it is complete, its last instance arrived more than
``storage.retention_days`` ago, no job for it is still queued, running or
delivering, nothing of it or of its results is still owed to a destination,
and it is not one of the node's recorded results. It goes with the
results the node made of it (the SEG, SC, SR and KOS the ``results`` table
records for it, :mod:`uronode.supersede`). A result series the table does not
record (made before schema 8, which began the table: nothing tells which CT
it was made of) is due by its own age, as a received series (probe 31: such
results, each with the patient's name, outlived their CT for ever), and so is
one whose CT is no longer in the index (its images moved to another series:
review 32), once
none of its instances is still owed to a destination (review 30). Their index
rows go first, in one transaction, then their files:
a crash in between leaves files that nothing indexes (removed at the next start,
:meth:`uronode.store.Store.remove_orphans`), never
an index row that points to a deleted file. Only the files that were deleted from the index are
removed, so an instance of the same series that arrives meanwhile is kept (and
re-opens the series as a new one).

The history goes after the same time: jobs that ended (``delivered``, ``failed``) and were last
changed before then, with their findings; deliveries that ended (``delivered``, ``superseded``, and
dead letters whose instance is gone), and the rejection notes no delivery still names; associations
that ended before then. Nothing queued, running, delivering or still owed is touched.

The node runs a pass at start-up and every ``storage.retention_interval_s`` seconds (its
``retention`` loop, :mod:`uronode.loops`);
``uronode purge`` runs one by hand (``--dry-run`` lists what it would delete); ``uronode purge --study UID``
deletes one study whatever its age (:func:`purge_study`).
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pydicom

from uronode.associations import Associations
from uronode.audit import AuditLog
from uronode.db import SIDE_FILES
from uronode.metrics import DELIVERY_FAILURES, FAILED_TRIES, INFERENCE_BUCKETS_S, PRUNED
from uronode.store import METADATA_CACHE, Store, forget_empty_studies
from uronode.supersede import NOTES_FOLDER

log = logging.getLogger(__name__)

_DUE_WHERE = """
s.state = 'complete' AND s.last_received_at < ?
   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.series_instance_uid = s.series_instance_uid
                    AND j.state IN ('queued', 'running', 'delivering'))
   AND NOT EXISTS (SELECT 1 FROM instances i JOIN results r ON r.sop_instance_uid = i.sop_instance_uid
                    JOIN series src ON src.series_instance_uid = r.source_series_uid
                    WHERE i.series_instance_uid = s.series_instance_uid)
   AND NOT EXISTS (SELECT 1 FROM instances i JOIN deliveries d ON d.sop_instance_uid = i.sop_instance_uid
                    WHERE i.series_instance_uid = s.series_instance_uid AND d.state = 'pending')
   AND NOT EXISTS (SELECT 1 FROM results r JOIN deliveries d ON d.sop_instance_uid = r.sop_instance_uid
                    WHERE r.source_series_uid = s.series_instance_uid AND d.state = 'pending')
"""
"""A series past its retention: complete and old, no job of it queued, running or delivering, not a recorded
result of a CT the index still holds (those go with their CT), and nothing of it or of its results still owed to a destination (review 31:
a job is 'failed' once one of its deliveries is dead, while others may still be pending)."""
_DUE = f"SELECT s.series_instance_uid, s.study_instance_uid FROM series s WHERE {_DUE_WHERE} ORDER BY s.last_received_at"
_STILL_DUE = f"SELECT 1 FROM series s WHERE s.series_instance_uid = ? AND {_DUE_WHERE}"


_RESULTS = """
SELECT r.sop_instance_uid, i.path, i.size, i.series_instance_uid, i.study_instance_uid
  FROM results r JOIN instances i ON i.sop_instance_uid = r.sop_instance_uid
 WHERE r.source_series_uid = ?
"""
_OLD_JOBS = "FROM jobs WHERE state IN ('delivered', 'failed') AND updated_at < ?"
_OLD_DELIVERIES = (
    "FROM deliveries WHERE updated_at < ? AND (state IN ('delivered', 'superseded') OR (state = 'dead' AND"
    " NOT EXISTS (SELECT 1 FROM instances i WHERE i.sop_instance_uid = deliveries.sop_instance_uid)))"
)
_OLD_ASSOCIATIONS = "FROM associations WHERE ended_at IS NOT NULL AND ended_at < ?"


@dataclass
class Purged:
    series: list[str] = field(default_factory=list)
    instances: int = 0
    bytes: int = 0
    """The received instances of ``series``, and their size."""
    results: int = 0
    results_bytes: int = 0
    """The node's own results made of them (SEG, SC, SR, KOS), and their size."""
    notes: int = 0
    """Rejection notes naming the study (``purge_study`` only)."""
    jobs: int = 0
    deliveries: int = 0
    associations: int = 0
    """History rows that ended before the cutoff."""
    set_aside: int = 0
    """Files ``uronode reindex`` set aside (``unindexed-<time>/``, ``index.sqlite3.before-reindex-<time>``) that
    were deleted: a retention pass's that were set aside before the cutoff, ``purge_study``'s of the study."""
    earlier_indexes: list[str] = field(default_factory=list)
    """``purge_study``: the indexes ``uronode reindex`` kept aside, which may name the study's patient and which
    no purge edits (a damaged index cannot be)."""


SET_ASIDE = re.compile(r"^(?:unindexed-(\d{8}T\d{6})|index\.sqlite3\.before-reindex-(\d{8}T\d{6})(?:-wal|-shm|-journal)?)$")
"""What ``uronode reindex`` sets aside in the data folder, named by the (local) time it did, and nothing else (an
administrator's ``...before-reindex-<time>.bak`` is theirs: review 50)."""


def _set_aside(root: Path) -> list[tuple[Path, float]]:
    """What ``uronode reindex`` set aside in ``root``, each with when; a name whose time is no date is left alone
    (review 50: one stopped every retention pass and purge)."""
    found = []
    for entry in root.iterdir():
        if match := SET_ASIDE.match(entry.name):
            try:
                found.append((entry, datetime.strptime(match.group(1) or match.group(2), "%Y%m%dT%H%M%S").timestamp()))
            except ValueError:
                continue
    return found


def _file_count(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file()) if path.is_dir() else 1


def _delete(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _prune_set_aside(root: Path, cutoff: float, done: Purged, *, dry_run: bool) -> None:
    """Delete what ``uronode reindex`` set aside before ``cutoff``: older copies of instances and unreadable
    files, and the earlier index (probe 51: kept for ever, they outlived every image the node deleted by age,
    with the patients' names). The retention period counts from the reindex, not from the files' own times, so
    that whoever looks into a damaged index has that long."""
    for path, made in _set_aside(root):
        if made < cutoff:
            done.set_aside += _file_count(path)
            if not dry_run:
                _delete(path)
                AuditLog(root).record("retention", set_aside=path.name)


def purge(store: Store, older_than_days: float, *, dry_run: bool = False, now: float | None = None) -> Purged:
    """Delete every received series past its retention; returns what was (or would be) deleted.

    ``older_than_days`` must be a finite number greater than 0: 0 or less would take series received
    a moment ago, so it is a ValueError, never a purge of everything.
    """
    if not (math.isfinite(older_than_days) and older_than_days > 0):
        raise ValueError(f"older_than_days must be a finite number of days greater than 0, not {older_than_days!r}")
    cutoff = (time.time() if now is None else now) - older_than_days * 86400.0
    conn = store.conn()
    due = conn.execute(_DUE, (cutoff,)).fetchall()
    done = Purged()
    audit = AuditLog(store.root)
    for row in due:
        series, study = row["series_instance_uid"], row["study_instance_uid"]
        if dry_run:
            files = conn.execute("SELECT path, size FROM instances WHERE series_instance_uid = ?", (series,)).fetchall()
            results = conn.execute(_RESULTS, (series,)).fetchall()
        else:
            with store.transaction() as tx:
                # checked again inside the transaction: the series may have re-opened, or a job or a delivery of it
                # been queued again, since the query
                if tx.execute(_STILL_DUE, (series, cutoff)).fetchone() is None:
                    continue
                files = tx.execute("SELECT path, size FROM instances WHERE series_instance_uid = ?", (series,)).fetchall()
                results = tx.execute(_RESULTS, (series,)).fetchall()
                # results of a CT no longer in the index (its images moved to another series) go by their own age
                tx.execute("DELETE FROM results WHERE sop_instance_uid IN"
                           " (SELECT sop_instance_uid FROM instances WHERE series_instance_uid = ?)", (series,))
                tx.execute("DELETE FROM instances WHERE series_instance_uid = ?", (series,))
                tx.execute("DELETE FROM series_associations WHERE series_instance_uid = ?", (series,))
                tx.execute("DELETE FROM series WHERE series_instance_uid = ?", (series,))
                results_series = _delete_results_in(tx, results)
                tx.executemany(
                    "INSERT INTO counters (name, value) VALUES (?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    [("instances_deleted", len(files) + len(results)), ("series_deleted", 1 + results_series)],
                )
                forget_empty_studies(tx, {study, *(r["study_instance_uid"] for r in results)})
        done.series.append(series)
        done.instances += len(files)
        done.bytes += sum(f["size"] for f in files)
        done.results += len(results)
        done.results_bytes += sum(r["size"] for r in results)
        if dry_run:
            continue
        paths = [Path(f["path"]) for f in (*files, *results)]
        for path in paths:
            path.unlink(missing_ok=True)
        for folder in {path.parent for path in paths}:
            _remove_if_unused(folder)
        audit.record("retention", series_instance_uid=series, instances=len(files), results=len(results))
    _prune_history(store, cutoff, done, dry_run=dry_run)
    _prune_set_aside(store.root, cutoff, done, dry_run=dry_run)
    if (done.series or done.jobs or done.deliveries or done.associations) and not dry_run:
        log.info("retention: deleted %d series (%d instances, %.1f MB) received before %s, %d result instance(s)"
                 " (%.1f MB) made of them, and %d job(s), %d deliveries and %d association(s) that ended before then",
                 len(done.series), done.instances, done.bytes / 1e6,
                 time.strftime("%Y-%m-%dT%H:%M%z", time.localtime(cutoff)), done.results, done.results_bytes / 1e6,
                 done.jobs, done.deliveries, done.associations)
    return done


class StudyBusy(ValueError):
    """A study :func:`purge_study` leaves alone for now, with why."""


def purge_study(store: Store, study_uid: str, *, dry_run: bool = False) -> Purged:
    """Delete one study from the node at once, whatever its age (``uronode purge --study``: a study the PACS
    deleted or merged into another patient's, a request to erase): every instance in it, received or made by the
    node, and the results the node made of its series wherever they lie (the history stays until retention).
    ``StudyBusy`` while it is still being received, analysed or delivered (the reason names what); ValueError for
    a study the node does not hold."""
    notes = _notes_of(store, study_uid)  # read before the write lock: a big notes folder holds no C-STORE up
    with store.transaction() as tx:
        held = tx.execute("SELECT 1 FROM instances WHERE study_instance_uid = ? LIMIT 1", (study_uid,)).fetchone()
        if held is None and tx.execute("SELECT 1 FROM series WHERE study_instance_uid = ?", (study_uid,)).fetchone() is None:
            raise ValueError(f"the node holds no study {study_uid}")
        busy = [f"{n} series still being received" for (n,) in tx.execute(
            "SELECT count(*) FROM series WHERE study_instance_uid = ? AND state = 'receiving'", (study_uid,)) if n]
        busy += [f"job {row['id']} {row['state']}" for row in tx.execute(
            "SELECT id, state FROM jobs WHERE state IN ('queued', 'running', 'delivering') AND (study_instance_uid = ?"
            " OR series_instance_uid IN (SELECT series_instance_uid FROM series WHERE study_instance_uid = ?))"
            " ORDER BY id", (study_uid, study_uid))]
        busy += [f"{n} deliveries still owed" for (n,) in tx.execute(
            "SELECT count(*) FROM deliveries WHERE state = 'pending' AND (sop_instance_uid IN (SELECT sop_instance_uid"
            " FROM instances WHERE study_instance_uid = ?) OR job_id IN (SELECT id FROM jobs WHERE study_instance_uid = ?"
            " OR series_instance_uid IN (SELECT series_instance_uid FROM series WHERE study_instance_uid = ?)))",
            (study_uid, study_uid, study_uid)) if n]
        if busy:
            raise StudyBusy(f"study {study_uid} is still in use: {', '.join(busy)}; wait, or cancel its queued, running"
                            " and delivering jobs (uronode cancel JOB: what is still owed is then not sent),"
                            " and purge it once its results are delivered")
        series = [r["series_instance_uid"] for r in tx.execute(  # received (the results' own series go with them)
            "SELECT s.series_instance_uid FROM series s WHERE s.study_instance_uid = ? AND NOT EXISTS (SELECT 1"
            " FROM instances i JOIN results r ON r.sop_instance_uid = i.sop_instance_uid"
            " WHERE i.series_instance_uid = s.series_instance_uid)", (study_uid,))]
        files = tx.execute("SELECT sop_instance_uid, path, size FROM instances WHERE study_instance_uid = ?"
                           " AND sop_instance_uid NOT IN (SELECT sop_instance_uid FROM results)", (study_uid,)).fetchall()
        results = [row for name in series for row in tx.execute(_RESULTS, (name,))]
        results += tx.execute(
            "SELECT r.sop_instance_uid, i.path, i.size, i.series_instance_uid, i.study_instance_uid"
            "  FROM results r JOIN instances i ON i.sop_instance_uid = r.sop_instance_uid"
            " WHERE i.study_instance_uid = ?", (study_uid,)).fetchall()
        results = list({row["sop_instance_uid"]: row for row in results}.values())
        done = Purged(series=series, instances=len(files), bytes=sum(f["size"] for f in files),
                      results=len(results), results_bytes=sum(r["size"] for r in results), notes=len(notes))
        # what uronode reindex set aside of the study (folders named by it), and the earlier indexes it kept
        set_aside = [path for path, _ in _set_aside(store.root)]
        aside = [kind / study_uid for path in set_aside if path.is_dir()
                 for kind in path.iterdir() if (kind / study_uid).is_dir()]
        done.set_aside = sum(map(_file_count, aside))
        done.earlier_indexes = sorted(path.name for path in set_aside
                                      if path.name.startswith("index.") and not path.name.endswith(SIDE_FILES))
        if dry_run:
            return done
        tx.executemany("UPDATE deliveries SET state = 'superseded', last_error = 'the study was purged', updated_at = ?"
                       " WHERE state = 'dead' AND path = ?", [(time.time(), str(note)) for note in notes])
        gone = [(f["sop_instance_uid"],) for f in files]
        tx.execute("UPDATE deliveries SET state = 'superseded', last_error = 'the study was purged', updated_at = ?"
                   " WHERE state = 'dead' AND sop_instance_uid IN (SELECT sop_instance_uid FROM instances"
                   " WHERE study_instance_uid = ?)", (time.time(), study_uid))
        tx.executemany("DELETE FROM instances WHERE sop_instance_uid = ?", gone)
        tx.executemany("DELETE FROM rejected WHERE source_series_uid = ?", [(name,) for name in series])
        results_series = _delete_results_in(tx, results)
        # a series row goes once no instance of it is left: part of a series moved to another study by a
        # correction keeps its row there (review 32: its instances were left without one)
        emptied = "NOT EXISTS (SELECT 1 FROM instances i WHERE i.series_instance_uid = {0})"
        tx.execute("DELETE FROM series_associations WHERE series_instance_uid IN (SELECT series_instance_uid FROM"
                   f" series s WHERE s.study_instance_uid = ? AND {emptied.format('s.series_instance_uid')})",
                   (study_uid,))
        series_gone = tx.execute(f"DELETE FROM series WHERE study_instance_uid = ? AND"
                                 f" {emptied.format('series.series_instance_uid')}", (study_uid,)).rowcount
        tx.execute("UPDATE series SET study_instance_uid = (SELECT i.study_instance_uid FROM instances i"
                   " WHERE i.series_instance_uid = series.series_instance_uid ORDER BY i.received_at DESC LIMIT 1)"
                   " WHERE study_instance_uid = ?", (study_uid,))  # what is left of it lies in another study
        tx.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            [("instances_deleted", len(files) + len(results)), ("series_deleted", series_gone + results_series)],
        )
        forget_empty_studies(tx, {study_uid, *(r["study_instance_uid"] for r in results)})
    paths = [Path(row["path"]) for row in (*files, *results)]
    for path in (*paths, *notes):
        path.unlink(missing_ok=True)
    for folder in {path.parent for path in paths}:
        _remove_if_unused(folder)
    _remove_empty_folders(store.instances_dir / study_uid)  # probe 34: folders named by the study stayed
    for folder in aside:  # probe 51: an erasure had left the copies a reindex set aside
        _delete(folder)
    AuditLog(store.root).record("study_purged", study_instance_uid=study_uid, series=series, instances=len(files),
                                results=len(results), notes=len(notes), set_aside=done.set_aside)
    log.info("deleted study %s by hand: %d series, %d instance(s) (%.1f MB), %d result instance(s) made of it, %d"
             " rejection note(s)", study_uid, len(series), len(files), done.bytes / 1e6, len(results), len(notes))
    try:  # the write-ahead log keeps old copies of the pages the purge overwrote until it is truncated
        store.conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        log.warning("the index's write-ahead log could not be truncated after the purge: %s", exc)
    return done


def _notes_of(store: Store, study_uid: str) -> list[Path]:
    """The rejection notes in the node's ``notes/`` folder that name ``study_uid`` (each holds the patient's
    name, ID and accession number: probe 34 found them outliving ``purge --study``)."""
    folder = store.root / NOTES_FOLDER
    found = []
    for path in sorted(folder.glob("*.dcm")) if folder.is_dir() else ():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except Exception as exc:  # noqa: BLE001 - a damaged note is not ours to judge here: kept, said
            log.warning("rejection note %s could not be read: %s", path.name, exc)
            continue
        if str(ds.get("StudyInstanceUID", "")) == study_uid:
            found.append(path)
    return found


def _remove_empty_folders(top: Path) -> None:
    """``top`` and the folders under it that hold nothing, deepest first (a study's folder once purged)."""
    if not top.is_dir():
        return
    for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        (folder / METADATA_CACHE).unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty: something arrived meanwhile
    try:
        top.rmdir()
    except OSError:
        pass


def _delete_results_in(tx: sqlite3.Connection, results: list[sqlite3.Row]) -> int:
    """Inside the transaction: the index rows of these results and their series when emptied; returns how many
    of those series had completed (``uronode_series_completed_total`` keeps counting them). Their deliveries
    are history, pruned once they are older than the cutoff (a dead letter's instance is gone now)."""
    uids = [(r["sop_instance_uid"],) for r in results]
    tx.executemany("DELETE FROM instances WHERE sop_instance_uid = ?", uids)
    tx.executemany("DELETE FROM results WHERE sop_instance_uid = ?", uids)
    completed = 0
    for series in {r["series_instance_uid"] for r in results}:
        if tx.execute("SELECT 1 FROM instances WHERE series_instance_uid = ? LIMIT 1", (series,)).fetchone() is None:
            tx.execute("DELETE FROM series_associations WHERE series_instance_uid = ?", (series,))
            completed += tx.execute("DELETE FROM series WHERE series_instance_uid = ? AND state = 'complete'",
                                    (series,)).rowcount
            tx.execute("DELETE FROM series WHERE series_instance_uid = ?", (series,))
    return completed


def _keep_counts_in(tx: sqlite3.Connection, cutoff: float) -> None:
    """Inside the pruning transaction, before the rows go: add what they count to the ``counters`` table."""
    counts: list[tuple[str, int]] = []
    (failures,) = tx.execute(f"SELECT {FAILED_TRIES} {_OLD_DELIVERIES}", (cutoff,)).fetchone()
    counts.append((DELIVERY_FAILURES, int(failures)))
    for row in tx.execute(
        "SELECT CASE WHEN claimed_by GLOB 'local:*' THEN 'local' ELSE claimed_by END AS w, coalesce(sum(seconds), 0)"
        f" AS s {_OLD_JOBS} AND claimed_by IS NOT NULL GROUP BY w", (cutoff,)):
        # their model time; the jobs themselves are counted as they end (uronode.jobs.count_outcome)
        counts.append((f"{PRUNED}inference_ms:{row['w']}", round(row["s"] * 1000)))
    bounds = ", ".join(f"coalesce(sum(seconds <= {bound:g}), 0)" for bound in INFERENCE_BUCKETS_S)
    *buckets, total, count = tx.execute(
        f"SELECT {bounds}, coalesce(sum(seconds), 0), count(seconds) {_OLD_JOBS} AND seconds IS NOT NULL", (cutoff,)
    ).fetchone()
    counts += [(f"{PRUNED}inference_le:{b:g}", int(n)) for b, n in zip(INFERENCE_BUCKETS_S, buckets, strict=True)]
    counts += [(f"{PRUNED}inference_count", int(count)), (f"{PRUNED}inference_ms_sum", round(total * 1000))]
    tx.executemany(
        "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
        [c for c in counts if c[1]],
    )


def _prune_history(store: Store, cutoff: float, done: Purged, *, dry_run: bool) -> None:
    """Jobs, deliveries and associations that ended before ``cutoff`` (counted in ``done``), and the rejection
    notes no delivery names any more."""
    if dry_run:
        conn = store.conn()
        done.jobs = conn.execute(f"SELECT count(*) {_OLD_JOBS}", (cutoff,)).fetchone()[0]
        done.deliveries = conn.execute(f"SELECT count(*) {_OLD_DELIVERIES}", (cutoff,)).fetchone()[0]
        done.associations = conn.execute(f"SELECT count(*) {_OLD_ASSOCIATIONS}", (cutoff,)).fetchone()[0]
        return
    with store.transaction() as tx:
        _keep_counts_in(tx, cutoff)
        done.jobs = tx.execute(f"DELETE {_OLD_JOBS}", (cutoff,)).rowcount
        done.deliveries = tx.execute(f"DELETE {_OLD_DELIVERIES}", (cutoff,)).rowcount
        done.associations = Associations.prune_in(tx, cutoff)
        named = {row["path"] for row in tx.execute("SELECT DISTINCT path FROM deliveries")}
    notes = store.root / NOTES_FOLDER
    if notes.is_dir():
        for note in notes.glob("*.dcm"):
            try:
                if str(note) not in named and note.stat().st_mtime < cutoff:
                    note.unlink()
            except OSError as exc:
                log.warning("retention: rejection note %s could not be removed: %s", note, exc.strerror or exc)


def _remove_if_unused(folder: Path) -> None:
    """Remove a series folder left with nothing but the metadata cache (a new arrival keeps it)."""
    try:
        (folder / METADATA_CACHE).unlink(missing_ok=True)
        folder.rmdir()
        folder.parent.rmdir()  # the study's folder, when this was its last series
    except OSError:
        pass  # not empty: something arrived meanwhile, or the study has other series

