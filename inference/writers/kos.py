"""The key images: a Key Object Selection document (TID 2010, highdicom) flagging the slices with stones.

A viewer that shows key images (a PACS's "key images" or "flagged images" tool)
takes the reader straight to the CT slices where the model found a stone. The
document references the source CT instances themselves, not the overlays: the
key images are the diagnostic slices, in slice order (feet to head, as
``Volume``), one reference per slice; a multi-frame source is referenced once
with the frame numbers of those slices.

Document title: (113000, DCM, "Of Interest"), from CID 7010. It is the title for
images flagged for a reader's attention, the one IHE's Key Image Note profile
uses and viewers show as key images. The other titles of CID 7010 say something
else: "For Referring Provider", "For Surgery", "For Teaching" name an audience
the node cannot know, "Best In Set" a choice among similar images, and the
"Rejected for ..." titles make a PACS hide the images. The Key Object
Description says what the selection is and how many stones it covers, that it is
not for primary diagnosis, and the input's cautions (``Findings.cautions``, as in
the SR's comment and on the overlays: "Caution: Pixels of 3.00 mm are coarser
..."), and the observer is the model as a device, as in the SR.

No stone: no document. There is nothing to flag, and the IOD needs at least one
referenced instance (highdicom refuses an empty selection); the SR says
"Calculus: Not detected" (SCT 260415000) instead.

Its SeriesNumber is 1000 x the source's SeriesNumber + 904 (904 where the source
has none), its SeriesDescription names the source series and the model version
(``inference.writers.sources``).
"""

from __future__ import annotations

import datetime
import logging

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DA, TM

from inference.postprocess import Findings
from inference.volume import Volume
from inference.writers.errors import WriterError
from inference.writers.sources import (
    DEVICE_SERIAL_NUMBER,
    KOS_SERIES_DESCRIPTION,
    KOS_SERIES_NUMBER,
    MANUFACTURER,
    Sources,
    requested_procedures,
)
from inference.writers.sr import device_observer

logger = logging.getLogger(__name__)

DOCUMENT_TITLE = codes.DCM.OfInterest
"""(113000, DCM, "Of Interest"): see the module's documentation for why."""


def kos_uids(sources: Sources) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the key object selection."""
    return sources.identity.series_uid("kos", "series"), sources.identity.uid("kos", "instance")


def key_slices(findings: Findings) -> tuple[int, ...]:
    """The slices to flag: every slice a stone spans (with a box or not), in slice order."""
    spanned = {k for stone in findings.stones for k in stone.slice_indices}
    return tuple(sorted(spanned | set(findings.slices_with_stones)))


def _description(findings: Findings, slices: tuple[int, ...]) -> str:
    """The Key Object Description: the count, the disclaimer and each of the input's cautions."""
    count = len(findings.stones)
    text = (f"AI: {count} urinary stone{'s' if count != 1 else ''} on "
            f"{len(slices)} slice{'s' if len(slices) != 1 else ''}; not for primary diagnosis")
    if findings.cautions:
        text += "." + "".join(f" Caution: {c}" for c in findings.cautions)
    return text


def _selection(volume: Volume, sources: Sources, findings: Findings,
               slices: tuple[int, ...]) -> tuple[hd.ko.KeyObjectSelection, list[Dataset]]:
    """The content tree and the evidence (the referenced source instances, each once)."""
    evidence: dict[str, Dataset] = {}
    for k in slices:
        evidence.setdefault(volume.sop_instance_uids[k], sources.datasets[k])
    content = hd.ko.KeyObjectSelection(
        document_title=DOCUMENT_TITLE,
        referenced_objects=list(evidence.values()),
        observer_device_context=device_observer(sources.identity),
        description=_description(findings, slices),
    )
    if sources.multiframe:
        frames = [volume.frame_numbers[k] for k in slices]
        for item in content[0].ContentSequence:
            if item.ValueType == "IMAGE":
                item.ReferencedSOPSequence[0].ReferencedFrameNumber = frames
    return content, list(evidence.values())


def build_key_objects(volume: Volume, findings: Findings, sources: Sources, *,
                      created: datetime.datetime | None = None) -> Dataset:
    """The Key Object Selection document of the slices with stones; ``WriterError`` when there is none.

    ``created`` (default: now) is its SeriesDate/SeriesTime and ContentDate/ContentTime."""
    slices = key_slices(findings)
    if not slices:
        raise WriterError("no stone was found: no key object selection is written without a slice to flag")
    content, evidence = _selection(volume, sources, findings, slices)
    series_uid, sop_uid = kos_uids(sources)
    identity = sources.identity
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=series_uid,
        series_number=identity.series_number(KOS_SERIES_NUMBER),
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=identity.description(KOS_SERIES_DESCRIPTION),
        manufacturer_model_name=identity.model_name,
        software_versions=identity.software_versions,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        requested_procedures=requested_procedures(sources.unique[0]) or None,
    )
    kos.copy_patient_and_study_information(sources.unique[0])
    created = created or datetime.datetime.now()
    kos.SeriesDate = kos.ContentDate = DA(created.date())
    kos.SeriesTime = kos.ContentTime = TM(created.time())
    logger.info("key objects of series %s: %d slice(s)", volume.series_instance_uid, len(slices))
    return kos
