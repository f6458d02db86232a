"""The worker outlives the node's resources failing: a full disk while a job's results are stored gives the
job back to the queue, that try not counted, with the reason; an index locked past its busy timeout does not
end the process (probe10, section 4: the worker process died, and the death counted against the job's two
tries).

The worker runs in a thread with the real store, queue and result writers; the model is the test's stand-in
(``NoStones``). The disk is "full" through the store's own watermark check; the lock is held by another
SQLite connection.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.peers.processes import wait_until
from tests.uronode.test_destination_results import NoStones, _queued_job, _settings
from uronode import db
from uronode.app import worker as worker_module
from uronode.app.worker import Worker
from uronode.jobs import JobQueue
from uronode.store import Store
from uronode.types import Job, JobState


@contextmanager
def running(worker: Worker) -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, 0.01), name="worker", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(60)


def job(store: Store, job_id: int) -> Job:
    found = JobQueue(store).get(job_id)
    assert found is not None
    return found


def test_a_full_disk_while_storing_results_gives_the_job_back_that_try_not_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "RESOURCE_PAUSE_S", 0.05)
    settings = _settings(tmp_path, [])
    store = Store(settings.storage.data_dir, fsync=False)
    job_id = _queued_job(store, tmp_path)
    full = Store(settings.storage.data_dir, fsync=False, max_disk_used_percent=0.001)  # any disk is over it
    filling = full.check_space
    checks = iter(range(1_000_000))
    # the disk fills while the job runs: room at the claim (the worker's first look), none after
    monkeypatch.setattr(full, "check_space", lambda incoming=0: None if next(checks) == 0 else filling(incoming))
    with running(Worker(full, settings, NoStones())) as thread:
        wait_until(lambda: job(store, job_id).reason is not None, 60, "the job to be given back")
        given_back = job(store, job_id)
        assert thread.is_alive()
    assert given_back.state in (JobState.QUEUED, JobState.RUNNING) and given_back.attempts <= 1
    assert given_back.reason is not None and given_back.reason.startswith("the node is out of resources: disk ")
    assert given_back.reason.endswith("; queued again, the try not counted")
    after = job(store, job_id)
    assert after.state is JobState.QUEUED and after.attempts == 0  # however often it was tried: none counted

    with running(Worker(store, settings, NoStones())):  # space again: it runs, on its first counted try
        wait_until(lambda: job(store, job_id).state is JobState.DELIVERED, 120, "the job to be delivered")
    done = job(store, job_id)
    assert done.attempts == 1 and done.reason is None


def test_no_job_is_taken_while_the_disk_is_over_its_watermark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Probe 24: on a full disk the worker took the job, ran the whole model, could not store the results, gave
    the job back, and took it again a minute later, for as long as the disk stayed full."""
    monkeypatch.setattr(worker_module, "RESOURCE_PAUSE_S", 0.05)
    monkeypatch.setattr(worker_module, "RESOURCE_PAUSE_MAX_S", 0.1)
    settings = _settings(tmp_path, [])
    store = Store(settings.storage.data_dir, fsync=False)
    job_id = _queued_job(store, tmp_path)
    full = Store(settings.storage.data_dir, fsync=False, max_disk_used_percent=0.001)  # any disk is over it
    ran: list[str] = []
    model = NoStones()
    real_run = model.run_files

    def counted(paths: Sequence[str | Path]) -> object:
        ran.append("model")
        return real_run(paths)

    monkeypatch.setattr(model, "run_files", counted)
    with caplog.at_level(logging.INFO, logger="uronode.app.worker"), running(Worker(full, settings, model)) as thread:
        wait_until(lambda: "no job is taken while disk" in caplog.text, 30, "the worker to say why it waits")
        threading.Event().wait(1.0)  # ten looks at the disk, at least
        waiting = job(store, job_id)
        assert (waiting.state, waiting.attempts, waiting.reason, ran) == (JobState.QUEUED, 0, None, [])
        assert caplog.text.count("no job is taken while") == 1  # said once, not at every look
        full.max_disk_used_percent = 100.0  # space again
        wait_until(lambda: job(store, job_id).state is JobState.DELIVERED, 120, "the job to be delivered")
        assert thread.is_alive()
    assert "the disk is under its watermark again; jobs are taken" in caplog.text
    assert job(store, job_id).attempts == 1 and ran == ["model"]


def test_an_index_locked_past_its_busy_timeout_does_not_end_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(worker_module, "RESOURCE_PAUSE_S", 0.05)
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.2)
    settings = _settings(tmp_path, [])
    store = Store(settings.storage.data_dir, fsync=False)
    job_id = _queued_job(store, tmp_path)
    holder = sqlite3.connect(settings.storage.data_dir / "index.sqlite3", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with caplog.at_level(logging.WARNING, logger="uronode.app.worker"), \
                running(Worker(Store(settings.storage.data_dir, fsync=False), settings, NoStones())) as thread:
            wait_until(lambda: sum("the job queue cannot be read or written" in r.getMessage()
                                   for r in caplog.records) >= 2, 60, "the worker to try the locked queue twice")
            assert thread.is_alive()
            holder.execute("ROLLBACK")
            wait_until(lambda: job(store, job_id).state is JobState.DELIVERED, 120, "the job to be delivered")
            assert thread.is_alive()
    finally:
        holder.close()
    assert job(store, job_id).attempts == 1
    assert "database is locked" in caplog.text


def test_give_back_queues_a_running_job_again_without_counting_the_try(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    job_id = _queued_job(store, tmp_path)
    queue = JobQueue(store)
    assert queue.claim("local:7") is not None
    back = queue.give_back(job_id, "the disk is full")
    assert back is not None and (back.state, back.attempts, back.reason) == (JobState.QUEUED, 0, "the disk is full")
    assert queue.give_back(job_id, "again") is None  # not running: nothing to give back
