"""A minimal reader of the few header attributes the index needs, and a structural check of the whole data set.

It walks the top-level elements of a Little Endian data set (explicit or
implicit VR) up to (0020,0032), skipping sequences, and decodes only the
attributes the index keeps (patient, study, series and instance level). Anything unusual (big endian, deflate, a
character set other than ASCII, Latin-1 or UTF-8, a malformed length)
raises :class:`ScanError`, and the caller falls back to pydicom. So does a UID
attribute in another VR than UI (or UN), which pydicom would read as that VR.
``tests/uronode/test_headerscan.py`` checks it against pydicom on every test file at hand.

:func:`check_data_set` walks the rest of the top-level elements (every
transfer syntax) and raises :class:`MalformedDataSet` naming what is wrong: a
data set that ends inside an element, a sequence without its end, an unknown
VR, or native pixel data whose length is not what Rows, Columns, samples,
frames and bits allocated give. It reads no values but those few, so it costs
microseconds on the receive path.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from uronode.errors import InvalidInstance

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
NATIVE = {EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED}
"""Transfer syntaxes whose pixel data is not encapsulated."""

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LAST = 0x00200032

WANTED = {
    0x00080005: "SpecificCharacterSet",
    0x00080008: "ImageType",
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080020: "StudyDate",
    0x00080030: "StudyTime",
    0x00080050: "AccessionNumber",
    0x00080060: "Modality",
    0x00080070: "Manufacturer",
    0x00080090: "ReferringPhysicianName",
    0x00081030: "StudyDescription",
    0x0008103E: "SeriesDescription",
    0x00100010: "PatientName",
    0x00100020: "PatientID",
    0x00100030: "PatientBirthDate",
    0x00100040: "PatientSex",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200010: "StudyID",
    0x00200011: "SeriesNumber",
    0x00200013: "InstanceNumber",
    0x00200032: "ImagePositionPatient",
}
TEXT = {
    "AccessionNumber",
    "Manufacturer",
    "ReferringPhysicianName",
    "StudyDescription",
    "SeriesDescription",
    "PatientName",
    "PatientID",
    "StudyID",
}
"""Attributes whose value is text in the data set's character set (the rest are ASCII)."""
UIDS = {"SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"}
"""Wanted attributes whose VR is UI: in an explicit VR data set, UI (or UN) is the only encoding they may have."""
UID_VRS = {b"UI", b"UN"}
_CHARSETS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}

_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from


class ScanError(ValueError):
    """The fast path cannot read this data set; use the full parser."""


class MalformedDataSet(InvalidInstance, ValueError):
    """The data set is broken (truncated, a length that does not fit, pixel data of the wrong size); says how.

    An :class:`~uronode.errors.InvalidInstance`: whoever refuses instances that
    cannot be understood (the C-STORE handler, STOW-RS) refuses these too.
    """


def _tag(buf: memoryview, pos: int) -> int:
    return int((_u16(buf, pos)[0] << 16) | _u16(buf, pos + 2)[0])


def _header(buf: memoryview, pos: int, explicit: bool) -> tuple[int, int, int]:
    """(tag, value length, position of the value) of the element at ``pos``."""
    if pos + 8 > len(buf):
        raise ScanError("truncated element header")
    tag = _tag(buf, pos)
    if tag >> 16 == 0xFFFE:  # item and delimiters have no VR
        return tag, _u32(buf, pos + 4)[0], pos + 8
    if explicit:
        vr = bytes(buf[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > len(buf):
                raise ScanError("truncated element header")
            return tag, _u32(buf, pos + 8)[0], pos + 12
        if not vr.isalpha():
            raise ScanError("not an explicit VR")
        return tag, _u16(buf, pos + 6)[0], pos + 8
    return tag, _u32(buf, pos + 4)[0], pos + 8


def _skip_undefined(buf: memoryview, pos: int, explicit: bool, depth: int = 0) -> int:
    """Skip a sequence (or encapsulated value) of undefined length; return the position after it."""
    if depth > 16:
        raise ScanError("sequences nested too deep")
    while True:
        tag, length, pos = _header(buf, pos, explicit)
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise ScanError("expected an item")
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an item of undefined length: elements until the item delimiter
            tag, length, pos = _header(buf, pos, explicit)
            if tag == _ITEM_END:
                break
            pos = _skip_undefined(buf, pos, explicit, depth + 1) if length == _UNDEFINED else pos + length


def scan(data: bytes | bytearray | memoryview, transfer_syntax_uid: str) -> dict[str, str]:
    """Return the wanted attributes present, as stripped text (multi-values joined by a backslash)."""
    return scan_header(data, transfer_syntax_uid)[0]


def scan_header(data: bytes | bytearray | memoryview, transfer_syntax_uid: str) -> tuple[dict[str, str], int]:
    """:func:`scan`, also returning where it stopped (the first element after the wanted ones)."""
    if transfer_syntax_uid not in (EXPLICIT_LE, IMPLICIT_LE) and not transfer_syntax_uid.startswith(
        "1.2.840.10008.1.2.4."
    ) and transfer_syntax_uid != "1.2.840.10008.1.2.5":
        raise ScanError(f"transfer syntax {transfer_syntax_uid} is not scanned")
    explicit = transfer_syntax_uid != IMPLICIT_LE  # encapsulated syntaxes are explicit VR LE
    buf = memoryview(data)
    raw: dict[str, bytes] = {}
    pos, end = 0, len(buf)
    previous = -1
    while pos < end:
        tag, length, value = _header(buf, pos, explicit)
        if tag <= previous:
            raise ScanError("elements out of order")
        previous = tag
        if tag > _LAST:
            break
        if length == _UNDEFINED:
            pos = _skip_undefined(buf, value, explicit)
            continue
        if value + length > end:
            raise ScanError("value runs past the end")
        name = WANTED.get(tag)
        if name is not None:
            if explicit and name in UIDS and bytes(buf[pos + 4 : pos + 6]) not in UID_VRS:
                raise ScanError(f"{name} is not encoded as a UI")
            raw[name] = bytes(buf[value : value + length])
        pos = value + length
    charsets = raw.pop("SpecificCharacterSet", b"").decode("ascii", "replace").strip(" \x00").split("\\")
    charset = charsets[0].strip() if len(charsets) == 1 else "(code extensions)"
    encoding = _CHARSETS.get(charset)
    if encoding is None:
        raise ScanError(f"character set {charset!r} is not scanned")
    out = {}
    for name, encoded in raw.items():
        text = encoded.rstrip(b"\x00 ").decode(encoding if name in TEXT else "ascii")
        out[name] = "\\".join(part.strip() for part in text.split("\\"))
    return out, pos


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
        if vr in _LONG_VRS:
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
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM:
                raise MalformedDataSet(f"{_name(owner)} holds {_name(tag)} where an item should be")
            if length != _UNDEFINED:
                pos = self.value_end(owner, pos, length)
                continue
            while True:  # an item of undefined length: elements until the item delimiter
                if pos >= len(self.buf):
                    raise MalformedDataSet(f"an item of {_name(owner)} has no delimiter: the data set is truncated")
                tag, vr, length, pos = self.header(pos, explicit)
                if tag == _ITEM_END:
                    break
                if length == _UNDEFINED:
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
        if tag in (_ITEM, _ITEM_END, _SEQ_END):
            raise MalformedDataSet(f"a stray item or delimiter {_name(tag)} at the top level")
        if length == _UNDEFINED:
            if tag == _PIXEL_DATA:
                if native:
                    raise MalformedDataSet(
                        f"PixelData is encapsulated (undefined length) in the native transfer syntax {transfer_syntax_uid}"
                    )
                pixel_length = _UNDEFINED
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
