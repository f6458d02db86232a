"""Corrections sent again (probe 32): a series whose study UID was corrected at the PACS moves to that study, and
the study it left is not listed empty; a series whose images all moved to another goes; rejection notes of other
patients or studies are other series; a job whose series is corrected while it is read says so, not that its files
are damaged; a job run again keeps the results a destination may hold."""

from __future__ import annotations

import datetime
import io
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import SegmentationStorage

from inference.errors import VolumeError
from inference.volume import load_volume
from tests.factory import ct_slice, uid
from tests.uronode.test_cancel import Stones, _settings
from tests.uronode.test_supersede import PACS, run
from uronode.app.cli import main
from uronode.app.worker import Worker
from uronode.completion import CompletionMonitor
from uronode.header import read_header
from uronode.ingest import take_instance
from uronode.jobs import JobQueue
from uronode.outbox import Outbox
from uronode.queries import search_series, search_studies
from uronode.retention import purge_study
from uronode.store import Store
from uronode.supersede import CORRECTED, WITHDRAWN, Superseded, rejection_note
from uronode.types import JobState

STUDY_A, STUDY_B = uid("corrections", "study-a"), uid("corrections", "study-b")
SOURCE = uid("supersede", "ct")  # the source series test_supersede.run records results of


def _ct(study: str, index: int, patient_id: str = "MRN1", series: str = SOURCE, *, moved_to: str | None = None,
        description: str | None = None, name: str | None = None) -> bytes:
    """Slice ``index`` of ``series``, encoded; ``moved_to``: the same image (its SOP Instance UID) in another
    series; ``description``: its Series Description; ``name``: its Patient's Name."""
    ds = ct_slice(study, series, index, size=16)
    ds.PatientID = patient_id
    if name is not None:
        ds.PatientName = name
    if moved_to is not None:
        ds.SeriesInstanceUID = moved_to
    if description is not None:
        ds.SeriesDescription = description
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


@pytest.mark.parametrize("offset", ["+1000", None])
def test_a_rejection_note_is_dated_in_the_zone_of_the_results_it_rejects(offset: str | None) -> None:
    """Probe 39: the note was dated by the host's local clock; it keeps the results' offset from UTC, as they
    keep their source's, and states its times in it (the host's local time where they name none)."""
    first = _result(STUDY_A, "x")
    if offset is not None:
        first.TimezoneOffsetFromUTC = offset
    gone = Superseded(str(first.SOPInstanceUID), SegmentationStorage, str(first.SeriesInstanceUID), STUDY_A,
                      Path("x.dcm"), ("pacs",))
    note = rejection_note([gone], first, source_series_uid=SOURCE, model="m 1.0", job_id=2)
    assert note.get("TimezoneOffsetFromUTC") == offset
    expected = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=10)).replace(tzinfo=None) if offset \
        else datetime.datetime.now()
    stamped = datetime.datetime.strptime(f"{note.ContentDate}{note.ContentTime}", "%Y%m%d%H%M%S")
    assert abs((stamped - expected).total_seconds()) < 120


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


def test_a_job_run_again_keeps_the_results_a_destination_may_hold(tmp_path: Path) -> None:
    """``uronode requeue`` of a delivered job: the same source and findings make the same UIDs with other times;
    the node keeps and sends the copy it had (probe 32: the PACS and the node held other bytes under one UID)."""
    settings = _settings(tmp_path)
    store = Store(settings.storage.data_dir, fsync=False)
    queue = JobQueue(store)
    for index in range(3):
        assert take_instance(store, [_ct(STUDY_A, index)], source="CT").stored
    with store.transaction() as conn:
        job_id = queue.enqueue_in(conn, STUDY_A, SOURCE, 1, "default")
    job = queue.claim()
    assert job is not None and Worker(store, settings, Stones()).run_job(job) is JobState.DELIVERING

    def results() -> dict[str, bytes]:
        rows = store.conn().execute("SELECT sop_instance_uid, path FROM instances WHERE manufacturer = 'uronode'")
        return {r["sop_instance_uid"]: Path(r["path"]).read_bytes() for r in rows}

    first = results()
    assert first
    store.conn().execute("UPDATE jobs SET state = 'delivered' WHERE id = ?", (job_id,))
    time.sleep(1.1)  # the writers' times are to the second
    queue.requeue(job_id)
    again = queue.claim()
    assert again is not None and Worker(store, settings, Stones()).run_job(again) is JobState.DELIVERING
    assert results() == first
    owed = store.conn().execute("SELECT DISTINCT path FROM deliveries WHERE job_id = ?", (job_id,)).fetchall()
    assert {Path(r["path"]).read_bytes() for r in owed} == set(first.values())


def test_a_series_whose_images_all_moved_to_another_is_no_longer_listed(tmp_path: Path) -> None:
    """The PACS moved a series' images to a new Series Instance UID (the same SOP UIDs): the emptied series
    completes with nothing in it and goes, not listed as an empty CT series whose metadata is 404 (probe 32)."""
    store = Store(tmp_path / "data", fsync=False)
    monitor = CompletionMonitor(store, JobQueue(store), grace_s=0.0, quiet_s=0.0, model="default")
    for index in range(3):
        assert take_instance(store, [_ct(STUDY_A, index)], source="CT").stored
    (done,) = monitor.complete_due(now=time.time() + 1)
    assert done.job_id is not None
    moved = uid("corrections", "moved")
    for index in range(3):
        assert take_instance(store, [_ct(STUDY_A, index, moved_to=moved)], source="CT").stored
    decided = {c.series_instance_uid: c for c in monitor.complete_due(now=time.time() + 1)}
    assert decided[moved].job_id is not None
    assert decided[SOURCE].job_id is None
    listed = {s["SeriesInstanceUID"]: s["NumberOfSeriesRelatedInstances"]
              for s in search_series(store.db, [], limit=100, offset=0, study=STUDY_A)}
    assert listed == {moved: 3}
    assert _studies(store) == {STUDY_A: (["CT"], 3)}


def test_a_series_holding_two_patients_is_not_analysed(tmp_path: Path) -> None:
    """Part of a series sent again with another Patient ID (probe 32: analysed without a word, its results
    carrying one of the two identities): the job fails with the reason, which names no ID."""
    paths = []
    for index in range(4):
        path = tmp_path / f"{index}.dcm"
        path.write_bytes(_ct(STUDY_A, index, patient_id="MRN444" if index == 3 else "MRN555"))
        paths.append(path)
    with pytest.raises(VolumeError) as raised:
        load_volume(paths)
    message = str(raised.value)
    assert message.startswith("the series' images name 2 different patients (Patient IDs on 3 and 1 images)")
    assert "MRN" not in message
    assert load_volume(paths[:3]).hu.shape[0] == 3
    # the same ID with an issuer on some images and none on the others (a PACS that adds it): one patient
    for index, issuer in ((0, "HOSP_A"), (1, "")):
        ds = pydicom.dcmread(paths[index])
        ds.IssuerOfPatientID = issuer
        ds.save_as(paths[index], enforce_file_format=True)
    assert load_volume(paths[:3]).hu.shape[0] == 3
    ds = pydicom.dcmread(paths[1])
    ds.IssuerOfPatientID = "HOSP_B"
    ds.save_as(paths[1], enforce_file_format=True)
    with pytest.raises(VolumeError, match="^the series' images name 2 different patients"):
        load_volume(paths[:3])
    # one ID, and a name or an Accession Number corrected on part of the series (probe 45: analysed without a word,
    # the results carrying whichever the first image named)
    ds = pydicom.dcmread(paths[0])
    ds.IssuerOfPatientID = "HOSP_B"
    ds.save_as(paths[0], enforce_file_format=True)
    assert load_volume(paths[:3]).hu.shape[0] == 3
    for keyword, value, words in (("PatientName", "DOE^BERT", "patient names"),
                                  ("AccessionNumber", "ACC-NEW", "Accession Numbers")):
        kept = paths[0].read_bytes()
        ds = pydicom.dcmread(paths[0])
        setattr(ds, keyword, value)
        ds.save_as(paths[0], enforce_file_format=True)
        with pytest.raises(VolumeError) as raised:
            load_volume(paths[:3])
        assert str(raised.value).startswith(f"the series' images name 2 different {words} (2 and 1 images)")
        assert value not in str(raised.value)
        paths[0].write_bytes(kept)


def test_purge_study_deletes_one_study_at_once_and_waits_for_what_is_owed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``uronode purge --study UID``: a study the PACS deleted or merged into another patient's goes from the
    node with the results made of it, whatever its age; not while something of it is still owed."""
    store = Store(tmp_path / "data", fsync=False)
    for study in (STUDY_A, STUDY_B):
        for index in range(3):
            ct = _ct(study, index, series=SOURCE if study == STUDY_A else uid("corrections", "b-series"))
            store.put(read_header([ct]), [ct], calling_ae="CT")
    run(store, Outbox(store), 1, [_result(STUDY_A, "first")], destinations=(PACS,))
    store.conn().execute("UPDATE series SET state = 'complete'")  # as completion leaves them
    files = [Path(r["path"]) for r in store.conn().execute(
        "SELECT path FROM instances WHERE study_instance_uid = ?", (STUDY_A,))]
    assert len(files) == 4 and all(f.exists() for f in files)
    data = str(tmp_path / "data")

    assert main(["purge", "--data-dir", data, "--study", STUDY_A]) == 1
    assert "is still in use: 1 deliveries still owed" in capsys.readouterr().err
    store.conn().execute("UPDATE deliveries SET state = 'delivered'")
    assert main(["purge", "--data-dir", data, "--study", STUDY_A, "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith(f"would delete study {STUDY_A}: 1 series, 3 instances")
    assert all(f.exists() for f in files)

    assert main(["purge", "--data-dir", data, "--study", STUDY_A]) == 0
    assert capsys.readouterr().out.startswith(
        f"deleted study {STUDY_A}: 1 series, 3 instances, 0.0 MB, with the 1 result instance(s)")
    assert not any(f.exists() for f in files)
    assert _studies(store) == {STUDY_B: (["CT"], 3)}
    assert store.conn().execute("SELECT count(*) FROM results").fetchone()[0] == 0
    audit = (tmp_path / "data" / "audit.log").read_text()
    assert '"study_purged"' in audit and STUDY_A in audit
    assert main(["purge", "--data-dir", data, "--study", STUDY_A]) == 1
    assert f"the node holds no study {STUDY_A}" in capsys.readouterr().err


@pytest.mark.parametrize("with_destinations", [True, False])
def test_results_of_a_series_whose_images_all_moved_are_withdrawn(tmp_path: Path, with_destinations: bool) -> None:
    """Probe 32: the PACS moved a series' images to another series; that series is analysed as itself, and the
    emptied series' results (review 32: they had stayed until retention, at the node and at the PACS, beside the
    new analysis of the same images) are withdrawn when it completes empty: out of the node's store, deliveries
    still owed not sent, and a rejection note that says why owed to each destination that holds them."""
    store = Store(tmp_path / "data", fsync=False)
    outbox = Outbox(store)
    monitor = CompletionMonitor(store, JobQueue(store), grace_s=0.0, quiet_s=0.0, model="default",
                                outbox=outbox if with_destinations else None,
                                destinations=(PACS,) if with_destinations else ())
    for index in range(3):
        assert take_instance(store, [_ct(STUDY_A, index)], source="CT").stored
    monitor.complete_due(now=time.time() + 1)
    run(store, outbox, 1, [_result(STUDY_A, "first"), _result(STUDY_A, "second")], destinations=(PACS,))
    store.conn().execute("UPDATE deliveries SET state = 'delivered' WHERE sop_instance_uid = ?",
                         (uid("corrections", "first"),))  # the PACS holds one; the other is still owed
    seg = store.get_instance(uid("corrections", "first"))
    assert seg is not None and seg.path.exists()
    for index in range(3):  # the same images, in another series
        assert take_instance(store, [_ct(STUDY_A, index, moved_to=uid("corrections", "moved"))], source="CT").stored
    monitor.complete_due(now=time.time() + 1)  # the emptied series goes, and its results with it
    assert store.get_instance(uid("corrections", "first")) is None and not seg.path.exists()
    assert store.get_instance(uid("corrections", "second")) is None
    assert store.conn().execute("SELECT count(*) FROM results").fetchone()[0] == 0
    states = {r["sop_instance_uid"]: (r["state"], r["last_error"]) for r in store.conn().execute(
        "SELECT sop_instance_uid, state, last_error FROM deliveries WHERE job_id IS NOT NULL")}
    assert states[uid("corrections", "second")] == ("superseded", f"withdrawn: {WITHDRAWN}")
    assert states[uid("corrections", "first")][0] == "delivered"
    notes = store.conn().execute("SELECT destination, sop_class_uid, path, job_id, calling_ae FROM deliveries"
                                 " WHERE job_id IS NULL").fetchall()
    if not with_destinations:  # a node without destinations: withdrawn from its own store, nothing to send
        assert notes == []
        return
    (note,) = notes
    assert (note["destination"], note["sop_class_uid"], note["calling_ae"]) == ("pacs", "1.2.840.10008.5.1.4.1.1.88.59",
                                                                               "CT")
    ds = pydicom.dcmread(note["path"])
    assert ds.ConceptNameCodeSequence[0].CodeValue == "113001"
    assert [str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in ds.ContentSequence[1:]] == [
        uid("corrections", "first")]  # only what the PACS holds
    assert "withdrawn: every image of that series was sent again in another series" in ds.ContentSequence[0].TextValue
    assert "job" not in ds.ContentSequence[0].TextValue
    job = JobQueue(store).get(1)
    assert job is not None and job.withdrawn is not None and job.withdrawn.startswith("every image of its CT series")


def test_images_moved_away_and_back_are_analysed_into_results_of_other_uids(tmp_path: Path) -> None:
    """Review 35 #1: a split undone (the images sent back to the series they had left) was analysed into the very
    UIDs the withdrawal note had rejected, which an archive acting on IOCM hides. The results now take other UIDs;
    and a job run again on the series as it is then keeps those (nothing new to reject)."""
    settings = _settings(tmp_path)
    store = Store(settings.storage.data_dir, fsync=False)
    queue = JobQueue(store)
    outbox = Outbox(store)
    monitor = CompletionMonitor(store, queue, grace_s=0.0, quiet_s=0.0, model="default", outbox=outbox,
                                destinations=settings.delivery.destinations)

    def analyse() -> set[str]:
        job = queue.claim()
        assert job is not None and job.series_instance_uid == SOURCE
        assert Worker(store, settings, Stones()).run_job(job) is JobState.DELIVERING
        store.conn().execute("UPDATE deliveries SET state = 'delivered' WHERE job_id = ?", (job.id,))
        return {r["sop_instance_uid"] for r in store.conn().execute(
            "SELECT sop_instance_uid FROM results WHERE job_id = ?", (job.id,))}

    for index in range(3):
        assert take_instance(store, [_ct(STUDY_A, index)], source="CT").stored
    monitor.complete_due(now=time.time() + 1)
    first = analyse()
    assert first  # the report (16-pixel images: no stone)
    moved = uid("corrections", "moved")
    for index in range(3):
        assert take_instance(store, [_ct(STUDY_A, index, moved_to=moved)], source="CT").stored
    monitor.complete_due(now=time.time() + 1)  # the source's results withdrawn, a note owed
    assert store.conn().execute("SELECT count(*) FROM deliveries WHERE job_id IS NULL").fetchone()[0] == 1
    for index in range(3):  # and back, the same bytes as at first
        assert take_instance(store, [_ct(STUDY_A, index)], source="CT").stored
    monitor.complete_due(now=time.time() + 1)  # "moved" emptied: its queued job dropped; the source queued again
    back = analyse()
    assert len(back) == len(first) and not back & first
    assert all(store.get_instance(u) is not None for u in back)
    again = store.conn().execute("SELECT job_id FROM results LIMIT 1").fetchone()["job_id"]
    store.conn().execute("UPDATE jobs SET state = 'delivered' WHERE id = ?", (again,))  # as the sender would
    queue.requeue(again)  # the same series run again: the same UIDs as just made, none withdrawn
    assert analyse() == back
    rejected = {r[0] for r in store.conn().execute("SELECT sop_instance_uid FROM rejected")}
    assert rejected == first


def test_a_series_left_with_its_scout_alone_has_its_results_withdrawn_and_its_queued_job_dropped(
        tmp_path: Path) -> None:
    """Review 35: the PACS split the axial images off and left the scout; the series completes again as
    localizers only, and what was made of it when it held slices goes (its queued job would run on the scout)."""
    store = Store(tmp_path / "data", fsync=False)
    outbox = Outbox(store)
    queue = JobQueue(store)
    monitor = CompletionMonitor(store, queue, grace_s=0.0, quiet_s=0.0, model="default", outbox=outbox,
                                destinations=(PACS,))
    scout = ct_slice(STUDY_A, SOURCE, 9, size=16, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    buffer = io.BytesIO()
    scout.save_as(buffer, enforce_file_format=True)
    assert take_instance(store, [buffer.getvalue()], source="CT").stored
    for index in range(3):
        assert take_instance(store, [_ct(STUDY_A, index)], source="CT").stored
    (done,) = monitor.complete_due(now=time.time() + 1)
    assert done.job_id is not None
    run(store, outbox, 1, [_result(STUDY_A, "first")], destinations=(PACS,))
    store.conn().execute("UPDATE deliveries SET state = 'delivered'")
    assert take_instance(store, [_ct(STUDY_A, 5)], source="CT").stored  # a late slice: a second job queued
    (again,) = [c for c in monitor.complete_due(now=time.time() + 1) if c.series_instance_uid == SOURCE]
    assert again.job_id is not None and queue.get(again.job_id).state is JobState.QUEUED  # type: ignore[union-attr]
    for index in (0, 1, 2, 5):
        assert take_instance(store, [_ct(STUDY_A, index, moved_to=uid("corrections", "moved"))], source="CT").stored
    decided = {c.series_instance_uid: c for c in monitor.complete_due(now=time.time() + 1)}
    assert decided[SOURCE].reason == "localizer (scout) images"
    assert store.get_instance(uid("corrections", "first")) is None
    assert store.conn().execute("SELECT count(*) FROM results").fetchone()[0] == 0
    dropped = queue.get(again.job_id)
    assert dropped is not None and dropped.state is JobState.FAILED and dropped.reason is not None
    assert dropped.reason.startswith("the series no longer holds CT slices (localizer (scout) images): its images were"
                                     " sent again in another series"), dropped.reason
    (note,) = store.conn().execute("SELECT destination FROM deliveries WHERE job_id IS NULL").fetchall()
    assert note["destination"] == "pacs"
    listed = {s["SeriesInstanceUID"] for s in search_series(store.db, [], limit=100, offset=0, study=STUDY_A)}
    assert SOURCE in listed  # its scout is still there


def test_purge_study_leaves_the_part_of_a_series_that_lies_in_another_study(tmp_path: Path) -> None:
    """Part of a series sent again under a corrected study UID: purging the corrected study takes its images
    only; the rest keeps a series row, in the study it lies in (review 32: its instances were left with none)."""
    store = Store(tmp_path / "data", fsync=False)
    for index in range(4):
        ct = _ct(STUDY_A, index)
        store.put(read_header([ct]), [ct], calling_ae="CT")
    for index in (2, 3):
        ct = _ct(STUDY_B, index)
        store.put(read_header([ct]), [ct], calling_ae="CT")
    store.conn().execute("UPDATE series SET state = 'complete'")
    done = purge_study(store, STUDY_B)
    assert done.instances == 2
    row = store.conn().execute("SELECT study_instance_uid FROM series WHERE series_instance_uid = ?",
                               (SOURCE,)).fetchone()
    assert row is not None and row["study_instance_uid"] == STUDY_A
    assert _studies(store) == {STUDY_A: (["CT"], 2)}
    listed = search_series(store.db, [], limit=10, offset=0, study=STUDY_A)
    assert [(s["SeriesInstanceUID"], s["NumberOfSeriesRelatedInstances"]) for s in listed] == [(SOURCE, 2)]


def test_requeue_runs_a_job_on_its_series_as_it_is_now(tmp_path: Path) -> None:
    """Review 32: a requeued job kept the generation it was queued for, so its worker took a later correction
    for one made while it read the series."""
    store = Store(tmp_path / "data", fsync=False)
    queue = JobQueue(store)
    monitor = CompletionMonitor(store, queue, grace_s=0.0, quiet_s=0.0, model="default")
    for index in range(3):
        assert take_instance(store, [_ct(STUDY_A, index)], source="CT").stored
    (first,) = monitor.complete_due(now=time.time() + 1)
    assert first.job_id is not None
    store.conn().execute("UPDATE jobs SET state = 'failed' WHERE id = ?", (first.job_id,))
    assert take_instance(store, [_ct(STUDY_A, 0, patient_id="MRN9")], source="CT").stored  # a correction
    (second,) = monitor.complete_due(now=time.time() + 1)
    assert second.generation == first.generation + 1
    queue.requeue(first.job_id)
    job = queue.get(first.job_id)
    assert job is not None and job.series_generation == second.generation


def test_results_of_a_series_whose_patient_was_corrected_are_withdrawn_and_never_sent(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    """Probe 45: part of a series sent again with the corrected patient failed its new job (two identities), and
    the results of the earlier identity stayed current and went to the PACS after the correction; another model's
    were never superseded. An image that comes again naming another patient or order marks its series: the results
    made of it wait, and are withdrawn, every model's, when it completes, whatever its new analysis makes of it."""
    store = Store(tmp_path / "data", fsync=False)
    outbox = Outbox(store)
    queue = JobQueue(store)
    monitor = CompletionMonitor(store, queue, grace_s=0.0, quiet_s=0.0, model="default", outbox=outbox,
                                destinations=(PACS,))
    for index in range(3):
        assert take_instance(store, [_ct(STUDY_A, index, patient_id="TMP1", name="TRAUMA^UNKNOWN")],
                             source="CT").stored
    monitor.complete_due(now=time.time() + 1)
    made = {name: _result(STUDY_A, name) for name in ("first", "second", "earlier-model")}
    for ds in made.values():  # as the writers copy them from the CT
        ds.PatientID, ds.PatientName = "TMP1", "TRAUMA^UNKNOWN"
    run(store, outbox, 1, [made["first"], made["second"]], destinations=(PACS,))
    run(store, outbox, 1, [made["earlier-model"]], model="m 0.9", destinations=(PACS,))
    store.conn().execute("UPDATE deliveries SET state = 'delivered' WHERE sop_instance_uid = ?",
                         (uid("corrections", "first"),))  # the PACS holds one; the others are still owed

    def owed() -> set[str]:
        return {d.sop_instance_uid for found in outbox.due(now=time.time() + 1e6).values() for d in found}

    # an image sent again with the same identity (another description): its results stay and go
    assert take_instance(store, [_ct(STUDY_A, 0, patient_id="TMP1", name="TRAUMA^UNKNOWN", description="KUB")],
                         source="CT").stored
    assert owed() == {uid("corrections", "second"), uid("corrections", "earlier-model")}
    monitor.complete_due(now=time.time() + 1)
    assert store.conn().execute("SELECT count(*) FROM results").fetchone()[0] == 3

    # the PACS corrects the patient and sends two of the three images again
    for index in (1, 2):
        assert take_instance(store, [_ct(STUDY_A, index, patient_id="MRN4732", name="DOE^BERT")],
                             source="CT").stored
    warned = [r.getMessage() for r in caplog.records if "came again naming another" in r.getMessage()]
    assert len(warned) == 1 and "Patient ID and patient name" in warned[0] and "MRN4732" not in warned[0]
    assert owed() == set()  # nothing of the earlier identity goes while the series arrives
    pending = store.conn().execute("SELECT id FROM deliveries WHERE sop_instance_uid = ?",
                                   (uid("corrections", "second"),)).fetchone()["id"]
    assert not outbox.still_owed(pending)  # nor in a round that began before the correction (review 40)
    store.conn().execute("UPDATE jobs SET state = 'delivering' WHERE id = 1")
    capsys.readouterr()
    assert main(["jobs", "--data-dir", str(tmp_path / "data")]) == 0
    (line,) = [row for row in capsys.readouterr().out.splitlines() if row.split()[0] == "1"]
    assert line.endswith("held: an image of the series came again naming another patient or order, its results are"
                         " withdrawn when the series is complete")
    monitor.complete_due(now=time.time() + 1)
    assert store.conn().execute("SELECT count(*) FROM results").fetchone()[0] == 0
    states = {r["sop_instance_uid"]: (r["state"], r["last_error"]) for r in store.conn().execute(
        "SELECT sop_instance_uid, state, last_error FROM deliveries WHERE job_id IS NOT NULL")}
    assert states[uid("corrections", "second")] == ("superseded", f"withdrawn: {CORRECTED.reason}")
    assert states[uid("corrections", "earlier-model")] == ("superseded", f"withdrawn: {CORRECTED.reason}")
    assert states[uid("corrections", "first")][0] == "delivered"
    (note,) = store.conn().execute("SELECT path FROM deliveries WHERE job_id IS NULL").fetchall()
    ds = pydicom.dcmread(note["path"])
    assert (ds.PatientID, str(ds.PatientName)) == ("TMP1", "TRAUMA^UNKNOWN")  # in the record that holds them
    assert "identity of that series' images was corrected" in ds.ContentSequence[0].TextValue
    job = queue.get(1)
    assert job is not None and job.withdrawn == CORRECTED.reason
    assert store.conn().execute("SELECT identity_changed FROM series WHERE series_instance_uid = ?",
                                (SOURCE,)).fetchone()[0] == 0
    assert [j.state for j in queue.for_series(SOURCE)][-1] is JobState.QUEUED  # analysed again as it is now
    audit = (tmp_path / "data" / "audit.log").read_text()
    assert '"why":"the patient or order identity of its images was corrected"' in audit


def test_the_nodes_own_results_never_change_the_patient_a_study_is_listed_under(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Probe 45: results made before a correction and stored after it listed the study under the earlier name
    again; a study UID whose series name two patients is said."""
    store = Store(tmp_path / "data", fsync=False)
    assert take_instance(store, [_ct(STUDY_A, 0, patient_id="MRN4732", name="DOE^BERT")], source="CT").stored
    result = _result(STUDY_A, "late")
    result.PatientID, result.PatientName = "TMP1", "TRAUMA^UNKNOWN"
    buffer = io.BytesIO()
    result.save_as(buffer, enforce_file_format=True)
    store.put(read_header([buffer.getvalue()]), [buffer.getvalue()], calling_ae="URONODE")
    (study,) = search_studies(store.db, [], limit=10, offset=0)
    assert (study["PatientID"], study["PatientName"]) == ("MRN4732", "DOE^BERT")
    assert not any("names another Patient ID" in r.getMessage() for r in caplog.records)
    other = uid("corrections", "other-patient")
    assert take_instance(store, [_ct(STUDY_A, 0, patient_id="MRN5000", series=other)], source="CT").stored
    warned = [r.getMessage() for r in caplog.records if "names another Patient ID" in r.getMessage()]
    assert len(warned) == 1 and other in warned[0] and "MRN5000" not in warned[0]


def test_a_name_written_otherwise_or_a_value_filled_in_is_no_correction(tmp_path: Path) -> None:
    """Review 40: a PACS that trims a name's empty components (``DOE^BERT^^^``), writes it in capitals or adds the
    sex it knows sent an image again, and every result of the series was withdrawn, its new job refused."""
    from uronode.dicomfile import same_identity
    from uronode.store import identity_changes

    assert same_identity("PatientName", " Doe^Bert^^^ ", "DOE^BERT=ドウ^バート")  # a group added: the same
    assert same_identity("PatientName", "=山田^太郎", "YAMADA^TARO=山田^太郎")  # review 41
    assert not same_identity("PatientName", "DOE^BERTA", "DOE^BERT")
    assert not same_identity("PatientName", "DOE^JOHN", "=山田^太郎")  # nothing to compare: not the same
    assert same_identity("PatientBirthDate", "19700101", "") and not same_identity("PatientSex", "M", "F")
    assert not same_identity("AccessionNumber", "A1", "") and not same_identity("PatientID", "", "MRN1")  # review 42
    stored = tmp_path / "stored.dcm"
    ds = pydicom.dcmread(io.BytesIO(_ct(STUDY_A, 0, name="DOE^BERT^^^")))
    del ds.PatientSex
    ds.save_as(stored, enforce_file_format=True)
    same = read_header([_ct(STUDY_A, 0, name="doe^bert")])
    assert identity_changes(stored, same) == ()  # the name as written otherwise, the sex filled in
    assert identity_changes(stored, read_header([_ct(STUDY_A, 0, name="DOE^ANNA")])) == ("patient name",)
    paths = []
    for index, name in enumerate(("DOE^BERT^^^", "Doe^Bert", "DOE^BERT")):
        paths.append(path := tmp_path / f"{index}.dcm")
        one = pydicom.dcmread(io.BytesIO(_ct(STUDY_A, index, name=name)))
        if index == 0:
            del one.PatientSex  # an image without the value names no other
        one.save_as(path, enforce_file_format=True)
    assert load_volume(paths).hu.shape[0] == 3


def test_an_image_moved_to_another_series_marks_neither(tmp_path: Path) -> None:
    """Review 40: an image moved to another series, naming that series' patient, was compared with its own earlier
    copy, and the series it joined was marked: that series' results, of the right patient, would have gone."""
    store = Store(tmp_path / "data", fsync=False)
    for index in range(3):
        assert take_instance(store, [_ct(STUDY_A, index, patient_id="WRONG")], source="CT").stored
    other = uid("corrections", "right-series")
    assert take_instance(store, [_ct(STUDY_A, 0, patient_id="RIGHT", moved_to=other)], source="CT").stored
    flags = dict(store.conn().execute("SELECT series_instance_uid, identity_changed FROM series").fetchall())
    assert flags == {SOURCE: 0, other: 0}


def test_a_remote_job_running_when_the_patient_is_corrected_records_nothing(tmp_path: Path) -> None:
    """Review 40: a remote worker's job claimed before the correction completed after the corrected series did, and
    its results, made of the earlier patient's images, were recorded and sent. The completion fails the jobs still
    running on the series as it was: the worker's completion is refused (and so is its STOW-RS: no live claim)."""
    from uronode.claims import ClaimConflict, Claims, holds

    store = Store(tmp_path / "data", fsync=False)
    queue, outbox = JobQueue(store), Outbox(store)
    monitor = CompletionMonitor(store, queue, grace_s=0.0, quiet_s=0.0, model="default", outbox=outbox,
                                destinations=(PACS,))
    for index in range(3):
        assert take_instance(store, [_ct(STUDY_A, index, patient_id="TMP1")], source="CT").stored
    monitor.complete_due(now=time.time() + 1)
    claims = Claims(store, lease_s=600, claim_timeout_s=20)
    (job,) = claims.to_publish()
    claim = claims.claim(job.id, job.series_generation, "w1")
    for index in (1, 2):
        assert take_instance(store, [_ct(STUDY_A, index, patient_id="MRN4732")], source="CT").stored
    (done,) = monitor.complete_due(now=time.time() + 1)
    assert done.job_id is not None and done.job_id != job.id
    dropped = queue.get(job.id)
    assert dropped is not None and dropped.state is JobState.FAILED and dropped.reason is not None
    assert dropped.reason.startswith("the patient or order identity of the series' images was corrected")
    assert not holds(store, "w1", STUDY_A)
    with pytest.raises(ClaimConflict, match="this claim no longer holds it"):
        claims.complete(job.id, claim.token, "w1", results=[], findings="{}", seconds=1.0, destinations=(PACS,),
                        outbox=outbox)
