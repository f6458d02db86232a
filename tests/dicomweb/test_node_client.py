"""The remote worker's WADO-RS reader: the node's multipart body, part by part, and a body that breaks off."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from dicomweb.node_client import _boundary, _write_parts


def body(parts: list[bytes], boundary: str = "b0undary", close: bool = True) -> bytes:
    out = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {len(p)}\r\n\r\n".encode()
                   + p + b"\r\n" for p in parts)
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def test_each_part_becomes_a_file_whatever_bytes_it_holds(tmp_path: Path) -> None:
    parts = [b"DICM" + bytes(range(256)) * 3, b"\r\n--b0undary\r\n inside the data", b""]
    paths = _write_parts(io.BytesIO(body(parts)), b"b0undary", tmp_path)
    assert [p.read_bytes() for p in paths] == parts
    assert _boundary('multipart/related; type="application/dicom"; boundary="b0undary"') == b"b0undary"


@pytest.mark.parametrize("cut", [10, 80, -12])
def test_a_body_that_breaks_off_is_an_error_not_a_short_series(tmp_path: Path, cut: int) -> None:
    whole = body([b"x" * 100, b"y" * 100])
    with pytest.raises(ValueError, match="ended|part"):
        _write_parts(io.BytesIO(whole[:cut]), b"b0undary", tmp_path)
    with pytest.raises(ValueError, match="names no boundary"):
        _boundary("multipart/related")
