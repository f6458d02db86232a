"""Multipart bodies streamed to a spool: parts round-trip whatever the pieces, broken bodies are named."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from starlette.requests import Request
from starlette.types import Message

from dicomweb import multipart
from dicomweb.multipart import (
    NO_BLANK_LINE,
    NO_PART,
    NO_PARTS,
    TRUNCATED,
    BodyTooLarge,
    MalformedMultipart,
    MultipartSpool,
    SpooledPart,
    boundary_of,
    open_spool,
    spool_request,
)
from uronode.store import Store

BOUNDARY = "b0undary"
T = TypeVar("T")


def encode(*parts: tuple[str, bytes], boundary: str = BOUNDARY, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    body = b"".join(f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n" for kind, data in parts)
    return preamble + body + f"--{boundary}--\r\n".encode() + epilogue


def spooled(folder: Path, body: bytes, piece: int = 1 << 20, boundary: str = BOUNDARY) -> list[tuple[str, bytes]]:
    """(content type, content) of each part of ``body`` fed in pieces of ``piece`` bytes."""
    with MultipartSpool(boundary, folder) as spool:
        for start in range(0, len(body), piece):
            spool.write(body[start : start + piece])
        parts = spool.finish()
        result = []
        for part in parts:
            with spool.content(part) as content:
                result.append((part.content_type, bytes(content)))
        return result


def refusal(folder: Path, body: bytes, boundary: str = BOUNDARY) -> str:
    with pytest.raises(MalformedMultipart) as caught:
        spooled(folder, body, piece=7, boundary=boundary)
    return str(caught.value)


@pytest.mark.parametrize("piece", [1, 3, 7, 64, 1 << 20])
def test_parts_round_trip_whatever_the_pieces(tmp_path: Path, piece: int) -> None:
    dicom = bytes(128) + b"DICM" + bytes(range(256)) * 40
    tricky = b"\r\n--b0undar\r\n--b0undaryX not a delimiter\r\n-"  # a delimiter's beginnings inside the content
    body = encode(("application/dicom", dicom), ("application/dicom", tricky), ("text/plain", b""),
                  ("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", b"x"),
                  preamble=b"a preamble, skipped\r\n", epilogue=b"\r\nand an epilogue, ignored")
    assert spooled(tmp_path, body, piece) == [
        ("application/dicom", dicom), ("application/dicom", tricky), ("text/plain", b""), ("application/dicom", b"x"),
    ]


def test_a_part_without_content_type_is_dicom_and_the_headers_read_are_kept(tmp_path: Path) -> None:
    body = f"--{BOUNDARY}\r\nContent-ID: <1>\r\nContent-Location:  a/b \r\n\r\nDATA\r\n--{BOUNDARY}--".encode()
    with MultipartSpool(BOUNDARY, tmp_path) as spool:
        spool.write(body)
        (part,) = spool.finish()
    assert part == SpooledPart({"content-location": "a/b"}, 0, 4)  # Content-ID: read by nothing, not kept
    assert part.content_type == "application/dicom"


def test_form_data_parts_name_their_field_and_file(tmp_path: Path) -> None:
    body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="a b.dcm"\r\n\r\nx\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="Röntgen.dcm"\r\n\r\ny\r\n'
            f"--{BOUNDARY}--\r\n").encode()
    with MultipartSpool(BOUNDARY, tmp_path) as spool:
        spool.write(body)
        first, second = spool.finish()
    assert first.disposition() == ("form-data", {"name": "files", "filename": "a b.dcm"})
    assert second.disposition()[1]["filename"] == "Röntgen.dcm"  # browsers send file names in UTF-8


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ('multipart/related; type="application/dicom"; boundary=b0undary', "b0undary"),
        ('multipart/related; boundary="quoted; with = signs"; type="application/dicom"', "quoted; with = signs"),
        ('multipart/related; type="application/dicom"', None),
        ("multipart/form-data; boundary=", None),
        ("", None),
    ],
)
def test_the_boundary_of_a_content_type(content_type: str, boundary: str | None) -> None:
    assert boundary_of(content_type) == boundary


def test_an_empty_or_overlong_boundary_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MalformedMultipart, match="names no boundary"):
        MultipartSpool("", tmp_path)
    with pytest.raises(MalformedMultipart, match="the boundary cannot be used"):
        MultipartSpool("b" * 300, tmp_path)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", NO_PART),
        (b"no delimiter at all\r\n", NO_PART),
        (encode(("application/dicom", b"data"), boundary="other"), NO_PART),
        (f"--{BOUNDARY}X\r\n".encode() + bytes(20), NO_PART),
        (f"--{BOUNDARY}--\r\n".encode(), NO_PARTS),
        (encode(("application/dicom", b"data" * 100))[:-30], TRUNCATED),
        (encode(("application/dicom", b"data"))[:-len(f"--{BOUNDARY}--\r\n")], TRUNCATED),
        (encode(("application/dicom", b"data"))[:-len("--\r\n")] + b"\r\n", NO_BLANK_LINE),
        (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n".encode(), NO_BLANK_LINE),
        (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n".encode() + bytes(40)
         + f"\r\n--{BOUNDARY}--\r\n".encode(), NO_BLANK_LINE),
        (f"--{BOUNDARY}\r\nno colon in this header line\r\n\r\nx\r\n--{BOUNDARY}--".encode(), NO_BLANK_LINE),
    ],
    ids=["empty", "no-delimiter", "other-boundary", "boundary-prefix", "no-parts", "truncated-content",
         "no-closing-delimiter", "ends-after-a-delimiter", "ends-in-headers", "binary-after-headers", "header-without-colon"],
)
def test_broken_bodies_are_named(tmp_path: Path, body: bytes, reason: str) -> None:
    assert refusal(tmp_path, body) == reason


def test_a_body_of_too_many_parts_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(multipart, "MAX_PARTS", 3)
    assert len(spooled(tmp_path, encode(*[("application/dicom", b"x")] * 3))) == 3
    assert refusal(tmp_path, encode(*[("application/dicom", b"x")] * 4)) == "the body holds more than 3 parts"


def test_a_spool_that_lost_its_content_still_names_every_part(tmp_path: Path) -> None:
    with MultipartSpool(BOUNDARY, tmp_path, lost="the disk is full") as spool:
        spool.write(encode(("application/dicom", b"one"), ("text/plain", b"two!")))
        parts = spool.finish()
        assert [(p.content_type, p.size) for p in parts] == [("application/dicom", 3), ("text/plain", 4)]
        assert spool.lost == "the disk is full"
        with pytest.raises(RuntimeError, match="the disk is full"), spool.content(parts[0]):
            pass


def test_a_spool_on_a_disk_over_its_watermark_keeps_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", fsync=False, max_disk_used_percent=0.0)  # any disk is over 0 %
    with open_spool(store, BOUNDARY, 1000) as spool:
        assert spool.lost is not None and "watermark" in spool.lost
    with open_spool(Store(tmp_path / "roomy", fsync=False), BOUNDARY, 1000) as spool:
        assert spool.lost is None
    assert list((tmp_path / "roomy" / "tmp").iterdir()) == []  # the spool has no name in the folder


def test_the_spool_lives_in_the_given_folder_and_goes_with_close(tmp_path: Path) -> None:
    spool = MultipartSpool(BOUNDARY, tmp_path)
    spool.write(encode(("application/dicom", bytes(1 << 16))))
    (part,) = spool.finish()
    with spool.content(part) as content:
        assert len(content) == 1 << 16
    spool.close()
    assert list(tmp_path.iterdir()) == []


def run(coroutine: Coroutine[object, object, T]) -> T:
    """``asyncio.run`` in a thread of its own: the session's browser (Playwright's sync API) keeps an event loop
    running in the main thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def request_with(chunks: Iterable[bytes]) -> Request:
    pending = list(chunks)

    async def receive() -> Message:
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    return Request({"type": "http", "method": "POST", "headers": []}, receive)


def test_a_request_is_spooled_in_batches(tmp_path: Path) -> None:
    body = encode(("application/dicom", bytes(3 << 20)), ("application/dicom", b"small"))
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    with MultipartSpool(BOUNDARY, tmp_path) as spool:
        parts = run(spool_request(request_with(chunks), spool, limit=len(body)))
        assert [p.size for p in parts] == [3 << 20, 5]


def test_a_request_over_its_limit_stops_at_the_limit(tmp_path: Path) -> None:
    body = encode(("application/dicom", bytes(1 << 20)))
    with MultipartSpool(BOUNDARY, tmp_path) as spool, pytest.raises(BodyTooLarge, match="larger than 1000 bytes"):
        run(spool_request(request_with([body[:600], body[600:]]), spool, limit=1000))
