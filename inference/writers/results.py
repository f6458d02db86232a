"""All results of one series at once, and saving them as files."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pydicom.valuerep import DA, TM

from inference.postprocess import Findings
from inference.volume import Volume
from inference.writers.errors import WriterError
from inference.writers.kos import build_key_objects
from inference.writers.sc import build_secondary_captures, image_numbers
from inference.writers.seg import build_segmentation
from inference.writers.sources import Sources, check_inputs, read_sources
from inference.writers.sr import build_report
from uronode.dicomfile import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    now_at,
    timezone_offset,
)
from uronode.types import DocumentReference

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Results:
    """The DICOM results of one series: a SEG, the overlays, the key objects and the SR.

    ``seg`` and ``kos`` are None, and ``secondary_captures`` empty, when no stone was found.
    ``image_numbers`` and ``image_numbering``: each slice's CT image number as the overlays and the report give
    it, and what the numbers are (``inference.writers.sc.image_numbers``).
    """

    seg: Dataset | None
    secondary_captures: tuple[Dataset, ...]
    sr: Dataset
    kos: Dataset | None = None
    image_numbers: tuple[int, ...] = ()
    image_numbering: str = "index"

    @property
    def datasets(self) -> tuple[Dataset, ...]:
        """Every result: the SEG first, the overlays, the key objects, the SR last (it references the SEG)."""
        seg = (self.seg,) if self.seg is not None else ()
        kos = (self.kos,) if self.kos is not None else ()
        return seg + self.secondary_captures + kos + (self.sr,)


MAX_SALT = 100
"""The most other sets of UIDs :func:`write_results` tries before it gives up (each rejection of the same content
uses one: a handful in a series' life)."""


def write_results(volume: Volume, findings: Findings, *, sc_every_slice: bool = False,
                  predecessors: Sequence[DocumentReference] = (), avoid: Collection[str] = ()) -> Results:
    """SEG, Secondary Capture overlays, key object selection and SR of ``findings`` on ``volume``.

    Overlays are made for the slices with a stone, or for every slice with
    ``sc_every_slice``; the key objects flag the CT slices with a stone; a series
    without stones gets the SR and one summary overlay that says so (every slice, each saying so, with
    ``sc_every_slice``), no SEG and no key objects.
    Patient and study attributes come from the source instances named by
    ``volume.source_paths``. ``predecessors``: the reports of an earlier run of the same model on the series,
    which the SR replaces (its Predecessor Documents Sequence). ``avoid``: SOP Instance UIDs a rejection note
    named (results of the series withdrawn or superseded earlier): where the results would take one of them (the
    same content made again: images moved away and back, a correction undone), they take the next other set of
    UIDs (:attr:`Identity.salt`), the same each time for the same content, so that an archive acting on the note
    does not hide them (review 35). Raises ``WriterError`` with the reason when the
    findings do not belong to the volume, name no model, or the sources are unreadable.
    """
    identity = check_inputs(volume, findings)
    sources = read_sources(volume, identity)
    rejected = frozenset(avoid)
    for salt in range(MAX_SALT + 1):
        salted = replace(sources, identity=replace(sources.identity, salt=salt)) if salt else sources
        results = _write(volume, findings, salted, sc_every_slice=sc_every_slice, predecessors=predecessors)
        taken = [str(ds.SOPInstanceUID) for ds in results.datasets if str(ds.SOPInstanceUID) in rejected]
        if not taken:
            if salt:
                logger.info("series %s: its results take other UIDs (%d): the first ones were rejected earlier",
                            volume.series_instance_uid, salt)
            return results
    raise WriterError(f"the results of series {volume.series_instance_uid} would take UIDs rejected earlier "
                      f"(first {taken[0]}) whatever other set they took ({MAX_SALT} tried)")


def _write(volume: Volume, findings: Findings, sources: Sources, *, sc_every_slice: bool,
           predecessors: Sequence[DocumentReference]) -> Results:
    # one time for every result series of this run, in the source's time zone where it names one (probe 39)
    offset = timezone_offset(sources.unique[0].get("TimezoneOffsetFromUTC"))
    created = now_at(offset)
    seg = build_segmentation(findings, sources, volume.frame_numbers, created=created) if findings.stones else None
    captures = build_secondary_captures(volume, findings, sources, every_slice=sc_every_slice, created=created)
    kos = build_key_objects(volume, findings, sources, created=created) if findings.stones else None
    sr = build_report(volume, findings, sources, seg, created=created, predecessors=predecessors)
    numbers, numbering = image_numbers(sources.datasets, volume.frame_numbers, from_head=volume.index_from_head)
    for ds in (seg, *captures, kos, sr):
        if ds is not None:  # the node's identity in the File Meta Information, as in the files it stores
            ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)  # (not highdicom's: review 21)
            ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
            # highdicom dates an instance's creation by the host's clock; the run's time, in its zone, instead
            ds.InstanceCreationDate, ds.InstanceCreationTime = DA(created.date()), TM(created.time())
            for item in ds.get("ContributingEquipmentSequence", []):  # highdicom's own item: its clock too
                if item.get("ManufacturerModelName") == "highdicom" and "ContributionDateTime" in item:
                    item.ContributionDateTime = created.strftime("%Y%m%d%H%M%S.%f")  # review 36
            if offset is not None:  # every date and time of the result, the study's copied ones too, in it
                ds.TimezoneOffsetFromUTC = offset
    return Results(seg=seg, secondary_captures=captures, sr=sr, kos=kos, image_numbers=numbers,
                   image_numbering=numbering)


def findings_record(findings: Findings, results: Results) -> dict[str, Any]:
    """The findings as a job records them (``GET /api/jobs/{id}``): :meth:`Findings.to_json` with the CT image
    numbers the results give: ``image_numbering`` ("instance", "frame" or "index": counted from 1 at the feet
    end) and each stone's ``image_numbers`` (one per slice index). A client (the upload page) shows these rather
    than work them out again from the stored series, whose instances may differ from the slices the model read
    (a localizer in the series, a duplicate dropped, a multi-frame image): review 19 #8."""
    record = findings.to_json()
    numbers = results.image_numbers
    stones = cast("list[dict[str, object]]", record["stones"])
    record["stones"] = [entry | {"image_numbers": [numbers[k] for k in stone.slice_indices] if numbers else []}
                        for entry, stone in zip(stones, findings.stones, strict=True)]
    record["image_numbering"] = results.image_numbering
    return record


def _file_name(ds: Dataset) -> str:
    return f"{ds.Modality}_{int(ds.SeriesNumber)}_{int(ds.InstanceNumber):04d}.dcm"


def save_results(results: Results, folder: str | Path) -> list[Path]:
    """Write every result as a DICOM file (Part 10) into ``folder``; returns the paths.

    Names are ``<Modality>_<SeriesNumber>_<InstanceNumber>.dcm``, so re-running
    replaces the same files. Each file is written to a temporary name and renamed.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in results.datasets:
        path = out / _file_name(ds)
        partial = path.with_name(path.name + ".partial")
        ds.save_as(partial, enforce_file_format=True)
        os.replace(partial, path)
        paths.append(path)
    logger.info("saved %d result file(s) into %s", len(paths), out)
    return paths
