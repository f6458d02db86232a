"""WADO-RS when a file the index names is no longer on disk (lost, or removed by retention between the query and
the read): the instances still there are served in a whole multipart body, and an instance with none is a 404 that
says so; before, the body was cut off where the file was missing, breaking every part after it."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import httpx
import pydicom

from tests.conftest import FAST_COMPLETION
from tests.dicomweb.test_wado_conformance import parts
from tests.factory import write_series
from tests.peers.processes import Node, free_port, storescu


def test_a_series_with_a_lost_file_is_served_whole_without_it_and_the_lost_instance_is_a_404(tmp_path: Path) -> None:
    node = Node(tmp_path / "node", free_port(), free_port(), extra_env=dict(FAST_COMPLETION)).start()
    try:
        study, series, files = write_series(tmp_path / "ct", 4, size=32)
        assert storescu(node.dicom_port, tmp_path / "ct").returncode == 0
        with sqlite3.connect(node.data_dir / "index.sqlite3") as conn:
            rows = conn.execute("SELECT sop_instance_uid, path FROM instances WHERE series_instance_uid = ?",
                                (series,)).fetchall()
        assert len(rows) == 4
        lost_sop, lost_path = sorted(rows)[1]
        Path(lost_path).unlink()

        base = f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{study}/series/{series}"
        answer = httpx.get(base, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                           timeout=60)
        assert answer.status_code == 200
        served = parts(answer)  # asserts the closing boundary: the body is whole
        sops = {str(pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID) for _, body in served}
        assert sops == {sop for sop, _ in rows} - {lost_sop}

        alone = httpx.get(f"{base}/instances/{lost_sop}", timeout=60,
                          headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        assert alone.status_code == 404 and "no longer in the node's store" in alone.text
        assert "have no file in the store" in node.proc.log_text() if node.proc else False
    finally:
        node.stop()
