"""Taking in one instance, whatever brought it: C-STORE, STOW-RS or the upload form.

:func:`take_instance` reads and checks the instance's header
(:mod:`uronode.header`), checks it is what the request said it is, stores it
durably (:meth:`uronode.store.Store.put`) and says what became of it in an
:class:`IngestReport`. Each service answers from the report in its own
terms: a DIMSE status, a STOW-RS FailureReason, a line of the upload's
answer. Nothing is stored unless the report says so; a refusal names its
reason, and is logged here once.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from uronode.errors import InvalidInstance, NotADataSet, OutOfResources
from uronode.header import read_instance, to_file_format
from uronode.store import Store
from uronode.structure import MAX_INSTANCE_BYTES
from uronode.types import InstanceHeader, StoreOutcome

log = logging.getLogger(__name__)

Buffer = bytes | memoryview
_DICM = slice(128, 132)


class Verdict(enum.Enum):
    """What became of an instance."""

    STORED = "stored"
    STORED_WITH_WARNING = "stored with a warning"
    """Stored; something odd but readable was found (the report's ``reason`` says what)."""
    CANNOT_UNDERSTAND = "cannot understand"
    """Not DICOM, damaged, or without the UIDs the node needs: not stored."""
    DOES_NOT_MATCH = "does not match"
    """Not what the request said it is (SOP Class or Instance UID, study): not stored."""
    OUT_OF_RESOURCES = "out of resources"
    """The disk is full or over its watermark, or a write failed: not stored; the sender may try again."""


@dataclass(frozen=True, slots=True)
class Expected:
    """What the request says the instance is; None: not said."""

    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None


@dataclass(frozen=True, slots=True)
class IngestReport:
    """One instance taken in (or not), and why."""

    verdict: Verdict
    header: InstanceHeader | None = None
    """What was read of it (None when it could not be read)."""
    reason: str | None = None
    """Why it was refused, or the warning it was stored with."""
    outcome: StoreOutcome | None = None
    """What storing it did (new, identical again, replaced), when stored."""

    @property
    def stored(self) -> bool:
        return self.verdict in (Verdict.STORED, Verdict.STORED_WITH_WARNING)


def take_instance(
    store: Store,
    parts: Sequence[Buffer],
    *,
    source: str,
    transfer_syntax_uid: str | None = None,
    association_id: int | None = None,
    expected: Expected = Expected(),
    bare_data_sets: bool = False,
    max_instance_bytes: int = MAX_INSTANCE_BYTES,
) -> IngestReport:
    """Check, read and store one encoded instance; never raises for what is wrong with the instance or the disk.

    ``parts``: the File Meta group and the data set as the listener has them
    (with ``transfer_syntax_uid``, the negotiated one), or one whole file.
    ``source``: the calling AE title, or what brought the instance
    (``STOW-RS``, ``UPLOAD``); kept in the index and named in the log.
    A single part without preamble and ``DICM`` is read as a bare data set and
    given a File Meta group: some STOW-RS clients send those, and old CD
    exports and scanners wrote files so. ``bare_data_sets``: the part is
    declared a data set (a STOW-RS part), and bytes that are no DICOM at all
    are refused as not a data set; otherwise (an uploaded file) as not a
    DICOM file. ``max_instance_bytes``: the most its data set may inflate
    (deflated) or its pixel data decode to; a caller with the settings passes
    ``scp.max_instance_bytes`` (see :mod:`uronode.structure`). One of the node's own results sent back,
    or made again by a remote worker, with other bytes keeps the node's copy (:meth:`Store.put`).
    """
    try:
        if len(parts) == 1:
            parts = [_whole_file(parts[0], bare_data_sets, max_instance_bytes)]
        header, warning = read_instance(parts, transfer_syntax_uid, max_instance_bytes=max_instance_bytes)
    except InvalidInstance as exc:
        return _refused(Verdict.CANNOT_UNDERSTAND, None, str(exc), source)
    mismatch = _mismatch(header, expected)
    if mismatch is not None:
        return _refused(Verdict.DOES_NOT_MATCH, header, mismatch, source)
    try:
        outcome = store.put(header, parts, calling_ae=source, association_id=association_id)
    except InvalidInstance as exc:
        return _refused(Verdict.CANNOT_UNDERSTAND, header, str(exc), source)
    except OutOfResources as exc:
        return _refused(Verdict.OUT_OF_RESOURCES, header, str(exc), source)
    if warning is not None:
        log.warning("instance %s from %s stored with a warning: %s", header.sop_instance_uid, source, warning)
        return IngestReport(Verdict.STORED_WITH_WARNING, header, warning, outcome)
    return IngestReport(Verdict.STORED, header, None, outcome)


def _whole_file(content: Buffer, bare_data_sets: bool, max_instance_bytes: int) -> Buffer:
    if len(content) >= 132 and content[_DICM] == b"DICM":
        return content
    if not len(content) and not bare_data_sets:
        raise InvalidInstance("an empty file (0 bytes)")
    try:
        return to_file_format(content, max_instance_bytes=max_instance_bytes)
    except NotADataSet:
        if bare_data_sets:
            raise
        picture = picture_kind(content)
        if picture is not None:
            raise InvalidInstance(f"{PICTURE_REFUSAL_PREFIX} ({picture}), not a DICOM file: the node reads DICOM "
                                  "images; export the image as DICOM from the PACS or the viewer") from None
        if bytes(content[:4]) in (b"PK\x03\x04", b"PK\x05\x06"):  # probe 56: a ZIP got "no DICM prefix" alone
            raise InvalidInstance("a ZIP archive, not a DICOM file: unzip it and choose the folder it holds") from None
        raise InvalidInstance("not a DICOM file (no DICM prefix)") from None


PICTURE_REFUSAL_PREFIX = "a picture"
"""How the reason for a picture file sent instead of a DICOM file begins (``picture_kind``)."""
_PICTURE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
                  (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def picture_kind(content: Buffer) -> str | None:
    """The kind of picture file ``content`` starts as ("PNG", "JPEG", "GIF", "TIFF", "BMP", "WebP"), None for
    anything else: the paper's users export pictures, and a picture's refusal says what to send instead."""
    head = bytes(content[:14])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:2] == b"BM":  # a BMP's header: its file size, two reserved zeros, where its pixels start
        size, reserved, offset = int.from_bytes(head[2:6], "little"), head[6:10], int.from_bytes(head[10:14], "little")
        return "BMP" if size == len(content) and reserved == bytes(4) and 14 <= offset < size else None
    return next((kind for magic, kind in _PICTURE_MAGIC if head.startswith(magic)), None)


def _mismatch(header: InstanceHeader, expected: Expected) -> str | None:
    if expected.sop_class_uid is not None and header.sop_class_uid != expected.sop_class_uid:
        return "the data set's SOP Class UID differs from the request's"
    if expected.sop_instance_uid is not None and header.sop_instance_uid != expected.sop_instance_uid:
        return "the data set's SOP Instance UID differs from the request's"
    if expected.study_instance_uid is not None and header.study_instance_uid != expected.study_instance_uid:
        return "its Study Instance UID is not the study of the request"
    return None


def _refused(verdict: Verdict, header: InstanceHeader | None, reason: str, source: str) -> IngestReport:
    what = f"instance {header.sop_instance_uid}" if header is not None else "an instance"
    level = logging.ERROR if verdict is Verdict.OUT_OF_RESOURCES else logging.WARNING
    log.log(level, "%s from %s refused, %s: %s", what, source, verdict.value, reason)
    return IngestReport(verdict, header, reason)
