"""The key object selection read back by highdicom: exactly the CT slices with stones, in the source study."""

from __future__ import annotations

import dataclasses

import highdicom as hd
import numpy as np
import pydicom
import pytest

from inference.writers import KOS_SERIES_NUMBER, MANUFACTURER, WriterError, write_results
from inference.writers.kos import build_key_objects
from inference.writers.sources import Identity, read_sources
from tests.writers.conftest import MODEL_NAME, MODEL_VERSION, Case, dciodvfy, make_findings
from uronode import __version__


@pytest.fixture(scope="module")
def kos(stones: Case) -> hd.ko.KeyObjectSelectionDocument:
    path = next(p for p in stones.paths if p.name.startswith("KO_"))
    return hd.ko.KeyObjectSelectionDocument.from_dataset(pydicom.dcmread(path))


def _source_headers(case: Case) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in case.volume.source_paths]


def test_kos_references_exactly_the_ct_slices_with_stones_in_slice_order(
    kos: hd.ko.KeyObjectSelectionDocument, stones: Case
) -> None:
    sources = _source_headers(stones)
    assert stones.findings.slices_with_stones == (4, 5, 8)  # the fixture's mask: two stones on 4-5, one on 8
    wanted = [(str(sources[k].SOPClassUID), stones.volume.sop_instance_uids[k])
              for k in stones.findings.slices_with_stones]
    references = kos.content.get_references()
    assert [(r.referenced_sop_class_uid, r.referenced_sop_instance_uid) for r in references] == wanted
    assert all(r.value_type == hd.sr.ValueTypeValues.IMAGE for r in references)
    assert all("ReferencedFrameNumber" not in r.ReferencedSOPSequence[0] for r in references)
    spanned = {uid for stone in stones.findings.stones for uid in stone.sop_instance_uids}
    assert {uid for _, uid in wanted} == spanned


def test_kos_evidence_names_the_source_series_and_study(kos: hd.ko.KeyObjectSelectionDocument, stones: Case) -> None:
    (study,) = kos.CurrentRequestedProcedureEvidenceSequence
    assert study.StudyInstanceUID == stones.volume.study_instance_uid
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == stones.volume.series_instance_uid
    assert [i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence] == [
        stones.volume.sop_instance_uids[k] for k in stones.findings.slices_with_stones
    ]
    for reference in kos.content.get_references():
        assert kos.resolve_reference(reference.referenced_sop_instance_uid) == (
            stones.volume.study_instance_uid, stones.volume.series_instance_uid,
            reference.referenced_sop_instance_uid,
        )


def test_kos_is_in_the_source_study_in_its_own_series(kos: hd.ko.KeyObjectSelectionDocument, stones: Case) -> None:
    source = _source_headers(stones)[0]
    assert kos.Modality == "KO" and kos.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    assert kos.StudyInstanceUID == source.StudyInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                    "StudyID", "StudyDate", "StudyTime", "StudyDescription", "SpecificCharacterSet"):
        assert kos.get(keyword) == source.get(keyword), keyword
    assert source.SeriesNumber == 1 and kos.SeriesNumber == 1000 + KOS_SERIES_NUMBER
    assert kos.SeriesDescription == f"AI urinary stones key images: series 1 (uronode synth...) v{MODEL_VERSION}"
    assert kos.Manufacturer == MANUFACTURER
    assert kos.ManufacturerModelName == MODEL_NAME and kos.SoftwareVersions == [MODEL_VERSION, f"uronode {__version__}"]
    others = {ds.SeriesInstanceUID for ds in stones.results.datasets if ds is not stones.results.kos}
    assert kos.SeriesInstanceUID not in others | {stones.volume.series_instance_uid}
    assert stones.results.kos is not None
    assert kos.SOPInstanceUID == stones.results.kos.SOPInstanceUID


def test_kos_title_description_and_observer(kos: hd.ko.KeyObjectSelectionDocument) -> None:
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == ("113000", "DCM", "Of Interest")
    assert kos.ContentTemplateSequence[0].TemplateIdentifier == "2010"
    texts = {item.ConceptNameCodeSequence[0].CodeValue: item.TextValue
             for item in kos.ContentSequence if item.ValueType == "TEXT"}
    assert texts["113012"] == "AI: 3 urinary stones on 3 slices; not for primary diagnosis"
    (device,) = kos.content.get_observer_contexts(observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"))
    assert device.observer_identifying_attributes.name == MODEL_NAME


def test_kos_passes_dciodvfy_without_warnings(stones: Case) -> None:
    path = next(p for p in stones.paths if p.name.startswith("KO_"))
    errors, warnings = dciodvfy(path)
    assert errors == [] and warnings == []


def test_no_stone_gives_no_kos(no_stones: Case) -> None:
    assert no_stones.results.kos is None
    assert not any(ds.Modality == "KO" for ds in no_stones.results.datasets)
    assert not any(p.name.startswith("KO_") for p in no_stones.paths)


def test_building_a_kos_without_a_stone_is_refused(no_stones: Case) -> None:
    sources = read_sources(no_stones.volume, Identity(no_stones.volume.series_instance_uid, MODEL_NAME, MODEL_VERSION))
    with pytest.raises(WriterError, match="no key object selection"):
        build_key_objects(no_stones.volume, no_stones.findings, sources)


def test_a_stone_without_a_box_is_still_flagged(stones: Case) -> None:
    last = stones.findings.stones[-1]
    findings = dataclasses.replace(
        stones.findings, boxes=tuple(b for b in stones.findings.boxes if b.slice_index not in last.slice_indices)
    )
    kos = write_results(stones.volume, findings).kos
    assert kos is not None
    flagged = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
               for item in kos.ContentSequence if item.ValueType == "IMAGE"]
    assert flagged == [stones.volume.sop_instance_uids[k] for k in (4, 5, 8)]


def test_another_stone_gives_another_selection(stones: Case) -> None:
    mask = np.zeros(stones.volume.shape, np.uint8)
    mask[2, 30:33, 30:33] = 1
    kos = write_results(stones.volume, make_findings(stones.volume, mask)).kos
    assert kos is not None
    flagged = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
               for item in kos.ContentSequence if item.ValueType == "IMAGE"]
    assert flagged == [stones.volume.sop_instance_uids[2]]
    assert stones.results.kos is not None
    # other content, another instance, in a series of its own (another run's)
    assert kos.SOPInstanceUID != stones.results.kos.SOPInstanceUID
    assert kos.SeriesInstanceUID != stones.results.kos.SeriesInstanceUID
