"""Durable files: written to a temporary file, fsynced, renamed into place, their directory fsynced.

:class:`DurableFiles` is the store's writer. Creating a file costs the
receive path up to a millisecond on ext4 here (profiled), so a helper thread
makes the next few empty temporary files ahead, while the next instance is
still on the wire. :func:`check_space` is the disk watermark every writer
checks first.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from uronode.errors import OutOfResources

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview
SPARES = 4
"""Empty temporary files kept ready."""


def out_folder(text: str) -> Path:
    """An argparse type: a folder to write into, there already or not; a file of that name is refused while
    the command line is read (making the folder would fail with no more than "File exists", after the work).
    For every command that writes a folder: ``predict`` and the lab's."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return path


PRIVATE_UMASK = 0o027
"""What the node makes is its user's and its group's alone. Probe 27: the instances were 0640, but the index (patient
names and IDs) and the DICOMweb metadata cache (every header) were made 0644 under the usual umask, in folders any
local account could enter. Every command sets it (probe 51: ``uronode reindex`` made the index 0644)."""


def keep_private(root: Path) -> None:
    """Close the data folder to other accounts (files made by an earlier version keep their modes inside it)."""
    try:
        mode = stat.S_IMODE(root.stat().st_mode)  # setgid kept: a backup group may own the folder (review 29)
        if mode & 0o007:
            root.chmod(mode & ~0o007)
            log.info("the data folder %s was open to every local account (mode %o); now %o", root, mode, mode & ~0o007)
    except OSError as exc:  # not its owner: said, not fatal
        log.warning("the data folder %s could not be closed to other accounts: %s", root, exc)


def check_space(folder: Path, max_used_percent: float, incoming_bytes: int = 0) -> None:
    """Raise :class:`OutOfResources` when the disk is over its watermark or cannot take ``incoming_bytes``.

    ``incoming_bytes`` must fit twice, plus a megabyte: what is written
    comes through a temporary copy (a spool) or replaces a file still there.
    """
    st = os.statvfs(folder)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    free = st.f_bavail * st.f_frsize
    if used + free <= 0:
        return
    # as df's Use% says it, which an administrator compares it with: the blocks reserved for root are neither
    # used nor available (probe 25: counted as used, the node said 75.4 % full where df said 39 %)
    used_percent = 100.0 * used / (used + free)
    if used_percent > max_used_percent:
        raise OutOfResources(f"disk {used_percent:.1f} % full, over the {max_used_percent:g} % watermark")
    if incoming_bytes and free < incoming_bytes * 2 + (1 << 20):
        raise OutOfResources(f"only {free} bytes free for an instance of {incoming_bytes} bytes")


FULL_BELOW_BYTES = 1 << 20
"""A disk with less than this free is called full when a write fails (the file system's own blocks, SQLite's
shared memory, a journal: a write needs more than the bytes it writes)."""


def disk_problem(folder: Path, exc: BaseException | None = None) -> str:
    """Why writing under ``folder`` failed, in words: ``the disk is full (0 bytes free)``, ``the file system
    is read-only``, ``permission denied``; else the error's own words (``exc``)."""
    code = exc.errno if isinstance(exc, OSError) else None
    text = str(exc) if exc is not None else ""
    probe = folder
    while not probe.exists() and probe != probe.parent:  # a folder not made yet: its nearest existing parent
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        st = None
    if code == errno.EROFS or (st is not None and st.f_flag & os.ST_RDONLY):
        return "the file system is read-only"
    free = st.f_bavail * st.f_frsize if st is not None else None
    if code in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < FULL_BELOW_BYTES):
        return f"the disk is full ({free} bytes free)" if free is not None else "the disk is full"
    if code in (errno.EACCES, errno.EPERM) or "readonly" in text or not os.access(probe, os.W_OK):
        return f"permission denied (the node runs as uid {os.getuid()})"
    if "locked" in text or "busy" in text:
        return f"another process holds the index locked ({text})"
    if "disk is full" in text:
        return "the disk is full"
    return text or "unknown cause"


def fsync_dir(folder: Path) -> None:
    """Make the entries of a directory (a new or renamed file) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: Path) -> None:
    """Remove a file after a failure; a second failure is logged, the first one is what counts."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("temporary file %s could not be removed: %s", path, exc.strerror or exc)


KNOWN_DIRS_MAX = 4096
"""The most folders a :class:`DurableFiles` remembers as made (each remembered one saves an ``exists`` per write);
past it they are forgotten, so a node that runs for a year does not hold every series folder it ever wrote."""


class DurableFiles:
    """Writes files durably through temporary files in ``tmp_dir`` (same file system). Thread-safe."""

    def __init__(self, tmp_dir: Path, *, fsync: bool = True) -> None:
        self.tmp_dir = tmp_dir
        self.fsync = fsync
        self._known_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()
        self._counter = itertools.count()
        self._spares: queue.Queue[tuple[Path, int]] | None = None
        self._spares_lock = threading.Lock()

    def write(self, final: Path, parts: Sequence[Buffer]) -> None:
        """Write the parts one after the other into ``final`` (replacing it), durably once this returns.

        Raises :class:`OutOfResources` when a write fails; no partial file is left behind.
        """
        tmp: Path | None = None
        try:
            self._ensure_dir(final.parent)
            tmp, fd = self._spare_file()
            try:
                for part in parts:
                    view = memoryview(part)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.replace(tmp, final)
            except FileNotFoundError:  # its folder was removed behind our back (retention, an operator)
                with self._dirs_lock:
                    self._known_dirs.discard(final.parent)
                self._ensure_dir(final.parent)
                os.replace(tmp, final)
            if self.fsync:
                fsync_dir(final.parent)
        except OSError as exc:
            if tmp is not None:
                remove_quietly(tmp)
            raise OutOfResources(f"the instance could not be written: {exc.strerror or exc}") from exc

    def _ensure_dir(self, folder: Path) -> None:
        if folder in self._known_dirs:
            return
        with self._dirs_lock:
            created = []
            probe = folder
            while not probe.exists():
                created.append(probe)
                probe = probe.parent
            folder.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                for new in created:  # make each new directory entry durable
                    fsync_dir(new.parent)
            if len(self._known_dirs) >= KNOWN_DIRS_MAX:
                self._known_dirs.clear()  # folders retention removed stayed here (probe 29): forget, look again
            self._known_dirs.add(folder)

    def _spare_file(self) -> tuple[Path, int]:
        """A new, empty, open temporary file: from the spares made ahead of time, or made now."""
        if self._spares is None:
            with self._spares_lock:
                if self._spares is None:
                    self._spares = queue.Queue(maxsize=SPARES)
                    threading.Thread(target=self._make_spares, name="store-spares", daemon=True).start()
        try:
            return self._spares.get_nowait()
        except queue.Empty:
            return self._new_tmp()

    def _new_tmp(self) -> tuple[Path, int]:
        tmp = self.tmp_dir / f"{os.getpid()}-{threading.get_ident()}-{next(self._counter)}.part"
        return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)

    def _make_spares(self) -> None:
        assert self._spares is not None
        while True:
            try:
                spare = self._new_tmp()
            except OSError:
                time.sleep(1.0)  # the disk is full or read-only: write() reports it; try again later
                continue
            self._spares.put(spare)  # blocks while enough are waiting
