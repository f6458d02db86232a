from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import query
from tests.peers.processes import Node
from uronode.jobs import JobQueue
from uronode.store import Store
from uronode.types import JobState


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    return JobQueue(Store(tmp_path / "data"))


def enqueue(queue: JobQueue, series: str, generation: int = 1) -> int:
    with queue.store.transaction() as conn:
        return queue.enqueue_in(conn, "1.2.3", series, generation, "default")


def test_claim_takes_jobs_in_order_and_marks_them_running(queue: JobQueue) -> None:
    a, b = enqueue(queue, "1.1"), enqueue(queue, "1.2")
    first, second = queue.claim(), queue.claim()
    assert first is not None and second is not None
    assert (first.id, second.id) == (a, b)
    assert first.state is JobState.RUNNING and first.attempts == 1
    assert queue.claim() is None


def test_studies_of_today_and_yesterday_go_before_a_backlog_of_older_ones(queue: JobQueue) -> None:
    """Decided 2026-12-07: an emergency CT does not wait behind priors or an archive a PACS routes; among either
    kind, first in, first out; a study without a date counts as recent."""
    import datetime

    dates = {"9.1": "20240105", "9.2": "20240106", "9.3": "20261207", "9.4": None, "9.5": "2026.12.06",
             "9.6": "20261205", "9.7": "29991231"}  # (review 39: the legacy form; a wrong date in the future)
    with queue.store.transaction() as conn:
        for study, date in dates.items():
            conn.execute("INSERT INTO studies (study_instance_uid, study_date, updated_at) VALUES (?, ?, 0)",
                         (study, date))
        ids = {study: queue.enqueue_in(conn, study, f"{study}.1", 1, "default") for study in dates}
    order = []
    while (job := queue.claim(today=datetime.date(2026, 12, 7))) is not None:
        order.append(job.id)
    assert order == [ids[s] for s in ("9.3", "9.4", "9.5", "9.1", "9.2", "9.6", "9.7")]


def test_finish_records_the_outcome_and_a_failure_needs_a_reason(queue: JobQueue) -> None:
    job_id = enqueue(queue, "1.1")
    queue.claim()
    with pytest.raises(ValueError, match="needs its reason"):
        queue.finish(job_id, JobState.FAILED)
    queue.finish(job_id, JobState.FAILED, "volume rejected: tilted gantry")
    job = queue.get(job_id)
    assert job is not None and job.state is JobState.FAILED and job.reason == "volume rejected: tilted gantry"
    with pytest.raises(ValueError, match="not running"):
        queue.finish(job_id, JobState.DELIVERED)


def test_finish_refuses_non_final_states(queue: JobQueue) -> None:
    job_id = enqueue(queue, "1.1")
    queue.claim()
    with pytest.raises(ValueError, match="delivered or failed"):
        queue.finish(job_id, JobState.QUEUED)


def test_running_jobs_are_queued_again_after_a_restart(tmp_path: Path) -> None:
    queue = JobQueue(Store(tmp_path / "data"))
    job_id = enqueue(queue, "1.1")
    queue.claim()
    restarted = JobQueue(Store(tmp_path / "data"))
    assert restarted.recover() == 1
    job = restarted.claim()
    assert job is not None and job.id == job_id and job.attempts == 2


def test_requeue_sends_a_failed_job_again(queue: JobQueue) -> None:
    job_id = enqueue(queue, "1.1")
    queue.claim()
    queue.finish(job_id, JobState.FAILED, "destination down")
    queue.requeue(job_id)
    job = queue.get(job_id)
    assert job is not None and job.state is JobState.QUEUED and job.reason is None
    with pytest.raises(ValueError, match=f"^job {job_id} is queued; only a failed or delivered job can be queued again$"):
        queue.requeue(job_id)


def test_requeue_names_a_job_that_does_not_exist_and_the_state_of_one_that_is_not_done(queue: JobQueue) -> None:
    with pytest.raises(ValueError, match="^no job 999$"):
        queue.requeue(999)
    job_id = enqueue(queue, "1.1")
    queue.claim()
    with pytest.raises(ValueError, match=f"^job {job_id} is running;"):
        queue.requeue(job_id)
    job = queue.get(job_id)
    assert job is not None and job.state is JobState.RUNNING


def test_list_filters_by_state(queue: JobQueue) -> None:
    enqueue(queue, "1.1")
    enqueue(queue, "1.2")
    queue.claim()
    assert [j.series_instance_uid for j in queue.list(JobState.QUEUED)] == ["1.2"]
    assert [j.series_instance_uid for j in queue.list()] == ["1.2", "1.1"]


def test_queued_jobs_of_another_model_are_stamped_with_the_node_s_and_published_again(queue: JobQueue) -> None:
    """A model change leaves queued jobs stamped with the old one, which no remote worker runs any more."""
    with queue.store.transaction() as conn:
        old = [queue.enqueue_in(conn, "1.2.3", f"1.{n}", 1, "cascade-2.1.0") for n in range(2)]
        other = queue.enqueue_in(conn, "1.2.3", "1.9", 1, "experimental")
        current = queue.enqueue_in(conn, "1.2.3", "1.8", 1, "default")
        running = queue.enqueue_in(conn, "1.2.3", "1.7", 1, "cascade-2.1.0")
        conn.execute("UPDATE jobs SET state = 'running' WHERE id = ?", (running,))
        conn.execute("UPDATE jobs SET dispatched_at = 1.0, publications = 3")
    assert queue.restamp("default") == {"cascade-2.1.0": 2, "experimental": 1}
    with queue.store.transaction() as conn:
        rows = {r["id"]: r for r in conn.execute("SELECT id, model, dispatched_at, publications FROM jobs")}
    for job_id in (*old, other):
        assert (rows[job_id]["model"], rows[job_id]["dispatched_at"], rows[job_id]["publications"]) == (
            "default", None, 0)
    assert (rows[current]["model"], rows[current]["dispatched_at"]) == ("default", 1.0)  # left as it was
    assert rows[running]["model"] == "cascade-2.1.0"  # running: keeps the model it runs with
    assert queue.restamp("default") == {}


def test_a_node_started_with_another_model_restamps_what_was_queued_and_says_so(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    store = Store(tmp_path / "node")
    with store.transaction() as conn:
        job_id = JobQueue(store).enqueue_in(conn, "1.2.3", "1.2.3.4", 1, "cascade-2.1.0")
    node = start_node(tmp_path / "node", URONODE_INFERENCE__WORKERS="0")
    (row,) = query(node.data_dir, "SELECT model, state FROM jobs WHERE id = ?", job_id)
    assert (row["model"], row["state"]) == ("default", "queued")
    assert node.proc is not None
    assert "1 queued job(s) for model 'cascade-2.1.0' will run with this node's model 'default'" in node.proc.log_text()


def test_jobs_left_waiting_with_none_running_are_unattended(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    queue = JobQueue(store)
    with store.transaction() as conn:
        first = queue.enqueue_in(conn, "1.2.3", "1.2.3.4", 1, "default")
        queue.enqueue_in(conn, "1.2.3", "1.2.3.5", 1, "default")
    (row,) = query(store.root, "SELECT updated_at FROM jobs WHERE id = ?", first)
    queued_at = row["updated_at"]
    assert queue.unattended(60, now=queued_at + 30) == 0  # not yet long
    assert queue.unattended(60, now=queued_at + 61) == 2
    claimed = queue.claim()
    assert claimed is not None and claimed.id == first
    assert queue.unattended(60, now=queued_at + 61) == 0  # one runs: a backlog, not a fault
    queue.finish(first, JobState.DELIVERED)
    (done,) = query(store.root, "SELECT updated_at FROM jobs WHERE id = ?", first)
    # the moment between two jobs of a busy worker is not a fault either (review 27: /readyz flapped)
    assert queue.unattended(60, now=done["updated_at"] + 30) == 0
    assert queue.unattended(60, now=done["updated_at"] + 61) == 1


def test_ready_says_when_queued_jobs_wait_and_no_worker_takes_them(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    """Probe 20 #5: a node with no worker (or with only remote workers of another model) left its jobs queued
    for ever while /readyz said ready."""
    store = Store(tmp_path / "node")
    with store.transaction() as conn:
        JobQueue(store).enqueue_in(conn, "1.2.3", "1.2.3.4", 1, "default")
        conn.execute("UPDATE jobs SET updated_at = updated_at - 5")  # queued 5 s before the node starts
    node = start_node(tmp_path / "node", URONODE_INFERENCE__WORKERS="0", URONODE_QUEUE__CLAIM_TIMEOUT_S="2",
                      URONODE_DICOMWEB__AUTH="none")
    response = httpx.get(f"http://127.0.0.1:{node.http_port}/readyz", timeout=30)
    assert response.status_code == 503
    assert response.json()["detail"] == (
        "1 job(s) queued for more than 2 s and none running: no worker takes them (the node's workers "
        "(inference.workers))")
    with Store(tmp_path / "node").transaction() as conn:
        conn.execute("UPDATE jobs SET state = 'running'")  # a worker took it
    response = httpx.get(f"http://127.0.0.1:{node.http_port}/readyz", timeout=30)
    assert response.status_code == 200, response.text
