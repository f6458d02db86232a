"""The shipped default model: its card, its size, and an evaluation on a few held-out generated series."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from inference.pipeline import Pipeline
from inference.runtime import load_model, resolve_model_dir
from lab.evaluate import baseline_predictor, evaluate
from lab.synth import generate_phantom

FOLDER = resolve_model_dir("default")


def test_card_says_what_the_code_and_the_worker_need() -> None:
    card = json.loads((FOLDER / "card.json").read_text())
    for key in ("name", "version", "input", "preprocessing", "threshold", "labels", "training", "metrics"):
        assert key in card, key
    label = card["labels"][0]
    assert label["segmented_property_type"]["scheme"] == "SCT"
    assert label["recommended_display_rgb"] == [255, 0, 0]
    # measured on real images, and the data's attribution travels with the model
    real = card["metrics"]["image_results"]["real_images"]["model"]
    assert real["stones"] > 0
    # every recorded figure with its 95 % interval over examinations, and the counts to pair it by
    low, high = real["intervals"]["stone_sensitivity"]
    assert low <= real["stone_sensitivity"] <= high
    assert real["interval_units"].startswith("examinations") and real["per_unit"]
    for count, total in (("stones", real["stones"]), ("false_stones", real["false_stones"]),
                         ("images", real["images"])):
        assert sum(u[count] for u in real["per_unit"].values()) == total, count
    assert sum(u["found"] for u in real["per_unit"].values()) == round(real["stone_sensitivity"] * real["stones"])
    lone = card["metrics"]["image_results"]["lone_slices"]
    assert sum(u["false_stones"] for u in lone["per_unit"].values()) == lone["false_stones"]
    assert any("CC BY 4.0" in a and "TEZ_ROI_AUG" in a for a in card["training"]["attribution"])
    # 3.2.0's slab length was chosen on a real stone-free CT: its attribution travels too
    assert card["candidates"]["noise_slab_mm"] > 0
    assert any("Lung-PET-CT-Dx" in a and "CC BY 4.0" in a for a in card["training"]["attribution"])
    assert int(card["version"].split(".")[0]) >= 3
    # 3.5.0 holds back components that do not stand out of their surroundings' noise, 3.6.0 those touching gas
    # (inference.components)
    assert card["components"]["min_significance"] > 0
    assert 0 < card["components"]["max_gas_share"] < 0.5
    assert "gas" in card["input_assumptions"]
    # 3.7.0 mirrors a tight crop beyond its edges (inference.network.InputSpec.outside)
    assert card["preprocessing"]["mirror_below_px"] >= 64 and "crops" in card["input_assumptions"]
    # 3.8.0 resamples a series whose pixels are far from those it learned at (inference.resample)
    assert card["preprocessing"]["resample_to_mm"] == 0.75 and 0 < card["preprocessing"]["resample_tolerance"] < 0.3
    # 3.9.0 keeps clear of what the candidate rule removes (a stent) and never reports metal (probe 36)
    assert card["candidates"]["clear_of_removed"] == 1 and card["components"]["max_peak_hu"] == 3000
    assert "hardware" in card["input_assumptions"]
    size = sum(p.stat().st_size for p in FOLDER.iterdir())
    assert size <= 20 * 1024 * 1024


def test_the_earlier_model_stays_loadable() -> None:
    earlier = Pipeline(load_model("cascade-2.1.0", cores=2))
    assert earlier.version == "2.1.0"
    phantom = generate_phantom(90_100, rows=128, slice_spacing=2.0, coverage=(0.66, 0.96), n_stones=2,
                               stone_sites=("kidney",))
    findings = earlier.run(phantom.to_volume())
    assert findings.mask.shape == phantom.hu.shape
    assert findings.model_version == "2.1.0"


def test_the_previous_defaults_stay_loadable_and_differ_only_by_their_rules() -> None:
    oldest, older, previous, mirrored, near_air, resampled, default = (
        Pipeline(load_model(name, cores=2))
        for name in ("cascade-3.2.0", "cascade-3.5.0", "cascade-3.6.0", "cascade-3.7.0", "cascade-3.7.1",
                     "cascade-3.8.0", "default"))
    assert (oldest.version, older.version, previous.version, mirrored.version, near_air.version,
            resampled.version) == ("3.2.0", "3.5.0", "3.6.0", "3.7.0", "3.7.1", "3.8.0")
    assert oldest.thresholds.min_significance is None and older.thresholds.min_significance is not None
    assert older.thresholds.max_gas_share is None and previous.thresholds.max_gas_share is not None
    # the same network and thresholds: 3.5.0 added the rule that holds back noise grains, 3.6.0 the gas rule,
    # 3.7.0 reads a tight crop mirrored beyond its edges, 3.7.1 only its wide views, 3.8.0 resamples a series
    # of pixels outside 0.64-0.86 mm to 0.75 mm, 3.9.0 keeps clear of what the candidate rule removes (a stent)
    # and never reports metal
    assert oldest.thresholds == dataclasses.replace(older.thresholds, min_significance=None)
    assert older.thresholds == dataclasses.replace(previous.thresholds, max_gas_share=None)
    assert previous.thresholds == mirrored.thresholds == near_air.thresholds == resampled.thresholds
    assert resampled.thresholds == dataclasses.replace(default.thresholds, max_peak_hu=None)
    assert previous.spec == dataclasses.replace(mirrored.spec, mirror_below=0) and mirrored.spec.mirror_below > 0
    assert mirrored.spec.mirror_near and mirrored.spec == dataclasses.replace(near_air.spec, mirror_near=True)
    assert not near_air.spec.mirror_near and near_air.spec == resampled.spec == default.spec
    assert all(not p.resample_to_mm for p in (oldest, older, previous, mirrored, near_air))
    assert (resampled.resample_to_mm, resampled.resample_tolerance) == (0.75, 0.15)
    assert (default.resample_to_mm, default.resample_tolerance) == (0.75, 0.15)
    assert all(p.rule.clear_of_removed == 0 for p in (oldest, older, previous, mirrored, near_air, resampled))
    assert default.rule == dataclasses.replace(resampled.rule, clear_of_removed=1)
    weights = [p.model.keras_model.get_weights()
               for p in (oldest, older, previous, mirrored, near_air, resampled, default)]
    for a in weights[:6]:
        assert len(a) == len(weights[6]) and all(np.array_equal(x, y) for x, y in zip(a, weights[6], strict=True))


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(load_model("default", cores=2))


def test_shipped_model_on_held_out_series_beats_the_baseline(pipeline: Pipeline) -> None:
    # seeds far from training (1000-9999) and from the documented evaluation (50000+)
    cases = [generate_phantom(90_000 + i, n_stones=3, coverage=(0.05, 0.95)) for i in range(3)]
    results = evaluate(cases, {"model": lambda v: pipeline.run(v).mask,
                               "baseline": baseline_predictor(130.0)})
    model, baseline = results["model"], results["baseline"]
    # guards against regressions of the shipped model, not the targets (see docs/model.md)
    assert model["stones"] >= 6
    assert model["sensitivity_3mm_and_more"] is None or model["sensitivity_3mm_and_more"] >= 0.9
    # 3.1.0 makes 1.23 false positives per generated series over the documented set (3.0.0: 1.07,
    # docs/model.md); on these three 4.67 (3.0.0: 1.67): three series swing a lot
    fp_per_series, dice = model["false_positives_per_series"], model["dice"]
    assert fp_per_series is not None and fp_per_series <= 6.0
    assert model["false_positives"] < baseline["false_positives"]
    # 3.0.0 draws stones the half-maximum way real boxes taught it, wider than the generator's
    # truth: Dice 0.74 over the held-out set, 0.22 on these three (the 130 HU baseline: 0.26)
    assert dice is not None and dice >= 0.15
