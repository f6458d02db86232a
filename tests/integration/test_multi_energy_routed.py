"""A dual-energy stone protocol routed whole, then its images uploaded (uronode/energy.py).

A dual-energy or spectral scanner sends, beside its conventional-looking (mixed) images, a virtual monoenergetic
image, a virtual non-contrast one and maps whose values are no Hounsfield units (an iodine map in mg/ml, an
effective atomic number). Read as HU, a map reports no stone where none could be seen; a calcium-suppressed image
has had the stones taken out. Through DCMTK's storescu into a real node: the mixed and the monoenergetic series are
queued, the rest skipped with what they are; uploaded, the material-removed series is read with a caution and the
maps are still refused with their reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom

from tests.conftest import WITH_WORKER, query
from tests.factory import uid, write_series
from tests.peers.processes import Node, storescu, wait_until

AXIAL = ("DERIVED", "PRIMARY", "AXIAL")
NOT_HU = "its values are not the conventional Hounsfield units by which the model finds stones"


def _series(folder: Path, study: str, image_type: tuple[str, ...], rescale_type: str | None = None,
            only: int | None = None) -> str:
    """Six slices; ``only``: the Image Type and Rescale Type on that slice alone, the others conventional."""
    _, series, paths = write_series(folder, 6, study=study, series_description="KUB DE")
    for k, path in enumerate(paths):
        if only is not None and k != only:
            continue
        ds = pydicom.dcmread(path)
        ds.ImageType = list(image_type)
        if rescale_type is not None:
            ds.RescaleType = rescale_type
        ds.save_as(path)
    return series


def _job(base: str, job_id: int, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx.get(f"{base}/api/jobs/{job_id}", timeout=30).json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end within {timeout_s} s")


def test_a_dual_energy_study_is_read_where_its_values_are_hu_and_says_what_it_skips(
        start_node: Callable[..., Node], tmp_path: Path) -> None:
    node = start_node(**WITH_WORKER)
    study = uid("dect-study", tmp_path)
    made = {
        "mixed": _series(tmp_path / "mixed", study, ("ORIGINAL", "PRIMARY", "AXIAL")),
        "vmi": _series(tmp_path / "vmi", study, (*AXIAL, "VMI"), "HU"),
        "vnc": _series(tmp_path / "vnc", study, (*AXIAL, "MAT_REMOVED"), "HU"),
        "iodine": _series(tmp_path / "iodine", study, (*AXIAL, "MAT_SPECIFIC"), "MGML"),
        "zeff": _series(tmp_path / "zeff", study, (*AXIAL, "EFF_ATOMIC_NUM"), "Z_EFF"),
        # probe 35: a unit alone in the index (a map and modified HU skipped, no failed job), one image of another
        # kind among conventional slices (read, not skipped), a monoenergetic image marked DERIVED\SECONDARY
        "map_unit_only": _series(tmp_path / "map_unit_only", study, AXIAL, "mg/ml"),
        "hu_mod_only": _series(tmp_path / "hu_mod_only", study, AXIAL, "HU_MOD"),
        "one_removed": _series(tmp_path / "one_removed", study, (*AXIAL, "MAT_REMOVED"), "HU", only=2),
        "vmi_secondary": _series(tmp_path / "vmi_secondary", study, ("DERIVED", "SECONDARY", "AXIAL", "VMI")),
    }
    files = sorted(p for name in made for p in (tmp_path / name).iterdir())
    assert storescu(node.dicom_port, files, calling="PACS").returncode == 0

    def decided() -> dict[str, tuple[str, str]]:
        rows = {r["series_instance_uid"]: (r["disposition"], r["reason"] or "")
                for r in query(node.data_dir, "SELECT series_instance_uid, disposition, reason FROM series")}
        return {name: rows[series] for name, series in made.items() if rows.get(series, (None,))[0] is not None}

    wait_until(lambda: len(decided()) == len(made), 60, "every series to be decided")
    found = decided()
    assert found["mixed"] == found["vmi"] == found["one_removed"] == found["vmi_secondary"] == ("queued", "")
    assert found["map_unit_only"] == ("skipped", f"an image of mg/ml (Rescale Type 'mg/ml'): {NOT_HU}")
    assert found["hu_mod_only"][0] == "skipped" and found["hu_mod_only"][1].startswith(
        "a material-modified image (a material's HU highlighted or suppressed) of a multi-energy CT: calcium")
    assert found["vnc"] == ("skipped", "a material-removed image (virtual non-contrast or calcium-suppressed) of a "
                            "multi-energy CT: calcium, and with it stones, may have been taken out of its pixels "
                            "(upload the series to /api/predict to read it with a caution)")
    # the maps' Rescale Type says it first (the index keeps it)
    assert found["iodine"] == ("skipped", "an image of mg/ml (Rescale Type 'MGML'): " + NOT_HU)
    assert found["zeff"] == ("skipped", "an image of effective atomic number (Rescale Type 'Z_EFF'): " + NOT_HU)

    base = f"http://127.0.0.1:{node.http_port}"
    for name in ("vnc", "iodine"):
        upload = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in sorted((tmp_path / name).iterdir())]
        answer = httpx.post(f"{base}/api/predict", files=upload, timeout=120)
        assert answer.status_code == 200, answer.text
        (series,) = answer.json()["series"]
        if name == "iodine":
            assert series["job_id"] is None and series["skipped"] == found["iodine"][1]
            continue
        assert series["skipped"] is None and series["job_id"], series
        job = _job(base, series["job_id"])
        assert job["state"] in ("delivering", "delivered"), (job["state"], job.get("reason"))
        assert job["findings"]["cautions"][0].startswith(
            "A material-removed image (virtual non-contrast or calcium-suppressed) of a multi-energy CT: the "
            "processing can take calcium, and with it small stones, out of the pixels")
    jobs = {r["series_instance_uid"] for r in query(node.data_dir, "SELECT series_instance_uid FROM jobs")}
    assert jobs == {made[name] for name in ("mixed", "vmi", "vnc", "one_removed", "vmi_secondary")}  # never a map
