"""The durable job queue: rows in the node's SQLite database.

A job names a series (and the generation of it that completed) and the model
to run; it holds no in-process object, so that a worker in another process, or
later on another machine, can take it. States: ``queued`` -> ``running`` ->
``delivered`` or ``failed`` (with its reason). A job that a local worker was
running when the node stopped goes back to ``queued`` at start-up; one a remote
worker holds keeps its claim until its lease runs out (:mod:`uronode.claims`).
A queued job whose ``dispatched_at`` is NULL is still to be published on the
broker (``queue.backend = "dramatiq"``; the local backend ignores it).
"""

from __future__ import annotations

import builtins
import sqlite3
import time

from uronode.store import Store
from uronode.types import Job, JobState


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        study_instance_uid=row["study_instance_uid"],
        series_instance_uid=row["series_instance_uid"],
        series_generation=row["series_generation"],
        model=row["model"],
        state=JobState(row["state"]),
        reason=row["reason"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        claimed_by=row["claimed_by"],
    )


class JobQueue:
    """Jobs in the store's database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def enqueue_in(
        self, conn: sqlite3.Connection, study_uid: str, series_uid: str, generation: int, model: str
    ) -> int:
        """Queue a job inside the caller's transaction.

        A series has at most one queued job: when one is already waiting, it is
        brought up to the new generation instead of adding a second.
        """
        now = time.time()
        waiting = conn.execute(
            "SELECT id FROM jobs WHERE series_instance_uid = ? AND state = 'queued' AND model = ?",
            (series_uid, model),
        ).fetchone()
        if waiting is not None:
            conn.execute(
                "UPDATE jobs SET series_generation = ?, updated_at = ?, dispatched_at = NULL WHERE id = ?",
                (generation, now, waiting["id"]),
            )
            return int(waiting["id"])
        cur = conn.execute(
            "INSERT INTO jobs (study_instance_uid, series_instance_uid, series_generation, model, state,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, 'queued', ?, ?)",
            (study_uid, series_uid, generation, model, now, now),
        )
        return int(cur.lastrowid or 0)

    def claim(self) -> Job | None:
        """Take the oldest queued job and mark it running (atomically), or return None."""
        with self.store.transaction() as conn:
            row = conn.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = ?, claimed_by = 'local',"
                " claim_token = NULL, lease_until = NULL WHERE id = ?",
                (time.time(), row["id"]),
            )
            claimed = conn.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
        return _job(claimed)

    def finish(
        self, job_id: int, state: JobState, reason: str | None = None, findings: str | None = None,
        seconds: float | None = None,
    ) -> None:
        """Mark a running job delivering (results stored), delivered or failed (a failure needs its reason)."""
        if state not in (JobState.DELIVERING, JobState.DELIVERED, JobState.FAILED):
            raise ValueError(f"state must be delivering, delivered or failed, not {state}")
        if state is JobState.FAILED and not reason:
            raise ValueError("a failed job needs its reason")
        with self.store.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = ?, reason = ?, updated_at = ?, findings = coalesce(?, findings),"
                " seconds = coalesce(?, seconds) WHERE id = ? AND state = 'running'",
                (state.value, reason, time.time(), findings, seconds, job_id),
            )
            if cur.rowcount != 1:
                raise ValueError(f"job {job_id} is not running")

    def requeue(self, job_id: int) -> None:
        """Put a failed or delivered job back in the queue (``uronode requeue``).

        ValueError when there is no such job (``no job 7``) or it is in another state (which one)."""
        with self.store.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'queued', reason = NULL, updated_at = ?, dispatched_at = NULL WHERE id = ?"
                " AND state IN ('failed', 'delivered')",
                (time.time(), job_id),
            )
            if cur.rowcount != 1:
                row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    raise ValueError(f"no job {job_id}")
                raise ValueError(f"job {job_id} is {row['state']}; only a failed or delivered job can be queued again")

    def recover(self) -> int:
        """At start-up: jobs its own workers left running when the node stopped go back to the queue.

        A remote worker's claim (it has a lease) survives the node's restart: the worker may still
        complete it, and the sweeper takes the job back if its lease runs out."""
        with self.store.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'queued', updated_at = ?, dispatched_at = NULL"
                " WHERE state = 'running' AND lease_until IS NULL",
                (time.time(),),
            )
        return cur.rowcount

    def findings(self, job_id: int) -> str | None:
        """The findings JSON the model produced for this job, if it has run."""
        row = self.store.conn().execute("SELECT findings FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else row["findings"]

    def get(self, job_id: int) -> Job | None:
        row = self.store.conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row is not None else None

    def list(self, state: JobState | None = None, limit: int = 100) -> builtins.list[Job]:
        if state is None:
            rows = self.store.conn().execute(
                "SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        else:
            rows = self.store.conn().execute(
                "SELECT * FROM jobs WHERE state = ? ORDER BY id DESC LIMIT ?", (state.value, limit)
            ).fetchall()
        return [_job(r) for r in rows]

    def for_series(self, series_uid: str) -> builtins.list[Job]:
        rows = self.store.conn().execute(
            "SELECT * FROM jobs WHERE series_instance_uid = ? ORDER BY id", (series_uid,)
        ).fetchall()
        return [_job(r) for r in rows]
