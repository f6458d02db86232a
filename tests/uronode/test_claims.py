"""Remote workers' claims on the job queue, on a real SQLite database; the job message; worker tokens."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.uid import ComprehensiveSRStorage

from tests.uronode.test_store import encoded, put
from uronode.broker import JobMessage, MalformedMessage
from uronode.claims import (
    ClaimConflict,
    Claims,
    ResultsMissing,
    WorkerTokens,
    hash_token,
    new_worker_token,
)
from uronode.completion import CompletionMonitor
from uronode.header import read_header
from uronode.jobs import JobQueue
from uronode.outbox import Outbox
from uronode.store import Store, StoreOutcome
from uronode.types import Job, JobState


def one_job(tmp_path: Path) -> tuple[Store, Claims, Job]:
    store = Store(tmp_path / "data")
    put(store, encoded(0, series="1.2.3.4"))
    CompletionMonitor(store, JobQueue(store), grace_s=0, quiet_s=0, model="m").complete_now(["1.2.3.4"])
    claims = Claims(store, lease_s=5, claim_timeout_s=20)
    (job,) = claims.to_publish()
    return store, claims, job


def test_a_node_restart_keeps_remote_claims_and_requeues_its_own_workers_jobs(tmp_path: Path) -> None:
    store, claims, job = one_job(tmp_path)
    claims.claim(job.id, job.series_generation, "w1")
    assert JobQueue(store).recover() == 0
    held = JobQueue(store).get(job.id)
    assert held is not None and held.state is JobState.RUNNING
    put(store, encoded(1, series="1.2.3.9"))
    CompletionMonitor(store, JobQueue(store), grace_s=0, quiet_s=0, model="m").complete_now(["1.2.3.9"])
    local = JobQueue(store).claim()
    assert local is not None and local.claimed_by == "local"
    assert JobQueue(store).recover() == 1  # the node's own worker's job, not the remote claim
    again = JobQueue(store).claim()
    assert again is not None and again.id == local.id
    with pytest.raises(ClaimConflict, match="node's own worker"):
        claims.claim(local.id, local.series_generation, "w2")


def test_an_expired_claim_is_taken_over_and_then_neither_renews_nor_completes(tmp_path: Path) -> None:
    store, claims, job = one_job(tmp_path)
    old = claims.claim(job.id, job.series_generation, "w1", now=time.time() - 60)
    new = claims.claim(job.id, job.series_generation, "w2")  # the sweeper had not come round: taken over
    assert new.job.attempts == 2
    with pytest.raises(ClaimConflict):
        claims.heartbeat(job.id, old.token, "w1")
    with pytest.raises(ClaimConflict):
        claims.fail(job.id, old.token, "w1", "too late")
    assert claims.heartbeat(job.id, new.token, "w2") > time.time()
    with pytest.raises(ClaimConflict, match="lease ran out"):
        claims.heartbeat(job.id, new.token, "w2", now=time.time() + 60)


def test_a_completion_naming_a_rejected_uid_is_refused(tmp_path: Path) -> None:
    """Review 35 #1: a worker of before 2026-12-07 makes results again under UIDs a rejection note named (its
    STOW-RS is refused now too); a completion naming one is refused, the job left as it was."""
    store, claims, job = one_job(tmp_path)
    claim = claims.claim(job.id, job.series_generation, "w1")
    parts = encoded(0, series="1.2.3.4.901", sop_class=ComprehensiveSRStorage, manufacturer="uronode", modality="SR")
    assert put(store, parts) is StoreOutcome.STORED
    result = read_header(parts).sop_instance_uid
    store.conn().execute("INSERT INTO rejected (sop_instance_uid, source_series_uid, rejected_at) VALUES (?, ?, 0)",
                         (result, job.series_instance_uid))
    with pytest.raises(ResultsMissing, match="takes the UID of a result withdrawn or superseded earlier"):
        claims.complete(job.id, claim.token, "w1", results=[result], findings="{}", seconds=1.0, destinations=(),
                        outbox=Outbox(store))
    held = JobQueue(store).get(job.id)
    assert held is not None and held.state is JobState.RUNNING


def test_a_queued_job_brought_to_a_new_generation_is_published_again(tmp_path: Path) -> None:
    store, claims, job = one_job(tmp_path)
    claims.mark_published(job)
    assert claims.to_publish() == []
    with store.transaction() as conn:
        JobQueue(store).enqueue_in(conn, job.study_instance_uid, job.series_instance_uid, 2, "m")
    (again,) = claims.to_publish()
    assert (again.id, again.series_generation) == (job.id, 2)
    with pytest.raises(ClaimConflict, match="generation 2 of its series, not 1"):
        claims.claim(job.id, 1, "w1")


def test_a_job_message_holds_its_fields_and_nothing_else() -> None:
    fields = {"job_id": 3, "generation": 1, "study_instance_uid": "1.2", "series_instance_uid": "1.2.3",
              "model": "default", "node": "http://node:8080", "key": "0f" * 16}
    assert JobMessage.parse(fields) == JobMessage(3, 1, "1.2", "1.2.3", "default", "http://node:8080", "0f" * 16)
    for bad in ({**fields, "job_id": "3"}, {**fields, "generation": 0}, {**fields, "model": ""},
                {**fields, "patient_name": "X"}, {k: v for k, v in fields.items() if k != "node"},
                {k: v for k, v in fields.items() if k != "key"}, {**fields, "key": ""},
                {**fields, "job_id": True}):
        with pytest.raises(MalformedMessage):
            JobMessage.parse(bad)


def test_worker_tokens_are_kept_as_hashes_and_read_again_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "worker-tokens"
    tokens = WorkerTokens(path)
    assert tokens.worker("anything") is None  # no file: no worker
    first = new_worker_token(path, "gpu-1")
    assert first not in path.read_text() and hash_token(first) in path.read_text()
    assert tokens.worker(first) == "gpu-1"
    second = new_worker_token(path, "gpu-2")
    assert tokens.worker(second) == "gpu-2"
    path.write_text(f"# rotated\ngpu-2 {hash_token(second)}\n")
    assert tokens.worker(first) is None and tokens.worker(second) == "gpu-2"
    with pytest.raises(ValueError, match="no spaces"):
        new_worker_token(path, "gpu 3")


def test_a_job_waiting_for_a_worker_is_published_again_less_and_less_often(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, claims, job = one_job(tmp_path)
    now = 10_000.0
    waits = []
    for _ in range(4):
        (due,) = claims.to_publish()
        claims.mark_published(due, now=now)
        published_at = now
        while claims.sweep(now=now) == (0, 0):
            now += 1
        waits.append(now - published_at)
    assert waits == [21, 41, 81, 161]  # claim_timeout_s 20, doubling; a claim starts over
    (due,) = claims.to_publish()
    claimed = claims.claim(due.id, due.series_generation, "w1", now=now)
    with caplog.at_level("WARNING"):
        assert claims.sweep(now=claimed.lease_until + 1) == (1, 0)
    assert f"job {due.id}: the lease of worker w1 ran out (attempt 1); it is published again" in caplog.text
    (due,) = claims.to_publish()
    claims.mark_published(due, now=now)
    assert claims.sweep(now=now + 21) == (0, 1)


def test_a_broker_that_lost_its_messages_has_every_unclaimed_job_published_again_its_backoff_over(
        tmp_path: Path) -> None:
    store, claims, job = one_job(tmp_path)
    for now in (10_000.0, 10_100.0, 10_300.0):  # published three times: the next wait is 80 s
        (due,) = claims.to_publish()
        claims.mark_published(due, now=now)
        claims.sweep(now=now + 81)
    (due,) = claims.to_publish()
    claims.mark_published(due, now=10_400.0)
    assert claims.to_publish() == [] and claims.sweep(now=10_401.0) == (0, 0)
    assert claims.broker_emptied() == 1
    (due,) = claims.to_publish()
    claims.mark_published(due, now=10_402.0)
    assert claims.sweep(now=10_402.0 + 21) == (0, 1)  # one claim timeout again, not 160 s
    claims.claim(due.id, due.series_generation, "w1", now=10_500.0)
    assert claims.broker_emptied() == 0  # a claimed job keeps its claim
    held = JobQueue(store).get(job.id)
    assert held is not None and held.state is JobState.RUNNING


def test_a_remote_workers_failure_says_first_that_the_series_changed_under_it(tmp_path: Path) -> None:
    """As the node's own worker says it (probe 32): a correction sent while a remote worker read the series made
    its failure read as a damaged file alone."""
    store, claims, job = one_job(tmp_path)
    claim = claims.claim(job.id, job.series_generation, "w1")
    put(store, encoded(1, series="1.2.3.4"))  # a late instance: the series re-opens, one generation on
    claims.fail(job.id, claim.token, "w1", "instance 1 cannot be read as DICOM")
    failed = JobQueue(store).get(job.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.reason == ("the series changed while it was read (images replaced or added after it had "
                             "completed): the changed series is analysed by a job of its own once it completes "
                             "again (instance 1 cannot be read as DICOM)")


def test_a_remote_workers_failure_of_an_unchanged_series_is_its_reason(tmp_path: Path) -> None:
    store, claims, job = one_job(tmp_path)
    claim = claims.claim(job.id, job.series_generation, "w1")
    claims.fail(job.id, claim.token, "w1", "the slices are not axial")
    failed = JobQueue(store).get(job.id)
    assert failed is not None and failed.reason == "the slices are not axial"
