"""Association bookkeeping: which DICOM associations are open, for series completion.

A receiving process records an association when its first instance comes
(:meth:`Associations.open`) and its end (:meth:`Associations.close`); the
store links each instance's series to the association that carried it, and
:mod:`uronode.completion` waits for every association of a series to end.
Associations still open at start-up died with the previous process and are
closed as ``lost`` (:meth:`Associations.close_left_open`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time

from uronode.db import Database
from uronode.errors import OutOfResources

log = logging.getLogger(__name__)


class Associations:
    """The ``associations`` table."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def open(self, calling_ae: str, peer_host: str) -> int:
        """Record an association that brings instances; :class:`OutOfResources` when the index is full."""
        try:
            with self.database.transaction() as conn:
                cur = conn.execute(
                    "INSERT INTO associations (calling_ae, peer_host, pid, started_at) VALUES (?, ?, ?, ?)",
                    (calling_ae, peer_host, os.getpid(), time.time()),
                )
        except sqlite3.Error as exc:  # a full disk: the index cannot grow
            raise OutOfResources(f"the index could not be updated: {exc}") from exc
        return int(cur.lastrowid or 0)

    def close(self, association_id: int, outcome: str) -> None:
        """Record its end; if the index cannot be written, its series still complete by the quiet rule."""
        try:
            with self.database.transaction() as conn:
                conn.execute(
                    "UPDATE associations SET ended_at = ?, outcome = ? WHERE id = ? AND ended_at IS NULL",
                    (time.time(), outcome, association_id),
                )
        except sqlite3.Error as exc:
            log.error("association %d could not be closed in the index: %s", association_id, exc)

    def close_left_open(self) -> int:
        """Close as ``lost`` the associations a previous run left open (at start-up); how many."""
        with self.database.transaction() as conn:
            cur = conn.execute(
                "UPDATE associations SET ended_at = ?, outcome = 'lost' WHERE ended_at IS NULL", (time.time(),)
            )
        if cur.rowcount:
            log.warning("closed %d association(s) left open by a previous run", cur.rowcount)
        return cur.rowcount
