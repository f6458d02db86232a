"""Child processes of the node."""

from __future__ import annotations

import ctypes
import os
import signal


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans holding ports or jobs).

    The request only covers a death after it is made: a spawned child gets here after importing
    its modules (TensorFlow's take seconds), and a parent killed meanwhile would leave it running
    for good (seen: a worker outlived its node by an hour). Given the parent's pid, a child whose
    parent is already gone exits at once.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


DROPPED_JOB_EXIT = 86
"""The exit code of a worker process that ended itself because the job it was computing stopped being its own
(``uronode cancel``): its computation would be thrown away, so it is stopped, not finished. The node's supervisor
starts a new worker at once and does not count it as a death (``uronode.app.node.WorkerProcess``)."""
