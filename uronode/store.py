"""The node's store: instance files on disk and their index in SQLite.

An instance is written to a temporary file, fsynced, renamed atomically to
``instances/<study>/<series>/<sop>-<suffix>.dcm`` (its directory fsynced too),
and only then indexed in a committed SQLite transaction. A caller answers
success only after :meth:`Store.put` returns, so an instance that was
acknowledged survives a crash or a power cut.

Same SOP Instance UID again:
- identical bytes (compared with the stored file): nothing is written and nothing changes
  (the series is not re-opened);
- different bytes: the new file replaces the old one, and the series is
  marked changed and re-opened so that its results are recomputed.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from uronode import db
from uronode.dicomfile import is_valid_uid
from uronode.errors import InvalidInstance, OutOfResources
from uronode.types import InstanceHeader, SeriesState, StoredInstance, StoreOutcome

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview

METADATA_CACHE = ".metadata.json"
"""A series folder's cached DICOMweb metadata (written by ``dicomweb.wado``; not an instance)."""


class Store:
    """Instance files and their index. Safe to use from several threads and processes."""

    def __init__(self, data_dir: Path, *, fsync: bool = True, max_disk_used_percent: float = 95.0) -> None:
        self.root = Path(data_dir).resolve()
        self.instances_dir = self.root / "instances"
        self.tmp_dir = self.root / "tmp"
        self.db_path = self.root / "index.sqlite3"
        self.fsync = fsync
        self.max_disk_used_percent = max_disk_used_percent
        self._local = threading.local()
        self._known_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()
        self._counter = itertools.count()
        self._spares: queue.Queue[tuple[Path, int]] | None = None
        for folder in (self.root, self.instances_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.conn()  # creates the schema

    # -- connections -----------------------------------------------------------------

    def conn(self) -> sqlite3.Connection:
        """This thread's connection to the index."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = db.connect(self.db_path, durable=self.fsync)
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error)."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- start-up ----------------------------------------------------------------------

    def recover(self) -> int:
        """Clean up after a crash; call once at start-up before anything receives.

        Temporary files were never acknowledged and are removed. Associations
        still open in the index died with the previous process: they are
        closed as ``lost`` so that their series can complete. Returns how many
        associations were closed.
        """
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
        now = time.time()
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE associations SET ended_at = ?, outcome = 'lost' WHERE ended_at IS NULL", (now,)
            )
        if cur.rowcount:
            log.warning("closed %d association(s) left open by a previous run", cur.rowcount)
        return cur.rowcount

    # -- associations -----------------------------------------------------------------

    def open_association(self, calling_ae: str, peer_host: str) -> int:
        """Record an association that brings instances; :class:`OutOfResources` when the index is full."""
        try:
            with self.transaction() as conn:
                cur = conn.execute(
                    "INSERT INTO associations (calling_ae, peer_host, pid, started_at) VALUES (?, ?, ?, ?)",
                    (calling_ae, peer_host, os.getpid(), time.time()),
                )
        except sqlite3.Error as exc:  # a full disk: the index cannot grow
            raise OutOfResources(f"the index could not be updated: {exc}") from exc
        return int(cur.lastrowid or 0)

    def close_association(self, association_id: int, outcome: str) -> None:
        """Record its end; if the index cannot be written, its series still complete by the quiet rule."""
        try:
            with self.transaction() as conn:
                conn.execute(
                    "UPDATE associations SET ended_at = ?, outcome = ? WHERE id = ? AND ended_at IS NULL",
                    (time.time(), outcome, association_id),
                )
        except sqlite3.Error as exc:
            log.error("association %d could not be closed in the index: %s", association_id, exc)

    # -- instances --------------------------------------------------------------------

    def check_space(self, incoming_bytes: int = 0) -> None:
        """Raise :class:`OutOfResources` when the disk is over its watermark or cannot take ``incoming_bytes``."""
        st = os.statvfs(self.root)
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        if total <= 0:
            return
        used_percent = 100.0 * (total - free) / total
        if used_percent > self.max_disk_used_percent:
            raise OutOfResources(
                f"disk {used_percent:.1f} % full, over the {self.max_disk_used_percent:g} % watermark"
            )
        if incoming_bytes and free < incoming_bytes * 2 + (1 << 20):
            raise OutOfResources(f"only {free} bytes free for an instance of {incoming_bytes} bytes")

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

        Returns once the file and its index row are durable. Raises
        :class:`OutOfResources` when the disk is full or a write fails, and
        :class:`InvalidInstance` for unusable UIDs; in both cases nothing is
        indexed and no partial file is left behind.
        """
        size = sum(len(p) for p in parts)
        self.check_space(size)
        final = self.instance_path(header)
        conn = self.conn()
        row = conn.execute(
            "SELECT size, path FROM instances WHERE sop_instance_uid = ?", (header.sop_instance_uid,)
        ).fetchone()
        if row is not None and row["size"] == size and _same_bytes(Path(row["path"]), parts):
            return StoreOutcome.DUPLICATE
        self._write_file(final, parts)
        try:
            outcome, old_path = self._index(header, final, size, calling_ae, association_id)
        except sqlite3.Error as exc:
            final.unlink(missing_ok=True)
            raise OutOfResources(f"the index could not be updated: {exc}") from exc
        if old_path is not None and old_path != final:
            try:
                old_path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("replaced instance file %s could not be removed: %s", old_path, exc)
        return outcome

    def _ensure_dir(self, folder: Path) -> None:
        if folder in self._known_dirs:
            return
        with self._dirs_lock:
            created = []
            probe = folder
            while not probe.exists():
                created.append(probe)
                probe = probe.parent
            folder.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                for new in created:  # make each new directory entry durable
                    self._fsync_dir(new.parent)
            self._known_dirs.add(folder)

    @staticmethod
    def _fsync_dir(folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _spare_file(self) -> tuple[Path, int]:
        """A new, empty, open temporary file: from the spares made ahead of time, or made now.

        Creating a file costs the receive path up to a millisecond on ext4 here
        (profiled); a helper thread makes the next few ahead, while the next
        instance is still on the wire.
        """
        if self._spares is None:
            self._spares = queue.Queue(maxsize=4)
            threading.Thread(target=self._make_spares, name="store-spares", daemon=True).start()
        try:
            return self._spares.get_nowait()
        except queue.Empty:
            return self._new_tmp()

    def _new_tmp(self) -> tuple[Path, int]:
        tmp = self.tmp_dir / f"{os.getpid()}-{threading.get_ident()}-{next(self._counter)}.part"
        return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)

    def _make_spares(self) -> None:
        assert self._spares is not None
        while True:
            try:
                spare = self._new_tmp()
            except OSError:
                time.sleep(1.0)  # the disk is full or read-only: put() reports it; try again later
                continue
            self._spares.put(spare)  # blocks while enough are waiting

    def _write_file(self, final: Path, parts: Sequence[Buffer]) -> None:
        tmp: Path | None = None
        try:
            self._ensure_dir(final.parent)
            tmp, fd = self._spare_file()
            try:
                for part in parts:
                    view = memoryview(part)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.replace(tmp, final)
            except FileNotFoundError:  # its folder was removed behind our back (retention, an operator)
                with self._dirs_lock:
                    self._known_dirs.discard(final.parent)
                self._ensure_dir(final.parent)
                os.replace(tmp, final)
            if self.fsync:
                self._fsync_dir(final.parent)
        except OSError as exc:
            if tmp is not None:
                _remove_quietly(tmp)
            raise OutOfResources(f"the instance could not be written: {exc.strerror or exc}") from exc

    def _index(
        self,
        header: InstanceHeader,
        path: Path,
        size: int,
        calling_ae: str,
        association_id: int | None,
    ) -> tuple[StoreOutcome, Path | None]:
        now = time.time()
        position = "\\".join(repr(v) for v in header.image_position) if header.image_position else None
        with self.transaction() as conn:
            old = conn.execute(
                "SELECT path, series_instance_uid FROM instances WHERE sop_instance_uid = ?",
                (header.sop_instance_uid,),
            ).fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO instances (sop_instance_uid, series_instance_uid, study_instance_uid,"
                " sop_class_uid, transfer_syntax_uid, modality, series_description, image_type, manufacturer,"
                " instance_number, image_position, calling_ae, received_at, path, size)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    header.sop_instance_uid,
                    header.series_instance_uid,
                    header.study_instance_uid,
                    header.sop_class_uid,
                    header.transfer_syntax_uid,
                    header.modality,
                    header.series_description,
                    header.image_type,
                    header.manufacturer,
                    header.instance_number,
                    position,
                    calling_ae,
                    now,
                    str(path),
                    size,
                ),
            )
            replaced = old is not None  # identical bytes never get this far
            conn.execute(
                "INSERT INTO series (series_instance_uid, study_instance_uid, modality, series_description,"
                " series_number, state, first_received_at, last_received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(series_instance_uid) DO UPDATE SET"
                "  last_received_at = excluded.last_received_at,"
                "  modality = excluded.modality, series_description = excluded.series_description,"
                "  series_number = excluded.series_number,"
                "  generation = generation + (state = 'complete'),"
                "  replaced_count = replaced_count + ?,"
                "  state = 'receiving', completed_at = NULL, disposition = NULL, reason = NULL",
                (
                    header.series_instance_uid,
                    header.study_instance_uid,
                    header.modality,
                    header.series_description,
                    header.series_number,
                    SeriesState.RECEIVING.value,
                    now,
                    now,
                    int(replaced),
                ),
            )
            conn.execute(
                "INSERT INTO studies (study_instance_uid, patient_name, patient_id, patient_birth_date, patient_sex,"
                " study_date, study_time, accession_number, referring_physician_name, study_description, study_id,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(study_instance_uid) DO UPDATE SET patient_name = excluded.patient_name,"
                " patient_id = excluded.patient_id, patient_birth_date = excluded.patient_birth_date,"
                " patient_sex = excluded.patient_sex, study_date = excluded.study_date,"
                " study_time = excluded.study_time, accession_number = excluded.accession_number,"
                " referring_physician_name = excluded.referring_physician_name,"
                " study_description = excluded.study_description, study_id = excluded.study_id,"
                " updated_at = excluded.updated_at",
                (
                    header.study_instance_uid,
                    header.patient_name,
                    header.patient_id,
                    header.patient_birth_date,
                    header.patient_sex,
                    header.study_date,
                    header.study_time,
                    header.accession_number,
                    header.referring_physician_name,
                    header.study_description,
                    header.study_id,
                    now,
                ),
            )
            if old is not None and old["series_instance_uid"] != header.series_instance_uid:
                # The instance moved to another series: the old one changed as well.
                conn.execute(
                    "UPDATE series SET state = 'receiving', last_received_at = ?, replaced_count = replaced_count + 1,"
                    " generation = generation + (state = 'complete'), completed_at = NULL, disposition = NULL"
                    " WHERE series_instance_uid = ?",
                    (now, old["series_instance_uid"]),
                )
            if association_id is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO series_associations (series_instance_uid, association_id) VALUES (?, ?)",
                    (header.series_instance_uid, association_id),
                )
        outcome = StoreOutcome.REPLACED if replaced else StoreOutcome.STORED
        return outcome, Path(old["path"]) if old is not None else None

    # -- reading ----------------------------------------------------------------------

    def series_instances(self, series_instance_uid: str) -> list[StoredInstance]:
        rows = self.conn().execute(
            _INSTANCE_QUERY + " WHERE i.series_instance_uid = ? ORDER BY i.instance_number, i.sop_instance_uid",
            (series_instance_uid,),
        ).fetchall()
        return [_stored(r) for r in rows]

    def find_instances(
        self, study_instance_uid: str, series_instance_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[StoredInstance]:
        """A study's instances (or a series' or one), ordered by series and instance number, in one query."""
        where, params = ["i.study_instance_uid = ?"], [study_instance_uid]
        if series_instance_uid is not None:
            where.append("i.series_instance_uid = ?")
            params.append(series_instance_uid)
        if sop_instance_uid is not None:
            where.append("i.sop_instance_uid = ?")
            params.append(sop_instance_uid)
        rows = self.conn().execute(
            _INSTANCE_QUERY + " WHERE " + " AND ".join(where)
            + " ORDER BY i.series_instance_uid, i.instance_number, i.sop_instance_uid",
            params,
        ).fetchall()
        return [_stored(r) for r in rows]

    def get_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        row = self.conn().execute(_INSTANCE_QUERY + " WHERE i.sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
        return _stored(row) if row is not None else None

    def series_row(self, series_instance_uid: str) -> sqlite3.Row | None:
        return self.conn().execute(
            "SELECT * FROM series WHERE series_instance_uid = ?", (series_instance_uid,)
        ).fetchone()

    def count_instances(self) -> int:
        return int(self.conn().execute("SELECT count(*) FROM instances").fetchone()[0])


_INSTANCE_QUERY = (
    "SELECT i.*, se.series_number, st.patient_name, st.patient_id, st.patient_birth_date, st.patient_sex,"
    " st.study_date, st.study_time, st.accession_number, st.referring_physician_name, st.study_description,"
    " st.study_id FROM instances i"
    " LEFT JOIN series se ON se.series_instance_uid = i.series_instance_uid"
    " LEFT JOIN studies st ON st.study_instance_uid = i.study_instance_uid"
)


def _remove_quietly(path: Path) -> None:
    """Remove a temporary file after a failure; a second failure is logged, the first one is what counts."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("temporary file %s could not be removed: %s", path, exc.strerror or exc)


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


def _stored(row: sqlite3.Row) -> StoredInstance:
    position = None
    if row["image_position"]:
        x, y, z = (float(v) for v in row["image_position"].split("\\"))
        position = (x, y, z)
    header = InstanceHeader(
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        study_instance_uid=row["study_instance_uid"],
        series_instance_uid=row["series_instance_uid"],
        transfer_syntax_uid=row["transfer_syntax_uid"],
        modality=row["modality"] or "",
        series_description=row["series_description"] or "",
        image_type=row["image_type"] or "",
        manufacturer=row["manufacturer"] or "",
        instance_number=row["instance_number"],
        image_position=position,
        series_number=row["series_number"],
        patient_name=row["patient_name"] or "",
        patient_id=row["patient_id"] or "",
        patient_birth_date=row["patient_birth_date"] or "",
        patient_sex=row["patient_sex"] or "",
        study_date=row["study_date"] or "",
        study_time=row["study_time"] or "",
        accession_number=row["accession_number"] or "",
        referring_physician_name=row["referring_physician_name"] or "",
        study_description=row["study_description"] or "",
        study_id=row["study_id"] or "",
    )
    return StoredInstance(
        header=header,
        path=Path(row["path"]),
        size=row["size"],
        calling_ae=row["calling_ae"] or "",
        received_at=row["received_at"],
    )
