"""All results of one series at once, and saving them as files."""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID

from inference.postprocess import Findings
from inference.volume import Volume
from inference.writers.kos import build_key_objects
from inference.writers.sc import build_secondary_captures
from inference.writers.seg import build_segmentation
from inference.writers.sources import check_inputs, read_sources
from inference.writers.sr import build_report
from uronode.dicomfile import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Results:
    """The DICOM results of one series: a SEG, the overlays, the key objects and the SR.

    ``seg`` and ``kos`` are None, and ``secondary_captures`` empty, when no stone was found.
    """

    seg: Dataset | None
    secondary_captures: tuple[Dataset, ...]
    sr: Dataset
    kos: Dataset | None = None

    @property
    def datasets(self) -> tuple[Dataset, ...]:
        """Every result: the SEG first, the overlays, the key objects, the SR last (it references the SEG)."""
        seg = (self.seg,) if self.seg is not None else ()
        kos = (self.kos,) if self.kos is not None else ()
        return seg + self.secondary_captures + kos + (self.sr,)


def write_results(volume: Volume, findings: Findings, *, sc_every_slice: bool = False) -> Results:
    """SEG, Secondary Capture overlays, key object selection and SR of ``findings`` on ``volume``.

    Overlays are made for the slices with a stone, or for every slice with
    ``sc_every_slice``; the key objects flag the CT slices with a stone; a series
    without stones gets only the SR (in both modes).
    Patient and study attributes come from the source instances named by
    ``volume.source_paths``. Raises ``WriterError`` with the reason when the
    findings do not belong to the volume, name no model, or the sources are unreadable.
    """
    identity = check_inputs(volume, findings)
    sources = read_sources(volume, identity)
    created = datetime.datetime.now()  # one time for every result series of this run
    seg = build_segmentation(findings, sources, volume.frame_numbers, created=created) if findings.stones else None
    captures = (
        build_secondary_captures(volume, findings, sources, every_slice=sc_every_slice, created=created)
        if findings.stones else ()
    )
    kos = build_key_objects(volume, findings, sources, created=created) if findings.stones else None
    sr = build_report(volume, findings, sources, seg, created=created)
    return Results(seg=seg, secondary_captures=captures, sr=sr, kos=kos)


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
        # the node's identity in the File Meta Information, as in the files it stores (not highdicom's)
        ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        ds.save_as(partial, enforce_file_format=True)
        os.replace(partial, path)
        paths.append(path)
    logger.info("saved %d result file(s) into %s", len(paths), out)
    return paths
