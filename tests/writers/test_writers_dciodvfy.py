"""dciodvfy (dicom3tools) finds no error in any result; its warnings are printed."""

from __future__ import annotations

import pydicom
import pytest

from tests.writers.conftest import Case, dciodvfy


@pytest.mark.parametrize("case_name", ["stones", "no_stones"])
def test_every_result_passes_dciodvfy(case_name: str, request: pytest.FixtureRequest) -> None:
    case: Case = request.getfixturevalue(case_name)
    assert case.paths
    failures = {}
    for path in case.paths:
        errors, warnings = dciodvfy(path)
        modality = pydicom.dcmread(path, stop_before_pixels=True).Modality
        for line in warnings:
            print(f"{path.name} ({modality}): {line}")
        if errors:
            failures[path.name] = errors
    assert not failures, failures


def test_all_four_kinds_are_checked(stones: Case) -> None:
    modalities = {pydicom.dcmread(p, stop_before_pixels=True).Modality for p in stones.paths}
    assert modalities == {"SEG", "OT", "KO", "SR"}
