"""The user's own labelled cases for ``uronode train --data DIR``: a CT series and its stone mask.

Layout (one folder per case, any names, files found recursively)::

    DIR/
      case-001/   the CT series' DICOM files (one series) + one DICOM SEG file
      case-002/   ...

The SEG (Segmentation Storage, binary or fractional) must reference the CT
series (ReferencedSeriesSequence) and its frames the CT's SOP Instance UIDs, as
a SEG made by a viewer (3D Slicer, OHIF) or by ``uronode predict`` does; every
segment of it counts as stone. A slice that has no frame in the SEG has no stone.
This is the seed paper's training data (axial images with stone masks) as DICOM
keeps it, with the geometry the candidate stage needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from inference.errors import VolumeError
from inference.volume import Volume, load_volume

logger = logging.getLogger(__name__)

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


class LabelledDataError(VolumeError):
    """A case folder that cannot serve as training data; ``reason`` says why."""


@dataclass(frozen=True, eq=False)
class LabelledCase:
    name: str
    """The case folder's name."""
    volume: Volume
    mask: np.ndarray
    """bool (slices, rows, columns), aligned with ``volume.hu``."""
    seg_path: Path

    @property
    def stone_voxels(self) -> int:
        return int(self.mask.sum())


def find_case_folders(root: Path) -> list[Path]:
    """The case folders of ``root`` (its sub-folders, sorted); ``root`` itself when it has none."""
    if not root.is_dir():
        raise LabelledDataError(f"{root} is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return folders or [root]


def _dicom_files(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    out: list[tuple[Path, pydicom.Dataset]] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        if "SOPClassUID" in ds:
            out.append((path, ds))
    return out


def load_case(folder: Path) -> LabelledCase:
    """The CT volume of ``folder`` and its stone mask from the SEG there (see the module's text)."""
    import highdicom as hd

    files = _dicom_files(folder)
    segs = [p for p, ds in files if str(ds.SOPClassUID) == SEG_STORAGE]
    ct = [p for p, ds in files if str(ds.SOPClassUID) != SEG_STORAGE]
    if len(segs) != 1:
        raise LabelledDataError(f"{folder.name}: {len(segs)} DICOM SEG files, one is needed")
    if not ct:
        raise LabelledDataError(f"{folder.name}: no CT images")
    volume = load_volume(ct)
    if len(set(volume.sop_instance_uids)) != len(volume.sop_instance_uids):
        raise LabelledDataError(f"{folder.name}: multi-frame CT is not supported for training; "
                                "convert it to single-frame images")
    seg = hd.seg.segread(segs[0])
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    if referenced and volume.series_instance_uid not in referenced:
        raise LabelledDataError(f"{folder.name}: the SEG references series {sorted(referenced)}, "
                                f"the images are series {volume.series_instance_uid}")
    uids = list(volume.sop_instance_uids)
    in_seg = {str(uids_[2]) for uids_ in seg.get_source_image_uids()}
    if not in_seg & set(uids):
        raise LabelledDataError(f"{folder.name}: no frame of the SEG refers to an image of the series")
    present = [uid for uid in uids if uid in in_seg]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=present, combine_segments=False, assert_missing_frames_are_empty=True)
    mask = np.zeros(volume.shape, dtype=bool)
    index = {uid: k for k, uid in enumerate(uids)}
    for uid, frame in zip(present, pixels, strict=True):
        mask[index[uid]] = np.asarray(frame).reshape(*volume.shape[1:], -1).any(axis=-1)
    if not mask.any():
        logger.warning("case %s: the SEG marks no stone (the case still gives negative examples)", folder.name)
    return LabelledCase(folder.name, volume, mask, segs[0])
