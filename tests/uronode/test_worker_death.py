"""A worker process that dies on a job: the job is taken back at once, queued again once, then failed
with the reason; other workers' jobs and remote claims are not touched; the node's start-up applies the
same rule.

The node tests run ``uronode serve`` with the shipped model and kill its worker process (SIGKILL, as
the kernel's OOM killer does) while it runs a real synthetic CT series, sent with DCMTK storescu; the
worker's pid is the one its claim names (``claimed_by`` ``local:<pid>``). The queue tests use a real
SQLite database.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.synth import generate_phantom, write_series
from tests.conftest import WITH_WORKER, query
from tests.peers.processes import Node, storescu, wait_until
from tests.uronode.test_metrics import samples
from tests.uronode.test_store import encoded, put
from uronode.app.node import exit_cause
from uronode.claims import Claims
from uronode.completion import CompletionMonitor
from uronode.jobs import JobQueue, local_worker
from uronode.store import Store
from uronode.types import JobState

SLICES = 100
"""Enough for the model to run a few seconds on the series: long enough to be killed in the middle."""


def ct_series(folder: Path, seed: int) -> Path:
    phantom = generate_phantom(seed, rows=512, slice_spacing=2.5, slices=SLICES, coverage=(0.62, 0.92), n_stones=1,
                               stone_sites=("kidney",))
    write_series(phantom, folder / f"series-{seed}")
    return folder / f"series-{seed}"


def jobs(data: Path) -> list[sqlite3.Row]:
    return query(data, "SELECT id, state, attempts, claimed_by, reason FROM jobs ORDER BY id")


def running(data: Path, job_id: int | None = None, attempts: int = 1) -> list[sqlite3.Row]:
    """The jobs (or job ``job_id``) running on their ``attempts``-th try."""
    return [j for j in jobs(data) if j["state"] == "running" and j["attempts"] == attempts
            and job_id in (None, j["id"])]


def worker_pid(job: sqlite3.Row) -> int:
    found = re.fullmatch(r"local:(\d+)", job["claimed_by"])
    assert found, job["claimed_by"]
    return int(found.group(1))


def kill(job: sqlite3.Row) -> int:
    """SIGKILL the worker process running ``job``, as the kernel's OOM killer would; returns its pid."""
    pid = worker_pid(job)
    os.kill(pid, signal.SIGKILL)
    return pid


def workers_loaded(node: Node, count: int) -> bool:
    assert node.proc is not None
    return node.proc.log_text().count("worker: model") >= count


def test_a_job_whose_worker_dies_is_queued_again_and_fails_with_the_reason_when_it_dies_again(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    data = tmp_path / "node"
    series = ct_series(tmp_path, 31)
    node = start_node(data, **WITH_WORKER)
    assert storescu(node.dicom_port, series).returncode == 0

    wait_until(lambda: bool(running(data)), 300, "the job to run", 0.01)
    (first,) = running(data)
    killed = kill(first)
    # taken back at once and claimed again by the restarted worker: its second try, under a new pid
    wait_until(lambda: bool(running(data, first["id"], attempts=2)), 120, "the job to run again", 0.01)
    (second,) = running(data, first["id"], attempts=2)
    assert worker_pid(second) != killed  # and its reason says why it runs again (probe 41: it said nothing)
    assert second["reason"] == ("its worker process died while running it (exit code -9, killed: out of memory?) on"
                                " attempt 1 of 2; queued again")
    kill(second)

    wait_until(lambda: jobs(data)[0]["state"] == "failed", 60, "the job to fail")
    (job,) = jobs(data)
    assert job["attempts"] == 2
    assert job["reason"] == (f"the worker process died while running it (exit code -9, killed: out of memory?)"
                             f" on 2 attempts; the series has {SLICES} instances")
    assert node.proc is not None
    log = node.proc.log_text()
    assert f"job {job['id']} series " in log and "on attempt 1 of 2; queued again" in log
    assert f"failed: {job['reason']}" in log
    # not looping: the restarted worker leaves the failed job alone
    wait_until(lambda: workers_loaded(node, 3), 300, "the worker to be restarted a second time")
    assert [(j["state"], j["attempts"]) for j in jobs(data)] == [("failed", 2)]


def test_only_the_dead_workers_job_is_taken_back(start_node: Callable[..., Node], tmp_path: Path) -> None:
    data = tmp_path / "node"
    folders = [ct_series(tmp_path, seed) for seed in (32, 33)]
    node = start_node(data, **{**WITH_WORKER, "URONODE_INFERENCE__WORKERS": "2"})
    wait_until(lambda: workers_loaded(node, 2), 300, "both workers to load the model")
    files = sorted(p for folder in folders for p in folder.iterdir())
    assert storescu(node.dicom_port, files).returncode == 0  # one association: both series complete together

    wait_until(lambda: len(running(data)) == 2, 120, "both jobs to run", 0.01)
    victim, other = running(data)
    assert victim["claimed_by"] != other["claimed_by"]
    kill(victim)

    def job(job_id: int) -> sqlite3.Row:
        (found,) = [j for j in jobs(data) if j["id"] == job_id]
        return found

    def taken_back() -> bool:
        now = job(victim["id"])
        return now["state"] != "running" or now["claimed_by"] != victim["claimed_by"]

    wait_until(taken_back, 60, "the dead worker's job to be taken back", 0.01)
    untouched = job(other["id"])
    assert (untouched["claimed_by"], untouched["attempts"]) == (other["claimed_by"], 1)
    assert untouched["state"] in ("running", "delivering", "delivered")
    wait_until(lambda: all(j["state"] == "delivered" for j in jobs(data)), 600, "both jobs to be delivered")
    assert (job(other["id"])["claimed_by"], job(other["id"])["attempts"]) == (other["claimed_by"], 1)
    rerun = job(victim["id"])
    assert rerun["attempts"] == 2 and rerun["claimed_by"] != victim["claimed_by"] and rerun["reason"] is None


def one_job(store: Store, series: str) -> int:
    for index in range(3):
        put(store, encoded(index, series=series))
    (completed,) = CompletionMonitor(store, JobQueue(store), grace_s=0, quiet_s=0, model="m").complete_now([series])
    assert completed.job_id is not None
    return completed.job_id


def test_the_start_up_recovery_fails_a_job_that_has_had_its_tries(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    job_id = one_job(store, "1.2.3.4")
    queue = JobQueue(store)
    assert queue.claim() is not None  # 'local': as rows written before workers named their pid
    assert JobQueue(Store(tmp_path / "data")).recover() == 1  # the node went down once: queued again
    again = queue.claim(local_worker(4321))
    assert again is not None and again.id == job_id and again.attempts == 2
    assert JobQueue(Store(tmp_path / "data")).recover() == 0  # and again on the same job: failed, no loop
    job = queue.get(job_id)
    assert job is not None and job.state is JobState.FAILED
    assert job.reason == "the worker process died while running it (the whole node went down) on 2 attempts;" \
                         " the series has 3 instances"
    assert queue.claim() is None
    audit = (store.root / "audit.log").read_text()
    assert f'"job_id":{job_id}' in audit and '"state":"failed"' in audit


def test_a_dead_worker_takes_back_only_its_own_jobs_never_a_remote_claim(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    queue = JobQueue(store)
    dead, live, remote = (one_job(store, f"1.2.3.{n}") for n in (1, 2, 3))
    assert queue.claim(local_worker(101)) is not None and queue.claim(local_worker(102)) is not None
    Claims(store, lease_s=60, claim_timeout_s=60).claim(remote, 1, local_worker(101))  # a remote worker's odd name
    (taken,) = queue.take_back(local_worker(101), "exit code -11, segmentation fault: a crash in native code")
    assert (taken.id, taken.state, taken.attempts) == (dead, JobState.QUEUED, 1)
    for job_id, holder in ((live, local_worker(102)), (remote, local_worker(101))):
        job = queue.get(job_id)
        assert job is not None and (job.state, job.claimed_by, job.attempts) == (JobState.RUNNING, holder, 1)
    assert queue.claim(local_worker(103)) is not None  # the restarted worker takes it again, then dies too
    (failed,) = queue.take_back(local_worker(103), "exit code -11, segmentation fault: a crash in native code")
    assert failed.state is JobState.FAILED and failed.reason == (
        "the worker process died while running it (exit code -11, segmentation fault: a crash in native code)"
        " on 2 attempts; the series has 3 instances")


def test_a_worker_the_node_stops_gives_its_job_back_without_counting_the_try(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    queue = JobQueue(store)
    job_id = one_job(store, "1.2.3.4")
    assert queue.claim(local_worker(101)) is not None
    (released,) = queue.release(local_worker(101))
    assert (released.id, released.state, released.attempts) == (job_id, JobState.QUEUED, 0)


def test_the_node_s_workers_count_as_one_local_worker_in_the_metrics(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    queue = JobQueue(store)
    for n, worker in enumerate((local_worker(101), local_worker(102), "local")):
        job_id = one_job(store, f"1.2.3.{n}")
        assert queue.claim(worker) is not None
        queue.finish(job_id, JobState.DELIVERED, seconds=1.0)
    found = samples(store)
    assert found[("uronode_worker_jobs_total", (("outcome", "done"), ("worker", "local")))] == 3
    assert not [key for key in found if any(value.startswith("local:") for _, value in key[1])]


@pytest.mark.parametrize(("exitcode", "cause"), [
    (-9, "exit code -9, killed: out of memory?"),
    (-11, "exit code -11, segmentation fault: a crash in native code"),
    (-15, "exit code -15, SIGTERM"),
    (1, "exit code 1"),
    (None, "exit code unknown"),
])
def test_a_worker_s_exit_is_told_in_words(exitcode: int | None, cause: str) -> None:
    assert exit_cause(exitcode) == cause
