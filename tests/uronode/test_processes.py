"""The node's child processes die with it, even when it dies before they are ready to be told."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

GRANDCHILD = textwrap.dedent("""
    import os, sys, time
    parent = int(sys.argv[1])
    time.sleep(1.0)  # the imports a spawned worker makes before its entry point runs
    from uronode.processes import die_with_parent
    die_with_parent(parent)
    open(sys.argv[2], "w").write(str(os.getpid()))
    time.sleep(60)
""")

MIDDLE = textwrap.dedent("""
    import os, subprocess, sys
    subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]])
    os._exit(0)  # the node, killed while its child still imports
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_a_child_whose_parent_died_while_it_started_exits(tmp_path: Path) -> None:
    marker = tmp_path / "alive"
    started = subprocess.run([sys.executable, "-c", MIDDLE, GRANDCHILD, str(marker)], timeout=30)
    assert started.returncode == 0
    time.sleep(3.0)
    # past die_with_parent it would have written its pid and slept for a minute: an orphan
    assert not marker.exists()


def _child_dies_with_its_parent(middle_script: str, marker: Path, lived_s: float = 0.2) -> None:
    """Start ``middle_script`` (the node), which starts the child; the child lives ``lived_s`` on, then dies
    with the middle process."""
    middle = subprocess.Popen([sys.executable, "-c", textwrap.dedent(middle_script), GRANDCHILD, str(marker)])
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(lived_s)
        child = int(marker.read_text())
        assert _alive(child)
        middle.kill()
        middle.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child)  # gone with its parent
    finally:
        middle.kill()
        middle.wait(10)


def test_a_child_whose_parent_lives_goes_on_and_dies_with_it(tmp_path: Path) -> None:
    _child_dies_with_its_parent("""
        import os, subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]])
        time.sleep(60)
    """, tmp_path / "alive")


def test_a_child_started_by_a_thread_outlives_that_thread_and_dies_with_its_parent(tmp_path: Path) -> None:
    """Review 30: with PR_SET_PDEATHSIG a child died when the thread that started it ended (the node's supervisor
    loop restarts receivers and workers, and that thread ends when the node stops, before their clean stop)."""
    _child_dies_with_its_parent("""
        import os, subprocess, sys, threading, time
        def start():  # as the node's supervisor loop does: it goes on a while, then ends (the node stops)
            subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]])
            while not os.path.exists(sys.argv[2]):
                time.sleep(0.05)
        starter = threading.Thread(target=start)
        starter.start()
        starter.join()  # the thread that started the child has ended, after the child was set up
        time.sleep(60)
    """, tmp_path / "alive", lived_s=1.5)  # its starter thread long gone, its parent not
