"""The node's SQLite database: one file, WAL mode, shared by all processes, and its whole schema.

It holds the instance index, the series states, the associations that carried
them, the job queue and the outbox. Every write is a short transaction; with
``synchronous=FULL`` a commit is on disk when it returns. :class:`Database`
gives each thread its own connection; the modules that read and write the
tables (:mod:`uronode.store`, :mod:`uronode.associations`,
:mod:`uronode.queries`, :mod:`uronode.metrics`, the queue, outbox,
completion and retention) take one.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from uronode.errors import UronodeError
from uronode.files import disk_problem

log = logging.getLogger(__name__)

SCHEMA_VERSION = 20
BUSY_TIMEOUT_S = 30.0
"""How long a statement waits for another process's write lock before ``database is locked``."""
SIDE_FILES = ("-wal", "-shm", "-journal")
"""SQLite's files beside the index."""
_RESOURCE_WORDS = ("locked", "busy", "disk", "full", "i/o", "readonly", "unable to open")
_DAMAGE_WORDS = ("malformed", "not a database")


class DataDirUnusable(UronodeError):
    """The data folder or its index cannot be used (the disk is full, the file system read-only, the index
    locked); the message names the file or folder and the cause."""


class IndexDamaged(DataDirUnusable):
    """The index file is damaged (a page SQLite cannot read): restored from a backup, or rebuilt from the
    instance files by ``uronode reindex``. ``problem``: what SQLite found."""

    def __init__(self, path: Path, problem: object) -> None:
        super().__init__(damage_said(path, problem))
        self.problem = str(problem)


def is_resource_error(exc: BaseException) -> bool:
    """Whether a database error is the node's resources (a full disk, a lock held too long, a read-only
    file system), not a bug or a bad row: the work may succeed later, unchanged. A damaged index is not
    (probe 44: "database disk image is malformed" read as a full disk)."""
    return (isinstance(exc, sqlite3.OperationalError) and not is_damage(exc)
            and any(w in str(exc).lower() for w in _RESOURCE_WORDS))


def is_damage(exc: BaseException) -> bool:
    """Whether a database error says the index file is damaged (SQLite's SQLITE_CORRUPT and SQLITE_NOTADB)."""
    return isinstance(exc, sqlite3.DatabaseError) and any(w in str(exc).lower() for w in _DAMAGE_WORDS)


def index_version(path: Path) -> int | None:
    """The schema version of the index at ``path``, read without writing anything: None where there is none (no
    file, an empty one), 0 for one that holds no schema (created, never written, or whose writes were all in a
    ``-wal`` that is gone), -1 where it cannot be read so (left to :class:`Database` to say why)."""
    try:
        if path.stat().st_size == 0:
            return None
    except FileNotFoundError:
        return None
    except OSError:
        return -1
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error:
        return -1
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error:
        return -1
    finally:
        conn.close()

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid   TEXT PRIMARY KEY,
    series_instance_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    sop_class_uid      TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    modality           TEXT,
    series_description TEXT,
    image_type         TEXT,
    manufacturer       TEXT,
    instance_number    INTEGER,
    contrast_agent     TEXT,
    rows               INTEGER,
    columns            INTEGER,
    bits_allocated     INTEGER,
    number_of_frames   INTEGER,
    convolution_kernel TEXT,
    image_orientation  TEXT,
    rescale_type       TEXT,
    body_part          TEXT,
    protocol_name      TEXT,
    indexed_by         INTEGER NOT NULL DEFAULT 0,  -- the index revision that read its header (store.INDEX_REVISION)
    image_position     TEXT,
    calling_ae         TEXT,
    received_at        REAL NOT NULL,
    path               TEXT NOT NULL,
    size               INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_instance_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_instance_uid);

CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid TEXT PRIMARY KEY,
    patient_name       TEXT,
    patient_id         TEXT,
    patient_birth_date TEXT,
    patient_sex        TEXT,
    study_date         TEXT,
    study_time         TEXT,
    accession_number   TEXT,
    referring_physician_name TEXT,
    study_description  TEXT,
    study_id           TEXT,
    updated_at         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_patient ON studies(patient_id);
CREATE INDEX IF NOT EXISTS studies_accession ON studies(accession_number);
CREATE INDEX IF NOT EXISTS studies_date ON studies(study_date);

CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    modality           TEXT,
    series_description TEXT,
    series_number      INTEGER,
    series_date        TEXT,
    series_time        TEXT,
    state              TEXT NOT NULL,        -- receiving | complete
    first_received_at  REAL NOT NULL,
    last_received_at   REAL NOT NULL,
    generation         INTEGER NOT NULL DEFAULT 1,  -- +1 each time the series re-opens
    replaced_count     INTEGER NOT NULL DEFAULT 0,  -- instances replaced by different bytes
    identity_changed   INTEGER NOT NULL DEFAULT 0,  -- 1: an image replaced by one naming another patient or order,
                                                    -- until the series completes and its results are withdrawn
    completed_at       REAL,
    disposition        TEXT,                 -- queued | skipped (when complete)
    reason             TEXT                  -- why it was skipped
);
CREATE INDEX IF NOT EXISTS series_state ON series(state);
CREATE INDEX IF NOT EXISTS series_study ON series(study_instance_uid);

CREATE TABLE IF NOT EXISTS associations (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    calling_ae   TEXT NOT NULL,
    peer_host    TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   REAL NOT NULL,
    ended_at     REAL,
    outcome      TEXT                        -- released | aborted | lost (node restarted)
);
CREATE INDEX IF NOT EXISTS associations_open ON associations(ended_at);

CREATE TABLE IF NOT EXISTS series_associations (
    series_instance_uid TEXT NOT NULL,
    association_id      INTEGER NOT NULL,
    PRIMARY KEY (series_instance_uid, association_id)
);
CREATE INDEX IF NOT EXISTS series_associations_assoc ON series_associations(association_id);

CREATE TABLE IF NOT EXISTS jobs (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    series_generation   INTEGER NOT NULL,
    model               TEXT NOT NULL,
    state               TEXT NOT NULL,       -- queued | running | delivered | failed
    reason              TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    findings            TEXT,                -- JSON, once the model has run
    seconds             REAL,                -- the model's run on the series, once it has run
    dispatched_at       REAL,                -- published on the broker (queue.backend dramatiq), NULL: to publish
    publications        INTEGER NOT NULL DEFAULT 0,  -- times published since its last claim
    claimed_by          TEXT,                -- the worker of the last claim: 'local' or a remote worker's name
    claim_token         TEXT,                -- a remote claim's secret, while it holds the job
    lease_until         REAL,                -- a remote claim's end unless renewed (NULL for a local worker)
    withdrawn           TEXT                 -- why its results were withdrawn (uronode.supersede.withdraw)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_series ON jobs(series_instance_uid);

CREATE TABLE IF NOT EXISTS deliveries (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id              INTEGER,
    destination         TEXT NOT NULL,
    sop_instance_uid    TEXT NOT NULL,
    sop_class_uid       TEXT NOT NULL,
    path                TEXT NOT NULL,
    calling_ae          TEXT,                -- who sent the source series (for 'sender' destinations)
    state               TEXT NOT NULL,       -- pending | delivered | dead | superseded
    attempts            INTEGER NOT NULL DEFAULT 0,
    owed_s              REAL NOT NULL DEFAULT 0,  -- time owed so far, a step of the clock not counted (outbox)
    next_attempt_at     REAL NOT NULL,
    last_error          TEXT,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    UNIQUE (destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries(job_id);
CREATE INDEX IF NOT EXISTS deliveries_instance ON deliveries(sop_instance_uid);

CREATE TABLE IF NOT EXISTS results (
    sop_instance_uid   TEXT PRIMARY KEY,     -- a result instance the node made (uronode.supersede)
    source_series_uid  TEXT NOT NULL,        -- the series it was made of
    model              TEXT NOT NULL,        -- the model's name and version, as the results name them
    job_id             INTEGER NOT NULL,
    recorded_at        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_source ON results(source_series_uid, model);

CREATE TABLE IF NOT EXISTS rejected (
    sop_instance_uid   TEXT PRIMARY KEY,     -- a result taken out as superseded or withdrawn (uronode.supersede):
    source_series_uid  TEXT NOT NULL,        -- never given to new content again (review 35)
    rejected_at        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_source ON rejected(source_series_uid);

CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,                  -- instances_deleted, series_deleted (retention), leases_expired,
                                             -- jobs_republished, completions_refused (remote workers),
                                             -- series_completions, worker_jobs:*, worker_deaths (events)
    value INTEGER NOT NULL
);
"""


def connect(path: Path, *, durable: bool = True, upgrade: bool = True) -> sqlite3.Connection:
    """Open the database (creating its tables) in WAL mode.

    ``durable`` chooses ``synchronous=FULL`` (every commit fsynced) over
    ``NORMAL``. Connections are not shared between threads.
    """
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=True)
    try:
        _set_up(conn, durable, path, upgrade)
    except BaseException:
        conn.close()
        raise
    return conn


def damage_said(path: Path, problem: object) -> str:
    """What to tell of a damaged index: what SQLite found, and the way back."""
    return (f"the index {path} is damaged ({problem}): stop the node, keep a copy of the data folder, and restore"
            " the index from its last backup, or rebuild it from the instance files with `uronode reindex`"
            " (docs/operations.md, \"A damaged or lost index\")")


def _written_by_newer(version: int) -> DataDirUnusable:
    return DataDirUnusable(
        f"the index was written by a newer uronode (schema {version}; this one knows up to {SCHEMA_VERSION}): "
        "run that version, or restore the backup taken before the upgrade (docs/operations.md, "
        "\"Upgrading uronode\")")


def _set_up(conn: sqlite3.Connection, durable: bool, path: Path, upgrade: bool = True) -> None:
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA secure_delete=ON")  # a deleted row's text is overwritten, not left in free pages (probe 34)
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        # a newer uronode wrote it (its columns and states this one does not know): going on would read it
        # wrong and write rows the newer version misreads; going back takes the backup made before upgrading
        raise _written_by_newer(version)
    if 0 < version < SCHEMA_VERSION and not upgrade:
        # review 30: an admin command of a newer version upgraded the index under a running older node
        raise DataDirUnusable(
            f"the index was written by an earlier uronode (schema {version}; this one is {SCHEMA_VERSION}): stop"
            " the earlier node, then start this version's uronode serve, which brings it up to date"
            " (docs/operations.md, \"Upgrading uronode\")")
    if version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have done it meanwhile
        if version > SCHEMA_VERSION:  # a newer node did (review 30): left to it
            conn.execute("ROLLBACK")
            raise _written_by_newer(version)
        try:
            for table, column, kind in ADDED_COLUMNS:  # bring tables of older versions up to date
                existing = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                if existing and column not in existing:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                    if (fill := FILLED_WHEN_ADDED.get((table, column))) is not None:
                        conn.execute(fill)
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            for since, statement in SEEDED_COUNTERS:
                if 0 < version < since:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if 0 < version < SCHEMA_VERSION:  # an earlier version's index, not a new one (probe 31: nothing said so)
            log.warning("the index %s was brought from schema %d to %d: an earlier uronode wrote it, and must not"
                        " be run on it again (docs/operations.md, \"Upgrading uronode\")", path, version,
                        SCHEMA_VERSION)


ADDED_COLUMNS = [
    ("series", "modality", "TEXT"),
    ("series", "series_description", "TEXT"),
    ("series", "series_number", "INTEGER"),
    ("series", "series_date", "TEXT"),
    ("series", "series_time", "TEXT"),
    ("jobs", "withdrawn", "TEXT"),
    ("deliveries", "owed_s", "REAL NOT NULL DEFAULT 0"),
    ("jobs", "findings", "TEXT"),
    ("jobs", "seconds", "REAL"),
    ("jobs", "dispatched_at", "REAL"),
    ("jobs", "publications", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "claimed_by", "TEXT"),
    ("jobs", "claim_token", "TEXT"),
    ("jobs", "lease_until", "REAL"),
    ("instances", "contrast_agent", "TEXT"),
    ("instances", "rows", "INTEGER"),
    ("instances", "columns", "INTEGER"),
    ("instances", "bits_allocated", "INTEGER"),
    ("instances", "number_of_frames", "INTEGER"),
    ("instances", "convolution_kernel", "TEXT"),
    ("instances", "image_orientation", "TEXT"),
    ("instances", "rescale_type", "TEXT"),
    ("instances", "indexed_by", "INTEGER NOT NULL DEFAULT 0"),
    ("series", "identity_changed", "INTEGER NOT NULL DEFAULT 0"),
    ("instances", "body_part", "TEXT"),
    ("instances", "protocol_name", "TEXT"),
]
"""Columns added since the first version: added to an existing table when it lacks them."""

def bump_counter(conn: sqlite3.Connection, name: str, by: int = 1) -> None:
    """Add ``by`` to the ``counters`` row ``name`` (made at 0 where there is none), in the caller's transaction."""
    if by:
        conn.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                     (name, by, by))


SEEDED_COUNTERS = [
    # schema 20: counted as they happen from now on, each from what the earlier version computed (probe 57), so that
    # the metrics go on from where they were
    (20, "INSERT OR IGNORE INTO counters (name, value) SELECT 'series_completions', (SELECT count(*) FROM series"
         " WHERE state = 'complete') + coalesce((SELECT value FROM counters WHERE name = 'series_deleted'), 0)"),
    (20, "INSERT OR IGNORE INTO counters (name, value) SELECT 'worker_jobs:' || w || ':' || outcome, sum(n) FROM ("
         " SELECT CASE WHEN claimed_by GLOB 'local:*' THEN 'local' ELSE claimed_by END AS w,"
         " CASE WHEN state = 'failed' THEN 'failed' ELSE 'done' END AS outcome, count(*) AS n FROM jobs"
         " WHERE claimed_by IS NOT NULL AND state IN ('delivering', 'delivered', 'failed') GROUP BY 1, 2"
         " UNION ALL SELECT substr(name, 13, length(name) - 12 - length(outcome) - 1) AS w, outcome, value FROM ("
         " SELECT name, value, CASE WHEN name GLOB '*:done' THEN 'done' ELSE 'failed' END AS outcome FROM counters"
         " WHERE name GLOB 'pruned:jobs:*:done' OR name GLOB 'pruned:jobs:*:failed')) GROUP BY 1"),
]
"""``(schema, statement)``: a counter that the index of an earlier schema than ``schema`` had computed from its rows,
seeded with that value when the index is brought up to date (never in a new index)."""

FILLED_WHEN_ADDED = {
    # the retry period a pending delivery had used under the earlier version, which counted it from its creation
    # (probe 43: a delivery failing for 23 h got a whole day more at the upgrade)
    ("deliveries", "owed_s"): "UPDATE deliveries SET owed_s = max(updated_at - created_at, 0) WHERE state = 'pending'",
}
"""What an added column is filled with in the rows an earlier version wrote, where its default is not right."""


SCAN_EVERY_S = 60.0
"""How often :meth:`Database.probe` reads the series, jobs and deliveries tables whole, at most: they grow with
the node (the final read of review 39: every ``/readyz`` of a large node read them all), and damage does not
heal, so once a minute finds it as surely; the write lock is tried at every probe."""


class Database:
    """The database file, with a connection per thread (a SQLite connection is not shared between threads)."""

    def __init__(self, path: Path, *, durable: bool = True, upgrade: bool = True) -> None:
        self.path = path
        self.durable = durable
        self.upgrade = upgrade
        """Whether an earlier version's index is brought up to date (``uronode serve``), or refused (the admin
        commands: an earlier node may still run on it)."""
        self._local = threading.local()
        self._scanned_at: float | None = None
        """When :meth:`probe` last read the tables whole and found them sound (``time.monotonic``)."""
        existed = path.exists()
        try:
            self.conn()  # creates or upgrades the schema now, not on the first request
        except sqlite3.Error as exc:
            if not existed:  # a first start that failed leaves no empty index to be taken for a node's data
                for name in ("", *SIDE_FILES):
                    with suppress(OSError):
                        Path(f"{path}{name}").unlink(missing_ok=True)
            if is_damage(exc):  # review 39: the way back, as for damage found later
                raise IndexDamaged(path, exc) from exc
            raise DataDirUnusable(f"the index {path} cannot be opened: {disk_problem(path.parent, exc)}") from exc

    def probe(self, timeout_s: float) -> str | None:
        """None when the index can be written (its write lock taken and given back within ``timeout_s``) and
        its tables read whole (at most every :data:`SCAN_EVERY_S`) are sound, else why not. A connection of its
        own, so that it waits no longer than that."""
        try:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=rw", uri=True, timeout=timeout_s,
                                   isolation_level=None)
        except sqlite3.Error as exc:
            return f"the index cannot be opened: {disk_problem(self.path.parent, exc)}"
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            # the tables every series and job goes through, read whole: a damaged page shows (probe 44)
            if self._scanned_at is None or time.monotonic() - self._scanned_at >= SCAN_EVERY_S:
                for table in ("series", "jobs", "deliveries"):
                    conn.execute(f"SELECT count(*) FROM {table} NOT INDEXED").fetchone()
                self._scanned_at = time.monotonic()
        except sqlite3.Error as exc:
            if is_damage(exc):
                return damage_said(self.path, exc)
            if "locked" in str(exc) or "busy" in str(exc):
                return f"the index is locked: no write possible for {timeout_s:g} s (another process holds it)"
            return f"the index cannot be written: {disk_problem(self.path.parent, exc)}"
        finally:
            conn.close()
        return None

    def check(self) -> None:
        """SQLite's quick check of the whole index (a few seconds for a large one), at start-up:
        :class:`DataDirUnusable` where it is damaged (probe 44: a damaged page in a table refused every new
        series while the node said it was ready)."""
        try:
            found = [str(row[0]) for row in self.conn().execute("PRAGMA quick_check(3)")]
        except sqlite3.Error as exc:
            raise IndexDamaged(self.path, exc) from exc
        if found != ["ok"]:
            raise IndexDamaged(self.path, "; ".join(found))

    def conn(self) -> sqlite3.Connection:
        """This thread's connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, durable=self.durable, upgrade=self.upgrade)
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
