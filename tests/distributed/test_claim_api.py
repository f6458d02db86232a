"""The claim API over HTTP against a real node and Redis, no model: tokens, 409s, the message on the queue."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from dicomweb.node_client import NodeClient
from tests.conftest import query
from tests.distributed.conftest import Cluster, claim_key_of
from tests.factory import write_series
from tests.peers.processes import Node, storescu, wait_until
from uronode import __version__
from uronode.app.remote import Heartbeat
from uronode.broker import QUEUE_NAME
from uronode.types import DocumentReference


def rows(data: Path) -> list[dict]:
    return [dict(r) for r in query(data, "SELECT * FROM jobs")]


def stow_body(paths: list[Path]) -> tuple[bytes, dict[str, str]]:
    boundary = secrets.token_hex(8)
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
                    for p in paths) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}


def test_claims_need_a_worker_token_and_a_job_is_held_by_one_live_claim_until_done(cluster: Cluster) -> None:
    w1 = cluster.token("w1").read_text().strip()
    w2 = cluster.token("w2").read_text().strip()
    cluster.extra_env = {"URONODE_QUEUE__CLAIM_TIMEOUT_S": "600"}  # one message, however slow the machine
    node = cluster.start_node(cluster.tmp / "node", **cluster.env(), URONODE_DICOMWEB__AUTH="basic")
    cluster.node = node
    base = f"http://127.0.0.1:{node.http_port}"
    password = (node.data_dir / "http-password").read_text().strip()
    study, series, files = write_series(cluster.tmp / "ct", 4, size=64)
    assert storescu(node.dicom_port, files).returncode == 0
    wait_until(lambda: [r["dispatched_at"] is not None for r in query(node.data_dir, "SELECT dispatched_at FROM jobs")]
               == [True], 30, "the job to be published")
    ((job_id, generation),) = [(r["id"], r["series_generation"]) for r in query(node.data_dir, "SELECT * FROM jobs")]

    # The message on the queue: the job's coordinates and the node's address, no patient data.
    (raw,) = cluster.redis.cli("HVALS", f"uronode:{QUEUE_NAME}.msgs").splitlines()
    message = json.loads(raw)
    assert message["kwargs"] == {"job_id": job_id, "generation": generation, "study_instance_uid": study,
                                 "series_instance_uid": series, "model": "default",
                                 "node": f"http://127.0.0.1:{node.http_port}",
                                 "key": claim_key_of(node.data_dir, job_id, generation)}
    key = message["kwargs"]["key"]  # what the broker gives a worker: the claim gives it back
    assert "SYN0001" not in raw and "Synthetic" not in raw

    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    claim_url = f"{base}/api/queue/jobs/{job_id}/claim"
    before = rows(node.data_dir)
    for headers in ({}, auth("not-a-worker"), auth(w1 + "x")):
        refused = httpx.post(claim_url, json={"generation": generation, "key": key}, headers=headers)
        assert refused.status_code == 401, refused.text
    assert httpx.post(claim_url, json={"generation": generation, "key": key}, auth=("uronode", password)).status_code \
        == 401
    assert rows(node.data_dir) == before  # nothing changed
    # A worker's token opens reading the series of a job it holds and storing results, nothing else: before
    # its claim, not even that series (tests/dicomweb/test_worker_scope.py covers the scope).
    assert httpx.get(f"{base}/dicom-web/studies/{study}/series/{series}", headers=auth(w1)).status_code == 403
    assert httpx.get(f"{base}/api/jobs", headers=auth(w1)).status_code == 401
    assert httpx.get(f"{base}/metrics", headers=auth(w1)).status_code == 401

    # A token alone claims nothing: without the message's key (job numbers are easy to guess: probe 20).
    for forged in ("0" * 32, claim_key_of(node.data_dir, job_id + 1, generation), key.upper()):
        guessed = httpx.post(claim_url, json={"generation": generation, "key": forged}, headers=auth(w1))
        assert guessed.status_code == 403 and "key" in guessed.json()["detail"], guessed.text
    assert rows(node.data_dir) == before
    stale = httpx.post(claim_url, headers=auth(w1),  # an old message: its own generation's key
                       json={"generation": generation + 1, "key": claim_key_of(node.data_dir, job_id, generation + 1)})
    assert stale.status_code == 409 and "generation" in stale.json()["detail"]
    claimed = httpx.post(claim_url, json={"generation": generation, "key": key}, headers=auth(w1))
    assert claimed.status_code == 200, claimed.text
    claim = claimed.json()["claim"]
    assert claimed.json()["job"]["series_instance_uid"] == series
    # The claim API's requests are audited as every other path's: who asked, and why a refusal (probe 20).
    events = [e for e in map(json.loads, (node.data_dir / "audit.log").read_text().splitlines())
              if e["event"] == "http" and e["path"] == f"/api/queue/jobs/{job_id}/claim"]
    refusals = [e for e in events if e["status"] == 401]
    assert len(refusals) == 4 and all(e["auth"] == "failed" and e["reason"].startswith("authentication failed: ")
                                      for e in refusals), refusals
    assert {e["reason"] for e in refusals} >= {"authentication failed: no credentials",
                                               "authentication failed: unknown or revoked worker token"}
    assert [e["reason"].startswith("refused: worker w1: the claim's key") for e in events if e["status"] == 403] \
        == [True] * 3
    assert [(e["auth"], e["user"]) for e in events if e["status"] == 200] == [("worker", "w1")]
    said = (node.data_dir.parent / f"node-{node.data_dir.name}.log").read_text()
    assert "HTTP authentication failed from 127.0.0.1: POST /api/queue/jobs/" in said
    held = httpx.post(claim_url, json={"generation": generation, "key": key}, headers=auth(w2))
    assert held.status_code == 409 and "held by w1" in held.json()["detail"]
    assert httpx.post(f"{base}/api/queue/jobs/{job_id}/heartbeat", json={"claim": "other"},
                      headers=auth(w1)).status_code == 409
    assert httpx.post(f"{base}/api/queue/jobs/{job_id}/heartbeat", json={"claim": claim},
                      headers=auth(w1)).status_code == 200

    # A result stored by STOW-RS, twice: an identical instance again is a success, not a conflict.
    _, _, (result,) = write_series(cluster.tmp / "result", 1, study=study, size=16, manufacturer="uronode",
                                   modality="OT", sop_class=SecondaryCaptureImageStorage)
    body, headers = stow_body([result])
    for _ in range(2):
        stored = httpx.post(f"{base}/dicom-web/studies", content=body, headers={**headers, **auth(w1)})
        assert stored.status_code == 200, stored.text
    result_uid = stored.json()["00081199"]["Value"][0]["00081155"]["Value"][0]

    complete_url = f"{base}/api/queue/jobs/{job_id}/complete"
    done = {"claim": claim, "results": [result_uid], "findings": {"stones": []}, "seconds": 1.5}
    missing = httpx.post(complete_url, json={**done, "results": ["1.2.3.4"]}, headers=auth(w1))
    assert missing.status_code == 422
    _, _, (elsewhere,) = write_series(cluster.tmp / "other-study", 1, size=16, manufacturer="uronode", modality="OT",
                                   sop_class=SecondaryCaptureImageStorage)
    body, headers = stow_body([elsewhere])
    # the worker's own token cannot store into another study (403): stored by the node's user to test completion
    assert httpx.post(f"{base}/dicom-web/studies", content=body, headers={**headers, **auth(w1)}).status_code == 403
    stored = httpx.post(f"{base}/dicom-web/studies", content=body, headers=headers, auth=("uronode", password))
    assert stored.status_code == 200, stored.text
    other_uid = stored.json()["00081199"]["Value"][0]["00081155"]["Value"][0]
    foreign = httpx.post(complete_url, json={**done, "results": [other_uid]}, headers=auth(w1))
    assert foreign.status_code == 422 and "not in the job's study" in foreign.json()["detail"]
    assert httpx.post(complete_url, json={**done, "claim": "forged"}, headers=auth(w1)).status_code == 409
    assert httpx.post(complete_url, json=done, headers=auth(w2)).status_code == 409  # w2 has no claim
    completed = httpx.post(complete_url, json=done, headers=auth(w1))
    assert completed.status_code == 200 and completed.json() == {"state": "delivering"}
    (row,) = query(node.data_dir, "SELECT * FROM jobs")
    assert (row["state"], row["attempts"], row["claimed_by"], json.loads(row["findings"])) == (
        "delivering", 1, "w1", {"stones": []})
    owed = [(r["destination"], r["sop_instance_uid"]) for r in query(node.data_dir, "SELECT * FROM deliveries")]
    assert owed == [("pacs", result_uid)]
    # Done: a second completion, a late claim, changes nothing.
    after = rows(node.data_dir)
    assert httpx.post(complete_url, json=done, headers=auth(w1)).status_code == 409
    again = httpx.post(claim_url, json={"generation": generation, "key": key}, headers=auth(w2))
    assert again.status_code == 409 and "done" in again.json()["detail"]
    assert rows(node.data_dir) == after
    assert httpx.post(f"{base}/api/queue/jobs/999/claim", json={"generation": 1, "key": claim_key_of(node.data_dir, 999, 1)},
                      headers=auth(w1)).status_code == 404


def _one_worker_node(cluster: Cluster) -> tuple[Node, str, str, dict[str, str]]:
    """A node with basic auth and one worker token (w1), a published job waiting for its claim for 10 minutes:
    the node, the token, its HTTP base and the token's header."""
    w1 = cluster.token("w1").read_text().strip()
    cluster.extra_env = {"URONODE_QUEUE__CLAIM_TIMEOUT_S": "600"}
    node = cluster.start_node(cluster.tmp / "node", **cluster.env(), URONODE_DICOMWEB__AUTH="basic")
    cluster.node = node
    return node, w1, f"http://127.0.0.1:{node.http_port}", {"Authorization": f"Bearer {w1}"}


def test_a_claim_names_the_series_current_reports_for_the_worker_to_replace(cluster: Cluster) -> None:
    """A remote worker's report names the report it replaces (Predecessor Documents Sequence) as a local worker's
    does: the claim gives the series' current reports with the model of each; a first analysis gets none."""
    node, w1, base, headers = _one_worker_node(cluster)
    study, series, files = write_series(cluster.tmp / "ct", 4, size=64)

    assert storescu(node.dicom_port, files).returncode == 0
    wait_until(lambda: [r["dispatched_at"] is not None for r in rows(node.data_dir)] == [True], 30,
               "the job to be published")
    (job,) = rows(node.data_dir)
    claimed = httpx.post(f"{base}/api/queue/jobs/{job['id']}/claim", headers=headers,
                         json={"generation": job["series_generation"],
                               "key": claim_key_of(node.data_dir, job["id"], job["series_generation"])})
    assert claimed.status_code == 200, claimed.text
    first = {"id": job["id"], **claimed.json()}
    assert first["reports"] == []
    _, _, (report,) = write_series(cluster.tmp / "sr", 1, study=study, size=16, manufacturer="uronode",
                                   modality="SR", sop_class=ComprehensiveSRStorage)
    body, stow_headers = stow_body([report])
    stored = httpx.post(f"{base}/dicom-web/studies", content=body, headers={**stow_headers, **headers})
    assert stored.status_code == 200, stored.text
    report_uid = stored.json()["00081199"]["Value"][0]["00081155"]["Value"][0]
    findings = {"model": {"name": "uronode-stone-cascade", "version": "9.9.9"}, "stones": []}
    done = httpx.post(f"{base}/api/queue/jobs/{first['id']}/complete", headers=headers,
                      json={"claim": first["claim"], "results": [report_uid], "findings": findings, "seconds": 1.0})
    assert done.status_code == 200, done.text
    # a worker of another model version than the node's is said (probe 43: an earlier worker went unnoticed)
    from dicomweb.workers import node_model
    from uronode.settings import load_settings

    ours = node_model(load_settings())
    assert ours.startswith("uronode-stone-cascade ") and ours != "uronode-stone-cascade 9.9.9"
    proc = node.proc
    assert proc is not None
    wait_until(lambda: f"ran model uronode-stone-cascade 9.9.9, where this node's 'default' is {ours}"
               in proc.log_text(), 10, "the warning of a worker at another model version")

    changed = pydicom.dcmread(files[0])
    changed.SeriesDescription = "Abdomen non-contrast, corrected"  # other bytes: the series is analysed again
    changed.save_as(files[0])
    assert storescu(node.dicom_port, files[:1]).returncode == 0
    wait_until(lambda: any(r["state"] == "queued" and r["dispatched_at"] is not None for r in rows(node.data_dir)),
               30, "the second job to be published")
    (second,) = [r for r in rows(node.data_dir) if r["state"] == "queued"]
    reply = NodeClient(base, w1).claim(second["id"], second["series_generation"],  # as the worker reads it
                                       claim_key_of(node.data_dir, second["id"], second["series_generation"]))
    assert reply.reports == (("uronode-stone-cascade 9.9.9", DocumentReference(
        study, pydicom.dcmread(report).SeriesInstanceUID, ComprehensiveSRStorage, report_uid)),)

    # Holding the series' job, the worker may store its model's report again (a retry makes the same UIDs), but
    # not replace another analysis's: another model's report under that UID is refused (review 23).
    def variant(name: str, model: str, version: str) -> Path:
        ds = pydicom.dcmread(report)
        ds.ManufacturerModelName, ds.SoftwareVersions = model, [version, f"uronode {__version__}"]
        ds.SeriesDescription = f"{name} report"
        ds.save_as(cluster.tmp / f"{name}.dcm")
        return cluster.tmp / f"{name}.dcm"

    body, stow_headers = stow_body([variant("forged", "another-model", "1.0")])
    forged = httpx.post(f"{base}/dicom-web/studies", content=body, headers={**stow_headers, **headers})
    assert forged.status_code == 403 and "a result of another analysis" in forged.json()["detail"], forged.text
    body, stow_headers = stow_body([variant("again", "uronode-stone-cascade", "9.9.9")])
    again = httpx.post(f"{base}/dicom-web/studies", content=body, headers={**stow_headers, **headers})
    assert again.status_code == 200, again.text

    # The token revoked while the job runs: the heartbeat gives the claim up, no thread dies with a traceback.
    tokens = cluster.tmp / "worker-tokens"
    tokens.write_text("".join(line + "\n" for line in tokens.read_text().splitlines() if not line.startswith("w1 ")))
    crashed: list[threading.ExceptHookArgs] = []
    hook, threading.excepthook = threading.excepthook, crashed.append
    try:
        with Heartbeat(NodeClient(base, w1), second["id"], reply.token, lease_s=0.6) as beat:
            assert beat.lost.wait(10)
    finally:
        threading.excepthook = hook
    assert crashed == []


def _dispatched_at(node: Node) -> float | None:
    (row,) = query(node.data_dir, "SELECT dispatched_at FROM jobs")
    return row["dispatched_at"]


def test_a_redis_restarted_empty_has_the_waiting_job_published_again_at_once_not_after_its_backoff(
        cluster: Cluster) -> None:
    """The claim timeout is 600 s: only the node seeing that Redis lost its messages can publish the job again soon."""
    token = cluster.token("w1").read_text().strip()
    cluster.extra_env = {"URONODE_QUEUE__CLAIM_TIMEOUT_S": "600"}
    node = cluster.start()
    _, _, files = write_series(cluster.tmp / "ct", 4, size=64)
    assert storescu(node.dicom_port, files).returncode == 0
    msgs = f"uronode:{QUEUE_NAME}.msgs"
    # the node puts the message on Redis, then records it: wait for both (a loaded machine shows the gap)
    wait_until(lambda: cluster.redis.cli("HLEN", msgs) == "1" and _dispatched_at(node) is not None, 30,
               "the job to be published")
    ((job_id, generation, published),) = [(r["id"], r["series_generation"], r["dispatched_at"])
                                          for r in query(node.data_dir, "SELECT * FROM jobs")]
    # Unclaimed, it would be published again only after 600 s (and up to 64 times that after a backlog).
    assert cluster.counter("jobs_republished") == 0

    cluster.redis.restart()
    # Its message is gone with Redis; the node finds it out and publishes it again.
    wait_until(lambda: cluster.redis.cli("HLEN", msgs) == "1" and (_dispatched_at(node) or 0) > published, 30,
               "the job to be published again")
    (row,) = rows(node.data_dir)
    assert row["dispatched_at"] > published and row["publications"] == 1 and row["state"] == "queued"
    assert cluster.counter("jobs_republished") == 1
    (raw,) = cluster.redis.cli("HVALS", msgs).splitlines()
    assert json.loads(raw)["kwargs"]["job_id"] == job_id
    claimed = httpx.post(f"http://127.0.0.1:{node.http_port}/api/queue/jobs/{job_id}/claim",
                         json={"generation": generation, "key": json.loads(raw)["kwargs"]["key"]},
                         headers={"Authorization": f"Bearer {token}"})
    assert claimed.status_code == 200, claimed.text


def test_a_worker_that_cannot_work_says_why_at_start_and_exits(cluster: Cluster) -> None:
    """Probe 20: a worker with a token the node does not know, or a broker it cannot reach, said "taking jobs"
    and then held messages, logged errors for ever or stopped only at its first job."""
    node = cluster.start()
    base = f"http://127.0.0.1:{node.http_port}"
    assert httpx.get(f"{base}/api/queue/worker",
                     headers={"Authorization": f"Bearer {cluster.token('w1').read_text().strip()}"}).json() == {
        "worker": "w1"}
    bad = cluster.tmp / "bad.token"
    bad.write_text("not-a-token-the-node-knows\n")
    env = {**os.environ, **cluster.env()}

    def worker(token: Path, **changes: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "uronode", "worker", "--node", base, "--token-file", str(token)],
                              env={**env, **changes}, capture_output=True, text=True, timeout=120)

    refused = worker(bad)
    assert refused.returncode == 2 and "does not know this worker's token" in refused.stderr, refused.stderr[-2000:]
    unreachable = worker(cluster.token("w2"), URONODE_QUEUE__BROKER_URL="redis://127.0.0.1:9/0")
    assert unreachable.returncode == 2 and "the broker (queue.broker_url) cannot be reached" in unreachable.stderr, \
        unreachable.stderr[-2000:]
    assert "taking jobs" not in refused.stderr + unreachable.stderr


def test_no_job_is_handed_out_while_the_nodes_disk_is_over_its_watermark(cluster: Cluster) -> None:
    """Probe 24: on a full disk a worker ran the model and could not store its results, again and again (a remote
    worker's job then failed for good). A claim is refused, the job left queued and no try counted."""
    from tests.faults.checks import tmpfs
    from uronode.jobs import JobQueue
    from uronode.store import Store

    w1 = cluster.token("w1").read_text().strip()
    with tmpfs(cluster.tmp / "disk", "64m") as disk:
        store = Store(disk / "node")
        with store.transaction() as conn:
            job_id = JobQueue(store).enqueue_in(conn, "1.2.3", "1.2.3.4", 1, "default")
            conn.execute("UPDATE jobs SET publications = 5")  # refused often before: a long back-off
        (disk / "filler").write_bytes(bytes(8 << 20))  # an eighth of the disk: over a 1 % watermark
        node = cluster.start_node(disk / "node", **cluster.env(), URONODE_DICOMWEB__AUTH="basic",
                                  URONODE_STORAGE__MAX_DISK_USED_PERCENT="1")
        wait_until(lambda: rows(node.data_dir)[0]["dispatched_at"] is not None, 30, "the job to be published")
        refused = httpx.post(f"http://127.0.0.1:{node.http_port}/api/queue/jobs/{job_id}/claim",
                             headers={"Authorization": f"Bearer {w1}"},
                             json={"generation": 1, "key": claim_key_of(node.data_dir, job_id, 1)})
        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        assert detail.startswith(f"job {job_id} is not handed out while the node's disk ") and "watermark" in detail
        (row,) = rows(node.data_dir)
        assert (row["state"], row["attempts"], row["claimed_by"]) == ("queued", 0, None)
        assert row["publications"] == 1  # published again after claim_timeout_s, not after a growing back-off


def test_results_refused_for_the_nodes_disk_give_the_job_back_not_fail_it(cluster: Cluster) -> None:
    """Review 27: the disk filling while a remote worker ran a job made the node refuse its results (A700), and the
    worker failed the job for good; the node's own worker gives such a job back. The node's data folder is a
    tmpfs of the test's own, filled past the watermark once the job is claimed."""
    from tests.faults.checks import tmpfs

    w1 = cluster.token("w1").read_text().strip()
    with tmpfs(cluster.tmp / "disk", "64m") as disk:
        node = cluster.start_node(disk / "node", **cluster.env(), URONODE_STORAGE__MAX_DISK_USED_PERCENT="50")
        _, _, files = write_series(cluster.tmp / "ct", 4, size=64)
        assert storescu(node.dicom_port, files).returncode == 0
        wait_until(lambda: [r["dispatched_at"] is not None for r in rows(node.data_dir)] == [True], 30,
                   "the job to be published")
        (job,) = rows(node.data_dir)
        client = NodeClient(f"http://127.0.0.1:{node.http_port}", w1, patience_s=5)
        claim = client.claim(job["id"], job["series_generation"],
                             claim_key_of(node.data_dir, job["id"], job["series_generation"]))
        (disk / "filler").write_bytes(bytes(40 << 20))  # the disk fills while the job runs
        result = cluster.tmp / "result.dcm"
        ds = pydicom.dcmread(files[0])
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.SeriesInstanceUID, ds.Manufacturer = pydicom.uid.generate_uid(), "uronode"
        ds.save_as(result)
        (stored,) = client.store([(result, str(ds.SOPInstanceUID))])
        assert not stored.ok and stored.out_of_resources, stored
        client.give_back(claim.job_id, claim.token, f"results refused: {stored.reason}")
        (back,) = rows(node.data_dir)
        assert (back["state"], back["attempts"], back["claim_token"]) == ("queued", 0, None)
        # published again by the sweeper after claim_timeout_s, as an unclaimed message is, not at once (review 28)
        assert back["dispatched_at"] is not None and back["publications"] == 1
        assert back["reason"].startswith("results refused: ") and back["reason"].endswith("the try not counted")
        (disk / "filler").unlink()
        node.stop()


def test_a_claim_names_the_uids_its_results_must_not_take_and_a_completion_taking_one_is_refused(
        cluster: Cluster) -> None:
    """Review 35 #1: results made again under UIDs a rejection note named are hidden by an archive acting on
    IOCM. A local worker gives them other UIDs; a remote one learns from its claim which UIDs of the series were
    taken out (``rejected``), and a completion naming one (a worker of before 2026-12-07) is refused."""
    node, w1, base, headers = _one_worker_node(cluster)
    client = NodeClient(base, w1)
    study, _, files = write_series(cluster.tmp / "ct", 4, size=64)
    findings = {"model": {"name": "uronode-stone-cascade", "version": "9.9.9"}, "stones": []}

    def next_claim(description: str) -> tuple[int, str, frozenset[str]]:
        changed = pydicom.dcmread(files[0])
        changed.SeriesDescription = description  # other bytes: the series is analysed again
        changed.save_as(files[0])
        assert storescu(node.dicom_port, files).returncode == 0
        wait_until(lambda: any(r["state"] == "queued" and r["dispatched_at"] is not None
                               for r in rows(node.data_dir)), 30, "a job to be published")
        (job,) = [r for r in rows(node.data_dir) if r["state"] == "queued"]
        reply = client.claim(job["id"], job["series_generation"],
                             claim_key_of(node.data_dir, job["id"], job["series_generation"]))
        return job["id"], reply.token, reply.rejected

    def report(name: str) -> str:
        _, _, (path,) = write_series(cluster.tmp / name, 1, study=study, size=16, manufacturer="uronode",
                                     modality="SR", sop_class=ComprehensiveSRStorage)
        body, stow_headers = stow_body([path])
        stored = httpx.post(f"{base}/dicom-web/studies", content=body, headers={**stow_headers, **headers})
        assert stored.status_code == 200, stored.text
        return str(stored.json()["00081199"]["Value"][0]["00081155"]["Value"][0])

    def complete(job_id: int, token: str, uid: str) -> httpx.Response:
        return httpx.post(f"{base}/api/queue/jobs/{job_id}/complete", headers=headers,
                          json={"claim": token, "results": [uid], "findings": findings, "seconds": 1.0})

    job_id, token, rejected = next_claim("Abdomen")
    assert rejected == frozenset()
    first = report("sr1")
    assert complete(job_id, token, first).status_code == 200
    job_id, token, rejected = next_claim("Abdomen, corrected")
    assert rejected == frozenset()  # the first report is current until the second one replaces it
    assert complete(job_id, token, report("sr2")).status_code == 200  # the first report superseded: rejected
    job_id, token, rejected = next_claim("Abdomen")  # the correction undone: the first content again
    assert rejected == {first}
    # a worker of before 2026-12-07 makes it again under its old UID: refused as it stores it (review 36: it had
    # been stored and refused only at completion), with the reason it fails its job with
    (stored,) = client.store([(cluster.tmp / "sr1" / "0000.dcm", first)])
    assert not stored.ok and stored.reason is not None and "upgrade the worker" in stored.reason, stored
    assert not query(node.data_dir, "SELECT 1 FROM instances WHERE sop_instance_uid = ?", first)
    refused = complete(job_id, token, first)  # and a completion naming it (the node's check as it records)
    assert refused.status_code == 422, refused.text
    assert [r["state"] for r in rows(node.data_dir) if r["id"] == job_id] == ["running"]
