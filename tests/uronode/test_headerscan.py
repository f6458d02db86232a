"""The fast header scanner must agree with pydicom on every file at hand, or decline."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from tests.factory import ct_slice, uid
from uronode.dicomfile import encode_file_meta
from uronode.header import ScanError, read_header, scan

FILES = sorted({Path(p) for p in get_testdata_files("*.dcm")})


def wire_parts(path: Path) -> tuple[list[bytes], str] | None:
    """The file as the listener would hold it: our meta and the data set bytes as they were in the file."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        raw = path.read_bytes()
        start = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
        meta = encode_file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax)
    except Exception:  # noqa: BLE001 - test files include broken ones on purpose; they are not for this test
        return None
    return [meta, raw[start:]], syntax


def test_there_are_many_files_to_compare() -> None:
    assert len([f for f in FILES if wire_parts(f)]) > 100


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_the_scanner_agrees_with_pydicom_or_declines(path: Path) -> None:
    found = wire_parts(path)
    if found is None:
        return
    parts, syntax = found
    try:
        scanned = scan(parts[1], syntax)
    except (ScanError, UnicodeDecodeError):
        return  # declining is allowed; read_header then uses pydicom
    reference = pydicom.dcmread(path, stop_before_pixels=True)
    for name, value in scanned.items():
        expected = reference.get(name)
        if isinstance(expected, pydicom.multival.MultiValue):
            assert value.split("\\") == [str(v).strip() for v in expected], name
        elif name == "ImagePositionPatient":
            continue  # a single malformed value; compared through read_header below
        else:
            assert value == ("" if expected is None else str(expected).strip()), name


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_read_header_is_the_same_through_both_paths(path: Path) -> None:
    found = wire_parts(path)
    if found is None:
        return
    parts, syntax = found
    try:
        slow = read_header(parts)
    except Exception as exc:  # noqa: BLE001
        with pytest.raises(type(exc)):
            read_header(parts, syntax)
        return
    assert read_header(parts, syntax) == slow


def test_sequences_of_undefined_length_are_skipped() -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = ct_slice(uid("st"), uid("se"), 0, size=8)
    inner = Dataset()
    inner.ReferencedSOPClassUID = "1.2.3"
    inner.ReferencedSOPInstanceUID = "1.2.3.4"
    deeper = Dataset()
    deeper.CodeValue = "123"
    inner.ConceptNameCodeSequence = Sequence([deeper])
    ds.ReferencedImageSequence = Sequence([inner, inner])
    for explicit in (True, False):
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, not explicit
        # pydicom writes sequences with undefined length unless told otherwise
        write_dataset(fp, ds)
        syntax = "1.2.840.10008.1.2.1" if explicit else "1.2.840.10008.1.2"
        scanned = scan(fp.getvalue(), syntax)
        assert scanned["SeriesInstanceUID"] == ds.SeriesInstanceUID
        assert scanned["ImagePositionPatient"].split("\\") == [str(v) for v in ds.ImagePositionPatient]


def test_garbage_is_declined_not_misread() -> None:
    with pytest.raises(ScanError):
        scan(b"\x08\x00\x16\x00UI\xff\xff" + b"x" * 10, "1.2.840.10008.1.2.1")
    with pytest.raises(ScanError):
        scan(b"\x08\x00\x16\x00UI\x04\x00", "1.2.840.10008.1.2.1.99")
