"""An upload of a patient's CD (probe 48): its series complete when the upload ends, never half-way, and the
answer names each series' patient and study, each patient's together, the newest study first."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

import dicomweb.api
from dicomweb.app import create_app
from tests.factory import ct_slice, uid
from uronode.completion import UPLOAD, CompletionMonitor
from uronode.ingest import take_instance
from uronode.jobs import JobQueue
from uronode.settings import Settings
from uronode.store import Store


def _file(study: str, series: str, index: int, **attributes: object) -> bytes:
    ds: Dataset = ct_slice(study, series, index, size=16)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_cd_s_series_complete_when_the_upload_ends_and_each_names_its_patient(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    today, prior, other = uid("cd", "today"), uid("cd", "prior"), uid("cd", "other")
    split, prior_ct, other_ct = uid("cd", "split"), uid("cd", "prior-ct"), uid("cd", "other-ct")
    anna = {"PatientName": "DOE^ANNA", "PatientID": "MRN1"}
    files = [  # as a CD lists them: today's thin series split by another study's files between its halves
        _file(today, split, 0, StudyDate="20261207", AccessionNumber="A7", SeriesNumber=3, **anna),
        _file(today, split, 1, StudyDate="20261207", AccessionNumber="A7", SeriesNumber=3, **anna),
        # the prior's name written as another system writes it: the same patient (review 45: counted as two)
        _file(prior, prior_ct, 0, StudyDate="20250301", AccessionNumber="A3", SeriesNumber=3, PatientName="Doe^Anna^^^",
              PatientID="MRN1"),
        _file(other, other_ct, 0, PatientName="ROE^BOB", PatientID="MRN2", StudyDate="20261201", SeriesNumber=2),
        _file(today, split, 2, StudyDate="20261207", AccessionNumber="A7", SeriesNumber=3, **anna),
    ]
    data = tmp_path / "data"
    # the node's completion loop, its grace and its quiet period long past at each file (review 45: the quiet rule
    # still completed a series whose halves lay more than 30 s apart in a large upload)
    loop = CompletionMonitor(Store(data, fsync=False), JobQueue(Store(data, fsync=False)), grace_s=0, quiet_s=1,
                             model="default")
    completed_half_way: list[str] = []
    take = dicomweb.api.take_instance

    def taken_then_the_loop_runs(*args: object, **kwargs: object) -> object:
        report = take(*args, **kwargs)  # type: ignore[arg-type]
        completed_half_way.extend(d.series_instance_uid for d in loop.complete_due(time.time() + 10))
        return report

    monkeypatch.setattr(dicomweb.api, "take_instance", taken_then_the_loop_runs)
    settings = Settings(storage={"data_dir": data, "fsync": False}, dicomweb={"auth": "none"})
    with TestClient(create_app(settings)) as client:
        answer = client.post("/api/predict", files=[("files", (f"IM{i:06d}", f, "application/dicom"))
                                                     for i, f in enumerate(files)])
    assert answer.status_code == 200, answer.text
    assert completed_half_way == []
    body = answer.json()
    assert body["patients"] == 2
    listed = [(s["patient_id"], s["study_date"], s["series_instance_uid"]) for s in body["series"]]
    assert listed == [("MRN1", "20261207", split), ("MRN1", "20250301", prior_ct), ("MRN2", "20261201", other_ct)]
    first = body["series"][0]
    assert first["instances"] == 3 and first["job_id"] is not None and first["reused"] is False
    assert (first["patient_name"], first["accession_number"]) == ("DOE^ANNA", "A7")
    assert all(s["reused"] is False for s in body["series"])  # probe 48: "analysed before", within this upload
    (job,) = JobQueue(Store(data, fsync=False)).for_series(split)
    assert job.id == first["job_id"]


def test_an_upload_that_replaces_an_image_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Probe 48: only C-STORE logged a replacement; an upload replacing the PACS's images said nothing."""
    study, series = uid("cd-replace", "study"), uid("cd-replace", "series")
    settings = Settings(storage={"data_dir": tmp_path / "data", "fsync": False}, dicomweb={"auth": "none"})
    with TestClient(create_app(settings)) as client, caplog.at_level("INFO", logger="dicomweb.api"):
        for description in ("Abdomen 1.0", "Abdomen 1.0 corrected"):
            answer = client.post("/api/predict", files=[("files", ("IM1", _file(study, series, 0,
                                                                              SeriesDescription=description)))])
            assert answer.status_code == 200, answer.text
    said = [r.getMessage() for r in caplog.records if "from an upload: other bytes" in r.getMessage()]
    assert len(said) == 1 and f"series {series} re-opened" in said[0]


def _uploading(tmp_path: Path, name: str) -> tuple[Store, int, str, CompletionMonitor]:
    """A store with one image of a series an upload (an open association of its own) is storing, and the
    completion loop (quiet 1 s, no grace)."""
    from uronode.associations import Associations

    store = Store(tmp_path / "data", fsync=False)
    association = Associations(store.db).open(UPLOAD, "127.0.0.1")
    series = uid(name, "series")
    assert take_instance(store, [_file(uid(name, "study"), series, 0)], source="UPLOAD",
                         association_id=association).stored
    return store, association, series, CompletionMonitor(store, JobQueue(store), grace_s=0, quiet_s=1, model="default")


def test_an_upload_s_series_are_held_only_while_it_stores_them(tmp_path: Path) -> None:
    """The upload's association ends with it, so a series it left receiving (cut short) completes by the rules."""
    from uronode.associations import Associations

    store, association, series, loop = _uploading(tmp_path, "upload-held")
    assert loop.complete_due(time.time() + 10) == []
    scanner = Associations(store.db).open("UPLOAD", "10.0.0.9")  # a DICOM peer of that AE title holds nothing
    other = uid("upload-held", "scanner-series")
    assert take_instance(store, [_file(uid("upload-held", "study"), other, 0)], source="UPLOAD",
                         association_id=scanner).stored
    assert [d.series_instance_uid for d in loop.complete_due(time.time() + 10)] == [other]  # by the quiet rule
    Associations(store.db).close(association, "aborted")
    assert [d.series_instance_uid for d in loop.complete_due(time.time() + 10)] == [series]


def test_an_upload_s_hold_ends_after_its_hour_whatever_the_wall_clock_does(tmp_path: Path) -> None:
    """Review 47 #5: the hour was on the database's wall clock; a step of the host's clock (NTP after a start,
    a virtual machine resumed) ended it early or late. Counted as the quiet and grace waits are."""
    from uronode.completion import UPLOAD_HOLD_S

    _, _, series, loop = _uploading(tmp_path, "upload-hour")
    wall, steady = time.time(), 1000.0
    assert loop.complete_due(wall + 10, steady + 10) == []
    assert loop.complete_due(wall + 2 * UPLOAD_HOLD_S, steady + 20) == []  # the clock stepped 2 h forward
    assert loop.complete_due(wall - UPLOAD_HOLD_S, steady + UPLOAD_HOLD_S - 30) == []  # ... then 1 h back
    # an hour on the steady clock: the upload that never ended holds it no longer, and the quiet rule decides
    assert loop.complete_due(wall - UPLOAD_HOLD_S, steady + UPLOAD_HOLD_S + 30) == []
    assert [d.series_instance_uid for d in loop.complete_due(wall - UPLOAD_HOLD_S, steady + UPLOAD_HOLD_S + 32)] == [
        series]

