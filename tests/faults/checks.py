"""What the fault tests check after each fault."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom

from tests.conftest import query


def acknowledged(storescu_log: str) -> set[str]:
    """The files storescu sent and the node answered with success (storescu -v)."""
    done: set[str] = set()
    current = None
    for line in storescu_log.splitlines():
        if match := re.search(r"Sending file: (.+)$", line):
            current = match.group(1).strip()
        elif "Received Store Response (Success)" in line and current is not None:
            done.add(current)
    return done


def assert_stored_intact(data: Path, sources: list[Path]) -> None:
    """Each source file is indexed once, and the stored file holds the same dataset."""
    for source in sources:
        original = pydicom.dcmread(source)
        rows = query(data, "SELECT path FROM instances WHERE sop_instance_uid = ?", original.SOPInstanceUID)
        assert len(rows) == 1, f"{source.name} acknowledged but not indexed"
        stored = pydicom.dcmread(rows[0]["path"])
        assert stored.PixelData == original.PixelData and stored.SeriesInstanceUID == original.SeriesInstanceUID


@contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount``'s ``-o size=``) mounted at ``mount`` for the block: a disk that fills."""
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
