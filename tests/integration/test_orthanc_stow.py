"""Orthanc in front, sending over DICOMweb: its DICOMweb client (``/dicom-web/servers/{id}/stow``, what an
administrator's "send to DICOMweb server" and a Lua rule's ``SendToDicomWebServer`` use) stores a series
into the node with STOW-RS. The node must take every instance and make one job of the series.

A real Orthanc (Debian's package with its DICOMweb plugin) and a real node; the series goes into Orthanc
with DCMTK storescu, as from a scanner.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.conftest import query
from tests.factory import write_series
from tests.peers.processes import Node, Proc, free_port, start_orthanc, storescu, wait_until


def _post(http: int, path: str, body: object, orthanc: Proc, node: Node) -> object:
    request = urllib.request.Request(f"http://127.0.0.1:{http}{path}", data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:  # say why (a CI run under load once saw Orthanc's 500 and nothing more)
        raise AssertionError(f"{path}: {exc.code} {exc.read()[:2000]!r}\nOrthanc:\n{orthanc.log_text()[-3000:]}"
                             f"\nnode:\n{node.proc.log_text()[-3000:] if node.proc else ''}") from exc


def test_a_series_orthanc_sends_over_stow_rs_is_stored_whole_and_becomes_one_job(
        start_node: Callable[..., Node], tmp_path: Path) -> None:
    node = start_node()
    http, dicom = free_port(), free_port()
    orthanc = start_orthanc(
        tmp_path / "orthanc", http_port=http, dicom_port=dicom,
        DicomWeb={"Enable": True, "Root": "/dicom-web/",
                  "Servers": {"uronode": {"Url": f"http://127.0.0.1:{node.http_port}/dicom-web/"}}},
    )
    try:
        # 30 slices of 512 x 512: 15 MB, more than one request's worth for clients that cut a series up
        _, series, paths = write_series(tmp_path / "ct", 30, size=512)
        sent = storescu(dicom, tmp_path / "ct", called="ORTHANC", calling="SCANNER")
        assert sent.returncode == 0, sent.stderr
        lookup = urllib.request.Request(f"http://127.0.0.1:{http}/tools/lookup", data=series.encode(), method="POST")
        with urllib.request.urlopen(lookup, timeout=10) as response:
            orthanc_id = json.load(response)[0]["ID"]

        answer = _post(http, "/dicom-web/servers/uronode/stow", {"Resources": [orthanc_id], "Synchronous": True},
                       orthanc, node)
        assert isinstance(answer, dict) and int(answer["InstancesCount"]) == 30, answer

        def complete() -> bool:
            rows = query(node.data_dir, "SELECT state FROM series WHERE series_instance_uid = ?", series)
            return bool(rows) and rows[0]["state"] == "complete"

        wait_until(complete, 30, "the node to complete the series Orthanc sent over STOW-RS")
        stored = query(node.data_dir, "SELECT sop_instance_uid FROM instances WHERE series_instance_uid = ?", series)
        assert len(stored) == len(paths) == 30
        jobs = query(node.data_dir, "SELECT series_generation FROM jobs WHERE series_instance_uid = ?", series)
        assert [j["series_generation"] for j in jobs] == [1]  # one job: the series was not cut into several
    finally:
        orthanc.stop()
