import math
import time
from pathlib import Path
from typing import Unpack

import pytest

from tests.factory import SliceOptions, uid
from tests.uronode.test_store import encoded, put
from uronode import queries
from uronode.associations import Associations
from uronode.completion import AXIAL_TOLERANCE_DEG, CompletionMonitor, not_axial, sharp_kernel
from uronode.jobs import JobQueue
from uronode.store import Store
from uronode.types import JobState, SeriesDisposition

GRACE, QUIET = 2.0, 30.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


@pytest.fixture
def monitor(store: Store) -> CompletionMonitor:
    return CompletionMonitor(store, JobQueue(store), grace_s=GRACE, quiet_s=QUIET, model="default")


def send(
    store: Store, series: str, count: int, assoc: int | None, start: int = 0, **kwargs: Unpack[SliceOptions]
) -> None:
    for i in range(start, start + count):
        put(store, encoded(i, series=series, **kwargs), association_id=assoc)


def test_released_association_completes_after_the_grace_period(store: Store, monitor: CompletionMonitor) -> None:
    series = uid("a")
    assoc = Associations(store.db).open("CT1", "127.0.0.1")
    send(store, series, 3, assoc)
    now = time.time()
    assert monitor.complete_due(now + GRACE + 1) == []  # association still open, not quiet long enough
    Associations(store.db).close(assoc, "released")
    assert monitor.complete_due(time.time() + GRACE - 0.5) == []
    done = monitor.complete_due(time.time() + GRACE + 0.1)
    assert [d.series_instance_uid for d in done] == [series]
    assert done[0].disposition is SeriesDisposition.QUEUED
    jobs = JobQueue(store).for_series(series)
    assert [(j.state, j.series_generation) for j in jobs] == [(JobState.QUEUED, 1)]
    assert monitor.complete_due(time.time() + 100) == []  # completes once


def test_an_open_association_completes_after_the_quiet_timeout(store: Store, monitor: CompletionMonitor) -> None:
    series = uid("b")
    assoc = Associations(store.db).open("CT1", "127.0.0.1")
    send(store, series, 2, assoc)
    assert monitor.complete_due(time.time() + QUIET - 1) == []
    assert [d.series_instance_uid for d in monitor.complete_due(time.time() + QUIET + 0.1)] == [series]


def test_a_step_of_the_host_clock_neither_completes_a_series_still_arriving_nor_holds_a_complete_one(
        store: Store, monitor: CompletionMonitor) -> None:
    """Probe 39: the quiet and grace rules read the wall clock the index stores, so a step forward of 2 h (NTP, a
    virtual machine resumed) completed a series whose association was still open, half of it analysed, and a step
    back of an hour held a complete series for that hour. Once a series has been seen, its waits count on the
    steady clock (``steady``); what happened before the monitor looked (a restart) counts on the wall clock."""
    arriving, released = uid("clock", "arriving"), uid("clock", "released")
    open_assoc = Associations(store.db).open("CT1", "127.0.0.1")
    send(store, arriving, 3, open_assoc)
    done_assoc = Associations(store.db).open("CT2", "127.0.0.1")
    send(store, released, 3, done_assoc)
    Associations(store.db).close(done_assoc, "released")
    wall, steady = time.time(), 1000.0
    assert monitor.complete_due(wall, steady) == []  # both seen; neither due yet
    # 1 s later the host's clock is set back an hour: the released series is due after its grace all the same
    assert monitor.complete_due(wall - 3600, steady + 1) == []
    assert [d.series_instance_uid for d in monitor.complete_due(wall - 3600 + 2, steady + GRACE + 0.1)] == [released]
    # then 2 h forward while the other series' association is open: not quiet, however the wall clock reads
    assert monitor.complete_due(wall + 7200, steady + 5) == []
    send(store, arriving, 3, open_assoc, start=3)  # the rest arrives (stored at the stepped wall clock's time)
    assert monitor.complete_due(time.time(), steady + 6) == []
    assert monitor.complete_due(time.time() + 10 * QUIET, steady + 6 + QUIET - 1) == []
    (done,) = monitor.complete_due(time.time() + 10 * QUIET, steady + 6 + QUIET + 0.1)
    assert done.series_instance_uid == arriving and done.job_id is not None
    assert len(queries.series_instances(store.db, arriving)) == 6

    restarted = CompletionMonitor(store, JobQueue(store), grace_s=GRACE, quiet_s=QUIET, model="default")
    late = uid("clock", "late")
    send(store, late, 2, Associations(store.db).open("CT3", "127.0.0.1"))
    # a monitor that first looks long after the last image (the node restarted) trusts the wall clock for that
    assert [d.series_instance_uid for d in restarted.complete_due(time.time() + QUIET + 1, 5.0)] == [late]


def test_after_a_step_back_a_second_association_of_a_series_gets_its_own_grace(
        store: Store, monitor: CompletionMonitor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 36: a second association that ends after the clock was set back ends "before" the first one did; its
    series completed 0.1 s after its release, the wait seeded at the first one's end counting through it."""
    series = uid("clock", "two")
    first = Associations(store.db).open("CT1", "127.0.0.1")
    send(store, series, 2, first)
    Associations(store.db).close(first, "released")
    steady = 500.0
    assert monitor.complete_due(time.time(), steady) == []  # seen just after the first release
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() - 3600)  # the host's clock set back an hour
    second = Associations(store.db).open("CT1", "127.0.0.1")  # within the first one's grace
    assert monitor.complete_due(time.time(), steady + 1) == []
    send(store, series, 2, second, start=2)
    assert monitor.complete_due(time.time(), steady + 5) == []  # still sending, long after the first one's grace
    Associations(store.db).close(second, "released")
    assert monitor.complete_due(time.time(), steady + 5.1) == []  # released: its own grace starts now
    (done,) = monitor.complete_due(time.time(), steady + 5.1 + GRACE + 0.1)
    assert done.series_instance_uid == series and len(queries.series_instances(store.db, series)) == 4


def test_a_series_over_two_associations_within_the_grace_period_is_one_job(
    store: Store, monitor: CompletionMonitor
) -> None:
    series = uid("c")
    first = Associations(store.db).open("CT1", "127.0.0.1")
    send(store, series, 2, first)
    Associations(store.db).close(first, "released")
    assert monitor.complete_due(time.time() + 0.5) == []
    second = Associations(store.db).open("CT1", "127.0.0.1")
    send(store, series, 2, second, start=2)
    assert monitor.complete_due(time.time() + GRACE + 1) == []  # the second one is still open
    Associations(store.db).close(second, "released")
    done = monitor.complete_due(time.time() + GRACE + 0.1)
    assert len(done) == 1
    assert len(store.series_instances(series)) == 4
    assert len(JobQueue(store).for_series(series)) == 1


def test_a_stow_request_holds_the_series_its_sender_s_earlier_requests_left_receiving(
    store: Store, monitor: CompletionMonitor
) -> None:
    """A series sent in two STOW-RS requests: while the second one's body uploads (longer than the grace
    period) the series waits for it; another sender's request or the same sender's other address holds nothing."""
    series, other = uid("stow-held"), uid("stow-other")
    associations = Associations(store.db)
    first = associations.open("STOW-RS", "10.0.0.5", hold_series=True, grace_s=GRACE)
    send(store, series, 2, first)
    other_first = associations.open("STOW-RS", "10.0.0.6", hold_series=True, grace_s=GRACE)
    send(store, other, 2, other_first)
    associations.close(first, "released")
    associations.close(other_first, "released")
    second = associations.open("STOW-RS", "10.0.0.5", hold_series=True, grace_s=GRACE)  # its body still uploading
    elsewhere = associations.open("STOW-RS", "10.0.0.7", hold_series=True, grace_s=GRACE)
    done = monitor.complete_due(time.time() + GRACE + 1)
    assert [d.series_instance_uid for d in done] == [other]  # held by nothing of its own sender
    send(store, series, 2, second, start=2)
    associations.close(second, "released")
    associations.close(elsewhere, "released")
    assert monitor.complete_due(time.time() + GRACE - 0.5) == []
    done = monitor.complete_due(time.time() + GRACE + 0.1)
    assert [d.series_instance_uid for d in done] == [series]
    assert len(store.series_instances(series)) == 4
    assert len(JobQueue(store).for_series(series)) == 1


def test_a_series_a_request_only_held_is_not_held_again_by_the_next(store: Store, monitor: CompletionMonitor) -> None:
    """Review 38: each request of a router re-linked every series its requests had held, so a router sending a
    request a second held a finished series until the quiet period."""
    first_series, second_series = uid("stow-chain-a"), uid("stow-chain-b")
    associations = Associations(store.db)
    first = associations.open("STOW-RS", "10.0.0.9", hold_series=True, grace_s=GRACE)
    send(store, first_series, 2, first)
    associations.close(first, "released")
    second = associations.open("STOW-RS", "10.0.0.9", hold_series=True, grace_s=GRACE)  # holds the first series
    send(store, second_series, 2, second)
    associations.close(second, "released")
    with store.transaction() as conn:  # the first request ended longer ago than the grace period
        conn.execute("UPDATE associations SET ended_at = ended_at - 10 WHERE id = ?", (first,))
    third = associations.open("STOW-RS", "10.0.0.9", hold_series=True, grace_s=GRACE)
    held = {row["series_instance_uid"] for row in store.conn().execute(
        "SELECT series_instance_uid FROM series_associations WHERE association_id = ?", (third,))}
    assert held == {second_series}  # what the second request carried, not what it only held
    done = monitor.complete_due(time.time() + GRACE + 1)
    assert [d.series_instance_uid for d in done] == [first_series]
    associations.close(third, "released")


def test_a_held_series_still_completes_by_the_quiet_rule_and_an_aborted_request_leaves_it_to_that_rule(
    store: Store, monitor: CompletionMonitor
) -> None:
    series = uid("stow-quiet")
    associations = Associations(store.db)
    first = associations.open("STOW-RS ris", "10.0.0.5", hold_series=True, grace_s=GRACE)
    send(store, series, 2, first)
    associations.close(first, "released")
    cut = associations.open("STOW-RS ris", "10.0.0.5", hold_series=True, grace_s=GRACE)
    associations.close(cut, "aborted")  # its body cut off: the sender will likely send it again
    assert monitor.complete_due(time.time() + GRACE + 1) == []
    held = associations.open("STOW-RS ris", "10.0.0.5", hold_series=True, grace_s=GRACE)  # one that never ends
    assert monitor.complete_due(time.time() + QUIET - 1) == []
    assert [d.series_instance_uid for d in monitor.complete_due(time.time() + QUIET + 0.1)] == [series]
    associations.close(held, "released")


def test_a_late_instance_reopens_the_series_and_queues_it_again(store: Store, monitor: CompletionMonitor) -> None:
    series = uid("d")
    queue = JobQueue(store)
    send(store, series, 2, None)
    monitor.complete_due(time.time() + GRACE + 0.1)
    job = queue.claim()
    assert job is not None and job.series_generation == 1
    send(store, series, 1, None, start=2)
    row = queries.series_row(store.db, series)
    assert row is not None and row["state"] == "receiving"
    row = queries.series_row(store.db, series)
    assert row is not None and row["generation"] == 2
    done = monitor.complete_due(time.time() + GRACE + 0.1)
    assert done[0].generation == 2
    jobs = queue.for_series(series)
    assert [(j.state, j.series_generation) for j in jobs] == [(JobState.RUNNING, 1), (JobState.QUEUED, 2)]


def test_a_waiting_job_is_updated_not_duplicated(store: Store, monitor: CompletionMonitor) -> None:
    series = uid("e")
    send(store, series, 1, None)
    monitor.complete_due(time.time() + GRACE + 0.1)
    send(store, series, 1, None, start=1)
    monitor.complete_due(time.time() + GRACE + 0.1)
    jobs = JobQueue(store).for_series(series)
    assert [(j.state, j.series_generation) for j in jobs] == [(JobState.QUEUED, 2)]


def test_replaced_bytes_reopen_a_complete_series(store: Store, monitor: CompletionMonitor) -> None:
    series = uid("f")
    put(store, encoded(0, series=series, seed=1))
    monitor.complete_due(time.time() + GRACE + 0.1)
    put(store, encoded(0, series=series, seed=1))  # identical: no-op
    row = queries.series_row(store.db, series)
    assert row is not None and row["state"] == "complete"
    put(store, encoded(0, series=series, seed=2))  # different bytes
    row = queries.series_row(store.db, series)
    assert row is not None and row["state"] == "receiving" and row["replaced_count"] == 1
    assert len(monitor.complete_due(time.time() + GRACE + 0.1)) == 1


def test_a_single_slice_series_is_valid(store: Store, monitor: CompletionMonitor) -> None:
    series = uid("g")
    send(store, series, 1, None)
    (done,) = monitor.complete_due(time.time() + GRACE + 0.1)
    assert done.disposition is SeriesDisposition.QUEUED and done.job_id is not None


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"modality": "MR"}, "modality MR, not CT"),
        ({"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")}, "localizer"),
        ({"manufacturer": "uronode"}, "derived by this node"),
        # probe 47: the dose screen's reason named the UID alone
        ({"sop_class": "1.2.840.10008.5.1.4.1.1.7"},
         "SOP class 1.2.840.10008.5.1.4.1.1.7 (Secondary Capture Image Storage) is not a CT image storage class"),
        ({"image_type": ("DERIVED", "SECONDARY")}, "derived secondary"),
        # probe 22: a console MPR (DERIVED\PRIMARY), a screen stored as CT, a bone reconstruction of the scan
        ({"image_type": ("DERIVED", "PRIMARY", "MPR"), "orientation": (0, 1, 0, 0, 0, -1)},
         "not an axial stack (its slices' normal is 90 degrees"),
        ({"position": False}, "images without a position (ImagePositionPatient)"),
        ({"convolution_kernel": "BONE"}, "a sharp-kernel reconstruction (ConvolutionKernel 'BONE')"),
        ({"convolution_kernel": "Br64\\3"}, "a sharp-kernel reconstruction (ConvolutionKernel 'BR64')"),
        ({"series_description": "KUB 5.0mm BONE"}, "(Series Description 'KUB 5.0mm BONE')"),
    ],
)
def test_series_the_model_cannot_read_are_recorded_with_the_reason(
    store: Store, monitor: CompletionMonitor, kwargs: SliceOptions, reason: str
) -> None:
    series = uid("h", reason)
    send(store, series, 2, None, **kwargs)
    (done,) = monitor.complete_due(time.time() + GRACE + 0.1)
    assert done.disposition is SeriesDisposition.SKIPPED
    assert done.reason is not None and reason in done.reason
    assert JobQueue(store).for_series(series) == []
    row = queries.series_row(store.db, series)
    assert row is not None and row["disposition"] == "skipped" and reason in row["reason"]


def test_derived_secondary_images_are_taken_when_asked_for(store: Store, monitor: CompletionMonitor) -> None:
    """Routed unasked they are skipped (above); uploaded to /api/predict (complete_now) they are the job."""
    series = uid("derived-upload")
    send(store, series, 1, None, image_type=("DERIVED", "SECONDARY", "REFORMATTED"))
    (done,) = monitor.complete_now([series])
    assert done.disposition is SeriesDisposition.QUEUED and done.reason is None
    assert [j.series_instance_uid for j in JobQueue(store).for_series(series)] == [series]
    # the other reasons stand when asked: a localizer is still no series for the model
    scout = uid("scout-upload")
    send(store, scout, 1, None, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    (skipped,) = monitor.complete_now([scout])
    assert skipped.disposition is SeriesDisposition.SKIPPED and "localizer" in (skipped.reason or "")


def test_after_a_crash_lost_associations_let_the_series_complete_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    series = uid("i")
    assoc = Associations(store.db).open("CT1", "127.0.0.1")
    send(store, series, 2, assoc)
    # the process dies here; a new one opens the same data directory
    store2 = Store(tmp_path / "data")
    monitor = CompletionMonitor(store2, JobQueue(store2), grace_s=GRACE, quiet_s=QUIET, model="default")
    assert monitor.complete_due(time.time() + GRACE + 1) == []  # still looks open
    store2.recover()
    # lost is no normal end: the sender will likely send again, so the quiet rule decides (probe9 finding 7)
    assert monitor.complete_due(time.time() + GRACE + 1) == []
    assert len(monitor.complete_due(time.time() + QUIET + 0.1)) == 1
    assert monitor.complete_due(time.time() + QUIET + 10) == []
    assert len(JobQueue(store2).for_series(series)) == 1


@pytest.mark.parametrize("outcome", ["aborted", "closed"])
def test_an_association_that_ends_without_release_leaves_its_series_to_the_quiet_rule(
    store: Store, monitor: CompletionMonitor, outcome: str
) -> None:
    """probe9 finding 7: a sender killed mid-series made its fragment a job 2 s later."""
    series = uid("killed-" + outcome)
    first = Associations(store.db).open("CT1", "127.0.0.1")
    send(store, series, 5, first)
    Associations(store.db).close(first, outcome)
    assert monitor.complete_due(time.time() + GRACE + 1) == []  # not after the grace period
    # the sender sends the whole series again, and releases: complete after the grace period, once
    again = Associations(store.db).open("CT1", "127.0.0.1")
    send(store, series, 12, again)
    Associations(store.db).close(again, "released")
    (done,) = monitor.complete_due(time.time() + GRACE + 0.1)
    assert done.series_instance_uid == series and done.disposition is SeriesDisposition.QUEUED
    assert len(queries.series_instances(store.db, series)) == 12


def test_an_aborted_series_still_completes_by_the_quiet_rule(store: Store, monitor: CompletionMonitor) -> None:
    series = uid("aborted-alone")
    assoc = Associations(store.db).open("CT1", "127.0.0.1")
    send(store, series, 3, assoc)
    Associations(store.db).close(assoc, "aborted")
    assert monitor.complete_due(time.time() + QUIET - 1) == []
    assert [d.series_instance_uid for d in monitor.complete_due(time.time() + QUIET + 0.1)] == [series]


def test_soft_tissue_and_tilted_series_are_read_and_asked_for_any_series_is(store: Store, tmp_path: Path) -> None:
    """What the new skips leave alone: a tilted gantry (22 degrees), a soft kernel whose description says bone
    window, a medium Siemens kernel; and an upload, where someone asks about the images, is read whatever they are;
    ``inference.sharp_kernel_series = "read"`` reads a bone reconstruction."""
    monitor = CompletionMonitor(store, JobQueue(store), grace_s=GRACE, quiet_s=QUIET, model="default")
    tilt = math.radians(22)
    read: list[tuple[str, SliceOptions]] = [
        ("tilted", {"orientation": (1, 0, 0, 0, math.cos(tilt), -math.sin(tilt))}),
        ("soft", {"convolution_kernel": "B30f", "series_description": "ABDOMEN BONE WINDOW"}),
        ("medium", {"convolution_kernel": "Br40d\\3"}), ("standard", {"convolution_kernel": "STANDARD"}),
        ("ge-soft", {"convolution_kernel": "SOFT", "series_description": "Bone window"}),
        # an Enhanced CT keeps its frames' positions in functional groups, none at the top level (review 23)
        ("enhanced", {"sop_class": "1.2.840.10008.5.1.4.1.1.2.1", "position": False})]
    for name, kwargs in read:
        send(store, uid("read", name), 2, None, **kwargs)
    done = monitor.complete_due(time.time() + GRACE + 0.1)
    assert [d.disposition for d in done] == [SeriesDisposition.QUEUED] * 6, [d.reason for d in done]
    asked_for: list[tuple[str, SliceOptions]] = [
        ("sagittal", {"orientation": (0, 1, 0, 0, 0, -1)}), ("bone", {"convolution_kernel": "FC30"}),
        ("screen", {"position": False})]
    for name, kwargs in asked_for:
        series = uid("asked", name)
        send(store, series, 2 if name != "screen" else 1, None, **kwargs)
        (asked,) = monitor.complete_now([series])
        assert asked.disposition is SeriesDisposition.QUEUED, (name, asked.reason)
    reading = CompletionMonitor(store, JobQueue(store), grace_s=GRACE, quiet_s=QUIET, model="default",
                                sharp_kernel_series="read")
    send(store, uid("read-bone"), 2, None, convolution_kernel="I70f")
    (bone,) = reading.complete_due(time.time() + GRACE + 0.1)
    assert bone.disposition is SeriesDisposition.QUEUED


@pytest.mark.parametrize(("kernel", "description", "sharp"), [
    ("BONEPLUS", "", True), ("LUNG", "", True), ("EDGE", "", True), ("B70f", "", True), ("Qr60", "", True),
    ("FC30", "", True), ("FC81", "", True), ("", "THORAX LUNGE", True), ("", "Abdomen Knochen 1.0", True),
    ("SOFT", "", False), ("STANDARD", "", False), ("B30f", "", False), ("I26f", "", False), ("FC03", "", False),
    ("FC18", "", False), ("B30f", "BONE", False), ("", "KUB 1.25mm", False), ("", "CT KUB LOW DOSE", False),
    ("", "STONE PROTOCOL", False), ("", "CT ABD/PELVIS W/O", False), ("FC30-H", "", True),
    # review 23: a kernel that names nothing sharp decides, whatever the description says
    ("STANDARD", "CT ABD PEL LUNG BASES", False), ("SOFT", "Bone window", False), ("FC18-H", "Abd Bone", False),
    ("DETAIL", "", False), ("B", "", False), ("UB", "", False), ("BODY SHARP", "", False), ("Br40d\\3", "BONE", False),
    ("", "CT ABD LUNG BASES", False), ("", "ABD PELVIS WO", False), ("", "Nieren Steinprotokoll", False),
])
def test_sharp_kernels_by_name(kernel: str, description: str, sharp: bool) -> None:
    assert (sharp_kernel(kernel, description) is not None) is sharp


def test_the_axial_tolerance_is_the_model_loader_s() -> None:
    """Completion skips what the loader would fail: the two tolerances are one number."""
    from inference.volume import AXIAL_TOLERANCE_DEG as LOADER

    assert AXIAL_TOLERANCE_DEG == LOADER
    assert not_axial(["1\\0\\0\\0\\0\\-1"] * 3) == pytest.approx(90.0)  # coronal
    assert not_axial(["1\\0\\0\\0\\1\\0"]) is None  # axial
    assert not_axial(["1\\0\\0\\0\\1\\0", "1\\0\\0\\0\\0\\-1"]) is None  # mixed: the loader says why
    assert not_axial(["", "1\\0\\0\\0\\0\\-1"]) is None  # unknown: the loader says why
    # the tilt limit itself, written with six decimals (30.0000116 degrees): read, as the loader reads it
    assert not_axial(["1\\0\\0\\0\\0.866025\\-0.5"] * 3) is None
    assert not_axial(["1\\0\\0\\0\\0.857167\\-0.515038"] * 3) == pytest.approx(31.0, abs=0.01)


def test_the_node_s_own_results_complete_without_an_info_line(
        store: Store, monitor: CompletionMonitor, caplog: pytest.LogCaptureFixture) -> None:
    """Every job's four result series complete too: logged at DEBUG, where a skipped MR stays a line to read."""
    send(store, uid("own-results"), 1, None, manufacturer="uronode")
    send(store, uid("an-mr"), 1, None, modality="MR")
    with caplog.at_level("INFO", logger="uronode.completion"):
        done = monitor.complete_due(time.time() + GRACE + 0.1)
    assert sorted(d.reason or "" for d in done) == ["derived by this node", "modality MR, not CT"]
    said = [r.getMessage() for r in caplog.records if "not for the model" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith("not for the model: modality MR, not CT")
    assert " (number 2) complete (1 instances)" in said[0]  # probe 47: which series, as a PACS lists it
