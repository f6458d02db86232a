"""A remote worker's token reads and stores only what its jobs hold, against a real node and Redis, no model.

The defect: a worker token opened every study (WADO-RS, QIDO-RS and STOW-RS of any patient), so a
compromised worker machine could read and write them all. Now it reads only the series of a job it holds
(running, claimed by it, its lease not over) and stores only into that job's study; anything else is a 403
that says why, in the audit log too.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from dicomweb.node_client import SERIES_ACCEPT, NodeClient
from tests.conftest import query
from tests.distributed.conftest import Cluster, claim_key_of, open_cluster
from tests.factory import write_series
from tests.peers.processes import Node, storescu, wait_until
from tests.peers.redis import Redis
from uronode.claims import holds, new_worker_token
from uronode.store import Store


@pytest.fixture
def cluster(start_node: Callable[..., Node], tmp_path: Path) -> Iterator[Cluster]:
    """The distributed tests' cluster with the node's authentication on (those tests run without)."""
    with open_cluster(start_node, tmp_path, {"URONODE_DICOMWEB__AUTH": "basic"}) as made:
        yield made


def stow_body(paths: list[Path]) -> tuple[bytes, dict[str, str]]:
    boundary = secrets.token_hex(8)
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
                    for p in paths) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}


def test_a_worker_token_reads_and_stores_only_what_its_jobs_hold(
    start_node: Callable[..., Node], redis: Redis, tmp_path: Path
) -> None:
    token = new_worker_token(tmp_path / "worker-tokens", "w1")
    node = start_node(
        tmp_path / "node", URONODE_DICOMWEB__AUTH="basic", URONODE_QUEUE__BACKEND="dramatiq",
        URONODE_QUEUE__BROKER_URL=redis.url, URONODE_QUEUE__WORKER_TOKENS_FILE=str(tmp_path / "worker-tokens"),
        URONODE_QUEUE__LEASE_S="600", URONODE_QUEUE__CLAIM_TIMEOUT_S="600",
    )
    base = f"http://127.0.0.1:{node.http_port}"
    admin = ("uronode", (node.data_dir / "http-password").read_text().strip())
    worker = {"Authorization": f"Bearer {token}"}
    # study A: the series of the worker's job (a1) and another (a2); study B: someone else's
    study_a, a1, a1_files = write_series(tmp_path / "a1", 4, size=64)
    _, a2, a2_files = write_series(tmp_path / "a2", 4, study=study_a, size=64)
    study_b, b1, b1_files = write_series(tmp_path / "b1", 4, size=64)
    assert storescu(node.dicom_port, [*a1_files, *a2_files, *b1_files]).returncode == 0
    wait_until(lambda: len(query(node.data_dir, "SELECT id FROM jobs WHERE dispatched_at IS NOT NULL")) == 3, 60,
               "the three jobs to be published")
    (job,) = query(node.data_dir, "SELECT * FROM jobs WHERE series_instance_uid = ?", a1)
    series_url = f"{base}/dicom-web/studies/{study_a}/series/{a1}"

    def refused(response: httpx.Response, reason: str) -> None:
        assert response.status_code == 403, (response.request.url, response.status_code, response.text[:300])
        assert response.json()["detail"] == reason

    # Before it claims the job, the worker reads nothing of it.
    refused(httpx.get(series_url, headers=worker), f"worker w1 holds no job in study {study_a}")

    claimed = httpx.post(f"{base}/api/queue/jobs/{job['id']}/claim", headers=worker,
                         json={"generation": job["series_generation"],
                               "key": claim_key_of(node.data_dir, job["id"], job["series_generation"])})
    assert claimed.status_code == 200, claimed.text
    claim = claimed.json()["claim"]

    # The job's series: as the worker fetches it, its metadata, its instances, with doubled slashes too.
    client = NodeClient(base, token, patience_s=5)
    assert len(client.retrieve_series(study_a, a1, tmp_path / "fetched")) == 4
    for path in (f"/dicom-web/studies/{study_a}/series/{a1}/metadata",
                 f"/dicom-web/studies/{study_a}/series/{a1}/instances",
                 f"//dicom-web//studies/{study_a}//series/{a1}/metadata/"):
        assert httpx.get(base + path, headers=worker).status_code == 200, path
    assert httpx.get(series_url, headers={**worker, "Accept": SERIES_ACCEPT}).status_code == 200
    assert httpx.head(series_url, headers={**worker, "Accept": SERIES_ACCEPT}).status_code == 200

    # Anything else: another study, another series of the same study, whole studies, searches.
    other_study = f"worker w1 holds no job in study {study_b}"
    for path in (f"/dicom-web/studies/{study_b}/series/{b1}",
                 f"//dicom-web/studies/{study_b}//series/{b1}/",
                 f"/dicom-web/studies/{study_b}/series/{b1}/metadata",
                 f"/dicom-web/studies/{study_b}/series/{b1}/instances",
                 f"/dicom-web/studies/{study_b}/series",
                 f"/dicom-web/studies/{study_b}/thumbnail",
                 f"/dicom-web/studies/{study_b}"):
        refused(httpx.get(base + path, headers=worker), other_study)
    assert httpx.head(f"{base}/dicom-web/studies/{study_b}/series/{b1}", headers=worker).status_code == 403
    refused(httpx.get(f"{base}/dicom-web/studies/{study_a}/series/{a2}", headers=worker),
            f"worker w1 holds no job on series {a2} of study {study_a}")
    for path in (f"/dicom-web/studies/{study_a}", f"/dicom-web/studies/{study_a}/metadata",
                 f"/dicom-web/studies/{study_a}/series", "/dicom-web/studies",
                 f"/dicom-web/studies?StudyInstanceUID={study_b}", "/dicom-web/series", "/dicom-web/instances"):
        response = httpx.get(base + path, headers=worker)
        refused(response, f"worker w1 may read only the series of the jobs it holds, not {response.request.url.path}")
    assert httpx.get(f"{base}/dicom-web/studies/{study_b}/series/{b1}", auth=admin).status_code == 200  # still there

    # Storing: into the job's study, with or without the study in the path; elsewhere, nothing is stored.
    _, _, (result,) = write_series(tmp_path / "result", 1, study=study_a, size=16, manufacturer="uronode",
                                   modality="OT", sop_class=SecondaryCaptureImageStorage)
    result_uid = str(pydicom.dcmread(result, stop_before_pixels=True).SOPInstanceUID)
    (stored,) = client.store([(result, result_uid)])
    assert stored.ok, stored.reason
    body, headers = stow_body([result])
    assert httpx.post(f"{base}/dicom-web/studies/{study_a}", content=body, headers={**headers, **worker}).status_code \
        == 200
    _, _, (forged,) = write_series(tmp_path / "forged", 1, study=study_b, size=16, manufacturer="uronode",
                                   modality="OT", sop_class=SecondaryCaptureImageStorage)
    _, _, (stray,) = write_series(tmp_path / "stray", 1, size=16, manufacturer="uronode", modality="OT",
                                  sop_class=SecondaryCaptureImageStorage)
    instances_before = query(node.data_dir, "SELECT sop_instance_uid FROM instances ORDER BY sop_instance_uid")
    body, headers = stow_body([forged])
    refused(httpx.post(f"{base}/dicom-web/studies/{study_b}", content=body, headers={**headers, **worker}),
            other_study)
    refused(httpx.post(f"{base}//dicom-web//studies/{study_b}/", content=body, headers={**headers, **worker}),
            other_study)
    refused(httpx.post(f"{base}/dicom-web/studies", content=body, headers={**headers, **worker}), other_study)
    body, headers = stow_body([result, forged])
    refused(httpx.post(f"{base}/dicom-web/studies", content=body, headers={**headers, **worker}),
            "worker w1: its parts name 2 studies; a worker stores into one study at a time")
    body, headers = stow_body([stray])  # a study the node does not know
    response = httpx.post(f"{base}/dicom-web/studies", content=body, headers={**headers, **worker})
    assert response.status_code == 403 and response.json()["detail"].startswith("worker w1 holds no job in study ")
    # A body the part of which names the held study in the path but another in the data set: refused per part.
    body, headers = stow_body([forged])
    kept_out = httpx.post(f"{base}/dicom-web/studies/{study_a}", content=body, headers={**headers, **worker})
    assert kept_out.status_code == 409, kept_out.text
    assert query(node.data_dir, "SELECT sop_instance_uid FROM instances ORDER BY sop_instance_uid") \
        == instances_before
    # Only the node's results, into the held study too (probe 20: a worker's token replaced a source CT's pixels
    # and added a series that the node then analysed and reported to the PACS).
    source = pydicom.dcmread(a1_files[0])
    source_uid = str(source.SOPInstanceUID)
    (kept,) = query(node.data_dir, "SELECT path FROM instances WHERE sop_instance_uid = ?", source_uid)
    source_bytes = Path(kept["path"]).read_bytes()
    tampered = tmp_path / "tampered.dcm"
    source.Manufacturer = "uronode"
    source.SOPClassUID = source.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    source.save_as(tampered)
    joined = tmp_path / "joined.dcm"
    source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    source.save_as(joined)
    _, _, (ct_class,) = write_series(tmp_path / "ct-class", 1, study=study_a, size=16, manufacturer="uronode")
    _, _, (injected,) = write_series(tmp_path / "injected", 1, study=study_a, size=16)
    for sent, why in ((a1_files[0], "is not made by uronode (Manufacturer 'TESTSCANNER')"),
                      (injected, "is not made by uronode (Manufacturer 'TESTSCANNER')"),
                      (ct_class, "is of SOP class 1.2.840.10008.5.1.4.1.1.2, which is no result's"),
                      (tampered, "would replace a received instance"),
                      (joined, "is in a series of received images")):
        sent_uid = str(pydicom.dcmread(sent, stop_before_pixels=True).SOPInstanceUID)
        body, headers = stow_body([result, sent])
        for url in (f"{base}/dicom-web/studies", f"{base}/dicom-web/studies/{study_a}"):
            response = httpx.post(url, content=body, headers={**headers, **worker})
            assert response.status_code == 403, (sent.name, response.text[:300])
            assert response.json()["detail"].startswith(f"worker w1: part 2 ({sent_uid}) {why}"), response.text[:300]
    assert query(node.data_dir, "SELECT sop_instance_uid FROM instances ORDER BY sop_instance_uid") \
        == instances_before
    assert Path(kept["path"]).read_bytes() == source_bytes  # the received CT, untouched
    # A completion naming received images as its results is refused: they would be delivered as results, and
    # superseded (deleted here, rejected at the PACS) by the series' next analysis.
    model = {"model": {"name": "uronode-stone-cascade", "version": "3.8.0"}, "stones": []}
    wrong = httpx.post(f"{base}/api/queue/jobs/{job['id']}/complete", headers=worker,
                       json={"claim": claim, "results": [source_uid], "findings": model, "seconds": 1})
    assert wrong.status_code == 422 and "is a received instance" in wrong.json()["detail"], wrong.text

    # Each refusal is audited with who asked and why.
    events = [e for e in map(json.loads, (node.data_dir / "audit.log").read_text().splitlines())
              if e["event"] == "http" and e["status"] == 403]
    assert events and all(e["auth"] == "worker" and e["user"] == "w1" and e["reason"].startswith("refused: ")
                          for e in events)
    assert any(e["path"] == f"/dicom-web/studies/{study_b}/series/{b1}" and other_study in e["reason"]
               for e in events)
    assert any(e["method"] == "POST" and e["path"] == "/dicom-web/studies" and other_study in e["reason"]
               for e in events)
    # and warned of as a refusal, not as a failed authentication (the worker was who it said)
    said = (node.data_dir.parent / f"node-{node.data_dir.name}.log").read_text()
    assert "HTTP request refused from 127.0.0.1: GET /dicom-web/studies/" in said
    assert "HTTP authentication failed" not in said

    # Done: the series is closed to the worker again.
    completed = httpx.post(f"{base}/api/queue/jobs/{job['id']}/complete", headers=worker,
                           json={"claim": claim, "results": [result_uid], "findings": {"stones": []}, "seconds": 1})
    assert completed.status_code == 200, completed.text
    refused(httpx.get(series_url, headers=worker), f"worker w1 holds no job in study {study_a}")
    body, headers = stow_body([result])
    refused(httpx.post(f"{base}/dicom-web/studies", content=body, headers={**headers, **worker}),
            "worker w1 holds no job")


def test_holds_only_a_running_claim_of_that_worker_within_its_lease(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    now = time.time()
    rows = [  # (study, series, state, claimed_by, lease_until)
        ("1.1", "1.1.1", "running", "w1", now + 60),
        ("1.1", "1.1.2", "running", "w1", now - 1),  # lease over
        ("1.2", "1.2.1", "running", "w2", now + 60),  # another worker's
        ("1.3", "1.3.1", "delivered", "w1", None),  # done
        ("1.4", "1.4.1", "running", "local", None),  # the node's own worker
    ]
    conn = sqlite3.connect(store.db_path)
    with conn:
        conn.executemany(
            "INSERT INTO jobs (study_instance_uid, series_instance_uid, series_generation, model, state, created_at,"
            " updated_at, claimed_by, lease_until) VALUES (?, ?, 1, 'default', ?, ?, ?, ?, ?)",
            [(study, series, state, now, now, worker, lease) for study, series, state, worker, lease in rows],
        )
    conn.close()
    assert holds(store, "w1", "1.1", "1.1.1", now=now)
    assert holds(store, "w1", "1.1", now=now) and holds(store, "w1", now=now)
    assert not holds(store, "w1", "1.1", "1.1.2", now=now)
    assert not holds(store, "w1", "1.1", "1.1.1", now=now + 61)  # once the lease is over
    assert not holds(store, "w1", "1.2", now=now)
    assert not holds(store, "w1", "1.3", now=now)
    assert not holds(store, "local", "1.4", now=now)
    assert not holds(store, "w3", now=now)


def test_a_remote_worker_runs_its_jobs_on_a_node_with_authentication_and_then_reads_them_no_more(
    cluster: Cluster,
) -> None:
    node = cluster.start()
    cluster.add_worker("w1")
    cluster.wait_workers_ready()
    series = cluster.send_series(2)
    cluster.wait_delivered(2)
    cluster.assert_each_result_received_once()
    events = [e for e in map(json.loads, (node.data_dir / "audit.log").read_text().splitlines())
              if e["event"] == "http" and e.get("user") == "w1"]
    fetched = {e["path"].rsplit("/", 1)[-1] for e in events if e["method"] == "GET" and e["status"] == 200
               and e["path"].startswith("/dicom-web/")}
    assert [e["path"] for e in events if e["path"] == "/api/queue/worker"] == ["/api/queue/worker"]  # its start
    assert fetched == set(series)  # each job's series, through the worker's token
    assert [e["status"] for e in events if e["method"] == "POST" and e["path"].startswith("/dicom-web/")] == [
        200, 200]  # its results, one STOW each
    # its claims and completions, audited with its name
    assert [e["path"].rsplit("/", 1)[-1] for e in events if e["path"].startswith("/api/queue/")
            and not e["path"].endswith(("/heartbeat", "/worker"))] == ["claim", "complete"] * 2
    token = (cluster.tmp / "w1.token").read_text().strip()
    for job in query(node.data_dir, "SELECT * FROM jobs"):
        done = httpx.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{job['study_instance_uid']}/series/"
                         f"{job['series_instance_uid']}", headers={"Authorization": f"Bearer {token}"})
        assert done.status_code == 403, done.text
        assert done.json()["detail"] == f"worker w1 holds no job in study {job['study_instance_uid']}"
