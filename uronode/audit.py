"""The audit log: append-only, one JSON object per line, in ``<data_dir>/audit.log``.

Every process of the node appends to the same file with O_APPEND and one
``write`` per event, so lines never interleave. At :data:`ROTATE_BYTES` the
file is renamed ``audit-<UTC time>.log`` and a new one begins; a renamed
file is compressed (``.log.gz``) at a later rotation, once no process can be
writing into it. Nothing is deleted: how long an audit trail is kept is the
hospital's decision (``docs/operations.md``). Events name UIDs, AE titles,
addresses and outcomes, never patient names or IDs, except where a person named
one: a search's criteria (an ``http`` event's ``query``, a ``study_looked_up``)
and an operator's typed reason: ``series_complete`` (with its ``senders``),
``job_finished``, ``delivery``, ``http``. An event written by an administrator's
command has ``operator`` (the account that ran it, and through ``sudo`` the one
that asked) and ``operator_host`` (:func:`operator_named`).

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

import fcntl
import gzip
import json
import logging
import os
import pwd
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

log = logging.getLogger(__name__)

ROTATE_BYTES = 64 * 1024 * 1024
"""The size at which ``audit.log`` is renamed and a new one begun: about 30,000 series' events (2 KB each) or
250,000 audited requests (260 B each)."""
SETTLED_S = 60.0
"""A renamed file is compressed once this long has passed since it was last written: a process that opened the
file just before the rename has written its line into it by then (each event is one open, write, close)."""

_JOB_ID = re.compile(r'"job_id":(\d+)')


_operator: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("operator", default=())


@contextmanager
def operator_named() -> Iterator[None]:
    """Within it, every event this thread writes names who ran it: ``operator`` (the account; ``alice as root``
    through ``sudo``) and ``operator_host``. An administrator's command runs in it (probe 51: a purge, a cancel,
    a rebuilt index named nobody); the node's own processes do not, their events being the node's."""
    try:
        account = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a container's user with no passwd entry
        account = str(os.geteuid())
    asked = os.environ.get("SUDO_USER")
    token = _operator.set((("operator", f"{asked} as {account}" if asked and asked != account else account),
                           ("operator_host", socket.gethostname())))
    try:
        yield
    finally:
        _operator.reset(token)


class AuditLog:
    def __init__(self, data_dir: Path, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.path = Path(data_dir) / "audit.log"
        self.rotate_bytes = rotate_bytes

    def record(self, event: str, **fields: object) -> None:
        """Append one event; a failure to write is logged, never raised into the caller's work."""
        line = json.dumps({"time": round(time.time(), 3), "event": event, **fields, **dict(_operator.get())},
                          separators=(",", ":")) + "\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.encode())
                full = os.fstat(fd).st_size >= self.rotate_bytes
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("audit log %s not written: %s", self.path, exc.strerror or exc)
            return
        if full:
            self.rotate()

    def highest_job_id(self) -> int:
        """The highest job number any event of the trail names (``audit.log`` and its earlier parts, compressed
        or not), 0 where none does: ``uronode reindex`` numbers the new index's jobs above it, so that a job
        number is never given to two series (review 48)."""
        highest = 0
        for path in [self.path, *self.path.parent.glob("audit-*.log"), *self.path.parent.glob("audit-*.log.gz")]:
            try:
                with (gzip.open(path, "rt", errors="replace") if path.suffix == ".gz"
                      else open(path, errors="replace")) as lines:
                    for line in lines:
                        for found in _JOB_ID.finditer(line):
                            highest = max(highest, int(found[1]))
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                log.warning("the audit log %s could not be read for its job numbers: %s", path, exc)
        return highest

    def rotate(self) -> Path | None:
        """Rename a full ``audit.log`` (one process does, under a lock; the others find it renamed) and compress
        the earlier renamed files that have settled; the renamed file, or None when another process rotated."""
        try:
            with open(self.path.with_name("audit.lock"), "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return None  # another process is rotating it
                try:
                    if self.path.stat().st_size < self.rotate_bytes:
                        return None  # it did, just now
                except FileNotFoundError:
                    return None  # it did, and no process has written since (review 30: an ERROR each time)
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                renamed = self.path.with_name(f"audit-{stamp}.log")
                n = 1
                while renamed.exists() or renamed.with_name(renamed.name + ".gz").exists():
                    renamed, n = self.path.with_name(f"audit-{stamp}-{n}.log"), n + 1
                os.rename(self.path, renamed)
                log.info("audit log rotated: %s", renamed.name)
            # the earlier ones, beside the caller's work (it may be the HTTP server's event loop)
            threading.Thread(target=self.compress_settled, name="audit-compress", daemon=True).start()
            return renamed
        except OSError as exc:
            log.error("audit log %s not rotated: %s", self.path, exc.strerror or exc)
            return None

    def compress_settled(self, settled_s: float = SETTLED_S) -> list[Path]:
        """Compress each renamed file last written more than ``settled_s`` ago; the compressed files."""
        done: list[Path] = []
        if not any(self._settled(renamed, settled_s) for renamed in self.path.parent.glob("audit-*.log")):
            return done  # nothing to do: the lock is not taken (a rotation meanwhile would wait for it)
        try:
            with open(self.path.with_name("audit.lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one compression at a time; a rotation meanwhile waits a write
                for renamed in sorted(self.path.parent.glob("audit-*.log")):
                    self._compress(renamed, settled_s, done)
        except OSError as exc:
            log.error("audit logs in %s not compressed: %s", self.path.parent, exc.strerror or exc)
        return done

    @staticmethod
    def _settled(renamed: Path, settled_s: float) -> bool:
        try:
            return time.time() - renamed.stat().st_mtime >= settled_s
        except OSError:
            return False  # compressed and removed meanwhile

    @classmethod
    def _compress(cls, renamed: Path, settled_s: float, done: list[Path]) -> None:
        try:
            if not cls._settled(renamed, settled_s):
                return
            packed = renamed.with_name(renamed.name + ".gz")
            partial = packed.with_name(packed.name + ".part")  # a compression cut short is done again
            with open(renamed, "rb") as source, gzip.open(partial, "wb", compresslevel=6) as target:
                shutil.copyfileobj(source, target, 1024 * 1024)
            os.chmod(partial, 0o640)
            os.replace(partial, packed)
            renamed.unlink()
            done.append(packed)
        except OSError as exc:
            log.error("audit log %s not compressed: %s", renamed.name, exc.strerror or exc)
