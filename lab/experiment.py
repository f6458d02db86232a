"""One prepared training experiment: phantoms in parallel, several model variants, thresholds per
component group chosen on validation series, everything written into one folder.

    KERAS_BACKEND=jax uronode experiment --out DIR --train 1000:1480 --val 60000:60048

Runs on CPUs (TensorFlow backend) or a GPU (JAX backend: the code uses ``keras.ops``
only, and the ``.keras`` files it writes load under TensorFlow, the node's runtime).

1. Worker processes generate the training phantoms (``lab.train.training_phantom``,
   a raised share of stones under 3 mm) and the validation phantoms (the generator's
   defaults, like the held-out set, seeds never used for training or held-out), run the
   candidate stage (HU and local-contrast candidates) and cut patches for the widest
   input any variant needs.
2. Each variant is trained on the same patches; its validation patches are scored;
   every candidate component of every validation series gets a score (component head,
   or highest pixel probability) and what it touches (a stone, a mimic).
3. Thresholds per group (small dense, large dense, local-contrast components) are
   chosen on the validation series: the most stones (those under 3 mm counted once,
   the others twice) at no more than ``--fp-cap`` false positives per series.
4. ``report.json`` is rewritten after every variant (a time limit loses only the
   variants not reached); ``<variant>.keras`` per variant; ``model.keras`` and
   ``card.json`` of the best.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from inference.candidates import CONTRAST_RULE, CandidateRule, find_candidates
from inference.components import ComponentThresholds
from inference.network import CASCADE_SPEC, InputSpec, cut_inputs
from lab.dataset import PatchSet, patches_from_phantom
from lab.evaluate import SIZE_BINS
from lab.train import TRAINING_SMALL_STONE_FRACTION

logger = logging.getLogger(__name__)

GRID = np.array([0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75,
                 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 1.01])
"""Thresholds tried per group; 1.01 switches a group off."""


@dataclass(frozen=True)
class Variant:
    name: str
    spec: InputSpec
    classifier: bool
    base: int
    epochs: int


VARIANTS = {
    "c2w-cls-b12": Variant("c2w-cls-b12", CASCADE_SPEC, True, 12, 30),
    "c2w-cls-b8": Variant("c2w-cls-b8", CASCADE_SPEC, True, 8, 30),
    "c1-cls-b8": Variant("c1-cls-b8", InputSpec(context=1), True, 8, 30),
    "c1-seg-b8": Variant("c1-seg-b8", InputSpec(context=1), False, 8, 30),
}


def _train_job(args: tuple[int, float, int]) -> PatchSet:
    from lab.train import training_phantom

    seed, small_fraction, max_contrast = args
    return patches_from_phantom(training_phantom(seed, small_fraction), CONTRAST_RULE, CASCADE_SPEC, max_contrast)


def _window(plane: np.ndarray, r: int, c: int, size: int) -> np.ndarray:
    out = np.zeros((size, size), dtype=plane.dtype)
    half = size // 2
    r0, c0 = r - half, c - half
    rs0, cs0 = max(0, r0), max(0, c0)
    rs1, cs1 = min(plane.shape[0], r0 + size), min(plane.shape[1], c0 + size)
    out[rs0 - r0:rs1 - r0, cs0 - c0:cs1 - c0] = plane[rs0:rs1, cs0:cs1]
    return out


def _val_job(seed: int) -> dict[str, Any]:
    """A validation series reduced to what the threshold choice needs."""
    from lab.synth import generate_phantom

    phantom = generate_phantom(seed)
    volume = phantom.to_volume()
    found = find_candidates(volume, CONTRAST_RULE)
    centres, owners = found.centres, found.component_of_centre
    patches = cut_inputs(volume.hu, centres, CASCADE_SPEC).astype(np.float16)
    own = np.stack([_window(found.labels[k], r, c, CASCADE_SPEC.patch) == o
                    for (k, r, c), o in zip(centres, owners, strict=True)]) if len(centres) else \
        np.zeros((0, CASCADE_SPEC.patch, CASCADE_SPEC.patch), bool)
    truth = phantom.stone_labels
    grown = ndimage.grey_dilation(truth, size=(1, 3, 3))
    kinds = {i + 1: m.kind for i, m in enumerate(phantom.mimics)}
    comps = []
    for i, box in enumerate(ndimage.find_objects(found.labels, max_label=found.count)):
        if box is None:
            comps.append({"voxels": 0, "contrast": False, "stones": [], "kind": None})
            continue
        sel = found.labels[box] == i + 1
        stones = sorted(int(s) for s in np.unique(grown[box][sel]) if s > 0)
        under = phantom.mimic_labels[box][sel]
        under = under[under > 0]
        kind = kinds.get(int(np.bincount(under).argmax())) if under.size else "anatomy/other"
        comps.append({"voxels": int(sel.sum()), "contrast": found.dense_count >= 0 and i + 1 > found.dense_count,
                      "stones": stones, "kind": None if stones else kind})
    stone_rows = [{"diameter_mm": s.diameter_mm, "site": s.site, "hu": s.hu,
                   "peak_hu": float(phantom.hu[truth == j].max()) if (truth == j).any() else None}
                  for j, s in enumerate(phantom.stones, start=1)]
    return {"seed": seed, "patches": patches, "owners": owners, "own": own, "comps": comps, "stones": stone_rows}


def _size_bin(d: float) -> str:
    return next(n for n, lo, hi in SIZE_BINS if lo <= d < hi)


def component_records(val: list[dict[str, Any]], seg: list[np.ndarray], cls: list[np.ndarray | None],
                      small_voxels: int) -> dict[str, Any]:
    """Per component of every validation series: group, both scores, the stones it touches."""
    groups, s_cls, s_pix, touches, kinds = [], [], [], [], []
    stone_bins: list[str] = []
    stone_offset = 0
    for case, p_seg, p_cls in zip(val, seg, cls, strict=True):
        n = len(case["comps"])
        pix = np.zeros(n, np.float32)
        cl = np.zeros(n, np.float32)
        if len(case["owners"]):
            per_patch = np.where(case["own"], p_seg, 0).reshape(len(p_seg), -1).max(axis=1)
            np.maximum.at(pix, case["owners"] - 1, per_patch)
            if p_cls is not None:
                np.maximum.at(cl, case["owners"] - 1, p_cls)
        for i, comp in enumerate(case["comps"]):
            if comp["voxels"] == 0:
                continue
            groups.append("contrast" if comp["contrast"] else
                          ("dense_small" if comp["voxels"] <= small_voxels else "dense_large"))
            s_cls.append(cl[i])
            s_pix.append(pix[i])
            touches.append([stone_offset + s - 1 for s in comp["stones"]])
            kinds.append(comp["kind"])
        stone_bins += [_size_bin(s["diameter_mm"]) for s in case["stones"]]
        stone_offset += len(case["stones"])
    return {"groups": np.array(groups), "classifier": np.array(s_cls), "pixel": np.array(s_pix),
            "touches": touches, "kinds": kinds, "stone_bins": np.array(stone_bins), "series": len(val)}


def sweep(records: dict[str, Any], score: str, fp_cap: float) -> dict[str, Any]:
    """The best thresholds per group (see the module's text) and the figures they give."""
    scores = records[score]
    groups = records["groups"]
    n_stones = len(records["stone_bins"])
    small = records["stone_bins"] == "<3 mm"
    ge3 = ~small
    per_group: dict[str, list[tuple[int, np.ndarray]]] = {}
    for g in ("dense_small", "dense_large", "contrast"):
        idx = np.nonzero(groups == g)[0]
        rows = []
        for t in GRID:
            kept = idx[scores[idx] >= t]
            found = np.zeros(n_stones, bool)
            fp = 0
            for i in kept:
                if records["touches"][i]:
                    found[records["touches"][i]] = True
                else:
                    fp += 1
            rows.append((fp, found))
        per_group[g] = rows
    combos = []
    for a, b, c in itertools.product(range(len(GRID)), repeat=3):
        fp = per_group["dense_small"][a][0] + per_group["dense_large"][b][0] + per_group["contrast"][c][0]
        if fp > fp_cap * records["series"]:
            continue
        found = per_group["dense_small"][a][1] | per_group["dense_large"][b][1] | per_group["contrast"][c][1]
        value = int(found[small].sum()) + 2 * int(found[ge3].sum())
        combos.append(((value, -fp), (a, b, c), fp, found))
    assert combos
    top = max(key for key, *_ in combos)
    optimal = [(idx, fp, found) for key, idx, fp, found in combos if key == top]
    # ties (a plateau of equally good thresholds): the combination nearest the plateau's middle,
    # not its edge, so that a shift of the data moves it least
    middle = np.median(np.array([idx for idx, _, _ in optimal]), axis=0)
    (a, b, c), fp, found = min(optimal, key=lambda o: float(np.abs(np.array(o[0]) - middle).sum()))
    kept_fp_kinds: dict[str, int] = {}
    limits = {"dense_small": GRID[a], "dense_large": GRID[b], "contrast": GRID[c]}
    for i, g in enumerate(groups):
        if scores[i] >= limits[g] and not records["touches"][i]:
            kept_fp_kinds[records["kinds"][i]] = kept_fp_kinds.get(records["kinds"][i], 0) + 1
    return {
        "score": score,
        "thresholds": {k: float(v) for k, v in limits.items()},
        "plateau": {g: [float(GRID[min(o[0][i] for o in optimal)]), float(GRID[max(o[0][i] for o in optimal)])]
                    for i, g in enumerate(("dense_small", "dense_large", "contrast"))},
        "false_positives_per_series": fp / records["series"],
        "false_positives_by_kind": kept_fp_kinds,
        "sensitivity_<3mm": float(found[small].mean()) if small.any() else None,
        "sensitivity_>=3mm": float(found[ge3].mean()) if ge3.any() else None,
        "stones_<3mm": int(small.sum()), "stones_>=3mm": int(ge3.sum()),
        "reachable_<3mm": float(np.isin(np.nonzero(small)[0], sum(records["touches"], [])).mean())
        if small.any() else None,
    }


def _arg_text(value: object) -> str:
    """An argument as the report records it (a seed range as it was given, LO:HI)."""
    return f"{value.start}:{value.stop}" if isinstance(value, range) else str(value)


def _variants_and_budgets(args: argparse.Namespace) -> tuple[list[Variant], list[float]] | None:
    """``--variants`` and ``--train-seconds`` read; None, with the reason on stderr, for a name that is no
    variant or a budget that is no number (found before a phantom is generated, not after)."""
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        print(f"uronode experiment: unknown variant {', '.join(map(repr, unknown))} "
              f"(known: {', '.join(VARIANTS)})", file=sys.stderr)
        return None
    try:
        budgets = [float(b) for b in args.train_seconds.split(",")] if args.train_seconds else []
    except ValueError:
        print(f"uronode experiment: --train-seconds takes seconds separated by commas, not {args.train_seconds!r}",
              file=sys.stderr)
        return None
    return [VARIANTS[name] for name in names], budgets


def run(args: argparse.Namespace) -> int:
    from inference.network import preprocess
    from lab.train import make_card, select_channels, train_model, write_card

    t_start = time.monotonic()
    planned = _variants_and_budgets(args)
    if planned is None:
        return 2
    variants, budgets = planned
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    # Keras (and with it JAX or TensorFlow) only after the worker processes are forked
    report: dict[str, Any] = {"backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
                              "args": {k: _arg_text(v) for k, v in vars(args).items()},
                              "rule": CONTRAST_RULE.card(), "variants": {}}

    def save_report() -> None:
        (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")

    train_lo, train_hi = args.train.start, args.train.stop
    val_lo, val_hi = args.val.start, args.val.stop
    ctx = mp.get_context("fork")
    t0 = time.monotonic()
    with ctx.Pool(args.workers) as pool:
        val_async = pool.map_async(_val_job, range(val_lo, val_hi))
        parts = []
        jobs = [(s, args.small_fraction, args.max_contrast_negatives) for s in range(train_lo, train_hi)]
        for part in pool.imap_unordered(_train_job, jobs):
            parts.append(part)
            if time.monotonic() - t0 > args.generate_budget:
                logger.warning("generation budget reached after %d phantoms", len(parts))
                break
        val = val_async.get()
        pool.terminate()
    data = PatchSet.concatenate(parts)
    del parts
    assert data.centre_stone is not None and data.contrast is not None  # patches_from_phantom marks both
    report["data"] = {"train_phantoms": len(np.unique(data.seeds)), "patches": len(data),
                      "with_stone": int(data.has_stone.sum()),
                      "centre_stone": int(np.sum(data.centre_stone)),
                      "contrast_patches": int(np.sum(data.contrast)),
                      "validation_series": len(val), "generate_s": round(time.monotonic() - t0, 1)}
    logger.warning("data: %s", report["data"])
    save_report()
    import keras

    best_value = None
    for number, v in enumerate(variants):
        name = v.name
        if time.monotonic() - t_start > args.stop_after:
            logger.warning("time budget: skipping %s", name)
            continue
        t1 = time.monotonic()
        epochs = args.epochs or v.epochs
        budget = budgets[min(number, len(budgets) - 1)] if budgets else None
        model, card = train_model(
            data, None, epochs=epochs, base=v.base, batch=args.batch, spec=v.spec, data_spec=CASCADE_SPEC,
            classifier=v.classifier, rule=CONTRAST_RULE, learning_rate=args.learning_rate, small_repeat=args.small_repeat,
            verbose=2, seed=0, time_budget_s=budget, loader_workers=args.loader_workers,
            training_description=(
                f"{report['data']['train_phantoms']} generated training phantoms (seeds from {train_lo}, "
                f"2-6 stones, {args.small_fraction:.0%} of them under 3 mm, 5-13 mimics), "
                f"{report['data']['patches']} candidate patches, {report['data']['with_stone']} with stone; "
                f"trained with the Keras {keras.backend.backend()} backend"),
        )
        train_s = time.monotonic() - t1
        model.save(out / f"{name}.keras")
        # one predict over every validation patch: one compiled shape (JAX compiles per shape)
        counts = [len(case["owners"]) for case in val]
        seg: list[np.ndarray] = []
        cls: list[np.ndarray | None] = []
        if sum(counts):
            raw = np.concatenate([case["patches"] for case in val if len(case["owners"])])
            x = np.concatenate([preprocess(select_channels(raw[i:i + 4096], CASCADE_SPEC, v.spec).astype(np.float32),
                                           v.spec) for i in range(0, len(raw), 4096)])
            y = model.predict(x, batch_size=1024, verbose=0)
            all_seg = np.asarray(y[0] if v.classifier else y)[..., 0]
            all_cls = np.asarray(y[1])[:, 0] if v.classifier else None
            del x, raw
        else:
            all_seg = np.zeros((0, v.spec.patch, v.spec.patch), np.float32)
            all_cls = np.zeros(0, np.float32) if v.classifier else None
        at = 0
        for n in counts:
            seg.append(all_seg[at:at + n])
            cls.append(all_cls[at:at + n] if all_cls is not None else None)
            at += n
        results = {}
        for small_voxels in (15, 30, 60):
            records = component_records(val, seg, cls, small_voxels)
            for score in (("classifier", "pixel") if v.classifier else ("pixel",)):
                r = sweep(records, score, args.fp_cap)
                r["small_voxels"] = small_voxels
                results[f"{score}-{small_voxels}"] = r
        choice_key = max(results, key=lambda k: (
            (results[k]["sensitivity_<3mm"] or 0) + 2 * (results[k]["sensitivity_>=3mm"] or 0),
            -results[k]["false_positives_per_series"]))
        choice = results[choice_key]
        epochs = card["training"]["epochs"]
        report["variants"][name] = {"train_s": round(train_s, 1), "epochs": epochs,
                                    "history": card["training"]["history"], "sweeps": results,
                                    "choice": choice_key, "parameters": card["architecture"]["parameters"],
                                    "gflop_per_patch": card["architecture"]["gflop_per_patch"]}
        value = ((choice["sensitivity_<3mm"] or 0) + 2 * (choice["sensitivity_>=3mm"] or 0),
                 -choice["false_positives_per_series"])
        logger.warning("%s: %.0f s, %s", name, train_s, {k: choice[k] for k in choice if k != "thresholds"})
        if best_value is None or value > best_value:
            best_value = value
            th = choice["thresholds"]
            thresholds = ComponentThresholds(pixel=0.5, dense_small=th["dense_small"], dense_large=th["dense_large"],
                                             contrast=th["contrast"], small_voxels=choice["small_voxels"],
                                             score=choice["score"])
            rule = CONTRAST_RULE if th["contrast"] <= 1.0 else CandidateRule()
            card = make_card(model, base=v.base, epochs=epochs, training_description=card["training"]["data"],
                             history=card["training"]["history"], threshold=0.5, spec=v.spec, rule=rule,
                             version="2.0.0")
            card["components"] = thresholds.card()
            card["training"]["variant"] = name
            card["training"]["validation"] = {"seeds": f"{val_lo}-{val_hi - 1}", **choice}
            shutil.copyfile(out / f"{name}.keras", out / "model.keras")
            write_card(out, card)
            report["best"] = name
        save_report()
    report["total_s"] = round(time.monotonic() - t_start, 1)
    save_report()
    return 0


def validate(args: argparse.Namespace) -> int:
    """``--validate MODEL``: a trained model on more validation series, local-contrast candidates
    included: with the card's dense thresholds fixed, what each contrast threshold adds."""
    from inference.errors import ModelError
    from inference.network import preprocess
    from inference.runtime import ModelCard, find_model
    from lab.train import select_channels

    # the model found (a ModelError for a wrong name) before a validation series is generated
    folder = find_model(args.validate)
    card = ModelCard.read(folder)
    model_file = folder / card.files.get("model", "model.keras")
    if not model_file.is_file():
        raise ModelError(f"{folder.name}: {model_file.name} is missing")
    val_lo, val_hi = args.val.start, args.val.stop
    # the workers are forked before TensorFlow starts its threads
    with mp.get_context("fork").Pool(args.workers) as pool:
        val = pool.map(_val_job, range(val_lo, val_hi))
    import keras

    keras_model = keras.saving.load_model(model_file, compile=False)
    spec = InputSpec.from_card(card.preprocessing, card.input.get("patch"))
    thresholds = ComponentThresholds.from_card(card.raw, card.threshold)
    seg: list[np.ndarray] = []
    cls: list[np.ndarray | None] = []
    for case in val:
        if not len(case["owners"]):
            seg.append(np.zeros((0, spec.patch, spec.patch), np.float32))
            cls.append(np.zeros(0, np.float32))
            continue
        x = preprocess(select_channels(case["patches"], CASCADE_SPEC, spec).astype(np.float32), spec)
        n = len(x)
        # padded to whole batches: one compiled shape (JAX compiles once per shape)
        x = np.concatenate([x, np.zeros((-n % 256, *x.shape[1:]), np.float32)])
        y = keras_model.predict(x, batch_size=256, verbose=0)
        seg.append(np.asarray(y[0])[:n, ..., 0])
        cls.append(np.asarray(y[1])[:n, 0])
    records = component_records(val, seg, cls, thresholds.small_voxels)
    chosen = sweep(records, thresholds.score, args.fp_cap)
    print("thresholds chosen on these series:", chosen)
    scores = records[thresholds.score]
    groups = records["groups"]
    small = records["stone_bins"] == "<3 mm"
    dense_kept = ((groups == "dense_small") & (scores >= thresholds.dense_small)) | \
                 ((groups == "dense_large") & (scores >= thresholds.dense_large))
    rows = []
    for t in GRID:
        kept = dense_kept | ((groups == "contrast") & (scores >= t))
        found = np.zeros(len(small), bool)
        fp = 0
        for i in np.nonzero(kept)[0]:
            if records["touches"][i]:
                found[records["touches"][i]] = True
            else:
                fp += 1
        rows.append({"contrast_threshold": float(t), "false_positives_per_series": fp / len(val),
                     "found_<3mm": int(found[small].sum()), "found_>=3mm": int(found[~small].sum())})
    contrast_only = [s for s, (g, tt) in enumerate(zip(groups, records["touches"], strict=True))
                     if g == "contrast" and tt]
    report = {"model": str(args.validate), "seeds": f"{val_lo}-{val_hi - 1}", "stones_<3mm": int(small.sum()),
              "stones_>=3mm": int((~small).sum()), "contrast_components": int((groups == "contrast").sum()),
              "contrast_components_on_stones": len(contrast_only),
              "stones": [s for case in val for s in case["stones"]], "by_contrast_threshold": rows,
              "chosen": chosen}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "validate.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    if args.write_thresholds:
        from lab.train import write_card

        raw = dict(card.raw)
        raw["components"] = {**thresholds.card(), **chosen["thresholds"]}
        raw["candidates"] = (CONTRAST_RULE if chosen["thresholds"]["contrast"] <= 1.0 else CandidateRule()).card()
        raw.setdefault("training", {})["validation"] = {"seeds": report["seeds"], **chosen}
        write_card(folder, raw)
        print(f"thresholds written into {folder / 'card.json'}")
    for r in rows:
        print(r)
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    """``uronode experiment`` (its arguments: ``lab.cli``): train the variants, or with ``--validate``
    choose a model's thresholds."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stdout)
    if args.small_fraction is None:
        args.small_fraction = TRAINING_SMALL_STONE_FRACTION
    return validate(args) if args.validate else run(args)
