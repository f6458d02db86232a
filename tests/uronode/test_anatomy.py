"""CT of another region than the abdomen, or a phantom, told from the header: skipped when routed unasked, read
with a caution otherwise; a child's series and one longer than an abdomen cautioned (probe 46: a head CT's pineal
gland came back coded as a urinary stone, a calcium phantom's inserts as eight)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from tests.factory import ct_slice, uid, write_series
from tests.uronode.test_store import encoded, put
from uronode.anatomy import age_years, other_region
from uronode.completion import CompletionMonitor
from uronode.jobs import JobQueue
from uronode.metrics import skip_kind
from uronode.store import Store
from uronode.types import SeriesDisposition


@pytest.mark.parametrize(("body_part", "protocol", "series", "study", "kind", "word"), [
    ("HEAD", "Routine Head", "Head 2.5 Hr38", "CT HEAD WO CONTRAST", "a head or neck CT", "HEAD in the Protocol Name"),
    ("", "", "Schädel nativ 5.0", "", "a head or neck CT", "SCHADEL in the Series Description"),
    ("", "", "Schaedel 5mm", "Polytrauma", "a head or neck CT", "SCHAEDEL in the Series Description"),
    ("", "", "HeadRoutine", "", "a head or neck CT", "HEAD in the Series Description"),  # review 41: joined words
    ("", "", "HEAD5mm", "", "a head or neck CT", "HEAD in the Series Description"),
    ("", "", "Head trauma", "", "a head or neck CT", "HEAD in the Series Description"),
    ("HEAD", "Routine Head", "Head 5mm", "CT HEAD WO, CT ABD PELVIS W", "a head or neck CT",
     "HEAD in the Protocol Name"),  # the series' own words first: the study's abdomen is another series
    ("PHANTOM", "QA_Phantom_Daily", "QA DAILY", "", "a phantom or quality-control scan",
     "Body Part Examined PHANTOM"),
    ("", "", "QA Abdomen phantom", "", "a phantom or quality-control scan", "QA in the Series Description"),
    ("", "", "DailyQA", "", "a phantom or quality-control scan", "QA in the Series Description"),
    ("", "", "CaSc 3.0", "Cardiac Calcium Score", "a cardiac CT", "CALCIUMSCORE in the Study Description"),
    ("", "", "Ca-Scoring 3.0", "", "a cardiac CT", "CASCORING in the Series Description"),
    ("CHEST", "", "Thorax 1.0 Bl57", "CT Thorax nativ", "a chest CT", "THORAX in the Series Description"),
    ("KNEE", "", "Knee 0.6", "", "a CT of a limb", "KNEE in the Series Description"),
    ("", "", "Wasserphantom 5mm", "", "a phantom or quality-control scan", "WASSERPHANTOM in the Series Description"),
    ("", "", "Body 5mm", "Phantom", "a phantom or quality-control scan", "PHANTOM in the Study Description"),
    ("", "CT NECK", "Salivary stone 2mm", "", "a head or neck CT", "NECK in the Protocol Name"),  # review 42: a stone
    ("", "Cardiac", "CaScore calculation 3.0", "", "a cardiac CT", "CARDIAC in the Protocol Name"),  # of no organ
])
def test_another_region_is_named_by_the_word_found(body_part: str, protocol: str, series: str, study: str,
                                                    kind: str, word: str) -> None:
    region = other_region(body_part, protocol, series, study)
    assert region is not None and (region.kind, region.word) == (kind, word)


@pytest.mark.parametrize(("body_part", "protocol", "series", "study"), [
    ("HEAD", "", "Abdomen 5.0 B30f", ""),  # a body part left at the protocol's default, an abdomen said
    ("CHEST", "", "Axial 5mm", "Staging"),  # review 41: a body part alone never skips
    ("CHEST", "", "Axial 5mm", "CT A/P WO"),
    ("CHEST", "5.3 CTU", "1.25mm STND", "CT IVP"),
    ("CHEST", "ThoraxAbdomenRoutine", "ThorAbd 5.0 Br40", "Staging"),
    ("THORAX", "", "Nativ 5.0 B30f", "CT Steinsuche"),
    ("CHEST", "", "Nierenstein nativ", ""), ("CHEST", "", "Uroscanner sans injection", ""),
    ("CHEST", "", "Colique nephretique", ""), ("CHEST", "", "AbdPel 5.0", ""), ("CHEST", "", "Abdomen5mm", ""),
    ("", "", "", "CT THORAX und Oberbauch"), ("", "", "Buik Bekken blanco", ""), ("", "", "Hematuria", ""),
    ("WHOLEBODY", "Polytrauma", "Body 1.5", ""),
    ("", "", "KUB arms up", ""),  # "arms" names no region
    ("HIP", "", "Hip 1.0", ""),  # the bladder shows
    ("", "", "Routine 5mm", ""),  # nothing said: read
    ("NECK", "", "Bladder neck 3mm", ""),
    ("", "CT UROGRAM", "NON CON 5mm", "CT CHEST W, CT UROGRAM"),  # review 42
    ("", "", "Thorax/Lumbar Spine", ""), ("", "", "Chest Colonography", ""), ("", "", "Thoracic and Lumbar Spine", ""),
    ("", "", "Steinprotokoll feet first", ""), ("", "LD Stein FF", "Feet first 5mm", ""),  # a position, no limb
    ("", "", "Pancreatic head", ""), ("", "", "Cuello vesical", ""), ("", "", "CT Thorax bovenbuik", ""),
    ("", "", "Thorax Urografia", ""), ("", "", "Thorax Harnstein", ""), ("", "", "Low dose stone 5mm", ""),
])
def test_the_abdomen_named_anywhere_or_nothing_named_is_read(body_part: str, protocol: str, series: str,
                                                             study: str) -> None:
    assert other_region(body_part, protocol, series, study) is None


# every word the first rule kept a series by, but TRAUMA and BODY (review 41: they kept head CTs): review 42 found
# ten of them dropped by the second
FIRST_ABDOMEN_WORDS = (
    "ABDOMEN", "ABDOMINAL", "ABD", "ABDO", "PELVIS", "PELVIC", "PELV", "KUB", "URO", "UROGRAM", "UROGRAPHY",
    "STONE", "STONES", "CALCULUS", "LITHIASIS", "RENAL", "KIDNEY", "KIDNEYS", "URETER", "URETERS", "BLADDER",
    "UROLITHIASIS", "NEPHROLITHIASIS", "COLIC", "FLANK", "ABDOMENPELVIS", "ABDPELVIS", "CHESTABDOMEN",
    "CHESTABDPELVIS", "NECKCHESTABDOMEN", "CAP", "TAP", "WHOLEBODY", "POLYTRAUMA", "HIP", "HIPS", "LSPINE",
    "LUMBAR", "SACRUM", "NIERE", "NIEREN", "BAUCH", "BECKEN", "ABDOMINALE", "ADDOME", "REIN", "REINS", "RENE",
    "RINONE", "RINON", "ABDOMINO", "NIER", "STEEN", "STEIN", "CALCOLI", "CALCULS", "FEMORAL", "LITIASI", "LITIASIS",
    "LITHIASE", "COLON", "COLONOGRAPHY", "LIVER", "PANCREAS", "SPLEEN", "APPENDIX",
)


STONE_ONLY = ("STONE", "STONES", "STEEN", "STEIN", "CALCULUS", "CALCULS", "CALCOLI", "LITHIASIS", "LITIASI",
              "LITIASIS", "LITHIASE")
"""Words of a stone of no organ: they keep a series that names no other region, not one named by the chest (a
salivary stone's neck CT, review 42); a chest-named series that reaches the kidneys is kept by its length."""


@pytest.mark.parametrize("word", FIRST_ABDOMEN_WORDS)
def test_every_word_that_kept_a_series_still_does(word: str) -> None:
    beside_the_chest = other_region("", "", f"Thorax {word.lower()} 5mm", "")
    assert (beside_the_chest is None) is (word not in STONE_ONLY)
    assert other_region("CHEST", "", f"{word} 5mm", "") is None


def test_the_age_is_read_from_the_dates_as_a_birthday_counts_or_from_the_age() -> None:
    assert age_years("005Y") == 5 and age_years("006M") == 0.5 and age_years("017Y", "19700101", "20260101") == 56
    assert age_years("", "20080301", "20260301") == 18 and age_years("", "20080302", "20260301") == 17  # review 41
    assert age_years("", "20250101", "", "20260301") == pytest.approx(14 / 12)  # no Study Date: the Series Date
    assert age_years("", "", "20260301") is None and age_years("5 years") is None and age_years("000Y") is None
    assert age_years("", "20300101", "20260101") is None  # born after the study: a wrong date says nothing
    assert age_years("005Y", "20300101", "20260101") == 5  # ... and the Patient's Age is read (review 42)
    assert age_years("5Y") == 5 and age_years("", "201011", "20260101") is None  # not DA: no date
    assert age_years("", "20260301", "20260301") is None  # an unknown patient registered that day


GRACE = 2.0


def encode(ds: object) -> list[bytes]:
    """A data set as the listener holds it (``tests.uronode.test_store.encoded`` of one made here)."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import ExplicitVRLittleEndian

    from uronode.dicomfile import encode_file_meta

    assert isinstance(ds, Dataset)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return [encode_file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), ExplicitVRLittleEndian, "T"), fp.getvalue()]


def _monitor(store: Store, other_region_series: str = "skip") -> CompletionMonitor:
    return CompletionMonitor(store, JobQueue(store), grace_s=GRACE, quiet_s=30.0, model="default",
                             other_region_series=other_region_series)


def test_a_routed_head_ct_or_phantom_is_skipped_with_the_reason_and_read_when_asked(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    head, phantom, abdomen = uid("anatomy", "head"), uid("anatomy", "phantom"), uid("anatomy", "abdomen")
    for index in range(3):
        put(store, encoded(index, series=head, series_description="Head 2.5 Hr38", body_part="HEAD"))
        put(store, encoded(index, series=phantom, series_description="QA DAILY", body_part="PHANTOM"))
        put(store, encoded(index, series=abdomen, series_description="KUB 3.0", body_part="CHEST"))
    done = {d.series_instance_uid: d for d in _monitor(store).complete_due(time.time() + GRACE + 0.1)}
    assert done[abdomen].disposition is SeriesDisposition.QUEUED
    reason = done[head].reason
    assert done[head].disposition is SeriesDisposition.SKIPPED and reason is not None
    assert reason.startswith("not an abdominal CT (a head or neck CT: HEAD in the Series Description): the model "
                             "reads abdominal CT of adults")
    assert "/api/predict" in reason and "inference.other_region_series" in reason and "Hr38" not in reason
    assert (skip_kind(reason), skip_kind(done[phantom].reason)) == ("not_abdomen", "phantom")
    taken = _monitor(store).take_asked(head)  # uploaded: someone asked
    assert taken is not None and taken.disposition is SeriesDisposition.QUEUED
    read = uid("anatomy", "read")
    put(store, encoded(0, series=read, series_description="Knee 0.6", body_part="KNEE"))
    (queued,) = _monitor(store, "read").complete_due(time.time() + GRACE + 0.1)
    assert queued.series_instance_uid == read and queued.disposition is SeriesDisposition.QUEUED
    # a series named by the chest that reaches the kidneys (a chest-abdomen-pelvis scan named by its first region)
    chest, cap = uid("anatomy", "chest"), uid("anatomy", "cap")
    for index in range(2):
        put(store, encoded(index, series=chest, series_description="Thorax 1.0", thickness=300.0))
        put(store, encoded(index, series=cap, series_description="Thorax 1.0", thickness=600.0))
    done = {d.series_instance_uid: d for d in _monitor(store).complete_due(time.time() + GRACE + 0.1)}
    assert (done[chest].disposition, done[cap].disposition) == (SeriesDisposition.SKIPPED, SeriesDisposition.QUEUED)
    # review 42: the same for every region (a head-to-toe trauma scan named by the head), and a length not known
    # (a multi-frame image: its positions are in its functional groups) skips nothing
    head, trauma, frames = uid("anatomy", "head2"), uid("anatomy", "trauma"), uid("anatomy", "frames")
    for index in range(2):
        put(store, encoded(index, series=head, series_description="Head 5mm", thickness=200.0))
        put(store, encoded(index, series=trauma, series_description="Trauma head to toe", thickness=1500.0))
    ds = ct_slice(uid("st"), frames, 0, size=8, series_description="Thorax 1.0")
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    put(store, encode(ds))
    put(store, encode(ct_slice(uid("st"), frames, 1, size=8, series_description="Thorax 1.0")))
    completed = _monitor(store).complete_due(time.time() + GRACE + 0.1)
    assert {d.series_instance_uid: d.disposition for d in completed} == {
        head: SeriesDisposition.SKIPPED, trauma: SeriesDisposition.QUEUED, frames: SeriesDisposition.QUEUED}


def test_a_series_outside_the_intended_use_is_cautioned_first(tmp_path: Path) -> None:
    from inference.pipeline import input_cautions
    from inference.volume import load_volume

    _, _, head = write_series(tmp_path / "head", 3, series_description="Head 2.5", body_part="HEAD",
                              birth_date="20210115")  # StudyDate 20260101: five years old
    volume = load_volume(head)
    said = input_cautions(volume)
    assert said[0].startswith("The header names a head or neck CT (HEAD in the Series Description), not the abdomen")
    assert said[1].startswith("A patient of 4 years: the model was never measured on children")  # 4 years 11 months
    _, _, chest = write_series(tmp_path / "chest", 3, series_description="Axial 5mm", body_part="CHEST")
    assert input_cautions(load_volume(chest))[0].startswith(
        "The header names a chest CT (Body Part Examined CHEST)")  # read (a body part alone), cautioned
    _, _, adult = write_series(tmp_path / "adult", 3)
    plain = load_volume(adult)
    assert not any(s.startswith(("The header names", "A patient of", "The series covers")) for s in
                   input_cautions(plain))
    # a whole-body series: longer than an abdomen and pelvis, measured from end to end (review 41: not the median
    # gap times the slices), after a contrast caution (a trauma CT is mostly enhanced)
    steps = np.array([0.0, 100.0, 900.0])
    long = dataclasses.replace(plain, positions=plain.positions[0] + np.outer(steps, plain.normal),
                               notes=("Contrast-enhanced (Series Description 'Trauma PV'): ...",))
    said = input_cautions(long)
    assert said[0].startswith("Contrast-enhanced") and said[1].startswith("The series covers 900 mm along the body")


def test_body_part_and_protocol_are_read_through_both_paths() -> None:
    """The fast scanner and pydicom read Body Part Examined and Protocol Name alike (the index keeps both)."""
    from pydicom.uid import ExplicitVRLittleEndian

    from uronode.header import read_header

    ds = ct_slice(uid("st"), uid("se"), 0, size=8, body_part="HEAD")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ProtocolName = "Schädel Routine"
    parts = encode(ds)
    fast, slow = read_header(parts, ExplicitVRLittleEndian), read_header(parts)
    assert fast == slow and (fast.body_part, fast.protocol_name) == ("HEAD", "Schädel Routine")
