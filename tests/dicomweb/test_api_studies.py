"""``GET /api/studies``: what the node did with each series of a study, over HTTP (probe 47: a skipped scout,
reformat or contrast phase was in no answer of the API, only in ``uronode study`` on the node's shell)."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from dicomweb.app import create_app
from tests.factory import uid
from tests.uronode.test_cli_study import STUDY, _send
from uronode.completion import CompletionMonitor
from uronode.jobs import JobQueue
from uronode.outbox import Outbox
from uronode.settings import Settings
from uronode.store import Store


def test_a_study_lists_each_series_what_became_of_it_and_its_jobs(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", fsync=False)
    analysed, scout = uid("api-study", "ct"), uid("api-study", "scout")
    _send(store, analysed, 3, SeriesNumber=3, SeriesDescription="KUB 1.25")
    _send(store, scout, 1, SeriesNumber=1, SeriesDescription="Topogram", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    CompletionMonitor(store, JobQueue(store), grace_s=0, quiet_s=0, model="default").complete_due(time.time() + 1)
    (job,) = JobQueue(store).for_series(analysed)
    with store.transaction() as conn:
        Outbox(store).enqueue_in(conn, destination="pacs", sop_instance_uid="9.9", sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                                 path=tmp_path / "x.dcm", job_id=job.id)
    with TestClient(create_app(Settings(storage={"data_dir": tmp_path / "data"}, dicomweb={"auth": "none"}))) as client:
        for query in ({"accession": "ACC1002"}, {"patient_id": "MRN77"}, {"study": STUDY}):
            answer = client.get("/api/studies", params=query)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["more"] is False and [s["study_instance_uid"] for s in body["studies"]] == [STUDY]
            series = {s["series_number"]: s for s in body["studies"][0]["series"]}
            assert series[1]["disposition"] == "skipped" and series[1]["reason"] == "localizer (scout) images"
            assert series[1]["jobs"] == [] and series[1]["instances"] == 1
            assert series[3]["disposition"] == "queued" and series[3]["series_description"] == "KUB 1.25"
            (listed,) = series[3]["jobs"]
            assert listed["id"] == job.id and listed["state"] == "queued"
            assert listed["results"] == [{"destination": "pacs", "state": "pending", "instances": 1}]
        nothing = client.get("/api/studies", params={"accession": "NOPE"})
        assert nothing.status_code == 200 and nothing.json() == {"studies": [], "more": False}
        unnamed = client.get("/api/studies")
        assert unnamed.status_code == 400 and "?accession=" in unnamed.json()["detail"]
