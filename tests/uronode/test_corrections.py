"""Corrections sent again (probe 32): a series whose study UID was corrected at the PACS moves to that study, and
the study it left is not listed empty; rejection notes of other patients or studies are other series; a job whose
series is corrected while it is read says so, not that its files are damaged."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from pydicom.uid import SegmentationStorage

from tests.factory import ct_slice, uid
from tests.uronode.test_cancel import Stones, _settings
from tests.uronode.test_supersede import PACS, run
from uronode.app.worker import Worker
from uronode.header import read_header
from uronode.ingest import take_instance
from uronode.jobs import JobQueue
from uronode.outbox import Outbox
from uronode.queries import search_studies
from uronode.store import Store
from uronode.supersede import Superseded, rejection_note
from uronode.types import JobState

STUDY_A, STUDY_B = uid("corrections", "study-a"), uid("corrections", "study-b")
SOURCE = uid("supersede", "ct")  # the source series test_supersede.run records results of


def _ct(study: str, index: int, patient_id: str = "MRN1") -> bytes:
    ds = ct_slice(study, SOURCE, index, size=16)
    ds.PatientID = patient_id
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _result(study: str, name: str) -> pydicom.Dataset:
    ds = ct_slice(study, uid("corrections", "seg", name), 0, size=16, sop_class=SegmentationStorage,
                  manufacturer="uronode")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("corrections", name)
    ds.Modality = "SEG"
    return ds


def _studies(store: Store) -> dict[str, tuple[list[str], int]]:
    return {s["StudyInstanceUID"]: (s["ModalitiesInStudy"], s["NumberOfStudyRelatedInstances"])
            for s in search_studies(store.db, [], limit=100, offset=0)}


def test_a_corrected_study_uid_moves_the_series_and_the_study_it_left_goes(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", fsync=False)
    outbox = Outbox(store)
    for index in range(3):
        store.put(read_header([data := _ct(STUDY_A, index)]), [data], calling_ae="CT")
    run(store, outbox, 1, [_result(STUDY_A, "first")], destinations=(PACS,))
    assert _studies(store) == {STUDY_A: (["CT", "SEG"], 4)}

    for index in range(3):  # the PACS corrected the study UID and sent the series again
        store.put(read_header([data := _ct(STUDY_B, index)]), [data], calling_ae="CT")
    series = store.conn().execute("SELECT study_instance_uid FROM series WHERE series_instance_uid = ?",
                                  (SOURCE,)).fetchone()
    assert series["study_instance_uid"] == STUDY_B
    # the earlier results stay in the study they were made in until the analysis of the corrected series
    assert _studies(store) == {STUDY_A: (["SEG"], 1), STUDY_B: (["CT"], 3)}

    run(store, outbox, 2, [_result(STUDY_B, "second")], destinations=(PACS,))
    assert _studies(store) == {STUDY_B: (["CT", "SEG"], 4)}


def test_rejection_notes_of_other_patients_or_studies_are_other_series() -> None:
    def note(study: str, patient_id: str) -> pydicom.Dataset:
        first = _result(study, "x")
        first.PatientID = patient_id
        gone = Superseded(str(first.SOPInstanceUID), SegmentationStorage, str(first.SeriesInstanceUID), study,
                          Path("x.dcm"), ("pacs",))
        return rejection_note([gone], first, source_series_uid=SOURCE, model="m 1.0", job_id=2)

    same = note(STUDY_A, "MRN1").SeriesInstanceUID
    assert note(STUDY_A, "MRN1").SeriesInstanceUID == same
    assert note(STUDY_A, "MRN2").SeriesInstanceUID != same
    assert note(STUDY_B, "MRN1").SeriesInstanceUID != same


def test_a_job_whose_series_is_corrected_while_it_is_read_says_so(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = Store(settings.storage.data_dir, fsync=False)
    queue = JobQueue(store)
    for index in range(3):
        assert take_instance(store, [_ct(STUDY_A, index)], source="CT").stored
    store.conn().execute("UPDATE series SET state = 'complete' WHERE series_instance_uid = ?", (SOURCE,))
    generation = store.conn().execute("SELECT generation FROM series WHERE series_instance_uid = ?",
                                      (SOURCE,)).fetchone()["generation"]
    with store.transaction() as conn:
        queue.enqueue_in(conn, STUDY_A, SOURCE, generation, "default")
    job = queue.claim()
    assert job is not None

    def corrected() -> None:  # the corrected copy arrives while the job reads the series
        for index in range(3):
            assert take_instance(store, [_ct(STUDY_A, index, patient_id="MRN2")], source="CT").stored

    assert Worker(store, settings, Stones(on_run=corrected)).run_job(job) is JobState.FAILED
    failed = queue.get(job.id)
    assert failed is not None and failed.reason is not None
    assert failed.reason.startswith("the series changed while it was read (images replaced or added after it had "
                             "completed): the changed series is analysed by a job of its own"), failed.reason
