"""The paper's workflow with what radiologists export: coronal slices, one file each, uploaded to /api/predict.

A viewer exports a coronal reformat as a DERIVED\\SECONDARY CT image. Routed unasked such
images are skipped (the study's axial originals are the series to read); uploaded, they are
what the user asks about, and each becomes a job whose results are made, in its own plane.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from lab.realimages import ASSUMED_PIXEL_MM, ASSUMED_WINDOW, read_image_set, split_groups
from lab.synth import shared_data_dir
from tests.conftest import WITH_WORKER
from tests.factory import image_slice
from tests.peers.processes import Node


def _job(base: str, job_id: int, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx.get(f"{base}/api/jobs/{job_id}", timeout=30).json()
        if job["state"] not in ("queued", "running"):  # results made (delivering, delivered) or failed
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end within {timeout_s} s")


def test_uploaded_coronal_slices_are_each_predicted_in_their_plane(
        start_node: Callable[..., Node], tmp_path: Path) -> None:
    # real coronal images the model was trained on (never the held-out side), with their stones
    images = [im for im in split_groups(read_image_set(shared_data_dir() / "real-stones"))["train"][:6] if im.boxes]
    files = []
    for n, im in enumerate(images):
        path = tmp_path / f"coronal-{n}.dcm"
        image_slice(path, im.grey, ASSUMED_PIXEL_MM, ASSUMED_WINDOW)
        files.append(("files", (path.name, path.read_bytes(), "application/dicom")))
    node = start_node(**WITH_WORKER)
    base = f"http://127.0.0.1:{node.http_port}"
    answer = httpx.post(f"{base}/api/predict", files=files, timeout=120)
    assert answer.status_code == 200, answer.text
    series = answer.json()["series"]
    assert len(series) == len(images) and all(s["skipped"] is None and s["job_id"] for s in series)
    jobs = [_job(base, s["job_id"]) for s in series]
    assert all(j["state"] in ("delivering", "delivered") for j in jobs), [(j["state"], j.get("reason")) for j in jobs]
    stones = [stone for j in jobs for stone in (j["findings"] or {}).get("stones", [])]
    assert stones  # these images hold stones; the lone-slice tests check which
    assert all(stone["max_diameter_mm"] > 0 for stone in stones)
