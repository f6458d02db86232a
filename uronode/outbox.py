"""The outbox: every result instance owed to every destination, as rows in SQLite.

A delivery is ``pending`` until its destination confirms it with a success
(or warning) status, then ``delivered``. A failure waits
``backoff_s * 2**(attempts-1)`` seconds (at most ``backoff_max_s``) before the
next try; after ``max_attempts`` it is ``dead`` with the last reason, until
``uronode retry`` makes it pending again. Derived UIDs are deterministic, so
enqueuing the same instance for the same destination again only resets its
row: the destination never gets two copies under different UIDs.
"""

from __future__ import annotations

import builtins
import enum
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from uronode.store import Store


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


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


class Outbox:
    def __init__(self, store: Store, *, max_attempts: int = 8, backoff_s: float = 5.0, backoff_max_s: float = 600.0) -> None:
        self.store = store
        self.max_attempts = max_attempts
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
        conn.execute(
            "INSERT INTO deliveries (job_id, destination, sop_instance_uid, sop_class_uid, path, calling_ae,"
            " state, attempts, next_attempt_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)"
            " ON CONFLICT(destination, sop_instance_uid) DO UPDATE SET job_id = excluded.job_id,"
            " path = excluded.path, sop_class_uid = excluded.sop_class_uid, calling_ae = excluded.calling_ae,"
            " state = 'pending', attempts = 0, next_attempt_at = excluded.next_attempt_at, last_error = NULL,"
            " updated_at = excluded.updated_at",
            (job_id, destination, sop_instance_uid, sop_class_uid, str(path), calling_ae, now, now, now),
        )

    def due(self, now: float | None = None, limit: int = 1000) -> dict[str, builtins.list[Delivery]]:
        """Pending deliveries whose time has come, by destination."""
        now = time.time() if now is None else now
        # The instance's file as the store has it now: a result stored again with other bytes (a job run
        # twice, its late worker's STOW-RS) has a new file, and the old one is gone.
        rows = self.store.conn().execute(
            "SELECT d.id, d.job_id, d.destination, d.sop_instance_uid, d.sop_class_uid, d.calling_ae, d.state,"
            " d.attempts, d.next_attempt_at, d.last_error, coalesce(i.path, d.path) AS path FROM deliveries d"
            " LEFT JOIN instances i ON i.sop_instance_uid = d.sop_instance_uid"
            " WHERE d.state = 'pending' AND d.next_attempt_at <= ? ORDER BY d.id LIMIT ?",
            (now, limit),
        ).fetchall()
        grouped: dict[str, builtins.list[Delivery]] = defaultdict(builtins.list)
        for row in rows:
            grouped[row["destination"]].append(_delivery(row))
        return dict(grouped)

    def mark_delivered(self, ids: builtins.list[int]) -> None:
        if not ids:
            return
        now = time.time()
        with self.store.transaction() as conn:
            conn.executemany(
                "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, last_error = NULL,"
                " updated_at = ? WHERE id = ?",
                [(now, i) for i in ids],
            )

    def mark_failed(self, delivery_id: int, reason: str, now: float | None = None) -> DeliveryState:
        """Record a failed try: back off, or give up after ``max_attempts`` (dead letter)."""
        now = time.time() if now is None else now
        with self.store.transaction() as conn:
            row = conn.execute("SELECT attempts FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            if row is None:
                raise ValueError(f"no delivery {delivery_id}")
            attempts = row["attempts"] + 1
            if attempts >= self.max_attempts:
                state, next_at = DeliveryState.DEAD, now
            else:
                state = DeliveryState.PENDING
                next_at = now + min(self.backoff_s * 2 ** (attempts - 1), self.backoff_max_s)
            conn.execute(
                "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?, updated_at = ?"
                " WHERE id = ?",
                (state.value, attempts, next_at, reason, now, delivery_id),
            )
        return state

    def retry(self, *, destination: str | None = None, job_id: int | None = None) -> int:
        """Make dead letters pending again (all, or one destination's, or one job's); returns how many.

        Their jobs, failed because of them, wait for delivery again."""
        sql = "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ? WHERE state = 'dead'"
        params: builtins.list[object] = [time.time(), time.time()]
        if destination is not None:
            sql += " AND destination = ?"
            params.append(destination)
        if job_id is not None:
            sql += " AND job_id = ?"
            params.append(job_id)
        with self.store.transaction() as conn:
            count = conn.execute(sql + " RETURNING job_id", params).fetchall()
            jobs = {r["job_id"] for r in count if r["job_id"] is not None}
            conn.executemany(
                "UPDATE jobs SET state = 'delivering', reason = NULL WHERE id = ? AND state = 'failed'",
                [(j,) for j in jobs],
            )
        return len(count)

    def settle_jobs(self) -> int:
        """Jobs waiting on their deliveries become delivered when all are, failed when one is dead."""
        now = time.time()
        with self.store.transaction() as conn:
            done = conn.execute(
                "UPDATE jobs SET state = 'delivered', reason = NULL, updated_at = ? WHERE state = 'delivering'"
                " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = jobs.id AND d.state != 'delivered')",
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
