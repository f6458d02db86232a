"""The audit log: append-only, one JSON object per line, in ``<data_dir>/audit.log``.

Every process of the node appends to the same file with O_APPEND and one
``write`` per event, so lines never interleave. Events name UIDs, AE titles,
addresses and outcomes, never patient names or IDs:
``series_complete``, ``job_finished``, ``delivery``, ``http``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "audit.log"

    def record(self, event: str, **fields: object) -> None:
        """Append one event; a failure to write is logged, never raised into the caller's work."""
        line = json.dumps({"time": round(time.time(), 3), "event": event, **fields}, separators=(",", ":")) + "\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("audit log %s not written: %s", self.path, exc.strerror or exc)
