"""An instance's header: read and checked, by this module alone.

:func:`read_instance` is the one way in. It reads the attributes the index
keeps (patient, study, series and instance level) and checks the instance:
its UIDs are there and valid (they become file names), and its data set is
whole (:func:`uronode.structure.check_data_set`, which walks every element
without decoding values).

Two readers, one result. With the data set as the listener has it and its
transfer syntax, a minimal scanner walks the top-level elements of a Little
Endian data set (explicit or implicit VR) up to (0020,0032), skipping
sequences, and decodes only the wanted attributes. Anything unusual (big
endian, deflate, a character set other than ASCII, Latin-1 or UTF-8, a
malformed length, a UID attribute in another VR than UI) makes it decline
(:class:`ScanError`) and pydicom reads the header instead, only up to
(0020,0032) and usually from the first few kilobytes.
``tests/uronode/test_headerscan.py`` checks that both agree on every test
file at hand.

A deflated data set (Deflated Explicit VR Little Endian) is never given to
pydicom whole: pydicom inflates all of it, without a bound, before it reads
the first element, and a megabyte of deflate can claim a gigabyte. It is
inflated once, with the bound of :func:`uronode.structure.inflate` (past it
the instance is refused before anything parses it), and both readers and the
check read the inflated bytes.

Damage is a :class:`~uronode.errors.MalformedDataSet` naming it (whatever
pydicom raised on it); what is missing or not a valid UID an
:class:`~uronode.errors.InvalidInstance`.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_dataset, read_partial, read_preamble
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from uronode.dicomfile import file_meta_end, is_valid_uid
from uronode.errors import InvalidInstance, MalformedDataSet, NotADataSet
from uronode.structure import (
    DEFLATED,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    ITEM,
    ITEM_END,
    LONG_VRS,
    MAX_INSTANCE_BYTES,
    SEQ_END,
    UNDEFINED,
    ImageSize,
    check_data_set,
    inflate,
    walk_data_set,
)
from uronode.types import InstanceHeader

_LAST = 0x00200037
"""ImageOrientationPatient: the last attribute the index keeps."""

WANTED = {
    0x00080005: "SpecificCharacterSet",
    0x00080008: "ImageType",
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080020: "StudyDate",
    0x00080021: "SeriesDate",
    0x00080030: "StudyTime",
    0x00080031: "SeriesTime",
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
    0x00180010: "ContrastBolusAgent",
    0x00180015: "BodyPartExamined",
    0x00181030: "ProtocolName",
    0x00181210: "ConvolutionKernel",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200010: "StudyID",
    0x00200011: "SeriesNumber",
    0x00200013: "InstanceNumber",
    0x00200032: "ImagePositionPatient",
    0x00200037: "ImageOrientationPatient",
}
TEXT = {
    "AccessionNumber",
    "ContrastBolusAgent",
    "ConvolutionKernel",
    "ProtocolName",
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
        if vr in LONG_VRS:
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
        if tag == SEQ_END:
            return pos
        if tag != ITEM:
            raise ScanError("expected an item")
        if length != UNDEFINED:
            pos += length
            continue
        while True:  # an item of undefined length: elements until the item delimiter
            tag, length, pos = _header(buf, pos, explicit)
            if tag == ITEM_END:
                break
            pos = _skip_undefined(buf, pos, explicit, depth + 1) if length == UNDEFINED else pos + length


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
        if length == UNDEFINED:
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


# -- reading with pydicom, checking, and the header -----------------------------------


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
_PREFIX = 64 * 1024


def _parse(data: bytes | memoryview) -> tuple[Dataset, bool]:
    """Parse up to the first element after the header tags; also say whether it got there."""
    stop, reached = _stop_after_header()
    ds = read_partial(BytesIO(data), stop_when=stop)
    return ds, reached[0]


def _stop_after_header() -> tuple[Callable[[BaseTag, str | None, int], bool], list[bool]]:
    """A ``stop_when`` for pydicom that stops at the first element after the header tags, and a flag it sets."""
    reached = [False]

    def stop(tag: BaseTag, vr: str | None, length: int) -> bool:
        if tag > _LAST:
            reached[0] = True
            return True
        return False

    return stop, reached


def read_header(parts: Sequence[bytes | memoryview], transfer_syntax_uid: str | None = None) -> InstanceHeader:
    """:func:`read_instance` without its warning."""
    return read_instance(parts, transfer_syntax_uid)[0]


def read_instance(
    parts: Sequence[bytes | memoryview],
    transfer_syntax_uid: str | None = None,
    *,
    max_instance_bytes: int = MAX_INSTANCE_BYTES,
) -> tuple[InstanceHeader, str | None]:
    """Read the indexed attributes from an encoded file (meta + data set) and check the data set is whole.

    With ``parts == [file meta, data set]`` and the transfer syntax given (as
    the listener has them), the minimal scanner reads them; otherwise, or
    when it declines, pydicom does (only up to (0020,0032), and usually from
    the first few kilobytes). Either way
    :func:`uronode.structure.check_data_set` then walks the rest. Raises
    :class:`MalformedDataSet` naming what is damaged (whatever pydicom raised
    on it), :class:`InvalidInstance` naming what is missing or not a valid
    UID; returns the header and a warning about what is odd but readable (None when nothing is).
    ``max_instance_bytes``: the most a data set may inflate or decode to
    (:mod:`uronode.structure` says why).
    """
    if len(parts) == 2 and not len(parts[1]):
        raise InvalidInstance("the data set is empty")
    meta = None
    if transfer_syntax_uid is None or transfer_syntax_uid == DEFLATED:
        meta = _file_meta(parts[0])
    if (transfer_syntax_uid or (meta and meta[0].get("TransferSyntaxUID"))) == DEFLATED:
        return _read_deflated(parts, meta, max_instance_bytes)
    if transfer_syntax_uid is not None and len(parts) == 2:
        try:
            values, stop = scan_header(parts[1], transfer_syntax_uid)
            header = _header_from(values, transfer_syntax_uid)
        except (ScanError, UnicodeDecodeError):
            pass  # the full parser below decides
        else:
            warning, size = walk_data_set(
                parts[1], transfer_syntax_uid, stop, beginning=stop == 0, max_instance_bytes=max_instance_bytes
            )
            return _sized(header, size), warning
    try:
        ds = None
        total = sum(len(p) for p in parts)
        if total > _PREFIX and len(parts[0]) < _PREFIX:
            head = bytes(parts[0])
            if len(parts) > 1:
                head += bytes(memoryview(parts[1])[: _PREFIX - len(head)])
            try:
                candidate, reached = _parse(head)
                if reached and candidate.file_meta.get("TransferSyntaxUID") != DEFLATED:
                    ds = candidate
            except PARSE_ERRORS:
                ds = None  # parse everything below
        if ds is None:
            ds, _ = _parse(b"".join(parts))
        values = _values(ds)
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        implicit, little = ds.original_encoding
        media_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
    except MalformedDataSet:
        raise  # our own finding, already precise
    except PARSE_ERRORS as exc:
        if transfer_syntax_uid is not None:  # what the structural check finds says more than pydicom's error
            data, start = _data_set(parts)
            check_data_set(data, transfer_syntax_uid, start, max_instance_bytes=max_instance_bytes)
        raise MalformedDataSet(f"the data set cannot be parsed: {exc}") from exc
    if media_class == MEDIA_STORAGE_DIRECTORY:  # a CD's or a folder's index, uploaded with its images
        raise InvalidInstance("a DICOMDIR, the index of a CD or folder of DICOM files: not an image (the "
                              "images are the files it lists)")
    data, start = _data_set(parts)
    if start >= len(data):
        raise InvalidInstance("the data set is empty")
    # before the UIDs: a truncated data set would otherwise read as "missing"; without a
    # Transfer Syntax UID, in the encoding pydicom found
    found = IMPLICIT_LE if implicit else EXPLICIT_LE if little is not False else EXPLICIT_BE
    warning, size = walk_data_set(data, syntax or found, start, max_instance_bytes=max_instance_bytes)
    return _sized(_header_from(values, syntax), size), warning


def _file_meta(first: bytes | memoryview) -> tuple[FileMetaDataset, int] | None:
    """The File Meta group as pydicom reads it (with or without a preamble) and where it ends; None: unreadable.

    Read from the first 64 KB alone, so that a deflated data set after it is
    not inflated (pydicom inflates what follows the group when reading a
    file): which transfer syntax pydicom would act on is then known before
    pydicom sees the data set. pydicom's public ``read_file_meta_info`` wants
    a path; ``_read_file_meta_info`` is what its ``dcmread`` calls.
    """
    head = bytes(memoryview(first)[:_PREFIX])
    fp = BytesIO(head)
    try:
        read_preamble(fp, True)  # with force, a missing preamble leaves fp at the start
        meta = _read_file_meta_info(fp)
        str(meta.get("TransferSyntaxUID", ""))  # values are decoded when first read
    except PARSE_ERRORS:
        return None
    if fp.tell() >= len(head) and len(first) > len(head) and len(meta):
        raise MalformedDataSet(f"the File Meta Information group is longer than {_PREFIX} bytes")
    return meta, fp.tell()


def _read_deflated(
    parts: Sequence[bytes | memoryview], meta: tuple[FileMetaDataset, int] | None, max_instance_bytes: int
) -> tuple[InstanceHeader, str | None]:
    """:func:`read_instance` for a Deflated Explicit VR Little Endian data set: inflated once, with a bound."""
    if meta is None:
        raise MalformedDataSet("the File Meta Information group cannot be read")
    file_meta, end = meta
    if len(parts) == 2 and end >= len(parts[0]):
        data, start = parts[1], end - len(parts[0])
    else:
        data, start = (parts[0] if len(parts) == 1 else b"".join(parts)), end
    if start >= len(data):
        raise InvalidInstance("the data set is empty")
    plain = inflate(data, start, max_instance_bytes=max_instance_bytes)  # refused past the bound, unparsed
    try:
        values, stop = scan_header(plain, EXPLICIT_LE)
    except (ScanError, UnicodeDecodeError):
        try:
            values = _values(_read_plain(plain))
        except MalformedDataSet:
            raise
        except PARSE_ERRORS as exc:  # what the structural check finds says more than pydicom's error
            check_data_set(plain, DEFLATED, inflated=True, max_instance_bytes=max_instance_bytes)
            raise MalformedDataSet(f"the data set cannot be parsed: {exc}") from exc
        stop = 0
    if str(file_meta.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY:
        raise InvalidInstance("a DICOMDIR, the index of a CD or folder of DICOM files: not an image (the "
                              "images are the files it lists)")
    warning, size = walk_data_set(
        plain, DEFLATED, stop, beginning=stop == 0, inflated=True, max_instance_bytes=max_instance_bytes
    )
    return _sized(_header_from(values, DEFLATED), size), warning


def _read_plain(plain: bytearray) -> Dataset:
    """pydicom's reading of an inflated data set (explicit VR little endian) up to the header tags: from its
    first 64 KB when they hold them, else from all of it."""
    stop, reached = _stop_after_header()
    if len(plain) > _PREFIX:
        try:
            ds = read_dataset(BytesIO(plain[:_PREFIX]), False, True, stop_when=stop)
            if reached[0]:
                return ds
        except PARSE_ERRORS:
            pass  # an element cut by the prefix's end, perhaps: all of it below
    return read_dataset(BytesIO(plain), False, True, stop_when=stop)


MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
"""The SOP class of a DICOMDIR (Media Storage Directory Storage)."""


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


def to_file_format(content: bytes | memoryview, *, max_instance_bytes: int = MAX_INSTANCE_BYTES) -> bytes:
    """A part without preamble or File Meta (some clients send bare data sets) made into a DICOM file.

    The data set is re-encoded; its transfer syntax is the one pydicom finds
    when reading it. Raises NotADataSet when it is not DICOM at all, InvalidInstance when it is a damaged one.
    A File Meta group without a preamble that says the data set is deflated
    has it checked, inflated with a bound, before pydicom inflates it whole.
    """
    meta = _file_meta(content)
    if meta is not None and meta[0].get("TransferSyntaxUID") == DEFLATED:
        check_data_set(content, DEFLATED, meta[1], max_instance_bytes=max_instance_bytes)
    try:
        ds = dcmread(BytesIO(content), force=True)
        missing = [k for k in ("SOPClassUID", "SOPInstanceUID") if k not in ds]
        sop_class, sop = ("", "") if missing else (str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    except PARSE_ERRORS as exc:
        raise NotADataSet(f"not a DICOM data set: {exc}") from exc
    if missing:  # bytes that are no DICOM read, forced, as a data set of nothing useful
        raise NotADataSet(f"not a DICOM data set: no {missing[0]} could be read from it")
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if ds.original_encoding[0] else ExplicitVRLittleEndian
        )
    # pydicom reads what it can of a damaged data set and would write it out whole: check the bytes as sent
    check_data_set(
        content, str(ds.file_meta.TransferSyntaxUID), file_meta_end(content, 0), max_instance_bytes=max_instance_bytes
    )
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    buffer = BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidInstance(f"the data set cannot be written as a DICOM file: {exc}") from exc
    return buffer.getvalue()


def _data_set(parts: Sequence[bytes | memoryview]) -> tuple[bytes | memoryview, int]:
    """The part holding the data set and where it starts: after the preamble and the File Meta group."""
    first = parts[0]
    pos = file_meta_end(first)
    if pos >= len(first) and len(parts) > 1:
        rest = parts[1] if len(parts) == 2 else b"".join(parts[1:])
        return rest, pos - len(first)
    return (first if len(parts) == 1 else b"".join(parts)), pos


def _sized(header: InstanceHeader, size: ImageSize) -> InstanceHeader:
    """``header`` with what the data set says of its pixels (the index keeps it for QIDO-RS)."""
    return dataclasses.replace(header, rows=size.rows, columns=size.columns, bits_allocated=size.bits_allocated,
                               number_of_frames=size.number_of_frames, rescale_type=size.rescale_type)


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
        contrast_agent=values.get("ContrastBolusAgent", "").strip(),
        convolution_kernel=values.get("ConvolutionKernel", "").strip(),
        body_part=values.get("BodyPartExamined", "").strip(),
        protocol_name=values.get("ProtocolName", "").strip(),
        image_orientation=values.get("ImageOrientationPatient", "").strip(),
        manufacturer=values.get("Manufacturer", "").strip(),
        instance_number=instance_number,
        image_position=position,
        series_number=_integer(values.get("SeriesNumber")),
        series_date=values.get("SeriesDate", "").strip(),
        series_time=values.get("SeriesTime", "").strip(),
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
