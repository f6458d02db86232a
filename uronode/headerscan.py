"""A minimal reader of the few header attributes the index needs, for the receive hot path.

It walks the top-level elements of a Little Endian data set (explicit or
implicit VR) up to (0020,0032), skipping sequences, and decodes only the
attributes the index keeps (patient, study, series and instance level). Anything unusual (big endian, deflate, a
character set other than ASCII, Latin-1 or UTF-8, a malformed length)
raises :class:`ScanError`, and the caller falls back to pydicom.
``tests/uronode/test_headerscan.py`` checks it against pydicom on every test file at hand.
"""

from __future__ import annotations

import struct

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"

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
_CHARSETS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}

_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from


class ScanError(ValueError):
    """The fast path cannot read this data set; use the full parser."""


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
    return out
