"""Per-stone sensitivity by size, false positives per series and Dice, for the model and a baseline.

A stone counts as found when a predicted component touches it (its ground-truth
voxels grown by one voxel in-plane, so a one-voxel offset on a 1 mm stone is
not a miss). A predicted component that touches no stone is a false positive;
the mimic it lies on (phlebolith, vascular calcification, ...) is recorded to
say where the model fails. Dice is over all voxels of all series together.
Sensitivities and false positives per series come with 95 % intervals that
resample whole series (``lab.intervals``).

The baseline is the plain rule of the issue: HU above a threshold inside the
body, minus components too large or too long to be a stone (the same size rule
the model's candidate stage uses), every remaining component called a stone.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
from scipy import ndimage

from inference.candidates import CandidateRule, find_candidates
from inference.volume import Volume
from lab.intervals import UnitCounts, with_interval
from lab.synth import Phantom

logger = logging.getLogger(__name__)

SIZE_BINS = (("<3 mm", 0.0, 3.0), ("3-5 mm", 3.0, 5.0), (">5 mm", 5.0, 1e9))


class MissedStone(TypedDict):
    seed: int
    site: str
    diameter_mm: float
    hu: int
    peak_hu_in_image: float | None


class Scores(TypedDict):
    """One predictor's figures over a set of series (JSON as it is)."""

    series: int
    stones: int
    stones_by_size: dict[str, int]
    sensitivity_by_size: dict[str, float | None]
    sensitivity_3mm_and_more: float | None
    sensitivity_all: float | None
    false_positives: int
    false_positives_per_series: float | None
    false_positives_by_mimic: dict[str, int]
    dice: float | None
    missed: list[MissedStone]
    intervals: dict[str, list[float] | None]
    interval_units: str
    per_unit: dict[str, dict[str, int]]


SERIES_RATIOS: dict[str, tuple[str, str, bool]] = {
    **{f"sensitivity {n}": (f"found {n}", f"stones {n}", True) for n, _, _ in SIZE_BINS},
    "sensitivity_3mm_and_more": ("found >=3 mm", "stones >=3 mm", True),
    "false_positives_per_series": ("false_positives", "series", False),
}


@dataclass
class Tally:
    found: Counter = field(default_factory=Counter)
    total: Counter = field(default_factory=Counter)
    false_positives: int = 0
    fp_kinds: Counter = field(default_factory=Counter)
    series: int = 0
    intersection: int = 0
    predicted_voxels: int = 0
    true_voxels: int = 0
    missed: list[MissedStone] = field(default_factory=list)
    units: UnitCounts = field(default_factory=UnitCounts)
    """The counts per series, for the intervals."""

    def as_dict(self) -> Scores:
        sens = {name: (self.found[name] / self.total[name] if self.total[name] else None) for name, _, _ in SIZE_BINS}
        ge3 = sum(self.found[n] for n in ("3-5 mm", ">5 mm"))
        ge3_total = sum(self.total[n] for n in ("3-5 mm", ">5 mm"))
        all_found = sum(self.found.values())
        all_total = sum(self.total.values())
        return {
            "series": self.series,
            "stones": all_total,
            "stones_by_size": {n: self.total[n] for n, _, _ in SIZE_BINS},
            "sensitivity_by_size": sens,
            "sensitivity_3mm_and_more": ge3 / ge3_total if ge3_total else None,
            "sensitivity_all": all_found / all_total if all_total else None,
            "false_positives": self.false_positives,
            "false_positives_per_series": self.false_positives / self.series if self.series else None,
            "false_positives_by_mimic": dict(self.fp_kinds),
            "dice": 2 * self.intersection / (self.predicted_voxels + self.true_voxels)
            if (self.predicted_voxels + self.true_voxels) else None,
            "missed": self.missed[:50],
            "intervals": self.units.intervals(SERIES_RATIOS),
            "interval_units": f"series ({len(self.units)})",
            "per_unit": self.units.as_dict(),
        }


def score_case(phantom: Phantom, predicted: np.ndarray, tally: Tally) -> None:
    """Add one series' result to ``tally``."""
    tally.series += 1
    found_before, total_before, fp_before = Counter(tally.found), Counter(tally.total), tally.false_positives
    _score_stones(phantom, predicted, tally)
    found, total = tally.found - found_before, tally.total - total_before
    ge3 = ("3-5 mm", ">5 mm")
    tally.units.add(f"seed {phantom.seed}", series=1, false_positives=tally.false_positives - fp_before,
                    **{f"found {n}": found[n] for n, _, _ in SIZE_BINS},
                    **{f"stones {n}": total[n] for n, _, _ in SIZE_BINS},
                    **{"found >=3 mm": sum(found[n] for n in ge3), "stones >=3 mm": sum(total[n] for n in ge3)})


def _score_stones(phantom: Phantom, predicted: np.ndarray, tally: Tally) -> None:
    truth = phantom.stone_labels
    pred = predicted > 0
    tally.intersection += int((pred & (truth > 0)).sum())
    tally.predicted_voxels += int(pred.sum())
    tally.true_voxels += int((truth > 0).sum())
    grown = ndimage.grey_dilation(truth, size=(1, 3, 3))
    for i, stone in enumerate(phantom.stones, start=1):
        name = next(n for n, lo, hi in SIZE_BINS if lo <= stone.diameter_mm < hi)
        tally.total[name] += 1
        if pred[grown == i].any():
            tally.found[name] += 1
        else:
            tally.missed.append({"seed": phantom.seed, "site": stone.site, "diameter_mm": round(stone.diameter_mm, 2),
                                 "hu": round(stone.hu), "peak_hu_in_image": float(phantom.hu[truth == i].max())
                                 if (truth == i).any() else None})
    labels, count = ndimage.label(pred, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return
    touching = np.unique(labels[(grown > 0) & pred])
    fp_ids = np.setdiff1d(np.arange(1, count + 1), touching)
    tally.false_positives += int(fp_ids.size)
    if fp_ids.size:
        kinds = ["phlebolith", "vascular_calcification", "bone_island", "bowel_pellet", "streak"]
        mimic_kind = {i + 1: m.kind for i, m in enumerate(phantom.mimics)}
        for fp in fp_ids:
            under = phantom.mimic_labels[labels == fp]
            under = under[under > 0]
            kind = mimic_kind.get(int(np.bincount(under).argmax())) if under.size else "anatomy/other"
            tally.fp_kinds[kind if kind in kinds or kind == "anatomy/other" else "other"] += 1


def baseline_predictor(threshold_hu: float = 200.0) -> Callable[[Volume], np.ndarray]:
    rule = CandidateRule(threshold_hu=threshold_hu)

    def predict(volume: Volume) -> np.ndarray:
        return find_candidates(volume, rule).labels > 0

    return predict


def evaluate(cases: Iterable[Phantom], predictors: dict[str, Callable[[Volume], np.ndarray]],
             progress: bool = False) -> dict[str, Scores]:
    """Score every predictor on every case; returns {predictor name: metrics}."""
    tallies = {name: Tally() for name in predictors}
    iterator = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc="series", unit="series")
    for phantom in iterator:
        volume = phantom.to_volume()
        for name, predict in predictors.items():
            score_case(phantom, predict(volume), tallies[name])
    return {name: tally.as_dict() for name, tally in tallies.items()}


def format_table(results: dict[str, Scores]) -> str:
    """A Markdown table of the headline figures (95 % intervals in brackets)."""

    def f(v: object) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    lines = ["| method | series | stones (<3/3-5/>5) | sens <3 mm | sens 3-5 mm | sens >5 mm | sens >=3 mm | FP/series | Dice |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        sizes = r["stones_by_size"]
        sens, ci = r["sensitivity_by_size"], r["intervals"]
        lines.append(
            f"| {name} | {r['series']} | {'/'.join(str(sizes[n]) for n, _, _ in SIZE_BINS)} | "
            + " | ".join(with_interval(sens[n], ci[f"sensitivity {n}"]) for n, _, _ in SIZE_BINS) + " | "
            f"{with_interval(r['sensitivity_3mm_and_more'], ci['sensitivity_3mm_and_more'])} | "
            f"{with_interval(r['false_positives_per_series'], ci['false_positives_per_series'])} | {f(r['dice'])} |"
        )
    return "\n".join(lines)


def sweep_thresholds(cases: Iterable[Phantom], probability: Callable[[Volume], np.ndarray],
                     thresholds: Iterable[float], progress: bool = False) -> dict[float, Scores]:
    """Score one probability map per case at several thresholds (for choosing the card's threshold
    on validation series, never on the held-out ones)."""
    thresholds = list(thresholds)
    tallies = {t: Tally() for t in thresholds}
    iterator = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc="series", unit="series")
    for phantom in iterator:
        prob = probability(phantom.to_volume())
        for t in thresholds:
            score_case(phantom, prob >= t, tallies[t])
    return {t: tally.as_dict() for t, tally in tallies.items()}
