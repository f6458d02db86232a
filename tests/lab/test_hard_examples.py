"""Hard-example mining in ``train_mixed``: draws follow the scores, and a mined epoch trains."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.network import InputSpec, build_unet
from lab.dataset import PatchSet
from lab.train import _draw, component_scores, train_mixed


def test_draw_follows_the_weights() -> None:
    rng = np.random.default_rng(0)
    idx = np.arange(100, 110)
    weight = np.zeros(10)
    weight[3], weight[7] = 0.9, 0.3
    drawn = _draw(rng, idx, weight, 4000)
    counts = {int(k): int(v) for k, v in zip(*np.unique(drawn, return_counts=True), strict=True)}
    assert set(counts) <= set(idx.tolist())
    # 0.9 : 0.3 -> about 3 : 1; the zero-weight ones almost never (clipped to a tiny weight, not excluded)
    assert 2.5 < counts[103] / counts[107] < 3.6
    assert sum(v for k, v in counts.items() if k not in (103, 107)) < 5
    assert _draw(rng, idx, weight, 0).size == 0


def _tiny_set(spec: InputSpec, n: int = 48) -> PatchSet:
    rng = np.random.default_rng(1)
    patches = rng.normal(30, 15, (n, spec.patch, spec.patch, spec.raw_channels)).astype(np.float16)
    targets = np.zeros((n, spec.patch, spec.patch), np.uint8)
    stone = np.arange(n) % 4 == 0
    c = spec.patch // 2
    patches[stone, c - 2:c + 2, c - 2:c + 2, :] = 900
    targets[stone, c - 2:c + 2, c - 2:c + 2] = 1
    return PatchSet(patches, targets, stone.copy(), np.zeros(n, int), stone.copy(), np.zeros(n, bool),
                    np.arange(n) % 2 == 0)


def test_component_scores_are_the_heads_output_per_patch() -> None:
    spec = InputSpec(context=1, wide=(), patch=32)
    data = _tiny_set(spec)
    model = build_unet(base=4, channels=spec.channels, patch=spec.patch, classifier=True)
    scores = component_scores(model, data.patches, spec, chunk=10)
    assert scores.shape == (len(data),)
    assert np.all((scores >= 0) & (scores <= 1))
    from inference.network import preprocess
    direct = model.predict(preprocess(data.patches[:5].astype(np.float32), spec), verbose=0)
    head = direct["component"] if isinstance(direct, dict) else direct[1]
    np.testing.assert_allclose(scores[:5], np.asarray(head)[:, 0], rtol=1e-4, atol=1e-5)


def test_a_mined_epoch_trains_and_writes_a_card(tmp_path: Path) -> None:
    from inference.candidates import DEFAULT_RULE

    spec = InputSpec(context=1, wide=(), patch=32)
    model, card = train_mixed(_tiny_set(spec), tmp_path / "m", spec=spec, rule=DEFAULT_RULE, base=4, epochs=2,
                              batch=16, hard_share=0.5, progress=False)
    assert (tmp_path / "m" / "model.keras").is_file()
    assert card["training"]["epochs"] == 2


def test_a_fine_tuned_model_is_predicted_as_the_model_it_started_from(tmp_path: Path) -> None:
    # a fine-tuned card without the starting model's test-time views would be predicted with one
    # view, and compared with its parent on settings instead of training (it happened: docs/model.md)
    import json

    from inference.candidates import DEFAULT_RULE

    spec = InputSpec(context=1, wide=(), patch=32)
    train_mixed(_tiny_set(spec), tmp_path / "start", spec=spec, rule=DEFAULT_RULE, base=4, epochs=1, batch=16,
                progress=False)
    start_card = json.loads((tmp_path / "start" / "card.json").read_text())
    start_card.update(name="uronode-stone-cascade", version="9.1.0", test_time_views=4, test_time_views_gate=0.1,
                      input_assumptions={"lone_slice": "its own neighbours"}, family="the start's family",
                      preprocessing_chosen_on={"resample_to_mm": "chosen on the validation side"})
    start_card["preprocessing"].update(resample_to_mm=0.75, resample_tolerance=0.15, mirror_below_px=128)
    start_card["components"]["dense_small"] = 0.8
    start_card["training"]["attribution"] = ["CC BY 4.0 data"]
    (tmp_path / "start" / "card.json").write_text(json.dumps(start_card))

    _, card = train_mixed(_tiny_set(spec), tmp_path / "tuned", spec=spec, rule=DEFAULT_RULE,
                          initial_model=tmp_path / "start" / "model.keras", base=4, epochs=1, batch=16,
                          progress=False)
    written = json.loads((tmp_path / "tuned" / "card.json").read_text())
    assert written == card
    assert card["test_time_views"] == 4 and card["test_time_views_gate"] == 0.1
    assert card["input_assumptions"] == {"lone_slice": "its own neighbours"}
    assert card["training"]["attribution"] == ["CC BY 4.0 data"]
    assert card["components"]["dense_small"] == 0.8
    # read through the same resampling and mirroring as the start (a fine-tuned 3.8.0 had lost them)
    assert card["preprocessing"] == start_card["preprocessing"]
    assert card["preprocessing_chosen_on"] == {"resample_to_mm": "chosen on the validation side"}
    assert card["family"] == "the start's family"
    assert "uronode-stone-cascade 9.1.0" in card["components"]["chosen_on"]
