"""What a multipart body may cost besides its content: its parts' headers are bounded, and the disk is checked
as the spool grows, a chunked body's too."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset

from dicomweb import multipart
from dicomweb.multipart import (
    MAX_HEADER_BYTES,
    MalformedMultipart,
    MultipartSpool,
    headers_too_large,
    open_spool,
)
from tests.factory import ct_slice, uid
from tests.peers.processes import Node
from uronode.store import Store

BOUNDARY = "limits"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
PADDED_HEADERS = 31
"""Headers of 1,000 bytes besides Content-Type in each part: within the per-part count python-multipart is given."""


def header_only_part(disposition: str | None = None) -> bytes:
    lines = [f"--{BOUNDARY}", "Content-Type: application/dicom"]
    if disposition is not None:
        lines.append(f"Content-Disposition: {disposition}")
    lines += [f"X-Padding-{i:02d}: " + "v" * 1000 for i in range(PADDED_HEADERS - (disposition is not None))]
    return ("\r\n".join(lines) + "\r\n\r\n\r\n").encode()


def header_heavy_body(disposition: str | None = None) -> bytes:
    """Parts without content whose headers together exceed :data:`MAX_HEADER_BYTES` (the body: about 9 MB)."""
    count = MAX_HEADER_BYTES // ((PADDED_HEADERS - 1) * 1000) + 1
    return header_only_part(disposition) * count + f"--{BOUNDARY}--\r\n".encode()


def feed(spool: MultipartSpool, body: bytes, piece: int = 1 << 20) -> None:
    for start in range(0, len(body), piece):
        spool.write(body[start : start + piece])


def test_parts_whose_headers_exceed_the_budget_are_refused(tmp_path: Path) -> None:
    with MultipartSpool(BOUNDARY, tmp_path) as spool, pytest.raises(MalformedMultipart) as caught:
        feed(spool, header_heavy_body())
        spool.finish()
    assert str(caught.value) == headers_too_large() == f"the parts' headers exceed {MAX_HEADER_BYTES} bytes"


def test_the_budget_counts_every_part_of_the_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(multipart, "MAX_HEADER_BYTES", 1000)
    part = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\nx\r\n".encode()  # 29 bytes: name and value
    with MultipartSpool(BOUNDARY, tmp_path) as spool:
        feed(spool, part * 34 + f"--{BOUNDARY}--\r\n".encode())
        assert len(spool.finish()) == 34  # 986 bytes
    with MultipartSpool(BOUNDARY, tmp_path) as spool, pytest.raises(MalformedMultipart, match="exceed 1000 bytes"):
        feed(spool, part * 35 + f"--{BOUNDARY}--\r\n".encode(), piece=5)


def test_only_the_headers_the_node_reads_are_kept(tmp_path: Path) -> None:
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\nContent-ID: <1>\r\nX-Anything: {'v' * 3000}\r\n"
        f'Content-Location: a/b\r\nContent-Disposition: form-data; name="files"; filename="a.dcm"\r\n\r\nDATA\r\n'
        f"--{BOUNDARY}--\r\n"
    ).encode()
    with MultipartSpool(BOUNDARY, tmp_path) as spool:
        spool.write(body)
        (part,) = spool.finish()
    assert part.headers == {
        "content-type": "application/dicom",
        "content-location": "a/b",
        "content-disposition": 'form-data; name="files"; filename="a.dcm"',
    }


def body_of(size: int, parts: int) -> bytes:
    one = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + bytes(size) + b"\r\n"
    return one * parts + f"--{BOUNDARY}--\r\n".encode()


def test_a_chunked_body_is_checked_against_the_watermark_as_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(multipart, "SPACE_CHECK_BYTES", 4096)
    full = Store(tmp_path / "full", fsync=False, max_disk_used_percent=0.001)  # any disk is over it
    with open_spool(full, BOUNDARY, None) as spool:  # no Content-Length: nothing is checked up front
        assert spool.lost is None
        feed(spool, body_of(3000, 4), piece=1000)
        parts = spool.finish()
        assert [p.size for p in parts] == [3000] * 4  # every part is still named
        assert spool.lost is not None and "watermark" in spool.lost
        with pytest.raises(RuntimeError, match="watermark"), spool.content(parts[0]):
            pass
    roomy = Store(tmp_path / "roomy", fsync=False)
    with open_spool(roomy, BOUNDARY, None) as spool:
        feed(spool, body_of(3000, 4), piece=1000)
        parts = spool.finish()
        assert spool.lost is None
        with spool.content(parts[3]) as content:
            assert len(content) == 3000


def dicom_body(instance: Dataset) -> bytes:
    buffer = io.BytesIO()
    instance.save_as(buffer, enforce_file_format=True)
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return head + buffer.getvalue() + f"\r\n--{BOUNDARY}--\r\n".encode()


def test_stow_and_upload_over_the_header_budget_get_400_with_the_reason(start_node: Callable[..., Node]) -> None:
    node = start_node()
    base = f"http://127.0.0.1:{node.http_port}"
    stow = httpx.post(
        f"{base}/dicom-web/studies", content=header_heavy_body(), headers={"Content-Type": STOW_TYPE}, timeout=120
    )
    assert stow.status_code == 400, stow.text
    assert stow.json()["detail"] == headers_too_large()
    upload = httpx.post(
        f"{base}/api/predict",
        content=header_heavy_body('form-data; name="files"; filename="a.dcm"'),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        timeout=120,
    )
    assert upload.status_code == 400, upload.text
    assert upload.json()["detail"] == headers_too_large()
    # the node goes on storing what is sent as clients send it
    instance = ct_slice(uid("limits", "study"), uid("limits", "series"), 0, size=16)
    stored = httpx.post(
        f"{base}/dicom-web/studies", content=dicom_body(instance), headers={"Content-Type": STOW_TYPE}, timeout=60
    )
    assert stored.status_code == 200, stored.text
