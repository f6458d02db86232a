"""Retention takes the node's own results with their source series, and the history that ended before the
cutoff: jobs, deliveries, associations (probe10, section 5: results, jobs, deliveries and associations were
kept forever). Nothing unfinished is touched; ``uronode purge --dry-run`` lists it all and deletes nothing.

Real store and index; the results are recorded as the worker records them (``uronode.supersede``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.conftest import query
from tests.uronode.test_retention import (
    DAY,
    RESULT,
    SOURCE,
    STUDY,
    finish_job,
    receive,
    run_cli,
)
from tests.uronode.test_store import encoded, put
from uronode.associations import Associations
from uronode.outbox import Outbox
from uronode.retention import purge
from uronode.store import Store
from uronode.supersede import NOTES_FOLDER, record_results
from uronode.types import JobState

OTHER, OTHER_RESULT = "1.2.3.6", "1.2.3.7"


def results_of(store: Store, source: str, series: str, job_id: int, count: int = 2) -> list[str]:
    """What the worker stores of a job: result instances (Manufacturer uronode) recorded as the source's."""
    uids = []
    for index in range(count):
        parts = encoded(index, series=series, study=STUDY, manufacturer="uronode", modality="SR")
        put(store, parts)
        uids.append(query(store.root, "SELECT sop_instance_uid FROM instances WHERE series_instance_uid = ?"
                          " ORDER BY received_at DESC LIMIT 1", series)[0]["sop_instance_uid"])
    with store.transaction() as conn:
        record_results(conn, job_id=job_id, source_series_uid=source, model="m 1", sop_instance_uids=uids)
    return uids


def deliver(store: Store, uids: list[str], job_id: int) -> None:
    outbox = Outbox(store)
    with store.transaction() as conn:
        for uid in uids:
            path = query(store.root, "SELECT path FROM instances WHERE sop_instance_uid = ?", uid)[0]["path"]
            outbox.enqueue_in(conn, destination="pacs", sop_instance_uid=uid, sop_class_uid="1.2", path=Path(path),
                              job_id=job_id)
    outbox.mark_delivered([d.id for d in outbox.due()["pacs"]])


def make_old(store: Store, table: str, column: str, days: float) -> None:
    with store.transaction() as conn:
        conn.execute(f"UPDATE {table} SET {column} = ?", (time.time() - days * DAY,))


def test_results_go_with_their_source_and_the_finished_history_after_the_retention(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    associations = Associations(store.db)
    old_association = associations.open("CT", "10.0.0.1")
    associations.close(old_association, "released")
    receive(store, SOURCE)
    job = finish_job(store, SOURCE)
    results = results_of(store, SOURCE, RESULT, job)
    deliver(store, results, job)
    result_files = [Path(r["path"]) for r in query(store.root, "SELECT path FROM instances WHERE"
                                                                " series_instance_uid = ?", RESULT)]
    note = store.root / NOTES_FOLDER / "1.2.3.99.dcm"  # a rejection note nothing owes any more
    note.parent.mkdir()
    note.write_bytes(b"note")
    for table, column in (("series", "last_received_at"), ("jobs", "updated_at"), ("deliveries", "updated_at"),
                          ("associations", "ended_at")):
        make_old(store, table, column, 40)
    os.utime(note, (time.time() - 40 * DAY, time.time() - 40 * DAY))
    # what is recent stays: a series and its results, its job, a delivery still owed, an open association
    receive(store, OTHER)
    recent_job = finish_job(store, OTHER, JobState.DELIVERING)
    recent_results = results_of(store, OTHER, OTHER_RESULT, recent_job, 1)
    Outbox(store).enqueue_in(store.conn(), destination="pacs", sop_instance_uid=recent_results[0],
                             sop_class_uid="1.2", path=tmp_path / "r.dcm", job_id=recent_job)
    open_association = associations.open("CT", "10.0.0.2")

    listed = run_cli("purge", "--data-dir", str(store.root), "--older-than-days", "30", "--dry-run")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("would delete 1 series, 3 instances, ") and \
        "with the 2 result instance(s)" in listed.stdout, listed.stdout
    assert "1 job(s), 2 deliveries, 1 association(s)" in listed.stdout and SOURCE in listed.stdout, listed.stdout
    assert all(f.exists() for f in result_files) and len(query(store.root, "SELECT 1 FROM jobs")) == 2

    done = purge(store, 30)

    assert (done.series, done.instances, done.results) == ([SOURCE], 3, 2)
    assert (done.jobs, done.deliveries, done.associations) == (1, 2, 1)
    assert not any(f.exists() for f in result_files) and not result_files[0].parent.exists()
    assert [r["series_instance_uid"] for r in query(store.root, "SELECT series_instance_uid FROM series ORDER BY 1")
            ] == [OTHER, OTHER_RESULT]
    assert [r["sop_instance_uid"] for r in query(store.root, "SELECT sop_instance_uid FROM results")] == recent_results
    assert [r["id"] for r in query(store.root, "SELECT id FROM jobs")] == [recent_job]
    assert [r["state"] for r in query(store.root, "SELECT state FROM deliveries")] == ["pending"]
    assert [r["id"] for r in query(store.root, "SELECT id FROM associations")] == [open_association]
    assert not note.exists()
    events = [json.loads(line) for line in (store.root / "audit.log").read_text().splitlines()]
    assert {"event": "retention", "series_instance_uid": SOURCE, "instances": 3, "results": 2}.items() \
        <= events[-1].items()
    counters = {r["name"]: r["value"] for r in query(store.root, "SELECT name, value FROM counters")}
    assert counters["instances_deleted"] == 5
    assert counters["worker_jobs:local:done"] == 2  # both jobs, counted as they ended: the pruned one stays counted


def test_the_metrics_counters_do_not_go_down_when_retention_prunes_what_they_counted(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from uronode.metrics import exposition

    def counters(store: Store) -> dict[str, float]:
        found = {}
        for family in text_string_to_metric_families(exposition(store.db).decode()):
            if family.type in ("counter", "histogram"):
                for sample in family.samples:
                    if not sample.name.endswith("_created"):
                        found[f"{sample.name}{sorted(sample.labels.items())}"] = sample.value
        return found

    store = Store(tmp_path / "data")
    receive(store, SOURCE)
    job = finish_job(store, SOURCE)
    with store.transaction() as conn:
        conn.execute("UPDATE jobs SET seconds = 4.5, claimed_by = 'local:7' WHERE id = ?", (job,))
    results = results_of(store, SOURCE, RESULT, job)
    deliver(store, results, job)
    with store.transaction() as conn:
        conn.execute("UPDATE deliveries SET attempts = 3")  # two failed tries before each arrived
    before = counters(store)
    assert before["uronode_delivery_failures_total[]"] == 4
    assert before["uronode_worker_jobs_total[('outcome', 'done'), ('worker', 'local')]"] == 1
    for table, column in (("series", "last_received_at"), ("jobs", "updated_at"), ("deliveries", "updated_at")):
        make_old(store, table, column, 40)
    done = purge(store, 30)
    assert (done.jobs, done.deliveries) == (1, 2)
    assert query(store.root, "SELECT count(*) AS n FROM jobs")[0]["n"] == 0
    after = counters(store)
    assert {k: v for k, v in after.items() if k in before} == before
