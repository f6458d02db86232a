"""Where patient data goes (probe 34): a Series Description may hold a patient's name, so the logs, the audit log
and the text burned into overlays show it as '...' (the job's reason and the results' headers keep it); a date
the header gets wrong is logged by its name, not its value; ``purge --study`` takes the study's rejection notes
and folders too."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from inference.postprocess import Findings
from inference.writers.sc import summary_lines
from inference.writers.sources import Identity, complete_header
from tests.factory import ct_slice, uid
from tests.uronode.test_corrections import STUDY_A, STUDY_B, _ct, _result
from tests.uronode.test_supersede import PACS, run
from uronode.completion import CompletionMonitor, sharp_kernel
from uronode.contrast import _quoted, without_free_text
from uronode.ingest import take_instance
from uronode.jobs import JobQueue
from uronode.outbox import Outbox
from uronode.retention import purge_study
from uronode.store import Store
from uronode.supersede import NOTES_FOLDER, Superseded, rejection_note

NAME = "Zzprivacy Probe"


def test_a_description_is_left_out_of_the_log_and_the_audit_not_out_of_the_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path / "data", fsync=False)
    monitor = CompletionMonitor(store, JobQueue(store), grace_s=0.0, quiet_s=0.0, model="default")
    for index in range(3):
        ct = _ct(STUDY_A, index, series=uid("privacy", "pv"), description=f"PORTAL VENOUS {NAME}")
        assert take_instance(store, [ct], source="CT").stored
    with caplog.at_level(logging.DEBUG):
        (done,) = monitor.complete_due(now=time.time() + 1)
    assert done.job_id is None and done.reason is not None and NAME in done.reason  # the reason, as it was
    assert "Series Description '...'" in caplog.text and NAME not in caplog.text
    audit = (tmp_path / "data" / "audit.log").read_text()
    assert "Series Description '...'" in audit and NAME not in audit


@pytest.mark.parametrize("description", ["BONE 'SMITH', JOHN", "BONE (SMITH', J)", "BONE SMITH\nJOHN",
                                         "SMITH', JOHN \"PV\"", "造影 動脈相 SMITH"])
def test_every_quoted_description_is_masked_whole(description: str) -> None:
    """Review 33: apostrophes, commas after a quote, parentheses and line breaks had let part of a name through;
    the sharp-kernel reason had quoted the description raw."""
    reasons = [f"contrast-enhanced ({_quoted('Series Description', description)}): the model reads",
               f"a sharp-kernel reconstruction ({sharp_kernel('', description + ' BONE')}): the model"]
    for reason in reasons:
        masked = without_free_text(reason)
        assert "SMITH" not in masked and "JOHN" not in masked, masked
        assert "Series Description '...'" in masked, masked


def test_text_burned_into_an_overlay_quotes_no_description() -> None:
    caution = (f"Contrast-enhanced (Series Description 'ABD {NAME} PV'): the model was made for non-contrast CT; "
               "contrast in the kidneys, ureters and bladder can be reported as stones and can hide them.")
    findings = Findings("1.2.3", "1.2.3.4", "1.2.3.5", (), (), np.zeros((1, 4, 4), np.uint8), "m", "1.0.0",
                        (caution,))
    lines = summary_lines(findings, 0)
    assert any(line.startswith("Caution: Contrast-enhanced (Series Description '...'): ") for line in lines)
    assert not any(NAME in line for line in lines)
    assert without_free_text(caution) != caution and without_free_text("no quote here") == "no quote here"


def test_a_wrong_birth_date_is_logged_by_its_name() -> None:
    ds = ct_slice(STUDY_A, uid("privacy", "dob"), 0, size=16)
    ds.PatientBirthDate = "1901-02-03"
    mended = complete_header(ds, Identity("1.2.3", "m", "1.0.0"), 2.5)
    assert "PatientBirthDate is not a DICOM DA: written empty" in mended
    assert not any("1901" in m for m in mended) and ds.PatientBirthDate == ""


def test_purge_study_takes_its_rejection_notes_and_folders(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", fsync=False)
    for study in (STUDY_A, STUDY_B):
        for index in range(2):
            ct = _ct(study, index, series=uid("privacy", "ct", study))
            take_instance(store, [ct], source="CT")
    run(store, Outbox(store), 1, [_result(STUDY_A, "privacy-first")], destinations=(PACS,))
    store.conn().execute("UPDATE series SET state = 'complete'")
    store.conn().execute("UPDATE deliveries SET state = 'delivered'")
    notes = store.root / NOTES_FOLDER
    notes.mkdir(exist_ok=True)
    for study in (STUDY_A, STUDY_B):
        first = _result(study, f"privacy-{study}")
        first.PatientName = NAME.replace(" ", "^")
        gone = Superseded(str(first.SOPInstanceUID), str(first.SOPClassUID), str(first.SeriesInstanceUID), study,
                          Path("x.dcm"), ("pacs",))
        note = rejection_note([gone], first, source_series_uid=uid("privacy", "ct", study), model="m 1.0", job_id=2)
        note.save_as(notes / f"{note.SOPInstanceUID}.dcm", enforce_file_format=True)
    assert (store.instances_dir / STUDY_A).is_dir()

    done = purge_study(store, STUDY_A)
    assert (done.results, done.notes) == (1, 1)  # the SEG and the note
    left = [pydicom.dcmread(p).StudyInstanceUID for p in notes.glob("*.dcm")]
    assert left == [STUDY_B]
    assert not (store.instances_dir / STUDY_A).exists()
    assert (store.instances_dir / STUDY_B).is_dir()


def test_the_index_overwrites_what_it_deletes(tmp_path: Path) -> None:
    """``secure_delete``: a purged study's text does not wait in free pages of the index for reuse (probe 34)."""
    store = Store(tmp_path / "data", fsync=False)
    assert store.conn().execute("PRAGMA secure_delete").fetchone()[0] == 1
    for index in range(2):
        ct = _ct(STUDY_A, index, series=uid("privacy", "secure"), description=f"ABDOMEN {NAME}")
        assert take_instance(store, [ct], source="CT").stored
    store.conn().execute("UPDATE series SET state = 'complete'")
    store.conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert NAME.encode() in (tmp_path / "data" / "index.sqlite3").read_bytes()
    purge_study(store, STUDY_A)  # it truncates the write-ahead log itself (review 33: old page copies stayed)
    for name in ("index.sqlite3", "index.sqlite3-wal"):
        path = tmp_path / "data" / name
        assert not path.exists() or NAME.encode() not in path.read_bytes(), name
