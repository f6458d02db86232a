from pathlib import Path

import pytest

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
