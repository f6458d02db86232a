"""Jobs for remote workers: what to publish on the broker, claims with leases, and their completion.

The job's row in SQLite stays the record (:mod:`uronode.jobs`); the broker only
carries the news that a job may be waiting (``docs/distributed.md``). The
node's dispatcher takes :meth:`Claims.to_publish` and, once a message is out,
:meth:`Claims.mark_published`; :meth:`Claims.sweep` makes a job publishable
again when nobody claimed it within ``claim_timeout_s`` or its claim's lease
ran out (a worker killed, stopped or cut off). Publishing twice is harmless:
a claim is the only way to run a job, and one live claim at a time holds it.
A lease that runs out is how the node learns that a remote worker died, so it
counts as one of the job's tries, as a local worker's death does
(:data:`uronode.jobs.MAX_ATTEMPTS`): a job whose lease runs out on its last try
fails with the reason instead of being published again, so that a series that
kills every worker taking it (out of memory) does not go round for ever.

A claim is refused (:class:`ClaimConflict`, HTTP 409) when the job is done,
when the message's generation is not the job's (the series re-opened), or
when another live claim holds it. A completion is accepted only from the
job's current claim within its lease, after checking that every result it
names is in the store; then one transaction owes the results to every
destination and records the findings.

What a worker's token may read and store into is what :func:`holds` says: the
series and studies of the jobs its live claims hold.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from uronode.audit import AuditLog
from uronode.completion import OWN_MANUFACTURER
from uronode.db import bump_counter
from uronode.jobs import (
    LOCAL_WORKER,
    MAX_ATTEMPTS,
    QUEUED_RECENT_FIRST,
    JobQueue,
    count_outcome,
    lease_expired_reason,
    recent_dates,
    series_changed,
)
from uronode.outbox import Outbox
from uronode.settings import Destination
from uronode.store import Store
from uronode.supersede import findings_model, owe_note_in, record_results, retire
from uronode.types import Job, JobState

log = logging.getLogger(__name__)


class ClaimConflict(Exception):
    """The job cannot be claimed, renewed or completed by this caller (HTTP 409); says why."""


class ResultsMissing(Exception):
    """A completion names results the store does not hold (HTTP 422); says which."""


class NoSuchJob(LookupError):
    """No job has this id (HTTP 404)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A remote worker's hold on a job until ``lease_until`` (``time.time()``), renewed by heartbeat."""

    job: Job
    token: str
    lease_until: float
    lease_s: float


CLAIM_SECRET_FILE = "claim-secret"
"""In the node's data folder (mode 600): the key of the HMACs that bind a claim to the message that published its
job (:func:`claim_key`). Made at the first use; never leaves the node."""


@functools.lru_cache(maxsize=8)
def claim_secret(data_dir: Path) -> bytes:
    """The node's claim secret (``CLAIM_SECRET_FILE``), made at the first call (several processes: the first one
    to create the file wins, the others read it)."""
    path = data_dir / CLAIM_SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
    for _ in range(50):  # another process made it a moment ago and may still be writing it
        text = path.read_text().strip()
        if text:
            return bytes.fromhex(text)
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty: remove it, and the node makes a new one")


def claim_key(secret: bytes, job_id: int, generation: int) -> str:
    """The key a job's message carries and its claim must give back: an HMAC of the job and its generation under
    the node's secret. A worker's token alone cannot claim a job by guessing its number (probe 20: a stolen token
    could claim every waiting job and read its series); it needs the message the broker gave it."""
    return hmac.new(secret, f"{job_id}:{generation}".encode(), hashlib.sha256).hexdigest()[:32]


class Claims:
    """Remote workers' side of the job queue, in the store's database."""

    def __init__(self, store: Store, *, lease_s: float, claim_timeout_s: float) -> None:
        self.store = store
        self.queue = JobQueue(store)
        self.lease_s = lease_s
        self.claim_timeout_s = claim_timeout_s

    def key_for(self, job_id: int, generation: int) -> str:
        """The claim key of a job's message (:func:`claim_key`)."""
        return claim_key(claim_secret(self.store.root), job_id, generation)

    def key_matches(self, job_id: int, generation: int, key: str) -> bool:
        return hmac.compare_digest(self.key_for(job_id, generation), key)

    # --- the dispatcher and the sweeper (the node's loops) ---

    def to_publish(self, limit: int = 500) -> list[Job]:
        """Queued jobs not yet published (new ones, and those the sweeper took back), in the order the node's
        own workers take them (recent studies first: ``uronode.jobs.QUEUED_RECENT_FIRST``); those already on the
        broker keep its order."""
        rows = self.store.conn().execute(
            f"{QUEUED_RECENT_FIRST.format(and_also='AND j.dispatched_at IS NULL')} LIMIT ?", (*recent_dates(), limit)
        ).fetchall()
        return [job for r in rows if (job := self.queue.get(r["id"])) is not None]

    def mark_published(self, job: Job, now: float | None = None) -> None:
        """The message for this job (at this generation) is on the broker."""
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET dispatched_at = ?, publications = publications + 1"
                " WHERE id = ? AND state = 'queued' AND series_generation = ?",
                (time.time() if now is None else now, job.id, job.series_generation),
            )

    def unclaimed_for(self, publications: int) -> float:
        """How long a job published this many times waits for a claim before it is published again.

        ``claim_timeout_s``, doubling with each publication since its last claim (at most 64 times):
        a long backlog that waits for free workers does not fill the queue with copies. Messages lost
        with Redis do not wait for this: :meth:`broker_emptied` publishes them again at once."""
        return self.claim_timeout_s * 2 ** min(max(publications - 1, 0), 6)

    def held_back(self, job_id: int) -> None:
        """A claim of this job was refused for want of the node's disk: its next publication comes after
        ``claim_timeout_s``, not after a back-off that doubled with each refusal (review 27: up to an hour per job
        once the disk had room again)."""
        with self.store.transaction() as conn:
            conn.execute("UPDATE jobs SET publications = min(publications, 1) WHERE id = ? AND state = 'queued'",
                         (job_id,))

    def broker_emptied(self) -> int:
        """The broker lost its messages (Redis restarted empty): every published, unclaimed job is to be published again.

        In one transaction, each queued job with a message out is made publishable at once, its count of
        publications (the backoff of :meth:`unclaimed_for`) back to none; returns how many."""
        with self.store.transaction() as conn:
            count = conn.execute(
                "UPDATE jobs SET dispatched_at = NULL, publications = 0 WHERE state = 'queued' AND dispatched_at IS NOT NULL"
            ).rowcount
            bump_counter(conn, "jobs_republished", count)
        return count

    def sweep(self, now: float | None = None) -> tuple[int, int]:
        """Take back what no live claim holds: returns (jobs whose lease expired that are to be published
        again, jobs never claimed in time, published again).

        An expired claim's token no longer completes anything. A job whose lease expired on its last try
        (:meth:`_expire`) is failed instead, logged and audited here, and not in the first count."""
        now = time.time() if now is None else now
        with self.store.transaction() as conn:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE state = 'running' AND lease_until IS NOT NULL AND lease_until < ?"
                " ORDER BY id",
                (now,),
            ).fetchall()
            failed = [row["id"] for row in rows if self._expire(conn, row, now)]
            expired = len(rows) - len(failed)
            for row in rows:  # which job, held by whom (probe 20: the log named neither)
                if row["id"] not in failed:
                    log.warning("job %d: the lease of worker %s ran out (attempt %d); it is published again",
                                row["id"], row["claimed_by"], row["attempts"])
            waiting = conn.execute(
                "SELECT id, dispatched_at, publications FROM jobs WHERE state = 'queued' AND dispatched_at IS NOT NULL"
                " AND dispatched_at < ?",
                (now - self.claim_timeout_s,),
            ).fetchall()
            overdue = [(r["id"],) for r in waiting if r["dispatched_at"] < now - self.unclaimed_for(r["publications"])]
            conn.executemany("UPDATE jobs SET dispatched_at = NULL WHERE id = ?", overdue)
            unclaimed = len(overdue)
            bump_counter(conn, "leases_expired", len(rows))
            bump_counter(conn, "jobs_republished", expired + unclaimed)
        self._report_failed(failed)
        return expired, unclaimed

    def _expire(self, conn: sqlite3.Connection, row: sqlite3.Row, now: float) -> bool:
        """The lease of the claim on the running job ``row`` ran out (inside the caller's transaction):
        its worker stopped answering, killed (out of memory, most often), stopped or cut off. The claim is
        ended either way. The job is made publishable again while it has had fewer than
        :data:`~uronode.jobs.MAX_ATTEMPTS` tries, else failed with the reason; returns whether it failed.

        A worker that answers after this changes nothing: its claim's token no longer holds the job
        (:meth:`_current`), whether the job runs again or failed."""
        if row["attempts"] < MAX_ATTEMPTS:
            conn.execute(
                "UPDATE jobs SET state = 'queued', claim_token = NULL, lease_until = NULL, dispatched_at = NULL,"
                " updated_at = ? WHERE id = ?",
                (now, row["id"]),
            )
            return False
        conn.execute(
            "UPDATE jobs SET state = 'failed', reason = ?, claim_token = NULL, lease_until = NULL, updated_at = ?"
            " WHERE id = ?",
            (lease_expired_reason(conn, row), now, row["id"]),
        )
        count_outcome(conn, row["id"], "failed")
        return True

    def _report_failed(self, job_ids: list[int]) -> None:
        """One ERROR line and one audit entry for each job :meth:`_expire` failed (once its transaction is
        committed: a rolled-back failure is not reported)."""
        for job_id in job_ids:
            job = self.queue.get(job_id)
            if job is None or job.state is not JobState.FAILED:
                continue
            log.error("job %d series %s failed: %s", job.id, job.series_instance_uid, job.reason)
            AuditLog(self.store.root).record(
                "job_finished", job_id=job.id, series_instance_uid=job.series_instance_uid, state="failed",
                worker=job.claimed_by, reason=job.reason,
            )

    # --- the claim API (a remote worker, over HTTP) ---

    def claim(self, job_id: int, generation: int, worker: str, now: float | None = None) -> Claim:
        """Hold the job for ``worker`` for one lease, or raise :class:`ClaimConflict` saying why not.

        A job whose last claim's lease ran out before the sweeper came round is taken over here, that
        expiry counted as a try as the sweeper counts it (:meth:`_expire`); where it was the job's last
        try, the job fails and the claim is refused as for any failed job."""
        now = time.time() if now is None else now
        token = secrets.token_urlsafe(24)
        with self.store.transaction() as conn:
            failed = self._claim_in(conn, job_id, generation, worker, token, now)
        if failed:
            self._report_failed([job_id])
            raise ClaimConflict(f"job {job_id} is done ({JobState.FAILED})")
        job = self.queue.get(job_id)
        assert job is not None
        return Claim(job=job, token=token, lease_until=now + self.lease_s, lease_s=self.lease_s)

    def _claim_in(self, conn: sqlite3.Connection, job_id: int, generation: int, worker: str, token: str,
                  now: float) -> bool:
        """:meth:`claim` inside its transaction; returns True (nothing claimed) where the job failed instead,
        its last try's lease run out, so that the failure is committed before the claim is refused."""
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NoSuchJob(f"no job {job_id}")
        state = JobState(row["state"])
        if state in (JobState.DELIVERING, JobState.DELIVERED, JobState.FAILED):
            raise ClaimConflict(f"job {job_id} is done ({state})")
        if row["series_generation"] != generation:
            raise ClaimConflict(
                f"job {job_id} is for generation {row['series_generation']} of its series, not {generation}"
            )
        if state is JobState.RUNNING:
            if row["lease_until"] is None:
                raise ClaimConflict(f"job {job_id} is held by the node's own worker")
            if row["lease_until"] >= now:
                raise ClaimConflict(f"job {job_id} is held by {row['claimed_by']} until its lease ends")
            bump_counter(conn, "leases_expired", 1)  # the sweeper had not come round yet: taken over here
            if self._expire(conn, row, now):
                return True
        conn.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, claimed_by = ?, claim_token = ?,"
            " lease_until = ?, updated_at = ?, publications = 0 WHERE id = ?",
            (worker, token, now + self.lease_s, now, job_id),
        )
        return False

    def _current(self, conn: sqlite3.Connection, job_id: int, token: str, worker: str, now: float) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NoSuchJob(f"no job {job_id}")
        held = row["claim_token"]
        if (row["state"] != JobState.RUNNING or held is None or not hmac.compare_digest(held, token)
                or row["claimed_by"] != worker):
            now_is = row["state"] + (f": {row['reason']}" if row["reason"] else "")
            raise ClaimConflict(f"job {job_id}: this claim no longer holds it ({now_is})")
        if row["lease_until"] is None or row["lease_until"] < now:
            raise ClaimConflict(f"job {job_id}: this claim's lease ran out")
        return row

    def heartbeat(self, job_id: int, token: str, worker: str, now: float | None = None) -> float:
        """Renew the claim's lease; returns its new end. :class:`ClaimConflict` when the claim is gone."""
        now = time.time() if now is None else now
        with self.store.transaction() as conn:
            self._current(conn, job_id, token, worker, now)
            conn.execute("UPDATE jobs SET lease_until = ? WHERE id = ?", (now + self.lease_s, job_id))
        return now + self.lease_s

    def complete(
        self,
        job_id: int,
        token: str,
        worker: str,
        *,
        results: Sequence[str],
        findings: str,
        seconds: float | None,
        destinations: Sequence[Destination],
        outbox: Outbox,
        now: float | None = None,
    ) -> JobState:
        """Record a claim's results: checked in the store, then owed and recorded in one transaction.

        A claim that no longer holds the job changes nothing (:class:`ClaimConflict`)."""
        now = time.time() if now is None else now
        missing = [uid for uid in results if self.store.get_instance(uid) is None]
        if missing:
            raise ResultsMissing(f"{len(missing)} result(s) not in the store, first {missing[0]}")
        with self.store.transaction() as conn:
            row = self._current(conn, job_id, token, worker, now)
            source = conn.execute(
                "SELECT calling_ae FROM instances WHERE series_instance_uid = ? LIMIT 1",
                (row["series_instance_uid"],),
            ).fetchone()
            owed = False
            for uid in results:
                item = conn.execute(
                    "SELECT sop_class_uid, path, study_instance_uid, series_instance_uid, manufacturer FROM instances"
                    " WHERE sop_instance_uid = ?", (uid,)
                ).fetchone()
                if item is None:  # deleted between the check and this transaction
                    raise ResultsMissing(f"result {uid} is not in the store")
                if item["study_instance_uid"] != row["study_instance_uid"]:
                    raise ResultsMissing(f"result {uid} is not in the job's study")
                # only the node's results: a completion naming received images would have them delivered as
                # results, and superseded (deleted, rejected at the PACS) by the next run (probe 20)
                if item["manufacturer"] != OWN_MANUFACTURER or item["series_instance_uid"] == row["series_instance_uid"]:
                    raise ResultsMissing(f"result {uid} is a received instance, not one of the node's results")
                elsewhere = conn.execute("SELECT source_series_uid FROM results WHERE sop_instance_uid = ?",
                                         (uid,)).fetchone()
                if elsewhere is not None and elsewhere["source_series_uid"] != row["series_instance_uid"]:
                    raise ResultsMissing(f"result {uid} is a result of another series")
                if conn.execute("SELECT 1 FROM rejected WHERE sop_instance_uid = ?", (uid,)).fetchone() is not None:
                    # a worker of before 2026-12-07 does not know the claim's "rejected" (review 35)
                    raise ResultsMissing(f"result {uid} takes the UID of a result withdrawn or superseded earlier, "
                                         "which a rejection note may name: upgrade the worker (it gives such results "
                                         "other UIDs)")
                for destination in destinations:
                    if not destination.takes(item["sop_class_uid"]):
                        continue
                    owed = True
                    outbox.enqueue_in(
                        conn, destination=destination.name, sop_instance_uid=uid, sop_class_uid=item["sop_class_uid"],
                        path=Path(item["path"]), job_id=job_id, calling_ae=source["calling_ae"] if source else None,
                    )
            model = findings_model(findings)
            superseded = record_results(conn, job_id=job_id, source_series_uid=row["series_instance_uid"],
                                        model=model, sop_instance_uids=results) if model else []
            note = owe_note_in(conn, self.store.root, outbox, superseded, destinations=destinations,
                               source_series_uid=row["series_instance_uid"], model=model, job_id=job_id,
                               calling_ae=source["calling_ae"] if source else None)
            state = JobState.DELIVERING if owed or any(s.delivered_to for s in superseded) else JobState.DELIVERED
            conn.execute(
                "UPDATE jobs SET state = ?, reason = NULL, findings = ?, seconds = coalesce(?, seconds),"
                " claim_token = NULL, lease_until = NULL, updated_at = ? WHERE id = ?",
                (state.value, findings, seconds, now, job_id),
            )
            count_outcome(conn, job_id, "done")
        retire(self.store.root, superseded, note, source_series_uid=row["series_instance_uid"], model=model,
               job_id=job_id)
        return state

    def fail(self, job_id: int, token: str, worker: str, reason: str, now: float | None = None) -> None:
        """The claim's worker could not run the job (a series the model cannot read): failed, with why, and first
        that the series changed while it was read where it did (``uronode.jobs.series_changed``, as the node's own
        worker says it)."""
        now = time.time() if now is None else now
        if not reason:
            raise ValueError("a failed job needs its reason")
        with self.store.transaction() as conn:
            row = self._current(conn, job_id, token, worker, now)
            changed = series_changed(conn, row["series_instance_uid"], row["series_generation"])
            conn.execute(
                "UPDATE jobs SET state = 'failed', reason = ?, claim_token = NULL, lease_until = NULL, updated_at = ?"
                " WHERE id = ?",
                (f"{changed} ({reason})" if changed else reason, now, job_id),
            )
            count_outcome(conn, job_id, "failed")

    def give_back(self, job_id: int, token: str, worker: str, reason: str, now: float | None = None) -> None:
        """The claim's worker could not finish for want of the node's resources (its results refused for a full
        disk), not because of the series: queued again, that try not counted, ``reason`` kept for the admin, and
        published again by the sweeper after ``claim_timeout_s``, as a message nobody claimed is (not at once:
        review 28), its claim refused while the disk stays full."""
        now = time.time() if now is None else now
        with self.store.transaction() as conn:
            self._current(conn, job_id, token, worker, now)
            conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = max(attempts - 1, 0), reason = ?, claim_token = NULL,"
                " lease_until = NULL, updated_at = ?, dispatched_at = ?, publications = 1 WHERE id = ?",
                (f"{reason}; queued again, the try not counted", now, now, job_id),
            )
        log.warning("job %d: given back by %s, the try not counted: %s", job_id, worker, reason)

    def refused(self) -> None:
        """Count a completion refused because its claim no longer held the job (a metric)."""
        with self.store.transaction() as conn:
            bump_counter(conn, "completions_refused", 1)


def holds(store: Store, worker: str, study: str | None = None, series: str | None = None,
          now: float | None = None) -> bool:
    """Whether remote ``worker`` holds a live claim (running, its lease not over) on a job in ``study``
    (and on ``series`` of it, when named; with neither, on any job): what its token may read and store
    into (:mod:`dicomweb.auth`). One query on the running jobs (index ``jobs_state``)."""
    now = time.time() if now is None else now
    sql = ("SELECT 1 FROM jobs WHERE state = 'running' AND claimed_by = ? AND lease_until IS NOT NULL"
           " AND lease_until >= ?")
    args: list[object] = [worker, now]
    if study is not None:
        sql += " AND study_instance_uid = ?"
        args.append(study)
    if series is not None:
        sql += " AND series_instance_uid = ?"
        args.append(series)
    return store.conn().execute(sql + " LIMIT 1", args).fetchone() is not None


class WorkerTokens:
    """The remote workers the node knows: a file of ``NAME SHA256`` lines, read again when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._hashes: dict[str, str] = {}

    def _load(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._hashes = None, {}
            return
        stamp = (stat.st_mtime, stat.st_size)
        if stamp == self._stamp:
            return
        hashes: dict[str, str] = {}
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            name, digest = (text.split(None, 1) + [""])[:2]  # spaces or tabs between them
            digest = digest.strip().lower()
            if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
                hashes[digest] = name
            else:  # a hand-edited line the node cannot use: said, not silently ignored (probe 20)
                log.warning("%s line %d is not 'NAME SHA256' (the SHA-256 of the token, 64 hex digits): ignored",
                            self.path, number)
        self._stamp, self._hashes = stamp, hashes

    def worker(self, token: str) -> str | None:
        """The name of the worker this token belongs to, or None."""
        self._load()
        digest = hash_token(token)
        for known, name in self._hashes.items():
            if hmac.compare_digest(known, digest):
                return name
        return None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


def check_worker_name(name: str) -> str:
    """``name`` if it can name a worker in the tokens file, else ValueError saying why."""
    if not name or any(c.isspace() or c == "#" for c in name):
        raise ValueError(f"a worker name has no spaces and no '#': {name!r}")
    if name == LOCAL_WORKER or name.startswith(LOCAL_WORKER + ":"):
        raise ValueError(f"{name!r} names the node's own workers (their jobs and metrics): give a remote worker "
                         "another name")
    return name


def new_worker_token(tokens_file: Path, name: str, token: str | None = None) -> str:
    """Make a token for worker ``name`` (or take ``token``, made and kept by the caller first) and add its
    hash to the node's tokens file; returns the token. A name the file holds already is a ValueError: a second
    token under it would leave the first one valid, unseen (probe 20); rotate under a new name (docs/operations.md)."""
    check_worker_name(name)
    if name in _names_in(tokens_file):
        raise ValueError(f"worker {name!r} has a token already ({tokens_file}); to rotate it, make one under a new "
                         "name and delete the old line (docs/operations.md, \"Worker tokens\")")
    token = token or secrets.token_urlsafe(32)
    tokens_file.parent.mkdir(parents=True, exist_ok=True)
    fd = _private_append(tokens_file)
    with os.fdopen(fd, "a") as f:
        f.write(f"{name} {hash_token(token)}\n")
    return token


def _names_in(tokens_file: Path) -> set[str]:
    try:
        lines = tokens_file.read_text().splitlines()
    except FileNotFoundError:
        return set()
    return {words[0] for line in lines if (words := line.split("#", 1)[0].split())}


def _private_append(path: Path) -> int:
    """``path`` (the worker tokens file) opened to append, mode 600: created so when missing, and an existing one
    that others could read tightened. Its hashes let nobody in, but they tell who works for the node, and the
    operations guide promises 600 for it, as for ``http-password``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    mode = os.fstat(fd).st_mode & 0o777
    if mode & 0o077:
        try:
            os.fchmod(fd, 0o600)
        except OSError as exc:  # another user's file this one may write to: the line is added all the same
            log.warning("%s stays mode %o (%s); make it 600", path, mode, exc.strerror or exc)
    return fd

