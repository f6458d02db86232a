"""Series the model cannot read: refused at completion (not CT) or a failed job with the reason; the next good one runs.

One node with a worker (the shipped model) takes, over DCMTK storescu, an MR
series, a portal-venous (contrast) CT, a tilted-gantry CT, a CT of mixed slice sizes, a CT with a slice
without its position and an RLE CT with a slice that does not decode, then a
good CT: each bad one is answered with its reason, and the good one is still
processed to the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import MRImageStorage, RLELossless

from lab.synth import generate_phantom, write_series
from tests.conftest import FAST_COMPLETION, WITH_WORKER, query
from tests.peers.processes import Node, storescu, wait_until
from tests.robustness.senders import running_node, still_serves


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from running_node(tmp_path_factory.mktemp("bad-series"), {**FAST_COMPLETION, **WITH_WORKER})


def series(
    folder: Path, seed: int, change: Callable[[int, pydicom.Dataset], None] | None = None, syntax: str | None = None
) -> tuple[str, Path]:
    """A small synthetic abdominal CT (128 x 128, about 20 slices), each slice changed by ``change``."""
    phantom = generate_phantom(seed, rows=128, slice_spacing=2.5, coverage=(0.7, 0.9), n_stones=1,
                               stone_sites=("kidney",))
    paths = write_series(phantom, folder / f"series-{seed}", transfer_syntax_uid=syntax)
    if change is not None:
        for k, path in enumerate(paths):
            ds = pydicom.dcmread(path)
            change(k, ds)
            ds.save_as(path)
    return phantom.series_instance_uid, folder / f"series-{seed}"


def mr(k: int, ds: pydicom.Dataset) -> None:
    ds.Modality = "MR"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage


def portal_venous(k: int, ds: pydicom.Dataset) -> None:
    ds.ContrastBolusAgent = "OMNIPAQUE 350"
    ds.SeriesDescription = "ABD/PEL PORTAL VENOUS 1.0"


def tilted(k: int, ds: pydicom.Dataset) -> None:
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y + 1.5 * k, z]  # each slice further along y: a gantry tilt


def mixed_size(k: int, ds: pydicom.Dataset) -> None:
    if k == 3:
        ds.Rows = 64
        ds.PixelData = ds.PixelData[: 64 * ds.Columns * 2]


def no_position(k: int, ds: pydicom.Dataset) -> None:
    if k == 5:
        del ds.ImagePositionPatient


def undecodable(k: int, ds: pydicom.Dataset) -> None:
    """Slice 4's RLE header puts its first segment a megabyte away: well formed DICOM, but no image."""
    if k == 4:
        data = bytearray(ds.PixelData)
        offset_table = int.from_bytes(data[4:8], "little")
        header = 8 + offset_table + 8  # after the offset table item and the first fragment's item header
        data[header + 4 : header + 8] = (2**20).to_bytes(4, "little")
        ds.PixelData = bytes(data)


def jobs(node: Node, series_uid: str) -> list[dict[str, Any]]:
    """The series' jobs as SQLite gives their columns (int, text or NULL)."""
    return [dict(r) for r in query(node.data_dir, "SELECT * FROM jobs WHERE series_instance_uid = ?", series_uid)]


def test_bad_series_are_answered_with_the_reason_and_the_good_one_runs(node: Node, tmp_path: Path) -> None:
    cases = {
        "not CT": series(tmp_path, 21, mr),
        "contrast": series(tmp_path, 27, portal_venous),
        "tilted": series(tmp_path, 22, tilted),
        "mixed sizes": series(tmp_path, 23, mixed_size),
        "no position": series(tmp_path, 24, no_position),
        "undecodable": series(tmp_path, 26, undecodable, RLELossless),
        "good": series(tmp_path, 25),
    }
    for name, (_, folder) in cases.items():
        sent = storescu(node.dicom_port, folder, extra=["-xr"] if name == "undecodable" else [])  # sent as RLE
        assert sent.returncode == 0, f"{name}: {sent.stderr[-1000:]}"

    def finished(uid: str) -> bool:
        found = jobs(node, uid)
        return bool(found) and found[-1]["state"] in ("delivered", "failed")

    good_uid = cases["good"][0]
    wait_until(lambda: all(finished(uid) for name, (uid, _) in cases.items() if name not in ("not CT", "contrast")),
               180, "the CT series' jobs to finish")

    # not CT: refused at completion, with its reason, and never a job
    mr_uid = cases["not CT"][0]
    (row,) = query(node.data_dir, "SELECT * FROM series WHERE series_instance_uid = ?", mr_uid)
    assert (row["state"], row["disposition"], row["reason"]) == ("complete", "skipped", "modality MR, not CT")
    assert jobs(node, mr_uid) == []
    # a contrast phase routed with the study: skipped at completion, the reason naming what said so
    contrast_uid = cases["contrast"][0]
    (row,) = query(node.data_dir, "SELECT * FROM series WHERE series_instance_uid = ?", contrast_uid)
    assert (row["state"], row["disposition"]) == ("complete", "skipped")
    assert row["reason"].startswith("contrast-enhanced (Series Description 'ABD/PEL PORTAL VENOUS 1.0'): the model "
                                    "reads non-contrast CT only"), row["reason"]
    assert jobs(node, contrast_uid) == []

    expected = {
        "tilted": "mm in-plane along the stack (tilted gantry); such stacks are not resampled",
        "mixed sizes": "the slices have mixed sizes: [(64, 128), (128, 128)]",
        "no position": "has no ImagePositionPatient",
        "undecodable": "the pixel data of instance 5 cannot be decoded",
    }
    base = f"http://127.0.0.1:{node.http_port}"
    for name, reason in expected.items():
        (job,) = jobs(node, cases[name][0])
        assert job["state"] == "failed", (name, job)
        assert reason in str(job["reason"]), (name, job["reason"])
        over_http = httpx.get(f"{base}/api/jobs/{job['id']}", timeout=30).json()
        assert over_http["state"] == "failed" and reason in over_http["reason"]

    (good,) = jobs(node, good_uid)
    assert good["state"] == "delivered" and good["reason"] is None, good
    assert all(good["id"] > jobs(node, cases[n][0])[0]["id"] for n in expected)  # taken after the failures
    results = query(node.data_dir, "SELECT count(*) AS n FROM instances WHERE manufacturer = 'uronode'")
    assert results[0]["n"] >= 1  # its results are in the store
    still_serves(node, tmp_path)
