"""Run a program inside a network namespace of its own, with only loopback up.

Orthanc and DCMTK's storescp cannot be told to bind to loopback only; inside
a fresh namespace there is nothing but loopback, so nothing they open is
reachable from outside, and no port clashes with the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

MARK = "URONODE_IN_NETNS"


def in_private_netns() -> bool:
    return os.environ.get(MARK) == "1"


def reexec_in_netns() -> None:
    """Re-run the current command in a new network namespace (needs root and ``unshare``)."""
    if in_private_netns():
        return
    unshare = shutil.which("unshare")
    ip = shutil.which("ip")
    if unshare is None or ip is None:
        raise RuntimeError("unshare and ip (util-linux, iproute2) are needed to isolate the peers")
    env = {**os.environ, MARK: "1"}
    # sys.orig_argv: the command as it was given (``python -m bench.ingest ...`` runs as a module again,
    # where sys.argv would name the module's file and run it as a script, outside its package)
    cmd = [unshare, "--net", "--", "sh", "-c", f'{ip} link set lo up && exec "$@"', "sh", sys.executable,
           *sys.orig_argv[1:]]
    sys.exit(subprocess.call(cmd, env=env))
