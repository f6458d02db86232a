"""Retention deletes old received series with the node's results made of them; recent jobs and findings stay
(``tests/uronode/test_ops_retention.py``: the history that ended before the cutoff goes too)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Unpack

import pytest

from lab.synth import generate_phantom, write_series
from tests.conftest import WITH_WORKER, query
from tests.factory import SliceOptions
from tests.peers.processes import Node, storescu, wait_until
from tests.uronode.test_store import encoded, put
from uronode import queries
from uronode.completion import CompletionMonitor
from uronode.jobs import JobQueue
from uronode.outbox import Outbox
from uronode.retention import purge
from uronode.store import Store
from uronode.types import JobState

DAY = 86400.0
STUDY, SOURCE, RESULT = "1.2.3", "1.2.3.4", "1.2.3.5"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


def receive(store: Store, series: str, count: int = 3, **kwargs: Unpack[SliceOptions]) -> None:
    for i in range(count):
        put(store, encoded(i, series=series, study=STUDY, **kwargs))
    CompletionMonitor(store, JobQueue(store), grace_s=0, quiet_s=0, model="default").complete_now([series])


def age(store: Store, series: str, days: float) -> None:
    with store.transaction() as conn:
        conn.execute("UPDATE series SET last_received_at = ? WHERE series_instance_uid = ?",
                     (time.time() - days * DAY, series))


def finish_job(store: Store, series: str, state: JobState = JobState.DELIVERED) -> int:
    queue = JobQueue(store)
    job = queue.claim()
    assert job is not None and job.series_instance_uid == series
    queue.finish(job.id, state, reason="model error" if state is JobState.FAILED else None, findings='{"stones": []}')
    return job.id


def series_count(store: Store, series: str) -> int:
    return len(store.series_instances(series))


def test_an_old_source_series_goes_and_its_results_job_and_findings_stay(store: Store) -> None:
    receive(store, SOURCE)
    job = finish_job(store, SOURCE)
    receive(store, RESULT, 2, manufacturer="uronode", modality="SR")  # what the worker stored
    age(store, SOURCE, 40)
    age(store, RESULT, 20)
    files = [i.path for i in store.series_instances(SOURCE)]
    folder = files[0].parent
    (folder / ".metadata.json").write_text("cached")

    done = purge(store, 30)

    assert done.series == [SOURCE] and done.instances == 3 and done.bytes > 0
    assert series_count(store, SOURCE) == 0 and queries.series_row(store.db, SOURCE) is None
    assert not any(f.exists() for f in files) and not folder.exists()
    assert series_count(store, RESULT) == 2  # results not recorded as made of it (before schema 8): their own age
    assert JobQueue(store).findings(job) == '{"stones": []}'
    assert query(store.root, "SELECT 1 FROM studies WHERE study_instance_uid = ?", STUDY)  # results still in it
    events = [json.loads(line) for line in (store.root / "audit.log").read_text().splitlines()]
    assert {"event": "retention", "series_instance_uid": SOURCE, "instances": 3}.items() <= events[-1].items()


def test_results_nothing_records_as_made_of_a_ct_go_by_their_own_age(store: Store) -> None:
    """Probe 31: results a node made before schema 8 (which began the ``results`` table) were never due: their CT
    went, they stayed for ever, each with the patient's name. Recorded results still go with their CT only."""
    receive(store, SOURCE)
    finish_job(store, SOURCE)
    receive(store, RESULT, 2, manufacturer="uronode", modality="SR")  # unrecorded, as an earlier version left it
    receive(store, "1.2.3.6", 2, manufacturer="uronode", modality="SEG")  # recorded as made of the recent CT
    uids = [i.header.sop_instance_uid for i in store.series_instances("1.2.3.6")]
    with store.transaction() as conn:
        conn.executemany("INSERT INTO results (sop_instance_uid, source_series_uid, model, job_id, recorded_at)"
                         " VALUES (?, ?, 'uronode-stone-cascade 3.8.0', 1, 0)", [(u, SOURCE) for u in uids])
    for series in (RESULT, "1.2.3.6"):
        age(store, series, 40)

    done = purge(store, 30)

    assert done.series == [RESULT] and done.instances == 2
    assert series_count(store, RESULT) == 0 and queries.series_row(store.db, RESULT) is None
    assert series_count(store, "1.2.3.6") == 2 and series_count(store, SOURCE) == 3  # the CT is recent


def test_unrecorded_results_still_owed_to_a_destination_stay(store: Store) -> None:
    """Review 30: an unrecorded result series was deleted by its age while its deliveries were still pending
    (a long PACS outage): nothing still owed is touched."""
    receive(store, RESULT, 2, manufacturer="uronode", modality="SEG")
    owed = store.series_instances(RESULT)[0]
    with store.transaction() as conn:
        Outbox(store).enqueue_in(conn, destination="PACS", sop_instance_uid=owed.header.sop_instance_uid,
                                 sop_class_uid=owed.header.sop_class_uid, path=owed.path)
    age(store, RESULT, 40)
    assert purge(store, 30).series == []
    assert series_count(store, RESULT) == 2
    with store.transaction() as conn:
        conn.execute("UPDATE deliveries SET state = 'delivered'")
    assert purge(store, 30).series == [RESULT]


def test_a_ct_whose_recorded_results_are_still_owed_stays_though_its_job_failed(store: Store) -> None:
    """Review 31: a job is failed once one delivery is dead (a PACS refused the SEG) while the others are still
    pending (an outage); retention took the CT with those results, which never arrived."""
    receive(store, SOURCE)
    job = finish_job(store, SOURCE, JobState.FAILED)
    receive(store, RESULT, 2, manufacturer="uronode", modality="SR")
    results = store.series_instances(RESULT)
    with store.transaction() as conn:
        conn.executemany("INSERT INTO results (sop_instance_uid, source_series_uid, model, job_id, recorded_at)"
                         " VALUES (?, ?, 'uronode-stone-cascade 3.8.0', ?, 0)",
                         [(r.header.sop_instance_uid, SOURCE, job) for r in results])
        Outbox(store).enqueue_in(conn, destination="PACS", sop_instance_uid=results[0].header.sop_instance_uid,
                                 sop_class_uid=results[0].header.sop_class_uid, path=results[0].path, job_id=job)
    age(store, SOURCE, 40)
    age(store, RESULT, 40)
    assert purge(store, 30).series == []
    assert series_count(store, SOURCE) == 3 and series_count(store, RESULT) == 2
    with store.transaction() as conn:
        conn.execute("UPDATE deliveries SET state = 'dead'")  # given up: nothing is owed any more
    done = purge(store, 30)
    assert done.series == [SOURCE] and done.results == 2


def test_what_is_not_due_stays(store: Store) -> None:
    receive(store, "1.2.3.10")  # recent
    finish_job(store, "1.2.3.10")
    receive(store, "1.2.3.11")  # old, but its job is still queued
    age(store, "1.2.3.11", 40)
    for i in range(2):  # old, still receiving (never completed)
        put(store, encoded(i, series="1.2.3.12", study=STUDY))
    age(store, "1.2.3.12", 40)

    assert purge(store, 30).series == []
    assert [series_count(store, s) for s in ("1.2.3.10", "1.2.3.11", "1.2.3.12")] == [3, 3, 2]


def test_a_failed_job_does_not_hold_its_series_and_the_last_series_takes_the_study(store: Store) -> None:
    receive(store, SOURCE)
    finish_job(store, SOURCE, JobState.FAILED)
    age(store, SOURCE, 40)
    assert purge(store, 30).series == [SOURCE]
    assert query(store.root, "SELECT 1 FROM studies") == []
    assert not (store.instances_dir / STUDY).exists()


def test_dry_run_deletes_nothing(store: Store) -> None:
    receive(store, SOURCE)
    finish_job(store, SOURCE)
    age(store, SOURCE, 40)
    done = purge(store, 30, dry_run=True)
    assert done.series == [SOURCE] and done.instances == 3
    assert series_count(store, SOURCE) == 3 and all(i.path.exists() for i in store.series_instances(SOURCE))


@pytest.mark.parametrize("days", [0, -30, float("nan"), float("inf"), float("-inf")])
def test_a_retention_of_0_days_or_less_is_refused_not_a_purge_of_everything(store: Store, days: float) -> None:
    receive(store, SOURCE)  # received a moment ago
    finish_job(store, SOURCE)
    for dry_run in (True, False):
        with pytest.raises(ValueError, match="a finite number of days greater than 0"):
            purge(store, days, dry_run=dry_run)
    assert series_count(store, SOURCE) == 3 and all(i.path.exists() for i in store.series_instances(SOURCE))


def test_the_series_sent_again_after_retention_is_new(store: Store) -> None:
    receive(store, SOURCE)
    finish_job(store, SOURCE)
    age(store, SOURCE, 40)
    purge(store, 30)
    receive(store, SOURCE)
    assert series_count(store, SOURCE) == 3 and all(i.path.exists() for i in store.series_instances(SOURCE))
    assert [j.state for j in JobQueue(store).for_series(SOURCE)] == [JobState.DELIVERED, JobState.QUEUED]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "uronode", *args], capture_output=True, text=True, timeout=120)


def test_purge_and_requeue_commands(store: Store) -> None:
    receive(store, SOURCE)
    job = finish_job(store, SOURCE, JobState.FAILED)
    age(store, SOURCE, 40)
    data = str(store.root)

    assert run_cli("purge", "--data-dir", data).returncode == 2  # no retention configured, none given
    listed = run_cli("purge", "--data-dir", data, "--older-than-days", "30", "--dry-run")
    assert listed.returncode == 0 and "would delete 1 series, 3 instances" in listed.stdout and SOURCE in listed.stdout
    assert series_count(store, SOURCE) == 3

    requeued = run_cli("requeue", str(job), "--data-dir", data)
    assert requeued.returncode == 0, requeued.stderr
    found = JobQueue(store).get(job)
    assert found is not None and found.state is JobState.QUEUED
    assert run_cli("requeue", str(job), "--data-dir", data).returncode == 1  # queued already: not failed
    assert run_cli("purge", "--data-dir", data, "--older-than-days", "30").stdout.startswith("deleted 0 series")

    finish_job(store, SOURCE)
    deleted = run_cli("purge", "--data-dir", data, "--older-than-days", "30")
    assert deleted.stdout.startswith("deleted 1 series, 3 instances"), deleted.stdout
    assert series_count(store, SOURCE) == 0


def test_the_node_deletes_the_ct_with_its_results(start_node: Callable[..., Node], tmp_path: Path) -> None:
    node = start_node(**WITH_WORKER, URONODE_STORAGE__RETENTION_DAYS=str(3 / DAY),  # three seconds
                      URONODE_STORAGE__RETENTION_INTERVAL_S="0.5")
    phantom = generate_phantom(8, rows=128, slice_spacing=2.0, coverage=(0.66, 0.96), n_stones=0, n_mimics=0)
    write_series(phantom, tmp_path / "ct")
    assert storescu(node.dicom_port, tmp_path / "ct").returncode == 0
    folder = node.data_dir / "instances" / phantom.study_instance_uid / phantom.series_instance_uid
    assert folder.is_dir()  # kept while its series is receiving and its job is waiting

    def finished() -> list[dict[str, object]]:  # the audit log's word: on a loaded machine the job ends after the
        audit = node.data_dir / "audit.log"  # retention time, and its result can be gone before a poll sees it
        records = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
        return [r for r in records if r.get("event") == "job_finished"]

    wait_until(lambda: bool(finished()), 240, "the job to store its result")
    (job,) = finished()
    # no stone: the SR and the summary image
    assert job["state"] == "delivered" and len(job["results"]) == 2  # type: ignore[arg-type]
    wait_until(lambda: not folder.exists(), 60, "retention to delete the CT's files")
    wait_until(lambda: not query(node.data_dir, "SELECT 1 FROM instances"), 30, "retention to delete the result")
    assert not query(node.data_dir, "SELECT 1 FROM instances")  # the CT and the results made of it
    assert not query(node.data_dir, "SELECT 1 FROM results")
    assert not (node.data_dir / "instances" / phantom.study_instance_uid).exists()
    url = f"http://127.0.0.1:{node.http_port}/dicom-web/studies?StudyInstanceUID={phantom.study_instance_uid}"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 204 or json.loads(response.read() or b"[]") == []  # the study is gone

    def metrics() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/metrics", timeout=10) as response:
            lines = [line.rsplit(" ", 1) for line in response.read().decode().splitlines() if line[:1] != "#"]
        return {name: float(value) for name, value in lines}

    counted = metrics()  # the counters keep counting what retention deleted
    assert counted["uronode_instances_stored"] == 0
    assert counted["uronode_instances_received_total"] == 2 + len(list((tmp_path / "ct").iterdir()))
    assert counted["uronode_series_completed_total"] >= 1  # the CT; the results too when they completed before
    assert counted["uronode_inference_seconds_count"] == 1 and counted["uronode_inference_seconds_sum"] > 0
    assert counted['uronode_inference_seconds_bucket{le="+Inf"}'] == 1
