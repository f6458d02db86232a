"""Property-based fuzzing of the parsers that face the network, bounded in time for CI.

Whatever bytes arrive, they give a result or the parser's own error with a
reason, never another exception (which would abort an association or answer
HTTP 500).
"""

from __future__ import annotations

from io import BytesIO

import pytest
from fastapi import HTTPException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomweb.stow import split_multipart
from tests.factory import ct_slice
from uronode.dicomfile import encode_file_meta, read_header
from uronode.errors import InvalidInstance
from uronode.headerscan import MalformedDataSet, ScanError, check_data_set, scan

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.5"]


def _dataset_bytes() -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ct_slice("1.2.3", "1.2.3.4", 0, size=8))
    return fp.getvalue()


REAL = _dataset_bytes()


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


@FUZZ
@given(st.binary(max_size=1024), st.sampled_from(["b", "0f3c-x", "--"]))
def test_multipart_splitting_on_random_bodies(body: bytes, boundary: str) -> None:
    try:
        parts = split_multipart(body, boundary)
    except HTTPException as exc:
        assert exc.status_code == 400
        return
    for headers, content in parts:
        assert isinstance(headers, dict) and isinstance(content, bytes)


def test_a_real_data_set_still_reads() -> None:
    meta = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.840.10008.1.2.1")
    assert read_header([meta, REAL], "1.2.840.10008.1.2.1").series_instance_uid == "1.2.3.4"
    assert BytesIO(REAL).read(2) == REAL[:2]
    with pytest.raises(InvalidInstance):
        read_header([meta, b"\xff" * 64], "1.2.840.10008.1.2.1")
