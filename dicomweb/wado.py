"""WADO-RS (PS3.18 10.4): retrieve studies, series and instances, their metadata, and frames.

Instances are returned as stored, in their transfer syntax (named in each
part's Content-Type), as ``multipart/related; type="application/dicom"``.
Metadata is DICOM JSON read from the files, with bulk data (pixel data and
other large values) as BulkDataURIs. Frames come uncompressed
(``application/octet-stream``), decoded from compressed files when needed.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response, StreamingResponse

from dicomweb.deps import StoreDep
from dicomweb.dicomjson import dumps
from uronode import queries
from uronode.store import METADATA_CACHE, Store
from uronode.types import StoredInstance

router = APIRouter(prefix="/dicom-web", tags=["WADO-RS"])

BULK_THRESHOLD = 1024


def _instances(store: Store, study: str, series: str | None = None, sop: str | None = None) -> list[StoredInstance]:
    instances = queries.find_instances(store.db, study, series, sop)
    if not instances:
        what = "instance" if sop else "series" if series else "study"
        raise HTTPException(404, detail=f"no such {what}")
    return instances


def _multipart(instances: list[StoredInstance]) -> StreamingResponse:
    boundary = secrets.token_hex(16)

    def parts() -> Iterator[bytes]:
        for item in instances:
            header = (
                f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={item.header.transfer_syntax_uid}"
                f"\r\nContent-Length: {item.size}\r\n\r\n"
            )
            yield header.encode()
            with item.path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return StreamingResponse(parts(), media_type=media)


def _check_accept(request: Request, wanted: str) -> None:
    accept = request.headers.get("accept", "*/*")
    if not any(a.strip().split(";")[0].strip() in (wanted, "*/*", "multipart/*") for a in accept.split(",")):
        raise HTTPException(406, detail=f"this resource is available as {wanted}, not {accept[:100]}")


@router.get("/studies/{study}", summary="Retrieve a study")
def retrieve_study(study: str, request: Request, store: StoreDep) -> StreamingResponse:
    _check_accept(request, "multipart/related")
    return _multipart(_instances(store, study))


@router.get("/studies/{study}/series/{series}", summary="Retrieve a series")
def retrieve_series(study: str, series: str, request: Request, store: StoreDep) -> StreamingResponse:
    _check_accept(request, "multipart/related")
    return _multipart(_instances(store, study, series))


@router.get("/studies/{study}/series/{series}/instances/{sop}", summary="Retrieve an instance")
def retrieve_instance(study: str, series: str, sop: str, request: Request, store: StoreDep) -> StreamingResponse:
    _check_accept(request, "multipart/related")
    return _multipart(_instances(store, study, series, sop))


BASE_TOKEN = "urn:uronode:dicom-web-base"
"""Stands for the server's DICOMweb root in cached metadata; replaced per request."""


def instance_metadata_json(item: StoredInstance) -> dict[str, Any]:
    """DICOM JSON of one instance, bulk data as BulkDataURIs under BASE_TOKEN."""
    ds = pydicom.dcmread(item.path, defer_size=BULK_THRESHOLD)
    url = f"{BASE_TOKEN}/studies/{item.header.study_instance_uid}/series/{item.header.series_instance_uid}" \
          f"/instances/{item.header.sop_instance_uid}"

    def bulk(element: Any) -> str:
        if element.tag == 0x7FE00010:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            return f"{url}/frames/{','.join(str(n) for n in range(1, frames + 1))}"
        return f"{url}/bulk/{element.tag:08X}"

    data = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=bulk)
    data["00020010"] = {"vr": "UI", "Value": [str(ds.file_meta.TransferSyntaxUID)]}
    return data


def series_metadata_text(store: Store, study: str, series: str) -> str:
    """The series' metadata as a JSON array, cached next to its files until the series changes.

    The first request reads every file (about 2 ms each); later ones read the
    cache alone. The cache is keyed by the instances' count, latest arrival
    and greatest file name (one aggregate query, not the index rows), so a
    late or replaced instance makes it stale.
    """
    version = queries.series_version(store.db, study, series)
    if version is None:
        raise HTTPException(404, detail="no such series")
    count, latest, path = version
    key = f"{count}:{latest!r}:{Path(path).name}"
    cache = Path(path).parent / METADATA_CACHE
    try:
        first, _, text = cache.read_text(encoding="utf-8").partition("\n")
        if first == key:
            return text
    except OSError:
        pass
    instances = _instances(store, study, series)
    text = dumps([instance_metadata_json(i) for i in instances]).decode()
    tmp = cache.with_name(f"{METADATA_CACHE}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(key + "\n" + text, encoding="utf-8")
        os.replace(tmp, cache)
    except OSError:
        tmp.unlink(missing_ok=True)  # a cache that cannot be written is only slower
    return text


def _metadata_response(request: Request, texts: list[str]) -> Response:
    _check_accept(request, "application/dicom+json")
    base = str(request.base_url).rstrip("/") + "/dicom-web"
    body = texts[0] if len(texts) == 1 else "[" + ",".join(t[1:-1] for t in texts if t != "[]") + "]"
    return Response(body.replace(BASE_TOKEN, base), media_type="application/dicom+json")


@router.get("/studies/{study}/metadata", summary="Retrieve a study's metadata")
def study_metadata(study: str, request: Request, store: StoreDep) -> Response:
    series = sorted({i.header.series_instance_uid for i in _instances(store, study)})
    return _metadata_response(request, [series_metadata_text(store, study, s) for s in series])


@router.get("/studies/{study}/series/{series}/metadata", summary="Retrieve a series' metadata")
def series_metadata(study: str, series: str, request: Request, store: StoreDep) -> Response:
    return _metadata_response(request, [series_metadata_text(store, study, series)])


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata", summary="Retrieve an instance's metadata")
def instance_metadata(study: str, series: str, sop: str, request: Request, store: StoreDep) -> Response:
    (item,) = _instances(store, study, series, sop)
    text = dumps([instance_metadata_json(item)]).decode()
    return _metadata_response(request, [text])


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",")]
    except ValueError:
        raise HTTPException(400, detail=f"frame list {text[:40]!r} is not a list of numbers") from None
    if not numbers or min(numbers) < 1:
        raise HTTPException(400, detail="frame numbers start at 1")
    return numbers


def _frames(path: Path, numbers: list[int]) -> list[bytes]:
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise HTTPException(404, detail="this instance has no pixel data")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if max(numbers) > count:
        raise HTTPException(404, detail=f"the instance has {count} frame(s)")
    syntax = ds.file_meta.TransferSyntaxUID
    if not syntax.is_compressed:
        frame_bytes = ds.Rows * ds.Columns * ds.SamplesPerPixel * (ds.BitsAllocated // 8)
        data = ds.PixelData
        return [data[(n - 1) * frame_bytes : n * frame_bytes] for n in numbers]
    pixels = ds.pixel_array  # decoded once, all frames
    if count == 1:
        pixels = pixels[None, ...]
    return [pixels[n - 1].tobytes() for n in numbers]


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}", summary="Retrieve frames")
def retrieve_frames(study: str, series: str, sop: str, frames: str, request: Request, store: StoreDep) -> StreamingResponse:
    _check_accept(request, "multipart/related")
    numbers = _frame_numbers(frames)
    (item,) = _instances(store, study, series, sop)
    chunks = _frames(item.path, numbers)
    boundary = secrets.token_hex(16)

    def parts() -> Iterator[bytes]:
        for chunk in chunks:
            yield f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
            yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    media = f'multipart/related; type="application/octet-stream"; boundary={boundary}'
    return StreamingResponse(parts(), media_type=media)


def _window(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        center, width = (float(v) for v in text.split(",")[:2])
    except ValueError:
        raise HTTPException(400, detail=f"window {text[:40]!r} is not center,width[,function]") from None
    if width <= 0:
        raise HTTPException(400, detail="the window width must be positive")
    return center, width


def _first(value: Any) -> float:
    return float(value[0]) if isinstance(value, pydicom.multival.MultiValue) else float(value)


def render_png(path: Path, frame: int, window: tuple[float, float] | None, media: str = "image/png") -> bytes:
    """One frame as PNG (or JPEG): grey images through their rescale and a window, colour images as they are."""
    import cv2
    import numpy as np
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise HTTPException(404, detail="this instance has no pixel data")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= count:
        raise HTTPException(404, detail=f"the instance has {count} frame(s)")
    pixels = ds.pixel_array
    if count > 1:
        pixels = pixels[frame - 1]
    if ds.get("SamplesPerPixel", 1) == 3:
        image = cv2.cvtColor(np.asarray(pixels, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    else:
        values = apply_modality_lut(pixels, ds).astype(np.float32)
        if window is None:
            wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
            if wc is not None and ww is not None:
                window = (_first(wc), _first(ww))
            else:
                window = (float(values.mean()), float(max(values.max() - values.min(), 1.0)))
        center, width = window
        low = center - width / 2
        image = np.clip((values - low) / width * 255.0, 0, 255).astype(np.uint8)
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":
            image = 255 - image
    ok, encoded = cv2.imencode(".jpg" if media == "image/jpeg" else ".png", image)
    if not ok:
        raise HTTPException(500, detail=f"the frame could not be encoded as {media}")
    return encoded.tobytes()


def _rendered_media(request: Request) -> str:
    accept = request.headers.get("accept", "*/*")
    for item in accept.split(","):
        media = item.split(";")[0].strip()
        if media in ("image/png", "image/jpeg"):
            return media
        if media in ("*/*", "image/*"):
            return "image/png"
    raise HTTPException(406, detail=f"rendered images are image/png or image/jpeg, not {accept[:100]}")


@router.get("/studies/{study}/series/{series}/instances/{sop}/rendered", summary="An instance rendered as PNG")
def rendered_instance(
    study: str, series: str, sop: str, request: Request, store: StoreDep, window: str | None = None
) -> Response:
    media = _rendered_media(request)
    (item,) = _instances(store, study, series, sop)
    return Response(render_png(item.path, 1, _window(window), media), media_type=media)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered", summary="A frame as PNG")
def rendered_frame(
    study: str, series: str, sop: str, frame: int, request: Request, store: StoreDep, window: str | None = None
) -> Response:
    media = _rendered_media(request)
    (item,) = _instances(store, study, series, sop)
    return Response(render_png(item.path, frame, _window(window), media), media_type=media)


@router.get("/studies/{study}/series/{series}/instances/{sop}/bulk/{tag}", summary="A bulk data element")
def retrieve_bulk(study: str, series: str, sop: str, tag: str, request: Request, store: StoreDep) -> Response:
    _check_accept(request, "multipart/related")
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", tag):
        raise HTTPException(400, detail=f"{tag[:20]!r} is not a tag (8 hexadecimal digits)")
    (item,) = _instances(store, study, series, sop)
    ds = pydicom.dcmread(item.path)
    number = int(tag, 16)
    if number not in ds:
        raise HTTPException(404, detail=f"the instance has no element {tag.upper()}")
    value = ds[number].value
    if not isinstance(value, bytes):
        raise HTTPException(404, detail=f"element {tag.upper()} is not bulk data")
    boundary = secrets.token_hex(16)
    body = (f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode() + value
            + f"\r\n--{boundary}--\r\n".encode())
    return Response(body, media_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}')
