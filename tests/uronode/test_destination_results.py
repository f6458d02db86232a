"""A destination is sent only the kinds of results it takes (``results``): a PACS that stores no SEG or SR
refuses them, and their deliveries were retried until dead, failing the job although the rest arrived."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydantic
import pytest

from inference.postprocess import Findings, measure_stones
from inference.volume import Volume, load_volume
from inference.writers import write_results
from lab.synth import generate_phantom, write_series
from uronode.app.worker import Worker, encode
from uronode.claims import Claims
from uronode.header import read_header
from uronode.ingest import take_instance
from uronode.jobs import JobQueue
from uronode.outbox import Outbox
from uronode.settings import Destination, Settings, result_kind
from uronode.store import Store
from uronode.types import JobState


class KnownStones:
    """The worker's model seam (``SeriesModel``) with stones at known voxels: the delivery is tested, not
    the network. The volume is loaded and the results are written by the real code."""

    def run_files(self, paths: Sequence[str | Path]) -> tuple[Volume, Findings]:
        volume = load_volume(paths)
        mask = np.zeros(volume.shape, np.uint8)
        mask[1:3, 30:33, 30:33] = 1
        return volume, measure_stones(volume, mask, model_name="test-stones", model_version="1.0.0")


def _queued_job(store: Store, tmp_path: Path) -> int:
    phantom = generate_phantom(16, rows=64, slice_spacing=2.5, slices=4, coverage=(0.7, 0.8), n_stones=0, n_mimics=0)
    for path in write_series(phantom, tmp_path / "ct"):
        assert take_instance(store, [path.read_bytes()], source="CT1").stored
    with store.transaction() as conn:
        return JobQueue(store).enqueue_in(conn, phantom.study_instance_uid, phantom.series_instance_uid, 1, "default")


def _settings(tmp_path: Path, destinations: list[dict[str, object]]) -> Settings:
    return Settings.model_validate({"storage": {"data_dir": str(tmp_path / "data"), "fsync": False},
                                    "delivery": {"destinations": destinations}})


def test_each_destination_is_owed_only_the_kinds_it_takes(tmp_path: Path) -> None:
    settings = _settings(tmp_path, [
        {"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 104, "results": ["sc", "sr"]},
        {"name": "viewer", "kind": "dicom", "ae_title": "VIEWER", "host": "127.0.0.1", "port": 105},
    ])
    store = Store(settings.storage.data_dir, fsync=False)
    job_id = _queued_job(store, tmp_path)
    job = JobQueue(store).claim()
    assert job is not None and job.id == job_id
    assert Worker(store, settings, KnownStones()).run_job(job) is JobState.DELIVERING
    owed: dict[str, set[str]] = {}
    for name, items in Outbox(store).due(now=1e12).items():
        owed[name] = {result_kind(d.sop_class_uid) for d in items}
    assert owed == {"pacs": {"sc", "sr"}, "viewer": {"seg", "sc", "sr", "ko"}}


class NoStones:
    def run_files(self, paths: Sequence[str | Path]) -> tuple[Volume, Findings]:
        volume = load_volume(paths)
        return volume, measure_stones(volume, np.zeros(volume.shape, np.uint8), model_name="t", model_version="1")


def test_a_job_owing_nothing_is_delivered_at_once(tmp_path: Path) -> None:
    settings = _settings(tmp_path, [{"name": "pacs", "kind": "sender", "results": ["seg"]}])
    store = Store(settings.storage.data_dir, fsync=False)
    _queued_job(store, tmp_path)
    job = JobQueue(store).claim()
    assert job is not None
    assert Worker(store, settings, NoStones()).run_job(job) is JobState.DELIVERED  # no stone: no SEG to owe
    assert Outbox(store).due(now=1e12) == {}


def test_a_remote_worker_s_results_are_owed_by_kind_too(tmp_path: Path) -> None:
    """The distributed path (``Claims.complete``) owes the same kinds as the worker in the node."""
    settings = _settings(tmp_path, [{"name": "pacs", "kind": "sender", "results": ["sr"]},
                                    {"name": "archive", "kind": "sender", "results": ["ko"]}])
    store = Store(settings.storage.data_dir, fsync=False)
    _queued_job(store, tmp_path)
    claims = Claims(store, lease_s=60, claim_timeout_s=60)
    (job,) = claims.to_publish()
    claim = claims.claim(job.id, job.series_generation, "w1")
    volume, findings = NoStones().run_files([str(i.path) for i in store.series_instances(job.series_instance_uid)])
    uids = []
    for ds in write_results(volume, findings).datasets:  # no stone: the SR and the summary image
        data = encode(ds)
        store.put(read_header([data]), [data], calling_ae="URONODE")
        uids.append(str(ds.SOPInstanceUID))
    state = claims.complete(job.id, claim.token, "w1", results=uids, findings="{}", seconds=1.0,
                            destinations=settings.delivery.destinations, outbox=Outbox(store))
    assert state is JobState.DELIVERING
    owed = Outbox(store).due(now=1e12)
    assert list(owed) == ["pacs"] and [result_kind(d.sop_class_uid) for d in owed["pacs"]] == ["sr"]


@pytest.mark.parametrize("results", [[], ["seg", "pdf"], ["overlay"]])
def test_results_names_the_kinds_it_takes(results: list[str]) -> None:
    with pytest.raises(pydantic.ValidationError, match="results: one or more of seg, sc, sr, ko"):
        Destination(name="pacs", kind="sender", results=tuple(results))


def test_the_sop_classes_of_the_results_are_told_apart() -> None:
    assert [result_kind(uid) for uid in ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.7",
                                         "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33",
                                         "1.2.840.10008.5.1.4.1.1.88.59")] == ["seg", "sc", "sr", "sr", "ko"]
    assert Destination(name="pacs", kind="sender").results == ("seg", "sc", "sr", "ko")  # the default: all
