"""``uronode cancel JOB``: a queued job is not run, a running one's outcome is dropped, nothing of it is stored
or sent, and ``uronode requeue`` runs it again. The worker and the writers are the real ones; the model is the
seam (``SeriesModel``) that cancels the job at the moment under test."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from inference.postprocess import Findings, measure_stones
from inference.volume import Volume, load_volume
from lab.synth import generate_phantom, write_series
from uronode.app.cli import main
from uronode.app.worker import Worker
from uronode.claims import ClaimConflict, Claims
from uronode.header import InstanceHeader
from uronode.ingest import take_instance
from uronode.jobs import CANCELLED, JobNotRunning, JobQueue
from uronode.outbox import Outbox
from uronode.settings import Settings
from uronode.store import Buffer, Store
from uronode.types import JobState, StoreOutcome


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
    with pytest.raises(ValueError, match=f"^job {job_id} is failed; only a queued or running job can be cancelled$"):
        queue.cancel(job_id)
    with pytest.raises(ValueError, match="^no job 999$"):
        queue.cancel(999)
    queue.requeue(job_id)
    again = queue.claim()
    assert again is not None and again.id == job_id


def test_a_job_whose_results_are_stored_cannot_be_cancelled(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = Store(settings.storage.data_dir, fsync=False)
    queue = JobQueue(store)
    job_id = _queued(store, tmp_path)
    job = queue.claim()
    assert job is not None
    assert Worker(store, settings, Stones()).run_job(job) is JobState.DELIVERING
    with pytest.raises(ValueError, match=rf"^job {job_id} is delivering; .*results are stored and being sent"):
        queue.cancel(job_id)


def test_a_job_cancelled_while_the_model_runs_stores_and_sends_nothing(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = Store(settings.storage.data_dir, fsync=False)
    queue = JobQueue(store)
    job_id = _queued(store, tmp_path)
    received = _instances(store)
    job = queue.claim()
    assert job is not None
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
    assert capsys.readouterr().err == (f"uronode: job {job_id} is failed; only a queued or running job can be"
                                       " cancelled\n")
    JobQueue(store).requeue(job_id)
    assert JobQueue(store).claim("local:4242") is not None
    assert main(["cancel", str(job_id), *data]) == 0
    assert "its worker (local:4242) drops what it makes of it" in capsys.readouterr().out
