"""Context slices by millimetres (``preprocessing.context_step_mm``): a series of slices closer than the step is
read with every ``stride``-th slice as context; any other series, and a lone slice, exactly as before."""

from __future__ import annotations

import numpy as np
import pytest

from inference.candidates import cut_patches
from inference.errors import ModelError
from inference.network import CASCADE_SPEC, InputSpec, cut_inputs


def test_the_stride_follows_the_spacing_and_is_1_without_a_step() -> None:
    spec = InputSpec.from_card({**CASCADE_SPEC.card(), "context_step_mm": 1.25})
    assert [spec.context_stride(mm) for mm in (0.4, 0.5, 0.625, 0.8, 0.84, 1.0, 1.25, 2.0, 5.0)] == \
        [3, 3, 2, 2, 1, 1, 1, 1, 1]
    assert InputSpec.from_card(CASCADE_SPEC.card()).context_step_mm == 0.0
    assert all(CASCADE_SPEC.context_stride(mm) == 1 for mm in (0.3, 0.625, 1.0))
    for bad in ("nan", float("inf"), -1, "1 mm", None):
        with pytest.raises(ModelError, match="context_step_mm"):
            InputSpec.from_card({**CASCADE_SPEC.card(), "context_step_mm": bad})


def test_context_slices_are_stride_slices_apart_and_the_edge_slice_repeats() -> None:
    hu = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((10, 8, 8), np.float32)  # slice k holds k
    centres = np.array([[5, 4, 4], [1, 4, 4], [9, 4, 4]])
    assert cut_patches(hu, centres, 4, 2)[:, 2, 2].tolist() == [[3, 4, 5, 6, 7], [0, 0, 1, 2, 3], [7, 8, 9, 9, 9]]
    assert cut_patches(hu, centres, 4, 2, stride=2)[:, 2, 2].tolist() == \
        [[1, 3, 5, 7, 9], [0, 0, 1, 3, 5], [5, 7, 9, 9, 9]]
    mirrored = cut_patches(hu, centres, 4, 2, "mirror", stride=2)
    assert mirrored[:, 2, 2].tolist() == [[1, 3, 5, 7, 9], [0, 0, 1, 3, 5], [5, 7, 9, 9, 9]]
    spec = InputSpec(patch=4, context=2, wide=(2,))
    inputs = cut_inputs(hu, centres, spec, stride=2)
    assert inputs.shape == (3, 4, 4, 6) and inputs[0, 2, 2, :5].tolist() == [1, 3, 5, 7, 9]
    assert (inputs[0, ..., 5] == 5).all()  # the wide view is of the centre's slice alone


def test_the_pipeline_reads_a_thin_series_with_the_stride_and_any_other_as_before(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import inference.pipeline as pipeline_module
    from inference.pipeline import Pipeline
    from lab.synth import generate_phantom

    default = Pipeline()
    stepped = Pipeline(default.model)
    stepped.spec = dataclasses.replace(stepped.spec, context_step_mm=1.25)
    ordinary = generate_phantom(3, rows=256, slice_spacing=1.25, slices=12, coverage=(0.72, 0.8), n_stones=2,
                                stone_sites=("kidney",)).to_volume()
    assert np.array_equal(default.run(ordinary).mask, stepped.run(ordinary).mask)

    strides: list[int] = []
    cut = pipeline_module.cut_inputs

    def recording(hu: np.ndarray, centres: np.ndarray, spec: InputSpec, stride: int = 1) -> np.ndarray:
        strides.append(stride)
        return cut(hu, centres, spec, stride)

    monkeypatch.setattr(pipeline_module, "cut_inputs", recording)
    thin = generate_phantom(3, rows=256, slice_spacing=0.625, slices=24, coverage=(0.72, 0.8), n_stones=2,
                            stone_sites=("kidney",)).to_volume()
    stepped.run(thin)
    assert strides and set(strides) == {2}
    strides.clear()
    default.run(thin)
    assert strides and set(strides) == {1}
    strides.clear()
    stepped.run(dataclasses.replace(thin, hu=thin.hu[:1], positions=thin.positions[:1],
                                    sop_instance_uids=thin.sop_instance_uids[:1], frame_numbers=(1,),
                                    source_paths=thin.source_paths[:1]))
    assert set(strides) <= {1}  # a lone slice has no context to space
