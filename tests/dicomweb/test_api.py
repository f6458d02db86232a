"""The REST API's error cases (the happy path runs in the browser test of the upload page)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.peers.processes import Node


def test_predict_refuses_what_is_not_dicom(start_node: Callable[..., Node]) -> None:
    node = start_node()
    base = f"http://127.0.0.1:{node.http_port}"
    response = httpx.post(f"{base}/api/predict", files=[("files", ("notes.txt", b"hello", "text/plain"))], timeout=30)
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail["rejected"] == [{"file": "notes.txt", "reason": "not a DICOM file (no DICM prefix)"}]
    empty = httpx.post(f"{base}/api/predict", files=[("files", ("empty.dcm", b"", "application/dicom"))], timeout=30)
    assert empty.status_code == 400
    assert httpx.post(f"{base}/api/predict", timeout=30).status_code == 422  # no files at all
    assert httpx.get(f"{base}/api/jobs/999", timeout=30).status_code == 404
    assert httpx.get(f"{base}/api/nothing-here", timeout=30).status_code == 404  # never the viewer's index.html
    assert httpx.get(f"{base}/upload", timeout=30).status_code == 200
    assert "openapi" in httpx.get(f"{base}/openapi.json", timeout=30).json()


def test_metrics_and_readiness(start_node: Callable[..., Node], tmp_path: Path) -> None:
    import subprocess

    from tests.factory import write_series
    from tests.peers.processes import storescu, wait_until

    node = start_node()
    base = f"http://127.0.0.1:{node.http_port}"
    write_series(tmp_path / "ct", 4, size=32)
    assert storescu(node.dicom_port, tmp_path / "ct").returncode == 0

    def metric(text: str, line_start: str) -> float:
        (line,) = [line for line in text.splitlines() if line.startswith(line_start)]
        return float(line.rsplit(" ", 1)[1])

    def queued() -> bool:
        try:
            return metric(httpx.get(f"{base}/metrics", timeout=10).text, "uronode_queue_depth") == 1
        except httpx.TransportError:  # a busy machine: ask again on the next poll
            return False

    wait_until(queued, 20, "the job")
    text = httpx.get(f"{base}/metrics", timeout=30).text
    assert metric(text, "uronode_instances_stored") == 4
    assert metric(text, 'uronode_jobs{state="queued"}') == 1
    assert metric(text, 'uronode_series{disposition="queued",state="complete"}') == 1
    assert "# TYPE uronode_jobs gauge" in text
    assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
    subprocess.run(["chattr", "+i", str(node.data_dir / "tmp")], check=True)
    try:
        refused = httpx.get(f"{base}/readyz", timeout=30)
    finally:
        subprocess.run(["chattr", "-i", str(node.data_dir / "tmp")], check=True)
    assert refused.status_code == 503 and "not writable" in refused.json()["detail"]
    assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200


def _post(base: str, paths: list[Path]) -> httpx.Response:
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in paths]
    return httpx.post(f"{base}/api/predict", files=files, timeout=60)


def test_predict_labels_series_and_says_again_why_one_is_skipped(start_node: Callable[..., Node], tmp_path: Path) -> None:
    from tests.factory import write_series

    node = start_node()
    base = f"http://127.0.0.1:{node.http_port}"
    study, series, paths = write_series(tmp_path / "mr", 2, size=32, modality="MR")
    first = _post(base, paths)
    assert first.status_code == 200, first.text
    (entry,) = first.json()["series"]
    assert entry["series_instance_uid"] == series and entry["study_instance_uid"] == study
    assert entry["job_id"] is None and entry["skipped"] == "modality MR, not CT"
    assert entry["modality"] == "MR" and entry["instances"] == 2 and entry["reused"] is False
    assert "series_description" in entry and "series_number" in entry
    (again,) = _post(base, paths).json()["series"]  # the same bytes: the series is not re-opened
    assert again["job_id"] is None and again["skipped"] == "modality MR, not CT"
    assert again["instances"] == 2


def test_predict_says_when_it_gives_an_earlier_job(start_node: Callable[..., Node], tmp_path: Path) -> None:
    from tests.factory import write_series

    node = start_node()
    base = f"http://127.0.0.1:{node.http_port}"
    _, series, paths = write_series(tmp_path / "ct", 4, size=32)
    (first,) = _post(base, paths).json()["series"]
    assert first["job_id"] is not None and first["reused"] is False and first["created_at"] is None
    assert first["modality"] == "CT" and first["instances"] == 4
    (again,) = _post(base, paths[:1]).json()["series"]  # one slice of a series analysed already
    assert again["job_id"] == first["job_id"] and again["reused"] is True and again["skipped"] is None
    job = httpx.get(f"{base}/api/jobs/{first['job_id']}", timeout=30).json()
    assert again["created_at"] == job["created_at"] and again["instances"] == 4


def test_predict_limit_in_gigabytes_and_served_to_the_page(start_node: Callable[..., Node]) -> None:
    import http.client

    from dicomweb.api import MAX_UPLOAD_BYTES

    node = start_node()
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)
    conn.putrequest("POST", "/api/predict")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(MAX_UPLOAD_BYTES + 1))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["detail"] == "uploads are limited to 2 GB"
    conn.close()
    page = httpx.get(f"http://127.0.0.1:{node.http_port}/upload", timeout=30)
    assert f'<meta name="max-upload-bytes" content="{MAX_UPLOAD_BYTES}">' in page.text


def test_a_contrast_phase_skipped_when_routed_is_read_when_uploaded(start_node: Callable[..., Node], tmp_path: Path) -> None:
    """Sent by storescu with its study it is skipped with the reason; its unchanged files uploaded to /api/predict
    (someone asks about it) get it a job, whose results will carry the caution."""
    from tests.conftest import query
    from tests.factory import write_series
    from tests.peers.processes import storescu, wait_until

    node = start_node()
    base = f"http://127.0.0.1:{node.http_port}"
    _, series, paths = write_series(tmp_path / "pv", 3, size=32, series_description="ABD PORTAL VENOUS 1.0")
    assert storescu(node.dicom_port, tmp_path / "pv").returncode == 0

    def skipped() -> bool:
        rows = query(node.data_dir, "SELECT disposition FROM series WHERE series_instance_uid = ?", series)
        return bool(rows) and rows[0]["disposition"] == "skipped"

    wait_until(skipped, 60, "the routed contrast series to complete")
    (row,) = query(node.data_dir, "SELECT reason FROM series WHERE series_instance_uid = ?", series)
    assert row["reason"].startswith("contrast-enhanced (Series Description 'ABD PORTAL VENOUS 1.0')")
    (entry,) = _post(base, paths).json()["series"]
    assert entry["job_id"] is not None and entry["skipped"] is None and entry["reused"] is False, entry
    (again,) = _post(base, paths).json()["series"]  # asked once more: the same job
    assert again["job_id"] == entry["job_id"] and again["reused"] is True
