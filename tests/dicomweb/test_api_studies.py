"""``GET /api/studies``: what the node did with each series of a study, over HTTP (probe 47: a skipped scout,
reformat or contrast phase was in no answer of the API, only in ``uronode study`` on the node's shell)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from dicomweb.app import create_app
from tests.uronode.test_cli_study import STUDY, a_study
from uronode.settings import Settings


def test_a_study_lists_each_series_what_became_of_it_and_its_jobs(tmp_path: Path) -> None:
    job = a_study(tmp_path)
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
