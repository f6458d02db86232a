"""The audit log: append-only, one JSON object per line, in ``<data_dir>/audit.log``.

Every process of the node appends to the same file with O_APPEND and one
``write`` per event, so lines never interleave. Events name UIDs, AE titles,
addresses and outcomes, never patient names or IDs:
``series_complete``, ``job_finished``, ``delivery``, ``http``.

An ``http`` event has ``method``, ``path``, ``status``, ``client`` and ``user``
(who authenticated, or the user a trusted reverse proxy names; None when
neither), and where they apply ``auth`` (``basic``, ``token``, ``worker`` or
``failed``), ``reason`` (why authentication failed), ``proxy`` (the trusted
proxy that forwarded the request) and ``claimed_user`` (an ``X-Forwarded-User``
from a client that is not a trusted proxy: a claim, not who asked). Passwords
and tokens are never in it. A value is a JSON string, its control characters
escaped, so each event stays one line whatever a client sent.
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
