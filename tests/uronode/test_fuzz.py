"""Property-based fuzzing of the parsers that face the network, bounded in time for CI.

Whatever bytes arrive, they give a result or the parser's own error with a
reason, never another exception (which would abort an association or answer
HTTP 500).
"""

from __future__ import annotations

import tempfile
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomweb.multipart import MalformedMultipart, MultipartSpool
from tests.factory import ct_slice
from uronode.dicomfile import encode_file_meta
from uronode.errors import InvalidInstance, MalformedDataSet
from uronode.header import ScanError, read_header, scan
from uronode.structure import check_data_set

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.5"]


def _dataset_bytes() -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ct_slice("1.2.3", "1.2.3.4", 0, size=8))
    return fp.getvalue()


REAL = _dataset_bytes()
SPOOL_DIR = Path(tempfile.gettempdir())
"""Where the multipart fuzzing spools (anonymous files: nothing is left there)."""


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from(SYNTAXES))
def test_scan_on_random_bytes(data: bytes, syntax: str) -> None:
    try:
        scan(data, syntax)
    except (ScanError, UnicodeDecodeError):
        pass


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from([*SYNTAXES, "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"]))
def test_the_structural_check_on_random_bytes(data: bytes, syntax: str) -> None:
    try:
        check_data_set(data, syntax)
    except MalformedDataSet:
        pass


@FUZZ
@given(st.integers(0, len(REAL)), st.integers(0, len(REAL)), st.binary(min_size=1, max_size=16))
def test_read_header_on_damaged_data_sets(cut: int, at: int, junk: bytes) -> None:
    damaged = REAL[:at] + junk + REAL[at + len(junk):]
    for body in (REAL[:cut], damaged):
        meta = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.840.10008.1.2.1")
        for syntax in (None, "1.2.840.10008.1.2.1"):
            try:
                header = read_header([meta, body], syntax)
            except InvalidInstance:
                continue
            assert header.sop_instance_uid  # when it reads, it has the UIDs it needs


MULTIPART_PIECES = st.lists(st.one_of(
    st.sampled_from([b"--b", b"--b--", b"\r\n", b"\r\n\r\n", b"Content-Type: application/dicom", b":", b" ", b"-"]),
    st.binary(max_size=16),
), max_size=64).map(b"".join)
"""Bodies built from a multipart body's own pieces (delimiters of boundary ``b``, line ends, headers) and junk."""


@FUZZ
@given(st.one_of(st.binary(max_size=1024), MULTIPART_PIECES), st.sampled_from(["b", "0f3c-x", "--"]), st.integers(1, 64))
def test_multipart_spooling_on_random_bodies(body: bytes, boundary: str, piece: int) -> None:
    with MultipartSpool(boundary, SPOOL_DIR) as spool:
        try:
            for start in range(0, len(body), piece):
                spool.write(body[start : start + piece])
            parts = spool.finish()
        except MalformedMultipart as exc:
            assert str(exc)  # a reason for the 400
            return
        for part in parts:
            assert isinstance(part.headers, dict)
            with spool.content(part) as content:
                assert len(content) == part.size


def test_a_real_data_set_still_reads() -> None:
    meta = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.840.10008.1.2.1")
    assert read_header([meta, REAL], "1.2.840.10008.1.2.1").series_instance_uid == "1.2.3.4"
    assert BytesIO(REAL).read(2) == REAL[:2]
    with pytest.raises(InvalidInstance):
        read_header([meta, b"\xff" * 64], "1.2.840.10008.1.2.1")
