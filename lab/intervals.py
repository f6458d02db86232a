"""95 % intervals for the evaluation's figures: a bootstrap over the units that are independent.

A figure such as "0.812 of the stones found" is a ratio of two counts summed over
a set (stones found / stones, false stones / images). Its images are not
independent: neighbouring slices of one examination, and the two exported copies
of one source image, succeed or fail together. So the interval resamples whole
**units** (an examination for the real images, a series for the generated set,
a block of consecutive slices for one CT's lone slices) with replacement, sums
each replicate's counts and takes the 2.5th and 97.5th percentiles of the
replicates' ratios (a percentile bootstrap, ``REPLICATES`` replicates with a
fixed seed, so the same results always give the same interval).

Cases the plain bootstrap gets wrong are handled:

- a replicate whose denominator is 0 (none of the few stones under 3 mm drawn)
  has no ratio and is left out: the interval is conditional on there being some;
- a figure whose replicates cannot vary, because it is observed at 0 or 1 (20
  of 20 stones found, no false stone at all) or because a single unit holds
  its whole denominator, would get an interval of zero width that claims
  certainty. Then the pooled counts' own interval is given instead: Wilson's
  for a share, the exact Poisson one for a rate (false stones per image). It
  treats the counts as independent, so it is narrower than the truth when
  units are correlated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

REPLICATES = 2000
SEED = 20261204
LEVEL = 0.95
Z95 = 1.959963984540054


def wilson(successes: float, trials: float, z: float = Z95) -> list[float] | None:
    """The Wilson score interval of a proportion (None without trials)."""
    if trials <= 0:
        return None
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return [round(float(max(0.0, centre - half)), 4), round(float(min(1.0, centre + half)), 4)]


def poisson_rate(count: float, exposure: float, level: float = LEVEL) -> list[float] | None:
    """The exact (Garwood) interval of a rate: ``count`` events over ``exposure`` units."""
    if exposure <= 0:
        return None
    alpha = 1 - level
    low = stats.chi2.ppf(alpha / 2, 2 * count) / 2 if count > 0 else 0.0
    high = stats.chi2.ppf(1 - alpha / 2, 2 * count + 2) / 2
    return [round(float(low / exposure), 4), round(float(high / exposure), 4)]


def _pooled(num: np.ndarray, den: np.ndarray, proportion: bool) -> list[float] | None:
    return wilson(float(num.sum()), float(den.sum())) if proportion else poisson_rate(float(num.sum()),
                                                                                      float(den.sum()))


def ratio_interval(numerators: np.ndarray | Sequence[float], denominators: np.ndarray | Sequence[float],
                   proportion: bool = True, replicates: int = REPLICATES, seed: int = SEED,
                   level: float = LEVEL) -> list[float] | None:
    """[low, high] of sum(numerators) / sum(denominators), resampling the units (one entry each).

    ``proportion``: the ratio is a share of its denominator (found / stones), else a rate (false
    stones per image). Where the replicates cannot vary, the pooled counts' interval (see the
    module's text). None when the denominator sums to 0.
    """
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError("one numerator and one denominator per unit")
    if num.size == 0 or den.sum() <= 0:
        return None
    if (proportion and num.sum() in (0.0, den.sum())) or num.sum() == 0 or np.count_nonzero(den) < 2:
        return _pooled(num, den, proportion)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num.size, size=(replicates, num.size))
    sums_den = den[draws].sum(axis=1)
    ok = sums_den > 0
    ratios = num[draws].sum(axis=1)[ok] / sums_den[ok]
    low, high = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    if high - low <= 0:
        return _pooled(num, den, proportion)
    return [round(float(low), 4), round(float(high), 4)]


class UnitCounts:
    """Counts kept per unit (examination, series, block of slices) to bootstrap ratios of them."""

    def __init__(self) -> None:
        self.units: dict[str, Counter[str]] = {}

    def add(self, unit: str, **counts: int) -> None:
        self.units.setdefault(unit, Counter()).update(counts)

    def column(self, name: str) -> np.ndarray:
        return np.array([float(c[name]) for c in self.units.values()], dtype=np.float64)

    def interval(self, numerator: str, denominator: str, proportion: bool = True) -> list[float] | None:
        return ratio_interval(self.column(numerator), self.column(denominator), proportion=proportion)

    def intervals(self, ratios: Mapping[str, tuple[str, str, bool]]) -> dict[str, list[float] | None]:
        """{figure: [low, high]} for ``ratios``: {figure: (numerator, denominator, proportion)}."""
        return {name: self.interval(n, d, p) for name, (n, d, p) in ratios.items()}

    def __len__(self) -> int:
        return len(self.units)

    def as_dict(self) -> dict[str, dict[str, int]]:
        """{unit: {count: n}}, as the figures' JSON keeps them (for ``paired_difference`` later)."""
        return {unit: dict(counts) for unit, counts in self.units.items()}


def paired_difference(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]],
                      numerator: str, denominator: str, replicates: int = REPLICATES, seed: int = SEED,
                      level: float = LEVEL) -> tuple[float, list[float]] | None:
    """A's ratio minus B's on the same units, and its interval: both resampled with the same draw of
    units, so what the two share (the hard examinations) cancels. None when fewer than two units
    have a denominator (nothing to resample).

    Raises ValueError when A and B were not measured on the same units: other unit names, or the
    same names with other denominators (the stones, images or slices a unit holds are the set's,
    not the model's).
    """
    if set(a) != set(b):
        raise ValueError(f"not the same units: {len(set(a) ^ set(b))} of {len(set(a) | set(b))} differ")
    keys = sorted(a)
    num_a, den_a, num_b, den_b = (np.array([float(src[k].get(col, 0)) for k in keys], dtype=np.float64)
                                  for src, col in ((a, numerator), (a, denominator), (b, numerator), (b, denominator)))
    if not np.array_equal(den_a, den_b):
        raise ValueError(f"not the same units: {int(np.count_nonzero(den_a != den_b))} hold another "
                         f"number of {denominator}")
    if np.count_nonzero(den_a) < 2:
        return None
    observed = num_a.sum() / den_a.sum() - num_b.sum() / den_b.sum()
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(keys), size=(replicates, len(keys)))
    den = den_a[draws].sum(axis=1)
    ok = den > 0
    diffs = (num_a[draws].sum(axis=1)[ok] - num_b[draws].sum(axis=1)[ok]) / den[ok]
    low, high = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return round(float(observed), 4), [round(float(low), 4), round(float(high), 4)]


def with_interval(value: float | None, interval: list[float] | None) -> str:
    """'0.812 (0.771-0.852)': a figure and its interval for a table ('-' without a figure)."""
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else "")
