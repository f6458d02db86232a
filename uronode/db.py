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

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 7

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
CREATE INDEX IF NOT EXISTS studies_date ON studies(study_date);

CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    modality           TEXT,
    series_description TEXT,
    series_number      INTEGER,
    state              TEXT NOT NULL,        -- receiving | complete
    first_received_at  REAL NOT NULL,
    last_received_at   REAL NOT NULL,
    generation         INTEGER NOT NULL DEFAULT 1,  -- +1 each time the series re-opens
    replaced_count     INTEGER NOT NULL DEFAULT 0,  -- instances replaced by different bytes
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
    lease_until         REAL                 -- a remote claim's end unless renewed (NULL for a local worker)
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
    state               TEXT NOT NULL,       -- pending | delivered | dead
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     REAL NOT NULL,
    last_error          TEXT,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    UNIQUE (destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_at);

CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,                  -- instances_deleted, series_deleted (retention), leases_expired,
                                             -- jobs_republished, completions_refused (remote workers)
    value INTEGER NOT NULL
);
"""


def connect(path: Path, *, durable: bool = True) -> sqlite3.Connection:
    """Open the database (creating its tables) in WAL mode.

    ``durable`` chooses ``synchronous=FULL`` (every commit fsynced) over
    ``NORMAL``. Connections are not shared between threads.
    """
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=True)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table, column, kind in ADDED_COLUMNS:  # bring tables of older versions up to date
                existing = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                if existing and column not in existing:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return conn


ADDED_COLUMNS = [
    ("series", "modality", "TEXT"),
    ("series", "series_description", "TEXT"),
    ("series", "series_number", "INTEGER"),
    ("jobs", "findings", "TEXT"),
    ("jobs", "seconds", "REAL"),
    ("jobs", "dispatched_at", "REAL"),
    ("jobs", "publications", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "claimed_by", "TEXT"),
    ("jobs", "claim_token", "TEXT"),
    ("jobs", "lease_until", "REAL"),
]
"""Columns added since the first version: added to an existing table when it lacks them."""


class Database:
    """The database file, with a connection per thread (a SQLite connection is not shared between threads)."""

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        self.durable = durable
        self._local = threading.local()
        self.conn()  # creates or upgrades the schema now, not on the first request

    def conn(self) -> sqlite3.Connection:
        """This thread's connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, durable=self.durable)
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
