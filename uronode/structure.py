"""The structure of an encoded data set, walked without decoding its values.

:func:`check_data_set` walks the top-level elements (every transfer syntax)
and raises :class:`~uronode.errors.MalformedDataSet` naming what is wrong: a
data set that ends inside an element, a sequence without its end, an unknown
VR, or native pixel data whose length is not what Rows, Columns, samples,
frames and bits allocated give. It reads no values but those few, so it costs
microseconds on the receive path. :mod:`uronode.header` runs it on every
instance the node takes in.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

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
}
_MAX_DEPTH = 32

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


def check_data_set(
    data: bytes | bytearray | memoryview, transfer_syntax_uid: str, start: int = 0, *, beginning: bool = True
) -> str | None:
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
    """
    if transfer_syntax_uid == DEFLATED:
        try:
            data = zlib.decompress(bytes(memoryview(data)[start:]), -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise MalformedDataSet(f"the deflated data set cannot be inflated: {exc}") from None
        start = 0
    explicit = transfer_syntax_uid != IMPLICIT_LE
    walk = _Walk(memoryview(data), explicit, little=transfer_syntax_uid != EXPLICIT_BE)
    native = transfer_syntax_uid in NATIVE
    if explicit and beginning and start + 8 <= len(walk.buf) and bytes(walk.buf[start + 4 : start + 6]) not in _VRS:
        raise MalformedDataSet(f"the data set is not in explicit VR, as its transfer syntax {transfer_syntax_uid} says")
    image: dict[int, bytes] = {}
    pixel_length: int | None = None
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
    if pixel_length is not None and native and (excess := _check_pixel_length(image, pixel_length, walk)):
        warnings.insert(0, excess)
    return "; ".join(warnings) or None


def _check_pixel_length(image: dict[int, bytes], length: int, walk: _Walk) -> str | None:
    def number(tag: int, default: int | None = None) -> int:
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

    rows, columns, bits = number(0x00280010), number(0x00280011), number(0x00280100)
    samples = number(0x00280002, 1)
    for tag, value in ((0x00280010, rows), (0x00280011, columns), (0x00280100, bits), (0x00280002, samples)):
        if value == 0:
            raise MalformedDataSet(f"the data set has PixelData but {_IMAGE[tag]} is 0")
    text = image.get(0x00280008, b"").decode("ascii", "replace").strip(" \x00")
    try:
        frames = int(text) if text else 1
    except ValueError:
        frames = 0
    if frames < 1:
        raise MalformedDataSet(f"NumberOfFrames {text[:16]!r} is not a positive whole number")
    photometric = image.get(0x00280004, b"").decode("ascii", "replace").strip(" \x00")
    total_bits = rows * columns * samples * frames * bits
    if samples == 3 and photometric in ("YBR_FULL_422", "YBR_PARTIAL_422"):
        total_bits = total_bits * 2 // 3  # two chroma samples shared by each pair of pixels
    expected = (total_bits + 7) // 8
    if length in (expected, expected + expected % 2):
        return None
    sizes = f"Rows {rows} x Columns {columns} x {samples} sample(s) x {frames} frame(s) x {bits} bits allocated"
    if length < expected:
        raise MalformedDataSet(f"PixelData holds {length} bytes but {sizes} need {expected}")
    return f"PixelData holds {length} bytes, {length - expected} more than {sizes} need"
