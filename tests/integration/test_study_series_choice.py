"""A routed CT KUB study holds more than the series the model reads (probe 22): what it skips, and why.

A PACS routing a whole study sends, beside the axial soft-tissue series, a bone-kernel reconstruction of the same
scan, console reformats marked DERIVED\\PRIMARY and screens stored as CT. Read, the bone kernel gave a second,
contradicting report (a 17 mm stone split in two) and the others failed jobs on every study; now each is recorded
as skipped with its reason, through DCMTK's storescu into a real node, and the axial series is the one job.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.conftest import query
from tests.factory import uid, write_series
from tests.peers.processes import Node, storescu, wait_until


def test_a_routed_study_queues_its_axial_soft_tissue_series_and_skips_the_rest_with_reasons(
        start_node: Callable[..., Node], tmp_path: Path) -> None:
    node = start_node()
    study = uid("kub-study", tmp_path)
    made = {
        "axial": write_series(tmp_path / "axial", 6, study=study, convolution_kernel="STANDARD",
                              series_description="KUB 5.0mm")[1],
        "bone": write_series(tmp_path / "bone", 6, study=study, convolution_kernel="BONE",
                             series_description="KUB 5.0mm BONE")[1],
        "sagittal": write_series(tmp_path / "sagittal", 6, study=study, image_type=("DERIVED", "PRIMARY", "MPR"),
                                 orientation=(0, 1, 0, 0, 0, -1), series_description="SAG 3mm MPR")[1],
        "screen": write_series(tmp_path / "screen", 1, study=study, position=False,
                               series_description="Patient Protocol")[1],
    }
    files = sorted(p for folder in ("axial", "bone", "sagittal", "screen") for p in (tmp_path / folder).iterdir())
    assert storescu(node.dicom_port, files, calling="PACS").returncode == 0

    def decided() -> dict[str, tuple[str, str]]:
        rows = {r["series_instance_uid"]: (r["disposition"], r["reason"] or "")
                for r in query(node.data_dir, "SELECT series_instance_uid, disposition, reason FROM series")}
        return {name: rows[series] for name, series in made.items() if rows.get(series, (None,))[0] is not None}

    wait_until(lambda: len(decided()) == 4, 60, "the four series to be decided")
    found = decided()
    assert found["axial"] == ("queued", "")
    assert found["bone"][0] == "skipped" and found["bone"][1].startswith(
        "a sharp-kernel reconstruction (ConvolutionKernel 'BONE')")
    assert found["sagittal"][0] == "skipped" and "not an axial stack" in found["sagittal"][1]
    assert found["screen"][0] == "skipped" and "without a position" in found["screen"][1]
    jobs = query(node.data_dir, "SELECT series_instance_uid, state FROM jobs")
    assert [r["series_instance_uid"] for r in jobs] == [made["axial"]]  # no failed job for what it cannot read
