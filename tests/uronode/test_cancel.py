"""``uronode cancel JOB``: a queued job is not run, a running one's outcome is dropped, nothing of it is stored
or sent, and ``uronode requeue`` runs it again; a worker process whose job is cancelled while the model runs
stops its computation and is replaced. The worker and the writers are the real ones; the model is the seam
(``SeriesModel``) that cancels the job at the moment under test, or takes long enough to be cancelled; the
worker process and its supervisor are real processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import numpy as np
import pytest

from inference.postprocess import Findings, measure_stones
from inference.volume import Volume, load_volume
from lab.synth import generate_phantom, write_series
from tests.peers.processes import wait_until
from uronode.app.cli import main
from uronode.app.node import WorkerProcess
from uronode.app.worker import Worker, run_worker
from uronode.claims import ClaimConflict, Claims
from uronode.header import InstanceHeader
from uronode.ingest import take_instance
from uronode.jobs import CANCELLED, JobNotRunning, JobQueue
from uronode.outbox import Outbox
from uronode.processes import DROPPED_JOB_EXIT
from uronode.settings import Settings
from uronode.store import Buffer, Store
from uronode.types import Job, JobState, StoreOutcome


def _settings(tmp_path: Path) -> Settings:
    return Settings.model_validate({"storage": {"data_dir": str(tmp_path / "data"), "fsync": False},
                                    "delivery": {"destinations": [{"name": "pacs", "kind": "sender"}]}})


def _queued(store: Store, tmp_path: Path) -> int:
    phantom = generate_phantom(16, rows=64, slice_spacing=2.5, slices=4, coverage=(0.7, 0.8), n_stones=0, n_mimics=0)
    for path in write_series(phantom, tmp_path / "ct"):
        assert take_instance(store, [path.read_bytes()], source="CT1").stored
    with store.transaction() as conn:
        return JobQueue(store).enqueue_in(conn, phantom.study_instance_uid, phantom.series_instance_uid, 1, "default")


class Stones:
    """Finds a stone at known voxels; ``on_run`` runs while the "model" runs (a cancel from another process)."""

    def __init__(self, on_run: object = None) -> None:
        self.on_run = on_run

    def run_files(self, paths: Sequence[str | Path]) -> tuple[Volume, Findings]:
        if callable(self.on_run):
            self.on_run()
        volume = load_volume(paths)
        mask = np.zeros(volume.shape, np.uint8)
        mask[1:3, 30:33, 30:33] = 1
        return volume, measure_stones(volume, mask, model_name="test-stones", model_version="1.0.0")


class Slow(Stones):
    """Takes up to ``seconds`` before it finds its stone, unless ``release`` is set sooner; records when it
    starts (``started``)."""

    def __init__(self, seconds: float, on_run: object = None) -> None:
        super().__init__(on_run)
        self.seconds = seconds
        self.started = threading.Event()
        self.release = threading.Event()

    def run_files(self, paths: Sequence[str | Path]) -> tuple[Volume, Findings]:
        self.started.set()
        self.release.wait(self.seconds)
        return super().run_files(paths)


def slow_worker(settings_json: str, parent_pid: int, heartbeat: Synchronized[float]) -> None:
    """The node's worker process with a model that takes two minutes a job."""
    run_worker(settings_json, parent_pid, heartbeat, model=Slow(120.0))


def _instances(store: Store) -> list[tuple[str, str]]:
    return [(r["modality"], r["path"]) for r in store.conn().execute("SELECT modality, path FROM instances")]


def test_a_queued_job_cancelled_is_not_run_and_requeue_runs_it_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", fsync=False)
    queue = JobQueue(store)
    job_id = _queued(store, tmp_path)
    cancelled = queue.cancel(job_id, "  wrong series, sent again later ")
    assert cancelled.state is JobState.FAILED
    assert cancelled.reason == f"{CANCELLED}: wrong series, sent again later"
    assert queue.claim() is None
    with pytest.raises(ValueError, match=f"^job {job_id} is failed; only a queued, running or delivering job can be cancelled$"):
        queue.cancel(job_id)
    with pytest.raises(ValueError, match="^no job 999$"):
        queue.cancel(999)
    queue.requeue(job_id)
    again = queue.claim()
    assert again is not None and again.id == job_id


def test_a_delivering_job_cancelled_sends_nothing_more_and_its_study_can_be_erased(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Probe 51: a wrongly routed patient's results, owed to a destination that was down, could be neither
    cancelled nor purged until the destination's day of retries had passed."""
    _, store, queue, outbox, job = _delivering(tmp_path)
    job_id = job.id
    owed = [d for found in outbox.due().values() for d in found]
    first = owed[0]
    outbox.mark_failed(first.id, "connection refused", permanent=True)  # a dead letter too
    with store.transaction() as tx:  # received whole, as the node's completion loop finds them
        tx.execute("UPDATE series SET state = 'complete'")
    assert main(["purge", "--study", job.study_instance_uid, "--data-dir", str(store.root)]) == 1
    assert "deliveries still owed" in capsys.readouterr().err

    cancelled = queue.cancel(job_id, "sent to the wrong node")
    assert cancelled.state is JobState.FAILED and cancelled.reason == f"{CANCELLED}: sent to the wrong node"
    rows = store.conn().execute("SELECT state, last_error FROM deliveries WHERE job_id = ?", (job_id,)).fetchall()
    assert len(rows) == len(owed) and {(r["state"], r["last_error"]) for r in rows} == {
        ("superseded", f"not sent: {CANCELLED}: sent to the wrong node")}
    assert outbox.due() == {} and outbox.settle_jobs() == 0
    assert (after := queue.get(job_id)) is not None and after.state is JobState.FAILED
    assert main(["purge", "--study", job.study_instance_uid, "--data-dir", str(store.root)]) == 0
    with pytest.raises(ValueError, match=rf"^job {job_id} is failed; only a queued, running or delivering job"):
        queue.cancel(job_id)


def _claimed(tmp_path: Path) -> tuple[Settings, Store, JobQueue, Job, list[tuple[str, str]]]:
    """A node's settings and store with one job claimed by a worker, and the instances received before it ran."""
    settings = _settings(tmp_path)
    store = Store(settings.storage.data_dir, fsync=False)
    queue = JobQueue(store)
    _queued(store, tmp_path)
    received = _instances(store)
    job = queue.claim()
    assert job is not None
    return settings, store, queue, job, received


def test_a_job_cancelled_while_the_model_runs_stores_and_sends_nothing(tmp_path: Path) -> None:
    settings, store, queue, job, received = _claimed(tmp_path)
    job_id = job.id
    state = Worker(store, settings, Stones(on_run=lambda: queue.cancel(job_id))).run_job(job)
    assert state is JobState.FAILED
    after = queue.get(job_id)
    assert after is not None and after.state is JobState.FAILED and after.reason == CANCELLED
    assert _instances(store) == received  # no SEG, SC, KO or SR in the study
    assert Outbox(store).due(now=1e12) == {}
    assert store.conn().execute("SELECT count(*) FROM results").fetchone()[0] == 0


class CancelAtLastPut(Store):
    """The cancel lands while the worker stores its results: after the first one is written, before they are
    recorded (the window the worker's one transaction for results and the job's end closes)."""

    queue: JobQueue
    job_id: int
    puts = 0

    def put(self, header: InstanceHeader, parts: Sequence[Buffer], *, calling_ae: str = "",
            association_id: int | None = None) -> StoreOutcome:
        outcome = super().put(header, parts, calling_ae=calling_ae, association_id=association_id)
        if header.modality != "CT":
            self.puts += 1
            if self.puts == 1:
                self.queue.cancel(self.job_id, "too late for the model, not for its results")
        return outcome


def test_a_job_cancelled_while_its_results_are_stored_leaves_none_of_them(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = CancelAtLastPut(settings.storage.data_dir, fsync=False)
    store.queue = queue = JobQueue(store)
    store.job_id = job_id = _queued(store, tmp_path)
    received = _instances(store)
    job = queue.claim()
    assert job is not None
    assert Worker(store, settings, Stones()).run_job(job) is JobState.FAILED
    assert store.puts >= 4  # SEG, SC, KO, SR: all written before the worker saw the cancel
    assert _instances(store) == received  # the results stored were taken out again, files and rows
    results_dir = settings.storage.data_dir / "instances" / job.study_instance_uid
    assert sorted(p.parent.name for p in results_dir.rglob("*.dcm")) == [job.series_instance_uid] * len(received)
    assert [r[0] for r in store.conn().execute("SELECT series_instance_uid FROM series")] == [job.series_instance_uid]
    assert Outbox(store).due(now=1e12) == {}
    after = queue.get(job_id)
    assert after is not None and after.reason == f"{CANCELLED}: too late for the model, not for its results"
    with pytest.raises(JobNotRunning, match=f"^job {job_id} is not running: failed"):
        queue.finish(job_id, JobState.DELIVERED)


def test_a_remote_worker_s_claim_on_a_cancelled_job_no_longer_holds_and_says_why(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", fsync=False)
    job_id = _queued(store, tmp_path)
    claims = Claims(store, lease_s=60.0, claim_timeout_s=60.0)
    claim = claims.claim(job_id, 1, "gpu-1")
    JobQueue(store).cancel(job_id, "a radiologist asked")
    with pytest.raises(ClaimConflict, match=f"no longer holds it .failed: {CANCELLED}: a radiologist asked"):
        claims.heartbeat(job_id, claim.token, "gpu-1")


def test_the_cancel_command_says_what_it_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path / "data", fsync=False)
    job_id = _queued(store, tmp_path)
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["cancel", str(job_id), "--reason", "sent to the wrong node", *data]) == 0
    assert capsys.readouterr().out == (f"job {job_id} cancelled ({CANCELLED}: sent to the wrong node);"
                                       f" `uronode requeue {job_id}` runs it again\n")
    assert main(["cancel", str(job_id), *data]) == 1
    assert capsys.readouterr().err == (f"uronode: job {job_id} is failed; only a queued, running or delivering job"
                                       " can be cancelled\n")
    JobQueue(store).requeue(job_id)
    assert JobQueue(store).claim("local:4242") is not None
    assert main(["cancel", str(job_id), *data]) == 0
    assert "its worker (local:4242) stops its computation within about a second" in capsys.readouterr().out
    JobQueue(store).requeue(job_id)
    assert JobQueue(store).claim("gpu-1") is not None
    assert main(["cancel", str(job_id), *data]) == 0
    assert "its worker (gpu-1) drops what it makes of it" in capsys.readouterr().out


def test_a_cancel_while_the_model_runs_stops_the_computation(tmp_path: Path) -> None:
    settings, store, queue, job, received = _claimed(tmp_path)
    job_id = job.id
    dropped: list[float] = []
    model = Slow(60.0)

    def stop(which: object) -> None:  # the worker process ends itself here (stop_process); this test goes on
        assert which == job
        dropped.append(time.monotonic())
        model.release.set()

    worker = Worker(store, settings, model, on_dropped=stop, watch_s=0.05)
    threading.Thread(target=lambda: (model.started.wait(30), queue.cancel(job_id)), daemon=True).start()
    started = time.monotonic()
    assert worker.run_job(job) is JobState.FAILED
    assert len(dropped) == 1 and dropped[0] - started < 30  # seen while the model ran, not after its 60 s
    assert _instances(store) == received
    assert store.conn().execute("SELECT count(*) FROM results").fetchone()[0] == 0


def test_the_watch_is_quiet_for_a_job_still_its_own_and_once_the_model_has_run(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = CancelAtLastPut(settings.storage.data_dir, fsync=False)
    store.queue = queue = JobQueue(store)
    dropped: list[object] = []
    # a second of model time watched every 0.05 s, then a cancel while the results are stored: never called
    store.job_id = _queued(store, tmp_path)
    job = queue.claim()
    assert job is not None
    model = Slow(1.0)
    assert Worker(store, settings, model, on_dropped=dropped.append, watch_s=0.05).run_job(job) is JobState.FAILED
    assert store.puts >= 4 and dropped == []
    assert [t.name for t in threading.enumerate() if t.name.startswith("watch-job-")] == []


@pytest.fixture
def supervised() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        if worker.proc is not None and worker.proc.is_alive():
            worker.proc.kill()
            worker.proc.join(10)


def test_a_worker_process_whose_job_is_cancelled_ends_and_is_replaced(tmp_path: Path,
                                                                       supervised: list[WorkerProcess]) -> None:
    settings = _settings(tmp_path)
    store = Store(settings.storage.data_dir, fsync=False)
    queue = JobQueue(store)
    job_id = _queued(store, tmp_path)
    received = _instances(store)
    worker = WorkerProcess(settings, queue, target=slow_worker)
    supervised.append(worker)
    worker.start()
    assert worker.proc is not None
    first = worker.proc
    running = f"local:{first.pid}"
    wait_until(lambda: (j := queue.get(job_id)) is not None and j.claimed_by == running, 120,
               "the worker process to take the job")
    assert main(["cancel", str(job_id), "--data-dir", str(settings.storage.data_dir)]) == 0
    first.join(30)  # its model would take two minutes
    assert first.exitcode == DROPPED_JOB_EXIT
    worker.check()  # the supervisor's round: a new process at once, no death counted
    assert worker.proc is not first and worker.proc.is_alive() and worker.proc.pid != first.pid
    assert list(worker.deaths) == [] and worker.problem() is None
    after = queue.get(job_id)
    assert after is not None and after.state is JobState.FAILED and after.reason == CANCELLED
    assert after.claimed_by == running
    assert _instances(store) == received
    queue.requeue(job_id)  # the new one takes jobs: it runs the job again
    second = worker.proc
    wait_until(lambda: (j := queue.get(job_id)) is not None and j.claimed_by == f"local:{second.pid}", 120,
               "the new worker process to take the job again")
    hurry = threading.Event()
    hurry.set()
    worker.stop(hurry)  # a node's stop asked twice: killed at once, the job queued again
    assert not second.is_alive()
    again = queue.get(job_id)
    assert again is not None and again.state is JobState.QUEUED


def _delivering(tmp_path: Path, settings: Settings | None = None) -> tuple[Settings, Store, JobQueue, Outbox, Job]:
    """A node's store with one job run by a worker, its results stored and owed to the destinations."""
    settings = settings or _settings(tmp_path)
    store = Store(settings.storage.data_dir, fsync=False)
    queue = JobQueue(store)
    _queued(store, tmp_path)
    job = queue.claim()
    assert job is not None and Worker(store, settings, Stones()).run_job(job) is JobState.DELIVERING
    return settings, store, queue, Outbox(store), job


class OtherStones(Stones):
    """Another stone than :class:`Stones`': a second run of the series makes other results."""

    def run_files(self, paths: Sequence[str | Path]) -> tuple[Volume, Findings]:
        volume = load_volume(paths)
        mask = np.zeros(volume.shape, np.uint8)
        mask[1:3, 40:44, 40:44] = 1
        return volume, measure_stones(volume, mask, model_name="test-stones", model_version="1.0.0")


def test_a_cancel_leaves_the_rejection_note_of_earlier_results_owed(tmp_path: Path) -> None:
    """Review 50: a cancelled run's note withdrawing the results of the run before it, which the PACS held, was not
    sent either, and nothing owed it again: the PACS kept both runs' results."""
    settings, store, queue, outbox, job = _delivering(tmp_path)
    outbox.mark_delivered([d.id for found in outbox.due().values() for d in found])  # the PACS took them
    with store.transaction() as conn:
        second = queue.enqueue_in(conn, job.study_instance_uid, job.series_instance_uid, 1, "default")
    again = queue.claim()
    assert again is not None and again.id == second and job.id != second
    assert Worker(store, settings, OtherStones()).run_job(again) is JobState.DELIVERING
    queue.cancel(second, "sent to the wrong node")
    rows = store.conn().execute("SELECT d.state, r.job_id FROM deliveries d LEFT JOIN results r"
                                " ON r.sop_instance_uid = d.sop_instance_uid WHERE d.job_id = ?", (second,)).fetchall()
    assert {r["state"] for r in rows if r["job_id"] == second} == {"superseded"}  # its own results: not sent
    notes = [r["state"] for r in rows if r["job_id"] is None]
    assert notes == ["pending"]  # the note withdrawing the first run's results: still owed


def test_a_cancelled_job_stays_cancelled_when_a_destination_is_configured_again(tmp_path: Path) -> None:
    """Review 50: deliveries a destination no longer wanted were owed again when it came back, and the cancelled job
    became delivering, its reason cleared."""
    settings = Settings.model_validate({"storage": {"data_dir": str(tmp_path / "data"), "fsync": False},
                                        "delivery": {"destinations": [{"name": "pacs", "kind": "sender"},
                                                                      {"name": "archive", "kind": "sender"}]}})
    _, store, queue, outbox, job = _delivering(tmp_path, settings)
    job_id = job.id
    both = settings.delivery.destinations
    assert outbox.drop_unwanted([d for d in both if d.name == "pacs"])  # the archive left out for a while
    queue.cancel(job_id, "sent to the wrong node")
    assert outbox.drop_unwanted(both) == {} and outbox.due() == {}  # the archive back: nothing of it is owed
    assert (after := queue.get(job_id)) is not None and after.state is JobState.FAILED
    assert after.reason == f"{CANCELLED}: sent to the wrong node"


def test_a_delivery_the_destination_took_as_its_job_was_cancelled_is_recorded_delivered(tmp_path: Path) -> None:
    """Review 50: one being sent when the cancel landed stayed 'not sent' while the destination held it."""
    _, store, queue, outbox, job = _delivering(tmp_path)
    job_id = job.id
    (first, *rest) = [d for found in outbox.due().values() for d in found]  # the deliverer's round took them
    queue.cancel(job_id)
    outbox.mark_delivered([first.id])  # the destination stored the one being sent
    states = dict(store.conn().execute("SELECT id, state FROM deliveries WHERE job_id = ?", (job_id,)).fetchall())
    assert states[first.id] == "delivered" and {states[d.id] for d in rest} == {"superseded"}
