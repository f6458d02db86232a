"""A CT slice claiming more pixels than any CT makes fails its job with the reason, before anything is decoded.

The ingest refuses such claims (tests/uronode/test_bombs.py); this is the
worker's own guard, for files that reached it another way (a folder read by
the CLI, a store written before the ingest checked). A decoder allocates
Rows x Columns before it finds the compressed data short: a few hundred
bytes claiming 30000 x 30000 made ``load_volume`` allocate 1.8 GB.
"""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from inference.errors import VolumeError
from inference.volume import MAX_CT_MATRIX, load_volume
from tests.factory import ct_slice, uid


def rle_slice(folder: Path, rows: int, columns: int, index: int = 0) -> Path:
    """A CT slice in RLE Lossless whose one tiny fragment claims ``rows`` x ``columns`` 16-bit pixels."""
    ds = ct_slice(uid("volume-bombs", "study"), uid("volume-bombs", "series"), index, size=32)
    ds.Rows, ds.Columns = rows, columns
    segment = bytes([1, 0, 0])  # a literal run of two bytes
    header = struct.pack("<16I", 2, 64, 67, *([0] * 13))
    ds.PixelData = encapsulate([header + segment + segment + b"\0"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = RLELossless
    path = folder / f"{rows}x{columns}-{index}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(("rows", "columns"), [(30000, 30000), (512, MAX_CT_MATRIX + 1)])
def test_a_slice_claiming_more_than_any_ct_is_refused_before_decoding(
    tmp_path: Path, rows: int, columns: int
) -> None:
    path = rle_slice(tmp_path, rows, columns)
    assert path.stat().st_size < 2000
    tracemalloc.start()
    try:
        with pytest.raises(VolumeError, match=f"claims {rows} x {columns} pixels, more than any CT makes"):
            load_volume([path])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024**2  # nothing the size of the claim (1.8 GB for 30000 x 30000) was allocated


def test_one_such_slice_fails_the_whole_series(tmp_path: Path) -> None:
    good = rle_slice(tmp_path, 32, 32, 0)
    bad = rle_slice(tmp_path, 30000, 30000, 1)
    with pytest.raises(VolumeError, match="instance 2 .* claims 30000 x 30000 pixels"):
        load_volume([good, bad])
