"""Logging set-up, done once by each entry point. Modules only call ``logging.getLogger(__name__)``."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
        force=True,
    )
    # pynetdicom logs every PDU and the peer's identity at INFO/DEBUG; keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if level != "DEBUG" else logging.INFO)
