"""Which CT series a result was made from, and what the outputs say besides the findings.

- Two CT series of one study get results with their own series numbers (1000 x the CT's + 901..904) and
  descriptions that name the CT series, while every UID stays derived as before (probe 14, M3).
- The input's cautions are burned into the overlays, wrapped to the image, and in the key objects' description
  (m1); the docstrings say "Not detected" for the no-stone SR (m2); the SEG's SpacingBetweenSlices is a tidy
  decimal (m7).
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.charset import convert_encodings, encode_string
from pydicom.uid import UID
from pydicom.valuerep import format_number_as_ds

import inference.writers
import inference.writers.kos
from inference.volume import Volume, load_volume
from inference.writers import (
    KOS_SERIES_NUMBER,
    SC_SERIES_NUMBER,
    SEG_SERIES_NUMBER,
    SR_SERIES_NUMBER,
    save_results,
    write_results,
)
from inference.writers.sc import (
    CAUTION_CONTINUES,
    MARGIN,
    _text_layer,
    summary_lines,
    text_placements,
)
from inference.writers.seg import tidy_ds
from inference.writers.sources import (
    KOS_SERIES_DESCRIPTION,
    SC_SERIES_DESCRIPTION,
    SEG_SERIES_DESCRIPTION,
    SR_SERIES_DESCRIPTION,
    Identity,
)
from tests.writers.conftest import (
    MODEL_NAME,
    MODEL_VERSION,
    Case,
    dciodvfy,
    make_findings,
    stone_mask,
)
from uronode.uids import derive_uid

BASES = (SEG_SERIES_DESCRIPTION, SC_SERIES_DESCRIPTION, SR_SERIES_DESCRIPTION, KOS_SERIES_DESCRIPTION)
OWN_NUMBERS = {"SEG": SEG_SERIES_NUMBER, "OT": SC_SERIES_NUMBER, "SR": SR_SERIES_NUMBER, "KO": KOS_SERIES_NUMBER}
CAUTION = ("Pixels of 3.00 mm are coarser than any the model was measured on (up to 1 mm): small stones may be "
           "missed and other dense structures reported as stones.")


def _copy(volume: Volume, out: Path, number: int | None, description: str | None, z0: float | None = None) -> Volume:
    """The fixture's CT as another series of its study: its own UIDs, SeriesNumber and SeriesDescription (left
    out where None), and with ``z0`` slices 1.5 mm apart from there."""
    out.mkdir()
    series = derive_uid("test series", number, description, z0)
    for k, path in enumerate(volume.source_paths):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{series}.{k + 1}")
        for keyword, value in (("SeriesNumber", number), ("SeriesDescription", description)):
            if value is None:
                del ds[keyword]
            else:
                setattr(ds, keyword, value)
        if z0 is not None:
            z = f"{z0 + 1.5 * k:.4f}"
            ds.ImagePositionPatient = [0, 0, z]
            ds.SliceLocation = z
            ds.SliceThickness = "1.5"
        ds.save_as(out / f"CT{k:04d}.dcm", enforce_file_format=True)
    return load_volume(sorted(out.iterdir()))


def test_two_series_of_one_study_get_results_numbered_and_named_after_their_own_series(
    volume: Volume, tmp_path: Path
) -> None:
    a = _copy(volume, tmp_path / "a", 2, "Abdomen 1.5 mm")
    b = _copy(volume, tmp_path / "b", 3, "Abdomen kidneys thin")
    assert a.study_instance_uid == b.study_instance_uid
    numbers = {}
    for source, number in ((a, 2), (b, 3)):
        findings = make_findings(source, stone_mask(source.shape))
        results = write_results(source, findings)
        datasets = results.datasets
        assert {ds.Modality for ds in datasets} == set(OWN_NUMBERS)
        numbers[number] = {int(ds.SeriesNumber) for ds in datasets}
        for ds in datasets:
            assert int(ds.SeriesNumber) == 1000 * number + OWN_NUMBERS[ds.Modality]
            text = str(ds.SeriesDescription)
            assert len(text) <= 64 and text.startswith("AI urinary stones ")
            assert f": series {number} (Abd" in text and text.endswith(f" v{MODEL_VERSION}")
        # the UIDs are derived from the source series, the model and what the run read, not the series number
        for result, kind in ((results.seg, "seg"), (results.sr, "sr"), (results.kos, "kos")):
            assert result is not None
            assert result.SeriesInstanceUID != derive_uid(source.series_instance_uid, MODEL_NAME, MODEL_VERSION,
                                                          kind, "series")  # one series per run, not per model
        again = write_results(source, findings)  # the same run again: the same instances in the same series
        assert [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in again.datasets] == [
            (ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in datasets]
    assert numbers == {2: {2901, 2902, 2903, 2904}, 3: {3901, 3902, 3903, 3904}}


def test_a_run_on_other_input_writes_series_of_its_own(volume: Volume, tmp_path: Path) -> None:
    """Probe 18: every run of a model on a series wrote into one result series, so an archive without IOCM
    showed a re-analysis's report beside the old one in one series (both instance 1) and each overlay twice.
    A run on other input (another finding here, as late slices give) makes series of its own; the same run
    again fills the same ones (a retry duplicates nothing)."""
    source = _copy(volume, tmp_path / "ct", 3, "Abdomen")
    mask = stone_mask(source.shape)
    first = write_results(source, make_findings(source, mask))
    same = write_results(source, make_findings(source, mask))
    fewer = mask.copy()
    fewer[fewer.nonzero()[0].max()] = 0  # the stones of one slice gone
    other = write_results(source, make_findings(source, fewer))

    def series(results: object) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for ds in results.datasets:  # type: ignore[attr-defined]
            out.setdefault(str(ds.Modality), set()).add(str(ds.SeriesInstanceUID))
        return out

    assert series(first) == series(same)
    assert set(series(first)) == set(series(other)) == set(OWN_NUMBERS)
    for modality, uids in series(first).items():
        assert len(uids) == 1 and not uids & series(other)[modality], modality
    assert {int(ds.SeriesNumber) for ds in other.datasets} == {int(ds.SeriesNumber) for ds in first.datasets}


def test_results_whose_uids_were_rejected_take_other_ones_the_same_each_time(volume: Volume, tmp_path: Path) -> None:
    """Review 35: the same content made again (images moved away and back, a correction undone) got the UIDs a
    rejection note had withdrawn, which an archive acting on the note hides. With those UIDs to avoid, every
    result takes another UID, in series of its own, the same ones each time; UIDs to avoid that the results do not
    take change nothing (the UIDs every earlier version gave)."""
    source = _copy(volume, tmp_path / "ct", 3, "Abdomen")
    findings = make_findings(source, stone_mask(source.shape))
    first = write_results(source, findings)
    uids = [(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)) for ds in first.datasets]
    assert [(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)) for ds in write_results(
        source, findings, avoid={"1.2.3.4", derive_uid("not one of them")}).datasets] == uids
    rejected = {str(first.sr.SOPInstanceUID)}  # one is enough: the whole set moves, not only that instance
    again = write_results(source, findings, avoid=rejected)
    moved = [(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)) for ds in again.datasets]
    assert len(moved) == len(uids) and not {u for pair in moved for u in pair} & {u for pair in uids for u in pair}
    assert [(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)) for ds in write_results(
        source, findings, avoid=rejected).datasets] == moved
    assert again.seg is not None and first.seg is not None
    assert [int(ds.SeriesNumber) for ds in again.datasets] == [int(ds.SeriesNumber) for ds in first.datasets]
    twice = write_results(source, findings, avoid=rejected | {str(again.sr.SOPInstanceUID)})  # rejected again
    assert {str(ds.SOPInstanceUID) for ds in twice.datasets}.isdisjoint(
        {str(ds.SOPInstanceUID) for ds in (*first.datasets, *again.datasets)})
    assert again.seg.FrameOfReferenceUID == first.seg.FrameOfReferenceUID  # what every run shares stays


@pytest.mark.parametrize("offset", ["+0900", "-0330", None])
def test_results_state_their_times_in_the_zone_of_their_source(volume: Volume, tmp_path: Path, offset: str | None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe 39: the results were dated by the host's clock in the host's zone, and named none: a node in a
    container (UTC) dated a Berlin CT's results an hour before the CT. A source that names its offset from UTC
    has every result's dates and times in that offset (and the attribute copied, which covers the study's dates
    copied from it); one that names none gets the host's local time and no offset (the copied study dates are
    in a zone nobody named)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        source = _copy(volume, tmp_path / "ct", 3, "Abdomen")
        if offset is not None:
            for path in source.source_paths:
                ct = pydicom.dcmread(path)
                ct.TimezoneOffsetFromUTC = offset
                ct.save_as(path)
        results = write_results(source, make_findings(source, stone_mask(source.shape)))
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    hours = 0 if offset is None else int(offset[:3]) + (1 if offset[0] == "+" else -1) * int(offset[3:]) / 60
    expected = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(hours=hours)
    for ds in results.datasets:
        assert ds.get("TimezoneOffsetFromUTC") == offset, ds.Modality
        for date, time_ in (("ContentDate", "ContentTime"), ("SeriesDate", "SeriesTime"),
                            ("InstanceCreationDate", "InstanceCreationTime")):
            stamped = datetime.datetime.strptime(f"{ds[date].value}{str(ds[time_].value)[:6]}", "%Y%m%d%H%M%S")
            assert abs((stamped - expected).total_seconds()) < 120, (ds.Modality, date, stamped, expected)
        (contributed,) = [str(item.ContributionDateTime) for item in ds.ContributingEquipmentSequence
                          if item.get("ManufacturerModelName") == "highdicom"]  # review 36: in the host's zone
        stamped = datetime.datetime.strptime(contributed[:14], "%Y%m%d%H%M%S")
        assert abs((stamped - expected).total_seconds()) < 120, (ds.Modality, contributed, expected)
    errors, _ = dciodvfy(save_results(results, tmp_path / "out")[0])
    assert errors == []


def test_a_series_without_a_number_gets_the_fixed_numbers_and_is_named_by_its_description(
    volume: Volume, tmp_path: Path
) -> None:
    source = _copy(volume, tmp_path / "ct", None, "Kidneys")
    results = write_results(source, make_findings(source, stone_mask(source.shape)))
    for ds in results.datasets:
        assert int(ds.SeriesNumber) == OWN_NUMBERS[ds.Modality]
        assert ds.SeriesDescription.endswith(f": (Kidneys) v{MODEL_VERSION}")


def test_the_series_number_scheme() -> None:
    def numbers(source: int | None) -> list[int]:
        identity = Identity("1.2.3", MODEL_NAME, "3.8.0", source_series_number=source)
        return [identity.series_number(own) for own in (901, 902, 903, 904)]

    assert numbers(1) == [1901, 1902, 1903, 1904]
    assert numbers(12) == [12901, 12902, 12903, 12904]
    assert numbers(2147482) == [2147482901, 2147482902, 2147482903, 2147482904]
    assert 2147482904 <= 2**31 - 1  # the largest IS value
    for unusable in (None, 0, -3, 2147483):  # none, not from 1, or beyond IS
        assert numbers(unusable) == [901, 902, 903, 904]


@pytest.mark.parametrize(("number", "description", "version"), [
    (3, "Abdomen kidneys thin", "3.8.0"),
    (3, "Abd", "3.8.0"),
    (2147482, "A very long reconstruction description, B30f kernel, 1.0 mm, iterative", "3.8.0"),
    (12, "Kidneys", "2025.11.30-rc.7+build.1234"),  # 26 characters: no room for the kind
    (None, "Abdomen kidneys thin", "3.8.0"),
    (5, "", "3.8.0"),
    (None, "", "3.8.0"),
])
def test_a_description_fits_an_lo_and_never_cuts_the_series_number_or_the_model_version(
    number: int | None, description: str, version: str
) -> None:
    identity = Identity("1.2.3", MODEL_NAME, version, source_series_number=number,
                        source_series_description=description)
    for base in BASES:
        text = identity.description(base)
        assert len(text) <= 64 and text.startswith("AI urinary stones")
        assert text.endswith(f" v{version}")
        if number is not None:
            assert f": series {number}" in text
        if f"({description})" not in text and description:
            shortened = text.split(" (", 1)[1].split(f") v{version}")[0] if " (" in text else ""
            # shortened with an ASCII ellipsis from its start, or left out where too little of it would fit
            assert shortened == "" or (shortened.endswith("...") and description.startswith(shortened[:-3]))
    assert Identity("1.2.3", MODEL_NAME, "3.8.0", source_series_number=3, source_series_description="Abd").description(
        SR_SERIES_DESCRIPTION) == "AI urinary stones report: series 3 (Abd) v3.8.0"
    assert Identity("1.2.3", MODEL_NAME, "3.8.0").description(KOS_SERIES_DESCRIPTION) == (
        "AI urinary stones key images v3.8.0")


def test_two_reconstructions_of_one_scan_are_told_apart_by_every_result_description() -> None:
    """Probe 22: "AI urinary stones - key images of series 2 (KUB...), model 3.8.0" for both the 5 mm and the
    1.25 mm bone reconstruction: the fixed words took 55-58 of the 64 characters, and the part of the source's
    description that told the reconstructions apart was what got cut."""
    for base in BASES:
        texts = {Identity("1.2.3", MODEL_NAME, "3.8.0", source_series_number=2, source_series_description=d)
                 .description(base) for d in ("KUB 5.0mm", "KUB 1.25mm BONE")}
        assert texts == {f"{base}: series 2 (KUB 5.0mm) v3.8.0", f"{base}: series 2 (KUB 1.25mm BONE) v3.8.0"}


@pytest.mark.parametrize(("character_set", "description"), [
    (("ISO_IR 192",), "腹部CT 結石 シリーズ"),
    (("ISO 2022 IR 6", "ISO 2022 IR 87"), "腹部ＣＴ 結石 シリーズ"),
    (("GB18030",), "腹部CT 结石检查"),
    (("ISO_IR 144",), "КТ почек камни"),
])
def test_a_description_fits_an_lo_in_bytes_of_the_sources_character_set(
    character_set: tuple[str, ...], description: str
) -> None:
    """dciodvfy counts an LO's 64 in bytes: "腹部CT 結石 s..." took 72 in UTF-8."""
    identity = Identity("1.2.3", MODEL_NAME, "3.8.0", source_series_number=1, source_series_description=description,
                        source_character_set=character_set)
    encodings = convert_encodings(list(character_set))
    for base in BASES:
        text = identity.description(base)
        assert len(encode_string(text, encodings)) <= 64, text
        assert text.startswith(base + ": series 1") and text.endswith(" v3.8.0")


def test_cautions_are_burned_into_the_overlays_and_in_the_key_objects_description(stones: Case,
                                                                                   tmp_path: Path) -> None:
    findings = dataclasses.replace(stones.findings, cautions=(CAUTION,))
    lines = summary_lines(findings, 4)
    assert lines[-1] == "AI result - not for primary diagnosis"
    assert f"Caution: {CAUTION}" in lines
    results = write_results(stones.volume, findings)
    before = {int(ds.InstanceNumber): ds.pixel_array for ds in stones.results.secondary_captures}
    for ds in results.secondary_captures:
        yellow = np.all(ds.pixel_array == (255, 255, 0), axis=-1)
        was = np.all(before[int(ds.InstanceNumber)] == (255, 255, 0), axis=-1)
        assert yellow.sum() > was.sum()  # more text: the caution
    assert results.kos is not None
    texts = [item.TextValue for item in results.kos.ContentSequence
             if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "113012"]
    assert texts == [f"AI: 3 urinary stones on 3 slices; not for primary diagnosis. Caution: {CAUTION}"]
    # the SEG, which a viewer may show alone, carries them in its Image Comments (probe 33), a valid SEG still
    assert results.seg is not None and results.seg.ImageComments == f"Caution: {CAUTION}"
    assert "ImageComments" not in stones.results.seg  # type: ignore[operator]
    path = tmp_path / "seg.dcm"
    results.seg.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert errors == [], errors


@pytest.mark.parametrize("shape", [(512, 512), (64, 64), (256, 96)])
def test_burned_in_text_is_wrapped_to_the_image(shape: tuple[int, int], stones: Case) -> None:
    findings = dataclasses.replace(stones.findings, cautions=(CAUTION, CAUTION.replace("3.00", "4.00")))
    text, shadow = _text_layer(shape, summary_lines(findings, 4), [])
    assert text.any()
    assert not shadow[:, shape[1] - MARGIN + 2:].any()  # nothing runs off the right edge
    assert not shadow[-2:].any()  # nor off the bottom


def test_a_caution_too_long_for_a_small_image_ends_in_a_pointer_to_the_sr(stones: Case) -> None:
    findings = dataclasses.replace(stones.findings, cautions=(CAUTION, CAUTION))
    small = [line for line, _ in text_placements((96, 96), summary_lines(findings, 4), [])]
    named = summary_lines(findings, 4)[1]
    assert named.endswith(")") and " (stone " in named
    assert small[:2] == ["AI: 3 urinary stones, 2 on this slice", named.split(" (stone ")[0]]  # the name first
    assert CAUTION_CONTINUES in small
    one = dataclasses.replace(stones.findings, cautions=(CAUTION,))
    large = [line for line, _ in text_placements((512, 512), summary_lines(one, 4), [])]
    assert CAUTION_CONTINUES not in large
    assert " ".join(large).count(" ".join(CAUTION.split()[1:])) == 1  # all of it, wrapped


@pytest.mark.parametrize("shape", [(101, 122), (122, 101), (256, 256), (512, 512)])
def test_the_top_text_covers_at_most_a_third_of_the_image(shape: tuple[int, int], stones: Case) -> None:
    """Probe 17: on a 3 mm series of 122 x 101 pixels the wrapped cautions covered the whole overlay and hid the
    kidneys. The count and the largest stone stay; cautions beyond the top third point to the SR."""
    findings = dataclasses.replace(stones.findings, cautions=(CAUTION, CAUTION.replace("3.00", "4.00")))
    lines = summary_lines(findings, 4)
    placed = text_placements(shape, lines, [])
    top = [line for line, (_, y) in placed if y < shape[0] / 2]  # the disclaimer is at the bottom
    _, shadow = _text_layer(shape, lines, [])
    rows = np.flatnonzero(shadow[: shape[0] // 2].any(axis=1))  # the top text's rows, shadow included
    assert rows.size and rows[-1] < shape[0] / 3 + 2
    assert top[0].startswith("AI: 3 urinary stones") and any(line.startswith("Largest: ") for line in top)
    assert top[-1] == CAUTION_CONTINUES  # two cautions never fit a third of these


def test_the_seg_states_its_spacing_between_slices_as_a_tidy_decimal(volume: Volume, tmp_path: Path) -> None:
    source = _copy(volume, tmp_path / "ct", 4, "Abdomen", z0=12.3456)
    z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in source.source_paths]
    spacing, _ = hd.spatial.get_volume_positions(image_positions=[[0, 0, v] for v in z],
                                                 image_orientation=[1, 0, 0, 0, 1, 0])
    assert spacing is not None and format_number_as_ds(float(spacing)) == "1.50000000000000"  # highdicom's own
    seg = write_results(source, make_findings(source, stone_mask(source.shape))).seg
    assert seg is not None
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert str(measures.SpacingBetweenSlices) == "1.5"
    assert [tidy_ds(v) for v in (1.5000000000000002, 2.0, 0.625, "1.25000", 0.33333333333)] == [
        "1.5", "2", "0.625", "1.25", "0.333333"]


def test_the_docstrings_say_not_detected_for_the_no_stone_report() -> None:
    for module in (inference.writers, inference.writers.kos):
        assert module.__doc__ is not None
        assert "Absent" not in module.__doc__ and "Not detected" in module.__doc__
