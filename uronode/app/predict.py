"""``uronode predict``: the model on DICOM files or folders, no node needed.

The runtime only (``inference``: volume, pipeline, previews, writers); the model lab's commands
(``synth``, ``train``, ``evaluate``, ``experiment``) are registered by ``lab.cli``. Output for
people goes to stdout here. A model named on the line is looked up as the node looks up its own
(:func:`inference.runtime.find_model`), so that one added to ``inference.models_dir`` can be tried before the node runs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from uronode.files import out_folder

if TYPE_CHECKING:
    from inference.volume import Volume

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("predict", help="find stones in DICOM files or folders, no server needed")
    p.add_argument("paths", nargs="+", type=Path, help="DICOM files and/or folders")
    p.add_argument("--out", type=out_folder, required=True,
                   help="folder for findings.json, previews and the SEG, SC, SR and key-object files (<series>/dicom/)")
    p.add_argument("--model", default=None,
                   help="model folder, or name under inference.models_dir or the models uronode ships with "
                        "(default: default)")
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                   help="the node's TOML config file, for inference.models_dir (also URONODE_CONFIG)")
    p.add_argument("--threshold", type=probability, default=None,
                   help="one score threshold between 0 and 1 for every component instead of the card's")
    p.add_argument("--no-previews", action="store_true")
    p.add_argument("--no-dicom", action="store_true", help="do not write the SEG, Secondary Capture, SR and key-object files")
    p.set_defaults(func=cmd_predict)


def probability(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1 (a threshold of 50 or 130 would find nothing)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1 (a score threshold, e.g. 0.5)")
    return value


NUMBERS_HEADER = "CT images (InstanceNumber)"
"""The table's column of the images a stone is on: the numbers a viewer shows for the CT images (the frame
numbers of a multi-frame CT, "frames 5-7"), not the volume's slice indices, which run along the slices' normal
(from the feet in a head-first series) and differ from the image numbers of a series numbered head first."""


def image_numbers(volume: Volume) -> tuple[tuple[int, ...], str]:
    """Each slice's CT image number and what the numbers are (``inference.writers.sc.image_numbers``, which
    numbers the overlays alike): InstanceNumber, frame numbers of a multi-frame CT, or, where neither tells
    the slices apart or a header cannot be read again, the volume's slice indices from 1 ("index")."""
    from pydicom.dataset import Dataset
    from pydicom.errors import InvalidDicomError

    from inference.volume import read_dicom, slice_numbers
    from inference.writers.sc import image_numbers as numbers_of

    headers: dict[str, Dataset] = {}
    try:
        for path in dict.fromkeys(volume.source_paths):
            headers[path] = read_dicom(path, stop_before_pixels=True,
                                       specific_tags=["SOPClassUID", "SeriesInstanceUID", "InstanceNumber",
                                                      "NumberOfFrames"])
    except (InvalidDicomError, OSError, EOFError):
        return slice_numbers([None] * volume.shape[0], volume.frame_numbers, False, from_head=volume.index_from_head)
    return numbers_of([headers[path] for path in volume.source_paths], volume.frame_numbers,
                      from_head=volume.index_from_head)


def _images_cell(numbers: tuple[int, ...], kind: str, slices: tuple[int, ...]) -> str:
    from inference.volume import number_ranges

    text = number_ranges([numbers[k] for k in slices])
    return {"instance": text, "frame": f"frames {text}"}.get(kind, f"slices {text}")


IMAGE_FILE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
"""Picture files: not DICOM, so not read by predict; ``uronode evaluate --images`` reads them."""


MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
"""A DICOMDIR's SOP Class: a CD's index of its files, not an image; its images are read from their own files."""


def _is_dicomdir(path: Path) -> bool:
    if path.name.upper() == "DICOMDIR":
        return True
    try:
        import pydicom

        meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["MediaStorageSOPClassUID"]).file_meta
    except Exception:  # noqa: BLE001 (any file that cannot be read as DICOM is simply not a DICOMDIR)
        return False
    return str(getattr(meta, "MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY


def skipped_files(paths: list[Path], groups: dict[str, list[Path]]) -> tuple[list[Path], list[Path]]:
    """(the files under ``paths`` in none of the DICOM series ``groups``, the picture files among them). A CD's
    DICOMDIR is not counted: it indexes the images, which are read from their own files."""
    from inference.volume import find_dicom_files

    grouped = {p for series in groups.values() for p in series}
    skipped = [p for p in find_dicom_files(paths) if p not in grouped and not _is_dicomdir(p)]
    return skipped, [p for p in skipped if p.suffix.lower() in IMAGE_FILE_SUFFIXES]


def skipped_line(skipped: list[Path], pictures: list[Path]) -> str:
    """What predict says of the files it skipped: how many, and where picture files go instead."""
    text = f"{len(skipped)} file{'s' if len(skipped) != 1 else ''} skipped, not DICOM"
    if pictures:
        kinds = ", ".join(sorted({p.suffix.lower() for p in pictures}))
        text += (f" ({len(pictures)} of them image files: {kinds}). uronode predict takes DICOM; image files "
                 "are evaluated with `uronode evaluate --images DIR` (with their YOLO box files, if any)")
    return text


def _table(rows: list[list[str]]) -> str:
    """The rows as columns, each as wide as its widest cell (a short row is filled with empty cells)."""
    columns = len(rows[0])
    rows = [r + [""] * (columns - len(r)) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(columns)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from inference.errors import VolumeError
    from inference.pipeline import Pipeline
    from inference.postprocess import SIDE_WORDS, shown
    from inference.preview import write_previews
    from inference.runtime import find_model
    from inference.volume import group_series, load_volume
    from inference.writers import WriterError, save_results, write_results

    model = find_model(args.model, getattr(args, "config", None))  # before any file is read
    groups = group_series(args.paths)
    skipped, pictures = skipped_files(args.paths, groups)
    if not groups:
        print("no DICOM files found" + (f": {skipped_line(skipped, pictures)}" if skipped else ""), file=sys.stderr)
        return 2
    pipeline = Pipeline(model, threshold=args.threshold)
    args.out.mkdir(parents=True, exist_ok=True)
    done: list[dict[str, object]] = []
    rejected: list[dict[str, str]] = []
    report: dict[str, object] = {"model": {"name": pipeline.name, "version": pipeline.version}, "series": done,
                                 "rejected": rejected}
    if skipped:
        report["skipped_not_dicom"] = {"files": len(skipped), "image_files": len(pictures),
                                       "image_files_go_to": "uronode evaluate --images DIR"}
    rows = [["series", "stone", "side", "length mm", "in-plane mm", "volume mm3", "mean HU", "max HU",
             NUMBERS_HEADER]]
    unnumbered: list[int] = []
    cautioned: list[tuple[int, str]] = []
    total_files = sum(len(v) for v in groups.values())
    with tqdm(total=total_files, unit="file", desc="reading", disable=total_files <= 5) as bar:
        for number, (uid, paths) in enumerate(sorted(groups.items()), start=1):
            try:
                volume = load_volume(paths, progress=bar.update)
            except VolumeError as exc:
                logger.warning("series %d skipped: %s", number, exc.reason)
                rejected.append({"series_instance_uid": uid, "reason": exc.reason})
                rows.append([f"#{number}", "-", "rejected: " + exc.reason])
                continue
            findings = pipeline.run(volume)
            entry = findings.to_json()
            entry["slices"] = volume.shape[0]
            numbers, kind = image_numbers(volume)
            entry["image_numbering"] = kind  # "instance", "frame" or "index" (image_numbers)
            # the findings' own stones (a lone image's without volume), each with its images' numbers
            entry["stones"] = [s.to_json(lone=findings.lone) | {"image_numbers": [numbers[k] for k in s.slice_indices]}
                               for s in findings.stones]
            if findings.stones and kind == "index":
                unnumbered.append(number)
            cautioned.extend((number, c) for c in findings.cautions)
            if not args.no_previews:
                previews = write_previews(volume, findings, args.out / uid)
                entry["previews"] = [str(p.relative_to(args.out)) for p in previews]
            if not args.no_dicom:
                try:
                    written = save_results(write_results(volume, findings), args.out / uid / "dicom")
                    entry["dicom"] = [str(p.relative_to(args.out)) for p in written]
                except WriterError as exc:
                    logger.warning("series %d: no DICOM results: %s", number, exc.reason)
            done.append(entry)
            if not findings.stones:
                rows.append([f"#{number}", "none"])
            for i, s in enumerate(findings.stones, start=1):
                side = SIDE_WORDS.get(s.side, s.side)
                lone = findings.lone  # one plane of a stone: no length beyond it, no volume (the SR gives neither)
                rows.append([f"#{number}", str(i), side, "-" if lone else shown(s.length_mm, 1),
                             shown(s.max_diameter_mm, 1), "-" if lone else shown(s.volume_mm3, 1),
                             shown(s.mean_hu, 0), shown(s.max_hu, 0), _images_cell(numbers, kind, s.slice_indices)])
    (args.out / "findings.json").write_text(json.dumps(report, indent=2))
    print(_table(rows))
    for number in unnumbered:
        print(f"#{number}: its images have no InstanceNumbers that tell them apart; 'slices' counts the series' "
              "slices from the feet, from 1")
    for number, caution in cautioned:
        print(f"#{number}: caution: {caution}")
    if skipped:
        print(skipped_line(skipped, pictures))
    print(f"findings written to {args.out / 'findings.json'}")
    return 1 if rejected and not done else 0
