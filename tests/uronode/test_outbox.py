import time
from pathlib import Path

import pytest

from uronode.outbox import DeliveryState, Outbox
from uronode.store import Store


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(Store(tmp_path / "data"), max_attempts=3, backoff_s=10, backoff_max_s=15)


def owe(outbox: Outbox, sop: str, destination: str = "pacs", path: str = "/x.dcm") -> None:
    with outbox.store.transaction() as conn:
        outbox.enqueue_in(conn, destination=destination, sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.7", path=Path(path), job_id=1)


def test_due_groups_by_destination(outbox: Outbox) -> None:
    owe(outbox, "1.1")
    owe(outbox, "1.2")
    owe(outbox, "1.1", destination="archive")
    due = outbox.due()
    assert {k: [d.sop_instance_uid for d in v] for k, v in due.items()} == {"pacs": ["1.1", "1.2"], "archive": ["1.1"]}


def test_failures_back_off_then_become_dead_letters(outbox: Outbox) -> None:
    owe(outbox, "1.1")
    (item,) = outbox.due()["pacs"]
    now = time.time()
    assert outbox.mark_failed(item.id, "refused", now) is DeliveryState.PENDING
    assert outbox.due(now + 9) == {}  # first wait: 10 s
    assert len(outbox.due(now + 10.5)["pacs"]) == 1
    assert outbox.mark_failed(item.id, "refused again", now) is DeliveryState.PENDING
    assert outbox.due(now + 14) == {}  # second wait: 20 s capped at 15 s
    assert len(outbox.due(now + 15.5)["pacs"]) == 1
    assert outbox.mark_failed(item.id, "0xA700 out of resources", now) is DeliveryState.DEAD
    (dead,) = outbox.list(DeliveryState.DEAD)
    assert dead.attempts == 3
    assert dead.last_error == "0xA700 out of resources (given up after 3 tries: delivery.max_attempts)"
    assert outbox.due(now + 10_000) == {}


def test_retry_makes_dead_letters_pending_again(outbox: Outbox) -> None:
    owe(outbox, "1.1")
    owe(outbox, "1.2", destination="archive")
    for item in [d for v in outbox.due().values() for d in v]:
        for _ in range(3):
            outbox.mark_failed(item.id, "down")
    assert outbox.counts() == {"dead": 2}
    assert outbox.retry(destination="archive") == 1
    assert [d.destination for d in outbox.list(DeliveryState.PENDING)] == ["archive"]
    assert outbox.retry() == 1
    assert outbox.counts() == {"pending": 2}


def test_owing_the_same_instance_again_resets_its_row(outbox: Outbox) -> None:
    owe(outbox, "1.1", path="/old.dcm")
    (item,) = outbox.due()["pacs"]
    outbox.mark_delivered([item.id])
    owe(outbox, "1.1", path="/new.dcm")  # a re-run made the same (deterministic) UID again
    rows = outbox.list()
    assert len(rows) == 1
    assert rows[0].state is DeliveryState.PENDING and rows[0].path == Path("/new.dcm") and rows[0].attempts == 0


def test_jobs_follow_their_deliveries(outbox: Outbox) -> None:
    from uronode.jobs import JobQueue
    from uronode.types import JobState

    queue = JobQueue(outbox.store)
    with outbox.store.transaction() as conn:
        job_id = queue.enqueue_in(conn, "1.2", "1.2.3", 1, "default")
    queue.claim()
    with outbox.store.transaction() as conn:
        for sop in ("1.9.1", "1.9.2"):
            outbox.enqueue_in(conn, destination="pacs", sop_instance_uid=sop, sop_class_uid="1.2", path=Path("/r.dcm"), job_id=job_id)
    queue.finish(job_id, JobState.DELIVERING)
    first, second = outbox.due()["pacs"]
    outbox.mark_delivered([first.id])
    outbox.settle_jobs()
    job = queue.get(job_id)
    assert job is not None and job.state is JobState.DELIVERING
    for _ in range(3):
        outbox.mark_failed(second.id, "0xA700 from PACS")
    outbox.settle_jobs()
    job = queue.get(job_id)
    assert job is not None and job.state is JobState.FAILED
    assert job.reason == "delivery failed: pacs: 0xA700 from PACS (given up after 3 tries: delivery.max_attempts)"
    assert outbox.retry(job_id=job_id) == 1
    job = queue.get(job_id)
    assert job is not None and job.state is JobState.DELIVERING
    outbox.mark_delivered([second.id])
    outbox.settle_jobs()
    job = queue.get(job_id)
    assert job is not None and job.state is JobState.DELIVERED


def test_a_result_stored_again_with_other_bytes_is_sent_from_its_new_file(outbox: Outbox) -> None:
    from tests.uronode.test_store import encoded, put
    from uronode.header import read_header
    from uronode.types import StoreOutcome

    store = outbox.store
    first = encoded(0, series="1.2.3.4")
    assert put(store, first) is StoreOutcome.STORED
    uid = read_header(first).sop_instance_uid
    old = store.get_instance(uid)
    assert old is not None
    owe(outbox, uid, path=str(old.path))
    again = encoded(0, series="1.2.3.4", seed=7)  # same UID, other pixels: a late worker's copy
    assert put(store, again) is StoreOutcome.REPLACED
    new = store.get_instance(uid)
    assert new is not None and new.path != old.path and not old.path.exists()
    (item,) = outbox.due()["pacs"]
    assert item.path == new.path and item.path.read_bytes() == b"".join(again)


DAY = 86400.0


def test_by_default_a_delivery_is_retried_for_a_day_not_a_count_of_tries(tmp_path: Path) -> None:
    """probe9 finding 4: 8 tries (5 s doubling to 600 s) gave up after about 10.5 minutes of PACS outage."""
    outbox = Outbox(Store(tmp_path / "data"))  # the defaults: no bound by count, a day by time
    owe(outbox, "1.1")
    (item,) = outbox.due()["pacs"]
    start = outbox.list()[0]
    now = time.time()
    window_end, tries = now + 4 * 3600, 0
    while now < window_end:  # a four-hour maintenance window: tried all along, never dead
        assert outbox.mark_failed(item.id, "cannot connect to PACS", now) is DeliveryState.PENDING
        tries += 1
        (row,) = outbox.list()
        assert row.next_attempt_at - now <= 600  # the backoff stays capped at backoff_max_s
        now = row.next_attempt_at
    assert tries > 20 and outbox.counts() == {"pending": 1}
    while now < start.next_attempt_at + DAY:  # and on, every 10 minutes, until a day after it was owed
        assert outbox.mark_failed(item.id, "cannot connect to PACS", now) is DeliveryState.PENDING
        now = outbox.list()[0].next_attempt_at
    # a day after it was owed, the next failure makes it a dead letter that says why
    assert outbox.mark_failed(item.id, "cannot connect to PACS", now) is DeliveryState.DEAD
    (dead,) = outbox.list(DeliveryState.DEAD)
    assert dead.last_error is not None and dead.last_error.startswith("cannot connect to PACS (given up after")
    assert "in 24.0 h: delivery.retry_for_s)" in dead.last_error


def test_a_step_of_the_host_clock_neither_holds_a_retry_nor_gives_a_delivery_up(tmp_path: Path) -> None:
    """Probe 39: retry times are wall-clock times. Set back an hour, the host held a failed delivery for that hour
    (its backoff is at most 10 minutes); set forward 25 hours (a virtual machine resumed after a weekend), the
    first failure after it gave the delivery up for good. A retry time further off than any backoff is due at
    once, and the time owed counts no more than the tries made can have taken."""
    outbox = Outbox(Store(tmp_path / "data"))
    owe(outbox, "1.1")
    (item,) = outbox.due()["pacs"]
    now = time.time()
    assert outbox.mark_failed(item.id, "cannot connect to PACS", now) is DeliveryState.PENDING
    assert outbox.due(now + 1) == {}  # backing off
    assert [d.id for d in outbox.due(now - 3600)["pacs"]] == [item.id]  # the clock set back an hour: due all the same
    assert outbox.mark_failed(item.id, "cannot connect to PACS", now + 25 * 3600) is DeliveryState.PENDING
    (row,) = outbox.list()
    assert row.attempts == 2 and row.next_attempt_at <= now + 25 * 3600 + 600
    # a node stopped for a day is no different: the day it was off is not a day of trying


def test_tries_far_apart_still_give_up_after_the_retry_period(tmp_path: Path) -> None:
    """Review 36: a bound by the count of tries kept a delivery tried every 30 minutes (its rounds held up by
    another destination's timeouts) for 59 hours, its dead letter saying 24. The gaps between tries add up."""
    outbox = Outbox(Store(tmp_path / "data"))
    owe(outbox, "1.1")
    (item,) = outbox.due()["pacs"]
    now, tries = time.time(), 0
    while (state := outbox.mark_failed(item.id, "cannot connect to PACS", now)) is DeliveryState.PENDING:
        now += 1800
        tries += 1
    assert state is DeliveryState.DEAD and 47 <= tries <= 49  # a day of tries, half an hour apart
    (dead,) = outbox.list(DeliveryState.DEAD)
    assert dead.last_error is not None and "in 24.0 h: delivery.retry_for_s)" in dead.last_error


def test_retry_and_owing_again_start_a_new_retry_period(tmp_path: Path) -> None:
    outbox = Outbox(Store(tmp_path / "data"), retry_for_s=60)
    owe(outbox, "1.1")
    (item,) = outbox.due()["pacs"]
    assert outbox.mark_failed(item.id, "down", time.time() + 61) is DeliveryState.DEAD
    assert outbox.retry() == 1
    assert outbox.mark_failed(item.id, "down", time.time() + 30) is DeliveryState.PENDING  # a new minute
    assert outbox.mark_failed(item.id, "down", time.time() + 61) is DeliveryState.DEAD
    owe(outbox, "1.1")  # owed again (a re-run): a new period too
    assert outbox.mark_failed(item.id, "down", time.time() + 30) is DeliveryState.PENDING


def test_the_deliverer_gives_up_when_the_delivery_settings_say(tmp_path: Path) -> None:
    from uronode.app.delivery import Deliverer
    from uronode.settings import DeliverySettings

    outbox = Outbox(Store(tmp_path / "data"))
    Deliverer(outbox, DeliverySettings(retry_for_s=3600), calling_ae="URONODE")
    assert outbox.retry_for_s == 3600 and outbox.max_attempts is None


def test_what_the_destinations_no_longer_want_is_dropped_and_owed_again_once_they_do(tmp_path: Path) -> None:
    """Probe 41: a destination's results narrowed (or the destination removed), `uronode retry` sent its dead
    letters again, they died again, and the job stayed failed for good though the PACS held what it takes."""
    from tests.uronode.test_store import encoded, put
    from uronode.header import read_header
    from uronode.jobs import JobQueue
    from uronode.settings import Destination

    store = Store(tmp_path / "data")
    outbox = Outbox(store, max_attempts=1)
    uids = []
    for index in range(2):  # the results, in the store
        parts = encoded(index, series="1.2.3.901")
        put(store, parts)
        uids.append(read_header(parts).sop_instance_uid)
    with store.transaction() as conn:
        job = JobQueue(store).enqueue_in(conn, "1.2", "1.2.3", 1, "default")
        for sop, sop_class in zip(uids, ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.7"), strict=True):
            outbox.enqueue_in(conn, destination="pacs", sop_instance_uid=sop, sop_class_uid=sop_class,
                              path=Path("/x.dcm"), job_id=job)
        conn.execute("UPDATE jobs SET state = 'delivering' WHERE id = ?", (job,))
    seg, sc = outbox.due()["pacs"]
    outbox.mark_delivered([sc.id])
    assert outbox.mark_failed(seg.id, "the PACS takes no SEG", permanent=True) is DeliveryState.DEAD
    outbox.settle_jobs()
    assert JobQueue(store).get(job).state.value == "failed"  # type: ignore[union-attr]

    def pacs(*results: str) -> Destination:
        return Destination.model_validate({"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "pacs",
                                           "port": 104, "results": list(results)})

    narrowed = outbox.drop_unwanted([pacs("sc", "sr", "ko")])
    assert narrowed == {"destination 'pacs' takes no seg results any more (its results setting)": 1}
    assert JobQueue(store).get(job).state.value == "delivered"  # type: ignore[union-attr]
    assert outbox.retry() == 0 and outbox.counts() == {"delivered": 1, "superseded": 1}
    assert outbox.drop_unwanted([pacs("seg", "sc", "sr", "ko")]) == {}  # put right: owed again
    assert outbox.counts() == {"delivered": 1, "pending": 1}
    assert JobQueue(store).get(job).state.value == "delivering"  # type: ignore[union-attr]
    assert outbox.drop_unwanted([]) == {"destination 'pacs' is not configured any more": 1}
    assert JobQueue(store).get(job).state.value == "delivered"  # type: ignore[union-attr]
    # review 37: a result taken out since (superseded by a later run: rejected) is not owed again
    store.conn().execute("INSERT INTO rejected (sop_instance_uid, source_series_uid, rejected_at) VALUES (?, ?, 0)",
                         (uids[0], "1.2.3"))
    assert outbox.drop_unwanted([pacs("seg", "sc", "sr", "ko")]) == {}
    assert outbox.counts() == {"delivered": 1, "superseded": 1}
