"""Child processes of the node."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path


def die_with_parent(parent_pid: int | None = None, interval_s: float = 0.2) -> None:
    """End this process (SIGKILL) once its parent has died: no orphans holding ports or jobs.

    A daemon thread watches the parent's pid (a dead parent's children are given to another process) every
    ``interval_s``. Not Linux's ``PR_SET_PDEATHSIG``: that signal comes when the *thread* that started the
    child ends, and the node restarts a dead receiver or worker from its supervisor loop's thread, which ends
    when the node stops, so a restarted process was killed outright before its clean stop (review 30).

    A spawned child gets here after importing its modules (TensorFlow's take seconds), and a parent killed
    meanwhile would leave it running for good (seen: a worker outlived its node by an hour): given the
    parent's pid, a child whose parent is already gone exits at once.
    """
    parent = os.getppid() if parent_pid is None else parent_pid
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


DROPPED_JOB_EXIT = 86
"""The exit code of a worker process that ended itself because the job it was computing stopped being its own
(``uronode cancel``): its computation would be thrown away, so it is stopped, not finished. The node's supervisor
starts a new worker at once and does not count it as a death (``uronode.app.node.WorkerProcess``)."""


WHY_SUFFIX = ".why"
"""A worker process that cannot start leaves why in ``<data_dir>/tmp/<pid>.why``; the node reads it when it finds
the process dead (:func:`read_why`)."""


def say_why(data_dir: Path, reason: str) -> None:
    """Leave why this process cannot work for the node (best effort: an unwritable folder is said by the log)."""
    try:
        (data_dir / "tmp" / f"{os.getpid()}{WHY_SUFFIX}").write_text(reason[:2000])
    except OSError:
        pass


def read_why(data_dir: Path, pid: int | None) -> str | None:
    """What a dead worker process left as why it could not work (and the file removed), or None."""
    if pid is None:
        return None
    path = data_dir / "tmp" / f"{pid}{WHY_SUFFIX}"
    try:
        reason = path.read_text()
    except OSError:
        return None
    path.unlink(missing_ok=True)
    return reason or None
