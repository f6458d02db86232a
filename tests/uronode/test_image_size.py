"""What an instance says of its pixels (Rows, Columns, BitsAllocated, NumberOfFrames, and the unit of its values,
Rescale Type): read with the header on every path, kept in the index, and None where the data set does not say it
in a form readers take."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from tests.factory import ct_slice, uid
from uronode import queries
from uronode.dicomfile import encode_file_meta
from uronode.header import read_instance
from uronode.store import Store
from uronode.structure import ImageSize, walk_data_set


def wire(frames: int = 1, syntax: str = ExplicitVRLittleEndian, size: int = 8, rescale_type: str = "") -> list[bytes]:
    ds = ct_slice(uid("st"), uid("se", frames, syntax), 0, size=size)
    if rescale_type:
        ds.RescaleType = rescale_type
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.PixelData = ds.PixelData * frames
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, syntax == ImplicitVRLittleEndian
    write_dataset(fp, ds)
    data = fp.getvalue()
    if syntax == DeflatedExplicitVRLittleEndian:
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data = packer.compress(data) + packer.flush()
    return [encode_file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, "T"), data]


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
@pytest.mark.parametrize("frames", [1, 3])
def test_the_header_says_the_pixels_on_the_scanner_s_and_pydicom_s_path(syntax: str, frames: int) -> None:
    parts = wire(frames, syntax)
    for given in (syntax, None):  # the listener's path (the scanner), and a file's (pydicom)
        header, _ = read_instance(parts, given)
        assert (header.rows, header.columns, header.bits_allocated) == (8, 8, 16)
        assert header.number_of_frames == (frames if frames > 1 else None)
        assert header.rescale_type == ""


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_the_header_says_the_unit_of_the_values_on_both_paths(syntax: str) -> None:
    """A multi-energy map says in its Rescale Type that its values are no HU: routed, it is skipped from the index
    (probe 35: read from the files only, such a map became a failed job)."""
    parts = wire(syntax=syntax, rescale_type="10^-2 MGML")
    for given in (syntax, None):
        assert read_instance(parts, given)[0].rescale_type == "10^-2 MGML"


def test_values_not_of_their_form_are_not_kept() -> None:
    """A Rows of 4 bytes or a NumberOfFrames that is no whole number: nothing kept (the walk decides the rest)."""
    def element(tag: int, vr: bytes, value: bytes) -> bytes:
        return tag.to_bytes(4, "little")[2:] + tag.to_bytes(4, "little")[:2] + vr + len(value).to_bytes(2, "little") + value

    data = element(0x00280008, b"IS", b"2.5 ") + element(0x00280011, b"US", (7).to_bytes(2, "little"))
    assert walk_data_set(data, ExplicitVRLittleEndian)[1] == ImageSize(None, 7, None, None)


def test_the_index_keeps_them(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    parts = wire(2)
    header, _ = read_instance(parts, ExplicitVRLittleEndian)
    store.put(header, parts, calling_ae="T")
    kept = queries.get_instance(store.db, header.sop_instance_uid)
    assert kept is not None and kept.header == header and kept.header.number_of_frames == 2
    mapped = wire(rescale_type="Z_EFF")
    header, _ = read_instance(mapped, ExplicitVRLittleEndian)
    store.put(header, mapped, calling_ae="T")
    kept = queries.get_instance(store.db, header.sop_instance_uid)
    assert kept is not None and kept.header.rescale_type == "Z_EFF"
