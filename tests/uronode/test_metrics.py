"""The metrics read from the database, as Prometheus' own parser reads the exposition."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.uronode.test_store import encoded, put
from uronode.claims import Claims
from uronode.completion import CompletionMonitor
from uronode.jobs import JobQueue
from uronode.metrics import exposition
from uronode.outbox import Outbox
from uronode.store import Store
from uronode.types import JobState


def samples(store: Store) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = exposition(store.db).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_what_the_database_holds(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    queue = JobQueue(store)
    for index in range(3):
        put(store, encoded(index, series="1.2.3.4"))
    put(store, encoded(0, series="1.2.3.5"))
    with store.transaction() as conn:  # what retention deleted earlier still counts as received
        conn.execute("INSERT INTO counters (name, value) VALUES ('instances_deleted', 10), ('series_deleted', 2)")
    monitor = CompletionMonitor(store, queue, grace_s=0, quiet_s=0, model="m")
    assert len(monitor.complete_now(["1.2.3.4"])) == 1
    job = queue.claim()
    assert job is not None
    queue.finish(job.id, JobState.DELIVERING, seconds=7.5)
    outbox = Outbox(store, max_attempts=2)
    with store.transaction() as conn:
        for sop in ("9.1", "9.2", "9.3"):
            outbox.enqueue_in(conn, destination="pacs", sop_instance_uid=sop, sop_class_uid="1.2",
                              path=Path("/x.dcm"), job_id=job.id)
    first, second, _ = outbox.due()["pacs"]
    outbox.mark_failed(first.id, "refused")
    outbox.mark_delivered([first.id])  # delivered on its second try: one failure
    outbox.mark_failed(second.id, "refused")
    outbox.mark_failed(second.id, "refused")  # dead after two: two failures

    put(store, encoded(0, series="1.2.3.6", manufacturer="uronode"))  # the node's own results, sent back
    put(store, encoded(0, series="1.2.3.7", image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    assert [done.reason for done in monitor.complete_now(["1.2.3.6", "1.2.3.7"])] == [
        "derived by this node", "localizer (scout) images"]

    found = samples(store)
    assert found[("uronode_instances_stored", ())] == 6
    assert found[("uronode_instances_received_total", ())] == 16
    assert found[("uronode_series_completed_total", ())] == 3  # counted as they complete; none deleted since
    assert found[("uronode_series", (("disposition", "queued"), ("state", "complete")))] == 1
    # the node's own result series are counted apart, not among the series the model skipped (probe 22)
    assert found[("uronode_series", (("disposition", "results"), ("state", "complete")))] == 1
    assert found[("uronode_series", (("disposition", "skipped"), ("state", "complete")))] == 1
    assert found[("uronode_series", (("disposition", ""), ("state", "receiving")))] == 1
    # why series were skipped, by kind (probe 41 #7): the localizer; the node's own results are not among them
    assert found[("uronode_series_skipped", (("reason", "localizer"),))] == 1
    assert sum(v for (name, _), v in found.items() if name == "uronode_series_skipped") == 1
    assert found[("uronode_jobs", (("state", "delivering"),))] == 1
    assert found[("uronode_jobs", (("state", "queued"),))] == 0
    assert found[("uronode_queue_depth", ())] == 0
    assert found[("uronode_deliveries", (("state", "delivered"),))] == 1
    assert found[("uronode_deliveries", (("state", "dead"),))] == 1
    assert found[("uronode_deliveries", (("state", "pending"),))] == 1
    assert found[("uronode_delivery_failures_total", ())] == 3
    assert found[("uronode_inference_seconds_bucket", (("le", "5"),))] == 0
    assert found[("uronode_inference_seconds_bucket", (("le", "10"),))] == 1
    assert found[("uronode_inference_seconds_bucket", (("le", "+Inf"),))] == 1
    assert found[("uronode_inference_seconds_sum", ())] == 7.5
    assert found[("uronode_inference_seconds_count", ())] == 1


def test_an_empty_database_gives_every_metric_at_zero(tmp_path: Path) -> None:
    found = samples(Store(tmp_path / "data"))
    assert found[("uronode_instances_stored", ())] == 0
    assert found[("uronode_queue_depth", ())] == 0
    assert {labels for name, labels in found if name == "uronode_jobs"} == {
        (("state", s.value),) for s in JobState
    }
    assert found[("uronode_inference_seconds_count", ())] == 0
    assert found[("uronode_worker_deaths_total", ())] == 0


def test_remote_workers_metrics_show_unclaimed_jobs_expired_leases_and_each_worker_s_jobs(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    queue = JobQueue(store)
    claims = Claims(store, lease_s=10, claim_timeout_s=30)
    for index, series in enumerate(("1.2.3.4", "1.2.3.5", "1.2.3.6")):
        put(store, encoded(index, series=series))
    monitor = CompletionMonitor(store, queue, grace_s=0, quiet_s=0, model="m")
    assert len(monitor.complete_now(["1.2.3.4", "1.2.3.5", "1.2.3.6"])) == 3
    first, second, third = claims.to_publish()
    for job in (first, second, third):
        claims.mark_published(job)
    assert claims.to_publish() == []
    assert samples(store)[("uronode_jobs_published_unclaimed", ())] == 3
    done = claims.claim(first.id, first.series_generation, "w1")
    claims.complete(first.id, done.token, "w1", results=[], findings="{}", seconds=2.5, destinations=[],
                    outbox=Outbox(store))
    lost = claims.claim(second.id, second.series_generation, "w2", now=1000.0)  # its lease ended long ago
    assert claims.sweep() == (1, 0)
    found = samples(store)
    assert found[("uronode_jobs_published_unclaimed", ())] == 1  # the third; the second is to publish again
    assert [job.id for job in claims.to_publish()] == [second.id]
    assert found[("uronode_claims_held", ())] == 0
    assert found[("uronode_leases_expired_total", ())] == 1
    assert found[("uronode_jobs_republished_total", ())] == 1
    assert found[("uronode_worker_jobs_total", (("outcome", "done"), ("worker", "w1")))] == 1
    assert found[("uronode_worker_inference_seconds_total", (("worker", "w1"),))] == 2.5
    assert ("uronode_worker_jobs_total", (("outcome", "done"), ("worker", "w2"))) not in found
    claims.refused()
    assert samples(store)[("uronode_completions_refused_total", ())] == 1
    assert lost.job.attempts == 1


def test_the_delivery_failure_counter_does_not_go_down_when_tries_are_reset(tmp_path: Path) -> None:
    """Probe 41: `uronode_delivery_failures_total` fell from 270 to 0 at a `uronode retry` (it was counted from the
    deliveries' tries, which a retry sets to 0). A counter never goes down: the reset tries are kept."""
    store = Store(tmp_path / "data")
    outbox = Outbox(store, max_attempts=3)
    with store.transaction() as conn:
        outbox.enqueue_in(conn, destination="pacs", sop_instance_uid="7.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                          path=tmp_path / "a.dcm", job_id=None)
    (item,) = outbox.due()["pacs"]
    for _ in range(3):
        outbox.mark_failed(item.id, "down")
    assert samples(store)[("uronode_delivery_failures_total", ())] == 3
    assert outbox.retry() == 1
    outbox.mark_failed(item.id, "down")
    assert samples(store)[("uronode_delivery_failures_total", ())] == 4
    found = samples(store)
    assert found[("uronode_destination_deliveries", (("destination", "pacs"), ("state", "pending")))] == 1
    assert not any(name == "uronode_destination_deliveries" and dict(labels)["state"] != "pending"
                   for name, labels in found)  # states a destination has none of are not listed
    with store.transaction() as conn:  # owed afresh (a job run again)
        outbox.enqueue_in(conn, destination="pacs", sop_instance_uid="7.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                          path=tmp_path / "a.dcm", job_id=None)
    assert samples(store)[("uronode_delivery_failures_total", ())] == 4


def test_every_reason_a_series_is_skipped_for_has_a_kind_of_its_own() -> None:
    """The skipped series' label (probe 41 #7) names a kind, never the reason's text: each reason ``qualify`` gives
    maps to one, none to ``other``."""
    from uronode.completion import CT_IMAGE_STORAGE, qualify
    from uronode.metrics import skip_kind

    axial = "1\\0\\0\\0\\1\\0"

    def rows(count: int = 2, **fields: object) -> list[dict[str, object]]:
        row = {"modality": "CT", "sop_class_uid": CT_IMAGE_STORAGE, "image_type": "ORIGINAL\\PRIMARY\\AXIAL",
               "manufacturer": "ACME", "contrast_agent": None, "series_description": "ABDOMEN",
               "convolution_kernel": "B30f", "image_orientation": axial, "image_position": "0\\0\\0",
               "number_of_frames": None, "rescale_type": None, "body_part": None, "protocol_name": None,
               "study_description": None, **fields}
        return [dict(row) for _ in range(count)]

    cases = [[], rows(modality="MR"), rows(sop_class_uid="1.2.840.10008.5.1.4.1.1.7"),
             rows(image_type="ORIGINAL\\PRIMARY\\LOCALIZER"), rows(rescale_type="MG/ML"),
             rows(image_type="DERIVED\\SECONDARY\\AXIAL\\MAT_REMOVED"),
             rows(image_type="DERIVED\\SECONDARY\\REFORMATTED"), rows(image_position=None),
             rows(image_orientation="1\\0\\0\\0\\0\\-1"), rows(convolution_kernel="BONEPLUS"),
             rows(series_description="ABDOMEN ARTERIAL PHASE", contrast_agent="IOMERON"),
             rows(series_description="Head 2.5", body_part="HEAD"), rows(series_description="QA DAILY")]
    reasons = [qualify(case) for case in cases]  # type: ignore[arg-type]  # dicts read as the index's rows are
    assert None not in reasons and qualify(rows()) is None  # type: ignore[arg-type]
    kinds = {reason: skip_kind(reason) for reason in reasons}
    assert "other" not in kinds.values(), kinds
    assert set(kinds.values()) == {"empty", "not_ct", "localizer", "energy", "derived", "no_position", "not_axial",
                                   "sharp_kernel", "contrast", "not_abdomen", "phantom"}
    assert skip_kind("something new") == "other"


def test_refusals_counted_in_a_burst_reach_the_index_within_a_second(tmp_path: Path) -> None:
    import time

    from uronode.metrics import REFUSED, Tally

    store = Store(tmp_path / "data")
    tally = Tally(store.db, REFUSED, every_s=0.2)
    for _ in range(500):
        tally.add("host_connections")
    tally.add("calling_ae")
    assert samples(store)[("uronode_associations_refused_total", (("reason", "host_connections"),))] == 0
    deadline = time.monotonic() + 5
    while samples(store)[("uronode_associations_refused_total", (("reason", "calling_ae"),))] == 0:
        assert time.monotonic() < deadline, "the tally was never written"
        time.sleep(0.05)
    found = samples(store)
    assert found[("uronode_associations_refused_total", (("reason", "host_connections"),))] == 500
    assert found[("uronode_associations_refused_total", (("reason", "host_share"),))] == 0  # every kind, at 0


def test_completions_and_workers_jobs_are_counted_as_they_happen_and_never_go_down(tmp_path: Path) -> None:
    """Probe 57: computed from the index's rows, the series completed went 5 -> 4 -> 5 when a series took a late
    image, a worker's 'done' went down when its job's deliveries died (the PACS's fault, counted on the worker) and
    when it was requeued; Prometheus reads each dip as a reset."""
    store = Store(tmp_path / "data")
    queue = JobQueue(store)
    monitor = CompletionMonitor(store, queue, grace_s=0, quiet_s=0, model="m")
    put(store, encoded(0, series="1.2.3.4"))
    assert len(monitor.complete_now(["1.2.3.4"])) == 1
    job = queue.claim()
    assert job is not None
    queue.finish(job.id, JobState.DELIVERED)
    seen = [samples(store)]
    put(store, encoded(1, series="1.2.3.4"))  # a late image: the series receives again ...
    seen.append(samples(store))
    assert len(monitor.complete_now(["1.2.3.4"])) == 1  # ... and completes again: a second completion
    seen.append(samples(store))
    with store.transaction() as conn:  # its deliveries died: the job failed, its worker had done its part
        conn.execute("UPDATE jobs SET state = 'failed', reason = 'delivery failed: pacs' WHERE id = ?", (job.id,))
    seen.append(samples(store))
    queue.requeue(job.id)
    seen.append(samples(store))
    completed = [s[("uronode_series_completed_total", ())] for s in seen]
    done = [s.get(("uronode_worker_jobs_total", (("outcome", "done"), ("worker", "local"))), 0) for s in seen]
    failed = [s.get(("uronode_worker_jobs_total", (("outcome", "failed"), ("worker", "local"))), 0) for s in seen]
    assert (completed, done, failed) == ([1, 1, 2, 2, 2], [1] * 5, [0] * 5)
    again = queue.claim()
    assert again is not None and again.id == job.id
    queue.finish(again.id, JobState.FAILED, "the model could not read it")
    found = samples(store)
    assert found[("uronode_worker_jobs_total", (("outcome", "done"), ("worker", "local")))] == 1
    assert found[("uronode_worker_jobs_total", (("outcome", "failed"), ("worker", "local")))] == 1


def test_an_earlier_index_s_counts_go_on_from_what_its_rows_gave(tmp_path: Path) -> None:
    """Schema 20 counts completions and workers' jobs as they happen; an index of before is seeded with what the
    earlier version computed from its rows (and the pruned jobs retention had kept), so no metric drops at the
    upgrade."""
    import sqlite3

    store = Store(tmp_path / "data")
    with store.transaction() as conn:
        for uid in ("1.1", "1.2", "1.3"):
            conn.execute("INSERT INTO series (series_instance_uid, study_instance_uid, state, first_received_at,"
                         " last_received_at) VALUES (?, '1', 'complete', 1, 1)", (uid,))
        conn.execute("INSERT INTO series (series_instance_uid, study_instance_uid, state, first_received_at,"
                     " last_received_at) VALUES ('1.4', '1', 'receiving', 1, 1)")
        for state, worker in (("delivered", "local:7"), ("failed", "local:8"), ("delivering", "w1"), ("queued", None)):
            conn.execute("INSERT INTO jobs (study_instance_uid, series_instance_uid, series_generation, state,"
                         " created_at, updated_at, claimed_by, model) VALUES ('1', '1.1', 1, ?, 1, 1, ?, 'm')", (state, worker))
        conn.execute("DELETE FROM counters")
        conn.executemany("INSERT INTO counters (name, value) VALUES (?, ?)",
                         [("series_deleted", 2), ("pruned:jobs:w1:done", 4), ("pruned:jobs:a:b:failed", 1)])
    old = sqlite3.connect(tmp_path / "data" / "index.sqlite3")
    old.execute("PRAGMA user_version = 19")
    old.commit()
    old.close()
    found = samples(Store(tmp_path / "data"))
    assert found[("uronode_series_completed_total", ())] == 5
    assert {labels: value for (name, labels), value in found.items() if name == "uronode_worker_jobs_total"} == {
        (("outcome", "done"), ("worker", "local")): 1, (("outcome", "failed"), ("worker", "local")): 1,
        (("outcome", "done"), ("worker", "w1")): 5, (("outcome", "failed"), ("worker", "w1")): 0,
        (("outcome", "done"), ("worker", "a:b")): 0, (("outcome", "failed"), ("worker", "a:b")): 1}


def test_no_completion_for_a_series_emptied_by_a_move_and_no_outcome_for_a_job_another_worker_holds(
    tmp_path: Path,
) -> None:
    """Review 53: a series whose images all moved to another was counted as completed; a job failed by the node's
    worker after it had been cancelled and claimed by another was failed and counted against that other."""
    from uronode.jobs import JobNotRunning

    store = Store(tmp_path / "data")
    queue = JobQueue(store)
    monitor = CompletionMonitor(store, queue, grace_s=0, quiet_s=0, model="m")
    put(store, encoded(0, series="1.2.3.4"))
    moved = encoded(0, series="1.2.3.4")
    moved[1] = moved[1].replace(b"1.2.3.4\x00", b"1.2.3.9\x00", 1)  # its Series Instance UID (SOP UIDs differ)
    assert moved[1] != encoded(0, series="1.2.3.4")[1]
    put(store, moved)  # the same image, now in another series: 1.2.3.4 is empty
    monitor.complete_now(["1.2.3.4"])
    assert samples(store)[("uronode_series_completed_total", ())] == 0
    assert len(monitor.complete_now(["1.2.3.9"])) == 1
    job = queue.claim(worker="local:1")
    assert job is not None and samples(store)[("uronode_series_completed_total", ())] == 1
    with store.transaction() as conn:  # cancelled and requeued, then claimed by a remote worker
        conn.execute("UPDATE jobs SET claimed_by = 'w9' WHERE id = ?", (job.id,))
    try:
        queue.finish(job.id, JobState.FAILED, "the model could not read it", worker=job.claimed_by)
    except JobNotRunning:
        pass
    else:
        raise AssertionError("the job of another worker was failed")
    assert not [name for name, _ in samples(store) if name == "uronode_worker_jobs_total"]
