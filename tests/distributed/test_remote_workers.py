"""Remote workers through Dramatiq on a real Redis: every job done and every result delivered once,
whatever happens to a worker, the broker or the node (issue: workers past one machine)."""

from __future__ import annotations

import json
import signal
import time

import dramatiq

from tests.conftest import query
from tests.distributed.conftest import Cluster, Worker
from tests.peers.processes import wait_until
from uronode.broker import ACTOR_NAME, DEAD_LETTERS_KEY, QUEUE_NAME, make_broker


def held_by(cluster: Cluster, name: str) -> list[dict]:
    return [j for j in cluster.jobs() if j["state"] == "running" and j["claimed_by"] == name]


def stop_one_holding_a_claim(cluster: Cluster, timeout: float = 120) -> tuple[Worker, dict]:
    """SIGSTOP the first worker seen holding a claim (in the middle of a job); returns it and that job."""
    found: list[tuple[Worker, dict]] = []

    def caught() -> bool:
        for worker in cluster.workers:
            if not held_by(cluster, worker.name):
                continue
            worker.pause()
            time.sleep(0.5)  # a request it had sent (a completion) reaches the node meanwhile
            jobs = held_by(cluster, worker.name)  # still held once it is stopped: caught in the middle
            if jobs:
                found.append((worker, jobs[0]))
                return True
            worker.resume()
        return False

    wait_until(caught, timeout, "a worker to hold a claim", 0.01)
    return found[0]


def test_three_workers_share_nine_series_and_a_killed_worker_s_job_runs_again_elsewhere(cluster: Cluster) -> None:
    cluster.start()
    for name in ("w1", "w2", "w3"):
        cluster.add_worker(name)
    cluster.wait_workers_ready()
    cluster.send_series(9)
    killed, victim = stop_one_holding_a_claim(cluster)
    killed.proc.stop(signal.SIGKILL)  # kill -9 in the middle of the job
    cluster.wait_delivered(9)
    jobs = {j["id"]: j for j in cluster.jobs()}
    rerun = jobs[victim["id"]]
    assert rerun["attempts"] == 2 and rerun["claimed_by"] not in (None, killed.name), rerun
    assert all(j["attempts"] == 1 for i, j in jobs.items() if i != victim["id"]), jobs
    assert len({j["claimed_by"] for j in jobs.values()}) >= 2  # shared, not one worker doing it all
    cluster.assert_each_result_received_once()
    assert cluster.counter("leases_expired") >= 1
    # a remote worker's findings carry the report's image numbers, as a local worker's do (the upload page shows them)
    for row in query(cluster.data, "SELECT findings FROM jobs"):
        findings = json.loads(row["findings"])
        assert findings["image_numbering"] == "instance", findings
        assert all(len(s["image_numbers"]) == len(s["slice_indices"]) > 0 for s in findings["stones"]), findings


def test_a_worker_stopped_past_its_lease_is_refused_when_it_resumes_and_nothing_is_delivered_twice(
    cluster: Cluster,
) -> None:
    cluster.start()
    cluster.add_worker("w1")
    cluster.add_worker("w2")
    cluster.wait_workers_ready()
    cluster.send_series(3, seed=200)
    stopped, victim = stop_one_holding_a_claim(cluster)
    cluster.wait_delivered(3)  # the other worker took the job over once the lease ran out
    (job,) = [j for j in cluster.jobs() if j["id"] == victim["id"]]
    assert job["claimed_by"] != stopped.name and job["attempts"] == 2, job
    before = cluster.jobs()
    stopped.resume()
    wait_until(lambda: cluster.counter("completions_refused") == 1, 60, "the resumed worker's completion")
    # the worker logs the refusal after the node has counted it: wait for the line, do not race it
    wait_until(lambda: f"job {victim['id']}: the node refused the result" in stopped.proc.log_text(), 30,
               "the resumed worker's log of the refusal")
    assert cluster.jobs() == before  # the late completion changed nothing
    cluster.assert_each_result_received_once()


def test_a_malformed_message_is_a_dead_letter_and_a_redis_restarted_empty_loses_nothing(cluster: Cluster) -> None:
    cluster.start()
    (first,) = cluster.send_series(1, seed=300)
    wait_until(lambda: [r["dispatched_at"] is not None for r in query(cluster.data, "SELECT dispatched_at FROM jobs")]
               == [True], 30, "the job to be published")
    # The job's message is lost and a malformed one sits on the queue in its place.
    assert cluster.redis.cli("FLUSHALL") == "OK"
    broker = make_broker(cluster.redis.url)
    try:
        broker.enqueue(dramatiq.Message(queue_name=QUEUE_NAME, actor_name=ACTOR_NAME, args=(),
                                        kwargs={"job_id": "one", "series": first}, options={}))
    finally:
        broker.close()
    cluster.add_worker("w1")
    cluster.wait_workers_ready()
    cluster.wait_delivered(1)  # by the sweeper's next publish
    wait_until(lambda: cluster.redis.cli("ZCARD", DEAD_LETTERS_KEY) == "1", 30, "the malformed message's dead letter")
    wait_until(lambda: "MalformedMessage: a job message has the fields" in cluster.workers[0].proc.log_text(), 30,
               "the worker's log of the dead letter")
    assert cluster.counter("jobs_republished") >= 1

    # Redis restarts, empty (no persistence), while four more series are on their way.
    cluster.send_series(4, seed=310)
    wait_until(lambda: any(j["state"] == "running" for j in cluster.jobs()), 60, "the next job to be claimed")
    cluster.redis.restart()
    cluster.wait_delivered(5)
    assert all(j["attempts"] == 1 for j in cluster.jobs()), cluster.jobs()
    cluster.assert_each_result_received_once()

    # Its token revoked, the worker stops taking jobs; the job waits for another worker.
    (cluster.tmp / "worker-tokens").write_text("# w1 revoked\n")
    cluster.send_series(1, seed=320)
    assert cluster.workers[0].proc.popen.wait(60) == 0
    assert "the node refuses this worker's token" in cluster.workers[0].proc.log_text()
    assert [(j["state"], j["attempts"]) for j in cluster.jobs()][-1] == ("queued", 0)


def test_a_node_restarted_while_workers_hold_claims_resumes_and_runs_nothing_twice(cluster: Cluster) -> None:
    cluster.extra_env = {"URONODE_QUEUE__LEASE_S": "30"}  # the claims outlive the node's restart
    node = cluster.start()
    cluster.add_worker("w1")
    cluster.wait_workers_ready()
    cluster.send_series(3, seed=400)
    wait_until(lambda: any(j["state"] == "running" for j in cluster.jobs()), 60, "a worker to hold a claim")
    node.stop()
    held = {j["id"]: j["claimed_by"] for j in cluster.jobs() if j["state"] == "running"}
    assert held
    node.start()
    for job in cluster.jobs():  # still held by the same worker, or completed by it meanwhile
        if job["id"] in held:
            assert job["claimed_by"] == held[job["id"]] and job["state"] in ("running", "delivering", "delivered")
    cluster.wait_delivered(3)
    jobs = cluster.jobs()
    assert all(j["attempts"] == 1 for j in jobs), jobs
    assert {j["id"]: j["claimed_by"] for j in jobs if j["id"] in held} == held
    cluster.assert_each_result_received_once()
