"""A later run of the same model on a series supersedes the earlier run's results: out of the store, not sent, and a
rejection note (IHE IOCM) to each destination that holds some of them."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from tests.factory import ct_slice, uid
from tests.writers.conftest import dciodvfy
from uronode.header import read_header
from uronode.outbox import DeliveryState, Outbox
from uronode.settings import Destination
from uronode.store import Store
from uronode.supersede import (
    KEY_OBJECT_SELECTION,
    NOTES_FOLDER,
    Superseded,
    current_reports,
    note_series_number,
    owe_note_in,
    record_results,
    rejection_note,
    retire,
    superseding_job,
)
from uronode.types import DocumentReference

STUDY, SOURCE = uid("supersede", "study"), uid("supersede", "ct")
PACS = Destination(name="pacs", kind="dicom", ae_title="PACS", host="127.0.0.1", port=104)
ARCHIVE = Destination(name="archive", kind="dicom", ae_title="ARCHIVE", host="127.0.0.1", port=105)
NO_KO = Destination(name="nokeys", kind="dicom", ae_title="NOKEYS", host="127.0.0.1", port=106,
                    results=("seg", "sc", "sr"))


def result(name: str, sop_class: str, series: str) -> Dataset:
    ds = ct_slice(STUDY, uid("supersede", series), 0, size=16, sop_class=sop_class, manufacturer="uronode")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("supersede", name)
    ds.IssuerOfPatientID = "HOSP_A"
    return ds


def put(store: Store, ds: Dataset) -> Path:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    header = read_header([buffer.getvalue()])
    store.put(header, [buffer.getvalue()], calling_ae="URONODE")
    found = store.get_instance(header.sop_instance_uid)
    assert found is not None
    return found.path


def run(store: Store, outbox: Outbox, job_id: int, results: list[Dataset], model: str = "m 1.0",
        destinations: tuple[Destination, ...] = (PACS, ARCHIVE, NO_KO)) -> list[Superseded]:
    """What a worker does with a run's results: store them, owe them, record them and owe the rejection note of what
    they supersede; then retire that."""
    for ds in results:
        put(store, ds)
    with store.transaction() as conn:
        for ds in results:
            for destination in destinations:
                found = store.get_instance(ds.SOPInstanceUID)
                assert found is not None
                outbox.enqueue_in(conn, destination=destination.name, sop_instance_uid=ds.SOPInstanceUID,
                                  sop_class_uid=ds.SOPClassUID, path=found.path, job_id=job_id, calling_ae="CT")
        superseded = record_results(conn, job_id=job_id, source_series_uid=SOURCE, model=model,
                                    sop_instance_uids=[ds.SOPInstanceUID for ds in results])
        note = owe_note_in(conn, store.root, outbox, superseded, destinations=destinations, source_series_uid=SOURCE,
                           model=model, job_id=job_id, calling_ae="CT")
    retire(store.root, superseded, note, source_series_uid=SOURCE, model=model, job_id=job_id)
    return superseded


def deliveries(store: Store) -> dict[tuple[str, str], str]:
    rows = store.conn().execute("SELECT destination, sop_instance_uid, state FROM deliveries").fetchall()
    return {(r["destination"], r["sop_instance_uid"]): r["state"] for r in rows}


def test_a_later_run_supersedes_what_it_did_not_make_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    outbox = Outbox(store)
    sc1, sc2 = result("sc1", SecondaryCaptureImageStorage, "sc"), result("sc2", SecondaryCaptureImageStorage, "sc")
    sr1 = result("sr1", ComprehensiveSRStorage, "sr")
    assert run(store, outbox, 1, [sc1, sc2, sr1]) == []
    first_paths = [found.path for ds in (sc1, sr1) if (found := store.get_instance(ds.SOPInstanceUID)) is not None]
    assert len(first_paths) == 2
    # The PACS got sc1 and sr1; the archive got nothing yet (its deliveries wait), the third got sc1.
    ids = {(r["destination"], r["sop_instance_uid"]): r["id"]
           for r in store.conn().execute("SELECT id, destination, sop_instance_uid FROM deliveries")}
    outbox.mark_delivered([ids[("pacs", sc1.SOPInstanceUID)], ids[("pacs", sr1.SOPInstanceUID)],
                           ids[("nokeys", sc1.SOPInstanceUID)]])
    outbox.settle_jobs()

    sr2 = result("sr2", ComprehensiveSRStorage, "sr")
    superseded = run(store, outbox, 2, [sc2, sr2])  # sc2 made again (the same content), sr2 new; sc1, sr1 not

    assert sorted((s.sop_instance_uid, s.delivered_to) for s in superseded) == sorted(
        [(sc1.SOPInstanceUID, ("pacs", "nokeys")), (sr1.SOPInstanceUID, ("pacs",))])
    in_store = {r[0] for r in store.conn().execute("SELECT sop_instance_uid FROM instances")}
    assert in_store == {sc2.SOPInstanceUID, sr2.SOPInstanceUID}
    assert not any(path.exists() for path in first_paths)
    recorded = {r[0]: r[1] for r in store.conn().execute("SELECT sop_instance_uid, job_id FROM results")}
    assert recorded == {sc2.SOPInstanceUID: 2, sr2.SOPInstanceUID: 2}
    states = deliveries(store)
    assert states[("archive", sc1.SOPInstanceUID)] == states[("archive", sr1.SOPInstanceUID)] == "superseded"
    assert states[("pacs", sc1.SOPInstanceUID)] == "delivered"  # history: it was sent
    assert states[("archive", sc2.SOPInstanceUID)] == "pending"  # made again: still owed

    # The rejection note: owed, as job 2's, to the destinations that hold some of them and take key objects.
    notes = [(d, s) for (d, s), state in states.items() if state == "pending"
             and s not in (sc2.SOPInstanceUID, sr2.SOPInstanceUID)]
    (note_uid,) = {s for _, s in notes}
    assert sorted(d for d, _ in notes) == ["pacs"]  # not the archive (holds none), not nokeys (takes no KO)
    note_path = tmp_path / "data" / NOTES_FOLDER / f"{note_uid}.dcm"
    note = pydicom.dcmread(note_path)
    assert note.SOPClassUID == KEY_OBJECT_SELECTION and note.Modality == "KO" and note.SeriesNumber == 905
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113001", "DCM", "Rejected for Quality Reasons")
    items = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID: i.ValueType
             for i in note.ContentSequence if "ReferencedSOPSequence" in i}
    assert items == {sc1.SOPInstanceUID: "IMAGE", sr1.SOPInstanceUID: "COMPOSITE"}
    (evidence,) = note.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == STUDY
    assert sorted(ref.ReferencedSOPInstanceUID for series in evidence.ReferencedSeriesSequence
                  for ref in series.ReferencedSOPSequence) == sorted([sc1.SOPInstanceUID, sr1.SOPInstanceUID])
    assert (note.PatientID, note.IssuerOfPatientID, note.StudyInstanceUID) == ("SYN0001", "HOSP_A", STUDY)
    errors, _ = dciodvfy(note_path)
    assert errors == []
    job = store.conn().execute("SELECT job_id FROM deliveries WHERE sop_instance_uid = ?", (note_uid,)).fetchone()
    assert job["job_id"] == 2

    # Job 1 is settled by what it delivered and what was superseded; a send of it that fails late changes nothing.
    assert outbox.mark_failed(ids[("archive", sc1.SOPInstanceUID)], "late") is DeliveryState.SUPERSEDED
    assert deliveries(store)[("archive", sc1.SOPInstanceUID)] == "superseded"


def test_another_model_s_results_are_never_superseded(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    outbox = Outbox(store)
    old = result("old", ComprehensiveSRStorage, "sr-old")
    run(store, outbox, 1, [old], model="m 1.0")
    assert run(store, outbox, 2, [result("new", ComprehensiveSRStorage, "sr-new")], model="m 2.0") == []
    assert store.get_instance(old.SOPInstanceUID) is not None


def test_the_same_results_again_supersede_nothing_and_the_note_needs_a_holder(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    outbox = Outbox(store)
    sr = result("sr", ComprehensiveSRStorage, "sr")
    run(store, outbox, 1, [sr])
    assert run(store, outbox, 2, [sr]) == []
    other = run(store, outbox, 3, [result("sr3", ComprehensiveSRStorage, "sr")])  # nobody got sr: no note
    assert [s.delivered_to for s in other] == [()]
    assert not (tmp_path / "data" / NOTES_FOLDER).exists()
    assert "superseded" in set(deliveries(store).values())


def test_a_rejection_note_lists_every_series_of_its_study(tmp_path: Path) -> None:
    items = [Superseded(uid("n", k), SecondaryCaptureImageStorage if k else ComprehensiveSRStorage,
                        uid("n", "series", k % 2), STUDY, tmp_path / "x.dcm", ("pacs",)) for k in range(3)]
    first = result("first", SecondaryCaptureImageStorage, "sc")
    note = rejection_note(items, first, source_series_uid=SOURCE, model="m 1.0", job_id=7)
    assert len(note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence) == 2
    assert note.SOPInstanceUID == rejection_note(list(reversed(items)), first, source_series_uid=SOURCE,
                                                 model="m 1.0", job_id=7).SOPInstanceUID  # the same note again
    assert "job 7" in note.ContentSequence[0].TextValue


@pytest.mark.parametrize("rejected, number", [(3902, 3905), (1903, 1905), (12901, 12905), (902, 905), (None, 905),
                                              ("", 905)])
def test_a_rejection_note_is_numbered_with_the_results_it_rejects(rejected: object, number: int) -> None:
    """Results are numbered 1000 x N + 901..904 after their CT series N: the note that rejects them is
    1000 x N + 905, so two CT series' notes differ and each sorts with its results; older results, 905."""
    first = result("first", SecondaryCaptureImageStorage, "sc")
    if rejected is None:
        del first.SeriesNumber
    else:
        first.SeriesNumber = rejected
    assert note_series_number(first) == number
    note = rejection_note([Superseded(uid("r"), SecondaryCaptureImageStorage, uid("rs"), STUDY, Path("x.dcm"),
                                      ("pacs",))], first, source_series_uid=SOURCE, model="m 1.0", job_id=7)
    text = note.ContentSequence[0].TextValue
    if number == 905:  # results numbered before the scheme: the CT series by its UID alone
        assert note.SeriesDescription == "AI urinary stones - superseded results (rejection note)"
        assert f"analysis of CT series {SOURCE} by m 1.0" in text
    else:  # named by its number, as the results are (probe 18)
        source = number // 1000
        assert note.SeriesDescription == f"AI urinary stones - superseded, series {source} (rejection note)"
        assert len(note.SeriesDescription) <= 64  # LO
        assert f"analysis of CT series {source} ({SOURCE}) by m 1.0" in text


@pytest.mark.parametrize("findings, model", [
    ('{"model": {"name": "uronode-stone-cascade", "version": "3.8.0"}, "stones": []}', "uronode-stone-cascade 3.8.0"),
    ('{"stones": []}', ""), ("not json", ""), ('{"model": {"name": "x"}}', ""), ('["list"]', ""),
])
def test_the_model_a_remote_worker_s_findings_name(findings: str, model: str) -> None:
    from uronode.supersede import findings_model

    assert findings_model(findings) == model


def test_a_job_says_which_later_job_replaced_its_results(tmp_path: Path) -> None:
    """Probe 18: a job whose results were superseded still read as delivered with its old stones; a client
    following it (the upload page) now learns which later job holds the current results."""
    store = Store(tmp_path / "data")
    outbox = Outbox(store)
    conn = store.conn()
    run(store, outbox, 1, [result("a1", ComprehensiveSRStorage, "sr-1")])
    assert superseding_job(conn, 1, SOURCE, "m 1.0") is None  # current
    run(store, outbox, 2, [result("a2", ComprehensiveSRStorage, "sr-2")])
    assert superseding_job(conn, 1, SOURCE, "m 1.0") == 2 and superseding_job(conn, 2, SOURCE, "m 1.0") is None
    run(store, outbox, 3, [result("b3", ComprehensiveSRStorage, "sr-3")], model="m 2.0")  # another model adds
    assert superseding_job(conn, 2, SOURCE, "m 1.0") is None
    assert superseding_job(conn, 9, SOURCE, "m 1.0") is None  # a job that recorded nothing, none after it


def test_the_current_reports_of_a_series_by_model(tmp_path: Path) -> None:
    """What a new run's report names as its predecessors: the series' current SRs, with their models; not the
    overlays, not the key objects, not the reports a later run has superseded."""
    store = Store(tmp_path / "data")
    outbox = Outbox(store)
    conn = store.conn()
    assert current_reports(conn, SOURCE) == []
    key = result("k1", KEY_OBJECT_SELECTION, "ko-1")
    run(store, outbox, 1, [result("s1", SecondaryCaptureImageStorage, "sc-1"), key,
                           result("r1", ComprehensiveSRStorage, "sr-1")])
    assert current_reports(conn, SOURCE) == [
        ("m 1.0", DocumentReference(STUDY, uid("supersede", "sr-1"), ComprehensiveSRStorage, uid("supersede", "r1")))]
    run(store, outbox, 2, [result("r2", ComprehensiveSRStorage, "sr-2")])  # supersedes r1
    run(store, outbox, 3, [result("r3", ComprehensiveSRStorage, "sr-3")], model="m 2.0")  # another model adds
    assert [(model, ref.sop_instance_uid) for model, ref in current_reports(conn, SOURCE)] == [
        ("m 1.0", uid("supersede", "r2")), ("m 2.0", uid("supersede", "r3"))]
    assert current_reports(conn, uid("supersede", "other-ct")) == []


def test_a_received_instance_recorded_as_a_result_is_never_superseded(tmp_path: Path) -> None:
    """Defence in depth beside the completion's check (probe 20): whatever was recorded, a later run never deletes
    a received image or lists it in a rejection note."""
    store = Store(tmp_path / "data")
    outbox = Outbox(store)
    received = ct_slice(STUDY, SOURCE, 0, size=16)  # the source series' own slice, Manufacturer TESTSCANNER
    run(store, outbox, 1, [received])
    superseded = run(store, outbox, 2, [result("r2", ComprehensiveSRStorage, "sr-2")])
    assert superseded == []
    assert store.get_instance(received.SOPInstanceUID) is not None


def test_a_stop_after_the_commit_loses_no_rejection_note(tmp_path: Path) -> None:
    """Review 35: the note was written and owed after the results' commit, so a stop in between left the earlier
    results rejected nowhere: the PACS kept showing them. Now it is owed in the same transaction; the files the
    stop left are what the next start removes."""
    store = Store(tmp_path / "data")
    outbox = Outbox(store)
    sr1 = result("sr1", ComprehensiveSRStorage, "sr")
    run(store, outbox, 1, [sr1], destinations=(PACS,))
    store.conn().execute("UPDATE deliveries SET state = 'delivered'")
    sr2 = result("sr2", ComprehensiveSRStorage, "sr")
    put(store, sr2)
    with store.transaction() as conn:  # job 2's transaction, then the node stops before retire()
        superseded = record_results(conn, job_id=2, source_series_uid=SOURCE, model="m 1.0",
                                    sop_instance_uids=[sr2.SOPInstanceUID])
        note = owe_note_in(conn, store.root, outbox, superseded, destinations=(PACS,), source_series_uid=SOURCE,
                           model="m 1.0", job_id=2, calling_ae="CT")
    assert note is not None
    del store
    again = Store(tmp_path / "data")  # the next start
    owed = again.conn().execute("SELECT destination, sop_instance_uid, path FROM deliveries WHERE state = 'pending'"
                                " AND sop_class_uid = ?", (KEY_OBJECT_SELECTION,)).fetchall()
    assert [(r["destination"], r["sop_instance_uid"]) for r in owed] == [("pacs", str(note[1].SOPInstanceUID))]
    assert Path(owed[0]["path"]).exists()
    assert again.get_instance(sr1.SOPInstanceUID) is None
