"""Encoding and reading the parts of a DICOM file that the node needs on its hot path.

The listener stores each instance as it came off the wire: a preamble, a File
Meta Information group that we write here (a few bytes, built without pydicom
because it runs for every instance) and the data set exactly as received.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from uronode import __version__
from uronode.errors import InvalidInstance
from uronode.headerscan import (
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    UID_VRS,
    UIDS,
    WANTED,
    MalformedDataSet,
    ScanError,
    check_data_set,
    scan_header,
)
from uronode.types import InstanceHeader

IMPLEMENTATION_CLASS_UID = "2.25.163385317616489218133917553546152620637"
"""Our implementation class UID (a UUID-derived 2.25 UID, fixed for the product)."""
IMPLEMENTATION_VERSION_NAME = f"URONODE_{__version__}"[:16]

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
PREAMBLE = b"\x00" * 128 + b"DICM"



def is_valid_uid(value: str) -> bool:
    """A DICOM UID: dot-separated numbers without leading zeros, at most 64 characters."""
    return 0 < len(value) <= 64 and UID_PATTERN.match(value) is not None


def _element(tag_group: int, tag_elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", tag_group, tag_elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag_group, tag_elem, vr, len(value)) + value


def _pad(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae_title: str = "",
) -> bytes:
    """Return preamble, ``DICM`` and the File Meta Information group, encoded."""
    body = b"".join(
        [
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", _pad(sop_class_uid, b"\x00")),
            _element(0x0002, 0x0003, b"UI", _pad(sop_instance_uid, b"\x00")),
            _element(0x0002, 0x0010, b"UI", _pad(transfer_syntax_uid, b"\x00")),
            _element(0x0002, 0x0012, b"UI", _pad(IMPLEMENTATION_CLASS_UID, b"\x00")),
            _element(0x0002, 0x0013, b"SH", _pad(IMPLEMENTATION_VERSION_NAME, b" ")),
        ]
        + ([_element(0x0002, 0x0016, b"AE", _pad(source_ae_title.strip(), b" "))] if source_ae_title.strip() else [])
    )
    group_length = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body)))
    return PREAMBLE + group_length + body


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v).strip() for v in value)
    return str(value)


PARSE_ERRORS = (
    InvalidDicomError, BytesLengthException, ValueError, EOFError, OSError, struct.error, KeyError, IndexError,
    TypeError, AttributeError, NotImplementedError, OverflowError, zlib.error,
)
"""What pydicom raises on damaged data: its own two errors (neither is a ValueError) and what fuzzing found
(an unknown VR is a NotImplementedError). Values are decoded when first read, so reading one raises these too."""
_LAST_HEADER_TAG = 0x00200032  # ImagePositionPatient: the last attribute the index keeps
_PREFIX = 64 * 1024
_DEFLATED = "1.2.840.10008.1.2.1.99"


def _parse(data: bytes | memoryview) -> tuple[Dataset, bool]:
    """Parse up to the first element after the header tags; also say whether it got there."""
    reached = False

    def stop(tag: BaseTag, vr: str | None, length: int) -> bool:
        nonlocal reached
        if tag > _LAST_HEADER_TAG:
            reached = True
            return True
        return False

    ds = read_partial(BytesIO(data), stop_when=stop)
    return ds, reached


def read_header(parts: Sequence[bytes | memoryview], transfer_syntax_uid: str | None = None) -> InstanceHeader:
    """:func:`read_instance` without its warning."""
    return read_instance(parts, transfer_syntax_uid)[0]


def read_instance(
    parts: Sequence[bytes | memoryview], transfer_syntax_uid: str | None = None
) -> tuple[InstanceHeader, str | None]:
    """Read the indexed attributes from an encoded file (meta + data set) and check the data set is whole.

    With ``parts == [file meta, data set]`` and the transfer syntax given (as
    the listener has them), the minimal scanner of :mod:`uronode.headerscan`
    reads them; otherwise, or when it declines, pydicom does (only up to
    (0020,0032), and usually from the first few kilobytes). Either way
    :func:`uronode.headerscan.check_data_set` then walks the rest. Raises
    :class:`MalformedDataSet` naming what is damaged (whatever pydicom raised
    on it), :class:`InvalidInstance` naming what is missing or not a valid
    UID; returns the header and a warning about what is odd but readable (None when nothing is).
    """
    if len(parts) == 2 and not len(parts[1]):
        raise InvalidInstance("the data set is empty")
    if transfer_syntax_uid is not None and len(parts) == 2:
        try:
            values, stop = scan_header(parts[1], transfer_syntax_uid)
            header = _header_from(values, transfer_syntax_uid)
        except (ScanError, UnicodeDecodeError):
            pass  # the full parser below decides
        else:
            return header, check_data_set(parts[1], transfer_syntax_uid, stop, beginning=stop == 0)
    try:
        ds = None
        total = sum(len(p) for p in parts)
        if total > _PREFIX and len(parts[0]) < _PREFIX:
            head = bytes(parts[0])
            if len(parts) > 1:
                head += bytes(memoryview(parts[1])[: _PREFIX - len(head)])
            try:
                candidate, reached = _parse(head)
                if reached and candidate.file_meta.get("TransferSyntaxUID") != _DEFLATED:
                    ds = candidate
            except PARSE_ERRORS:
                ds = None  # parse everything below
        if ds is None:
            ds, _ = _parse(b"".join(parts))
        values = _values(ds)
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        implicit, little = ds.original_encoding
    except MalformedDataSet:
        raise  # our own finding, already precise
    except PARSE_ERRORS as exc:
        if transfer_syntax_uid is not None:  # what the structural check finds says more than pydicom's error
            data, start = _data_set(parts)
            check_data_set(data, transfer_syntax_uid, start)
        raise MalformedDataSet(f"the data set cannot be parsed: {exc}") from exc
    data, start = _data_set(parts)
    if start >= len(data):
        raise InvalidInstance("the data set is empty")
    # before the UIDs: a truncated data set would otherwise read as "missing"; without a
    # Transfer Syntax UID, in the encoding pydicom found
    found = IMPLICIT_LE if implicit else EXPLICIT_LE if little is not False else EXPLICIT_BE
    warning = check_data_set(data, syntax or found, start)
    return _header_from(values, syntax), warning


def _values(ds: Dataset) -> dict[str, str]:
    """The wanted attributes present, as text; a UID in another VR than UI is a :class:`MalformedDataSet`.

    Raises what pydicom raises (:data:`PARSE_ERRORS`) on a value it cannot decode in its VR.
    """
    values = {}
    for tag, name in WANTED.items():
        element = ds.get_item(tag)  # not yet decoded: the VR as the data set has it (None: implicit VR)
        if element is None:
            continue
        if name in UIDS and element.VR is not None and element.VR.encode("ascii", "replace") not in UID_VRS:
            raise MalformedDataSet(f"{name} has VR {element.VR}, not UI")
        values[name] = _text(ds[tag].value)
    return values


def file_meta_end(data: bytes | memoryview, pos: int = len(PREAMBLE)) -> int:
    """Where the File Meta group (explicit VR little endian elements of group 0002) starting at ``pos`` ends."""
    view = memoryview(data)
    while pos + 8 <= len(view) and struct.unpack_from("<H", view, pos)[0] == 0x0002:
        vr = bytes(view[pos + 4 : pos + 6])
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            if pos + 12 > len(view):
                break
            pos += 12 + struct.unpack_from("<I", view, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", view, pos + 6)[0]
    return pos


def check_bare_data_set(data: bytes | memoryview, transfer_syntax_uid: str) -> str | None:
    """:func:`uronode.headerscan.check_data_set` on a data set without preamble (File Meta, if any, skipped)."""
    return check_data_set(data, transfer_syntax_uid, file_meta_end(data, 0))


def _data_set(parts: Sequence[bytes | memoryview]) -> tuple[bytes | memoryview, int]:
    """The part holding the data set and where it starts: after the preamble and the File Meta group."""
    first = parts[0]
    pos = file_meta_end(first)
    if pos >= len(first) and len(parts) > 1:
        rest = parts[1] if len(parts) == 2 else b"".join(parts[1:])
        return rest, pos - len(first)
    return (first if len(parts) == 1 else b"".join(parts)), pos


def _header_from(values: Mapping[str, str], transfer_syntax_uid: str) -> InstanceHeader:
    uids = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = values.get(keyword, "").strip().rstrip("\x00")
        if not value:
            raise InvalidInstance(f"{keyword} is missing")
        if not is_valid_uid(value):
            raise InvalidInstance(f"{keyword} {value[:80]!r} is not a valid UID")
        uids[keyword] = value
    instance_number = _integer(values.get("InstanceNumber"))
    position: tuple[float, float, float] | None = None
    try:
        ipp = [float(v) for v in values.get("ImagePositionPatient", "").split("\\") if v.strip()]
        if len(ipp) == 3:
            position = (ipp[0], ipp[1], ipp[2])
    except ValueError:
        position = None
    return InstanceHeader(
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax_uid,
        modality=values.get("Modality", "").strip(),
        series_description=values.get("SeriesDescription", "").strip(),
        image_type=values.get("ImageType", "").strip(),
        manufacturer=values.get("Manufacturer", "").strip(),
        instance_number=instance_number,
        image_position=position,
        series_number=_integer(values.get("SeriesNumber")),
        patient_name=values.get("PatientName", "").strip(),
        patient_id=values.get("PatientID", "").strip(),
        patient_birth_date=values.get("PatientBirthDate", "").strip(),
        patient_sex=values.get("PatientSex", "").strip(),
        study_date=values.get("StudyDate", "").strip(),
        study_time=values.get("StudyTime", "").strip(),
        accession_number=values.get("AccessionNumber", "").strip(),
        referring_physician_name=values.get("ReferringPhysicianName", "").strip(),
        study_description=values.get("StudyDescription", "").strip(),
        study_id=values.get("StudyID", "").strip(),
    )


def _integer(value: str | None) -> int | None:
    try:
        return int(float(value)) if value else None
    except ValueError:
        return None
