"""Damaged data sets that fuzzing (tests/uronode/test_fuzz.py) once found to escape ``read_header``, kept as plain tests.

Each must now be refused with :class:`MalformedDataSet` and its reason, through
both paths (pydicom's alone, and the listener's with the transfer syntax given).
"""

from __future__ import annotations

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from tests.factory import ct_slice
from uronode.dicomfile import encode_file_meta
from uronode.errors import InvalidInstance, MalformedDataSet
from uronode.header import read_header

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def fuzz_data_set() -> bytes:
    """The data set test_fuzz.py damages (its ``REAL``)."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ct_slice("1.2.3", "1.2.3.4", 0, size=8))
    return fp.getvalue()


def damage(data: bytes, at: int, junk: bytes) -> bytes:
    return data[:at] + junk + data[at + len(junk) :]


@pytest.mark.parametrize("syntax", [None, EXPLICIT_LE], ids=["pydicom", "listener"])
def test_a_series_uid_encoded_as_a_one_byte_ul(syntax: str | None) -> None:
    """Falsifying example cut=0, at=327, junk=b'L\\x01': pydicom raised its BytesLengthException from read_header."""
    real = fuzz_data_set()
    assert real[322:330] == b"\x20\x00\x0e\x00UI\x08\x00"  # at 327: the VR's second letter, then the length
    damaged = damage(real, 327, b"L\x01")
    meta = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", EXPLICIT_LE)
    with pytest.raises(MalformedDataSet, match=r"^SeriesInstanceUID has VR UL, not UI$"):
        read_header([meta, damaged], syntax)
    with pytest.raises(InvalidInstance, match=r"^the data set is empty$"):  # the example's cut=0
        read_header([meta, real[:0]], syntax)


@pytest.mark.parametrize("syntax", [None, EXPLICIT_LE], ids=["pydicom", "listener"])
def test_a_series_uid_in_ul_of_a_readable_length_is_not_read_as_a_uid(syntax: str | None) -> None:
    """UL of a whole number of values: pydicom reads numbers, the scanner read the bytes as a UID and stored it."""
    real = fuzz_data_set()
    damaged = damage(real, 327, b"L")  # "1.2.3.4\0" is 8 bytes: two UL values
    meta = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", EXPLICIT_LE)
    with pytest.raises(MalformedDataSet, match=r"^SeriesInstanceUID has VR UL, not UI$"):
        read_header([meta, damaged], syntax)


def test_a_malformed_data_set_is_an_invalid_instance() -> None:
    """What refuses invalid instances (C-STORE: cannot understand; STOW-RS) refuses malformed ones too."""
    assert issubclass(MalformedDataSet, InvalidInstance)
