"""``/readyz`` says 503 when no job can run: the worker crash-loops (a damaged model), the worker is frozen,
the index is locked (probe10, section 2: ``ready`` in each case). ``/healthz`` stays liveness.

The worker supervisor (:class:`uronode.app.node.WorkerProcess`) runs real processes: one that exits at once,
one stopped with SIGSTOP; the node test runs ``uronode serve`` with a truncated model file. The locked index
is held by another SQLite connection.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import httpx
import pytest

from dicomweb import ops
from tests.conftest import WITH_WORKER
from tests.peers.processes import Node, wait_until
from tests.uronode.test_loops import node_settings, readyz, serving
from uronode.app import node
from uronode.app.node import WorkerProcess, jobs_unattended
from uronode.jobs import JobQueue
from uronode.loops import Loops
from uronode.processes import DROPPED_JOB_EXIT
from uronode.settings import Settings
from uronode.store import Store

ROOT = Path(__file__).resolve().parents[2]


def exits_at_once(settings_json: str, parent_pid: int, heartbeat: Synchronized[float]) -> None:
    """A worker process that dies as one does on a damaged model: at once, exit code 3."""
    os._exit(3)


def beats(settings_json: str, parent_pid: int, heartbeat: Synchronized[float]) -> None:
    """A worker process that beats (as ``uronode.app.worker.beat`` does) until it is stopped."""
    while True:
        heartbeat.value = time.monotonic()
        time.sleep(0.05)


def ends_holding_its_beat_then_beats(settings_json: str, parent_pid: int, heartbeat: Synchronized[float]) -> None:
    """The first time: a worker process that ends itself on a cancelled job (``DROPPED_JOB_EXIT``) at the moment
    its heartbeat thread holds the shared value's lock; every later time, one that beats."""
    marker = Settings.model_validate_json(settings_json).storage.data_dir / "ended-once"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        heartbeat.get_lock().acquire()
        os._exit(DROPPED_JOB_EXIT)
    beats(settings_json, parent_pid, heartbeat)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return node_settings(tmp_path / "data")


@pytest.fixture
def supervised(settings: Settings) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        if worker.proc is not None and worker.proc.is_alive():
            os.kill(worker.proc.pid or 0, signal.SIGCONT)
            worker.proc.kill()
            worker.proc.join(10)


def test_a_worker_that_keeps_dying_is_named_with_how_it_died(settings: Settings,
                                                             supervised: list[WorkerProcess]) -> None:
    worker = WorkerProcess(settings, JobQueue(Store(settings.storage.data_dir)), target=exits_at_once,
                           restart_pause_s=0.01)
    supervised.append(worker)
    worker.start()

    def named() -> bool:
        worker.check()  # one round of the supervisor loop: takes back, restarts (after a pause)
        return worker.problem() is not None

    wait_until(named, 60, "the crash loop to be named")
    problem = worker.problem()
    assert problem is not None and problem.startswith("the worker died 3 times in ") and "(last: exit code 3)" in problem
    # probe 57: every death in the window counts, over the deaths' own span (not up to now)
    def five() -> bool:
        worker.check()
        return len(worker.deaths) >= 5

    wait_until(five, 60, "two more deaths")
    time.sleep(1.2)
    said = re.match(r"the worker died (\d+) times in (\d+) s ", worker.problem() or "")
    assert said is not None and int(said[1]) == len(worker.deaths) >= 5
    assert int(said[2]) == round(worker.deaths[-1] - worker.deaths[0])
    # and each death is counted for the metrics (probe 57: a worker killed now and then showed nowhere but the log)
    (counted,) = worker.queue.store.conn().execute("SELECT value FROM counters WHERE name = 'worker_deaths'").fetchone()
    assert counted == len(worker.deaths)


def test_a_frozen_worker_is_named_and_no_longer_once_it_goes_on(settings: Settings,
                                                                supervised: list[WorkerProcess]) -> None:
    worker = WorkerProcess(settings, JobQueue(Store(settings.storage.data_dir)), target=beats, stale_after_s=1.0)
    supervised.append(worker)
    worker.start()
    assert worker.proc is not None and worker.proc.pid is not None
    started = time.monotonic()
    wait_until(lambda: worker.heartbeat.value > started, 60, "the worker's first beat")
    assert worker.problem() is None
    os.kill(worker.proc.pid, signal.SIGSTOP)
    wait_until(lambda: worker.problem() is not None, 30, "the frozen worker to be named")
    assert f"the worker (pid {worker.proc.pid}) has not beaten for " in (worker.problem() or "")
    os.kill(worker.proc.pid, signal.SIGCONT)
    wait_until(lambda: worker.problem() is None, 30, "the worker to beat again")


def test_a_frozen_worker_is_killed_and_replaced(settings: Settings, supervised: list[WorkerProcess]) -> None:
    """Probe 41: a stopped worker held its job and the queue for good (``uronode cancel`` said a new one would take
    its place; none did). Past twice the stale time it is killed, said why, and replaced."""
    worker = WorkerProcess(settings, JobQueue(Store(settings.storage.data_dir)), target=beats, stale_after_s=0.5)
    supervised.append(worker)
    worker.start()
    assert worker.proc is not None and worker.proc.pid is not None
    frozen = worker.proc.pid
    started = time.monotonic()
    wait_until(lambda: worker.heartbeat.value > started, 60, "the worker's first beat")
    os.kill(frozen, signal.SIGSTOP)

    def replaced() -> bool:
        worker.check()
        return worker.proc is not None and worker.proc.pid != frozen and worker.proc.is_alive()

    wait_until(replaced, 30, "the frozen worker to be replaced")
    assert worker.last_exit is not None and worker.last_exit.startswith("killed by the node: it had not beaten for")


def test_a_job_run_longer_than_the_job_timeout_is_taken_from_its_worker(settings: Settings,
                                                                         supervised: list[WorkerProcess]) -> None:
    """Probe 41 #13: a job whose computation hung while its heartbeat lived held the worker and the queue for
    good. Past ``inference.job_timeout_s`` the worker is killed and replaced, the job queued again, try counted."""
    settings.inference.job_timeout_s = 1.0
    store = Store(settings.storage.data_dir)
    worker = WorkerProcess(settings, JobQueue(store), target=beats)
    supervised.append(worker)
    worker.start()
    assert worker.proc is not None and worker.proc.pid is not None
    hung = worker.proc.pid
    with store.transaction() as conn:
        job = JobQueue(store).enqueue_in(conn, "1.2", "1.2.3", 1, "default")
        conn.execute("UPDATE jobs SET state = 'running', attempts = 1, claimed_by = ?, updated_at = ? WHERE id = ?",
                     (f"local:{hung}", time.time(), job))

    def replaced() -> bool:
        worker.check()
        return worker.proc is not None and worker.proc.pid != hung and worker.proc.is_alive()

    wait_until(replaced, 30, "the worker of the hung job to be replaced")
    taken = JobQueue(store).get(job)
    assert taken is not None and taken.state.value == "queued", taken
    assert taken.reason is not None and "the job ran for more than 1 s (inference.job_timeout_s)" in taken.reason


def test_a_worker_up_again_after_a_crash_loop_is_no_longer_named(settings: Settings, supervised: list[WorkerProcess],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe 41: ``/readyz`` named a crash loop for up to 10 minutes after the cause was mended, while jobs were
    delivered. A worker up and beating for longer than a quick death's time is trusted again."""
    monkeypatch.setattr(node, "QUICK_DEATH_S", 1.0)
    worker = WorkerProcess(settings, JobQueue(Store(settings.storage.data_dir)), target=exits_at_once,
                           restart_pause_s=0.01)
    supervised.append(worker)
    worker.start()

    def named() -> bool:
        worker.check()
        return worker.problem() is not None

    wait_until(named, 60, "the crash loop to be named")
    worker.target = beats  # the cause mended (the model copied again)

    def trusted() -> bool:
        worker.check()
        return worker.proc is not None and worker.proc.is_alive() and worker.problem() is None

    wait_until(trusted, 60, "the worker to be trusted again")


def test_readyz_names_an_index_locked_by_another_process(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the index is locked no worker takes a job; the waiting jobs are not named as unattended besides the
    lock (review 28 #7: two reasons, the second wrong)."""
    monkeypatch.setattr(ops, "DATABASE_TIMEOUT_S", 0.5)
    store = Store(settings.storage.data_dir)
    with store.transaction() as conn:
        JobQueue(store).enqueue_in(conn, "1.2.3", "1.2.3.4", 1, "default")
    settings.queue.claim_timeout_s = 0.0
    unattended = partial(jobs_unattended, JobQueue(store), settings)
    with serving(settings, Loops(), [unattended]) as base:
        time.sleep(0.05)
        status, answer = readyz(base)
        assert (status, answer) == (503, {"detail": "1 job(s) queued for more than 0 s and none running: no worker"
                                                    " takes them (the node's workers (inference.workers))"})
        with store.transaction() as conn:
            conn.execute("UPDATE jobs SET state = 'running'")
        assert readyz(base)[0] == 200
        with store.transaction() as conn:
            conn.execute("UPDATE jobs SET state = 'queued', updated_at = updated_at - 1")
        holder = sqlite3.connect(settings.storage.data_dir / "index.sqlite3", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            status, answer = readyz(base)
            assert (status, answer) == (503, {"detail": "the index is locked: no write possible for 0.5 s"
                                                        " (another process holds it)"})
            assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert readyz(base)[0] == 503  # the job still waits, and now it is the reason


def test_a_check_that_meets_a_damaged_index_makes_the_node_unready_not_an_error(settings: Settings) -> None:
    """Probe 49: a damaged page under the jobs table answered /readyz 500 (the unattended-jobs check raised) until
    the minute's scan of the tables found it; it is the 503 that names the damage and the way back."""
    Store(settings.storage.data_dir)

    def reads_a_damaged_page(store_takes_work: bool) -> str | None:
        raise sqlite3.DatabaseError("database disk image is malformed")

    with serving(settings, Loops(), [reads_a_damaged_page]) as base:
        status, answer = readyz(base)
    detail = str(answer["detail"])
    assert status == 503 and "is damaged (database disk image is malformed)" in detail and "uronode reindex" in detail


def test_the_node_is_not_ready_while_its_worker_crash_loops_on_a_damaged_model(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "default", models / "default")
    weights = models / "default" / "model.keras"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted copy
    node = start_node(**WITH_WORKER, URONODE_INFERENCE__MODELS_DIR=str(models))
    base = f"http://127.0.0.1:{node.http_port}"

    def crash_looping() -> bool:
        response = httpx.get(f"{base}/readyz", timeout=30)
        return response.status_code == 503 and "the worker died 3 times" in response.json()["detail"]

    wait_until(crash_looping, 300, "/readyz to name the worker's crash loop", 1.0)
    detail = httpx.get(f"{base}/readyz", timeout=30).json()["detail"]
    # why, not only how (probe 41: "see the log for why", where a multi-line traceback without a time said it)
    assert "(last: exit code 1: the model 'default' could not be loaded: ModelError: " in detail, detail
    assert "see the log" not in detail
    assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
    assert node.proc is not None
    log_lines = node.proc.log_text().splitlines()
    assert any(" ERROR " in line and "worker: the model 'default' could not be loaded: ModelError" in line
               for line in log_lines)
    assert not any(line.startswith("Traceback") for line in log_lines)



def test_workers_start_once_a_missing_model_folder_is_put_back(start_node: Callable[..., Node],
                                                               tmp_path: Path) -> None:
    """Probe 41: a node started without its models folder named it on /readyz, but once the folder was put back
    no worker ever started, and nothing said a restart was needed. The supervisor starts them when it appears."""
    models = tmp_path / "models"
    node = start_node(**WITH_WORKER, URONODE_INFERENCE__MODELS_DIR=str(models))
    base = f"http://127.0.0.1:{node.http_port}"
    missing = httpx.get(f"{base}/readyz", timeout=30)
    assert missing.status_code == 503 and f"not found under {models}" in missing.json()["detail"]
    shutil.copytree(ROOT / "models" / "default", models / "default")
    assert node.proc is not None
    proc = node.proc
    wait_until(lambda: ": starting the workers" in proc.log_text(), 60, "the workers to be started", 0.5)
    wait_until(lambda: httpx.get(f"{base}/readyz", timeout=30).status_code == 200, 120, "the node to be ready", 1.0)


def test_a_worker_that_ended_holding_its_beat_is_replaced_and_read_again(settings: Settings,
                                                                       supervised: list[WorkerProcess]) -> None:
    """Review 19: a process that ends (``os._exit`` on a cancelled job, a kill) while its beat holds the shared
    value's lock leaves the lock taken; the next process and /readyz waited on it forever. Each process now gets
    a value of its own."""
    worker = WorkerProcess(settings, JobQueue(Store(settings.storage.data_dir)), target=ends_holding_its_beat_then_beats)
    supervised.append(worker)
    worker.start()
    assert worker.proc is not None
    worker.proc.join(60)
    assert worker.proc.exitcode == DROPPED_JOB_EXIT
    worker.check()  # replaced at once, no death counted
    started = time.monotonic()
    wait_until(lambda: worker.heartbeat.value > started, 60, "the new process's first beat")
    answer: list[str | None] = []
    reader = threading.Thread(target=lambda: answer.append(worker.problem()), daemon=True)
    reader.start()
    reader.join(10)
    assert answer == [None]  # read at once, not waiting on a lock nobody will give back
