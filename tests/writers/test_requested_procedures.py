"""The orders a CT was made for reach its results (probe 42 #4): the SR and the key object document name them in
their Referenced Request Sequence (0040,A370), the SEG and the overlays carry the source's Request Attributes
Sequence; a CT that names none gives none, and every result still passes dciodvfy."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from inference.volume import load_volume
from inference.writers import save_results, write_results
from tests.writers.conftest import Case, dciodvfy, make_findings, stone_mask


def _order(procedure: str, accession: str | None, code: str) -> Dataset:
    item = Dataset()
    item.RequestedProcedureID = procedure
    if accession is not None:
        item.AccessionNumber = accession
    item.RequestedProcedureDescription = f"CT KUB {procedure}"
    coded = Dataset()
    coded.CodeValue, coded.CodingSchemeDesignator, coded.CodeMeaning = code, "99LOCAL", f"CT KUB {procedure}"
    item.RequestedProcedureCodeSequence = [coded]
    item.ScheduledProcedureStepID = f"SPS-{procedure}"
    return item


def test_a_ct_serving_two_orders_names_both_in_every_result(stones: Case, tmp_path: Path) -> None:
    sources = tmp_path / "ct"
    sources.mkdir()
    for number, source in enumerate(stones.volume.source_paths):
        ds = pydicom.dcmread(source)
        ds.AccessionNumber = "ACC-1"
        ds.RequestAttributesSequence = [_order("RP1", None, "KUB1"), _order("RP2", "ACC-2", "KUB2")]
        ds.save_as(sources / f"{number:03d}.dcm")
    volume = load_volume(sorted(str(p) for p in sources.iterdir()))
    results = write_results(volume, make_findings(volume, stone_mask(volume.shape)))
    paths = save_results(results, tmp_path / "out")
    assert results.kos is not None and results.seg is not None
    for document in (results.sr, results.kos):
        orders = document.ReferencedRequestSequence
        assert [(o.RequestedProcedureID, o.AccessionNumber, o.RequestedProcedureCodeSequence[0].CodeValue)
                for o in orders] == [("RP1", "ACC-1", "KUB1"), ("RP2", "ACC-2", "KUB2")]  # the study's, its own
        assert all(o.StudyInstanceUID == volume.study_instance_uid for o in orders)
    for image in (results.seg, *results.secondary_captures):
        assert [o.RequestedProcedureID for o in image.RequestAttributesSequence] == ["RP1", "RP2"]
    for path in paths:
        errors, _ = dciodvfy(path)
        assert not errors, (path.name, errors)


def test_a_ct_that_names_no_order_gives_none(stones: Case) -> None:
    assert "RequestAttributesSequence" not in pydicom.dcmread(stones.volume.source_paths[0])
    assert "ReferencedRequestSequence" not in stones.results.sr
    assert stones.results.kos is not None and "ReferencedRequestSequence" not in stones.results.kos
    assert stones.results.seg is not None and "RequestAttributesSequence" not in stones.results.seg


def test_an_order_s_broken_codes_and_long_texts_are_not_carried_into_the_results(stones: Case, tmp_path: Path) -> None:
    """Review 38: the source's items were copied as they were, and a code item without its meaning, a description
    longer than its LO, or a second requested procedure code made every result fail dciodvfy."""
    sources = tmp_path / "ct"
    sources.mkdir()
    order = _order("RP1", None, "KUB1")
    order.RequestedProcedureDescription = "X" * 80
    broken = Dataset()
    broken.CodeValue, broken.CodingSchemeDesignator = "NOMEANING", "99LOCAL"
    order.RequestedProcedureCodeSequence = [broken, *order.RequestedProcedureCodeSequence, _order("RP9", None,
                                            "EXTRA").RequestedProcedureCodeSequence[0]]
    for number, source in enumerate(stones.volume.source_paths):
        ds = pydicom.dcmread(source)
        ds.RequestAttributesSequence = [order]
        ds.save_as(sources / f"{number:03d}.dcm")
    volume = load_volume(sorted(str(p) for p in sources.iterdir()))
    results = write_results(volume, make_findings(volume, stone_mask(volume.shape)))
    (item,) = results.sr.ReferencedRequestSequence
    assert [c.CodeValue for c in item.RequestedProcedureCodeSequence] == ["KUB1"]  # whole, and one
    assert item.RequestedProcedureDescription == "X" * 64
    assert results.seg is not None
    (carried,) = results.seg.RequestAttributesSequence
    assert [c.CodeValue for c in carried.RequestedProcedureCodeSequence] == ["KUB1"]
    for written in save_results(results, tmp_path / "out"):
        errors, _ = dciodvfy(written)
        assert not errors, (written.name, errors)
