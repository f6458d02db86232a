"""Contrast-enhanced series: told from the header, skipped when routed unasked, read with a caution otherwise."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.factory import ct_slice, uid, write_series
from tests.uronode.test_store import encoded, put
from uronode.completion import CompletionMonitor
from uronode.contrast import contrast_evidence
from uronode.dicomfile import encode_file_meta
from uronode.header import read_header
from uronode.jobs import JobQueue
from uronode.store import Store
from uronode.types import SeriesDisposition


@pytest.mark.parametrize(
    ("agent", "description", "says"),
    [
        ("OMNIPAQUE 350", "Abdomen 1.0 B30f", "Contrast/Bolus Agent 'OMNIPAQUE 350'"),
        ("ORAL", "", "Contrast/Bolus Agent 'ORAL'"),
        ("APPLIED", "Abdomen", "Contrast/Bolus Agent 'APPLIED'"),  # bowel full of it: what the model takes for stones most
        ("", "ABD PORTAL VENOUS", "Series Description 'ABD PORTAL VENOUS'"),
        ("", "Arterial 1.0 B30f", "Series Description"),
        ("", "CT ABD/PEL C+", "Series Description"),
        ("", "UROGRAPHY EXCRETORY", "Series Description"),
        ("", "ABD_PV_3mm", "Series Description"),
        ("", "Abdomen KM venös", "Series Description"),  # German: Kontrastmittel, venous
        ("NONE", "Nephrographic phase", "Series Description"),  # a default agent; the phase is named
    ],
)
def test_a_contrast_agent_or_phase_in_the_header_is_found(agent: str, description: str, says: str) -> None:
    found = contrast_evidence(agent, description)
    assert found is not None and found.startswith(says), found


@pytest.mark.parametrize(
    ("agent", "description"),
    [
        ("", ""),
        ("", "Abdomen 1.0 B30f"),  # a contrast series that says nothing is not found (the module's limits)
        ("NONE", "Abdomen"),
        ("N/A", ""),
        ("No contrast", ""),
        ("KEIN KM", ""),
        ("NOT APPLIED", ""),
        ("", "ABDOMEN W/O CONTRAST"),
        ("", "Abdomen non-contrast"),
        ("", "ABD C-"),
        ("", "KUB stone protocol"),
        ("", "nativ Abdomen"),
        ("", "CTU native"),  # the urography's non-contrast phase
        ("", "Delayed 5 min"),  # a delayed scan is not named contrast by itself
        ("", "Arteriosclerosis follow-up"),  # a word that starts like a phase is not one
    ],
)
def test_a_header_that_denies_or_says_nothing_of_contrast_is_not_contrast(agent: str, description: str) -> None:
    assert contrast_evidence(agent, description) is None


def test_the_agent_is_read_from_the_header_through_both_paths() -> None:
    """The fast scanner and pydicom read Contrast/Bolus Agent alike, in the data set's character set."""
    ds = ct_slice(uid("st"), uid("se"), 0, size=8, contrast_agent="Ultravist® 370")
    ds.SpecificCharacterSet = "ISO_IR 100"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    parts = [encode_file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), ExplicitVRLittleEndian, "T"), fp.getvalue()]
    fast, slow = read_header(parts, ExplicitVRLittleEndian), read_header(parts)
    assert fast == slow and fast.contrast_agent == "Ultravist® 370"


GRACE = 2.0


def monitor(store: Store, contrast_series: str = "skip") -> CompletionMonitor:
    return CompletionMonitor(store, JobQueue(store), grace_s=GRACE, quiet_s=30.0, model="default",
                             contrast_series=contrast_series)


def test_a_routed_contrast_series_is_skipped_with_the_reason(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    series = uid("contrast")
    for i in range(3):
        put(store, encoded(i, series=series, contrast_agent="OMNIPAQUE 350", series_description="ABD PORTAL VENOUS"))
    (done,) = monitor(store).complete_due(time.time() + GRACE + 0.1)
    assert done.disposition is SeriesDisposition.SKIPPED
    assert done.reason is not None and done.reason.startswith("contrast-enhanced (Contrast/Bolus Agent 'OMNIPAQUE 350')")
    assert "inference.contrast_series" in done.reason
    assert JobQueue(store).for_series(series) == []
    # the non-contrast series of the same study, beside it, is the model's
    plain = uid("plain")
    put(store, encoded(0, series=plain))
    (queued,) = monitor(store).complete_due(time.time() + GRACE + 0.1)
    assert queued.series_instance_uid == plain and queued.disposition is SeriesDisposition.QUEUED


@pytest.mark.parametrize("how", ["asked", "read"])
def test_a_contrast_series_is_read_when_asked_for_or_when_the_site_says_so(tmp_path: Path, how: str) -> None:
    store = Store(tmp_path / "data")
    series = uid("contrast", how)
    put(store, encoded(0, series=series, series_description="Nephrographic"))
    if how == "asked":  # an upload to /api/predict: someone asked for this series
        (done,) = monitor(store).complete_now([series])
    else:
        (done,) = monitor(store, "read").complete_due(time.time() + GRACE + 0.1)
    assert done.disposition is SeriesDisposition.QUEUED and done.reason is None
    assert [j.series_instance_uid for j in JobQueue(store).for_series(series)] == [series]


def test_a_contrast_series_read_all_the_same_carries_the_caution(tmp_path: Path) -> None:
    from inference.volume import load_volume

    _, _, paths = write_series(tmp_path / "cect", 3, contrast_agent="IOMERON 400")
    notes = load_volume(paths).notes
    assert any(n.startswith("Contrast-enhanced (Contrast/Bolus Agent 'IOMERON 400')") for n in notes), notes
    _, _, plain = write_series(tmp_path / "nect", 3)
    assert not any("ontrast" in n for n in load_volume(plain).notes)
