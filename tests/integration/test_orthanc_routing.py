"""Orthanc as the PACS in front: its auto-routing (orthanc/autoroute.lua) sends CT series to the node.

A real Orthanc (Debian's package with the DICOMweb plugin) runs with the
repository's Lua script; series go in with DCMTK storescu, as from a scanner.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import query
from tests.factory import write_series
from tests.peers.processes import Node, Proc, free_port, start_orthanc, storescu, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def orthanc_and_node(start_node: Callable[..., Node], tmp_path: Path) -> Iterator[tuple[Proc, int, int, Node]]:
    node = start_node(
        URONODE_SCP__RESTRICT_CALLERS="true",
        URONODE_SCP__ALLOWED_CALLERS='["ORTHANC@127.0.0.1"]',
    )
    lua = tmp_path / "autoroute.lua"
    shutil.copy(ROOT / "orthanc" / "autoroute.lua", lua)
    http, dicom = free_port(), free_port()
    orthanc = start_orthanc(
        tmp_path / "orthanc",
        http_port=http,
        dicom_port=dicom,
        StableAge=1,
        LuaScripts=[str(lua)],
        DicomModalities={"URONODE": ["URONODE", "127.0.0.1", node.dicom_port]},
    )
    yield orthanc, http, dicom, node
    orthanc.stop()


def orthanc_get(http: int, path: str) -> object:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}{path}", timeout=10) as response:
        return json.load(response)


def series_stable(http: int, series_uid: str) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{http}/tools/lookup", data=series_uid.encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        hits = json.load(response)
    if not hits:
        return False
    series = orthanc_get(http, f"/series/{hits[0]['ID']}")
    assert isinstance(series, dict)
    return bool(series["IsStable"])


def test_a_stable_ct_series_is_routed_to_the_node_and_nothing_else(
    orthanc_and_node: tuple[Proc, int, int, Node], tmp_path: Path
) -> None:
    orthanc, http, dicom, node = orthanc_and_node
    _, ct, _ = write_series(tmp_path / "ct", 6, size=64)
    _, mr, _ = write_series(tmp_path / "mr", 3, size=64, modality="MR")
    _, ours, _ = write_series(tmp_path / "ours", 2, size=64, manufacturer="uronode",
                              image_type=("DERIVED", "SECONDARY"))
    for folder in ("ct", "mr", "ours"):
        done = storescu(dicom, tmp_path / folder, called="ORTHANC", calling="SCANNER")
        assert done.returncode == 0, done.stderr

    def node_has_ct() -> bool:
        rows = query(node.data_dir, "SELECT state, disposition FROM series WHERE series_instance_uid = ?", ct)
        return bool(rows) and rows[0]["state"] == "complete"

    wait_until(node_has_ct, 60, "Orthanc to route the CT series and the node to complete it")
    rows = query(node.data_dir, "SELECT * FROM instances WHERE series_instance_uid = ?", ct)
    assert len(rows) == 6
    assert {r["calling_ae"] for r in rows} == {"ORTHANC"}
    assert [dict(j)["state"] for j in query(node.data_dir, "SELECT state FROM jobs WHERE series_instance_uid = ?", ct)] == ["queued"]
    # The MR series and the node's own kind of output became stable in Orthanc too, and stayed there.
    wait_until(lambda: series_stable(http, mr) and series_stable(http, ours), 30, "the other series to be stable")
    jobs = orthanc_get(http, "/jobs?expand")
    assert isinstance(jobs, list)
    stores = [j for j in jobs if j["Type"] == "DicomModalityStore"]
    assert len(stores) == 1 and stores[0]["State"] == "Success"  # one routing job: the CT series
    received = {r["series_instance_uid"] for r in query(node.data_dir, "SELECT series_instance_uid FROM instances")}
    assert received == {ct}
