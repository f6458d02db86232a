"""WADO-RS (PS3.18 10.4): retrieve studies, series and instances, their metadata, and frames.

Instances are returned as ``multipart/related; type="application/dicom"``, each
part in the transfer syntax its Content-Type names, negotiated from the Accept
header (PS3.18 8.7.3): as stored for ``transfer-syntax=*`` or the stored syntax
(streamed from the file), otherwise Explicit VR Little Endian (the default when
none is named) or Implicit VR Little Endian, decoded and re-encoded when the
file is in another syntax; anything else is 406. Metadata is DICOM JSON read
from the files, with bulk data (pixel data and other large values) as
BulkDataURIs. Frames come uncompressed (``application/octet-stream``, Explicit
VR Little Endian), decoded from compressed files when needed, in the colour
space the metadata names, one at a time as the response goes out; a frame list
names each frame once, each one the instance holds (else 400).

Nothing is decoded whose header claims more than the node decodes (a frame
over 8192 x 8192 pixels, a decode over 2 GiB: see
:func:`dicomweb.transcoding.check_decoded_size`), nor is a decoder's error a
bare 500: an instance asked for alone, its frames, rendered or thumbnail are a
500 with the reason (the request is sound; the stored instance is what cannot
be served); inside a series or study it goes as stored, as one that cannot be
decoded does.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response, StreamingResponse
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicomweb.accept import parse_accept
from dicomweb.deps import StoreDep
from dicomweb.dicomjson import dumps
from dicomweb.transcoding import (
    NATIVE_SYNTAXES,
    NotDecoded,
    can_decode,
    can_reencode,
    check_decoded_size,
    frames_of,
    reencode,
    served_as_rgb,
)
from uronode import queries
from uronode.store import METADATA_CACHE, Store
from uronode.types import StoredInstance

log = logging.getLogger(__name__)

router = APIRouter(prefix="/dicom-web", tags=["WADO-RS"])

BULK_THRESHOLD = 1024
ANY_SYNTAX = "*"
"""``transfer-syntax=*``: the server chooses; instances go as stored."""
DEFAULT_SYNTAX = str(ExplicitVRLittleEndian)
"""What a part type's range without ``transfer-syntax`` asks for (PS3.18 8.7.3.5)."""
FRAME_TYPE = "application/octet-stream"


def _instances(store: Store, study: str, series: str | None = None, sop: str | None = None) -> list[StoredInstance]:
    """The indexed instances asked for whose files are there: one the index names but the disk lacks (lost, or
    removed by retention since the query) is left out and logged, before any response begins, so that a
    series' multipart body is whole rather than cut off where the file is missing; none left is a 404."""
    instances = queries.find_instances(store.db, study, series, sop)
    what = "instance" if sop else "series" if series else "study"
    if not instances:
        raise HTTPException(404, detail=f"no such {what}")
    present = [item for item in instances if item.path.is_file()]
    if len(present) < len(instances):
        missing = [item.header.sop_instance_uid for item in instances if not item.path.is_file()]
        log.error("%d of the %d indexed instances of %s %s have no file in the store (first: %s): left out",
                  len(missing), len(instances), what, sop or series or study, missing[0])
        if not present:
            raise HTTPException(404, detail=f"the {what}'s files are no longer in the node's store")
    return present


def _acceptable_syntaxes(request: Request, part_type: str) -> list[str]:
    """The transfer syntaxes the Accept header takes for ``multipart/related`` parts of ``part_type``.

    Most preferred first; ``*`` is any. A range that names no ``transfer-syntax`` (or no part type,
    or ``*/*``) asks for the part type's default, Explicit VR Little Endian. Ranges for other part
    types (``image/jls``, ``application/octet-stream`` for instances) are left out.
    """
    syntaxes: list[str] = []
    for item in parse_accept(request.headers.get("accept")):
        if item.media_type == "multipart/related":
            part = item.params.get("type", part_type).strip().lower()
        elif item.media_type in ("multipart/*", "*/*"):
            part = part_type
        else:
            continue
        if part in (part_type, "application/*", "*/*"):
            syntaxes.append(item.params.get("transfer-syntax", DEFAULT_SYNTAX).strip() or DEFAULT_SYNTAX)
    return syntaxes


def _named(syntax: str) -> str:
    name = UID(syntax).name
    return f"{name} ({syntax})" if name != syntax else syntax


def _syntax_for(item: StoredInstance, accepted: list[str]) -> str:
    """The transfer syntax to send ``item`` in: the first acceptable one it is stored in or can be re-encoded as."""
    stored = item.header.transfer_syntax_uid
    for wanted in accepted:
        if wanted in (ANY_SYNTAX, stored):
            return stored
        if wanted in NATIVE_SYNTAXES and can_reencode(stored):
            return wanted
    offered = [stored, *(s for s in NATIVE_SYNTAXES if s != stored and can_reencode(stored))]
    raise HTTPException(406, detail=(
        f"instance {item.header.sop_instance_uid} is stored in {_named(stored)}; it can be given in "
        f"{' or '.join(_named(s) for s in offered)} (or transfer-syntax=*), not in {', '.join(accepted)[:200]}"
    ))


def _reencoded(item: StoredInstance, syntax: str) -> bytes:
    try:
        return reencode(item.path, syntax)
    except NotDecoded as exc:  # refused before decoding: the reason is all there is to log
        log.warning("instance %s (%s) not re-encoded in %s: %s", item.header.sop_instance_uid,
                    item.header.transfer_syntax_uid, syntax, exc)
        raise HTTPException(500, detail=(
            f"instance {item.header.sop_instance_uid}, stored in {_named(item.header.transfer_syntax_uid)}: "
            f"{exc}; ask for transfer-syntax=* to get it as stored")) from exc
    except Exception as exc:  # a decoder's or pydicom's error on a stored file: the boundary is here
        log.exception("instance %s (%s) could not be re-encoded in %s", item.header.sop_instance_uid,
                      item.header.transfer_syntax_uid, syntax)
        raise HTTPException(500, detail=(
            f"instance {item.header.sop_instance_uid} could not be decoded from {_named(item.header.transfer_syntax_uid)}: "
            f"{exc}; ask for transfer-syntax=* to get it as stored")) from exc


def _multipart(plan: list[tuple[StoredInstance, str]], ready: dict[str, bytes] | None = None) -> StreamingResponse:
    """Each instance in its planned syntax: streamed from its file when that is how it is stored,
    else re-encoded when its turn comes (or taken from ``ready``, by SOP Instance UID). An instance that
    cannot be re-encoded once the response has begun goes as stored, its part's Content-Type saying so
    (a single instance is re-encoded before the response, so that a failure is a 500 with its reason)."""
    boundary = secrets.token_hex(16)
    ready = ready or {}

    def header(syntax: str, length: int) -> bytes:
        return (f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={syntax}"
                f"\r\nContent-Length: {length}\r\n\r\n").encode()

    def parts() -> Iterator[bytes]:
        for item, syntax in plan:
            data = None
            if syntax != item.header.transfer_syntax_uid:
                try:
                    data = ready.get(item.header.sop_instance_uid) or _reencoded(item, syntax)
                except HTTPException:
                    # the response has begun (a series or study): no error status can be sent any more, and a
                    # body cut short breaks every part after it; this part goes as stored, its Content-Type
                    # naming its own syntax (logged by _reencoded)
                    data = None
            if data is None:
                try:
                    f = item.path.open("rb")
                except OSError as exc:  # gone since the plan (retention): leave the part out, keep the body whole
                    log.error("instance %s left out of a retrieve: %s", item.header.sop_instance_uid, exc)
                    continue
                with f:
                    yield header(item.header.transfer_syntax_uid, item.size)
                    while chunk := f.read(1 << 20):
                        yield chunk
            else:
                yield header(syntax, len(data))
                yield data
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return StreamingResponse(parts(), media_type=media)


def _plan(request: Request, instances: list[StoredInstance]) -> list[tuple[StoredInstance, str]]:
    """Each instance with the transfer syntax it goes in, all decided before the response starts."""
    accepted = _acceptable_syntaxes(request, "application/dicom")
    if not accepted:
        accept = request.headers.get("accept", "")
        raise HTTPException(406, detail=f'instances are given as multipart/related; type="application/dicom", not {accept[:100]}')
    return [(item, _syntax_for(item, accepted)) for item in instances]


def _check_accept(request: Request, wanted: str) -> None:
    if not any(r.media_type in (wanted, "*/*", "multipart/*") for r in parse_accept(request.headers.get("accept"))):
        accept = request.headers.get("accept", "")
        raise HTTPException(406, detail=f"this resource is available as {wanted}, not {accept[:100]}")


@router.get("/studies/{study}", summary="Retrieve a study")
def retrieve_study(study: str, request: Request, store: StoreDep) -> StreamingResponse:
    return _multipart(_plan(request, _instances(store, study)))


@router.get("/studies/{study}/series/{series}", summary="Retrieve a series")
def retrieve_series(study: str, series: str, request: Request, store: StoreDep) -> StreamingResponse:
    return _multipart(_plan(request, _instances(store, study, series)))


@router.get("/studies/{study}/series/{series}/instances/{sop}", summary="Retrieve an instance")
def retrieve_instance(study: str, series: str, sop: str, request: Request, store: StoreDep) -> StreamingResponse:
    ((item, syntax),) = plan = _plan(request, _instances(store, study, series, sop))
    if syntax == item.header.transfer_syntax_uid:
        return _multipart(plan)
    return _multipart(plan, {item.header.sop_instance_uid: _reencoded(item, syntax)})  # a failure is still a status


BASE_TOKEN = "urn:uronode:dicom-web-base"
"""Stands for the server's DICOMweb root in cached metadata; replaced per request."""
METADATA_FORMAT = "2"
"""Part of the series metadata cache's key: a cache written by a node that made metadata otherwise is stale.
2: the colour space frames are served in (RGB for compressed YBR forms other than YBR_FULL)."""
JSON_TYPES = ("application/dicom+json", "application/json", "application/*", "*/*")


def instance_metadata_json(item: StoredInstance) -> dict[str, Any]:
    """DICOM JSON of one instance, bulk data as BulkDataURIs under BASE_TOKEN.

    It describes the pixel data as the frames resource gives it: a compressed instance whose
    colour space the decoders turn into RGB says RGB, by pixel (:func:`served_as_rgb`).
    """
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
    if served_as_rgb(ds.file_meta.TransferSyntaxUID, str(ds.get("PhotometricInterpretation", ""))):
        data["00280004"] = {"vr": "CS", "Value": ["RGB"]}
        data["00280006"] = {"vr": "US", "Value": [0]}
    return data


def series_metadata_text(store: Store, study: str, series: str) -> str:
    """The series' metadata as a JSON array, cached next to its files until the series changes.

    The first request reads every file (about 2 ms each); later ones read the
    cache alone. The cache is keyed by the instances' count, latest arrival
    and greatest file name (one aggregate query, not the index rows), so a
    late or replaced instance makes it stale, and by METADATA_FORMAT.
    """
    version = queries.series_version(store.db, study, series)
    if version is None:
        raise HTTPException(404, detail="no such series")
    count, latest, path = version
    key = f"{METADATA_FORMAT}:{count}:{latest!r}:{Path(path).name}"
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


def _check_json_accept(request: Request) -> None:
    """Metadata is application/dicom+json; application/json (what generic clients ask for) gets it too."""
    if not any(r.media_type in JSON_TYPES for r in parse_accept(request.headers.get("accept"))):
        accept = request.headers.get("accept", "")
        raise HTTPException(406, detail=f"this resource is available as application/dicom+json, not {accept[:100]}")


def _metadata_response(request: Request, texts: list[str]) -> Response:
    _check_json_accept(request)
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
    """The frame list of a frames resource: numbers from 1, each once, in any order (PS3.18: non-duplicate
    frame numbers). A repeat would make the same frame again for each time it is named."""
    try:
        numbers = [int(n) for n in text.split(",")]
    except ValueError:
        raise HTTPException(400, detail=f"frame list {text[:40]!r} is not a list of numbers") from None
    if not numbers or min(numbers) < 1:
        raise HTTPException(400, detail="frame numbers start at 1")
    seen: set[int] = set()
    for number in numbers:
        if number in seen:
            raise HTTPException(400, detail=f"the frame list names frame {number} more than once; "
                                            "a frame list names each frame once")
        seen.add(number)
    return numbers


def _frames(item: StoredInstance, numbers: list[int]) -> Iterator[bytes]:
    """The frames, made one by one as the response takes them; the first is made here, so that
    what cannot be served at all is a status with its reason."""
    ds = pydicom.dcmread(item.path)
    if "PixelData" not in ds:
        raise HTTPException(404, detail="this instance has no pixel data")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if max(numbers) > count:
        missing = sorted(n for n in numbers if n > count)
        raise HTTPException(400, detail=(f"the instance has {count} frame(s); the frame list names "
                                         f"{', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''}"))
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if not can_decode(syntax):
        raise HTTPException(406, detail=(f"frames of an instance stored in {_named(syntax)} cannot be decoded here; "
                                         "retrieve the instance with transfer-syntax=*"))
    sop = item.header.sop_instance_uid
    try:
        frames = frames_of(ds, numbers)
        first = next(frames)
    except NotDecoded as exc:
        log.warning("frames of instance %s (%s) not decoded: %s", sop, syntax, exc)
        raise HTTPException(500, detail=f"instance {sop}, stored in {_named(syntax)}: {exc}; "
                                        "retrieve the instance with transfer-syntax=* to get it as stored") from exc
    except Exception as exc:  # a decoder's or pydicom's error on a stored file: the boundary is here
        log.exception("frame %d of instance %s (%s) could not be decoded", numbers[0], sop, syntax)
        raise HTTPException(500, detail=f"frame {numbers[0]} of instance {sop} could not be decoded from "
                                        f"{_named(syntax)}: {exc}; retrieve the instance with transfer-syntax=* "
                                        "to get it as stored") from exc

    def rest() -> Iterator[bytes]:
        yield first
        try:
            yield from frames
        except Exception:
            # the response has begun: no status can be sent any more; the body is cut short (no closing
            # boundary, the connection dropped) so that the client sees a failure, not fewer frames
            log.error("instance %s (%s): a frame after the first could not be decoded; the frames' answer is "
                      "cut short", sop, syntax)
            raise

    return rest()


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}", summary="Retrieve frames")
def retrieve_frames(study: str, series: str, sop: str, frames: str, request: Request, store: StoreDep) -> StreamingResponse:
    if not set(_acceptable_syntaxes(request, FRAME_TYPE)) & {ANY_SYNTAX, DEFAULT_SYNTAX}:
        accept = request.headers.get("accept", "")
        raise HTTPException(406, detail=(
            f'frames are given uncompressed, as multipart/related; type="{FRAME_TYPE}"; '
            f"transfer-syntax={DEFAULT_SYNTAX}, not {accept[:100]}"))
    numbers = _frame_numbers(frames)
    (item,) = _instances(store, study, series, sop)
    chunks = _frames(item, numbers)
    boundary = secrets.token_hex(16)
    part_header = f"Content-Type: {FRAME_TYPE}; transfer-syntax={DEFAULT_SYNTAX}"

    def parts() -> Iterator[bytes]:
        for chunk in chunks:
            yield f"--{boundary}\r\n{part_header}\r\n\r\n".encode()
            yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    media = f'multipart/related; type="{FRAME_TYPE}"; boundary={boundary}'
    return StreamingResponse(parts(), media_type=media)


def _window(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    parts = text.split(",")
    try:
        center, width = (float(v) for v in parts[:2])
    except ValueError:
        raise HTTPException(400, detail=f"window {text[:40]!r} is not center,width[,function]") from None
    if len(parts) > 3 or (len(parts) == 3 and parts[2].strip().upper() not in ("LINEAR", "")):
        raise HTTPException(400, detail=f"window {text[:40]!r}: only the LINEAR function is rendered")
    if width <= 0:
        raise HTTPException(400, detail="the window width must be positive")
    return center, width


@dataclass(frozen=True)
class Rendering:
    """How a rendered resource is asked for (PS3.18 8.3.5.1): window, viewport, quality, media type."""

    window: tuple[float, float] | None = None
    viewport: tuple[int, int] | None = None
    """The largest (columns, rows) the image may have; it is scaled down to fit, keeping its aspect."""
    quality: int | None = None
    """JPEG quality 1-100."""
    media: str = "image/png"


def _rendering(request: Request, window: str | None, viewport: str | None, quality: str | None,
               default_viewport: tuple[int, int] | None = None) -> Rendering:
    size = default_viewport
    if viewport:
        try:
            numbers = [int(v) for v in viewport.split(",")]
        except ValueError:
            raise HTTPException(400, detail=f"viewport {viewport[:40]!r} is not vw,vh") from None
        if len(numbers) != 2 or min(numbers) < 1:
            raise HTTPException(400, detail=f"viewport {viewport[:40]!r}: two positive numbers, vw,vh")
        size = (numbers[0], numbers[1])
    level = None
    if quality:
        try:
            level = int(quality)
        except ValueError:
            level = 0
        if not 1 <= level <= 100:
            raise HTTPException(400, detail=f"quality {quality[:20]!r} is not 1-100")
    return Rendering(_window(window), size, level, _rendered_media(request))


def _first(value: Any) -> float:
    return float(value[0]) if isinstance(value, pydicom.multival.MultiValue) else float(value)


def render_png(path: Path, frame: int, window: tuple[float, float] | None, media: str = "image/png",
               viewport: tuple[int, int] | None = None, quality: int | None = None) -> bytes:
    """One frame as PNG (or JPEG): grey images through their rescale and a window, colour images as they are;
    scaled down to fit ``viewport`` (columns, rows) keeping its aspect, JPEG at ``quality``.

    Only that frame is decoded, and not when the header claims more than the node decodes (:class:`NotDecoded`).
    A frame the instance does not hold is a 400 (PS3.18 9.5.2).
    """
    import cv2
    import numpy as np
    from pydicom.pixels import apply_modality_lut, pixel_array

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise HTTPException(404, detail="this instance has no pixel data")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= count:
        raise HTTPException(400, detail=f"the instance has {count} frame(s), not frame {frame}")
    check_decoded_size(ds)
    pixels = pixel_array(ds, index=frame - 1)
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
    if viewport is not None:
        rows, columns = image.shape[:2]
        scale = min(viewport[0] / columns, viewport[1] / rows)
        if scale < 1:
            size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if media == "image/jpeg" and quality is not None else []
    ok, encoded = cv2.imencode(".jpg" if media == "image/jpeg" else ".png", image, params)
    if not ok:
        raise HTTPException(500, detail=f"the frame could not be encoded as {media}")
    return encoded.tobytes()


def _rendered_media(request: Request) -> str:
    for item in parse_accept(request.headers.get("accept")):
        if item.media_type in ("image/png", "image/jpeg"):
            return item.media_type
        if item.media_type in ("*/*", "image/*"):
            return "image/png"
    accept = request.headers.get("accept", "")
    raise HTTPException(406, detail=f"rendered images are image/png or image/jpeg, not {accept[:100]}")


THUMBNAIL = (128, 128)
"""A thumbnail's largest size unless a viewport says otherwise (PS3.18 leaves it to the server)."""


def _render(item: StoredInstance, frame: int, how: Rendering) -> Response:
    sop, syntax = item.header.sop_instance_uid, item.header.transfer_syntax_uid
    try:
        body = render_png(item.path, frame, how.window, how.media, how.viewport, how.quality)
    except HTTPException:
        raise
    except NotDecoded as exc:
        log.warning("instance %s (%s) not rendered: %s", sop, syntax, exc)
        raise HTTPException(500, detail=f"instance {sop}, stored in {_named(syntax)}: {exc}") from exc
    except Exception as exc:  # a decoder's or pydicom's error on a stored file: the boundary is here
        log.exception("frame %d of instance %s (%s) could not be rendered", frame, sop, syntax)
        raise HTTPException(500, detail=f"frame {frame} of instance {sop} could not be decoded from "
                                        f"{_named(syntax)}: {exc}") from exc
    return Response(body, media_type=how.media)


def _one_frame(text: str) -> int:
    try:
        frame = int(text)
    except ValueError:
        raise HTTPException(400, detail=f"{text[:40]!r}: a rendered frame is one frame number") from None
    if frame < 1:
        raise HTTPException(400, detail="frame numbers start at 1")
    return frame


def _representative(store: Store, study: str, series: str | None = None) -> StoredInstance:
    """The middle image of the series (or of the study's first series) that has pixel data."""
    instances = [i for i in _instances(store, study, series)
                 if i.header.sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.")
                 and not i.header.sop_class_uid.startswith(("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.66"))]
    if not instances:
        raise HTTPException(404, detail="no image to show")
    first_series = instances[0].header.series_instance_uid
    images = sorted((i for i in instances if i.header.series_instance_uid == first_series),
                    key=lambda i: (i.header.instance_number or 0, i.header.sop_instance_uid))
    return images[len(images) // 2]


@router.get("/studies/{study}/series/{series}/instances/{sop}/rendered", summary="An instance rendered as PNG")
def rendered_instance(study: str, series: str, sop: str, request: Request, store: StoreDep,
                      window: str | None = None, viewport: str | None = None, quality: str | None = None) -> Response:
    how = _rendering(request, window, viewport, quality)
    (item,) = _instances(store, study, series, sop)
    return _render(item, 1, how)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered", summary="A frame as PNG")
def rendered_frame(study: str, series: str, sop: str, frame: str, request: Request, store: StoreDep,
                   window: str | None = None, viewport: str | None = None, quality: str | None = None) -> Response:
    how = _rendering(request, window, viewport, quality)
    (item,) = _instances(store, study, series, sop)
    return _render(item, _one_frame(frame), how)


@router.get("/studies/{study}/thumbnail", summary="A study's thumbnail")
def study_thumbnail(study: str, request: Request, store: StoreDep, viewport: str | None = None,
                    quality: str | None = None) -> Response:
    return _render(_representative(store, study), 1, _rendering(request, None, viewport, quality, THUMBNAIL))


@router.get("/studies/{study}/series/{series}/thumbnail", summary="A series' thumbnail")
def series_thumbnail(study: str, series: str, request: Request, store: StoreDep, viewport: str | None = None,
                     quality: str | None = None) -> Response:
    return _render(_representative(store, study, series), 1, _rendering(request, None, viewport, quality, THUMBNAIL))


@router.get("/studies/{study}/series/{series}/instances/{sop}/thumbnail", summary="An instance's thumbnail")
def instance_thumbnail(study: str, series: str, sop: str, request: Request, store: StoreDep,
                       viewport: str | None = None, quality: str | None = None) -> Response:
    (item,) = _instances(store, study, series, sop)
    return _render(item, 1, _rendering(request, None, viewport, quality, THUMBNAIL))


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/thumbnail", summary="A frame's thumbnail")
def frame_thumbnail(study: str, series: str, sop: str, frame: str, request: Request, store: StoreDep,
                    viewport: str | None = None, quality: str | None = None) -> Response:
    (item,) = _instances(store, study, series, sop)
    return _render(item, _one_frame(frame), _rendering(request, None, viewport, quality, THUMBNAIL))


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
