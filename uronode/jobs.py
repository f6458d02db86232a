"""The durable job queue: rows in the node's SQLite database.

A job names a series (and the generation of it that completed) and the model
to run; it holds no in-process object, so that a worker in another process, or
later on another machine, can take it. States: ``queued`` -> ``running`` ->
``delivered`` or ``failed`` (with its reason); a queued or running job can be cancelled (failed, its
reason :data:`CANCELLED`). A job that a remote worker holds
keeps its claim until its lease runs out (:mod:`uronode.claims`). A queued job
whose ``dispatched_at`` is NULL is still to be published on the broker
(``queue.backend = "dramatiq"``; the local backend ignores it).

The node's own worker processes claim as ``local:<pid>`` (``claimed_by``; ``local`` alone in rows
written before, or by a claim made outside a worker process). When one dies while running a job
(the kernel's OOM killer, a crash in a decoder, ``kill -9``), the supervisor takes the job back at
once (:meth:`JobQueue.take_back`); the node's start-up does the same for every job its workers left
running (:meth:`JobQueue.recover`). Either way the job is queued again while it has had fewer than
:data:`MAX_ATTEMPTS` tries, else it fails with the reason, so that a series that kills every
worker taking it does not loop. A job its worker was running when the node stopped its workers
itself goes back to the queue without that try counted (:meth:`JobQueue.release`). A remote worker
that dies on a job is seen only when its claim's lease runs out; :mod:`uronode.claims` counts that
try the same way (:func:`lease_expired_reason`).
"""

from __future__ import annotations

import builtins
import datetime
import logging
import sqlite3
import time

from uronode.audit import AuditLog
from uronode.db import bump_counter
from uronode.store import Store
from uronode.types import NOT_OWED, NOT_SENT, Job, JobState

log = logging.getLogger(__name__)

LOCAL_WORKER = "local"
"""``claimed_by`` of a job the node's own workers took; ``local:<pid>`` (:func:`local_worker`) names the process."""
MAX_ATTEMPTS = 2
"""Tries a job gets when the worker running it dies (the node's own worker process, or a remote worker
whose claim's lease ran out): the first death may be a coincidence (another process took the memory,
the node went down), a second one on the same job is the job's own doing (a series too large for the
memory, a file that crashes a decoder), and the job fails with the reason instead of killing each
worker that takes it. Every claim of the job counts, local or remote."""
MAX_LOCAL_ATTEMPTS = MAX_ATTEMPTS
"""The name :data:`MAX_ATTEMPTS` had while only the node's own workers were held to it."""
CANCELLED = "cancelled by the operator"
"""The reason a cancelled job fails with (:meth:`JobQueue.cancel`), before the operator's own words."""
NODE_WENT_DOWN = "the whole node went down"
"""The cause :meth:`JobQueue.recover` gives: at start-up, nothing tells a worker's death from the node's."""


class JobNotRunning(ValueError):
    """A job's end was to be recorded, and it is no longer running: cancelled, or taken back meanwhile."""


def local_worker(pid: int) -> str:
    """``claimed_by`` of a job that the node's worker process ``pid`` holds."""
    return f"{LOCAL_WORKER}:{pid}"


WORKER_JOBS = "worker_jobs:"
"""Prefix of the ``counters`` rows ``worker_jobs:<worker>:done`` and ``...:failed``: the jobs each worker ended, counted
as they end (probe 57: computed from the jobs' states now, the count went down when a job's deliveries died or it
was requeued, and a PACS outage read as the worker's failures)."""


def count_outcome(conn: sqlite3.Connection, job_id: int, outcome: str) -> None:
    """Count that the worker holding job ``job_id`` ended it, ``done`` (results stored) or ``failed`` (it could not
    run it, or died on its last try), in the caller's transaction; the node's own workers together as ``local``."""
    row = conn.execute("SELECT claimed_by FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None or row["claimed_by"] is None:
        return
    worker = LOCAL_WORKER if row["claimed_by"].startswith(f"{LOCAL_WORKER}:") else row["claimed_by"]
    bump_counter(conn, f"{WORKER_JOBS}{worker}:{outcome}")


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
        withdrawn=row["withdrawn"],
    )


_STUDY_DATE = "replace(replace(trim(coalesce(s.study_date, '')), '.', ''), '-', '')"
"""A study's StudyDate as YYYYMMDD (the legacy YYYY.MM.DD form too), '' where it has none."""
QUEUED_RECENT_FIRST = (
    "SELECT j.id FROM jobs j LEFT JOIN studies s ON s.study_instance_uid = j.study_instance_uid"
    f" WHERE j.state = 'queued' {{and_also}} ORDER BY ({_STUDY_DATE} IN ('', '00000000')"
    f" OR {_STUDY_DATE} BETWEEN ? AND ?) DESC, j.id"
)
"""The queued jobs in the order the node's workers take them (:meth:`JobQueue.claim`; the dispatcher publishes
in it too): the studies acquired yesterday or today (:func:`recent_dates`) or without a date first, then the
others (a date in the future, wrong, among them), each oldest first. ``{and_also}``: a further condition, or
nothing. Jobs already on the broker keep its order: a remote worker takes them as they were published."""


def recent_dates(today: datetime.date | None = None) -> tuple[str, str]:
    """The StudyDates (YYYYMMDD) counted as recent: yesterday and today, on the host's calendar."""
    day = today or datetime.date.today()
    return (day - datetime.timedelta(days=1)).strftime("%Y%m%d"), day.strftime("%Y%m%d")


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

    def claim(self, worker: str = LOCAL_WORKER, today: datetime.date | None = None) -> Job | None:
        """Take the next queued job and mark it running for ``worker`` (atomically), or return None.

        Jobs of studies acquired today or yesterday (their StudyDate, on the host's calendar: ``today``), or
        that name no date, go first, the oldest of them first; then the others, oldest first. A patient in the
        emergency department does not wait behind a backlog of older studies a PACS routes (priors fetched for
        comparison, an archive sent for a re-analysis): decided 2026-12-07; a queue of today's studies stays
        first in, first out. A worker process claims as :func:`local_worker` of its pid, so that its death
        takes back its jobs and no other's."""
        with self.store.transaction() as conn:
            row = conn.execute(f"{QUEUED_RECENT_FIRST.format(and_also='')} LIMIT 1",
                               recent_dates(today)).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = ?, claimed_by = ?,"
                " claim_token = NULL, lease_until = NULL WHERE id = ?",
                (time.time(), worker, row["id"]),
            )
            claimed = conn.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
        return _job(claimed)

    def finish(
        self, job_id: int, state: JobState, reason: str | None = None, findings: str | None = None,
        seconds: float | None = None, worker: str | None = None,
    ) -> None:
        """Mark a running job delivering (results stored), delivered or failed (a failure needs its reason); with
        ``worker``, only while that worker holds it.

        :class:`JobNotRunning` (a ValueError) when it is not running: cancelled meanwhile (:meth:`cancel`)."""
        with self.store.transaction() as conn:
            self.finish_in(conn, job_id, state, reason, findings, seconds, worker)

    def finish_in(
        self, conn: sqlite3.Connection, job_id: int, state: JobState, reason: str | None = None,
        findings: str | None = None, seconds: float | None = None, worker: str | None = None,
    ) -> None:
        """:meth:`finish` inside the caller's transaction (the one that records the job's results, so that a
        cancel lands either before the results, which are then not recorded, or after the job has finished).
        With ``worker``, only while that worker's claim holds it."""
        if state not in (JobState.DELIVERING, JobState.DELIVERED, JobState.FAILED):
            raise ValueError(f"state must be delivering, delivered or failed, not {state}")
        if state is JobState.FAILED and not reason:
            raise ValueError("a failed job needs its reason")
        cur = conn.execute(
            "UPDATE jobs SET state = ?, reason = ?, updated_at = ?, findings = coalesce(?, findings),"
            " seconds = coalesce(?, seconds) WHERE id = ? AND state = 'running' AND (? IS NULL OR claimed_by = ?)",
            (state.value, reason, time.time(), findings, seconds, job_id, worker, worker),
        )
        if cur.rowcount != 1:
            row = conn.execute("SELECT state, reason FROM jobs WHERE id = ?", (job_id,)).fetchone()
            now = "gone" if row is None else row["state"] + (f" ({row['reason']})" if row["reason"] else "")
            raise JobNotRunning(f"job {job_id} is not running: {now}")
        count_outcome(conn, job_id, "failed" if state is JobState.FAILED else "done")

    def cancel(self, job_id: int, why: str = "") -> Job:
        """Cancel a queued, running or delivering job (``uronode cancel``): it fails with the reason
        :data:`CANCELLED` (and ``why``), so ``uronode requeue`` runs it again. A running job's worker drops it:
        nothing is stored or sent (:meth:`finish_in` refuses it); the node's own worker process stops its
        computation and is replaced (``uronode.app.worker.Worker``), a remote worker's claim no longer holds. A
        delivering job's results stay stored and what is still owed of them (pending deliveries, dead letters)
        is not sent (probe 51: a wrongly routed patient's results, and so the study's erasure, waited for a
        destination's day of retries). ValueError for no such job (``no job 7``) or one that has ended."""
        reason = CANCELLED + (f": {why.strip()}" if why.strip() else "")
        with self.store.transaction() as conn:
            before = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            cur = conn.execute(
                "UPDATE jobs SET state = 'failed', reason = ?, updated_at = ?, claim_token = NULL, lease_until = NULL"
                " WHERE id = ? AND state IN ('queued', 'running', 'delivering')",
                (reason, time.time(), job_id),
            )
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if cur.rowcount != 1:
                if row is None:
                    raise ValueError(f"no job {job_id}")
                raise ValueError(f"job {job_id} is {row['state']}; only a queued, running or delivering job can be"
                                 " cancelled")
            # its own results only: a rejection note it owes withdraws an earlier job's results, which a
            # destination holds (review 50: the note was cancelled with them, and the PACS kept both runs'); those
            # a destination no longer wanted too, so that configuring it again sends nothing of a cancelled job
            unsent = conn.execute(
                "UPDATE deliveries SET state = 'superseded', last_error = ?, updated_at = ? WHERE job_id = ?"
                " AND sop_instance_uid IN (SELECT sop_instance_uid FROM results WHERE job_id = ?)"
                " AND (state IN ('pending', 'dead') OR (state = 'superseded' AND last_error LIKE ?))",
                (f"{NOT_SENT}{reason}", time.time(), job_id, job_id, NOT_OWED + "%"),
            ).rowcount if before["state"] == JobState.DELIVERING.value else 0
        job = _job(row)
        if unsent:
            log.warning("job %d: %d result deliveries still owed are not sent", job.id, unsent)
        log.warning("job %d series %s cancelled by the operator", job.id, job.series_instance_uid)
        AuditLog(self.store.root).record(
            "job_cancelled", job_id=job.id, series_instance_uid=job.series_instance_uid, reason=reason,
            worker=job.claimed_by, deliveries_not_sent=unsent,
        )
        return job

    def requeue(self, job_id: int) -> None:
        """Put a failed or delivered job back in the queue (``uronode requeue``).

        ValueError when there is no such job (``no job 7``) or it is in another state (which one)."""
        with self.store.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'queued', reason = NULL, updated_at = ?, dispatched_at = NULL,"
                # the series as it is now (review 32: an older generation made its worker say the series changed)
                " series_generation = coalesce((SELECT generation FROM series s"
                " WHERE s.series_instance_uid = jobs.series_instance_uid), series_generation)"
                " WHERE id = ? AND state IN ('failed', 'delivered')",
                (time.time(), job_id),
            )
            if cur.rowcount != 1:
                row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    raise ValueError(f"no job {job_id}")
                raise ValueError(f"job {job_id} is {row['state']}; only a failed or delivered job can be queued again")

    def recover(self) -> int:
        """At start-up: jobs the node's own workers left running when it stopped are taken back; returns
        how many were queued again.

        Each is queued again, or failed with the reason once it has had :data:`MAX_ATTEMPTS`
        tries (as :meth:`take_back`), so that a job that brings the node down each time does not loop.
        A remote worker's claim (it has a lease) survives the node's restart: the worker may still
        complete it, and the sweeper takes the job back if its lease runs out."""
        taken = self._take_back(None, NODE_WENT_DOWN)
        return sum(job.state is JobState.QUEUED for job in taken)

    def restamp(self, model: str) -> dict[str, int]:
        """Queued jobs stamped with another model than the node's ``model`` (queued before the model was
        changed, or a job run then and queued again with ``uronode requeue``) are stamped with it and
        published again; returns how many there were of each old model, each count logged. Remote workers
        take only jobs of exactly their own model, so such jobs would wait for a worker of a model no longer
        deployed (local workers run whatever model they loaded). A job already running keeps its model.
        The node does it at start-up and the dispatcher before each round."""
        others = "SELECT model, count(*) AS n FROM jobs WHERE state = 'queued' AND model != ? GROUP BY model"
        # read first: the dispatcher asks every round, and there is nearly never anything to stamp, so the
        # write lock (which receivers and workers wait for) is taken only when there is
        rows = self.store.conn().execute(others, (model,)).fetchall()
        if rows:
            with self.store.transaction() as conn:
                rows = conn.execute(others, (model,)).fetchall()
                conn.execute(
                    "UPDATE jobs SET model = ?, updated_at = ?, dispatched_at = NULL, publications = 0"
                    " WHERE state = 'queued' AND model != ?",
                    (model, time.time(), model),
                )
        restamped = {row["model"]: int(row["n"]) for row in rows}
        for old, count in restamped.items():
            log.warning("%d queued job(s) for model %r will run with this node's model %r", count, old, model)
        return restamped

    def take_back(self, worker: str, cause: str) -> builtins.list[Job]:
        """The node's worker process ``worker`` (:func:`local_worker`) died of ``cause`` (``exit code -9,
        killed: out of memory?``): each job it was running is queued again, or, once it has had
        :data:`MAX_ATTEMPTS` tries, failed with the reason. Returns those jobs as they now are.

        Jobs of the node's other workers and of remote workers are not touched. One ERROR line per job."""
        return self._take_back(worker, cause)

    def release(self, worker: str) -> builtins.list[Job]:
        """The node stopped its worker process ``worker`` while it ran a job: the job goes back to the
        queue and that try does not count against it (it was the node's doing, not the job's)."""
        now = time.time()
        with self.store.transaction() as conn:
            rows = conn.execute(
                "SELECT id FROM jobs WHERE state = 'running' AND lease_until IS NULL AND claimed_by = ?", (worker,)
            ).fetchall()
            ids = [r["id"] for r in rows]
            conn.executemany(
                "UPDATE jobs SET state = 'queued', attempts = max(attempts - 1, 0), updated_at = ?,"
                " dispatched_at = NULL WHERE id = ?",
                [(now, i) for i in ids],
            )
            released = [_job(conn.execute("SELECT * FROM jobs WHERE id = ?", (i,)).fetchone()) for i in ids]
        for job in released:
            log.warning("job %d series %s: its worker was stopped with the node; queued again, that try not counted",
                        job.id, job.series_instance_uid)
        return released

    def give_back(self, job_id: int, reason: str) -> Job | None:
        """A running job that could not finish for want of the node's resources (the disk full while its
        results were stored, the index locked for longer than the busy timeout), not because of its series:
        queued again, that try not counted, with ``reason`` for the admin until it runs again. Returns the job
        as it now is (None when it was not running: taken back meanwhile). Raises ``sqlite3.Error`` when the
        index cannot be written either (the caller tries again later)."""
        with self.store.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = max(attempts - 1, 0), reason = ?, updated_at = ?,"
                " dispatched_at = NULL WHERE id = ? AND state = 'running'",
                (reason, time.time(), job_id),
            )
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone() if cur.rowcount else None
        if row is None:
            return None
        job = _job(row)
        log.warning("job %d series %s: queued again, that try not counted: %s", job.id, job.series_instance_uid, reason)
        return job

    def _take_back(self, worker: str | None, cause: str) -> builtins.list[Job]:
        """Take back the running jobs of the node's worker ``worker`` (None: of all its workers)."""
        now = time.time()
        with self.store.transaction() as conn:
            rows = conn.execute(
                "SELECT id, series_instance_uid, attempts FROM jobs"
                " WHERE state = 'running' AND lease_until IS NULL AND (? IS NULL OR claimed_by = ?) ORDER BY id",
                (worker, worker),
            ).fetchall()
            for row in rows:
                if row["attempts"] < MAX_ATTEMPTS:
                    # why it waits again, until it has run (probe 41: a job queued again showed no reason)
                    conn.execute(
                        "UPDATE jobs SET state = 'queued', reason = ?, updated_at = ?, dispatched_at = NULL WHERE id = ?",
                        (f"its worker process died while running it ({cause}) on attempt {row['attempts']} of "
                         f"{MAX_ATTEMPTS}; queued again", now, row["id"]),
                    )
                else:
                    conn.execute(
                        "UPDATE jobs SET state = 'failed', reason = ?, updated_at = ? WHERE id = ?",
                        (_died_reason(conn, row, cause), now, row["id"]),
                    )
                    count_outcome(conn, row["id"], "failed")
            taken = [_job(conn.execute("SELECT * FROM jobs WHERE id = ?", (r["id"],)).fetchone()) for r in rows]
        for job in taken:
            if job.state is JobState.QUEUED:
                log.error(
                    "job %d series %s: the worker process died while running it (%s) on attempt %d of %d;"
                    " queued again", job.id, job.series_instance_uid, cause, job.attempts, MAX_ATTEMPTS,
                )
            else:
                log.error("job %d series %s failed: %s", job.id, job.series_instance_uid, job.reason)
                AuditLog(self.store.root).record(
                    "job_finished", job_id=job.id, series_instance_uid=job.series_instance_uid, state="failed",
                    reason=job.reason,
                )
        return taken

    def unattended(self, waited_s: float, now: float | None = None) -> int:
        """How many jobs have waited, queued, longer than ``waited_s`` while no job runs anywhere: none is being
        taken, by the node's workers or remote ones (probe 20: with no worker, or only remote workers of
        another model, jobs waited for ever and ``/readyz`` said ready). 0 while any job runs or one was
        taken or ended within ``waited_s``: a backlog behind a busy worker, or the moment between two of its
        jobs, is not a fault (review 27)."""
        now = time.time() if now is None else now
        row = self.store.conn().execute(
            "SELECT (SELECT count(*) FROM jobs WHERE state = 'running'"
            "         OR (state != 'queued' AND updated_at >= ?)) AS active,"
            " (SELECT count(*) FROM jobs WHERE state = 'queued' AND updated_at < ?) AS waiting",
            (now - waited_s, now - waited_s),
        ).fetchone()
        return 0 if row["active"] else int(row["waiting"])

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


def series_changed(conn: sqlite3.Connection, series_uid: str, generation: int) -> str | None:
    """Why a job's series is not the one it was queued for any more (``generation``: the job's), or None: an
    instance replaced or added after the series completed (a correction sent again) removes or changes files the
    job is reading (probe 32: such a job failed as if its files were damaged). The node's own worker and a remote
    one's failure (``uronode.claims``) say it the same way."""
    row = conn.execute("SELECT generation FROM series WHERE series_instance_uid = ?", (series_uid,)).fetchone()
    if row is None:
        return "the series left the store while it was read"
    if int(row["generation"]) != generation:
        return ("the series changed while it was read (images replaced or added after it had completed): the "
                "changed series is analysed by a job of its own once it completes again")
    return None


def _died_reason(conn: sqlite3.Connection, row: sqlite3.Row, cause: str) -> str:
    """A failed job's reason when its worker died on it once too often."""
    return _with_series_size(conn, row, f"the worker process died while running it ({cause}) on {row['attempts']} attempts")


def lease_expired_reason(conn: sqlite3.Connection, row: sqlite3.Row) -> str:
    """A failed job's reason when the lease of a remote worker's claim ran out on its last try (``row``: the
    job's, with ``attempts``, ``claimed_by`` and ``series_instance_uid``).

    The node cannot see a remote worker die; a lease that runs out is all it learns, and a worker killed
    for want of memory is the usual cause. ``attempts`` counts every try, as :func:`_died_reason` does."""
    return _with_series_size(
        conn, row, f"its lease expired on {row['attempts']} attempts: the worker holding it ({row['claimed_by']})"
        " stopped answering (out of memory?)",
    )


def _with_series_size(conn: sqlite3.Connection, row: sqlite3.Row, reason: str) -> str:
    """``reason`` with the series' size when the index has it (a series too large for the memory is the usual
    poison)."""
    (instances,) = conn.execute(
        "SELECT count(*) FROM instances WHERE series_instance_uid = ?", (row["series_instance_uid"],)
    ).fetchone()
    return f"{reason}; the series has {instances} instances" if instances else reason
