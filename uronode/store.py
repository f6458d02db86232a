"""The node's store: an instance's file on disk and its row in the index, both durable before it returns.

An instance is written to a temporary file, fsynced, renamed atomically to
``instances/<study>/<series>/<sop>-<suffix>.dcm`` (its directory fsynced too:
:mod:`uronode.files`), and only then indexed in a committed SQLite
transaction. A caller answers success only after :meth:`Store.put` returns,
so an instance that was acknowledged survives a crash or a power cut.

Same SOP Instance UID again:
- identical bytes (compared with the stored file), the same data set in another file, or the same images
  (:func:`compare_images`: pixels the same once decoded, nothing else the node reads changed), or a lossy copy of
  an image held losslessly: nothing is written and nothing changes (the series is not re-opened);
- different bytes: the new file replaces the old one, and the series is
  marked changed and re-opened so that its results are recomputed.

The index records each file by its absolute path. A data folder that was moved, renamed or restored
somewhere else has rows that still name the old place: the node's start-up (:meth:`Store.recover`) points
them at this folder (:meth:`Store.relocate`) before anything reads them, and orphan removal never removes
a file on account of a row that names a place outside the data folder, so that a moved folder never loses
an instance.

Reading the index is :mod:`uronode.queries`; associations are
:mod:`uronode.associations`; the schema and connections :mod:`uronode.db`.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag

from uronode import files, queries
from uronode.associations import Associations
from uronode.db import Database, DataDirUnusable, bump_counter, index_version
from uronode.dicomfile import (
    PREAMBLE,
    file_meta_end,
    identity_value,
    is_valid_uid,
    lossy,
    same_identity,
)
from uronode.errors import InvalidInstance, OutOfResources
from uronode.header import read_header
from uronode.types import (
    OWN_MANUFACTURER,
    SERIES_COMPLETIONS,
    InstanceHeader,
    SeriesState,
    StoredInstance,
    StoreOutcome,
)

log = logging.getLogger(__name__)

Buffer = files.Buffer

INDEX_FILE = "index.sqlite3"
"""The store's index, in the data folder: its presence says the folder holds a node's data."""
METADATA_CACHE = ".metadata.json"
"""A series folder's cached DICOMweb metadata (written by ``dicomweb.wado``; not an instance)."""
ORPHAN_AGE_S = 60.0
"""At start-up, an instance file that nothing indexes is removed once it is older than this (a stop between
its rename and its index row's commit, a retention pass cut off between its transaction and its files)."""
ORPHANS_AT_MOST = 100
"""More files that nothing indexes than this, and than the index names, are no leftovers of a stop (one an
association, or a series a retention pass or a purge cut off between its commit and its files): the index has
lost most of the folder, and none is removed; the log says why (probe 44, review 39)."""
SEEN_FILE = "index.seen"
"""In the data folder: how many instances the node has seen its index take (written by the running node every
few seconds and at its stop, from the index's ``instances_taken`` counter). An index that has taken fewer is older
than the folder (its ``-wal`` lost, or a backup restored over it): probe 49, the start had removed the images it
did not name as a crash's leftovers and analysed a series it held part of."""
TAKEN = "instances_taken"
"""The ``counters`` row the index counts every instance it takes in (stored, replaced or indexed again)."""
REINDEX_UNFINISHED = "reindex-unfinished"
"""In the data folder while ``uronode reindex`` works (review 48: a run cut off, then a start, took the files it
had not indexed yet for leftovers of a crash and removed them): no store opens the folder but the next run's."""
NOTES_FOLDER = "notes"
"""Under the data folder: the rejection notes :mod:`uronode.supersede` writes, owed to destinations (not in the
index: not the study's content); deliveries name them by path. Defined here, the lower module, for both."""
PATH_TABLES = (("instances", "sop_instance_uid"), ("deliveries", "id"))
"""The tables that name files in the data folder by their absolute path, with each one's key."""


class Store:
    """Instance files and their index. Safe to use from several threads and processes."""

    def __init__(self, data_dir: Path, *, fsync: bool = True, max_disk_used_percent: float = 95.0,
                 upgrade: bool = True, rebuilding: bool = False) -> None:
        self.root = Path(data_dir).resolve()
        self.instances_dir = self.root / "instances"
        self.tmp_dir = self.root / "tmp"
        self.db_path = self.root / INDEX_FILE
        self.fsync = fsync
        self.max_disk_used_percent = max_disk_used_percent
        missing = [p for p in (self.instances_dir, self.tmp_dir, self.root, *self.root.parents) if not p.exists()]
        if not rebuilding and (self.root / REINDEX_UNFINISHED).exists():
            raise DataDirUnusable(f"a `uronode reindex` of {self.root} did not finish: run it again (the index is"
                                  " half-made, and a start would remove the files it does not name yet)")
        if not rebuilding and (lost := self._lost_index()) is not None:  # uronode reindex makes one beside them
            raise DataDirUnusable(lost)
        try:
            for folder in (self.root, self.instances_dir, self.tmp_dir):
                folder.mkdir(parents=True, exist_ok=True)
            self.db = Database(self.db_path, durable=fsync, upgrade=upgrade)
        except (OSError, DataDirUnusable) as exc:
            for made in missing:  # nothing half-made is left: the folders this made go again (empty ones only)
                try:
                    made.rmdir()
                except OSError:
                    break
            if isinstance(exc, DataDirUnusable):
                raise
            raise DataDirUnusable(f"the data folder {self.root} cannot be used: {files.disk_problem(self.root, exc)}"
                                  ) from exc
        self.files = files.DurableFiles(self.tmp_dir, fsync=fsync)

    def _lost_index(self) -> str | None:
        """Why the folder cannot be opened: its index is gone or holds nothing (no file, an empty one, one whose
        writes were all in a ``-wal`` that is gone) while ``instances/`` holds instance files; None otherwise.
        Probe 44: a new index was made beside them, and the start-up took every file for a leftover of a crash
        and removed it; a node never starts on such a folder, and nothing is made or removed."""
        if index_version(self.db_path) not in (None, 0) or not self.instances_dir.is_dir():
            return None
        first = next(self.instances_dir.rglob("*.dcm"), None)
        if first is None:
            return None
        state = "missing" if not self.db_path.exists() else "empty (its -wal, which held it, may be gone)"
        return (f"the index {self.db_path} is {state}, but {self.instances_dir} holds instance files ({first.name}"
                " among them): the node does not start on it, as it would take them all for leftovers of a crash"
                " and remove them. Restore the index from its backup, or rebuild it from the files with `uronode"
                " reindex` (docs/operations.md, \"A damaged or lost index\"), or move instances/ out of the data"
                " folder to start afresh")

    def conn(self) -> sqlite3.Connection:
        """This thread's connection to the database."""
        return self.db.conn()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error)."""
        with self.db.transaction() as conn:
            yield conn

    def recover(self) -> int:
        """Clean up after a crash; call once at start-up before anything receives.

        First SQLite's quick check of the index: a damaged one raises :class:`DataDirUnusable` (probe 44).
        Temporary files were never acknowledged and are removed. Index rows that still name the files of a
        data folder moved or restored from elsewhere are pointed at this one (:meth:`relocate`), first.
        Then instance files that nothing indexes are removed once they are older than :data:`ORPHAN_AGE_S`
        (:meth:`remove_orphans`; unless there are more than the index names), and the instances of series still
        arriving that an earlier version indexed are read again (:meth:`reindex_receiving`). Associations
        still open in the index died with the previous process: they are
        closed as ``lost`` so that their series can complete. Returns how many
        associations were closed.
        """
        self.db.check()  # a damaged index stops the start, before anything is judged by it
        if (behind := self.behind()) is not None:  # nor does one older than the folder (probe 49)
            raise DataDirUnusable(
                f"the index {self.db_path} is older than its data folder: it has taken {behind[0]} instance(s), and"
                f" the node saw it take {behind[1]} ({SEEN_FILE}): its -wal was lost or deleted, or a backup older"
                " than the files was restored over it. The node does not start on it: it would take the files it"
                " does not name for leftovers of a crash and remove them, and analyse series it holds only part of."
                " Run `uronode reindex` (docs/operations.md, \"A damaged or lost index\")")
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
        self.relocate()
        self.remove_orphans()
        self.reindex_receiving()
        return Associations(self.db).close_left_open()

    def taken(self) -> int | None:
        """How many instances the index has taken in (its ``instances_taken`` counter); None for an index that
        never counted (an earlier version's, or one restored from before it counted)."""
        row = self.conn().execute("SELECT value FROM counters WHERE name = ?", (TAKEN,)).fetchone()
        return int(row["value"]) if row is not None else None

    def seen(self) -> int | None:
        """What :data:`SEEN_FILE` says the index had taken, or None where it is missing or unreadable."""
        try:
            return int((self.root / SEEN_FILE).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def note_seen(self) -> int:
        """Write :data:`SEEN_FILE` with what the index has taken (the running node, every few seconds and at its
        stop; ``uronode reindex`` once it has finished); returns it. Only what is committed is read, so with
        ``storage.fsync`` on it is never more than the index holds durably; with it off a power cut can lose the
        index's last commits and keep this file, and the next start refuses as for a lost ``-wal`` (fsync off is
        for throwaway folders). A temporary file, fsynced where the store fsyncs, renamed over it: never
        half-written."""
        taken = self.taken() or 0
        if self.seen() != taken:
            temporary = self.root / f".{SEEN_FILE}.tmp"
            with open(temporary, "w") as out:
                out.write(f"{taken}\n")
                if self.fsync:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(temporary, self.root / SEEN_FILE)
        return taken

    def settle_seen(self) -> int:
        """After ``uronode reindex``: the index counts at least what the folder had seen it take, and
        :data:`SEEN_FILE` says what it has now; returns it."""
        seen = self.seen() or 0
        with self.transaction() as tx:
            tx.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET"
                       " value = max(value, excluded.value)", (TAKEN, seen))
        return self.note_seen()

    def behind(self) -> tuple[int, int] | None:
        """Where the index is older than its data folder (it has taken fewer instances than the node saw it take:
        its ``-wal`` lost or deleted, or a backup restored over it): what it has taken, and what was seen; else
        None."""
        seen, taken = self.seen(), self.taken()
        if seen is None or taken is None or taken >= seen:
            return None  # not recorded, or an index that never counted (review 49: one restored by a roll-back)
        if next(self.instances_dir.rglob("*.dcm"), None) is None:
            return None  # no file to lose: a folder started afresh (its instances/ moved away) with its record left
        return taken, seen

    def reindex_receiving(self) -> int:
        """Read again, from their files, the headers of the instances of series still arriving that an earlier
        index revision read (an upgrade between two instances of a series): the columns added since are filled
        before the series is judged. Probe 43: a bone-kernel and a coronal series received half under the earlier
        version were judged without their kernel and orientation, after the upgrade, and analysed. Returns how
        many were read; one whose file cannot be read keeps its row as it is (said once)."""
        rows = self.conn().execute(
            "SELECT sop_instance_uid, path FROM instances WHERE indexed_by < ? AND series_instance_uid IN"
            " (SELECT series_instance_uid FROM series WHERE state = 'receiving')", (INDEX_REVISION,)).fetchall()
        done, failed = 0, []
        for row in rows:
            try:
                header = read_header([Path(row["path"]).read_bytes()])
            except (OSError, InvalidInstance) as exc:
                failed.append(f"{row['sop_instance_uid']}: {exc}")
                continue
            with self.db.transaction() as conn:
                conn.execute(_REINDEX_INSTANCE, (*_fields(header, _INSTANCE_FIELDS[1:]), _position(header),
                                                 row["sop_instance_uid"]))
                conn.execute(_REINDEX_SERIES, (*_fields(header, _SERIES_FIELDS[2:]), header.series_instance_uid))
            done += 1
        if done:
            log.info("read again %d instance header(s) of series still arriving that an earlier version indexed",
                     done)
        if failed:
            log.warning("%d instance header(s) of series still arriving could not be read again (first %s): they"
                        " are judged by what the earlier version indexed", len(failed), failed[0])
        return done

    def relocate(self) -> int:
        """Point the index's rows that name a file in another data folder at the same file in this one;
        returns how many rows changed, logged.

        The index keeps absolute paths, so a data folder moved or renamed (the default ``uronode-data`` is
        relative to where the node starts) or a backup restored elsewhere still names the old place: the
        node would serve nothing, and a retention pass on a copy would delete the original's files. A row
        is moved when its path has the shape the store gives its files (``instances/<study>/<series>/<file>``,
        or a rejection note in ``notes/``), whatever lies above; one in no such shape is left as it is
        (:meth:`remove_orphans` never deletes a file on its account). One transaction, so a stop in
        the middle changes nothing. Only the node's start-up calls it, and ``uronode reindex``, which holds the
        folder's lock as a node does: a command run while a node is running must not rewrite the paths that node
        reads (the same folder may be seen under other paths,
        a container's volume from its host)."""
        prefix = f"{self.root}{os.sep}"
        if not any(self.conn().execute(f"SELECT 1 FROM {table} WHERE substr(path, 1, ?) != ? LIMIT 1",
                                       (len(prefix), prefix)).fetchone() for table, _ in PATH_TABLES):
            return 0  # the usual start: one pass over the index, no write
        with self.transaction() as tx:
            outside = self._outside(tx)
            for table, key in PATH_TABLES:
                tx.executemany(f"UPDATE {table} SET path = ? WHERE {key} = ?",
                               [(here, row_key) for named, row_key, here in outside if named == table and here])
        moved = sum(1 for _, _, here in outside if here)
        if moved:
            log.warning("the data folder was moved or restored here: %d index row(s) now name their files in %s",
                        moved, self.root)
        return moved

    def rows_elsewhere(self) -> int:
        """How many index rows (instances, deliveries) name a file of another data folder (this one moved or
        restored from there) that :meth:`relocate` would point here. A row that names a file outside this
        folder in no shape the store gives its files is not counted, and never moved."""
        return sum(1 for _, _, here in self._outside(self.conn()) if here)

    def _outside(self, conn: sqlite3.Connection) -> list[tuple[str, object, str | None]]:
        """The rows whose path lies outside this data folder: each one's table, key, and the path of the same
        file in this folder (None when it is in no shape the store gives its files)."""
        prefix = f"{self.root}{os.sep}"
        return [(table, row["key"], self._here(row["path"]))
                for table, key in PATH_TABLES
                for row in conn.execute(f"SELECT {key} AS key, path FROM {table} WHERE substr(path, 1, ?) != ?",
                                        (len(prefix), prefix))]

    def _here(self, stored: str) -> str | None:
        """The path in this data folder of the file that ``stored`` named in another, or None when it is in
        no shape the store gives its files."""
        parts = PurePath(stored).parts
        if len(parts) >= 5 and parts[-4] == "instances" and is_valid_uid(parts[-3]) and is_valid_uid(parts[-2]) \
                and _file_name(parts[-1]):
            return str(self.instances_dir.joinpath(*parts[-3:]))
        if len(parts) >= 3 and parts[-2] == NOTES_FOLDER and _file_name(parts[-1]):
            return str(self.root / NOTES_FOLDER / parts[-1])
        return None

    def remove_orphans(self, older_than_s: float = ORPHAN_AGE_S, now: float | None = None) -> int:
        """Remove the instance files under ``instances/`` that no index row names and that are older than
        ``older_than_s`` (a stop between an instance's rename and its commit leaves one, never
        acknowledged; so does a retention pass cut off after its transaction), and the folders they leave
        empty; returns how many files, logged.

        A file is indexed when the row of the SOP Instance UID its name carries names that very file. A row
        that names a file outside this folder's ``instances/`` (a folder moved or restored from elsewhere
        before :meth:`relocate` ran, or a row it could not move) keeps the file of its SOP Instance UID:
        which file it meant cannot be told here, and a file is never removed on its account."""
        cutoff = (time.time() if now is None else now) - older_than_s
        conn = self.conn()
        orphans = []
        for study in _folders(self.instances_dir):
            for series in _folders(study):
                for path in series.glob("*.dcm"):
                    sop = path.name.rsplit("-", 1)[0]
                    row = conn.execute("SELECT path FROM instances WHERE sop_instance_uid = ?", (sop,)).fetchone()
                    if row is not None and self._names(row["path"], path):
                        continue
                    try:
                        if path.stat().st_mtime < cutoff:
                            orphans.append(path)
                    except OSError:
                        continue
        (indexed, newest) = conn.execute("SELECT count(*), max(received_at) FROM instances").fetchone()
        # a crash leaves at most a file per store in flight, newer than every row; a retention pass or a purge cut off
        # leaves older ones. Many newer files are what an older index lacks (probe 50: a backup a month older, its
        # index.seen with it, had 25,500 images removed at the start, the bar growing with the index)
        recent = sum(1 for path in orphans if newest is not None and _mtime(path) > newest - RECENT_ORPHAN_S)
        if recent > ORPHANS_AT_MOST:
            log.error("%d instance file(s) that nothing indexes are newer than the newest it names: the index is older"
                      " than the files (restored from a backup, or its -wal lost?); none removed. Run `uronode"
                      " reindex` with the node stopped (docs/operations.md, \"A damaged or lost index\"); where a"
                      " `uronode purge` was cut off, they are what it deleted: move them away instead", recent)
            return 0
        if len(orphans) > max(ORPHANS_AT_MOST, indexed):
            log.error("%d instance file(s) that nothing indexes, more than the %d it indexes: the index has lost"
                      " most of what the folder holds (restored from a much older backup, or damaged?); none"
                      " removed (docs/operations.md, \"A damaged or lost index\")", len(orphans), indexed)
            return 0
        removed = 0
        for path in orphans:
            try:
                path.unlink()
            except OSError:
                continue
            removed += 1
        for study in _folders(self.instances_dir):
            for series in _folders(study):
                if not any(p.suffix == ".dcm" for p in series.iterdir()):
                    (series / METADATA_CACHE).unlink(missing_ok=True)
                    _remove_empty(series)
            _remove_empty(study)
        if removed:
            log.warning("removed %d instance file(s) that nothing indexes (left by a stop or a crash)", removed)
        return removed

    def adopt_files(self, aside: Path, progress: Callable[[int, int], object] | None = None) -> Adopted:
        """Index the instance files under ``instances/`` that the index does not name (``uronode reindex``: an
        index rebuilt after it was lost or damaged, or restored from a backup older than the files), from their
        own headers, the oldest file first, so that a study's row has its latest image's values as when they
        arrived. Their series are indexed as complete and not analysed (:data:`REINDEXED`): what was analysed
        is not known, and analysing a whole archive again would send every result to the destinations again; a
        series already in the index keeps its state. Of two files of one instance the newer is indexed (by
        their times; a run cut off and run again decides as one run would). A file in no place or name the
        store gives it (copied in by hand) is moved to where the store keeps it, named by its header; one that
        cannot be read, and the older of two copies, are moved under ``aside``: none is left for the start-up's
        orphan removal to delete. Only with no node serving on the folder (the caller holds its lock).
        ``progress(done, of)``: called every :data:`PROGRESS_EVERY_S` with the files gone through."""
        found: list[tuple[float, str]] = []  # strings: a Path a file cost 0.7 KB (probe 50: 266 MB for 249,000)
        for study in _folders(self.instances_dir):
            for series in _folders(study):
                for entry in os.scandir(series):
                    if entry.name.endswith(".dcm"):
                        with suppress(OSError):
                            found.append((entry.stat().st_mtime, entry.path))
        found.sort()
        done = Adopted()
        conn = self.conn()
        touched: set[Path] = set()
        said = time.monotonic()
        for number, (mtime, name) in enumerate(found, 1):
            if progress is not None and time.monotonic() - said >= PROGRESS_EVERY_S:
                progress(number, len(found))  # probe 50: seven silent minutes for a year's files
                said = time.monotonic()
            path = Path(name)
            sop = path.name.rsplit("-", 1)[0]
            row = conn.execute("SELECT path FROM instances WHERE sop_instance_uid = ?", (sop,)).fetchone()
            if row is not None and self._names(row["path"], path):
                continue  # indexed already
            try:
                data = path.read_bytes()
                header = read_header([data])
                place = path if self._in_place(path, header) else self.instance_path(header)
            except (OSError, InvalidInstance) as exc:
                done.unreadable.append(f"{path.relative_to(self.instances_dir)}: {exc}")
                _move_aside(path, aside / "unreadable" / path.relative_to(self.instances_dir))
                continue
            held = conn.execute("SELECT path FROM instances WHERE sop_instance_uid = ?",
                                (header.sop_instance_uid,)).fetchone()
            other = Path(held["path"]) if held is not None and Path(held["path"]) != path else None
            if other is not None and not other.is_relative_to(self.instances_dir):
                continue  # the index names a file of it outside this folder (moved here, not yet relocated)
            if other is not None and not other.is_file():
                other = None  # the index names a file that is gone: this one takes its place
            if other is not None and _mtime(other) > mtime:
                # the index names a newer file of it: this one is the leftover of a replacement
                done.older_copies += 1
                _move_aside(path, aside / "older-copies" / path.relative_to(self.instances_dir))
                continue
            if place != path:
                place.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, place)
                done.moved += 1
            own = header.manufacturer == OWN_MANUFACTURER
            with self.db.transaction() as tx:
                tx.execute(_PUT_INSTANCE, (*_fields(header, _INSTANCE_FIELDS), _position(header), "", mtime,
                                           str(place), len(data)))
                tx.execute(_COUNT_TAKEN)
                made = tx.execute(_ADOPT_SERIES, (*_fields(header, _SERIES_FIELDS), mtime, mtime, time.time(),
                                                  REINDEXED_OWN if own else REINDEXED)).rowcount
                if made:  # complete as it is taken in: a completion, as the metric counts them (review 53)
                    bump_counter(tx, SERIES_COMPLETIONS)
                tx.execute(_KEEP_STUDY if own else _PUT_STUDY, (*_fields(header, _STUDY_FIELDS), mtime))
            done.series += made
            done.instances += other is None  # a newer file of an instance indexed is no new instance
            touched.add(place.parent)
            if other is not None:  # the older file this one replaces
                done.older_copies += 1
                _move_aside(other, aside / "older-copies" / other.relative_to(self.instances_dir))
        with self.db.transaction() as tx:  # each series made here received until its latest file
            tx.execute("UPDATE series SET last_received_at = (SELECT max(received_at) FROM instances i WHERE"
                       " i.series_instance_uid = series.series_instance_uid) WHERE reason IN (?, ?)",
                       (REINDEXED, REINDEXED_OWN))
        for folder in touched:
            (folder / METADATA_CACHE).unlink(missing_ok=True)
        return done

    def _in_place(self, path: Path, header: InstanceHeader) -> bool:
        """Whether ``path`` is where and as the store keeps the instance ``header`` describes
        (``instances/<study>/<series>/<sop>-<suffix>.dcm``)."""
        return (path.parent == self.instances_dir / header.study_instance_uid / header.series_instance_uid
                and path.name.rsplit("-", 1)[0] == header.sop_instance_uid and _file_name(path.name))

    def _names(self, stored: str, path: Path) -> bool:
        """Whether an index row's ``stored`` path stands for ``path`` (a file in this folder's ``instances/``):
        it is that file, or it lies outside this folder's ``instances/`` (never judged, so never removed)."""
        named = PurePath(stored)
        return named == path or not named.is_relative_to(self.instances_dir)

    def check_space(self, incoming_bytes: int = 0) -> None:
        """Raise :class:`OutOfResources` when the disk is over its watermark or cannot take ``incoming_bytes``."""
        files.check_space(self.root, self.max_disk_used_percent, incoming_bytes)

    def instance_path(self, header: InstanceHeader) -> Path:
        """A new file name for this instance (a fresh suffix, so a replacement never overwrites in place)."""
        for uid in (header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid):
            if not is_valid_uid(uid):  # never let an unchecked value become a path
                raise InvalidInstance(f"{uid[:80]!r} is not a valid UID")
        return (
            self.instances_dir
            / header.study_instance_uid
            / header.series_instance_uid
            / f"{header.sop_instance_uid}-{secrets.token_hex(6)}.dcm"
        )

    def put(
        self,
        header: InstanceHeader,
        parts: Sequence[Buffer],
        *,
        calling_ae: str = "",
        association_id: int | None = None,
    ) -> StoreOutcome:
        """Store one encoded instance (the parts are written one after the other).

        An instance the node made (Manufacturer ``uronode``) that comes back with other bytes (a PACS
        sending the study back, re-encoded) leaves the node's own copy in place, as a duplicate (probe 22: the
        node's results were replaced by the PACS's copies); so does one a worker makes again (a job requeued: the
        same UID for the same source and findings, other times: probe 32, a receiver got changed content under a
        UID it held). Returns once the file and its index row are durable. Raises
        :class:`OutOfResources` when the disk is full or a write fails, and
        :class:`InvalidInstance` for unusable UIDs; in both cases nothing is
        indexed and no partial file is left behind.
        """
        size = sum(len(p) for p in parts)
        self.check_space(size)
        final = self.instance_path(header)
        written = False
        while True:
            row = self.conn().execute(
                "SELECT size, path, manufacturer, transfer_syntax_uid, series_instance_uid FROM instances"
                " WHERE sop_instance_uid = ?", (header.sop_instance_uid,),
            ).fetchone()
            kept = self._kept(row, header, parts, size, calling_ae)
            if kept:
                if written:  # another copy of it was indexed while this one was written (probe 47)
                    final.unlink(missing_ok=True)
                return StoreOutcome.DUPLICATE
            changed = (identity_changes(Path(row["path"]), header)
                       if row is not None and header.manufacturer != OWN_MANUFACTURER else ())
            if not written:
                self.files.write(final, parts)
                written = True
            try:
                indexed = self._index(header, final, size, calling_ae, association_id, changed,
                                      compared=row["path"] if row is not None else None)
            except sqlite3.Error as exc:
                final.unlink(missing_ok=True)
                raise OutOfResources(f"the index could not be updated: {exc}") from exc
            if indexed is not None:
                break
            # another copy of this SOP Instance UID was indexed between the comparison and the write (probe 47: two
            # senders at once made identical bytes a replacement, its series counted as changed): compare again
        outcome, old_path = indexed
        if old_path is not None and old_path != final:
            try:
                old_path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("replaced instance file %s could not be removed: %s", old_path, exc)
        return outcome

    def _kept(self, row: sqlite3.Row | None, header: InstanceHeader, parts: Sequence[Buffer], size: int,
              calling_ae: str) -> bool:
        """Whether the instance stored as ``row`` stays as it is, the incoming copy ``parts`` not taken: the same
        bytes, the same data set in another file, one of the node's own results, the same images with nothing
        else the node reads changed, or a lossy copy of an image held losslessly (:func:`compare_images`)."""
        if row is None:
            return False
        stored = Path(row["path"])
        sender = calling_ae or "a sender"
        if row["size"] == size and _same_bytes(stored, parts):
            return True
        if _same_data_set(stored, parts, row["transfer_syntax_uid"], header.transfer_syntax_uid):
            # the same data set in another file's wrapping: received by C-STORE (the node's File Meta, naming the
            # caller) and then uploaded as the sender's file (probe 26: the upload re-ran a delivered job)
            log.info("instance %s: the same data set came again from %s in another file; kept as it was",
                     header.sop_instance_uid, sender)
            return True
        if row["manufacturer"] == OWN_MANUFACTURER == header.manufacturer:
            log.info("instance %s: one of the node's own results came again from %s with other bytes; the node's "
                     "copy is kept", header.sop_instance_uid, sender)
            return True
        if header.manufacturer == OWN_MANUFACTURER or row["series_instance_uid"] != header.series_instance_uid:
            return False
        verdict = compare_images(stored, parts)
        if verdict is SAME_IMAGE:
            # probe 47: a VNA's lossless re-send (RLE) re-ran the series' job and sent its results again, with a
            # rejection note for the earlier ones
            log.info("instance %s: the same images came again from %s in another encoding or with only values the "
                     "node does not read changed (%s); kept as it was", header.sop_instance_uid, sender, NOT_READ_SAID)
        elif verdict is LOSSY_COPY:
            # probe 48: a patient's CD, lossy-compressed under the original UIDs, uploaded after the series came
            # from the PACS, replaced the originals and re-ran the analysis on the lossy copy
            log.info("instance %s: a lossy-compressed copy of an image the node holds losslessly came from %s, "
                     "nothing else changed; the original is kept", header.sop_instance_uid, sender)
        return verdict is not None

    def _index(
        self,
        header: InstanceHeader,
        path: Path,
        size: int,
        calling_ae: str,
        association_id: int | None,
        identity_changed: Sequence[str] = (),
        *,
        compared: str | None = None,
    ) -> tuple[StoreOutcome, Path | None] | None:
        """Index the instance (a row for it, its series re-opened, its study's attributes) in one transaction.
        ``identity_changed``: what of the patient's or order's identity the instance it replaces named otherwise
        (:func:`identity_changes`): its series is marked, and its results are withdrawn when it completes.
        ``compared``: the path of the stored copy the caller compared the instance with (None: none was stored);
        where another is indexed now (a copy of the same instance stored meanwhile), nothing is written and None
        is returned, for the caller to compare again."""
        now = time.time()
        position = _position(header)
        own = header.manufacturer == OWN_MANUFACTURER
        marked = other_patient = False
        with self.db.transaction() as conn:
            old = conn.execute(
                "SELECT path, series_instance_uid, study_instance_uid FROM instances WHERE sop_instance_uid = ?",
                (header.sop_instance_uid,),
            ).fetchone()
            if (old["path"] if old is not None else None) != compared:
                return None
            series_was_in = conn.execute("SELECT study_instance_uid FROM series WHERE series_instance_uid = ?",
                                         (header.series_instance_uid,)).fetchone()
            replaced = old is not None  # identical bytes never get this far
            conn.execute(_PUT_INSTANCE, (*_fields(header, _INSTANCE_FIELDS), position, calling_ae, now, str(path), size))
            conn.execute(_COUNT_TAKEN)
            conn.execute(_PUT_SERIES, (*_fields(header, _SERIES_FIELDS), SeriesState.RECEIVING.value, now, now,
                                       int(replaced)))
            study = conn.execute("SELECT patient_id FROM studies WHERE study_instance_uid = ?",
                                 (header.study_instance_uid,)).fetchone()
            # said once a series (review 40: two patients' series arriving interleaved flipped the row at each image)
            joined = series_was_in is None or series_was_in["study_instance_uid"] != header.study_instance_uid
            other_patient = (not own and joined and study is not None
                             and identity_value("PatientID", study["patient_id"])
                             != identity_value("PatientID", header.patient_id))
            # the node's own results never change the study's attributes (probe 45: results made before a correction,
            # stored after it, listed the study under the earlier name again)
            conn.execute(_KEEP_STUDY if own else _PUT_STUDY, (*_fields(header, _STUDY_FIELDS), now))
            # an image moved to another series was compared with its own earlier copy, not with that series: only
            # the series it stays in is marked (review 40)
            if identity_changed and old["series_instance_uid"] == header.series_instance_uid:
                marked = conn.execute("UPDATE series SET identity_changed = 1 WHERE series_instance_uid = ?"
                                      " AND identity_changed = 0", (header.series_instance_uid,)).rowcount > 0
            left = {row["study_instance_uid"] for row in (old, series_was_in) if row is not None}
            forget_empty_studies(conn, left - {header.study_instance_uid})
            if old is not None and old["series_instance_uid"] != header.series_instance_uid:
                # The instance moved to another series: the old one changed as well.
                conn.execute(_REOPEN_SERIES, (now, old["series_instance_uid"]))
            if association_id is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO series_associations (series_instance_uid, association_id) VALUES (?, ?)",
                    (header.series_instance_uid, association_id),
                )
        if marked:  # once a series: a whole series sent again would say it of every image
            log.warning("series %s: an image came again naming another %s (a correction at the PACS?): the results "
                        "made of the series as it was are withdrawn when it is complete, every model's, and it is "
                        "analysed again as it is now", header.series_instance_uid, " and ".join(identity_changed))
        if other_patient:
            log.warning("study %s: an image of series %s names another Patient ID than the study's earlier images "
                        "(a study UID given to two patients, or a correction at the PACS): the node lists the study "
                        "under the latest; check the study at the PACS", header.study_instance_uid,
                        header.series_instance_uid)
        outcome = StoreOutcome.REPLACED if replaced else StoreOutcome.STORED
        return outcome, Path(old["path"]) if old is not None else None

    def discard(self, sop_instance_uids: Sequence[str]) -> int:
        """Take instances this node has just stored out again, index rows and files (a cancelled job's results,
        made before its cancel was seen); their series and study rows go when emptied. Returns how many were
        found. Not for received instances: retention (:mod:`uronode.retention`) deletes those."""
        if not sop_instance_uids:
            return 0
        with self.db.transaction() as conn:
            rows = [row for uid in sop_instance_uids if (row := conn.execute(
                "SELECT sop_instance_uid, series_instance_uid, study_instance_uid, path FROM instances"
                " WHERE sop_instance_uid = ?", (uid,)).fetchone()) is not None]
            conn.executemany("DELETE FROM instances WHERE sop_instance_uid = ?", [(r["sop_instance_uid"],) for r in rows])
            for series in {r["series_instance_uid"] for r in rows}:
                if conn.execute("SELECT 1 FROM instances WHERE series_instance_uid = ? LIMIT 1", (series,)).fetchone():
                    continue
                conn.execute("DELETE FROM series_associations WHERE series_instance_uid = ?", (series,))
                conn.execute("DELETE FROM series WHERE series_instance_uid = ?", (series,))
            forget_empty_studies(conn, {r["study_instance_uid"] for r in rows})
        for row in rows:
            try:
                Path(row["path"]).unlink(missing_ok=True)
            except OSError as exc:  # an orphan now: start-up's orphan removal takes it
                log.warning("discarded instance file %s could not be removed: %s", row["path"], exc)
        return len(rows)

    # -- what the worker reads back -------------------------------------------------------

    def series_instances(self, series_instance_uid: str) -> list[StoredInstance]:
        return queries.series_instances(self.db, series_instance_uid)

    def get_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        return queries.get_instance(self.db, sop_instance_uid)


PROGRESS_EVERY_S = 10.0
"""How often :meth:`Store.adopt_files` says how far it is."""
REINDEXED = ("indexed again from its files by `uronode reindex`: not analysed since (what was analysed before was in"
             " the index that was lost; upload the series, or have one of its images changed, to have it analysed:"
             " the same images sent again are duplicates)")
"""Why a series ``uronode reindex`` found in the files is complete without a job."""
REINDEXED_OWN = "the node's own results, indexed again from their files by `uronode reindex`"


@dataclass
class Adopted:
    """What :meth:`Store.adopt_files` did: instances and series it indexed, files it moved aside."""

    instances: int = 0
    series: int = 0
    older_copies: int = 0
    moved: int = 0
    """Files indexed under another name or folder (their header's), where the store keeps them."""
    unreadable: list[str] = field(default_factory=list)


RECENT_ORPHAN_S = 60.0
"""How much older than the newest row a file a crash left can be (stores in flight, committed in another order)."""


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _move_aside(path: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)


def forget_empty_studies(conn: sqlite3.Connection, studies: Iterable[str]) -> None:
    """Take the rows of ``studies`` that hold no instance and no series any more out of the index (in the caller's
    transaction): a study whose every instance was moved to another study, superseded or discarded is not listed
    as an empty one."""
    for study in studies:
        conn.execute("DELETE FROM studies WHERE study_instance_uid = ?"
                     " AND NOT EXISTS (SELECT 1 FROM instances WHERE study_instance_uid = ?)"
                     " AND NOT EXISTS (SELECT 1 FROM series WHERE study_instance_uid = ?)", (study, study, study))


INDEX_REVISION = 2
"""What the index reads of an instance's header (the instance columns ``_INSTANCE_FIELDS``): raised with every
column added to them. A row an earlier revision wrote (``indexed_by`` lower: 0 for every row from before schema 15)
lacks what was added since; :meth:`Store.reindex_receiving` reads the series still arriving again at start-up."""

_INSTANCE_FIELDS = (
    "sop_instance_uid", "series_instance_uid", "study_instance_uid", "sop_class_uid", "transfer_syntax_uid",
    "modality", "series_description", "image_type", "manufacturer", "instance_number", "contrast_agent",
    "rows", "columns", "bits_allocated", "number_of_frames", "convolution_kernel", "image_orientation",
    "rescale_type", "body_part", "protocol_name",
)
_SERIES_FIELDS = ("series_instance_uid", "study_instance_uid", "modality", "series_description", "series_number",
                  "series_date", "series_time")
_STUDY_FIELDS = (
    "study_instance_uid", "patient_name", "patient_id", "patient_birth_date", "patient_sex", "study_date",
    "study_time", "accession_number", "referring_physician_name", "study_description", "study_id",
)
"""Columns of the index named as the header's fields, written from them."""


def _fields(header: InstanceHeader, names: tuple[str, ...]) -> tuple[object, ...]:
    return tuple(getattr(header, name) for name in names)


def _position(header: InstanceHeader) -> str | None:
    """The index's text of an instance's ImagePositionPatient."""
    return "\\".join(repr(v) for v in header.image_position) if header.image_position else None


def _marks(count: int) -> str:
    return ", ".join("?" * count)


_PUT_INSTANCE = (
    f"INSERT OR REPLACE INTO instances ({', '.join(_INSTANCE_FIELDS)}, image_position, calling_ae, received_at,"
    f" path, size, indexed_by) VALUES ({_marks(len(_INSTANCE_FIELDS) + 5)}, {INDEX_REVISION})"
)
_REINDEX_INSTANCE = (f"UPDATE instances SET {', '.join(f'{name} = ?' for name in _INSTANCE_FIELDS[1:])},"
                     f" image_position = ?, indexed_by = {INDEX_REVISION} WHERE sop_instance_uid = ?")
_REINDEX_SERIES = (f"UPDATE series SET {', '.join(f'{name} = ?' for name in _SERIES_FIELDS[2:])}"
                   " WHERE series_instance_uid = ?")
_PUT_SERIES = (
    f"INSERT INTO series ({', '.join(_SERIES_FIELDS)}, state, first_received_at, last_received_at)"
    f" VALUES ({_marks(len(_SERIES_FIELDS) + 3)})"
    " ON CONFLICT(series_instance_uid) DO UPDATE SET last_received_at = excluded.last_received_at,"
    " study_instance_uid = excluded.study_instance_uid,"
    " modality = excluded.modality, series_description = excluded.series_description,"
    " series_number = excluded.series_number, series_date = excluded.series_date,"
    " series_time = excluded.series_time, generation = generation + (state = 'complete'),"
    " replaced_count = replaced_count + ?,"
    " state = 'receiving', completed_at = NULL, disposition = NULL, reason = NULL"
)
"""A new series, or one that gets another instance: receiving again (a new generation if it was complete), in
the study its latest instance names (probe 32: a study UID corrected at the PACS and sent again had left the series
in its old study, the new study's results without their CT)."""
_PUT_STUDY = (
    f"INSERT INTO studies ({', '.join(_STUDY_FIELDS)}, updated_at) VALUES ({_marks(len(_STUDY_FIELDS) + 1)})"
    " ON CONFLICT(study_instance_uid) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in (*_STUDY_FIELDS[1:], "updated_at"))
)
"""The study's attributes as its latest received instance has them."""
_COUNT_TAKEN = (f"INSERT INTO counters (name, value) VALUES ('{TAKEN}', 1)"
                " ON CONFLICT(name) DO UPDATE SET value = value + 1")
_ADOPT_SERIES = (
    f"INSERT INTO series ({', '.join(_SERIES_FIELDS)}, first_received_at, last_received_at, state, completed_at,"
    f" disposition, reason) VALUES ({_marks(len(_SERIES_FIELDS) + 2)}, 'complete', ?, 'skipped', ?)"
    " ON CONFLICT(series_instance_uid) DO NOTHING"
)
"""A series :meth:`Store.adopt_files` found in the files: complete, not analysed (one the index has stays as it is)."""
_KEEP_STUDY = (
    f"INSERT INTO studies ({', '.join(_STUDY_FIELDS)}, updated_at) VALUES ({_marks(len(_STUDY_FIELDS) + 1)})"
    " ON CONFLICT(study_instance_uid) DO NOTHING"
)
"""A study's row for one of the node's own results: made where there is none, never changed."""
IDENTITY = (("PatientID", "patient_id", "Patient ID"), ("PatientName", "patient_name", "patient name"),
            ("PatientBirthDate", "patient_birth_date", "birth date"), ("PatientSex", "patient_sex", "sex"),
            ("AccessionNumber", "accession_number", "Accession Number"))
"""What names the patient and the order of an image (a change of one after analysis is a correction, probe 45):
its keyword, the header's field that reads it, and the words that say it."""
_REOPEN_SERIES = (
    "UPDATE series SET state = 'receiving', last_received_at = ?, replaced_count = replaced_count + 1,"
    " generation = generation + (state = 'complete'), completed_at = NULL, disposition = NULL"
    " WHERE series_instance_uid = ?"
)


def identity_changes(old: Path, header: InstanceHeader) -> tuple[str, ...]:
    """What of the patient's or order's identity (:data:`IDENTITY`) the stored file ``old`` names otherwise than
    ``header``, the instance that replaces it (never the values: they are logged), each compared by
    :func:`uronode.dicomfile.same_identity` (a name, birth date or sex given or left out on one side is no change, a
    Patient ID or Accession Number is). Nothing where the file cannot be read (the replacement is taken as it is)."""
    try:
        before = read_header([old.read_bytes()])
    except (OSError, InvalidInstance) as exc:
        log.warning("instance %s: the file it replaces cannot be read to compare identities: %s",
                    header.sop_instance_uid, exc)
        return ()
    return tuple(words for keyword, field, words in IDENTITY
                 if not same_identity(keyword, getattr(before, field), getattr(header, field)))


def _folders(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir()]
    except OSError:
        return []


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        return  # not empty


def _file_name(name: str) -> bool:
    """Whether ``name`` can be a file the store wrote (a DICOM file's name, never a way out of its folder)."""
    return name.endswith(".dcm") and not name.startswith(".")


_COMPARED_AT_ONCE = 1 << 20
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
"""Implicit and Explicit VR Little Endian: a sender may convert one to the other on the wire (storescu proposes
Explicit VR for an Implicit VR file), so the same data set may come in either."""
_DECODED_AT_MOST = 256 << 20
"""Data sets compared element by element (two encodings) only up to this size: beyond it, other bytes replace."""


def _same_data_set(path: Path, parts: Sequence[Buffer], stored_syntax: str, syntax: str) -> bool:
    """Whether the file holds the data set these parts hold, whatever either's File Meta Information (its
    preamble, source AE title, implementation, group length) says: byte for byte in one transfer syntax, element
    for element where one is Implicit and the other Explicit VR Little Endian. Both must be Part 10 files, the
    incoming one's File Meta within its first part (as the listener and an upload give it)."""
    first = memoryview(parts[0])
    if bytes(first[len(PREAMBLE) - 4 : len(PREAMBLE)]) != b"DICM" or (start := file_meta_end(first)) > len(first):
        return False
    incoming = sum(len(memoryview(part)) for part in parts) - start
    try:
        with path.open("rb") as f:
            head = f.read(1 << 16)
            if head[len(PREAMBLE) - 4 : len(PREAMBLE)] != b"DICM" or (stored_start := file_meta_end(head)) >= len(head):
                return False
            if stored_syntax != syntax:
                return ({stored_syntax, syntax} <= _UNCOMPRESSED and incoming <= _DECODED_AT_MOST
                        and _same_elements(path, parts))
            if os.fstat(f.fileno()).st_size - stored_start != incoming:
                return False
            f.seek(stored_start)
            for view in (first[start:], *(memoryview(part) for part in parts[1:])):
                for at in range(0, len(view), _COMPARED_AT_ONCE):
                    chunk = view[at : at + _COMPARED_AT_ONCE]
                    if f.read(len(chunk)) != chunk:
                        return False
            return f.read(1) == b""
    except OSError:
        return False


def _same_elements(path: Path, parts: Sequence[Buffer]) -> bool:
    """Whether the two Part 10 files' data sets hold the same elements with the same value bytes (group lengths
    aside), the items of sequences compared alike at any depth: the value bytes of an element are the same in
    Implicit and Explicit VR Little Endian, only its header differs. Anything that cannot be compared so makes
    them differ, and the incoming one replaces."""
    try:
        if path.stat().st_size > _DECODED_AT_MOST + (1 << 20):
            return False
        stored = pydicom.dcmread(path)
        incoming = pydicom.dcmread(io.BytesIO(b"".join(parts)))
        return _same_values(stored, incoming)
    except Exception:  # noqa: BLE001 - a data set pydicom cannot take apart is not shown to be the same
        return False


def _same_values(a: Dataset, b: Dataset, ignore: frozenset[BaseTag] | None = None) -> bool:
    """The same tags (group lengths aside) with the same value bytes; a sequence's items compared alike. With
    ``ignore``, those tags and private ones are left out, at any depth."""
    def kept(tag: BaseTag) -> bool:
        return tag.element != 0 and (ignore is None or (tag not in ignore and not tag.is_private))

    tags = [tag for tag in a.keys() if kept(tag)]
    if tags != [tag for tag in b.keys() if kept(tag)]:
        return False
    for tag in tags:
        x, y = a.get_item(tag), b.get_item(tag)
        if "SQ" in (x.VR, y.VR, _known_vr(tag)):
            first, second = a[tag].value, b[tag].value
            if not (isinstance(first, DicomSequence) and isinstance(second, DicomSequence) and len(first) == len(second)
                    and all(_same_values(i, j, ignore) for i, j in zip(first, second, strict=True))):
                return False
        elif isinstance(x, RawDataElement) and isinstance(y, RawDataElement):
            if x.value != y.value:
                return False
        elif a[tag].value != b[tag].value:  # one already decoded by pydicom (the character set)
            return False
    return True


NOT_READ = frozenset(Tag(t) for t in (
    0x00080054,  # Retrieve AE Title
    0x00080056,  # Instance Availability
    0x00081190,  # Retrieve URL
    0x00880130,  # Storage Media File-set ID
    0x00880140,  # Storage Media File-set UID
    0x04000561,  # Original Attributes Sequence (what a PACS coerced, kept by it)
    0x7FE00010,  # Pixel Data (compared decoded)
    0xFFFCFFFC,  # Data Set Trailing Padding
))
"""What an archive adds when it sends an image again (where it is kept, what it coerced) and the node neither reads
nor writes into its results (private elements too): an image that differs from the stored one only there, its
pixels the same once decoded, is the same image (:func:`compare_images`). Not the issuers and other IDs of the
patient, nor the issuer of the Accession Number (review 43: the loader tells two patients apart by the issuer, and
the results copy the Patient and General Study modules), nor the lossy-compression flags (the loader's caution)."""
NOT_READ_SAID = "where an archive keeps it, what it coerced, private elements"


SAME_IMAGE = "the same image"
LOSSY_COPY = "a lossy copy"
LOSSY_CHANGES = frozenset(Tag(t) for t in (
    0x00080008,  # Image Type (ORIGINAL made DERIVED: compared apart, the rest of it must stay)
    0x00082111,  # Derivation Description ("Lossy compression with JPEG ...")
    0x00089215,  # Derivation Code Sequence (113040, Lossy Compression)
    0x00280100, 0x00280101, 0x00280102, 0x00280103,  # Bits Allocated and Stored, High Bit, Pixel Representation
    0x00280106, 0x00280107,  # Smallest and Largest Image Pixel Value
    0x00281052, 0x00281053, 0x00281054,  # Rescale Intercept, Slope and Type
    0x00282110, 0x00282112, 0x00282114,  # Lossy Image Compression, its ratio and method
))
"""What a lossy copy changes besides its pixels (review 45: DCMTK's dcmcjpeg makes the image DERIVED, describes the
derivation, and rescales it into 12 bits; review 46: into 8 bits with +eb)."""
def _lossy_copy(stored: Dataset, incoming: Dataset) -> bool:
    """Whether ``incoming``, lossy-compressed, repeats ``stored``'s header: every element the same but
    :data:`NOT_READ`, :data:`LOSSY_CHANGES` and private ones, and its Image Type the same but for ORIGINAL made
    DERIVED. Its pixels are not compared (review 46: a copy windowed into 8 bits, or one the node cannot decode,
    replaced the original; a pixel test could not tell a copy from its neighbour slice): an image the node holds
    losslessly is never replaced by a lossy one of the same header."""
    if not _same_values(stored, incoming, ignore=NOT_READ | LOSSY_CHANGES):
        return False
    # a rescale changes with the stored values' range (a copy into 12 or 8 bits, or unsigned), never alone: one
    # that changes alone is a correction of the HU (review 47: it was taken for a copy and dropped)
    if (any(_differs(stored, incoming, k) for k in ("RescaleIntercept", "RescaleSlope", "RescaleType"))
            and not any(_differs(stored, incoming, k)
                        for k in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"))):
        return False
    types = [list(ds.get("ImageType") or []) for ds in (stored, incoming)]
    return [t[1:] for t in types] == [types[0][1:]] * 2 and types[0][:1] in (types[1][:1], ["ORIGINAL"])


def _differs(a: Dataset, b: Dataset, keyword: str) -> bool:
    """Whether two data sets give ``keyword`` different values (numbers compared as numbers: "-1024" and
    "-1024.0" are one intercept)."""
    values = [ds.get(keyword) for ds in (a, b)]
    try:
        return float(values[0]) != float(values[1])
    except (TypeError, ValueError):
        return str(values[0] or "") != str(values[1] or "")


def compare_images(path: Path, parts: Sequence[Buffer]) -> str | None:
    """What the incoming Part 10 file is to the stored one, for the model and its results: :data:`SAME_IMAGE`
    where every element but :data:`NOT_READ` and private ones is the same (value bytes, sequences item by item)
    and the pixels are the same, byte for byte where both are uncompressed, else once decoded, a frame at a time,
    whatever the transfer syntax (a lossless re-encoding: RLE, JPEG-LS, JPEG 2000 lossless); :data:`LOSSY_COPY`
    where the incoming one is lossy-compressed (``uronode.dicomfile.lossy``), the stored one is not, and it repeats
    its header (:func:`_lossy_copy`); else None (anything that cannot be read or decoded too). Costs
    a read of both files, and a decoding where either is compressed (review 43: about 3 ms an image uncompressed,
    30 ms in JPEG 2000, on 2 cores), once an image comes again with other bytes; the header is compared first,
    so a corrected image is told apart without decoding."""
    try:
        if path.stat().st_size > _DECODED_AT_MOST or sum(len(memoryview(p)) for p in parts) > _DECODED_AT_MOST:
            return None
        stored = pydicom.dcmread(path)
        incoming = pydicom.dcmread(io.BytesIO(b"".join(parts)))
        if lossy(incoming) and not lossy(stored):
            return LOSSY_COPY if _lossy_copy(stored, incoming) else None
        if not _same_values(stored, incoming, ignore=NOT_READ):
            return None
        if "PixelData" not in stored or "PixelData" not in incoming:
            return SAME_IMAGE if "PixelData" not in stored and "PixelData" not in incoming else None
        if (not stored.file_meta.TransferSyntaxUID.is_compressed
                and not incoming.file_meta.TransferSyntaxUID.is_compressed):
            return SAME_IMAGE if stored.PixelData == incoming.PixelData else None
        frames = int(stored.get("NumberOfFrames") or 1)
        for index in range(frames):
            first, second = pixel_array(stored, index=index), pixel_array(incoming, index=index)
            if first.shape != second.shape or not np.array_equal(first, second):
                return None
        return SAME_IMAGE
    except Exception:  # noqa: BLE001 - images that cannot be compared are not shown to be the same
        return None


def _known_vr(tag: BaseTag) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _same_bytes(path: Path, parts: Sequence[Buffer]) -> bool:
    """Whether the file holds exactly these bytes (read only when a SOP Instance UID comes again)."""
    try:
        with path.open("rb") as f:
            for part in parts:
                view = memoryview(part)
                if f.read(len(view)) != view:
                    return False
            return f.read(1) == b""
    except OSError:
        return False
