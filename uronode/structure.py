"""The structure of an encoded data set, walked without decoding its values.

:func:`check_data_set` walks the top-level elements (every transfer syntax)
and raises :class:`~uronode.errors.MalformedDataSet` naming what is wrong: a
data set that ends inside an element, a sequence without its end, an unknown
VR, native pixel data whose length is not what Rows, Columns, samples,
frames and bits allocated give, or pixel data (native or compressed) whose
claimed size no modality produces. It reads no values but those few, so it
costs microseconds on the receive path. :mod:`uronode.header` runs it on every
instance the node takes in.

Two claims are bounded here, because whoever believes them allocates what
they say, and both can be made in a few hundred bytes:

- A deflated data set (Deflated Explicit VR Little Endian) is inflated by
  :func:`inflate` with a bound, never whole: deflate packs up to 1032:1, so
  1 MB on the wire can claim 1 GB of memory, once per reader.
- Pixel data claims Rows x Columns x samples x frames x bits; a decoder
  allocates that before it finds the compressed data short. A frame larger
  than :data:`MAX_FRAME_PIXELS` or a decoded total above
  :data:`MAX_INSTANCE_BYTES` is refused, compressed or not.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable
from typing import NamedTuple

from uronode.errors import MalformedDataSet

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
NATIVE = {EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED}
"""Transfer syntaxes whose pixel data is not encapsulated."""

LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
"""VRs with a 4-byte value length in explicit VR."""
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
    b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN",
    b"UR", b"US", b"UT", b"UV",
}
_PIXEL_DATA = 0x7FE00010
_IMAGE = {
    0x00280002: "SamplesPerPixel",
    0x00280004: "PhotometricInterpretation",
    0x00280008: "NumberOfFrames",
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00280100: "BitsAllocated",
    0x00281054: "RescaleType",
}
_MAX_DEPTH = 32
RLE = "1.2.840.10008.1.2.5"
VIDEO_PREFIXES = ("1.2.840.10008.1.2.4.10",)
"""MPEG-2, MPEG-4 and HEVC (1.2.840.10008.1.2.4.100 to .108): a video's frames are streamed, never decoded
all at once, so the decoded total is not bounded for them (a frame still is)."""

MAX_INSTANCE_BYTES = 2 * 1024**3
"""The largest data set the node takes, inflated or decoded (bytes): 2 GiB, the default of the setting
``scp.max_instance_bytes``, the most one C-STORE may carry. The largest real instances, Enhanced CT or MR
of a few thousand frames, are 1 to 2 GB decoded; anything larger is not an instance a reader here could
hold in memory anyway. Callers that have the settings pass theirs."""
MAX_DEFLATE_RATIO = 100
"""How many times its deflated length a data set may inflate to, past :data:`INFLATE_FLOOR`.

Deflate reaches 1032:1 on runs of one byte, and only a bomb is made of those: CT, MR and X-ray pixel
data deflate 2 to 4 times, headers and reports about 10, blank secondary captures and masks rarely more
than 100 when they are large. With this ratio a sender must send a hundredth of the memory it makes the
node use (native data costs it all of it), so sixteen associations at once cannot claim 16 x 2 GiB with
a few megabytes."""
INFLATE_FLOOR = 64 * 1024**2
"""What any deflated data set may inflate to whatever its ratio (64 MiB): a small object that packs
very well (a blank overlay, a mask, a structured report of repeated text) is always taken."""
MAX_FRAME_PIXELS = 8192 * 8192
"""The most pixels one frame may claim (67,108,864, 8192 x 8192, in any shape).

No modality makes more: CT and MR are at most 2048 x 2048, CR, DX and mammography at most about
5000 x 6000 (Fujifilm's 50 micron mammography, 4728 x 5928, the largest), stitched long-leg and spine
radiographs about 3000 x 8000, ultrasound and endoscopy video 1920 x 1080 to 4096 x 2160; whole-slide
microscopy tiles its matrix into frames of at most a few thousand. A claim above it is an error or an
attack: a decoder allocates it before it finds the compressed data short."""
_INFLATE_STEP = 4 * 1024**2
"""Bytes inflated, and deflated bytes fed, at a time."""
RLE_MAX_RATIO = 64
"""RLE Lossless packs at most 128 repeated bytes into 2: pixel data decoding to more than 64 times its
encoded length is a false claim, whatever the image."""

_Unpack = Callable[[memoryview, int], tuple[int, ...]]


class _Walk:
    """Element headers of one data set in one encoding, read without decoding values."""

    def __init__(self, buf: memoryview, explicit: bool, little: bool) -> None:
        self.buf = buf
        self.explicit = explicit
        self.u16: _Unpack = struct.Struct("<H" if little else ">H").unpack_from
        self.u32: _Unpack = struct.Struct("<I" if little else ">I").unpack_from

    def header(self, pos: int, explicit: bool) -> tuple[int, bytes, int, int]:
        """(tag, VR or b"", value length, position of the value) of the element at ``pos``."""
        if pos + 8 > len(self.buf):
            raise MalformedDataSet(f"the data set ends inside an element header (byte {pos}): it is truncated")
        tag = (self.u16(self.buf, pos)[0] << 16) | self.u16(self.buf, pos + 2)[0]
        if tag >> 16 == 0xFFFE or not explicit:
            return tag, b"", self.u32(self.buf, pos + 4)[0], pos + 8
        vr = bytes(self.buf[pos + 4 : pos + 6])
        if vr not in _VRS:
            raise MalformedDataSet(f"element {_name(tag)} has an unknown VR {vr!r}")
        if vr in LONG_VRS:
            if pos + 12 > len(self.buf):
                raise MalformedDataSet(f"the data set ends inside the header of {_name(tag)}: it is truncated")
            return tag, vr, self.u32(self.buf, pos + 8)[0], pos + 12
        return tag, vr, self.u16(self.buf, pos + 6)[0], pos + 8

    def value_end(self, tag: int, value: int, length: int) -> int:
        if value + length > len(self.buf):
            raise MalformedDataSet(
                f"the value of {_name(tag)} needs {length} bytes but {len(self.buf) - value} are left:"
                " the data set is truncated"
            )
        return value + length

    def skip_items(self, owner: int, pos: int, explicit: bool, depth: int) -> int:
        """Skip the items of a sequence (or the fragments of pixel data) of undefined length."""
        if depth > _MAX_DEPTH:
            raise MalformedDataSet(f"sequences nested more than {_MAX_DEPTH} deep")
        while True:
            if pos >= len(self.buf):
                raise MalformedDataSet(f"{_name(owner)} has no sequence delimiter: the data set is truncated")
            tag, _, length, pos = self.header(pos, explicit)
            if tag == SEQ_END:
                return pos
            if tag != ITEM:
                raise MalformedDataSet(f"{_name(owner)} holds {_name(tag)} where an item should be")
            if length != UNDEFINED:
                pos = self.value_end(owner, pos, length)
                continue
            while True:  # an item of undefined length: elements until the item delimiter
                if pos >= len(self.buf):
                    raise MalformedDataSet(f"an item of {_name(owner)} has no delimiter: the data set is truncated")
                tag, vr, length, pos = self.header(pos, explicit)
                if tag == ITEM_END:
                    break
                if length == UNDEFINED:
                    pos = self.skip_items(tag, pos, explicit and vr != b"UN", depth + 1)
                else:
                    pos = self.value_end(tag, pos, length)


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def inflate(
    data: bytes | bytearray | memoryview, start: int = 0, *, max_instance_bytes: int = MAX_INSTANCE_BYTES
) -> bytearray:
    """The deflated data set from ``start`` to the end, inflated; :class:`MalformedDataSet` past the bound.

    Inflates at most :func:`inflate_limit` bytes plus one (so the bomb costs
    no more than the bound) and refuses when there is more, or when the
    stream is damaged or cut short.
    """
    deflated = memoryview(data)[start:]
    limit = inflate_limit(len(deflated), max_instance_bytes)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    plain = bytearray()
    fed = 0
    while not inflater.eof:
        # in steps, into one buffer: zlib alone would hold all its output twice while joining it, and
        # its unconsumed input is a copy (so the input is fed a slice at a time, too)
        pending = inflater.unconsumed_tail or deflated[fed : fed + _INFLATE_STEP]
        if not inflater.unconsumed_tail:
            fed += len(pending)
        try:
            step = inflater.decompress(pending, min(_INFLATE_STEP, limit + 1 - len(plain)))
        except zlib.error as exc:
            raise MalformedDataSet(f"the deflated data set cannot be inflated: {exc}") from None
        if not step and not inflater.unconsumed_tail and fed >= len(deflated) and not inflater.eof:
            raise MalformedDataSet("the deflated data set cannot be inflated: incomplete or truncated stream")
        plain += step
        if len(plain) > limit:
            raise MalformedDataSet(
                f"the deflated data set inflates to more than {limit} bytes (from {len(deflated)}; the node takes"
                f" at most {MAX_DEFLATE_RATIO} times the deflated length past {INFLATE_FLOOR} bytes, and at most"
                f" {max_instance_bytes} bytes in all)"
            )
    return plain


def inflate_limit(deflated_length: int, max_instance_bytes: int = MAX_INSTANCE_BYTES) -> int:
    """How many bytes a data set of ``deflated_length`` deflated bytes may inflate to: see
    :data:`MAX_DEFLATE_RATIO`, :data:`INFLATE_FLOOR` and :data:`MAX_INSTANCE_BYTES`."""
    return min(max_instance_bytes, max(INFLATE_FLOOR, MAX_DEFLATE_RATIO * deflated_length))


class ImageSize(NamedTuple):
    """What a data set says of its pixels, as the index keeps it (QIDO-RS returns it): each None where the
    data set does not say it, or says it in a form no reader takes."""

    rows: int | None = None
    columns: int | None = None
    bits_allocated: int | None = None
    number_of_frames: int | None = None
    rescale_type: str = ""
    """Rescale Type (0028,1054) at the top level, as text ('' where absent): the unit of a CT's values where they
    are not HU (``uronode.energy``)."""


def check_data_set(
    data: bytes | bytearray | memoryview,
    transfer_syntax_uid: str,
    start: int = 0,
    *,
    beginning: bool = True,
    max_instance_bytes: int = MAX_INSTANCE_BYTES,
    inflated: bool = False,
) -> str | None:
    """:func:`walk_data_set`'s warning."""
    return walk_data_set(data, transfer_syntax_uid, start, beginning=beginning, max_instance_bytes=max_instance_bytes,
                         inflated=inflated)[0]


def walk_data_set(
    data: bytes | bytearray | memoryview,
    transfer_syntax_uid: str,
    start: int = 0,
    *,
    beginning: bool = True,
    max_instance_bytes: int = MAX_INSTANCE_BYTES,
    inflated: bool = False,
) -> tuple[str | None, ImageSize]:
    """Walk the top-level elements from ``start`` to the end; raise :class:`MalformedDataSet` at the first fault.

    ``beginning``: ``start`` is where the data set begins (not a point that a
    scan has reached), so its first element also shows whether the data set
    is in the VR encoding its transfer syntax says.

    Every element, sequence and pixel data fragment must fit in the data set;
    native pixel data must be at least as long as Rows x Columns x
    SamplesPerPixel x NumberOfFrames x BitsAllocated / 8 (padded to even),
    encapsulated pixel data must have undefined length. What readers cope
    with (pydicom reads it, taking what it needs) is not refused, and the
    returned warning says what it was: native pixel data longer than that,
    or up to 7 zero bytes after the last element (padding some senders add).

    Pixel data, native or encapsulated, must not claim a frame of more than
    :data:`MAX_FRAME_PIXELS` nor more than ``max_instance_bytes`` decoded
    (video excepted); encapsulated RLE must not claim more than
    :data:`RLE_MAX_RATIO` times its length. A deflated data set is inflated
    with the bound of :func:`inflate`; ``inflated``: ``data`` is one already
    inflated so (its reader needed it too), walked from ``start``.

    Returns the warning (None when nothing is odd) and the :class:`ImageSize` the walk found (from ``start``
    on: a walk that starts after the image attributes finds none of them).
    """
    if transfer_syntax_uid == DEFLATED and not inflated:
        data = inflate(data, start, max_instance_bytes=max_instance_bytes)
        start = 0
    explicit = transfer_syntax_uid != IMPLICIT_LE
    walk = _Walk(memoryview(data), explicit, little=transfer_syntax_uid != EXPLICIT_BE)
    native = transfer_syntax_uid in NATIVE
    if explicit and beginning and start + 8 <= len(walk.buf) and bytes(walk.buf[start + 4 : start + 6]) not in _VRS:
        raise MalformedDataSet(f"the data set is not in explicit VR, as its transfer syntax {transfer_syntax_uid} says")
    image: dict[int, bytes] = {}
    pixel_length: int | None = None
    encapsulated_length = 0
    warnings = []
    pos, end = start, len(walk.buf)
    while pos < end:
        if end - pos < 8 and not any(walk.buf[pos:end]):
            warnings.append(f"{end - pos} zero byte(s) after the last element")
            break
        tag, vr, length, value = walk.header(pos, explicit)
        if tag in (ITEM, ITEM_END, SEQ_END):
            raise MalformedDataSet(f"a stray item or delimiter {_name(tag)} at the top level")
        if length == UNDEFINED:
            if tag == _PIXEL_DATA:
                if native:
                    raise MalformedDataSet(
                        f"PixelData is encapsulated (undefined length) in the native transfer syntax {transfer_syntax_uid}"
                    )
                pixel_length = UNDEFINED
            elif explicit and vr not in (b"SQ", b"UN", b"OB", b"OW"):
                raise MalformedDataSet(f"{_name(tag)} ({vr.decode()}) has undefined length")
            pos = walk.skip_items(tag, value, explicit and vr != b"UN", 0)
            if tag == _PIXEL_DATA:
                encapsulated_length = pos - value
            continue
        pos = walk.value_end(tag, value, length)
        if tag in _IMAGE:
            image[tag] = bytes(walk.buf[value:pos])
        elif tag == _PIXEL_DATA:
            if not native:
                raise MalformedDataSet(
                    f"PixelData has a defined length in the encapsulated transfer syntax {transfer_syntax_uid}"
                )
            pixel_length = length
    if pixel_length is not None and native:
        if excess := _check_pixel_length(image, pixel_length, walk, max_instance_bytes):
            warnings.insert(0, excess)
    elif pixel_length is not None and 0x00280010 in image and 0x00280011 in image:
        # what a decoder would allocate; without Rows and Columns nothing decodes it, and nothing is claimed
        _check_encapsulated(image, encapsulated_length, walk, transfer_syntax_uid, max_instance_bytes)
    return "; ".join(warnings) or None, _image_size(image, walk)


def _image_size(image: dict[int, bytes], walk: _Walk) -> ImageSize:
    """The image attributes found, where each is one value of the form its VR says (US; IS for the frames)."""
    def us(tag: int) -> int | None:
        raw = image.get(tag, b"")
        return int(walk.u16(memoryview(raw), 0)[0]) if len(raw) == 2 else None

    text = image.get(0x00280008, b"").decode("ascii", "replace").strip(" \x00")
    frames = int(text) if text.isdigit() and 0 < int(text) < 2**31 else None
    unit = image.get(0x00281054, b"").decode("ascii", "replace").strip(" \x00")
    return ImageSize(us(0x00280010), us(0x00280011), us(0x00280100), frames, unit[:64])


class _Geometry:
    """What pixel data claims to be: Rows, Columns, samples, frames, bits allocated, and what that decodes to."""

    def __init__(self, image: dict[int, bytes], walk: _Walk) -> None:
        number = functools.partial(_number, image, walk)
        self.rows, self.columns, self.bits = number(0x00280010), number(0x00280011), number(0x00280100)
        self.samples = number(0x00280002, 1)
        for tag, value in (
            (0x00280010, self.rows), (0x00280011, self.columns), (0x00280100, self.bits), (0x00280002, self.samples)
        ):
            if value == 0:
                raise MalformedDataSet(f"the data set has PixelData but {_IMAGE[tag]} is 0")
        text = image.get(0x00280008, b"").decode("ascii", "replace").strip(" \x00")
        try:
            self.frames = int(text) if text else 1
        except ValueError:
            self.frames = 0
        if self.frames < 1:
            raise MalformedDataSet(f"NumberOfFrames {text[:16]!r} is not a positive whole number")
        photometric = image.get(0x00280004, b"").decode("ascii", "replace").strip(" \x00")
        total_bits = self.rows * self.columns * self.samples * self.frames * self.bits
        if self.samples == 3 and photometric in ("YBR_FULL_422", "YBR_PARTIAL_422"):
            total_bits = total_bits * 2 // 3  # two chroma samples shared by each pair of pixels
        self.decoded = (total_bits + 7) // 8
        """Bytes of the decoded pixel data (without the pad byte)."""

    def describe(self) -> str:
        return (
            f"Rows {self.rows} x Columns {self.columns} x {self.samples} sample(s) x {self.frames} frame(s)"
            f" x {self.bits} bits allocated"
        )

    def check_claim(self, *, bound_total: bool, max_instance_bytes: int) -> None:
        """Refuse a frame no modality makes, and a decoded total above the instance limit."""
        if self.rows * self.columns > MAX_FRAME_PIXELS:
            raise MalformedDataSet(
                f"a frame of {self.rows} x {self.columns} pixels, more than any modality makes (the node takes"
                f" at most {MAX_FRAME_PIXELS} pixels a frame, 8192 x 8192)"
            )
        if bound_total and self.decoded > max_instance_bytes:
            raise MalformedDataSet(
                f"pixel data claiming {self.decoded} bytes decoded, more than the {max_instance_bytes} the node"
                f" takes: {self.describe()}"
            )


def _number(image: dict[int, bytes], walk: _Walk, tag: int, default: int | None = None) -> int:
    """The US value of an image attribute; ``default`` when absent (None: it must be there)."""
    raw = image.get(tag)
    if raw is None or not raw:
        if default is None:
            raise MalformedDataSet(f"the data set has PixelData but no {_IMAGE[tag]}")
        return default
    if len(raw) == 2:
        return int(walk.u16(memoryview(raw), 0)[0])
    if len(raw) == 4:
        return int(walk.u32(memoryview(raw), 0)[0])
    raise MalformedDataSet(f"{_IMAGE[tag]} is {len(raw)} bytes long, not a US value")


def _check_encapsulated(
    image: dict[int, bytes], length: int, walk: _Walk, transfer_syntax_uid: str, max_instance_bytes: int
) -> None:
    """Compressed pixel data: the claim bounded as for native data; RLE also by what RLE can pack."""
    geometry = _Geometry(image, walk)
    geometry.check_claim(
        bound_total=not transfer_syntax_uid.startswith(VIDEO_PREFIXES), max_instance_bytes=max_instance_bytes
    )
    if transfer_syntax_uid == RLE and geometry.decoded > RLE_MAX_RATIO * length:
        raise MalformedDataSet(
            f"RLE pixel data of {length} bytes cannot decode to the {geometry.decoded} bytes that"
            f" {geometry.describe()} need (RLE packs at most {RLE_MAX_RATIO}:1)"
        )


def _check_pixel_length(image: dict[int, bytes], length: int, walk: _Walk, max_instance_bytes: int) -> str | None:
    geometry = _Geometry(image, walk)
    geometry.check_claim(bound_total=True, max_instance_bytes=max_instance_bytes)
    expected = geometry.decoded
    if length in (expected, expected + expected % 2):
        return None
    sizes = geometry.describe()
    if length < expected:
        raise MalformedDataSet(f"PixelData holds {length} bytes but {sizes} need {expected}")
    return f"PixelData holds {length} bytes, {length - expected} more than {sizes} need"

