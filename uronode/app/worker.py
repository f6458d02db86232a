"""The worker: takes queued jobs, runs the model, stores the results and hands them to the outbox.

It runs in its own process (``uronode serve`` starts one), loads the model
once, and is the only place TensorFlow runs: never in a DICOM or HTTP
handler. A job is a small record (series UID, generation, model); the worker
reads the series from the store, so the same loop can later run on another
machine that fetches series over WADO-RS.

Outcome of a job: ``delivering`` (results stored, waiting for destinations),
``delivered`` (no destinations, or all confirmed), or ``failed`` with the
reason (a series the model cannot read, a model error, an internal error);
the worker then goes on with the next job. It claims as ``local:<pid>``
(:func:`uronode.jobs.local_worker`), so that if the process dies on a job (out of
memory, a crash in a decoder) the node's supervisor takes back that job and no
other worker's (:class:`uronode.app.node.WorkerProcess`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Protocol

from pydicom import Dataset

from inference.errors import InferenceError
from inference.pipeline import Pipeline
from inference.postprocess import Findings
from inference.runtime import resolve_model_dir
from inference.volume import Volume
from inference.writers.results import findings_record, write_results
from uronode.audit import AuditLog
from uronode.db import is_resource_error
from uronode.errors import OutOfResources
from uronode.header import read_header
from uronode.jobs import JobNotRunning, JobQueue, local_worker, series_changed
from uronode.logs import setup_logging
from uronode.outbox import Outbox
from uronode.processes import DROPPED_JOB_EXIT, die_with_parent, say_why
from uronode.settings import Settings
from uronode.store import Store
from uronode.supersede import current_reports, owe_note_in, record_results, rejected_uids, retire
from uronode.types import DocumentReference, Job, JobState, StoreOutcome

log = logging.getLogger(__name__)

RESOURCE_PAUSE_S = 5.0
"""After a job was given back for want of resources (or the queue could not be read), the worker waits this
long before it claims again, doubling each time in a row up to :data:`RESOURCE_PAUSE_MAX_S`."""
RESOURCE_PAUSE_MAX_S = 60.0
HEARTBEAT_S = 1.0
"""How often the worker process tells the node it is alive (:class:`uronode.app.node.WorkerProcess`)."""
WATCH_S = 1.0
"""How often a worker process looks whether the job it is computing is still its own (``uronode cancel``)."""


class SeriesModel(Protocol):
    """The worker's seam with the model: a series' files in, its volume and the stones found out.

    :class:`inference.pipeline.Pipeline` is one (the model loaded in this process); anything else
    that keeps this promise (a model served elsewhere, a test's stand-in) can take its place.
    Raises :class:`inference.errors.InferenceError` for a series it cannot read.
    """

    def run_files(self, paths: Sequence[str | Path]) -> tuple[Volume, Findings]: ...


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Worker:
    """Runs claimed jobs (:meth:`run`, :meth:`run_job`). With ``on_dropped``, a thread looks every ``watch_s``
    whether the job being computed is still this worker's, and calls ``on_dropped(job)`` once it is not
    (cancelled, or taken back): the worker process passes :func:`stop_process`, which ends the process, so that
    a cancel stops the computation instead of letting it run to the end only to be dropped. It watches only while
    the model runs and the results are made in memory, never while they are stored: what is stored is recorded
    or taken out again (:meth:`run_job`). Without it (the default), a cancelled job's computation runs to its
    end and is then dropped."""

    def __init__(self, store: Store, settings: Settings, pipeline: SeriesModel, *,
                 on_dropped: Callable[[Job], None] | None = None, watch_s: float = WATCH_S) -> None:
        self.on_dropped = on_dropped
        self.watch_s = watch_s
        self.store = store
        self.settings = settings
        self.queue = JobQueue(store)
        self.outbox = Outbox(
            store,
            max_attempts=settings.delivery.max_attempts,
            backoff_s=settings.delivery.backoff_s,
            backoff_max_s=settings.delivery.backoff_max_s,
        )
        self.pipeline = pipeline

    def run_job(self, job: Job) -> JobState:
        """Run one claimed job to its outcome; never raises for a bad series."""
        instances = self.store.series_instances(job.series_instance_uid)
        if not instances:
            return self._fail(job, "the series has no instances in the store")
        started = time.perf_counter()
        try:
            with self._watching(job):
                volume, findings = self.pipeline.run_files([str(i.path) for i in instances])
                inference_s = time.perf_counter() - started
                results = write_results(volume, findings, predecessors=self._reports_replaced(job, findings),
                                        avoid=rejected_uids(self.store.conn(), job.series_instance_uid))
        except InferenceError as exc:
            changed = series_changed(self.store.conn(), job.series_instance_uid, job.series_generation)
            return self._fail(job, f"{changed} ({exc})" if changed else str(exc))
        current = self.queue.get(job.id)
        if current is None or current.state is not JobState.RUNNING or current.claimed_by != job.claimed_by:
            return self._dropped(job, current)  # cancelled while the model ran: nothing stored
        stored, new = [], []
        for ds in results.datasets:  # SEG, overlays, key objects, SR: whatever the writers made
            data = encode(ds)
            header = read_header([data])
            # a job run again makes the same UIDs (other times): the copy the destinations may hold stays
            outcome = self.store.put(header, [data], calling_ae=self.settings.scp.ae_title)
            found = self.store.get_instance(header.sop_instance_uid)
            if found is None:
                raise RuntimeError(f"result {header.sop_instance_uid} vanished from the store")
            stored.append(found)
            if outcome is StoreOutcome.STORED:
                new.append(header.sop_instance_uid)
        destinations = self.settings.delivery.destinations
        model = f"{findings.model_name} {findings.model_version}"
        owed = any(d.takes(i.header.sop_class_uid) for d in destinations for i in stored)
        state = JobState.DELIVERING if owed else JobState.DELIVERED
        try:
            with self.store.transaction() as conn:
                superseded = record_results(conn, job_id=job.id, source_series_uid=job.series_instance_uid,
                                            model=model, sop_instance_uids=[i.header.sop_instance_uid for i in stored])
                note = owe_note_in(conn, self.store.root, self.outbox, superseded, destinations=destinations,
                                   source_series_uid=job.series_instance_uid, model=model, job_id=job.id,
                                   calling_ae=instances[0].calling_ae)
                for destination in destinations:
                    for item in stored:
                        if not destination.takes(item.header.sop_class_uid):
                            continue
                        self.outbox.enqueue_in(
                            conn,
                            destination=destination.name,
                            sop_instance_uid=item.header.sop_instance_uid,
                            sop_class_uid=item.header.sop_class_uid,
                            path=item.path,
                            job_id=job.id,
                            calling_ae=instances[0].calling_ae,
                        )
                # in the same transaction: a cancel lands before the results are recorded, or after the job ended
                self.queue.finish_in(conn, job.id, state, findings=json.dumps(findings_record(findings, results)),
                                     seconds=inference_s, worker=job.claimed_by)
        except JobNotRunning:
            self.store.discard(new)  # cancelled while they were stored: none recorded, none sent
            return self._dropped(job, self.queue.get(job.id))
        retire(self.store.root, superseded, note, source_series_uid=job.series_instance_uid, model=model,
               job_id=job.id)
        AuditLog(self.store.root).record(
            "job_finished", job_id=job.id, series_instance_uid=job.series_instance_uid, state=state.value,
            stones=len(findings.stones), results=[i.header.sop_instance_uid for i in stored],
            model=model, seconds=round(time.perf_counter() - started, 2),
        )
        log.info(
            "job %d series %s: %d stone(s), %d result instance(s) in %.1f s, %s",
            job.id, job.series_instance_uid, len(findings.stones), len(stored), time.perf_counter() - started, state,
        )
        return state

    def _reports_replaced(self, job: Job, findings: Findings) -> list[DocumentReference]:
        """The current reports of this model on the job's series: the new report replaces them and says so."""
        model = f"{findings.model_name} {findings.model_version}"
        return [ref for made_by, ref in current_reports(self.store.conn(), job.series_instance_uid) if made_by == model]

    @contextmanager
    def _watching(self, job: Job) -> Iterator[None]:
        """Within the block, call ``on_dropped(job)`` (at most once) if the job stops being this worker's; not
        after the block has ended (the lock makes "ended" and "dropped" one or the other)."""
        on_dropped = self.on_dropped
        if on_dropped is None:
            yield
            return
        done = threading.Event()
        lock = threading.Lock()

        def watch() -> None:
            while not done.wait(self.watch_s):
                try:
                    current = self.queue.get(job.id)
                except sqlite3.Error as exc:  # the index busy or unreadable a moment: look again next time
                    log.debug("job %d: its state could not be read (%s)", job.id, exc)
                    continue
                if current is not None and current.state is JobState.RUNNING and current.claimed_by == job.claimed_by:
                    continue
                with lock:
                    if done.is_set():
                        return
                    now = "gone" if current is None else current.state.value + (
                        f" ({current.reason})" if current.reason else "")
                    log.warning("job %d series %s is no longer this worker's (%s): its computation is stopped,"
                                " nothing stored or sent", job.id, job.series_instance_uid, now)
                    on_dropped(job)
                    return

        watcher = threading.Thread(target=watch, name=f"watch-job-{job.id}", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            with lock:
                done.set()
            watcher.join()

    def _dropped(self, job: Job, current: Job | None) -> JobState:
        """The job stopped being this worker's while it ran (``uronode cancel``): its outcome is dropped."""
        now = "gone" if current is None else current.state.value + (f" ({current.reason})" if current.reason else "")
        log.warning("job %d series %s is no longer this worker's (%s): its outcome is dropped, nothing stored or sent",
                    job.id, job.series_instance_uid, now)
        return current.state if current is not None else JobState.FAILED

    def _fail(self, job: Job, reason: str) -> JobState:
        log.warning("job %d series %s failed: %s", job.id, job.series_instance_uid, reason)
        try:
            # only while it is this worker's (review 53: a job cancelled and claimed by another meanwhile was
            # failed, and counted against that worker)
            self.queue.finish(job.id, JobState.FAILED, reason, worker=job.claimed_by)
        except JobNotRunning:
            return self._dropped(job, self.queue.get(job.id))
        AuditLog(self.store.root).record(
            "job_finished", job_id=job.id, series_instance_uid=job.series_instance_uid, state="failed", reason=reason
        )
        return JobState.FAILED

    def run(self, stop: threading.Event, idle_s: float = 0.5) -> None:
        """Claim and run jobs until ``stop`` is set. The node's resources failing (a full disk, the index
        locked past its busy timeout or not writable) never end the process: a job they interrupt is given
        back, that try not counted (:meth:`uronode.jobs.JobQueue.give_back`), and the worker waits before it
        claims again, longer each time in a row. While the disk is over its watermark no job is claimed."""
        worker = local_worker(os.getpid())
        pause = RESOURCE_PAUSE_S
        held_back = False
        while not stop.is_set():
            try:  # no job is taken while its results could not be stored (probe 24: the model ran every minute)
                self.store.check_space()
            except (OutOfResources, OSError) as exc:  # OSError: the folder gone (a lost mount), as a full disk
                if not held_back:
                    log.warning("worker: no job is taken while %s (results could not be stored); looking again "
                                "every %g s or less", exc, RESOURCE_PAUSE_MAX_S)
                held_back = True
                stop.wait(pause)
                pause = min(pause * 2, RESOURCE_PAUSE_MAX_S)
                continue
            if held_back:
                log.info("worker: the disk is under its watermark again; jobs are taken")
                held_back, pause = False, RESOURCE_PAUSE_S
            try:
                job = self.queue.claim(worker)
            except sqlite3.Error as exc:
                if not is_resource_error(exc):
                    raise
                log.warning("worker: the job queue cannot be read or written (%s); trying again in %g s", exc, pause)
                stop.wait(pause)
                pause = min(pause * 2, RESOURCE_PAUSE_MAX_S)
                continue
            if job is None:
                pause = RESOURCE_PAUSE_S
                stop.wait(idle_s)
                continue
            if self._run_guarded(job, stop):
                pause = RESOURCE_PAUSE_S
            else:
                stop.wait(pause)
                pause = min(pause * 2, RESOURCE_PAUSE_MAX_S)

    def _run_guarded(self, job: Job, stop: threading.Event) -> bool:
        """Run one claimed job at its boundary; False when the node's resources stopped it (given back)."""
        try:
            self.run_job(job)
            return True
        except OutOfResources as exc:
            self._give_back(job, f"the node is out of resources: {exc}", stop)
        except sqlite3.Error as exc:
            if not is_resource_error(exc):
                self._fail_internal(job, exc, stop)
                return True
            self._give_back(job, f"the node's index cannot be written: {exc}", stop)
        except Exception as exc:  # noqa: BLE001 - the job boundary: fail it with the reason, go on
            self._fail_internal(job, exc, stop)
            return True
        return False

    def _fail_internal(self, job: Job, exc: Exception, stop: threading.Event) -> None:
        log.exception("job %d failed unexpectedly", job.id)
        try:
            self.queue.finish(job.id, JobState.FAILED, f"internal error: {type(exc).__name__}: {exc}",
                              worker=job.claimed_by)
        except JobNotRunning:
            self._dropped(job, self.queue.get(job.id))
        except sqlite3.Error as again:  # the index cannot take the failure either: the job waits, not counted
            self._give_back(job, f"the node's index cannot be written: {again}", stop)

    def _give_back(self, job: Job, reason: str, stop: threading.Event) -> None:
        """Queue the job again, that try not counted; while the index cannot take even that, try again (until
        the node stops the worker, which gives its job back itself: ``JobQueue.release``)."""
        pause = RESOURCE_PAUSE_S
        while True:
            try:
                self.queue.give_back(job.id, f"{reason}; queued again, the try not counted")
                return
            except sqlite3.Error as exc:
                log.warning("job %d: cannot be queued again yet (%s); trying again in %g s", job.id, exc, pause)
            if stop.wait(pause):
                return
            pause = min(pause * 2, RESOURCE_PAUSE_MAX_S)


def beat(heartbeat: Synchronized[float], stop: threading.Event) -> None:
    """Tell the node this process is alive, every :data:`HEARTBEAT_S` (a thread of its own: a long job does not
    stop it, a frozen process does)."""
    while True:
        heartbeat.value = time.monotonic()
        if stop.wait(HEARTBEAT_S):
            return


def stop_process(job: Job) -> None:
    """End this worker process at once with :data:`uronode.processes.DROPPED_JOB_EXIT` (the job it was computing
    is no longer its own); the node starts a new one. Its log is flushed first; nothing else is left half-done:
    it is called only while the model runs (:class:`Worker`)."""
    end_process(DROPPED_JOB_EXIT)


def end_process(code: int) -> None:
    """End this worker process at once with ``code``, its log flushed first: the interpreter's own teardown
    (TensorFlow's) is skipped, which held every stop of the node about a second a worker. Nothing is lost by
    it: every change the worker made is committed to the index, and its files are written whole, before it
    gets here."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(code)


def run_worker(settings_json: str, parent_pid: int | None = None, heartbeat: Synchronized[float] | None = None,
               model: SeriesModel | None = None) -> None:
    """Entry point of the worker process: load the model once, then take jobs until SIGTERM. ``heartbeat``
    (shared with the node) gets ``time.monotonic()`` every second from the start, model loading included.
    ``model``: what runs the jobs instead of the settings' model (a test's stand-in). A job cancelled while
    its model runs ends the process (:func:`stop_process`), which the node replaces.

    SIGINT is ignored: Ctrl+C in a terminal reaches every process of the node, and the worker would die in the
    middle of its job (a try counted against it); the node stops it with SIGTERM instead, as for any stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    stop = threading.Event()
    if heartbeat is not None:
        threading.Thread(target=beat, args=(heartbeat, stop), name="heartbeat", daemon=True).start()
    settings = Settings.model_validate_json(settings_json)
    setup_logging(settings.log_level)
    if model is None:
        started = time.perf_counter()
        try:
            pipeline = Pipeline(resolve_model_dir(settings.inference.model, settings.inference.models_dir))
        except Exception as exc:  # noqa: BLE001 - said on one line, and to the node for /readyz, then exit 1
            # probe 41: a damaged model was said only as a multi-line traceback without a time, and /readyz
            # said "see the log"
            reason = f"the model {settings.inference.model!r} could not be loaded: {type(exc).__name__}: {exc}"
            log.error("worker: %s", reason)
            say_why(Path(settings.storage.data_dir), reason)
            sys.exit(1)
        log.info("worker: model %s %s loaded in %.1f s", pipeline.name, pipeline.version,
                 time.perf_counter() - started)
        model = pipeline
    store = Store(settings.storage.data_dir, fsync=settings.storage.fsync,
                  max_disk_used_percent=settings.storage.max_disk_used_percent)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    Worker(store, settings, model, on_dropped=stop_process).run(stop)
    end_process(0)  # the job it was running is finished: the stop asked for
