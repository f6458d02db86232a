"""Association bookkeeping: which DICOM associations are open, for series completion.

A receiving process records an association when its first instance comes
(:meth:`Associations.open`) and its end (:meth:`Associations.close`); the
store links each instance's series to the association that carried it, and
:mod:`uronode.completion` waits for every association of a series to end.
Associations still open at start-up died with the previous process and are
closed as ``lost`` (:meth:`Associations.close_left_open`).

A STOW-RS request is recorded as an association too, from its start, before
its body arrives (:meth:`Associations.open`, ``hold_series``): a client that sends a
series in several requests holds it open while the next request's body
uploads, as a C-STORE sender holds it while its next association sends.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time

from uronode.db import Database
from uronode.errors import OutOfResources

log = logging.getLogger(__name__)


_HOLD_SERIES = """
INSERT OR IGNORE INTO series_associations (series_instance_uid, association_id)
SELECT DISTINCT sa.series_instance_uid, ? FROM series_associations sa
  JOIN associations a ON a.id = sa.association_id
  JOIN series s ON s.series_instance_uid = sa.series_instance_uid
 WHERE a.calling_ae = ? AND a.peer_host = ? AND s.state = 'receiving'
   AND s.last_received_at >= a.started_at AND (a.ended_at IS NULL OR a.ended_at >= ?)
"""
"""The series still receiving that an association of the same sender carried (an instance came after it started:
not one it only held) and that is open or ended within the grace period; held by the new one."""


class Associations:
    """The ``associations`` table."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def open(self, calling_ae: str, peer_host: str, *, hold_series: bool = False, grace_s: float = 0.0) -> int:
        """Record an association that brings instances; :class:`OutOfResources` when the index is full.

        ``hold_series`` (a STOW-RS request, recorded before its body arrives: ``calling_ae`` says so and who sent
        it): every series still receiving that an association of the same ``calling_ae`` and ``peer_host``
        carried, open or ended less than ``grace_s`` ago (the completion grace), is linked to this one and waits
        for it to end. A series sent in several requests completes after the last (its grace counts from there),
        not in the pause while the next request's body uploads, which had made a job of each request. A series
        this request only holds is not held again by the next one (review 38: a router sending a request a
        second held every series it had sent until the quiet period): a request of another series holds it at
        most until that request ends; the quiet rule bounds the wait in any case."""
        try:
            with self.database.transaction() as conn:
                cur = conn.execute(
                    "INSERT INTO associations (calling_ae, peer_host, pid, started_at) VALUES (?, ?, ?, ?)",
                    (calling_ae, peer_host, os.getpid(), time.time()),
                )
                association_id = int(cur.lastrowid or 0)
                if hold_series:
                    conn.execute(_HOLD_SERIES, (association_id, calling_ae, peer_host, time.time() - grace_s))
        except sqlite3.Error as exc:  # a full disk: the index cannot grow
            raise OutOfResources(f"the index could not be updated: {exc}") from exc
        return association_id

    def close(self, association_id: int, outcome: str) -> None:
        """Record its end; if the index cannot be written, its series still complete by the quiet rule (an
        upload's after ``uronode.completion.UPLOAD_HOLD_S``)."""
        try:
            with self.database.transaction() as conn:
                conn.execute(
                    "UPDATE associations SET ended_at = ?, outcome = ? WHERE id = ? AND ended_at IS NULL",
                    (time.time(), outcome, association_id),
                )
        except sqlite3.Error as exc:
            log.error("association %d could not be closed in the index: %s", association_id, exc)

    def close_of_process(self, pid: int) -> int:
        """Close as ``lost`` the associations the receiving process ``pid`` left open when it died (the node
        goes on), so that their series complete as those of a crash do; how many."""
        with self.database.transaction() as conn:
            cur = conn.execute(
                "UPDATE associations SET ended_at = ?, outcome = 'lost' WHERE ended_at IS NULL AND pid = ?",
                (time.time(), pid),
            )
        if cur.rowcount:
            log.warning("closed %d association(s) left open by receiving process %d", cur.rowcount, pid)
        return cur.rowcount

    @staticmethod
    def prune_in(conn: sqlite3.Connection, cutoff: float) -> int:
        """Inside the caller's transaction: delete the associations that ended before ``cutoff`` and their
        links to series (retention of the history); how many."""
        conn.execute(
            "DELETE FROM series_associations WHERE association_id IN"
            " (SELECT id FROM associations WHERE ended_at IS NOT NULL AND ended_at < ?)",
            (cutoff,),
        )
        cur = conn.execute("DELETE FROM associations WHERE ended_at IS NOT NULL AND ended_at < ?", (cutoff,))
        return cur.rowcount

    def close_left_open(self) -> int:
        """Close as ``lost`` the associations a previous run left open (at start-up); how many."""
        with self.database.transaction() as conn:
            cur = conn.execute(
                "UPDATE associations SET ended_at = ?, outcome = 'lost' WHERE ended_at IS NULL", (time.time(),)
            )
        if cur.rowcount:
            log.warning("closed %d association(s) left open by a previous run", cur.rowcount)
        return cur.rowcount
