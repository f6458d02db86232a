"""Stage 1 of the cascade: cheap candidate finding at full resolution, and patch cutting.

A stone is dense (>= 200 HU, partial volume lowers small ones), small (1-20 mm)
and inside the body. So: voxels above ``threshold_hu`` inside the body, 3D
components, and away with components that cannot be a stone: larger than
``max_volume_mm3`` or longer than ``max_extent_mm`` in any direction (vertebrae,
pelvis, ribs). What remains (stones and their mimics) is cut into small patches
around each component on each of its slices, which the network (stage 2)
segments. The same rule with a higher threshold is the evaluation's baseline.

Optionally (``contrast_hu`` > 0) a second rule finds the tiny stones whose
densest voxel stays below ``threshold_hu`` after partial volume: voxels at
least ``contrast_hu`` above their local background (a white top-hat: HU minus
a grey opening over ``contrast_window_mm`` in-plane) and at least
``contrast_min_hu``, in components of at most ``contrast_max_voxels`` that do
not touch a dense candidate. Noise makes many of these; the network's second
look has to reject them.

Noise (low-dose series) would make both rules fire on speckle, and the cost
grow with it, so both are bounded by the series' own noise, measured in its
soft tissue (``estimate_noise``):

- the dense threshold is at least the soft-tissue level plus ``dense_noise_k``
  times the voxel noise SD (4.5 SD: a 300 HU stone still stands out of 40 HU
  noise, speckle voxels rarely do). When that raises it, voxels that reach the
  same bound on a copy smoothed in-plane (``denoise_mm``, measured again there)
  are dense too: smoothing over about a stone's width keeps a small stone and
  flattens fine speckle, so a stone is found at either scale;
- the local-contrast rule runs only while the fine-grain noise is at most
  ``contrast_max_noise_hu`` (its ``contrast_hu`` is then at least 5 SD; above,
  a voxel that stands 60 HU out is as likely noise as a stone, and noise makes
  thousands of them);
- a budget of the local-contrast rule (``max_contrast_patches``): in noise
  within its bounds it still makes thousands of components standing just
  over ``contrast_hu``, while a small stone stands far above; only the
  strongest that fit in the budget are kept;
- a hard budget: at most ``max_patches`` patches per series, spent on the
  strongest components (dense ones by peak HU, then local-contrast ones by
  peak contrast);
- noise that changes along the series (``noise_slab_mm``): a real CT is
  noisier where the body is wider or denser (shoulders, pelvis, arms down),
  and one estimate for the whole series sets the dense threshold too low
  there. The noise is measured again in slabs of about ``noise_slab_mm``
  along the series; a slab's threshold (and its smoothed copy's) is its own
  where that is higher than the series'. Never lower: a slab with less noise
  keeps the series' threshold. A lone slice is its own slab already.

The defaults leave series within the generator's noise (up to 13 HU) exactly
as before; 0 turns each bound off.

What is removed as too long (``clear_of_removed``, model 3.9.0;
probe 36): the skeleton, and a ureteral stent or a catheter running 200 mm
down the ureter. Such a structure keeps the local-contrast voxels off as a kept dense
component does (its blurred edge made dozens of candidates), and its voxels
are listed (``Candidates.removed``) so that no reported stone grows into
them. Its tubes (``_tubes_in``: thin parts along the body with a small
cross-section of their own) are listed for a caution whatever the rule says
(``Candidates.tubes``), and, with the rule, the thick parts touching a tube
that pass the size rule on their own (a stone on a stent) are dense
candidates of their own. A structure removed for its volume alone (a
vertebra, a staghorn stone) keeps nothing off, as before 3.9.0; the skeleton
(over ``TUBE_MAX_STRUCTURE_MM3``) is not looked into for tubes.

Memory: a series is held once as float32 HU (4 bytes a voxel); what this stage adds is kept to about
3 bytes a voxel. The component labels are the narrowest unsigned type that holds their count
(``narrowest_labels``: uint8 or uint16 for most series, int32 only where more components are kept),
labelled straight into uint16 where the count fits; the local-contrast rule works on slabs of
``CONTRAST_SLAB`` slices (its top-hat is in-plane, its reach across slices one slice) and labels its few
voxels as a graph (``label_sparse``), not as a volume. Every result is the same as on the whole volume.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from inference.volume import Volume

BODY_HU = -500.0
BODY_STRIDE = 4
TISSUE_HU = (0.0, 100.0)
"""Soft tissue, where the noise is measured: the local mean in this band."""
NOISE_SLICES = 16
"""Slices the noise is measured on (evenly spread over the series)."""
NOISE_BLOCK = 8
"""In-plane block (pixels) of the voxel-noise SD."""
SLAB_NOISE_SLICES = 2
"""Slices a slab's noise is measured on."""
CONTRAST_SLAB = 16
"""Slices the local-contrast rule works on at a time (its temporaries: about 20 bytes a voxel of a slab)."""
NEIGHBOURS = np.ones((3, 3, 3), dtype=bool)
"""26-connectivity of the candidate components."""


@dataclass(frozen=True)
class CandidateRule:
    threshold_hu: float = 130.0
    max_volume_mm3: float = 8000.0
    max_extent_mm: float = 30.0
    contrast_hu: float = 0.0
    """0 = no local-contrast candidates."""
    contrast_min_hu: float = 70.0
    contrast_window_mm: float = 3.5
    contrast_max_voxels: int = 12
    dense_noise_k: float = 4.5
    """The dense threshold is at least soft tissue + this x the voxel noise SD (0 = off)."""
    contrast_max_noise_hu: float = 16.0
    """No local-contrast candidates when the voxel noise SD exceeds this (0 = no limit)."""
    contrast_max_fine_noise_hu: float = 10.0
    """No local-contrast candidates when the fine-grain noise SD exceeds this (0 = no limit)."""
    denoise_mm: float = 0.4
    """When noise raises the dense threshold: also look at a copy smoothed in-plane by a Gaussian
    of this SD (mm), with its own noise-raised threshold (0 = never)."""
    max_patches: int = 4096
    """Budget: patches of the strongest components that fit in it (0 = no budget)."""
    max_contrast_patches: int = 0
    """Budget of the local-contrast rule alone: its strongest components whose patches fit in
    it (0 = only ``max_patches``)."""
    noise_slab_mm: float = 0.0
    """Measure the noise again in slabs of about this length along the series and raise the dense
    thresholds of the noisier slabs to their own (0 = one estimate for the whole series)."""
    clear_of_removed: int = 0
    """1: the dense structures removed as too long (bone, a ureteral stent) keep the local-contrast
    voxels off as the kept ones do, and no reported stone takes their voxels (``Candidates.removed``; probe 36: a
    stent's edge gave dozens of local-contrast candidates, each reported with the stent's HU). 0: only the kept
    dense components keep them off (models before 3.9.0)."""

    @classmethod
    def from_card(cls, block: dict[str, Any]) -> CandidateRule:
        """The card's ``candidates`` block (keys as the fields; missing ones take the defaults)."""
        d = cls()
        values = {k: block.get(k, getattr(d, k)) for k in cls.__dataclass_fields__}
        # each field's own type (int or float): a mapping's value type cannot say it key by key
        fields: dict[str, Any] = {k: (int(v) if k in INT_FIELDS else float(v)) for k, v in values.items()}
        return cls(**fields)

    def card(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @property
    def noise_aware(self) -> bool:
        return self.dense_noise_k > 0 or (self.contrast_hu > 0 and (
            self.contrast_max_noise_hu > 0 or self.contrast_max_fine_noise_hu > 0))


INT_FIELDS = ("contrast_max_voxels", "max_patches", "max_contrast_patches", "clear_of_removed")
DEFAULT_RULE = CandidateRule()
BASELINE_RULE = CandidateRule(threshold_hu=200.0)
CONTRAST_RULE = CandidateRule(contrast_hu=60.0, contrast_min_hu=70.0)
"""The cascade's rule (models 2.1.0 and later, before their cards' own changes): dense candidates
and local-contrast ones. What a new network is trained with when no card says otherwise."""


@dataclass(frozen=True)
class NoiseEstimate:
    """A series' noise, measured in its soft tissue (HU)."""

    sd_hu: float
    """Voxel noise SD: the mode of the SDs of 8 x 8 pixel blocks (a global noise level)."""
    fine_sd_hu: float
    """Fine-grain noise SD: 1.4826 x the median absolute deviation of HU minus the mean of the
    4 neighbours, scaled to white noise's SD. Kernel-smoothed (correlated) noise reads lower."""
    tissue_hu: float
    """Median HU of the soft-tissue blocks."""
    slices: int
    """Slices measured; 0 = no soft tissue found (the other fields are then 0)."""


@dataclass(frozen=True, eq=False)
class Candidates:
    """Components that may be stones, and where to look at them."""

    labels: np.ndarray
    """(slices, rows, columns): component id per voxel, 0 = none (large ones removed); of the narrowest
    unsigned integer type that holds ``count`` (uint8, uint16), int32 beyond (``narrowest_labels``)."""
    count: int
    centres: np.ndarray
    """int (n, 3): (slice, row, column) of every patch centre, sorted by slice."""
    component_of_centre: np.ndarray
    """int (n,): the component each patch centre belongs to."""
    dense_count: int = -1
    """Components 1..dense_count are dense ones, the rest local-contrast ones (-1: all dense)."""
    noise: NoiseEstimate | None = None
    """The series' noise (None when the rule does not look at it)."""
    dense_threshold_hu: float = 0.0
    """The dense threshold applied (``threshold_hu``, or higher in noise)."""
    smoothed_threshold_hu: float = 0.0
    """The threshold on the smoothed copy (0: the copy was not looked at)."""
    contrast_applied: bool = False
    """Whether the local-contrast rule ran."""
    over_budget: int = 0
    """Components dropped by the budget (the weakest)."""
    removed: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    """Sorted flat indices of the voxels of the dense structures removed as too long, where the rule
    keeps clear of them (``CandidateRule.clear_of_removed``; empty otherwise)."""
    tubes: tuple[Tube, ...] = ()
    """The long thin dense structures among those removed (a stent, a catheter, a wire, a calcified vessel)."""
    budget: BudgetCut | None = None
    """What the budget left out, where it left out any."""


TUBE_MAX_SECTION_MM2 = 30.0
"""A tube's cross-section on a slice (``_tube_like``) is at most this (mm^2: a tube up to about 5 mm across, a 6-10 Fr
ureteral stent or nephrostomy catheter with its partial volume, whatever the slice spacing: review 34, an area per
mm of slice spacing made no tube of a 10 Fr stent at 0.625 mm)."""


@dataclass(frozen=True)
class Tube:
    """A long thin dense structure the candidate rule removed: a ureteral stent, a catheter, a wire, or a vessel. A
    stone touching it is one dense structure with it: where the rule keeps clear of what it removes, one of about
    4 mm or more is a candidate of its own (``_tubes_in``), a smaller one goes with it."""

    length_mm: float
    """The longest side of its box."""
    slices: tuple[int, int]
    """Its first and last slice (0-based)."""


@dataclass(frozen=True)
class BudgetCut:
    """Candidates the budget left out (``CandidateRule.max_patches``, ``max_contrast_patches``)."""

    components: int
    dense: int
    """Dense components among them (only the overall budget drops those)."""
    strongest_dense_hu: float
    """The densest voxel of the densest left-out dense component (HU; 0 where none was left out)."""
    strongest_contrast_hu: float
    """The most a left-out local-contrast component stood above its surroundings (HU; 0 where none was left out)."""
    slices: tuple[int, int]
    """The first and last slice they lie on (0-based)."""


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient's body on a grid ``BODY_STRIDE`` times coarser in-plane (bool)."""
    coarse = hu[:, ::BODY_STRIDE, ::BODY_STRIDE] > BODY_HU
    labels, count = ndimage.label(coarse)
    if count == 0:
        return coarse
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(sizes.argmax())
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return body


def estimate_noise(hu: np.ndarray, slices: int = NOISE_SLICES,
                   smooth: tuple[float, float] | None = None) -> NoiseEstimate:
    """The noise of a (slices, rows, columns) HU volume, from up to ``slices`` of its slices
    (each smoothed in-plane by a Gaussian of ``smooth`` pixels' SD, if given).

    Both SDs are robust to the anatomy: the voxel SD is the mode of the blocks' SDs
    (edges only lengthen the histogram's tail), the fine SD a median absolute deviation.
    """
    n = hu.shape[0]
    step = max(1, -(-n // slices))
    lo, hi = TISSUE_HU
    residuals, block_sds, block_means = [], [], []
    for k in range(step // 2, n, step):
        s = hu[k].astype(np.float32, copy=False)
        if smooth is not None:
            s = ndimage.gaussian_filter(s, smooth)
        inner = s[1:-1, 1:-1]
        around = 0.25 * (s[:-2, 1:-1] + s[2:, 1:-1] + s[1:-1, :-2] + s[1:-1, 2:])
        residuals.append((inner - around)[(around >= lo) & (around <= hi)])
        b = NOISE_BLOCK
        rows, cols = (s.shape[0] // b) * b, (s.shape[1] // b) * b
        blocks = s[:rows, :cols].reshape(rows // b, b, cols // b, b)
        means = blocks.mean(axis=(1, 3))
        sds = blocks.std(axis=(1, 3), ddof=1)
        tissue = (means >= lo) & (means <= hi)
        block_sds.append(sds[tissue])
        block_means.append(means[tissue])
    residual = np.concatenate(residuals)
    sd = np.concatenate(block_sds)
    if residual.size < 100 or sd.size < 10:
        return NoiseEstimate(0.0, 0.0, 0.0, 0)
    mad = float(np.median(np.abs(residual - np.median(residual))))
    fine = 1.4826 * mad / np.sqrt(1.25)  # white noise: Var(x - mean of 4) = 1.25 Var(x)
    hist, edges = np.histogram(sd, bins=np.arange(0.0, max(float(sd.max()), 1.0) + 0.5, 0.5))
    hist = ndimage.uniform_filter1d(hist.astype(np.float64), 5, mode="constant")
    mode = float(edges[int(hist.argmax())]) + 0.25
    return NoiseEstimate(round(mode, 2), round(float(fine), 2),
                         round(float(np.median(np.concatenate(block_means))), 1), len(residuals))


def dense_threshold(rule: CandidateRule, noise: NoiseEstimate | None) -> float:
    """The dense rule's threshold in a series of this noise."""
    if noise is None or not noise.slices or rule.dense_noise_k <= 0:
        return rule.threshold_hu
    return max(rule.threshold_hu, noise.tissue_hu + rule.dense_noise_k * noise.sd_hu)


def slabs(count: int, slice_mm: float, slab_mm: float) -> list[tuple[int, int]]:
    """(start, stop) of the slabs of about ``slab_mm`` that ``count`` slices ``slice_mm`` apart make
    (at least two slices each; none when the series is one slab)."""
    size = max(2, int(round(slab_mm / max(slice_mm, 1e-3))))
    if slab_mm <= 0 or count <= size:
        return []
    return [(a, min(count, a + size)) for a in range(0, count, size)]


SlabNoise = Sequence[tuple[int, int, NoiseEstimate]]
"""(start, stop, the slab's own noise) of each slab of a series."""


def slab_noise(hu: np.ndarray, rule: CandidateRule, noise: NoiseEstimate | None, slice_mm: float) -> SlabNoise:
    """Each slab's noise (``rule.noise_slab_mm``), when the series' noise was measured at all."""
    if noise is None or not noise.slices:
        return []
    return [(a, b, estimate_noise(hu[a:b], slices=SLAB_NOISE_SLICES))
            for a, b in slabs(hu.shape[0], slice_mm, rule.noise_slab_mm)]


def _dense_mask(hu: np.ndarray, rule: CandidateRule, noise: NoiseEstimate | None,
                pixel_spacing: tuple[float, float], by_slab: SlabNoise = (),
                noise_of: Volume | None = None) -> tuple[np.ndarray, float, float]:
    """Dense voxels, the series' threshold, and its smoothed copy's (0: not looked at); the smoothed
    copy's noise is measured on ``noise_of`` (default: ``hu`` itself) at its own pixel spacing."""
    threshold = dense_threshold(rule, noise)
    per_slice = np.full(hu.shape[0], threshold, dtype=np.float32)
    local: list[tuple[int, int, float]] = []  # slabs noisier than the series: (start, stop, threshold)
    for a, b, own_noise in by_slab:
        own = dense_threshold(rule, own_noise) if own_noise.slices else threshold
        if own > threshold:
            per_slice[a:b] = own
            local.append((a, b, own))
    dense = hu >= (per_slice[:, None, None] if local else threshold)
    if (threshold <= rule.threshold_hu and not local) or rule.denoise_mm <= 0:
        return dense, threshold, 0.0
    sigma = (rule.denoise_mm / pixel_spacing[0], rule.denoise_mm / pixel_spacing[1])
    source, source_sigma = hu, sigma
    if noise_of is not None:
        source = noise_of.hu
        source_sigma = (rule.denoise_mm / noise_of.pixel_spacing[0], rule.denoise_mm / noise_of.pixel_spacing[1])
    smoothed = dense_threshold(rule, estimate_noise(source, smooth=source_sigma))
    smoothed_per_slice = np.full(hu.shape[0], smoothed, dtype=np.float32)
    for a, b, _ in local:
        smoothed_per_slice[a:b] = max(smoothed, dense_threshold(
            rule, estimate_noise(source[a:b], slices=SLAB_NOISE_SLICES, smooth=source_sigma)))
    for k in range(hu.shape[0]):  # slice by slice: no smoothed copy of the volume
        if per_slice[k] > rule.threshold_hu:  # where noise raised the threshold
            dense[k] |= ndimage.gaussian_filter(hu[k], sigma) >= smoothed_per_slice[k]
    return dense, threshold, smoothed


def contrast_applies(rule: CandidateRule, noise: NoiseEstimate | None) -> bool:
    """Whether the local-contrast rule runs in a series of this noise."""
    if rule.contrast_hu <= 0:
        return False
    if noise is None or not noise.slices:
        return True
    return ((rule.contrast_max_noise_hu <= 0 or noise.sd_hu <= rule.contrast_max_noise_hu)
            and (rule.contrast_max_fine_noise_hu <= 0 or noise.fine_sd_hu <= rule.contrast_max_fine_noise_hu))


@dataclass(frozen=True, eq=False)
class _Components:
    """Candidate components before the budget: ids 1..n in ``labels``, with their boxes."""

    starts: np.ndarray
    """int (n, 3)"""
    stops: np.ndarray
    strength: np.ndarray
    """float (n,): peak HU (dense) or peak contrast (local-contrast ones)."""

    @property
    def count(self) -> int:
        return int(self.starts.shape[0])


def find_candidates(volume: Volume, rule: CandidateRule = DEFAULT_RULE, noise_of: Volume | None = None) -> Candidates:
    """Candidate components of ``volume`` under ``rule`` (see the module's text). The noise is measured
    on ``noise_of`` where given: the series that ``volume`` was interpolated from (same slices), whose
    pixels hold the noise that interpolation smooths but whose peaks it keeps."""
    hu = volume.hu
    if noise_of is not None and noise_of.shape[0] != hu.shape[0]:
        raise ValueError(f"noise_of has {noise_of.shape[0]} slices, the volume {hu.shape[0]}")
    source = hu if noise_of is None else noise_of.hu
    noise = estimate_noise(source) if rule.noise_aware else None
    by_slab = slab_noise(source, rule, noise, volume.slice_spacing)
    dense, threshold, smoothed = _dense_mask(hu, rule, noise, volume.pixel_spacing, by_slab, noise_of)
    with_contrast = contrast_applies(rule, noise)
    labels, count = label_narrow(dense)
    del dense
    if count == 0:
        return Candidates(narrowest_labels(labels, 0), 0, np.zeros((0, 3), int), np.zeros(0, int), noise=noise,
                          dense_threshold_hu=threshold, smoothed_threshold_hu=smoothed)
    body = body_mask(hu)
    dense_parts, removed, tubes = _keep_dense(labels, count, hu, body, volume, rule)
    dense_count = dense_parts.count
    parts = dense_parts
    if with_contrast:
        quiet = [(a, b) for a, b, own in by_slab if not contrast_applies(rule, own)]
        contrast_parts, labels = _contrast_components(hu, labels, body, volume.pixel_spacing, rule, threshold,
                                                      dense_count, quiet, removed=removed)
        parts = _Components(np.concatenate([dense_parts.starts, contrast_parts.starts]),
                            np.concatenate([dense_parts.stops, contrast_parts.stops]),
                            np.concatenate([dense_parts.strength, contrast_parts.strength]))
    kept, budget, dense_count = _spend_budget(labels, parts, dense_count, rule.max_patches,
                                              rule.max_contrast_patches)
    labels = narrowest_labels(labels, kept.count)
    centres_arr, owners_arr = _patch_centres(labels, kept)
    return Candidates(labels, kept.count, centres_arr, owners_arr, dense_count, noise=noise,
                      dense_threshold_hu=threshold, smoothed_threshold_hu=smoothed,
                      contrast_applied=with_contrast, over_budget=parts.count - kept.count,
                      removed=removed, tubes=tubes, budget=budget)


def label_narrow(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``ndimage.label`` of ``mask`` (26-connected) into uint16 where its components fit (2 bytes a voxel), else
    into int32: the same ids either way."""
    narrow: np.ndarray = np.empty(mask.shape, dtype=np.uint16)  # (scipy's stubs name only int32 and intp)
    try:
        return narrow, int(ndimage.label(mask, structure=NEIGHBOURS, output=narrow))
    except RuntimeError:  # more components than uint16 holds (scipy checks that none was cut)
        del narrow
    labels = np.empty(mask.shape, dtype=np.int32)
    return labels, int(ndimage.label(mask, structure=NEIGHBOURS, output=labels))


def narrowest_labels(labels: np.ndarray, count: int) -> np.ndarray:
    """``labels`` (ids 0..count) as the narrowest of uint8, uint16 and int32 that holds ``count``; ``labels``
    itself where it is of that type already."""
    dtype = np.uint8 if count <= np.iinfo(np.uint8).max else np.uint16 if count <= np.iinfo(np.uint16).max else np.int32
    return labels if labels.dtype == dtype else labels.astype(dtype)


def label_sparse(where: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, int]:
    """The 26-connected components of a few voxels of a (slices, rows, columns) grid, given by their flat
    indices ``where`` (ascending): each voxel's id (1..count, int64) and the count; the ids are those that
    ``ndimage.label`` gives the volume holding them (numbered in the order of each component's first voxel),
    without a volume-sized label array."""
    n = where.size
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0
    k, r, c = np.unravel_index(where, shape)
    heads, tails = [], []
    # each pair of neighbours once: the 13 offsets that follow the voxel in raster order
    for dk, dr, dc in ((dk, dr, dc) for dk in (0, 1) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                       if (dk, dr, dc) > (0, 0, 0)):
        kk, rr, cc = k + dk, r + dr, c + dc
        inside = np.flatnonzero((kk < shape[0]) & (rr >= 0) & (rr < shape[1]) & (cc >= 0) & (cc < shape[2]))
        target = np.ravel_multi_index((kk[inside], rr[inside], cc[inside]), shape)
        at = np.minimum(np.searchsorted(where, target), n - 1)
        hit = where[at] == target
        heads.append(inside[hit])
        tails.append(at[hit])
    head, tail = np.concatenate(heads), np.concatenate(tails)
    graph = sparse.coo_matrix((np.ones(head.size, dtype=np.int8), (head, tail)), shape=(n, n)).tocsr()
    count, component = csgraph.connected_components(graph, directed=False)
    # renumber in the order of each component's first voxel (raster order), as ndimage.label does
    _, first = np.unique(component, return_index=True)
    order = np.empty(count, dtype=np.int64)
    order[np.argsort(first, kind="stable")] = np.arange(1, count + 1)
    return order[component], int(count)


def voxels_in(flat: np.ndarray, shape: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray:
    """The voxels of ``flat`` (sorted flat indices into a volume of ``shape``) that lie in ``box`` (three slices
    with their bounds), as a bool array of the box's shape."""
    plane = shape[1] * shape[2]
    a, b = (int(i) for i in np.searchsorted(flat, [box[0].start * plane, box[0].stop * plane]))
    k, r, c = np.unravel_index(flat[a:b], shape)
    inside = (r >= box[1].start) & (r < box[1].stop) & (c >= box[2].start) & (c < box[2].stop)
    out = np.zeros((box[0].stop - box[0].start, box[1].stop - box[1].start, box[2].stop - box[2].start), bool)
    out[k[inside] - box[0].start, r[inside] - box[1].start, c[inside] - box[2].start] = True
    return out


def _boxes(objects: Sequence[tuple[slice, ...] | None]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) starts and stops of ``find_objects``'s boxes (every label present)."""
    flat = np.array([(s.start, s.stop) for box in objects if box is not None for s in box],
                    dtype=np.int64).reshape(-1, 3, 2)
    return flat[:, :, 0], flat[:, :, 1]


def _in_body(body: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Whether each box's centre voxel lies in the (coarse) body."""
    centre = (starts + stops - 1) // 2
    k = centre[:, 0]
    r = np.minimum(body.shape[1] - 1, centre[:, 1] // BODY_STRIDE)
    c = np.minimum(body.shape[2] - 1, centre[:, 2] // BODY_STRIDE)
    return body[k, r, c]


def _relabel(flat_labels: np.ndarray, where: np.ndarray, ids: np.ndarray, keep: np.ndarray,
             first: int = 0) -> int:
    """Give the kept components (``keep[i]`` for id i + 1) ids first+1, ... in order, the others 0,
    writing only at the voxels ``where`` (flat indices, their ids ``ids``); the number kept."""
    mapping = np.zeros(keep.size + 1, dtype=np.int32)
    kept = int(keep.sum())
    mapping[1:][keep] = np.arange(first + 1, first + kept + 1, dtype=np.int32)
    flat_labels[where] = mapping[ids]
    return kept


def _keep_dense(labels: np.ndarray, count: int, hu: np.ndarray, body: np.ndarray, volume: Volume,
                rule: CandidateRule) -> tuple[_Components, np.ndarray, tuple[Tube, ...]]:
    """Relabel ``labels`` in place: the components that may be stones get 1..n, the others 0. Also returns the
    flat indices of the voxels of those removed as too long (where ``rule.clear_of_removed``; else
    none) and the tubes among them (``Tube``, ``_tubes_in``).

    Works on the labelled voxels only (a volume-wide bincount would widen the labels to
    int64, 8 bytes a voxel), so that many components (speckle) cost little.
    """
    voxel_mm3 = volume.pixel_spacing[0] * volume.pixel_spacing[1] * volume.slice_spacing
    starts, stops = _boxes(ndimage.find_objects(labels))
    flat = labels.reshape(-1)
    where = np.flatnonzero(flat)
    ids = flat[where]
    sizes = np.bincount(ids, minlength=count + 1)[1:]
    spacing = np.array([volume.slice_spacing, volume.pixel_spacing[0], volume.pixel_spacing[1]])
    extent = ((stops - starts) * spacing).max(axis=1)
    fits = (sizes * voxel_mm3 <= rule.max_volume_mm3) & (extent <= rule.max_extent_mm)
    keep = fits & _in_body(body, starts, stops)
    peak = np.full(count + 1, -np.inf, dtype=np.float32)
    np.maximum.at(peak, ids, hu.reshape(-1)[where])
    tubes: list[Tube] = []
    pieces: list[np.ndarray] = []  # flat indices of the pieces on tubes that become candidates of their own
    # a structure too long for a stone may hold a tube (a stent down the ureter); the skeleton, far larger than any
    # stent with what touches it, is not looked into (on real CT it is most of the series: review 34)
    long = (extent > rule.max_extent_mm) & ~fits
    for i in np.flatnonzero(long & (sizes * voxel_mm3 <= TUBE_MAX_STRUCTURE_MM3)):
        box = tuple(slice(int(a), int(b)) for a, b in zip(starts[i], stops[i], strict=True))
        found, on_tube = _tubes_in(labels[box] == i + 1, spacing, rule)
        offset = np.array([s.start for s in box])
        tubes += [dataclasses.replace(t, slices=(t.slices[0] + box[0].start, t.slices[1] + box[0].start))
                  for t, a, b in found if _in_body(body, (a + offset)[None], (b + offset)[None])[0]]
        if rule.clear_of_removed:
            for part in on_tube:
                k, r, c = (a + s.start for a, s in zip(np.nonzero(part), box, strict=True))
                pieces.append(np.ravel_multi_index((k, r, c), labels.shape))
    # only what is too long keeps candidates off: a structure removed for its volume alone may be a large stone
    # (a staghorn), which its edge's candidates still reach, as before 3.9.0 (review 34)
    removed = where[long[ids - 1]] if rule.clear_of_removed else np.zeros(0, np.int64)
    kept = _relabel(flat, where, ids, keep)
    parts = _Components(starts[keep], stops[keep], peak[1:][keep].astype(np.float64))
    pieces = [p for p in pieces if _in_body(body, *_flat_box(p, labels.shape))[0]]
    if pieces:  # after the kept ones, as dense components; their voxels stay out of the removed ones
        boxes = [_flat_box(p, labels.shape) for p in pieces]
        for n, piece in enumerate(pieces):
            flat[piece] = kept + n + 1
        removed = np.setdiff1d(removed, np.concatenate(pieces), assume_unique=True)
        strength = np.array([float(hu.reshape(-1)[p].max()) for p in pieces])
        parts = _Components(np.concatenate([parts.starts, np.concatenate([b[0] for b in boxes])]),
                            np.concatenate([parts.stops, np.concatenate([b[1] for b in boxes])]),
                            np.concatenate([parts.strength, strength]))
    return parts, removed, tuple(tubes)


TUBE_MAX_STRUCTURE_MM3 = 50_000.0
"""A removed structure larger than this (the skeleton) is not looked into for tubes: a stent with the stones and
calcifications that touch it is a few cm^3."""
TUBE_STRIP_MM = 2.0
"""What is thinner than twice this, in-plane, is a tube's (a 6-10 Fr stent or catheter is 2-3.3 mm across): the
rest of a structure removed as too long or too large is its thick part."""


def _tubes_in(mask: np.ndarray, spacing: np.ndarray,
              rule: CandidateRule) -> tuple[list[tuple[Tube, np.ndarray, np.ndarray]], list[np.ndarray]]:
    """The tubes in one removed dense structure (``mask``, its box) and the pieces on them that may be stones.

    A tube is a part of it thinner than ``2 * TUBE_STRIP_MM`` in-plane (what an in-plane opening by a disc of that
    radius takes away), longer than ``rule.max_extent_mm`` with a tube's cross-section (``_tube_like``):
    a ureteral stent, a catheter, a wire. A stone on it is one dense structure with it and was removed with it
    (probe 36: a stone touching a stent was lost, or measured with it); the thick parts of the structure that
    touch a tube and would pass the size rule on their own are returned (bool masks of the box) as candidates;
    each tube with the start and stop of its own box in the structure's."""
    radius = (max(1, round(TUBE_STRIP_MM / spacing[1])), max(1, round(TUBE_STRIP_MM / spacing[2])))
    rr, cc = np.ogrid[-radius[0]:radius[0] + 1, -radius[1]:radius[1] + 1]
    disc = ((rr / radius[0]) ** 2 + (cc / radius[1]) ** 2 <= 1.0)[None]
    thick = ndimage.binary_opening(mask, structure=disc)
    thin, count = ndimage.label(mask & ~thick, structure=NEIGHBOURS)
    tubes, tube_mask = [], np.zeros(mask.shape, bool)
    voxel_mm3 = float(np.prod(spacing))
    for j, box in enumerate(ndimage.find_objects(thin), start=1):
        if box is None or (box[0].stop - box[0].start) * float(spacing[0]) <= rule.max_extent_mm:
            continue  # a tube in the urinary tract runs along the body, over more slices than a stone spans
        local = np.zeros(mask.shape, bool)  # on the whole structure's box: a slice's cross-section runs on in it
        local[box] = thin[box] == j
        if _tube_like(local, mask, thick, spacing):
            extent = max((s.stop - s.start) * float(d) for s, d in zip(box, spacing, strict=True))
            tubes.append((Tube(extent, (box[0].start, box[0].stop - 1)),
                          np.array([s.start for s in box]), np.array([s.stop for s in box])))
            tube_mask |= local
    if not tubes or not thick.any():
        return tubes, []
    near = ndimage.binary_dilation(tube_mask, structure=NEIGHBOURS, iterations=2)
    parts, count = ndimage.label(thick, structure=NEIGHBOURS)
    pieces = []
    for j, box in enumerate(ndimage.find_objects(parts), start=1):
        if box is None:
            continue
        local = parts[box] == j
        if not (local & near[box]).any():
            continue
        extent = max((s.stop - s.start) * float(d) for s, d in zip(box, spacing, strict=True))
        if extent <= rule.max_extent_mm and np.count_nonzero(local) * voxel_mm3 <= rule.max_volume_mm3:
            part = np.zeros(mask.shape, bool)
            part[box] = local
            pieces.append(part)
    return tubes, pieces


TUBE_MAX_WIDTH_MM = 10.0
"""A tube's cross-section on a slice is at most this wide (a stent or catheter crossing the slice obliquely): a
bone's thin cortex or a vessel wall's ring of calcium is wider."""
TUBE_MIN_SECTION_MM2 = 1.5
"""A tube's cross-section on a slice is at least this (a 2 mm stent's is 3 mm^2): a line a pixel wide along a
bone's edge is none."""
TUBE_SLICE_SHARE = 0.75
"""The share of its slices on which a thin structure's cross-section must be a tube's (the rest: where it curls or
runs in-plane, as a stent's ends do)."""


def _tube_like(part: np.ndarray, mask: np.ndarray, thick: np.ndarray, spacing: np.ndarray) -> bool:
    """Whether a thin part of a removed structure (``part``; ``mask`` the whole structure, ``thick`` its thick part,
    all bool arrays of the structure's box) is a tube: on at least ``TUBE_SLICE_SHARE`` of its slices, a
    cross-section of its own, at most ``TUBE_MAX_WIDTH_MM`` wide, of ``TUBE_MIN_SECTION_MM2`` to
    ``TUBE_MAX_SECTION_MM2`` (a 2-4 mm tube and its partial volume), that does not run into the thick part on that
    slice (a bone's thin lamina or cortex does, on every slice; a stent does only where a stone sits on it)."""
    pixel_mm2 = float(spacing[1] * spacing[2])
    slices = np.flatnonzero(part.any(axis=(1, 2)))
    tube = 0
    for k in slices:
        rows, columns = np.nonzero(part[k])
        width = max((rows.max() - rows.min() + 1) * float(spacing[1]), (columns.max() - columns.min() + 1) * float(spacing[2]))
        area = rows.size * pixel_mm2
        if width > TUBE_MAX_WIDTH_MM or not TUBE_MIN_SECTION_MM2 <= area <= TUBE_MAX_SECTION_MM2:
            continue
        blobs, _ = ndimage.label(mask[k], structure=np.ones((3, 3), bool))
        own = np.isin(blobs, np.unique(blobs[part[k]]))
        tube += not (own & thick[k]).any()
    return slices.size > 0 and tube >= TUBE_SLICE_SHARE * slices.size


def _flat_box(flat: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The (1, 3) start and stop of the box of voxels ``flat`` (flat indices)."""
    at = np.stack(np.unravel_index(flat, shape), axis=1)
    return at.min(axis=0)[None].astype(np.int64), (at.max(axis=0) + 1)[None].astype(np.int64)


def _contrast_components(hu: np.ndarray, labels: np.ndarray, body: np.ndarray,
                         pixel_spacing: tuple[float, float], rule: CandidateRule, threshold: float,
                         first: int, too_noisy: Sequence[tuple[int, int]] = (),
                         slab: int = CONTRAST_SLAB,
                         removed: np.ndarray | None = None) -> tuple[_Components, np.ndarray]:
    """Add the local-contrast components to ``labels`` (ids first+1, ...) and return them with the labels (a
    wider copy where their ids outgrow its type); none in the slabs ``too_noisy`` (their own noise is beyond the
    rule's bounds). ``removed``: flat indices (sorted) of dense voxels removed as too long, which keep
    the local-contrast voxels off as the kept dense components do (``CandidateRule.clear_of_removed``).

    Works ``slab`` slices at a time: the top-hat is in-plane and the keeping away from dense voxels reaches one
    slice, so each slab (with one slice of ``labels`` either side) gives what the whole volume gives there;
    the few voxels that stand out are labelled as a graph (``label_sparse``)."""
    none = _Components(np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64), np.zeros(0))
    size = max(3, int(round(rule.contrast_window_mm / min(pixel_spacing))) | 1)
    slices = hu.shape[0]
    noisy = np.zeros(slices, dtype=bool)
    for a, b in too_noisy:
        noisy[a:b] = True

    def seeds_of(a: int, b: int, rows: slice = slice(None), columns: slice = slice(None)) -> np.ndarray:
        part = hu[a:b, rows, columns]
        seeds = (part >= rule.contrast_min_hu) & (part < threshold)
        seeds[noisy[a:b]] = False
        return seeds

    # the top-hat only where it can matter: the slices and rows/columns holding seeds
    any_k = np.zeros(slices, dtype=bool)
    any_r = np.zeros(hu.shape[1], dtype=bool)
    any_c = np.zeros(hu.shape[2], dtype=bool)
    for a in range(0, slices, slab):
        seeds = seeds_of(a, a + slab)
        any_k[a:a + slab] = seeds.any(axis=(1, 2))
        any_r |= seeds.any(axis=(0, 2))
        any_c |= seeds.any(axis=(0, 1))
    del seeds
    if not any_k.any():
        return none, labels
    ks, rs, cs = np.flatnonzero(any_k), np.flatnonzero(any_r), np.flatnonzero(any_c)
    pad = size
    box = (slice(int(ks[0]), int(ks[-1]) + 1),
           slice(max(0, int(rs[0]) - pad), min(hu.shape[1], int(rs[-1]) + 1 + pad)),
           slice(max(0, int(cs[0]) - pad), min(hu.shape[2], int(cs[-1]) + 1 + pad)))
    shape = (box[0].stop - box[0].start, box[1].stop - box[1].start, box[2].stop - box[2].start)
    plane = shape[1] * shape[2]
    found, values = [], []
    for a in range(box[0].start, box[0].stop, slab):
        b = min(box[0].stop, a + slab)
        sub = hu[a:b, box[1], box[2]]
        contrast = ndimage.grey_opening(sub, size=(1, size, size))
        np.subtract(sub, contrast, out=contrast)  # the top-hat, in the opening's memory
        local = seeds_of(a, b, box[1], box[2])
        local &= contrast >= rule.contrast_hu
        # dense voxels within one voxel (26-connected) keep it off, the box's bounds as the whole box's
        lo, hi = max(box[0].start, a - 1), min(box[0].stop, b + 1)
        dense = labels[lo:hi, box[1], box[2]] > 0
        if removed is not None and removed.size:
            dense |= voxels_in(removed, hu.shape, (slice(lo, hi), box[1], box[2]))
        near_dense = ndimage.binary_dilation(dense, structure=NEIGHBOURS)
        del dense
        local &= ~near_dense[a - lo:a - lo + (b - a)]
        del near_dense
        at = np.flatnonzero(local)
        found.append(at + (a - box[0].start) * plane)
        values.append(contrast.reshape(-1)[at])
        del contrast, local
    where = np.concatenate(found)
    ids, count = label_sparse(where, shape)
    if count == 0:
        return none, labels
    coords = np.stack(np.unravel_index(where, shape), axis=1)
    starts = np.full((count, 3), np.iinfo(np.int64).max, dtype=np.int64)
    stops = np.full((count, 3), -1, dtype=np.int64)
    np.minimum.at(starts, ids - 1, coords)
    np.maximum.at(stops, ids - 1, coords + 1)
    keep = np.bincount(ids, minlength=count + 1)[1:] <= rule.contrast_max_voxels
    offset = np.array([s.start for s in box], dtype=np.int64)
    keep &= _in_body(body, starts + offset, stops + offset)
    peak = np.full(count + 1, -np.inf, dtype=np.float32)
    np.maximum.at(peak, ids, np.concatenate(values))
    mapping = np.zeros(count + 1, dtype=np.int64)
    kept = int(keep.sum())
    mapping[1:][keep] = np.arange(first + 1, first + kept + 1)
    new_ids = mapping[ids]
    placed = new_ids > 0  # (never on a dense voxel: the contrast voxels keep away from them)
    if first + kept > np.iinfo(labels.dtype).max:
        labels = labels.astype(np.int32)
    at = coords[placed] + offset
    labels[at[:, 0], at[:, 1], at[:, 2]] = new_ids[placed]
    return _Components(starts[keep] + offset, stops[keep] + offset, peak[1:][keep].astype(np.float64)), labels


def _spend_budget(labels: np.ndarray, parts: _Components, dense_count: int,
                  max_patches: int, max_contrast_patches: int = 0) -> tuple[_Components, BudgetCut | None, int]:
    """Keep the strongest local-contrast components whose patches fit in
    ``max_contrast_patches``, then the strongest components whose patches fit in
    ``max_patches`` (dense ones first, by peak HU, then local-contrast ones by peak
    contrast), renumbered in their old order; also what was left out (None: nothing)."""
    patches = parts.stops[:, 0] - parts.starts[:, 0]  # one patch per slice it spans
    ids = np.arange(1, parts.count + 1)
    contrast = ids > dense_count
    keep = np.ones(parts.count, dtype=bool)
    if max_contrast_patches > 0 and int(patches[contrast].sum()) > max_contrast_patches:
        weak_first = np.flatnonzero(contrast)
        weak_first = weak_first[np.lexsort((weak_first, -parts.strength[weak_first]))]
        fits = int(np.searchsorted(np.cumsum(patches[weak_first]), max_contrast_patches, side="right"))
        keep[weak_first[fits:]] = False
    if max_patches > 0 and int(patches[keep].sum()) > max_patches:
        order = np.lexsort((ids, -parts.strength, contrast))
        order = order[keep[order]]
        fits = int(np.searchsorted(np.cumsum(patches[order]), max_patches, side="right"))
        keep[order[fits:]] = False
    if keep.all():
        return parts, None, dense_count
    flat = labels.reshape(-1)
    where = np.flatnonzero(flat)
    _relabel(flat, where, flat[where], keep)
    kept = _Components(parts.starts[keep], parts.stops[keep], parts.strength[keep])
    left = ~keep
    cut = BudgetCut(components=int(left.sum()), dense=int(left[:dense_count].sum()),
                    strongest_dense_hu=float(parts.strength[left & ~contrast].max(initial=0.0)),
                    strongest_contrast_hu=float(parts.strength[left & contrast].max(initial=0.0)),
                    slices=(int(parts.starts[left, 0].min()), int(parts.stops[left, 0].max()) - 1))
    return kept, cut, int(keep[:dense_count].sum())


def _patch_centres(labels: np.ndarray, parts: _Components) -> tuple[np.ndarray, np.ndarray]:
    """One patch centre per slice of every component (the middle of its extent there),
    sorted by slice; and the component of each."""
    centres = []
    owners = []
    for i in range(parts.count):
        new_id = i + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(parts.starts[i], parts.stops[i], strict=True))
        local = labels[box] == new_id
        for dk in range(local.shape[0]):
            rr, cc = np.nonzero(local[dk])
            if rr.size == 0:
                continue
            centres.append((
                box[0].start + dk,
                box[1].start + (int(rr.min()) + int(rr.max())) // 2,
                box[2].start + (int(cc.min()) + int(cc.max())) // 2,
            ))
            owners.append(new_id)
    centres_arr = np.asarray(centres, dtype=int).reshape(-1, 3)
    owners_arr = np.asarray(owners, dtype=int)
    order = np.argsort(centres_arr[:, 0], kind="stable")
    return centres_arr[order], owners_arr[order]


def baseline_mask(volume: Volume, rule: CandidateRule = BASELINE_RULE) -> np.ndarray:
    """The plain baseline: every voxel of every candidate component under ``rule``."""
    return find_candidates(volume, rule).labels > 0


def _mirrored(index: np.ndarray, n: int) -> np.ndarray:
    """``index`` (any integers) folded into 0..n-1 by mirroring at the edges (the edge pixel repeated, as
    ``numpy.pad``'s 'symmetric'), however far beyond them."""
    period = np.mod(index, 2 * n)
    return np.where(period < n, period, 2 * n - 1 - period)


def cut_patches(hu: np.ndarray, centres: np.ndarray, size: int, context: int = 1,
                outside: str = "air", stride: int = 1) -> np.ndarray:
    """float32 (n, size, size, 2 * context + 1) windows of ``hu`` around each centre.

    Channel ``context`` is the centre's slice; the others are the slices ``stride``, ``2 * stride`` ...
    away (its neighbours when 1; the edge slice repeats at the ends). Outside the image reads as air
    (``outside`` 'air'), or as the image mirrored at its edges ('mirror': for a crop, whose surroundings
    are not air).
    """
    n = centres.shape[0]
    half = size // 2
    depth = 2 * context + 1
    out = np.full((n, size, size, depth), -1000.0, dtype=np.float32)
    slices, rows, cols = hu.shape
    if outside == "mirror":
        offsets = np.arange(size) - half
        for i, (k, r, c) in enumerate(centres):
            at = np.ix_(_mirrored(r + offsets, rows), _mirrored(c + offsets, cols))
            for d in range(depth):
                out[i, ..., d] = hu[min(slices - 1, max(0, k + (d - context) * stride))][at]
        return out
    if outside != "air":
        raise ValueError(f"outside must be 'air' or 'mirror', not {outside!r}")
    for i, (k, r, c) in enumerate(centres):
        r0, c0 = r - half, c - half
        rs0, cs0 = max(0, r0), max(0, c0)
        rs1, cs1 = min(rows, r0 + size), min(cols, c0 + size)
        for d in range(depth):
            kk = min(slices - 1, max(0, k + (d - context) * stride))
            out[i, rs0 - r0:rs1 - r0, cs0 - c0:cs1 - c0, d] = hu[kk, rs0:rs1, cs0:cs1]
    return out


def paste_patches(shape: tuple[int, int, int], centres: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """Combine per-patch probabilities (n, size, size) into a volume by their maximum."""
    out = np.zeros(shape, dtype=np.float32)
    n, size = patches.shape[0], patches.shape[1]
    half = size // 2
    _, rows, cols = shape
    for i in range(n):
        k, r, c = centres[i]
        r0, c0 = r - half, c - half
        rs0, cs0 = max(0, r0), max(0, c0)
        rs1, cs1 = min(rows, r0 + size), min(cols, c0 + size)
        view = out[k, rs0:rs1, cs0:cs1]
        np.maximum(view, patches[i, rs0 - r0:rs1 - r0, cs0 - c0:cs1 - c0], out=view)
    return out
