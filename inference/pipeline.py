"""Volume -> candidates -> patch network -> mask -> measured stones (``Findings``).

``Pipeline`` loads its model once (construct one per worker process) and then
``run(volume)`` any number of series. No network, no DICOM writing.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inference.candidates import BudgetCut, CandidateRule, Tube, find_candidates
from inference.components import (
    SIGNIFICANCE_SCORE_FLOOR,
    ComponentTable,
    ComponentThresholds,
    component_table,
    select_mask,
)
from inference.enhancement import enhanced_blood
from inference.errors import ModelError
from inference.network import InputSpec, KerasModel, cut_inputs, preprocess
from inference.postprocess import Findings, measure_stones
from inference.resample import (
    RESAMPLE_TOLERANCE,
    body_window,
    copy_part,
    mask_to_original,
    resample_grid,
    resample_volume,
    table_to_original,
    to_original,
)
from inference.runtime import LoadedModel, load_model
from inference.volume import ENERGY_CAUTION, INTENDED_USE_CAUTIONS, Volume, load_volume, mirrored
from uronode.contrast import without_free_text

logger = logging.getLogger(__name__)

BATCH = 64
CUT_CHUNK = 512
"""Patches cut from the volume at a time (each about 0.1 MB of HU)."""
VIEWS: dict[int, tuple[tuple[int, bool], ...]] = {
    1: ((0, False),),
    2: ((0, False), (0, True)),
    4: ((0, False), (1, False), (2, False), (3, False)),
    8: tuple((k, flip) for flip in (False, True) for k in range(4)),
}
"""Test-time views (quarter turns, mirrored or not) whose outputs are averaged: the card's
``test_time_views`` (1 = the patch as it is)."""
VIEWS_GATE = 0.1
"""A patch is seen in the other test-time views only when, seen as it is, its component score or
highest pixel probability reaches this (the card's ``test_time_views_gate``; 0: every patch)."""

MEASURED_PIXEL_MM = (0.375, 1.5)
"""The pixel sizes the shipped model's figures reach (docs/model.md: real images resized by 0.5-2 from about
0.75 mm, generated series at 0.48-0.96 mm). Outside them the series is still analysed (resampled to the card's
pixel size), with a caution: at 3 mm the real example CT, stone-free, got 16 false stones as a series."""


MEASURED_SLICE_MM = (1.0, 3.0)
"""The slice spacings of series the shipped model's figures reach (docs/model.md: generated series of 1-2 mm, the
real example CT at 3 mm). Outside them a series is still analysed, with a caution (probe 30: at 0.625 mm a
phlebolith the 1.25 mm series of the same phantom left out was reported, as two stones)."""
CONTRAST_CAUTION = re.compile(r"(Perhaps c|C)ontrast-enhanced \(")
"""How a caution about contrast begins (``inference.volume.contrast_note``, ``inference.enhancement``)."""
CLEAR_CONTRAST = "Contrast-enhanced ("
"""A header's clear sign (a phase named): the pixels add nothing to it. After a weaker one (an agent alone, a
mention of contrast) the pixels' finding is added (probe 33: an agent's "perhaps" hid an aorta of 394 HU)."""
BODY_EXTENT_MM = 800.0
"""A series longer than this along the body covers more than an abdomen and pelvis (a chest-abdomen-pelvis scan
runs to about 750 mm): its cautions say that findings outside them are no stones (a whole-body trauma CT)."""
SPACING_TOLERANCE = 0.05
"""How far outside ``MEASURED_SLICE_MM`` a spacing may lie without a caution (a spacing of 0.999 mm is 1 mm)."""
METAL_HU = 3000.0
"""A voxel at or above this is metal: no tissue and no urinary stone reaches it on conventional CT (a 12-bit CT
scale tops out at 3,071 HU, where metal saturates)."""
METAL_MIN_MM3 = 5.0
"""Metal of at least this volume gives a caution (a surgical clip is about 7 mm^3)."""
BUDGET_CAUTION_DENSE_HU = 300.0
"""A dense candidate left out by the budget whose densest voxel reaches this (HU) may have been a stone: the budget's
cut is then said. In noise (a noisy chest CT's shoulders, an enhanced CT's vessels) the dense ones left out are the
faintest, just over the dense threshold, and nothing is said."""
BUDGET_CAUTION_HU = 120.0
"""A local-contrast candidate left out by the budget that stood this far above its surroundings (HU; twice the
rule's 60) may have been a small stone: the budget's cut is then said. In noise the cut falls just above 60 HU and
nothing is said (docs/model.md, "Candidates")."""


def metal_caution(volume: Volume) -> str | None:
    """A caution where the series holds metal (``METAL_HU``, at least ``METAL_MIN_MM3``): an implant, clips or
    wires, whose streaks hide stones and make false ones (probe 36); contrast as dense is said too."""
    voxel_mm3 = volume.pixel_spacing[0] * volume.pixel_spacing[1] * (volume.slice_spacing or 1.0)
    per_slice = np.array([np.count_nonzero(plane >= METAL_HU) for plane in volume.hu])  # a slice at a time
    if per_slice.sum() * voxel_mm3 < METAL_MIN_MM3:
        return None
    return (f"Metal, or contrast as dense ({METAL_HU:,.0f} HU or more: an implant, clips or wires?), on "
            f"{volume.where(np.flatnonzero(per_slice))}: its streaks can hide stones near it and make false ones.")


def analysis_cautions(tubes: Sequence[Tube], budget: BudgetCut | None, rule: CandidateRule,
                      volume: Volume) -> tuple[str, ...]:
    """What the candidate stage met that makes the findings less sure (probe 36): a long thin dense structure it
    removed whole (a ureteral stent, a catheter: a stone touching it goes with it, or only its part beside it is
    measured), and candidates the budget left out that may have been stones (streaks of metal, strong noise);
    where on ``volume`` (its images' own numbers, as the report names a stone's)."""
    said = []
    for tube in tubes:
        a, b = tube.slices
        parts = "" if rule.clear_of_removed else ", and parts of it may be reported as stones"
        said.append(f"A long thin dense structure, {tube.length_mm:.0f} mm on {volume.where(range(a, b + 1))} (a "
                    f"ureteral stent, a catheter, a wire or a vessel?), is not analysed: stones touching it may be "
                    f"missed or measured short{parts}.")
    if budget is not None and (budget.strongest_dense_hu >= BUDGET_CAUTION_DENSE_HU
                               or budget.strongest_contrast_hu >= BUDGET_CAUTION_HU):
        a, b = budget.slices
        what = [f"{budget.dense} dense, up to {budget.strongest_dense_hu:.0f} HU"] if budget.dense else []
        if budget.components > budget.dense:
            what.append(f"{budget.components - budget.dense} standing up to {budget.strongest_contrast_hu:.0f} HU "
                        "above their surroundings")
        said.append(f"{budget.components} candidate regions on {volume.where(range(a, b + 1))} were not looked at, "
                    f"over the candidate budget ({', '.join(what)}: metal streaks or strong noise?): stones there "
                    "may be missed.")
    return tuple(said)


def scan_end_cautions(findings: Findings, volume: Volume) -> tuple[str, ...]:
    """A stone that reaches the first or last image of a series may go on beyond the scanned range: its size,
    length and volume are of the part scanned (probe 52: a 12 mm stone cut at its centre by the scan's end was
    reported as 12.2 mm and 532 mm3 of its 905, and nothing said so). Stones are named as the report names them."""
    last = volume.hu.shape[0] - 1
    if last < 1:
        return ()  # a lone image: its own caution says what it cannot show
    cut = [(number, [k for k in (0, last) if k in stone.slice_indices])
           for number, stone in enumerate(findings.stones, 1)]
    cut = [(number, ends) for number, ends in cut if ends]
    if not cut:
        return ()
    # one sentence for them all (review 51: one a stone had crowded the series' own cautions off the overlays)
    named = [f"{number} ({volume.where(ends)})" for number, ends in cut]
    if len(named) == 1:
        return (f"Stone {named[0]} reaches the end of the scan: it may go on beyond it, and its size and volume are"
                " of the part scanned.",)
    return (f"Stones {', '.join(named[:-1])} and {named[-1]} reach the end of the scan: they may go on beyond it,"
            " and their sizes and volumes are of the part scanned.",)


def input_cautions(volume: Volume, found: tuple[str, ...] = ()) -> tuple[str, ...]:
    """What about ``volume`` makes its findings less sure than the model's figures say, a sentence each (empty
    for an ordinary series): pixels outside ``MEASURED_PIXEL_MM``, a series' slice spacing outside
    ``MEASURED_SLICE_MM``, what loading found (``Volume.notes``: duplicate positions left out, missing
    slices, lossy compression, contrast the header names) and, where the header names no contrast, enhanced
    blood in the pixels (``inference.enhancement``) and a multi-energy image read all the same
    (``inference.volume.energy_note``); metal (``metal_caution``) and ``found``, what the analysis met
    (``analysis_cautions``), come after contrast and a multi-energy image, before the rest. First of all what puts
    the series outside the model's intended use: another region or a child (``intended_use_notes``), a series
    longer than ``BODY_EXTENT_MM``."""
    low, high = MEASURED_PIXEL_MM
    size = max(volume.pixel_spacing)
    pixels: tuple[str, ...] = ()
    if size > high:
        pixels = (f"Pixels of {size:.2f} mm are coarser than any the model was measured on (up to {high:g} mm): "
                  "small stones may be missed and other dense structures reported as stones.",)
    elif min(volume.pixel_spacing) < low:
        pixels = (f"Pixels of {min(volume.pixel_spacing):.2f} mm are finer than any the model was measured on "
                  f"(from {low:g} mm): its findings there are less sure than its figures say.",)
    slices: tuple[str, ...] = ()
    thin, thick = MEASURED_SLICE_MM
    step = volume.slice_spacing
    if volume.hu.shape[0] > 1 and step < thin * (1 - SPACING_TOLERANCE):
        slices = (f"Slices {step:.2f} mm apart are closer than any the model was measured on (from {thin:g} mm): "
                  "a dense structure may be reported as a stone, or as two, more often than its figures say.",)
    elif volume.hu.shape[0] > 1 and step > thick * (1 + SPACING_TOLERANCE):
        slices = (f"Slices {step:.2f} mm apart are farther than any the model was measured on (up to {thick:g} mm):"
                  " small stones may be missed, and sizes along the body are coarse.",)
    contrast = tuple(note for note in volume.notes if CONTRAST_CAUTION.match(note))
    if not any(note.startswith(CLEAR_CONTRAST) for note in contrast):  # a weaker sign leaves the pixels to say more
        blood = enhanced_blood(volume.hu, volume.pixel_spacing, volume.offsets_mm)
        contrast += (blood.caution(),) if blood is not None else ()
    energy = tuple(note for note in volume.notes if ENERGY_CAUTION in note)
    intended = tuple(note for note in volume.notes if note.startswith(INTENDED_USE_CAUTIONS))
    rest = (note for note in volume.notes
            if not CONTRAST_CAUTION.match(note) and ENERGY_CAUTION not in note and note not in intended)
    offsets = volume.offsets_mm
    extent = float(offsets.max() - offsets.min()) if offsets.size else 0.0
    # probe 46: a whole-body trauma CT's pineal gland reported beside its stones; after contrast (review 41: a
    # trauma CT is mostly enhanced, and that caution questions the urinary tract itself)
    longer = ((f"The series covers {extent:.0f} mm along the body, more than an abdomen and pelvis: what the model"
               " marks above the kidneys or below the bladder is no urinary stone.",) if extent > BODY_EXTENT_MM
              else ())
    metal = metal_caution(volume)
    # outside the intended use (another region, a child), contrast and a multi-energy image first: they question
    # every finding, and an overlay shows as many cautions as it has room for; then what hides stones in parts
    return (*intended, *contrast, *energy, *longer, *((metal,) if metal else ()), *found, *pixels, *slices, *rest)


def _table_mirrored(table: ComponentTable, count: int, columns: int) -> ComponentTable:
    """``table`` of the mirrored copy (``inference.volume.mirrored``) on the series' own grid: each densest voxel and
    box with its slices counted back and its columns mirrored."""
    peaks = np.asarray(table.peaks, dtype=np.int64).reshape(-1, 3).copy()
    peaks[:, 0] = count - 1 - peaks[:, 0]
    peaks[:, 2] = columns - 1 - peaks[:, 2]
    boxes: list[tuple[slice, ...] | None] = [
        None if box is None else (slice(count - box[0].stop, count - box[0].start), box[1],
                                  slice(columns - box[2].stop, columns - box[2].start)) for box in table.boxes]
    return dataclasses.replace(table, peaks=peaks, boxes=boxes)


def _met_mirrored(met: tuple[tuple[Tube, ...], BudgetCut | None], count: int) -> tuple[tuple[Tube, ...],
                                                                                         BudgetCut | None]:
    """What the candidate stage met on the mirrored copy, its slices counted on the series' own order."""
    def back(slices: tuple[int, int]) -> tuple[int, int]:
        return count - 1 - slices[1], count - 1 - slices[0]

    tubes, budget = met
    return (tuple(dataclasses.replace(t, slices=back(t.slices)) for t in tubes),
            None if budget is None else dataclasses.replace(budget, slices=back(budget.slices)))


class Pipeline:
    """The stone finder with its model loaded.

    ``model``: a ``LoadedModel``, a folder, or a name under ``models/`` (default
    ``models/default``). ``cores`` sets TensorFlow's intra-op threads.
    """

    def __init__(self, model: LoadedModel | str | Path | None = None, *, cores: int | None = None,
                 threshold: float | None = None) -> None:
        if threshold is not None and not 0.0 < float(threshold) < 1.0:
            raise ModelError(f"a threshold of {threshold} is not between 0 and 1 (a score threshold, e.g. 0.5)")
        self.model = model if isinstance(model, LoadedModel) else load_model(model, cores=cores)
        card = self.model.card
        self.rule = CandidateRule.from_card(card.candidates)
        self.threshold = float(threshold if threshold is not None else card.threshold)
        self.patch = int(card.input["patch"])
        self.spec = InputSpec.from_card(card.preprocessing, self.patch)
        self.resample_to_mm = float(card.preprocessing.get("resample_to_mm") or 0.0)
        tolerance = card.preprocessing.get("resample_tolerance")
        try:
            self.resample_tolerance = RESAMPLE_TOLERANCE if tolerance is None else float(tolerance)
        except (TypeError, ValueError):
            raise ModelError(f"model card preprocessing.resample_tolerance {tolerance!r} is not a number") from None
        if not 0.0 <= self.resample_tolerance < 1.0:
            raise ModelError(f"model card preprocessing.resample_tolerance {self.resample_tolerance} is not in [0, 1)")
        self.thresholds = ComponentThresholds.from_card(card.raw, self.threshold)
        if threshold is not None:
            # one number overrides every threshold: the pixel one and every group's
            self.thresholds = ComponentThresholds(threshold, threshold, threshold, threshold,
                                                  self.thresholds.small_voxels, self.thresholds.score,
                                                  min_significance=self.thresholds.min_significance,
                                                  max_gas_share=self.thresholds.max_gas_share,
                                                  min_depth_mm=self.thresholds.min_depth_mm)
        # the significance and the gas share are measured only where a threshold could keep the component:
        # at or above the lowest group threshold, or SIGNIFICANCE_SCORE_FLOOR if lower (the lowest a choice
        # of thresholds counts, so that choosing on the card's table sees it too); every component when the
        # override can keep one whatever its score
        t = self.thresholds
        self._significance_from = (-np.inf if t.override_pixel is not None else
                                   min(SIGNIFICANCE_SCORE_FLOOR, t.dense_small, t.dense_large, t.contrast))
        self.has_component_head = len(self.model.keras_model.outputs) > 1
        self.min_voxels = int(card.postprocessing.get("min_voxels", 1))
        self.box_margin_mm = float(card.postprocessing.get("box_margin_mm", 5.0))
        self.views = int(card.raw.get("test_time_views", 1))
        self.views_gate = float(card.raw.get("test_time_views_gate", VIEWS_GATE))
        if self.views not in VIEWS:
            raise ModelError(f"model card test_time_views {self.views} is not one of {sorted(VIEWS)}")
        self._forward = self._compile(self.model.keras_model)
        # a volume of one slice (an uploaded image, a single-frame DICOM file) goes to the card's lone-image network
        # where it names one (files.lone_model); every other volume, a series, to the model
        lone = self.model.lone_keras_model
        self._lone_forward = None if lone is None else self._compile(lone)
        self.last_timings: dict[str, float] = {}
        self.last_met: tuple[tuple[Tube, ...], BudgetCut | None] = ((), None)
        """What the last analysis met (the candidate stage's tubes and budget cut): said with the findings
        (``analysis_cautions``)."""

    def _compile(self, keras_model: KerasModel) -> Callable[[np.ndarray], Any]:
        """A network's forward pass as one TensorFlow graph; it returns TensorFlow tensors (untyped)."""
        import tensorflow as tf

        channels = int(self.model.card.input["channels"])

        @tf.function(input_signature=[tf.TensorSpec([None, self.patch, self.patch, channels], tf.float32)])
        def forward(x: Any) -> Any:
            return keras_model(x, training=False)

        return forward

    @property
    def name(self) -> str:
        return self.model.card.name

    @property
    def version(self) -> str:
        return self.model.card.version

    @property
    def has_lone_network(self) -> bool:
        """Whether a volume of one slice is predicted by a network of its own (the card's files.lone_model)."""
        return self._lone_forward is not None

    def predict_patches(self, patches_hu: np.ndarray, lone: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(n, patch, patch, raw channels) HU -> stone probability (n, patch, patch) and, for
        models with a component head, the centre component's probability (n,). ``lone``: the patches
        are of a volume of one slice, for the lone-image network where the card names one.

        With several test-time views, every patch is first seen as it is; only the patches
        whose component score or highest pixel probability then reaches ``self.views_gate``
        are seen in the other views too, and their outputs averaged. A patch far under every
        threshold cannot reach one by averaging, and most candidates (bone, vessel walls,
        noise) are such patches: the views cost what the undecided patches cost.
        """
        out = np.empty(patches_hu.shape[:3], dtype=np.float32)
        scores = np.empty(patches_hu.shape[0], dtype=np.float32) if self.has_component_head else None
        views = VIEWS[self.views]
        forward = self._lone_forward if lone and self._lone_forward is not None else self._forward
        for start in range(0, patches_hu.shape[0], BATCH):
            x = preprocess(patches_hu[start:start + BATCH], self.spec)
            pixels, score = self._view(x, *views[0], forward=forward)
            if len(views) > 1:
                decided = pixels.reshape(len(x), -1).max(axis=1)
                if score is not None:
                    decided = np.maximum(decided, score)
                undecided = np.flatnonzero(decided >= self.views_gate)
                if undecided.size:
                    xs = np.ascontiguousarray(x[undecided])
                    pixel_sum, score_sum = pixels[undecided], None if score is None else score[undecided]
                    for k, flip in views[1:]:
                        p, sc = self._view(xs, k, flip, forward=forward)
                        pixel_sum += p
                        if score_sum is not None and sc is not None:
                            score_sum += sc
                    pixels[undecided] = pixel_sum / len(views)
                    if score is not None and score_sum is not None:
                        score[undecided] = score_sum / len(views)
            out[start:start + BATCH] = pixels
            if scores is not None and score is not None:
                scores[start:start + BATCH] = score
        return out, scores

    def _view(self, x: np.ndarray, k: int, flip: bool,
              forward: Callable[[np.ndarray], Any] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The network's outputs on ``x`` turned ``k`` quarter turns (and mirrored), turned back
        (``forward``: the network's pass, the model's by default)."""
        view = np.rot90(x, k, axes=(1, 2))
        view = np.ascontiguousarray(view[:, :, ::-1] if flip else view)
        y = (forward if forward is not None else self._forward)(view)
        pixels = (y[0] if self.has_component_head else y).numpy()[..., 0]
        pixels = pixels[:, :, ::-1] if flip else pixels
        score = y[1].numpy()[:, 0].astype(np.float32) if self.has_component_head else None
        return np.ascontiguousarray(np.rot90(pixels, -k, axes=(1, 2)), dtype=np.float32), score

    def analyse(self, volume: Volume) -> tuple[np.ndarray, np.ndarray, ComponentTable]:
        """Pixel stone probability (float16, 0 away from candidates), the mask of the kept
        components (uint8) and the table of candidate components they were chosen from, all on
        ``volume``'s grid; analysed at the card's ``resample_to_mm`` where the series' pixels are
        further from it than the card's ``resample_tolerance`` (a share of it; default
        ``inference.resample.RESAMPLE_TOLERANCE``). A feet-first series is analysed as the head-first series of
        the same patient (``inference.volume.mirrored``), which is what the model learned from, and its outputs
        mirrored back (probe 37: the same abdomen's stones had been measured up to 0.3 mm and 4 % of their volume
        apart when it lay feet first)."""
        if not volume.index_from_head:
            return self._analyse_on_grid(volume)
        prob, mask, table = self._analyse_on_grid(mirrored(volume))
        count, _, columns = volume.shape
        self.last_met = _met_mirrored(self.last_met, count)
        return prob[::-1, :, ::-1], mask[::-1, :, ::-1], _table_mirrored(table, count, columns)

    def _analyse_on_grid(self, volume: Volume) -> tuple[np.ndarray, np.ndarray, ComponentTable]:
        """``analyse`` of a head-first series (or a lone slice in any plane)."""
        grid = resample_grid(volume, self.resample_to_mm, self.resample_tolerance)
        if grid is None:
            return self._analyse(volume)
        t0 = time.perf_counter()
        # interpolated finer, the copy keeps the series' noise peaks but not its spread: the candidate
        # rule measures the noise on the whole series itself (not on the body's part below: its noise
        # blocks would sit elsewhere, and white noise's candidates change steeply with the threshold);
        # averaged coarser, on the copy
        finer = grid.scale[0] < 1 and grid.scale[1] < 1
        # a copy finer on both axes (a series of coarser pixels than the card's: more pixels) keeps only the
        # body's part (inference.resample.body_window, copy_part), cut from each slice's whole copy
        window = body_window(volume) if finer else None
        part = copy_part(window, grid) if window is not None else None
        # not where the part would be read beyond its edges otherwise than the whole copy (a tight crop,
        # mirrored, against air): the network reads them differently
        if part is not None and self.spec.outside(*part.shape) != self.spec.outside(grid.new_rows, grid.new_columns):
            part = None
        prob, mask, table = self._analyse(resample_volume(volume, grid, part), noise_of=volume if finer else None)
        back = (to_original(prob, grid, np.float16, part), mask_to_original(mask, grid, part),
                table_to_original(table, grid, part))
        self.last_timings["resample_s"] = time.perf_counter() - t0 - sum(
            v for k, v in self.last_timings.items() if k.endswith("_s"))
        return back

    def _analyse(self, volume: Volume, noise_of: Volume | None = None) -> tuple[np.ndarray, np.ndarray, ComponentTable]:
        t0 = time.perf_counter()
        found = find_candidates(volume, self.rule, noise_of)
        t1 = time.perf_counter()
        prob = np.zeros(volume.shape, dtype=np.float16)
        scores = None
        if found.centres.shape[0]:
            # cut, predict and paste a chunk at a time: memory stays flat however many candidates a series has
            lone = volume.shape[0] == 1
            half = self.patch // 2
            _, rows, cols = volume.shape
            chunk_scores = []
            stride = 1 if lone else self.spec.context_stride(volume.slice_spacing)
            for i in range(0, found.centres.shape[0], CUT_CHUNK):
                centres = found.centres[i:i + CUT_CHUNK]
                probs, chunk_score = self.predict_patches(cut_inputs(volume.hu, centres, self.spec, stride),
                                                          lone=lone)
                if chunk_score is not None:
                    chunk_scores.append(chunk_score)
                for (k, r, c), p in zip(centres, probs, strict=True):
                    r0, c0 = r - half, c - half
                    rs0, cs0 = max(0, r0), max(0, c0)
                    rs1, cs1 = min(rows, r0 + self.patch), min(cols, c0 + self.patch)
                    view = prob[k, rs0:rs1, cs0:cs1]
                    np.maximum(view, p[rs0 - r0:rs1 - r0, cs0 - c0:cs1 - c0].astype(np.float16), out=view)
                del probs
            scores = np.concatenate(chunk_scores) if chunk_scores else None
        t2 = time.perf_counter()
        table = component_table(found.labels, found.count, found.dense_count, volume.hu, prob,
                                found.component_of_centre, scores, self.thresholds.small_voxels,
                                pixel_mm=volume.pixel_spacing if self.thresholds.measures_surroundings else None,
                                significance_score=self.thresholds.score,
                                significance_from=self._significance_from,
                                measure_significance=self.thresholds.min_significance is not None,
                                measure_gas=self.thresholds.max_gas_share is not None,
                                measure_depth=self.thresholds.min_depth_mm is not None)
        mask = select_mask(found.labels, prob, table, self.thresholds, removed=found.removed)
        self.last_met = (found.tubes, found.budget)
        t3 = time.perf_counter()
        self.last_timings = {"candidates_s": t1 - t0, "network_s": t2 - t1, "components_s": t3 - t2,
                             "patches": float(found.centres.shape[0]), "over_budget": float(found.over_budget)}
        return prob, mask, table

    def run(self, volume: Volume) -> Findings:
        """Find and measure the stones of one series."""
        prob, mask, _ = self.analyse(volume)
        t0 = time.perf_counter()
        findings = measure_stones(  # the uint8 mask as it is: a bool copy would be another byte a voxel
            volume, mask, probability=prob, min_voxels=self.min_voxels, box_margin_mm=self.box_margin_mm,
            model_name=self.name, model_version=self.version, max_hu=self.thresholds.max_peak_hu,
        )
        # the series' own cautions first, the stones cut by the scan's ends after (an overlay shows what fits)
        cautions = (*input_cautions(volume, analysis_cautions(*self.last_met, self.rule, volume)),
                    *scan_end_cautions(findings, volume))
        if volume.hu.shape[0] == 1:  # last: what the input itself says comes first on an overlay
            cautions = (*cautions, self.lone_caution())
        if cautions:
            findings = dataclasses.replace(findings, cautions=cautions)
            logger.warning("series %s: %s", volume.series_instance_uid, without_free_text(" ".join(cautions)))
        self.last_timings["postprocess_s"] = time.perf_counter() - t0 + self.last_timings.pop("components_s")
        over = int(self.last_timings.get("over_budget", 0))  # probe 30: the budget dropped some and nothing said so
        logger.info(
            "series %s: %d stone(s) from %d candidate patch(es)%s",
            volume.series_instance_uid, len(findings.stones), int(self.last_timings["patches"]),
            f"; {over} weaker candidate(s) over the budget not looked at (docs/model.md, \"Candidates\")" if over else "",
        )
        return findings

    def lone_caution(self) -> str:
        """What a finding on one image read alone is worth, in the model card's own figure where it has one (its
        real stone-free CT read slice by slice): issue 10's lone-slice target is unmet, and a radiologist uploading
        one file was told nothing of it (the card and docs/model.md said it)."""
        lone = self.model.card.raw.get("metrics", {}).get("image_results", {}).get("lone_slices", {})
        share = lone.get("share_with_a_false_stone") if isinstance(lone, dict) else None
        measured = (f": on a real stone-free CT read slice by slice, this model showed a false stone on {share:.0%}"
                    f" of the slices ({lone.get('slices_with_a_false_stone')} of {lone.get('slices')})"
                    if isinstance(share, float) else "")
        return (f"Read as one image, without the neighbouring slices a series gives{measured}; a whole series has"
                " far fewer false stones. Send the whole series where you can.")

    def run_files(self, paths: Sequence[str | Path]) -> tuple[Volume, Findings]:
        """Load one series' files and run; raises ``VolumeError`` for series it cannot read."""
        volume = load_volume(paths)
        return volume, self.run(volume)
