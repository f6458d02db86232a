"""A node started, or an admin command run, on a data folder that cannot be written (a disk full to the last
byte, a read-only file system) says so in one line naming the folder and the cause, exits 2 as for any
other configuration error, and leaves nothing half-made behind (probe10, section 3: a raw SQLite traceback,
and an empty ``index.sqlite3`` that the admin commands then took for a node's data).

The data folder is on a small tmpfs of the test's own, filled with ``dd`` to the last byte or remounted
read-only; ``uronode serve`` and ``uronode jobs`` run as real processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.checks import tmpfs
from tests.peers.processes import free_port

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("URONODE_")}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "8m") as mount:
        yield mount


def fill(disk: Path) -> None:
    subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=64k"], capture_output=True)
    free = subprocess.run(["df", "--output=avail", str(disk)], capture_output=True, text=True).stdout.split()[1]
    assert free == "0", f"the disk still has {free} KiB free"


def uronode(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**CLEAN_ENV, "URONODE_INFERENCE__WORKERS": "0", "URONODE_DICOMWEB__AUTH": "none"}
    return subprocess.run([sys.executable, "-m", "uronode", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def serve(data: Path) -> subprocess.CompletedProcess[str]:
    return uronode("serve", "--host", "127.0.0.1", "--data-dir", str(data), "--dicom-port", str(free_port()),
                   "--http-port", str(free_port()))


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The command failed as a configuration error does: exit 2, one line on stderr, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("uronode: "), done.stderr[-3000:]
    return lines[0]


def make_node_data(data: Path) -> None:
    """An existing node's data folder, its index closed cleanly (no -wal, no -shm left), as after a stop."""
    script = "import sys; from pathlib import Path; from uronode.store import Store; Store(Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", script, str(data)], check=True, timeout=120, env=CLEAN_ENV)
    assert (data / "index.sqlite3").is_file() and not (data / "index.sqlite3-shm").exists()


def test_a_first_start_on_a_full_disk_says_so_and_leaves_nothing(small_disk: Path) -> None:
    fill(small_disk)
    data = small_disk / "fresh"
    line = one_line(serve(data))
    assert str(data) in line and "the disk is full" in line, line
    assert not data.exists(), sorted(p.name for p in data.rglob("*"))  # no empty index.sqlite3, no folders


def test_an_existing_node_on_a_full_disk_and_its_admin_commands_say_so(small_disk: Path) -> None:
    data = small_disk / "existing"
    make_node_data(data)
    index = (data / "index.sqlite3").read_bytes()
    fill(small_disk)
    for done in (serve(data), uronode("jobs", "--data-dir", str(data))):
        line = one_line(done)
        assert str(data) in line and "the disk is full" in line, line
    assert (data / "index.sqlite3").read_bytes() == index  # the index is left as it was


def test_a_read_only_data_folder_is_named_as_such(small_disk: Path) -> None:
    data = small_disk / "existing"
    make_node_data(data)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for done in (serve(data), uronode("jobs", "--data-dir", str(data))):
        line = one_line(done)
        assert str(data) in line and "read-only" in line, line
    fresh = one_line(serve(small_disk / "fresh"))
    assert str(small_disk / "fresh") in fresh and "read-only" in fresh, fresh
