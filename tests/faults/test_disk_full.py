"""A full disk at node level: C-STORE and STOW-RS answer out of resources, nothing half-written is
indexed, the node keeps serving, and it takes the series whole once space returns.

The node's data directory is a small tmpfs of the test's own. It is filled
first by the series itself (the store's free-space margin refuses instances
before the file system is full), then to the last byte by a filler file (the
index and the association records can no longer be written either), then
grown again with ``mount -o remount``.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomweb.stow_client import multipart_body
from lab.synth import generate_phantom, write_series
from tests.conftest import query
from tests.faults.checks import acknowledged, assert_stored_intact, tmpfs
from tests.peers.processes import DCMTK_ENV, Node, echoscu, require, storescu, wait_until

BOUNDARY = "uronode-test-boundary"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "16m") as mount:
        yield mount


def stow(node: Node, files: list[Path]) -> tuple[int, dict]:
    body = multipart_body(files, BOUNDARY)
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.http_port}/dicom-web/studies",
        data=body,
        method="POST",
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                 "Accept": "application/dicom+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def http_status(node: Node, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}{path}", timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def failure_reasons(answer: dict[str, Any]) -> list[int]:
    """The Failure Reason of each instance of a STOW-RS answer (DICOM JSON)."""
    return [item["00081197"]["Value"][0] for item in answer.get("00081198", {}).get("Value", [])]


def files_on_disk(data: Path) -> int:
    return sum(1 for _ in (data / "instances").rglob("*.dcm"))


def test_full_disk_refuses_with_out_of_resources_and_recovers(
    start_node: Callable[..., Node], small_disk: Path, tmp_path: Path
) -> None:
    data = small_disk  # the node's log goes beside it, off the full disk
    node = start_node(data)
    phantom = generate_phantom(3, rows=512, slice_spacing=2.5, slices=40, coverage=(0.6, 0.8), n_stones=1)
    sources = sorted(write_series(phantom, tmp_path / "ct"))  # 40 x 0.5 MB: more than the 16 MB disk takes
    other = generate_phantom(4, rows=512, slice_spacing=2.5, slices=2, coverage=(0.6, 0.8), n_stones=0)
    stow_files = sorted(write_series(other, tmp_path / "stow"))

    # The series overflows the disk: the rest is refused with A700, each acknowledged one is kept.
    sender = subprocess.run(
        [require("storescu"), "-v", "--no-halt", "-aet", "CTSCANNER", "-aec", "URONODE", "127.0.0.1",
         str(node.dicom_port), *map(str, sources)],
        capture_output=True, text=True, env=DCMTK_ENV, timeout=300,
    )
    output = sender.stdout + sender.stderr
    sent = acknowledged(output)
    refused = output.count("Received Store Response (Refused: OutOfResources)")
    assert 0 < len(sent) < len(sources) and refused == len(sources) - len(sent), [
        line for line in output.splitlines() if "Response" in line][-5:]
    assert_stored_intact(data, [Path(p) for p in sent])
    assert len(query(data, "SELECT 1 FROM instances")) == len(sent) == files_on_disk(data)
    status, answer = stow(node, stow_files)
    assert status == 409 and failure_reasons(answer) == [0xA700, 0xA700], answer

    # To the last byte: the index cannot grow either. Still a clear answer, and the node serves.
    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
    assert subprocess.run(["df", "--output=avail", str(small_disk)], capture_output=True, text=True).stdout.split()[1] == "0"
    again = storescu(node.dicom_port, sources[-1:], calling="CTSCANNER", extra=["-v"])
    assert "OutOfResources" in again.stdout + again.stderr, again.stdout + again.stderr
    assert stow(node, stow_files)[0] == 409
    assert echoscu(node.dicom_port).returncode == 0
    assert http_status(node, "/healthz") == 200
    assert http_status(node, "/readyz") == 503
    assert len(query(data, "SELECT 1 FROM instances")) == len(sent) == files_on_disk(data)

    # Space returns: the sender's retry and the STOW go through; the series completes once, whole.
    filler.unlink()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert http_status(node, "/readyz") == 200
    assert storescu(node.dicom_port, sources, calling="CTSCANNER").returncode == 0
    assert stow(node, stow_files)[0] == 200
    assert_stored_intact(data, sources + stow_files)
    assert files_on_disk(data) == len(sources) + len(stow_files)
    wait_until(lambda: len(query(data, "SELECT 1 FROM jobs")) == 2, 60, "both series to complete")
    rows = query(data, "SELECT series_instance_uid, state FROM jobs")
    assert {r["series_instance_uid"] for r in rows} == {phantom.series_instance_uid, other.series_instance_uid}
    assert all(f.stat().st_size == 0 for f in (data / "tmp").iterdir())  # only empty spares are left
    assert pydicom.dcmread(sources[0]).SeriesInstanceUID == phantom.series_instance_uid
