"""write_results and save_results: determinism, files, and one error per refused input."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest

from inference.writers import Results, WriterError, save_results, write_results
from tests.writers.conftest import Case, make_findings, stone_mask
from uronode.dicomfile import IMPLEMENTATION_VERSION_NAME


def _uids(results: Results) -> list[tuple[str, str]]:
    return [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in results.datasets]


def test_same_inputs_give_the_same_uids(stones: Case) -> None:
    again = write_results(stones.volume, make_findings(stones.volume, stone_mask(stones.volume.shape)))
    assert _uids(again) == _uids(stones.results)


def test_uids_are_new_and_distinct_per_object(stones: Case) -> None:
    uids = _uids(stones.results)
    sops = [sop for _, sop in uids]
    assert len(set(sops)) == len(sops)
    series = {s for s, _ in uids}
    assert len(series) == 4  # SEG, overlays, key objects, SR
    assert stones.volume.series_instance_uid not in series
    assert not set(sops) & set(stones.volume.sop_instance_uids)
    assert all(uid.startswith("2.25.") for uid in sops)


def _series_of(results: Results) -> dict[str, str]:
    return {ds.Modality: ds.SeriesInstanceUID for ds in results.datasets}


def test_other_source_bytes_give_other_instances_in_other_series(stones: Case, tmp_path: Path) -> None:
    """A series re-opened or an instance replaced: the results are new instances (a receiver that holds the first
    ones keeps them, Orthanc's default among them, and would drop changed content under their UIDs), in series of
    their own (an archive without IOCM would show the two runs mixed in one series otherwise: probe 18)."""
    copies = []
    for k, path in enumerate(stones.volume.source_paths):
        ds = pydicom.dcmread(path)
        if k == 0:
            ds.PatientName = "Corrected^Name"
        copies.append(str(tmp_path / f"{k}.dcm"))
        ds.save_as(copies[-1])
    volume = dataclasses.replace(stones.volume, source_paths=tuple(copies))
    again = write_results(volume, stones.findings)
    assert not {sop for _, sop in _uids(again)} & {sop for _, sop in _uids(stones.results)}
    assert not set(_series_of(again).values()) & set(_series_of(stones.results).values())
    assert set(_series_of(again)) == set(_series_of(stones.results))
    assert {str(ds.PatientName) for ds in again.datasets} == {"Corrected^Name"}


def test_other_findings_give_other_instances_in_other_series(stones: Case) -> None:
    mask = stone_mask(stones.volume.shape)
    mask[8, 30, 30] = 0
    again = write_results(stones.volume, make_findings(stones.volume, mask))
    assert not {sop for _, sop in _uids(again)} & {sop for _, sop in _uids(stones.results)}
    assert not set(_series_of(again).values()) & set(_series_of(stones.results).values())


def test_another_model_version_gives_other_uids(stones: Case) -> None:
    other = write_results(stones.volume, make_findings(stones.volume, stone_mask(stones.volume.shape), "2.0.0"))
    assert not {sop for _, sop in _uids(other)} & {sop for _, sop in _uids(stones.results)}


def test_no_stone_sr_uid_is_deterministic_too(no_stones: Case) -> None:
    again = write_results(no_stones.volume, no_stones.findings)
    assert _uids(again) == _uids(no_stones.results)


def test_save_results_writes_part10_files_and_replaces_them(stones: Case, tmp_path: Path) -> None:
    first = save_results(stones.results, tmp_path)
    second = save_results(stones.results, tmp_path)
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in first)
    assert [p.name for p in first] == [
        "SEG_1901_0001.dcm", "OT_1902_0005.dcm", "OT_1902_0006.dcm", "OT_1902_0009.dcm", "KO_1904_0001.dcm",
        "SR_1903_0001.dcm",
    ]
    for path, ds in zip(first, stones.results.datasets, strict=True):
        saved = pydicom.dcmread(path)
        assert saved.SOPInstanceUID == ds.SOPInstanceUID
        # the node's implementation identity, as in the files it stores (docs/conformance.md), not highdicom's
        assert (saved.file_meta.ImplementationClassUID, saved.file_meta.ImplementationVersionName) == (
            "2.25.163385317616489218133917553546152620637", IMPLEMENTATION_VERSION_NAME)


def test_findings_of_another_series_are_refused(stones: Case) -> None:
    findings = dataclasses.replace(stones.findings, series_instance_uid="1.2.3")
    with pytest.raises(WriterError, match="another series"):
        write_results(stones.volume, findings)


def test_a_mask_of_another_shape_is_refused(stones: Case) -> None:
    findings = dataclasses.replace(stones.findings, mask=np.zeros((1, 2, 3), np.uint8))
    with pytest.raises(WriterError, match="shape"):
        write_results(stones.volume, findings)


def test_findings_without_a_model_are_refused(stones: Case) -> None:
    findings = dataclasses.replace(stones.findings, model_version="")
    with pytest.raises(WriterError, match="model"):
        write_results(stones.volume, findings)


def test_a_volume_loaded_from_memory_is_refused(stones: Case) -> None:
    volume = dataclasses.replace(stones.volume, source_paths=("",) * stones.volume.shape[0])
    with pytest.raises(WriterError, match="source files"):
        write_results(volume, stones.findings)


def test_a_replaced_source_file_is_refused(stones: Case, tmp_path: Path) -> None:
    paths = list(stones.volume.source_paths)
    paths[0] = paths[1]
    volume = dataclasses.replace(stones.volume, source_paths=tuple(paths))
    with pytest.raises(WriterError, match="not the instance of slice 1"):
        write_results(volume, stones.findings)


def test_an_unreadable_source_is_refused(stones: Case, tmp_path: Path) -> None:
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not dicom")
    volume = dataclasses.replace(stones.volume, source_paths=(str(bad),) + stones.volume.source_paths[1:])
    with pytest.raises(WriterError, match="cannot be read"):
        write_results(volume, stones.findings)
