"""`uronode study`: from what a radiologist names (an Accession Number, a Patient ID) to what the node did with
each series of the study (probe 41: `uronode jobs` listed UIDs only, and skipped series were in no command)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from tests.factory import ct_slice, uid
from uronode.app.cli import main
from uronode.completion import CompletionMonitor
from uronode.ingest import take_instance
from uronode.jobs import Job, JobQueue
from uronode.outbox import Outbox
from uronode.store import Store

STUDY = uid("cli-study", "study")


def _send(store: Store, series: str, count: int, **attributes: object) -> None:
    for index in range(count):
        ds = ct_slice(STUDY, series, index, size=16)
        ds.AccessionNumber, ds.PatientID = "ACC1002", "MRN77"
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        assert take_instance(store, [buffer.getvalue()], source="CT").stored


def a_study(tmp_path: Path) -> Job:
    """A study in ``tmp_path / "data"``: a scout (skipped) and a series for the model (3), whose job owes a PACS one
    result; the job."""
    store = Store(tmp_path / "data", fsync=False)
    analysed, scout = uid("cli-study", "ct"), uid("cli-study", "scout")
    _send(store, analysed, 3, SeriesNumber=3, SeriesDescription="KUB 1.25")
    _send(store, scout, 1, SeriesNumber=1, SeriesDescription="Topogram", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    CompletionMonitor(store, JobQueue(store), grace_s=0, quiet_s=0, model="default").complete_due(time.time() + 1)
    (job,) = JobQueue(store).for_series(analysed)
    with store.transaction() as conn:
        Outbox(store).enqueue_in(conn, destination="pacs", sop_instance_uid="9.9", sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                                 path=tmp_path / "x.dcm", job_id=job.id)
    return job


def test_a_study_named_by_its_accession_number_shows_each_series_its_jobs_and_deliveries(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = a_study(tmp_path)
    data = str(tmp_path / "data")
    assert main(["study", "--data-dir", data, "--accession", "ACC1002"]) == 0
    out = capsys.readouterr().out
    assert f"study {STUDY}  accession ACC1002" in out
    assert "series #1 CT 'Topogram' (1 instances" in out and "skipped: localizer (scout) images" in out
    assert "series #3 CT 'KUB 1.25' (3 instances" in out and ": for the model\n    job " in out
    assert f"    job {job.id} queued (default, " in out and "results: pacs pending 1" in out
    assert "MRN77" not in out
    assert main(["study", "--data-dir", data, "--patient-id", "MRN77"]) == 0
    assert f"study {STUDY}" in capsys.readouterr().out
    assert main(["study", "--data-dir", data, "--accession", "NOPE"]) == 1
    assert "the node holds no study with that accession_number" in capsys.readouterr().err
    assert main(["study", "--data-dir", data, "--study", ""]) == 1  # review 44: a traceback
    assert "the node holds no study with that study_instance_uid" in capsys.readouterr().err


def test_a_delivering_job_says_what_it_waits_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Probe 41: a job stuck in delivering while the PACS was down showed no reason in `uronode jobs`."""
    store = Store(tmp_path / "data", fsync=False)
    outbox = Outbox(store)
    with store.transaction() as conn:
        job = JobQueue(store).enqueue_in(conn, STUDY, uid("cli-study", "ct"), 1, "default")
        outbox.enqueue_in(conn, destination="pacs", sop_instance_uid="9.9", sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                          path=tmp_path / "x.dcm", job_id=job)
        conn.execute("UPDATE jobs SET state = 'delivering' WHERE id = ?", (job,))
    (item,) = outbox.due()["pacs"]
    outbox.mark_failed(item.id, "cannot connect to PACS at pacs:104")
    assert main(["jobs", "--data-dir", str(tmp_path / "data")]) == 0
    assert "waiting for pacs (1, tried 1 times: cannot connect to PACS at pacs:104)" in capsys.readouterr().out
