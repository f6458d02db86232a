"""The node in one process tree: receivers, series completion and the HTTP server.

``uronode serve`` calls :func:`serve`. The parent process owns the state
(the store's recovery, the completion monitor, the HTTP server) and
supervises the receiving processes; those die with it.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from typing import Any

from uronode.completion import CompletionMonitor
from uronode.jobs import JobQueue
from uronode.settings import Settings
from uronode.store import Store

log = logging.getLogger(__name__)


class Receivers:
    """The receiving processes, sharing one listening socket; restarts any that dies."""

    def __init__(self, settings: Settings) -> None:
        from scp.server import make_listening_socket

        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.socket = make_listening_socket(settings.host, settings.scp.port)
        self.counts: Any = self.ctx.Array("i", settings.scp.processes)
        self.procs: list[Any] = [None] * settings.scp.processes
        self._stopping = False

    def _start(self, index: int) -> None:
        from scp.server import run_receiver

        ready = self.ctx.Event()
        proc = self.ctx.Process(
            target=run_receiver,
            args=(self.settings.model_dump_json(), self.socket, self.counts, index, ready),
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

    def supervise(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
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


class WorkerProcess:
    """The process that runs the model; restarted if it dies, not started without a model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.proc: Any = None

    def start(self) -> None:
        from uronode.worker import run_worker

        self.proc = self.ctx.Process(
            target=run_worker, args=(self.settings.model_dump_json(),), name="uronode-worker", daemon=True
        )
        self.proc.start()

    def supervise(self, stop: threading.Event) -> None:
        while not stop.wait(5.0):
            if self.proc is not None and not self.proc.is_alive():
                log.error("the worker exited with %s; restarting it", self.proc.exitcode)
                self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()


def model_available(settings: Settings) -> bool:
    from inference.errors import ModelError
    from inference.runtime import CARD_NAME, resolve_model_dir

    try:
        folder = resolve_model_dir(settings.inference.model, settings.inference.models_dir)
        return (folder / CARD_NAME).is_file()
    except ModelError:
        return False


def serve(settings: Settings) -> None:
    """Run the node until SIGINT or SIGTERM."""
    import uvicorn

    from dicomweb.app import create_app

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
    receivers = Receivers(settings)
    receivers.start()
    stop = threading.Event()
    monitor = CompletionMonitor(
        store,
        queue,
        grace_s=settings.scp.completion_grace_s,
        quiet_s=settings.scp.completion_quiet_s,
        model=settings.inference.model,
    )
    threads = [
        threading.Thread(target=monitor.run, args=(stop,), name="completion", daemon=True),
        threading.Thread(target=receivers.supervise, args=(stop,), name="supervisor", daemon=True),
    ]
    if settings.delivery.destinations:
        from uronode.delivery import Deliverer
        from uronode.outbox import Outbox

        outbox = Outbox(
            store,
            max_attempts=settings.delivery.max_attempts,
            backoff_s=settings.delivery.backoff_s,
            backoff_max_s=settings.delivery.backoff_max_s,
        )
        deliverer = Deliverer(outbox, settings.delivery, calling_ae=settings.scp.ae_title)
        threads.append(threading.Thread(target=deliverer.run, args=(stop,), name="delivery", daemon=True))
    if settings.storage.retention_days is not None:
        from uronode.retention import run_retention

        threads.append(threading.Thread(
            target=run_retention,
            args=(store, settings.storage.retention_days, settings.storage.retention_interval_s, stop),
            name="retention",
            daemon=True,
        ))
    workers = [WorkerProcess(settings) for _ in range(settings.inference.workers)]
    if workers and not model_available(settings):
        log.error("model %r not found under %s: series are queued but not processed",
                  settings.inference.model, settings.inference.models_dir)
        workers = []
    for worker in workers:
        worker.start()
        threads.append(threading.Thread(target=worker.supervise, args=(stop,), name="worker-supervisor", daemon=True))
    for thread in threads:
        thread.start()
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
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.dicomweb.port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    try:
        server.run()  # handles SIGINT/SIGTERM by returning
    finally:
        stop.set()
        for worker in workers:
            worker.stop()
        receivers.stop()
        for thread in threads:
            thread.join(5)
        log.info("uronode stopped")
