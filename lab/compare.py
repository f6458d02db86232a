"""Two models' figures on the same sets, paired: is the difference more than the sets' own noise?

``uronode compare A.json B.json`` reads two ``uronode evaluate --out`` files
(or two cards' ``metrics``) and, for every set both measured with the model
(real images, lone stone-free slices in HU and as 8-bit images, generated
series, the real CT with inserted stones), prints each headline figure of A and B, A - B and the
difference's 95 % interval: the units (examinations, series, blocks of
slices) resampled once for both models, so the cases both find hard cancel
out (``lab.intervals.paired_difference``). A difference whose interval holds
0 is not shown by these sets.

It reads figures only: two results measured on different sets are refused:
another split, other seeds, another window or pixel size (the summaries'
descriptions of their sets differ), or units that hold other numbers of
stones, images or slices. Sets only one of the two measured are listed, not
compared.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypedDict

from lab.evaluate import SERIES_RATIOS
from lab.imageeval import IMAGE_RATIOS, SLICE_RATIOS
from lab.intervals import paired_difference


class Difference(TypedDict):
    set: str
    figure: str
    a: float
    b: float
    difference: float
    interval: list[float]
    shown: bool
    """Whether the interval leaves out 0: these sets show a difference."""


SET_DESCRIPTIONS = {"generated": "generated_set", "real_anatomy": "real_anatomy_set", "real_images": "real_images_set"}
"""Where an evaluation's summary says what each set was (seeds, folder, split, window, pixel size)."""


def _mapping(value: object) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a hand-edited or foreign file)."""
    return value if isinstance(value, Mapping) else {}


def _model_sets(summary: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any], dict[str, tuple[str, str, bool]]]]:
    """(set name, the model's scores on it, the figures it has) of one evaluation's summary; an entry that
    is not a JSON object where one belongs is no set."""
    results = _mapping(summary.get("results"))
    for name in ("generated", "real_anatomy"):
        scores = _mapping(_mapping(results.get(name)).get("model"))
        if scores:
            yield name, scores, SERIES_RATIOS
    images = _mapping(summary.get("image_results"))
    scores = _mapping(_mapping(images.get("real_images")).get("model"))
    if scores:
        yield "real_images", scores, IMAGE_RATIOS
    for name in ("lone_slices", "lone_slices_8bit"):
        scores = _mapping(images.get(name))
        if scores:
            yield name, scores, SLICE_RATIOS


def holds_figures(summary: object) -> bool:
    """Whether ``summary`` (an evaluation's, or a card's ``metrics``) holds a set's figures to compare."""
    return isinstance(summary, Mapping) and next(_model_sets(summary), None) is not None


class CompareError(ValueError):
    """The two results cannot be paired (no common set, no per-unit counts, different units)."""


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Difference]:
    """Every figure of every set both summaries measured, A against B (see the module's text)."""
    b_sets = {name: scores for name, scores, _ in _model_sets(b)}
    rows: list[Difference] = []
    common = 0
    for name, scores_a, ratios in _model_sets(a):
        scores_b = b_sets.get(name)
        if scores_b is None:
            continue
        common += 1
        described = SET_DESCRIPTIONS.get(name)
        if described and a.get(described) != b.get(described):
            raise CompareError(f"{name}: measured on different sets: {a.get(described)} against {b.get(described)}")
        units_a, units_b = _mapping(scores_a.get("per_unit")), _mapping(scores_b.get("per_unit"))
        if not units_a or not units_b:
            raise CompareError(f"{name}: no per-unit counts (measured before uronode evaluate kept them)")
        for figure, (numerator, denominator, _) in ratios.items():
            try:
                paired = paired_difference(units_a, units_b, numerator, denominator)
            except ValueError as exc:
                raise CompareError(f"{name}: {exc}: the two were measured on different sets") from exc
            if paired is None:
                continue
            difference, interval = paired
            value_a = _ratio(units_a, numerator, denominator)
            value_b = _ratio(units_b, numerator, denominator)
            rows.append({"set": name, "figure": figure, "a": value_a, "b": value_b, "difference": difference,
                         "interval": interval, "shown": interval[0] > 0 or interval[1] < 0})
    if not common:
        raise CompareError("the two results have no set in common")
    return rows


def only_in_one(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The sets one of the two summaries measured and the other did not ("name (A only)")."""
    names_a = {name for name, _, _ in _model_sets(a)}
    names_b = {name for name, _, _ in _model_sets(b)}
    return ([f"{n} (A only)" for n in sorted(names_a - names_b)]
            + [f"{n} (B only)" for n in sorted(names_b - names_a)])


def _ratio(units: Mapping[str, Mapping[str, float]], numerator: str, denominator: str) -> float:
    num = sum(float(u.get(numerator, 0)) for u in units.values())
    den = sum(float(u.get(denominator, 0)) for u in units.values())
    return round(num / den, 4)


def format_differences(rows: list[Difference], a_name: str, b_name: str) -> str:
    """A Markdown table of ``compare``'s rows."""
    lines = [f"| set | figure | {a_name} | {b_name} | difference (95 % interval) | shown |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["interval"]
        lines.append(f"| {r['set']} | {r['figure']} | {r['a']:.3f} | {r['b']:.3f} | "
                     f"{r['difference']:+.3f} ({lo:+.3f} to {hi:+.3f}) | {'yes' if r['shown'] else 'no'} |")
    return "\n".join(lines)
