"""A lease that runs out counts as one of the job's tries, as a local worker's death does: a series that kills
every remote worker taking it (out of memory) fails with the reason instead of going round for ever.

Found by probing (probe 13, finding 4): the sweeper put every expired claim's job back in the queue with no
limit, and no command could fail it. The claims here are made over HTTP and never renewed nor completed, as a
worker killed while it runs the job leaves them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import query
from tests.distributed.conftest import LEASE_S, Cluster, claim_key_of
from tests.factory import write_series
from tests.peers.processes import storescu, wait_until
from tests.uronode.test_claims import one_job
from uronode.broker import QUEUE_NAME
from uronode.claims import ClaimConflict
from uronode.jobs import MAX_ATTEMPTS, JobQueue
from uronode.outbox import Outbox
from uronode.types import JobState

REASON = "its lease expired on 2 attempts: the worker holding it ({worker}) stopped answering (out of memory?)"


def counters(data: Path) -> dict[str, int]:
    return {r["name"]: int(r["value"]) for r in query(data, "SELECT name, value FROM counters")}


def audit(data: Path) -> list[dict]:
    path = data / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_job_whose_claims_never_answer_fails_once_its_tries_are_used_up(cluster: Cluster) -> None:
    """A real node and Redis, leases of 4 s: two claims that die (never renewed) and the job fails with the
    reason; the dead claim's late result changes nothing, and the job is not published again."""
    assert MAX_ATTEMPTS == 2
    tokens = {name: cluster.token(name).read_text().strip() for name in ("w1", "w2", "w3")}
    node = cluster.start()
    base = f"http://127.0.0.1:{node.http_port}/api/queue/jobs"
    _, _, files = write_series(cluster.tmp / "ct", 4, size=64)
    assert storescu(node.dicom_port, files).returncode == 0
    wait_until(lambda: [r["dispatched_at"] is not None for r in query(node.data_dir, "SELECT dispatched_at FROM jobs")]
               == [True], 30, "the job to be published")
    ((job_id, generation),) = [(r["id"], r["series_generation"]) for r in query(node.data_dir, "SELECT * FROM jobs")]

    def claim(worker: str) -> httpx.Response:
        return httpx.post(f"{base}/{job_id}/claim",
                          json={"generation": generation, "key": claim_key_of(node.data_dir, job_id, generation)},
                          headers={"Authorization": f"Bearer {tokens[worker]}"})

    def job() -> dict:
        (row,) = query(node.data_dir, "SELECT * FROM jobs WHERE id = ?", job_id)
        return dict(row)

    first = claim("w1")
    assert first.status_code == 200, first.text
    # the worker dies: the sweeper takes the job back after the lease and publishes it again, one try counted
    wait_until(lambda: job()["state"] == "queued" and job()["dispatched_at"] is not None, 4 * float(LEASE_S),
               "the job to be taken back and published again")
    assert (job()["attempts"], job()["reason"]) == (1, None)
    second = claim("w2")
    assert second.status_code == 200, second.text
    assert second.json()["job"]["attempts"] == 2
    # it dies too: that was the last try
    wait_until(lambda: job()["state"] != "running", 4 * float(LEASE_S), "the second lease to run out")
    failed = job()
    assert failed["state"] == "failed", failed
    assert failed["reason"] == REASON.format(worker="w2") + "; the series has 4 instances"
    assert (failed["attempts"], failed["claim_token"], failed["lease_until"]) == (2, None, None)
    assert counters(node.data_dir)["leases_expired"] == 2
    assert counters(node.data_dir)["jobs_republished"] == 1
    (finished,) = [e for e in audit(node.data_dir) if e["event"] == "job_finished"]
    assert (finished["job_id"], finished["state"], finished["worker"], finished["reason"]) == (
        job_id, "failed", "w2", failed["reason"])
    assert node.proc is not None and f"job {job_id} series" in node.proc.log_text()
    assert f"failed: {failed['reason']}" in node.proc.log_text()

    # the dead worker's late answers, and a message still on the broker, change nothing
    late = httpx.post(f"{base}/{job_id}/complete", json={"claim": second.json()["claim"], "results": [],
                                                        "findings": {"stones": []}, "seconds": 1.0},
                      headers={"Authorization": f"Bearer {tokens['w2']}"})
    assert late.status_code == 409, late.text
    assert httpx.post(f"{base}/{job_id}/heartbeat", json={"claim": second.json()["claim"]},
                      headers={"Authorization": f"Bearer {tokens['w2']}"}).status_code == 409
    again = claim("w3")
    assert again.status_code == 409 and again.json()["detail"] == f"job {job_id} is done (failed)"
    messages = cluster.redis.cli("HLEN", f"uronode:{QUEUE_NAME}.msgs")
    time.sleep(7)  # past the claim timeout (6 s): a job still to run would be published again by now
    assert cluster.redis.cli("HLEN", f"uronode:{QUEUE_NAME}.msgs") == messages
    assert job() == failed
    assert counters(node.data_dir)["completions_refused"] == 1


def test_a_claim_that_takes_over_an_expired_last_try_fails_the_job_instead(tmp_path: Path) -> None:
    """The sweeper had not come round: the claim finds the lease run out and counts it as the sweeper would."""
    store, claims, job = one_job(tmp_path)
    now = 10_000.0
    first = claims.claim(job.id, job.series_generation, "w1", now=now)
    second = claims.claim(job.id, job.series_generation, "w2", now=first.lease_until + 1)  # taken over: a try
    assert second.job.attempts == 2
    with pytest.raises(ClaimConflict, match=f"job {job.id} is done \\(failed\\)"):
        claims.claim(job.id, job.series_generation, "w3", now=second.lease_until + 1)
    failed = JobQueue(store).get(job.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.reason == REASON.format(worker="w2") + "; the series has 1 instances"
    assert claims.to_publish() == []
    with pytest.raises(ClaimConflict, match="no longer holds it"):  # the late result of the dead claim
        claims.complete(job.id, second.token, "w2", results=[], findings="{}", seconds=None, destinations=[],
                        outbox=Outbox(store), now=second.lease_until + 2)


def test_a_late_result_before_the_sweep_is_refused_and_the_try_still_counts(tmp_path: Path) -> None:
    """A result sent after the lease ran out, before the sweeper came round, is refused as it always was; the
    sweeper then counts the try and, on the last one, fails the job."""
    store, claims, job = one_job(tmp_path)
    now = 10_000.0
    first = claims.claim(job.id, job.series_generation, "w1", now=now)
    assert claims.sweep(now=first.lease_until + 1) == (1, 0)  # published again, one try counted
    (due,) = claims.to_publish()
    second = claims.claim(due.id, due.series_generation, "w2", now=first.lease_until + 2)
    with pytest.raises(ClaimConflict, match="lease ran out"):
        claims.complete(job.id, second.token, "w2", results=[], findings="{}", seconds=None, destinations=[],
                        outbox=Outbox(store), now=second.lease_until + 1)
    assert claims.sweep(now=second.lease_until + 1) == (0, 0)  # failed, not published again
    failed = JobQueue(store).get(job.id)
    assert failed is not None and failed.state is JobState.FAILED and failed.attempts == 2
    assert claims.to_publish() == [] and claims.sweep(now=second.lease_until + 100) == (0, 0)
    # uronode requeue gives it one more try, as it gives a job its local workers died on
    JobQueue(store).requeue(job.id)
    (due,) = claims.to_publish()
    third = claims.claim(due.id, due.series_generation, "w3", now=second.lease_until + 200)
    claims.complete(job.id, third.token, "w3", results=[], findings="{}", seconds=None, destinations=[],
                    outbox=Outbox(store), now=second.lease_until + 201)
    done = JobQueue(store).get(job.id)
    assert done is not None and done.state is JobState.DELIVERED
