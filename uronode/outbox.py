"""The outbox: every result instance owed to every destination, as rows in SQLite.

A delivery is ``pending`` until its destination confirms it with a success
(or warning) status, then ``delivered``. A failure waits
``backoff_s * 2**(attempts-1)`` seconds (at most ``backoff_max_s``) before the
next try. Giving up is by time: a delivery still failing ``retry_for_s`` after it
was owed (enqueued, enqueued again, or made pending again by ``uronode retry``)
is ``dead`` with the last reason, as is one that failed ``max_attempts`` times
when that optional bound is set; ``uronode retry`` makes it pending again.
Derived UIDs are deterministic, so enqueuing the same instance for the same
destination again only resets its row: the destination never gets two copies
under different UIDs.

A row's ``created_at`` is when it was last owed afresh (the start of its retry period).

Times are the wall clock's (they outlive the process), so both rules read it
with the host's clock being stepped in mind (probe 39): a retry time further
off than any backoff is due at once (the clock was set back), and the time
owed (``owed_s``) adds up the gaps between tries, a negative one as none and
one longer than ``MAX_GAP_S`` as that (the clock was set forward, or the node
was stopped: a virtual machine resumed after a weekend had its next failure
given up for good after one try).
"""

from __future__ import annotations

import builtins
import enum
import sqlite3
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from uronode.metrics import DELIVERY_FAILURES, FAILED_TRIES
from uronode.settings import Destination, result_kind
from uronode.store import Store
from uronode.types import NOT_OWED, NOT_SENT

CLOCK_SLACK_S = 120.0
"""How much further off than ``backoff_max_s`` a retry time may lie before it is taken for one set before the
clock was stepped back (:meth:`Outbox.due`)."""
MAX_GAP_S = 3600.0
"""The longest gap between two tries of a delivery counted whole towards ``retry_for_s`` (:meth:`Outbox.mark_failed`):
longer than the backoff (at most ``backoff_max_s``, 600 s by default) and a delivery round held up by another
destination's timeouts, shorter than a step of the clock or a night the node was stopped (counted as this)."""


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    SUPERSEDED = "superseded"
    """A later run of the same model on the series made other results: not sent (:mod:`uronode.supersede`)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    job_id: int | None
    destination: str
    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    calling_ae: str | None
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str | None


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=row["id"],
        job_id=row["job_id"],
        destination=row["destination"],
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        path=Path(row["path"]),
        calling_ae=row["calling_ae"],
        state=DeliveryState(row["state"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
    )


NOT_HELD = ("NOT EXISTS (SELECT 1 FROM results r JOIN series s ON s.series_instance_uid = r.source_series_uid"
            " WHERE r.sop_instance_uid = d.sop_instance_uid AND s.identity_changed = 1)")
"""A delivery ``d`` not held: it is no result of a series an image of which came again naming another patient or
order (those are withdrawn when the series completes; probe 45)."""


class Outbox:
    def __init__(self, store: Store, *, max_attempts: int | None = None, backoff_s: float = 5.0,
                 backoff_max_s: float = 600.0, retry_for_s: float | None = 86400.0) -> None:
        self.store = store
        self.max_attempts = max_attempts
        """Give up after this many failed tries (None: no bound by count)."""
        self.retry_for_s = retry_for_s
        """Give up on a delivery still failing this long after it was owed (None: no bound by time)."""
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s

    def enqueue_in(
        self,
        conn: sqlite3.Connection,
        *,
        destination: str,
        sop_instance_uid: str,
        sop_class_uid: str,
        path: Path,
        job_id: int | None = None,
        calling_ae: str | None = None,
    ) -> None:
        """Owe this instance to this destination (inside the caller's transaction)."""
        now = time.time()
        _keep_failures(conn, "destination = ? AND sop_instance_uid = ?", (destination, sop_instance_uid))
        conn.execute(
            "INSERT INTO deliveries (job_id, destination, sop_instance_uid, sop_class_uid, path, calling_ae,"
            " state, attempts, next_attempt_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)"
            " ON CONFLICT(destination, sop_instance_uid) DO UPDATE SET job_id = excluded.job_id,"
            " path = excluded.path, sop_class_uid = excluded.sop_class_uid, calling_ae = excluded.calling_ae,"
            " state = 'pending', attempts = 0, owed_s = 0, next_attempt_at = excluded.next_attempt_at, last_error = NULL,"
            " created_at = excluded.created_at, updated_at = excluded.updated_at",
            (job_id, destination, sop_instance_uid, sop_class_uid, str(path), calling_ae, now, now, now),
        )

    def due(self, now: float | None = None, limit: int = 1000) -> dict[str, builtins.list[Delivery]]:
        """Pending deliveries whose time has come, by destination."""
        now = time.time() if now is None else now
        # The instance's file as the store has it now: a result stored again with other bytes (a job run
        # twice, its late worker's STOW-RS) has a new file, and the old one is gone. Results of a series an image
        # of which came again naming another patient or order wait: they are withdrawn when it completes (probe
        # 45: they went to the PACS after the correction).
        rows = self.store.conn().execute(
            "SELECT d.id, d.job_id, d.destination, d.sop_instance_uid, d.sop_class_uid, d.calling_ae, d.state,"
            " d.attempts, d.next_attempt_at, d.last_error, coalesce(i.path, d.path) AS path FROM deliveries d"
            " LEFT JOIN instances i ON i.sop_instance_uid = d.sop_instance_uid"
            " WHERE d.state = 'pending' AND (d.next_attempt_at <= ? OR d.next_attempt_at > ?)"
            f" AND {NOT_HELD} ORDER BY d.id LIMIT ?",
            (now, now + self.backoff_max_s + CLOCK_SLACK_S, limit),  # the latter: set for before a step back
        ).fetchall()
        grouped: dict[str, builtins.list[Delivery]] = defaultdict(builtins.list)
        for row in rows:
            grouped[row["destination"]].append(_delivery(row))
        return dict(grouped)

    def still_owed(self, delivery_id: int) -> bool:
        """Whether a delivery of a round under way is still to be sent, right before it is: pending, and not held
        (a result of a series whose patient or order identity changed since the round began: review 40)."""
        return self.store.conn().execute(
            f"SELECT 1 FROM deliveries d WHERE d.id = ? AND d.state = 'pending' AND {NOT_HELD}",
            (delivery_id,)).fetchone() is not None

    def mark_delivered(self, ids: builtins.list[int]) -> None:
        if not ids:
            return
        now = time.time()
        with self.store.transaction() as conn:
            conn.executemany(  # review 50: one sent as its job was cancelled reached the destination all the same
                "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, last_error = NULL,"
                " updated_at = ? WHERE id = ? AND (state = 'pending' OR (state = 'superseded' AND last_error LIKE ?))",
                [(now, i, NOT_SENT + "%") for i in ids],
            )

    def mark_failed(self, delivery_id: int, reason: str, now: float | None = None,
                    permanent: bool = False) -> DeliveryState:
        """Record a failed try: back off, or give up (dead letter) once the delivery has been owed
        ``retry_for_s`` or has failed ``max_attempts`` times, or at once where trying again cannot help
        (``permanent``: the destination supports no context of its SOP class); the dead letter's reason says
        which."""
        now = time.time() if now is None else now
        with self.store.transaction() as conn:
            row = conn.execute("SELECT attempts, state, owed_s, updated_at FROM deliveries WHERE id = ?",
                               (delivery_id,)).fetchone()
            if row is None:
                raise ValueError(f"no delivery {delivery_id}")
            if row["state"] != DeliveryState.PENDING:  # superseded while it was being sent, or already settled
                return DeliveryState(row["state"])
            attempts = row["attempts"] + 1
            # the gap since it was owed or last tried: none where the clock went back, at most MAX_GAP_S (review 36:
            # a bound by the count of tries had kept tries stretched by another destination's timeouts for days)
            owed_for = row["owed_s"] + min(max(now - row["updated_at"], 0.0), max(MAX_GAP_S, self.backoff_max_s))
            if permanent:  # probe 24: a SOP class the destination never accepts was tried for a day
                state, next_at = DeliveryState.DEAD, now
                reason = f"{reason} (not tried again: `uronode retry` once the destination or its results change)"
            elif self.max_attempts is not None and attempts >= self.max_attempts:
                state, next_at = DeliveryState.DEAD, now
                reason = f"{reason} (given up after {attempts} tries: delivery.max_attempts)"
            elif self.retry_for_s is not None and owed_for >= self.retry_for_s:
                state, next_at = DeliveryState.DEAD, now
                reason = f"{reason} (given up after {attempts} tries in {_duration(owed_for)}: delivery.retry_for_s)"
            else:
                state = DeliveryState.PENDING
                next_at = now + min(self.backoff_s * 2 ** min(attempts - 1, 60), self.backoff_max_s)
            conn.execute(
                "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?, updated_at = ?,"
                " owed_s = ? WHERE id = ?",
                (state.value, attempts, next_at, reason, now, owed_for, delivery_id),
            )
        return state

    def retry(self, *, destination: str | None = None, job_id: int | None = None) -> int:
        """Make dead letters pending again (all, or one destination's, or one job's), each with a new
        retry period; returns how many.

        Their jobs, failed because of them, wait for delivery again."""
        now = time.time()
        sql = ("UPDATE deliveries SET state = 'pending', attempts = 0, owed_s = 0, next_attempt_at = ?, created_at = ?,"
               " updated_at = ? WHERE state = 'dead'")
        params: builtins.list[object] = [now, now, now]
        if destination is not None:
            sql += " AND destination = ?"
            params.append(destination)
        if job_id is not None:
            sql += " AND job_id = ?"
            params.append(job_id)
        with self.store.transaction() as conn:
            _keep_failures(conn, sql.split(" WHERE ", 1)[1], params[3:])
            count = conn.execute(sql + " RETURNING job_id", params).fetchall()
            jobs = {r["job_id"] for r in count if r["job_id"] is not None}
            conn.executemany(
                "UPDATE jobs SET state = 'delivering', reason = NULL WHERE id = ? AND state = 'failed'",
                [(j,) for j in jobs],
            )
        return len(count)

    def drop_unwanted(self, destinations: Sequence[Destination]) -> dict[str, int]:
        """Bring what is owed in line with the destinations as now configured: pending deliveries and dead letters
        that they do not want (the destination removed, or its ``results`` no longer naming their kind) are no
        longer owed (``superseded``, their reason starting ``NOT_OWED``), and a job that failed on them only waits
        for its other deliveries; deliveries dropped so earlier that they want again are owed again (a
        configuration put right loses nothing). Returns how many were dropped, by reason. The node does it at
        start-up, ``uronode retry`` before it queues dead letters again (probe 41: they were sent again, died
        again, and their jobs stayed failed for good)."""
        wanted = {d.name: d for d in destinations}
        now = time.time()
        dropped: dict[str, int] = {}
        with self.store.transaction() as conn:
            rows = conn.execute("SELECT id, job_id, destination, sop_instance_uid, sop_class_uid, path, state,"
                                " last_error FROM deliveries"
                                " WHERE state IN ('pending', 'dead') OR (state = 'superseded' AND last_error LIKE ?)",
                                (NOT_OWED + "%",)).fetchall()
            jobs = set()
            for row in rows:
                destination = wanted.get(row["destination"])
                if destination is None:
                    why = f"destination {row['destination']!r} is not configured any more"
                elif not destination.takes(row["sop_class_uid"]):
                    why = (f"destination {row['destination']!r} takes no {result_kind(row['sop_class_uid'])} "
                           "results any more (its results setting)")
                else:
                    why = None
                if why is not None and row["state"] != "superseded":
                    conn.execute("UPDATE deliveries SET state = 'superseded', last_error = ?, updated_at = ?"
                                 " WHERE id = ?", (f"{NOT_OWED}{why}", now, row["id"]))
                    dropped[why] = dropped.get(why, 0) + 1
                elif why is None and row["state"] == "superseded":  # wanted again
                    if not _still_there(conn, row):
                        continue  # its result superseded, withdrawn or purged since (review 37): no more owed
                    _keep_failures(conn, "id = ?", (row["id"],))
                    conn.execute("UPDATE deliveries SET state = 'pending', attempts = 0, owed_s = 0, last_error = NULL,"
                                 " next_attempt_at = ?, created_at = ?, updated_at = ? WHERE id = ?",
                                 (now, now, now, row["id"]))
                    if row["job_id"] is not None:
                        conn.execute("UPDATE jobs SET state = 'delivering', reason = NULL WHERE id = ?"
                                     " AND state IN ('delivered', 'failed')", (row["job_id"],))
                    continue
                else:
                    continue
                if row["job_id"] is not None:
                    jobs.add(row["job_id"])
            conn.executemany("UPDATE jobs SET state = 'delivering', reason = NULL WHERE id = ? AND state = 'failed'"
                             " AND reason LIKE 'delivery failed:%'", [(j,) for j in sorted(jobs)])
        self.settle_jobs()
        return dropped

    def settle_jobs(self) -> int:
        """Jobs waiting on their deliveries become delivered when all are, failed when one is dead."""
        now = time.time()
        with self.store.transaction() as conn:
            done = conn.execute(
                "UPDATE jobs SET state = 'delivered', reason = NULL, updated_at = ? WHERE state = 'delivering'"
                " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = jobs.id"
                " AND d.state NOT IN ('delivered', 'superseded'))",
                (now,),
            ).rowcount
            failed = conn.execute(
                "UPDATE jobs SET state = 'failed', updated_at = ?, reason = 'delivery failed: ' || ("
                "  SELECT d.destination || ': ' || coalesce(d.last_error, '?') FROM deliveries d"
                "  WHERE d.job_id = jobs.id AND d.state = 'dead' ORDER BY d.id LIMIT 1)"
                " WHERE state = 'delivering' AND EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = jobs.id"
                " AND d.state = 'dead')",
                (now,),
            ).rowcount
        return done + failed

    def list(self, state: DeliveryState | None = None, limit: int = 1000, *,
             newest_first: bool = False) -> builtins.list[Delivery]:
        """Up to ``limit`` deliveries (of ``state``), oldest first, or the newest first (``uronode deliveries``)."""
        order = "DESC" if newest_first else "ASC"
        if state is None:
            rows = self.store.conn().execute(
                f"SELECT * FROM deliveries ORDER BY id {order} LIMIT ?", (limit,)
            ).fetchall()
        else:
            rows = self.store.conn().execute(
                f"SELECT * FROM deliveries WHERE state = ? ORDER BY id {order} LIMIT ?", (state.value, limit)
            ).fetchall()
        return [_delivery(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self.store.conn().execute("SELECT state, count(*) AS n FROM deliveries GROUP BY state").fetchall()
        return {r["state"]: r["n"] for r in rows}


def _still_there(conn: sqlite3.Connection, row: sqlite3.Row) -> bool:
    """Whether a delivery's result can be owed again: a job's result still in the store and never rejected (taken
    out as superseded or withdrawn), a rejection note's file still on disk."""
    uid = row["sop_instance_uid"]
    if row["job_id"] is None:
        return Path(row["path"]).is_file()
    return (conn.execute("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (uid,)).fetchone() is not None
            and conn.execute("SELECT 1 FROM rejected WHERE sop_instance_uid = ?", (uid,)).fetchone() is None)


def _keep_failures(conn: sqlite3.Connection, where: str, params: Sequence[object]) -> None:
    """Before the tries of the deliveries ``where`` selects are set to 0 (owed afresh, queued again): add their
    failed tries to the count retention keeps of pruned ones, so that ``uronode_delivery_failures_total`` never
    goes down (probe 41: it fell from 270 to 0 at a `uronode retry`)."""
    (failures,) = conn.execute(f"SELECT {FAILED_TRIES} FROM deliveries WHERE {where}", tuple(params)).fetchone()
    if failures:
        conn.execute("INSERT INTO counters (name, value) VALUES (?, ?)"
                     " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (DELIVERY_FAILURES, failures))


def _duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``: how long a delivery was tried, as its reason says it."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
