"""An instance's pixel data as WADO-RS gives it: the instance re-encoded uncompressed, and its frames.

Instances are stored as received (often compressed). A client that asks for an
uncompressed transfer syntax gets the instance decoded and re-encoded
(:func:`reencode`): the same SOP Instance UID, the values as the decoder gives
them (no colour conversion, so nothing is lost on top of what the stored
encoding lost). Frames are the native bytes of each frame in Explicit VR Little
Endian (:func:`frames_of`), in the colour space and planar configuration that
the instance's metadata names: as stored, except that compressed YBR forms
other than YBR_FULL, which the decoders give as RGB, are served as RGB
(:func:`served_as_rgb`; the metadata says so), one frame at a time as the
response asks for them.

Nothing is decoded whose header claims more than the node decodes
(:func:`check_decoded_size`): a frame over :data:`MAX_FRAME_PIXELS`, or a decode
over :data:`MAX_DECODED_BYTES`, is :class:`NotDecoded` before any memory is
taken. The decoders allocate what Rows x Columns x frames claims before they
find that a few hundred bytes of compressed data do not fill it; an instance
stored before the ingest refused such headers must not take the node's memory.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import decompress, get_decoder, pack_bits, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from uronode.errors import UronodeError
from uronode.structure import MAX_FRAME_PIXELS, MAX_INSTANCE_BYTES

NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
"""What an instance can be re-encoded as, whatever it is stored as (when it can be decoded)."""
_LITTLE_ENDIAN_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
MAX_FRAME_SIDE = math.isqrt(MAX_FRAME_PIXELS)
"""The side of the largest square frame decoded: the ingest's bound (:data:`uronode.structure.MAX_FRAME_PIXELS`),
which stored instances that came before it may exceed."""
MAX_DECODED_BYTES = MAX_INSTANCE_BYTES
"""The most bytes one decode may make (a frame, or every frame of an instance re-encoded whole): the ingest's
:data:`uronode.structure.MAX_INSTANCE_BYTES`."""


class NotDecoded(UronodeError, ValueError):
    """The instance's header claims more pixels than the node decodes (or none it can count); says what it claims."""


def check_decoded_size(ds: Dataset, *, whole: bool = False) -> None:
    """Raise :class:`NotDecoded` unless a frame of ``ds`` (``whole``: all its frames at once) may be decoded.

    What the header claims, not what the pixel data holds: Rows x Columns against
    :data:`MAX_FRAME_PIXELS`, and Rows x Columns x SamplesPerPixel x BitsAllocated / 8 (a whole
    byte a pixel for 1-bit data, as the decoders give it), times NumberOfFrames when ``whole``,
    against :data:`MAX_DECODED_BYTES`.
    """
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1) if whole else 1
    except (AttributeError, TypeError, ValueError) as exc:
        raise NotDecoded(f"the instance's Rows, Columns, SamplesPerPixel, BitsAllocated or NumberOfFrames cannot be "
                         f"read ({exc}); not decoded") from None
    if rows * columns > MAX_FRAME_PIXELS:
        raise NotDecoded(f"the instance claims {rows} x {columns} pixels; not decoded "
                         f"(the node decodes at most {MAX_FRAME_SIDE} x {MAX_FRAME_SIDE} pixels a frame)")
    size = rows * columns * samples * -(-bits // 8) * frames
    if size > MAX_DECODED_BYTES:
        raise NotDecoded(
            f"the instance claims {frames} frame(s) of {rows} x {columns} pixels x {samples} sample(s) x {bits} bits, "
            f"{size} bytes decoded; not decoded (the node decodes at most {MAX_DECODED_BYTES >> 30} GiB at once)")


def can_decode(syntax: str) -> bool:
    """Whether pixel data in ``syntax`` can be read as native little-endian values here.

    Big Endian (retired) is read too, but an instance stored in it is not re-encoded: its raw
    values (lookup tables, overlays) would have to be swapped one by one.
    """
    uid = UID(syntax)
    if not uid.is_transfer_syntax:
        return False  # a private transfer syntax
    if not uid.is_compressed:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:  # no decoder at all (MPEG, HEVC video)
        return False


def can_reencode(syntax: str) -> bool:
    """Whether an instance stored in ``syntax`` can be given in each of :data:`NATIVE_SYNTAXES`."""
    if syntax in _LITTLE_ENDIAN_NATIVE:
        return True
    return UID(syntax).is_transfer_syntax and UID(syntax).is_compressed and can_decode(syntax)


def reencode(path: Path, syntax: str) -> bytes:
    """The instance at ``path`` as a Part 10 file in ``syntax`` (one of :data:`NATIVE_SYNTAXES`).

    Compressed pixel data is decoded as it is (a YBR colour space stays YBR: YBR_FULL_422, which
    the decoders give unsubsampled, becomes YBR_FULL), 1-bit pixel data is packed again; all its
    frames at once, so :class:`NotDecoded` when they are more than :func:`check_decoded_size` allows.
    """
    ds = pydicom.dcmread(path)
    if "PixelData" in ds and ds.file_meta.TransferSyntaxUID.is_compressed:
        check_decoded_size(ds, whole=True)
        decompress(ds, as_rgb=False, generate_instance_uid=False)
        if ds.BitsAllocated == 1:  # decoders give one byte a pixel; native 1-bit data is packed
            count = int(ds.get("NumberOfFrames", 1) or 1)
            unpacked = np.frombuffer(ds.PixelData, np.uint8)[: count * ds.Rows * ds.Columns]
            ds.PixelData = pack_bits(unpacked)  # padded to an even length
        if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
            ds.PhotometricInterpretation = "YBR_FULL"
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def served_as_rgb(syntax: str, photometric: str) -> bool:
    """Whether frames in ``photometric`` stored in ``syntax`` are served as RGB.

    The decoders give compressed YBR_FULL_422, YBR_ICT, YBR_RCT (and the partial forms) as RGB, with
    nothing to undo it losslessly; YBR_FULL is kept (decoded raw), native data is kept as stored.
    """
    uid = UID(syntax)
    compressed = uid.is_transfer_syntax and uid.is_compressed
    return compressed and photometric.startswith("YBR_") and photometric != "YBR_FULL"


def _native_frame_length(ds: Dataset) -> int:
    samples = 2 if ds.get("PhotometricInterpretation") == "YBR_FULL_422" else int(ds.SamplesPerPixel)  # PS3.3 C.7.6.3.1.2
    return int(ds.Rows) * int(ds.Columns) * samples * (int(ds.BitsAllocated) // 8)


def frames_of(ds: Dataset, numbers: list[int]) -> Iterator[bytes]:
    """Frames ``numbers`` (from 1, checked by the caller) of ``ds``, as Explicit VR Little Endian bytes.

    Made one by one as they are taken, so a response holds one frame at a time. Native
    little-endian data is cut from the stored bytes; 1-bit frames are each frame's bits
    packed (PS3.5 8.1.1), Rows x Columns bits in whole bytes (no padding to an even length, which
    is for an element's value, not a frame's); compressed (and big-endian) frames are decoded one
    by one. :class:`NotDecoded` here, before any frame, when a frame is more than
    :func:`check_decoded_size` allows; a decoder's error comes when its frame is taken.
    """
    syntax = ds.file_meta.TransferSyntaxUID
    if int(ds.BitsAllocated) == 1:  # a frame need not start on a byte boundary in the stored bits
        check_decoded_size(ds)
        return (pack_bits(pixel_array(ds, index=n - 1).ravel(), pad=False) for n in numbers)
    if syntax in _LITTLE_ENDIAN_NATIVE:  # deflated data was inflated when the file was read: nothing decoded
        length = _native_frame_length(ds)
        data = ds.PixelData
        return (data[(n - 1) * length : n * length] for n in numbers)
    check_decoded_size(ds)
    return _decoded_frames(ds, numbers)


def _decoded_frames(ds: Dataset, numbers: list[int]) -> Iterator[bytes]:
    rgb = served_as_rgb(ds.file_meta.TransferSyntaxUID, str(ds.get("PhotometricInterpretation", "")))
    by_plane = int(ds.get("SamplesPerPixel", 1)) > 1 and ds.get("PlanarConfiguration") == 1 and not rgb
    for n in numbers:
        frame = pixel_array(ds, index=n - 1, raw=not rgb)  # raw: no YBR_FULL to RGB conversion
        if by_plane:  # decoders give colour by pixel; the metadata says by plane
            frame = np.moveaxis(frame, -1, 0)
        yield np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<")).tobytes()
