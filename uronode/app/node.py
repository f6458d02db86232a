"""The node in one process tree, put together from its parts: receivers, series completion, the
worker, delivery, retention and the HTTP server (the composition root; ``docs/architecture.md``).

``uronode serve`` calls :func:`serve`. The parent process owns the state
(the store's recovery, the completion monitor, the HTTP server) and
supervises the receiving processes and the worker; those die with it. Its background work
(completion, the supervisors, delivery, retention) runs as :mod:`uronode.loops`,
whose heartbeats ``/readyz`` watches.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import signal
import time
from functools import partial
from multiprocessing.context import SpawnProcess
from multiprocessing.sharedctypes import SynchronizedArray

import uvicorn
from starlette.types import ASGIApp

from dicomweb.app import create_app
from dicomweb.ops import ReadyCheck
from inference.runtime import model_available
from scp.server import make_listening_socket, run_receiver
from uronode.app.delivery import Deliverer
from uronode.completion import CompletionMonitor
from uronode.jobs import JobQueue, local_worker
from uronode.loops import Loops
from uronode.outbox import Outbox
from uronode.retention import purge
from uronode.settings import ConfigError, Settings
from uronode.store import Store

log = logging.getLogger(__name__)

COMPLETION_INTERVAL_S = 0.2
SUPERVISOR_INTERVAL_S = 1.0
SUPERVISOR_STALE_S = 300.0
"""A supervisor's round may restart a receiving process, which waits up to 120 s for it."""
DISPATCH_INTERVAL_S = 0.2
DELIVERY_INTERVAL_S = 1.0
DELIVERY_STALE_S = 1800.0
"""A delivery round sends up to a thousand instances, to peers that may be slow."""
RETENTION_STALE_S = 3600.0
"""A retention pass may delete many series."""


class Receivers:
    """The receiving processes, sharing one listening socket; restarts any that dies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.socket = make_listening_socket(settings.host, settings.scp.port)
        self.counts: SynchronizedArray[int] = self.ctx.Array("i", settings.scp.processes)
        self.procs: list[SpawnProcess | None] = [None] * settings.scp.processes
        self._stopping = False

    def _start(self, index: int) -> None:
        ready = self.ctx.Event()
        proc = self.ctx.Process(
            target=run_receiver,
            args=(self.settings.model_dump_json(), self.socket, self.counts, index, ready, os.getpid()),
            name=f"uronode-receiver-{index}",
            daemon=True,
        )
        proc.start()
        if not ready.wait(120):
            raise RuntimeError(f"receiving process {index} did not start")
        self.procs[index] = proc

    def start(self) -> None:
        for index in range(len(self.procs)):
            self._start(index)

    def check(self) -> None:
        """Restart every receiving process that has exited (one round of the supervisor loop)."""
        for index, proc in enumerate(self.procs):
            if proc is not None and not proc.is_alive() and not self._stopping:
                log.error("receiving process %d exited with %s; restarting it", index, proc.exitcode)
                self._start(index)

    def stop(self) -> None:
        self._stopping = True
        for proc in self.procs:
            if proc is not None and proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            if proc is not None:
                proc.join(max(0.1, deadline - time.monotonic()))
                if proc.is_alive():
                    proc.kill()
        self.socket.close()


SIGNAL_CAUSES = {
    signal.SIGKILL: "killed: out of memory?",  # the kernel's OOM killer sends it; so does kill -9
    signal.SIGSEGV: "segmentation fault: a crash in native code",
    signal.SIGBUS: "bus error: a crash in native code",
    signal.SIGABRT: "aborted",
}


def exit_cause(exitcode: int | None) -> str:
    """How a process ended, for a job's reason: ``exit code -9, killed: out of memory?``, ``exit code 1``."""
    if exitcode is None:
        return "exit code unknown"
    if exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        number = signal.Signals(-exitcode)
    except ValueError:
        return f"exit code {exitcode}, signal {-exitcode}"
    return f"exit code {exitcode}, {SIGNAL_CAUSES.get(number, number.name)}"


class WorkerProcess:
    """The process that runs the model; restarted if it dies, not started without a model.

    A job the process was running when it died is taken back before it restarts
    (:meth:`uronode.jobs.JobQueue.take_back`): queued again, or failed with the reason once it
    has had :data:`uronode.jobs.MAX_LOCAL_ATTEMPTS` tries; the node's other workers' jobs are not
    touched. A job it was running when :meth:`stop` had to kill it goes back to the queue, that
    try not counted. ``queue`` defaults to the one on the node's store (``settings.storage``).
    """

    def __init__(self, settings: Settings, queue: JobQueue | None = None) -> None:
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.proc: SpawnProcess | None = None
        if queue is None:
            storage = settings.storage
            queue = JobQueue(Store(storage.data_dir, fsync=storage.fsync,
                                   max_disk_used_percent=storage.max_disk_used_percent))
        self.queue = queue

    def start(self) -> None:
        # Imported here, not at the top: the worker module brings the model's libraries (highdicom,
        # SciPy, OpenCV: 51 MB measured), which the node's main process, serving HTTP, never uses.
        from uronode.app.worker import run_worker

        self.proc = self.ctx.Process(
            target=run_worker, args=(self.settings.model_dump_json(), os.getpid()), name="uronode-worker", daemon=True
        )
        self.proc.start()

    def check(self) -> None:
        """Restart the worker if it has exited, once the job it was running is taken back."""
        if self.proc is not None and not self.proc.is_alive():
            log.error("the worker (pid %s) exited with %s; restarting it", self.proc.pid, self.proc.exitcode)
            self._take_back()
            self.start()

    def _take_back(self) -> None:
        if self.proc is not None and self.proc.pid is not None:
            self.queue.take_back(local_worker(self.proc.pid), exit_cause(self.proc.exitcode))

    def stop(self) -> None:
        if self.proc is None:
            return
        if not self.proc.is_alive():  # it died after the supervisor's last round
            self._take_back()
            return
        self.proc.terminate()  # the worker finishes its job, then exits
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        if self.proc.pid is not None:
            self.queue.release(local_worker(self.proc.pid))


def http_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """uvicorn's settings for the node's HTTP side.

    httptools and uvloop (uvicorn's "standard" set) are named, so that a missing one fails at start-up
    instead of uvicorn falling back without a word to its pure-Python parser and asyncio's own loop,
    slower on every small answer (docs/benchmarks.md, DICOMweb).
    uvicorn's own reading of ``X-Forwarded-*`` (from 127.0.0.1 by default) is off: the node believes them
    only from ``dicomweb.trusted_proxies`` (:mod:`dicomweb.auth`, ``ForwardedScheme`` in :mod:`dicomweb.app`),
    so that a local process cannot put another address in the audit log.
    """
    return uvicorn.Config(app, host=settings.host, port=settings.dicomweb.port, log_config=None, access_log=False,
                          http="httptools", loop="uvloop", proxy_headers=False)

def model_missing(settings: Settings) -> str | None:
    """Why the worker cannot run: its model's folder is not there (None: it is)."""
    if model_available(settings.inference.model, settings.inference.models_dir):
        return None
    return f"model {settings.inference.model!r} not found under {settings.inference.models_dir}"


def serve(settings: Settings) -> None:
    """Run the node until SIGINT or SIGTERM."""
    if settings.queue.backend == "dramatiq" and importlib.util.find_spec("dramatiq") is None:
        raise ConfigError("queue.backend dramatiq needs Dramatiq: pip install 'uronode[distributed]'")
    store = Store(
        settings.storage.data_dir,
        fsync=settings.storage.fsync,
        max_disk_used_percent=settings.storage.max_disk_used_percent,
    )
    queue = JobQueue(store)
    store.recover()
    requeued = queue.recover()
    if requeued:
        log.warning("%d job(s) left running by a previous run are queued again", requeued)
    queue.restamp(settings.inference.model)
    receivers = Receivers(settings)
    receivers.start()
    loops = Loops()
    monitor = CompletionMonitor(
        store,
        queue,
        grace_s=settings.scp.completion_grace_s,
        quiet_s=settings.scp.completion_quiet_s,
        model=settings.inference.model,
    )
    loops.add("completion", monitor.complete_due, COMPLETION_INTERVAL_S)
    loops.add("receivers", receivers.check, SUPERVISOR_INTERVAL_S, stale_after_s=SUPERVISOR_STALE_S)
    if settings.delivery.destinations:
        outbox = Outbox(
            store,
            max_attempts=settings.delivery.max_attempts,
            backoff_s=settings.delivery.backoff_s,
            backoff_max_s=settings.delivery.backoff_max_s,
        )
        deliverer = Deliverer(outbox, settings.delivery, calling_ae=settings.scp.ae_title)
        loops.add("delivery", deliverer.run_once, DELIVERY_INTERVAL_S, stale_after_s=DELIVERY_STALE_S)
    if settings.queue.backend == "dramatiq":
        # Imported here: Dramatiq comes with the distributed extra, which the default node does without.
        from uronode.app.dispatch import Dispatcher

        dispatcher = Dispatcher(store, settings)
        loops.add("dispatch", dispatcher.publish_due, DISPATCH_INTERVAL_S)
        loops.add("sweep", dispatcher.sweep, settings.queue.sweep_interval_s)
    retention_days = settings.storage.retention_days
    if retention_days is not None:
        interval_s = settings.storage.retention_interval_s
        loops.add("retention", lambda: purge(store, retention_days), interval_s,
                  stale_after_s=max(3 * interval_s, RETENTION_STALE_S), first_round_at_once=True)
    workers = [WorkerProcess(settings) for _ in range(settings.inference.workers)]
    ready_checks: list[ReadyCheck] = []
    if workers:
        ready_checks.append(partial(model_missing, settings))
        if (missing := model_missing(settings)) is not None:
            log.error("%s: series are queued but not processed", missing)
            workers = []
    for worker in workers:
        worker.start()
    if workers:

        def check_workers() -> None:
            for worker in workers:
                worker.check()

        loops.add("workers", check_workers, SUPERVISOR_INTERVAL_S, stale_after_s=SUPERVISOR_STALE_S)
    loops.start()
    log.info(
        "uronode listening: DICOM %s on %s:%d (%d receiving processes), HTTP on %s:%d, data in %s",
        settings.scp.ae_title,
        settings.host,
        settings.scp.port,
        settings.scp.processes,
        settings.host,
        settings.dicomweb.port,
        store.root,
    )
    server = uvicorn.Server(http_config(create_app(settings, loops, ready_checks), settings))
    try:
        server.run()  # handles SIGINT/SIGTERM by returning
    finally:
        loops.stop()  # first, so that no supervisor restarts what is being stopped
        for worker in workers:
            worker.stop()
        receivers.stop()
        log.info("uronode stopped")
