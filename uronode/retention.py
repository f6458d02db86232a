"""Retention: delete received series once they are old, keep what the node derived from them.

A series is due when it is complete, its last instance arrived more than
``storage.retention_days`` ago, no job for it is still queued, running or
delivering, and it is not one of the node's own results (Manufacturer
``uronode``). Its index rows go first, in one transaction, then its files:
a crash in between leaves files that nothing indexes (disk space only), never
an index row that points to a deleted file. Only the files that were deleted from the index are
removed, so an instance of the same series that arrives meanwhile is kept (and
re-opens the series as a new one).

The node runs a pass at start-up and every ``storage.retention_interval_s`` seconds (its
``retention`` loop, :mod:`uronode.loops`);
``uronode purge`` runs one by hand (``--dry-run`` lists what it would delete).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from uronode.audit import AuditLog
from uronode.completion import OWN_MANUFACTURER
from uronode.store import METADATA_CACHE, Store

log = logging.getLogger(__name__)

_DUE = """
SELECT s.series_instance_uid, s.study_instance_uid
  FROM series s
 WHERE s.state = 'complete' AND s.last_received_at < ?
   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.series_instance_uid = s.series_instance_uid
                    AND j.state IN ('queued', 'running', 'delivering'))
   AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.series_instance_uid = s.series_instance_uid
                    AND i.manufacturer = ?)
 ORDER BY s.last_received_at
"""


@dataclass
class Purged:
    series: list[str] = field(default_factory=list)
    instances: int = 0
    bytes: int = 0


def purge(store: Store, older_than_days: float, *, dry_run: bool = False, now: float | None = None) -> Purged:
    """Delete every received series past its retention; returns what was (or would be) deleted.

    ``older_than_days`` must be a finite number greater than 0: 0 or less would take series received
    a moment ago, so it is a ValueError, never a purge of everything.
    """
    if not (math.isfinite(older_than_days) and older_than_days > 0):
        raise ValueError(f"older_than_days must be a finite number of days greater than 0, not {older_than_days!r}")
    cutoff = (time.time() if now is None else now) - older_than_days * 86400.0
    conn = store.conn()
    due = conn.execute(_DUE, (cutoff, OWN_MANUFACTURER)).fetchall()
    done = Purged()
    audit = AuditLog(store.root)
    for row in due:
        series, study = row["series_instance_uid"], row["study_instance_uid"]
        if dry_run:
            files = conn.execute("SELECT path, size FROM instances WHERE series_instance_uid = ?", (series,)).fetchall()
        else:
            with store.transaction() as tx:
                # checked again inside the transaction: the series may have re-opened since the query
                if tx.execute(
                    "SELECT 1 FROM series WHERE series_instance_uid = ? AND state = 'complete' AND last_received_at < ?",
                    (series, cutoff),
                ).fetchone() is None:
                    continue
                files = tx.execute("SELECT path, size FROM instances WHERE series_instance_uid = ?", (series,)).fetchall()
                tx.execute("DELETE FROM instances WHERE series_instance_uid = ?", (series,))
                tx.execute("DELETE FROM series_associations WHERE series_instance_uid = ?", (series,))
                tx.execute("DELETE FROM series WHERE series_instance_uid = ?", (series,))
                tx.executemany(
                    "INSERT INTO counters (name, value) VALUES (?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    [("instances_deleted", len(files)), ("series_deleted", 1)],
                )
                tx.execute(
                    "DELETE FROM studies WHERE study_instance_uid = ? AND NOT EXISTS"
                    " (SELECT 1 FROM instances WHERE study_instance_uid = ?)",
                    (study, study),
                )
        done.series.append(series)
        done.instances += len(files)
        done.bytes += sum(f["size"] for f in files)
        if dry_run:
            continue
        folders = {Path(f["path"]).parent for f in files}
        for f in files:
            Path(f["path"]).unlink(missing_ok=True)
        for folder in folders:
            _remove_if_unused(folder)
        audit.record("retention", series_instance_uid=series, instances=len(files))
    if done.series and not dry_run:
        log.info("retention: deleted %d series (%d instances, %.1f MB) received before %s",
                 len(done.series), done.instances, done.bytes / 1e6, time.strftime("%Y-%m-%d %H:%M", time.localtime(cutoff)))
    return done


def _remove_if_unused(folder: Path) -> None:
    """Remove a series folder left with nothing but the metadata cache (a new arrival keeps it)."""
    try:
        (folder / METADATA_CACHE).unlink(missing_ok=True)
        folder.rmdir()
        folder.parent.rmdir()  # the study's folder, when this was its last series
    except OSError:
        pass  # not empty: something arrived meanwhile, or the study has other series

