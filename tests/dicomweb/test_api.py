"""The REST API's error cases (the happy path runs in the browser test of the upload page)."""

from __future__ import annotations

from collections.abc import Callable

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
