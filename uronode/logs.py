"""Logging set-up, done once by each entry point. Modules only call ``logging.getLogger(__name__)``.

Every record is one line of text on stderr: control characters (CR, LF, the other C0 controls, DEL, the
C1 controls and the Unicode line and paragraph separators) in its message, its arguments, its exception's
traceback and its stack are written escaped (``\\n``, ``\\r``, ``\\t``, ``\\x1b``, ``\\u2028``), so text
from the network (a calling AE title, a remote worker's failure reason, a request path) cannot start a
line that reads as a record of its own. A traceback is on its record's line with its line breaks as
``\\n``: ``sed 's/\\\\n/\\n/g'`` shows it as Python wrote it. Other text, UTF-8 names included, is
written as it is. The node's other log, the audit log (:mod:`uronode.audit`), is JSON, whose strings
escape control characters themselves.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from datetime import datetime

FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with each control character written as its escape; ordinary text is returned as it is."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class OneLineFormatter(logging.Formatter):
    """A formatter whose every record is one line: control characters are escaped in all it writes. Its time is
    ISO 8601, local, to the millisecond, with its offset from UTC (``2026-12-05T16:07:32.414+01:00``): a line
    says when it was written whatever the reader's zone, and across a change of summer time."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        when = datetime.fromtimestamp(record.created).astimezone()
        return when.strftime(datefmt) if datefmt else when.isoformat(timespec="milliseconds")

    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(super().format(record))


class Sometimes:
    """Counts what happens and says when a line about it may be written: at most once per ``every_s``, with how
    many happened since the last line (the first one at once). A refusal that any peer can cause at will is told
    so, one line a minute however many come."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self._count = 0
        self._told_at: float | None = None
        self._lock = threading.Lock()

    def happened(self) -> int | None:
        """Count one; how many since the last line when one is due now, else None."""
        now = time.monotonic()
        with self._lock:
            self._count += 1
            if self._told_at is not None and now - self._told_at < self.every_s:
                return None
            count, self._count, self._told_at = self._count, 0, now
            return count


FLOOD_LOGGERS = ("scp", "pynetdicom")
"""Loggers whose warnings and errors any peer on the network can cause at will (a malformed A-ASSOCIATE-RQ, a
connection that sends nothing), whose repeats :class:`FloodFilter` holds back."""
FLOOD_LIMIT = 20
FLOOD_WINDOW_S = 60.0
HELD_BACK_FROM_HERE = "more like it held back for the rest of the minute; their count comes with the next one"


class FloodFilter(logging.Filter):
    """At most ``FLOOD_LIMIT`` warnings and errors of one message with the same arguments (the same peer) of
    :data:`FLOOD_LOGGERS` a minute, and ten times as many of one message whatever its arguments; the first let
    through after a held-back run says how many were held back (probe 40: 300 malformed associations in 7 s
    wrote 300 records with tracebacks, 369 KB). The last line let through says that the next ones are held back
    (review 37: a run held back at the end of a flood was said only by the next line of that message, whenever it
    came); how many were is said by that next line."""

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[tuple[str, str, str | None], tuple[float, int, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(FLOOD_LOGGERS):
            return True
        # by message and its arguments (the peer): one peer's flood does not hide another's lines (review 37);
        # and by message alone, ten times as many, for a flood whose arguments change every time
        arguments = str(record.args)[:200] if record.args else ""
        keys = ((record.name, str(record.msg), arguments, FLOOD_LIMIT),
                (record.name, str(record.msg), None, 10 * FLOOD_LIMIT))
        with self._lock:
            held = 0
            counted = []
            for name, msg, args, limit in keys:
                key = (name, msg, args)
                started, shown, waiting = self._counts.get(key, (record.created, 0, 0))
                if record.created - started >= FLOOD_WINDOW_S:
                    started, shown = record.created, 0
                counted.append((key, started, shown, waiting))
                if shown >= limit:
                    for other, other_started, other_shown, other_waiting in counted:
                        self._counts[other] = (other_started, other_shown, other_waiting + (other == key))
                    return False
            last = False  # the last one let through this minute: it says that the next are held back
            for (key, started, shown, waiting), (*_, limit) in zip(counted, keys, strict=True):
                self._counts[key] = (started, shown + 1, 0)
                last = last or shown + 1 == limit
                if key[2] is not None:
                    held = waiting
            if len(self._counts) > 1000:  # many different messages: forget the oldest windows
                for old in sorted(self._counts, key=lambda k: self._counts[k][0])[:500]:
                    del self._counts[old]
        if held:
            record.msg = f"{record.msg} ({held} more like it held back in the minute before)"
        if last:
            record.msg = f"{record.msg} ({HELD_BACK_FROM_HERE})"
        return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(FORMAT))
    handler.addFilter(FloodFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # pynetdicom logs every PDU and the peer's identity at INFO/DEBUG; keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if level != "DEBUG" else logging.INFO)
    # highdicom logs each module it copies at INFO (several lines a result instance): keep it to warnings too.
    logging.getLogger("highdicom").setLevel(logging.WARNING if level != "DEBUG" else logging.INFO)
    # Python warnings of the libraries (highdicom's about a name without a caret quotes the patient's name,
    # pydicom's about an invalid value quotes the value, a birth date say) were written to stderr as they were,
    # names and line breaks included (probe 40: a name holding a line break forged a log record): they go
    # through logging, one escaped line each, and are shown only at DEBUG, as the other libraries' detail is
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if level == "DEBUG" else logging.ERROR)
