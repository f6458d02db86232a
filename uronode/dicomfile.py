"""The DICOM file format as the node writes it: preamble, File Meta Information, and UIDs.

The listener stores each instance as it came off the wire: a preamble, a File
Meta Information group that we write here (a few bytes, built without pydicom
because it runs for every instance) and the data set exactly as received.
Reading an instance's header is :mod:`uronode.header`.
"""

from __future__ import annotations

import datetime
import re
import struct

from pydicom.dataset import Dataset

from uronode import __version__

IMPLEMENTATION_CLASS_UID = "2.25.163385317616489218133917553546152620637"
"""Our implementation class UID (a UUID-derived 2.25 UID, fixed for the product)."""


def implementation_version_name(version: str) -> str:
    """The Implementation Version Name (SH, at most 16 characters) of a release: ``URONODE_`` and its date as
    YYYYMMDD (``2026.12.7``: ``URONODE_20261207``); another form of version, cut to 16."""
    parts = version.split(".")
    if len(parts) >= 3 and all(part.isdigit() for part in parts[:3]) and len(parts[0]) == 4:
        return f"URONODE_{parts[0]}{int(parts[1]):02d}{int(parts[2]):02d}"
    return f"URONODE_{version}"[:16]


IMPLEMENTATION_VERSION_NAME = implementation_version_name(__version__)

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
PREAMBLE = b"\x00" * 128 + b"DICM"
_OFFSET = re.compile(r"^([+-])(\d\d)([0-5]\d)$")


def timezone_offset(value: object) -> str | None:
    """A Timezone Offset From UTC (0008,0201) value as the results copy it (``+0100``, ``-0500``), None where it
    is missing or no offset (PS3.3 C.12.1.1.8: -1200 to +1400)."""
    found = _OFFSET.match(str(value or "").strip())
    if found is None:
        return None
    minutes = int(found[2]) * 60 + int(found[3])
    if minutes > (12 * 60 if found[1] == "-" else 14 * 60):
        return None
    return f"{found[1]}{found[2]}{found[3]}"


def now_at(offset: str | None) -> datetime.datetime:
    """The time now, naive, as a clock at ``offset`` (a :func:`timezone_offset` value) reads it; the host's local
    time where ``offset`` is None. A result states its dates and times in its source's offset where the source
    has one (a DICOM object's dates and times are all in the one offset it names), so that they read in the time
    of the CT they were made from whatever time zone the node's host is set to (probe 39: a container in UTC
    dated a Berlin CT's results an hour before the CT)."""
    if offset is None:
        return datetime.datetime.now()
    sign = -1 if offset[0] == "-" else 1
    zone = datetime.timezone(sign * datetime.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    return datetime.datetime.now(zone).replace(tzinfo=None)



def identity_value(keyword: str, value: object) -> str:
    """An identity attribute's value as two copies of an image compare it (:func:`same_identity`): without
    surrounding spaces; a name's groups (alphabetic, ideographic, phonetic) each with its components trimmed,
    empty trailing components dropped, in capitals, joined by ``=`` (``Doe^Bert^^^`` is ``DOE^BERT``)."""
    text = str(value or "").strip()
    if keyword != "PatientName":
        return text
    groups = ["^".join(part.strip() for part in group.split("^")).rstrip("^").upper() for group in text.split("=")]
    return "=".join(groups).rstrip("=")


def same_identity(keyword: str, first: object, second: object) -> bool:
    """Whether two copies of an image name the same patient or order by ``keyword``
    (``uronode.store.identity_changes``, ``inference.volume``): a name, birth date or sex missing on either side
    says nothing (a PACS filling in or leaving out demographics), a Patient ID or an Accession Number given or
    taken away does (an image linked to an order, or unlinked from a wrong one: review 42); names are the same
    where every group both give is the same and they share one (an ideographic group added to an alphabetic one
    is the same name). Review 40: a PACS trimming a name's carets was taken for a correction, and the series'
    results were withdrawn."""
    one, other = identity_value(keyword, first), identity_value(keyword, second)
    if not one or not other:
        return one == other or keyword not in ("PatientID", "AccessionNumber")
    if keyword != "PatientName":
        return one == other
    shared = [(a, b) for a, b in zip(one.split("="), other.split("="), strict=False) if a and b]
    return bool(shared) and all(a == b for a, b in shared)


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


LOSSY_TRANSFER_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",  # JPEG baseline, extended
    "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91",  # JPEG-LS near-lossless, JPEG 2000 (lossy allowed)
    "1.2.840.10008.1.2.4.203",  # HTJ2K (lossy allowed)
})
"""Transfer syntaxes whose pixels may have lost detail (their lossless variants are not here)."""


def lossy(ds: Dataset) -> bool:
    """Whether an instance's pixels have been through lossy compression (now, or ever: LossyImageCompression
    01 stays with an image decompressed since)."""
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    return str(ds.get("LossyImageCompression", "")).strip() == "01" or ts in LOSSY_TRANSFER_SYNTAXES
