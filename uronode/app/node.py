"""The node in one process tree, put together from its parts: receivers, series completion, the
worker, delivery, retention and the HTTP server (the composition root; ``docs/architecture.md``).

``uronode serve`` calls :func:`serve`. The parent process owns the state
(the store's recovery, the completion monitor, the HTTP server) and
supervises the receiving processes and the worker; those die with it. Its background work
(completion, the supervisors, delivery, retention) runs as :mod:`uronode.loops`,
whose heartbeats ``/readyz`` watches. SIGINT and SIGTERM stop it alike (:class:`StopSignals`).
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import multiprocessing
import os
import resource
import signal
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from contextlib import contextmanager
from functools import partial
from multiprocessing.context import SpawnProcess
from multiprocessing.sharedctypes import Synchronized, SynchronizedArray
from multiprocessing.synchronize import Event as EventFlag
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from dicomweb.app import create_app
from dicomweb.ops import ReadyCheck
from inference.runtime import model_available
from scp.server import make_listening_socket, run_receiver
from uronode.app.delivery import Deliverer
from uronode.app.httpguard import GuardedHttpTools
from uronode.associations import Associations
from uronode.completion import CompletionMonitor
from uronode.db import DataDirUnusable, bump_counter
from uronode.files import PRIVATE_UMASK, disk_problem, keep_private
from uronode.jobs import JobQueue, local_worker
from uronode.loops import Loops
from uronode.outbox import Outbox
from uronode.processes import DROPPED_JOB_EXIT, read_why
from uronode.retention import purge
from uronode.settings import ConfigError, Settings
from uronode.steady import Waits
from uronode.store import SEEN_FILE, Store
from uronode.types import WORKER_DEATHS

log = logging.getLogger(__name__)

COMPLETION_INTERVAL_S = 0.2
SEEN_INTERVAL_S = 5.0
"""How often the node writes what its index has taken (``uronode.store.SEEN_FILE``)."""
SUPERVISOR_INTERVAL_S = 1.0
SUPERVISOR_STALE_S = 300.0
"""A supervisor's round may restart a receiving process, which waits up to 120 s for it."""
DISPATCH_INTERVAL_S = 0.2
DELIVERY_INTERVAL_S = 1.0
DELIVERY_STALE_S = 1800.0
"""A delivery round sends up to a thousand instances, to peers that may be slow."""
RETENTION_STALE_S = 3600.0
"""A retention pass may delete many series."""
WORKER_STALE_S = 60.0
"""A worker process whose heartbeat (every second, from a thread of its own) is older than this is frozen
(stopped, or stuck outside Python's reach): ``/readyz`` names it."""
RESTARTS_TOO_MANY = 3
RESTART_WINDOW_S = 600.0
"""A worker that died this many times within this window is crash-looping (a damaged model, a library that
does not load): ``/readyz`` names it, with how it ended the last time."""
FROZEN_KILL_AFTER = 2
"""A worker whose heartbeat is older than this many times ``WORKER_STALE_S`` is killed and replaced."""
QUICK_DEATH_S = 60.0
"""A worker that dies sooner than this after its start is restarted after a pause, doubling each time in a
row (1 s, 2 s, 4 s ...) up to :data:`RESTART_PAUSE_MAX_S`, not at once forever."""
RESTART_PAUSE_MAX_S = 60.0
WORKER_STOP_WAIT_S = 10.0
"""How long a stop waits for a worker process to finish the job it is running before it kills it (the job then
goes back to the queue, that try not counted)."""
RECEIVERS_STOP_WAIT_S = 10.0
"""How long a stop waits for the receiving processes to end before it kills those still running."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _wait_for_exit(proc: SpawnProcess, timeout_s: float, hurry: threading.Event | None) -> None:
    """Wait up to ``timeout_s`` for ``proc`` to exit, in short steps, so that ``hurry`` (set by a second stop
    signal) ends the wait at once instead of at the timeout."""
    deadline = time.monotonic() + timeout_s
    while proc.is_alive() and not (hurry is not None and hurry.is_set()):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        proc.join(min(left, 0.1))


def _remove_spares(tmp_dir: Path, pid: int | None) -> None:
    """Remove the temporary files (spares made ahead, a file half-written) of a process that died; the node
    goes on, so its start-up does not clean them (:class:`uronode.files.DurableFiles` names them by pid)."""
    if pid is None:
        return
    for spare in tmp_dir.glob(f"{pid}-*.part"):
        try:
            spare.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("temporary file %s could not be removed: %s", spare, exc.strerror or exc)


class Receivers:
    """The receiving processes, sharing one listening socket; restarts any that dies."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store
        self.ctx = multiprocessing.get_context("spawn")
        self.socket = make_listening_socket(settings.host, settings.scp.port)
        # the associations each receiving process holds, by host (scp.policy.AssociationSlots)
        self.held: SynchronizedArray[int] = self.ctx.Array("q", settings.scp.processes * settings.scp.max_associations)
        self.procs: list[SpawnProcess | None] = [None] * settings.scp.processes
        self._stopping = False

    def _spawn(self, index: int) -> EventFlag:
        """Start receiving process ``index``; the event it sets once it accepts associations."""
        ready = self.ctx.Event()
        proc = self.ctx.Process(
            target=run_receiver,
            args=(self.settings.model_dump_json(), self.socket, self.held, index, ready, os.getpid()),
            name=f"uronode-receiver-{index}",
            daemon=True,
        )
        proc.start()
        self.procs[index] = proc
        return ready

    @staticmethod
    def _await(index: int, ready: EventFlag) -> None:
        if not ready.wait(120):
            raise RuntimeError(f"receiving process {index} did not start")

    def _start(self, index: int) -> None:
        self._await(index, self._spawn(index))

    def start(self) -> None:
        """Start every receiving process at once (each takes about half a second to import and open its index),
        then wait until each accepts associations."""
        started = [self._spawn(index) for index in range(len(self.procs))]
        for index, ready in enumerate(started):
            self._await(index, ready)

    def check(self) -> None:
        """Restart every receiving process that has exited (one round of the supervisor loop)."""
        for index, proc in enumerate(self.procs):
            if proc is not None and not proc.is_alive() and not self._stopping:
                log.error("receiving process %d exited with %s; restarting it", index, proc.exitcode)
                if self.store is not None:  # what the dead process left: its associations, its temporary files
                    if proc.pid is not None:
                        Associations(self.store.db).close_of_process(proc.pid)
                    _remove_spares(self.store.tmp_dir, proc.pid)
                self._start(index)

    def stop(self, hurry: threading.Event | None = None) -> None:
        """Ask every receiving process to end (SIGTERM) and kill those still running after
        :data:`RECEIVERS_STOP_WAIT_S`, or at once when ``hurry`` is set."""
        self._stopping = True
        for proc in self.procs:
            if proc is not None and proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + RECEIVERS_STOP_WAIT_S
        for proc in self.procs:
            if proc is not None:
                _wait_for_exit(proc, max(0.1, deadline - time.monotonic()), hurry)
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
    try not counted. ``queue`` defaults to the one on the node's store (``settings.storage``). A process that
    ended itself because its job was cancelled while the model ran (:data:`uronode.processes.DROPPED_JOB_EXIT`)
    is replaced at once and not counted as a death.
    """

    def __init__(
        self,
        settings: Settings,
        queue: JobQueue | None = None,
        *,
        target: Callable[..., None] | None = None,
        stale_after_s: float = WORKER_STALE_S,
        restart_pause_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.proc: SpawnProcess | None = None
        if queue is None:
            storage = settings.storage
            queue = JobQueue(Store(storage.data_dir, fsync=storage.fsync,
                                   max_disk_used_percent=storage.max_disk_used_percent))
        self.queue = queue
        self.target = target
        """The process's entry point, called as ``run_worker(settings_json, parent_pid, heartbeat)``."""
        self.stale_after_s = stale_after_s
        self.restart_pause_s = restart_pause_s
        self.heartbeat: Synchronized[float] = self.ctx.Value("d", 0.0)
        """``time.monotonic()`` of the process's last heartbeat (0: none yet)."""
        self.started_at = 0.0
        self.deaths: deque[float] = deque(maxlen=64)  # more than die in RESTART_WINDOW_S past the restart pauses
        self.last_exit: str | None = None
        self._quick_deaths = 0
        self._restart_at: float | None = None
        self._kill_cause: str | None = None
        self._exit_said = False
        self._job_waits = Waits()
        """How long the job it runs has run (:meth:`_job_ran`)."""
        """Whether :attr:`last_exit` says why (the process said it, or the node killed it), not only how."""
        """Why the node killed the process itself (frozen), for the job's reason and the log."""

    def start(self) -> None:
        target = self.target
        if target is None:
            # Imported here, not at the top: the worker module brings the model's libraries (highdicom,
            # SciPy, OpenCV: 51 MB measured), which the node's main process, serving HTTP, never uses.
            from uronode.app.worker import run_worker

            target = run_worker
        # A new shared value for each process: one that ended while its beat held the value's lock (killed, or
        # ended itself on a cancelled job: os._exit) leaves that lock taken for good, and the next process's first
        # beat, and /readyz reading it, would wait forever (review 19).
        self.heartbeat = self.ctx.Value("d", 0.0)
        self.heartbeat.value = time.monotonic()  # its start counts as a beat: it has a minute to make its own
        self.started_at = time.monotonic()
        self.proc = self.ctx.Process(
            target=target, args=(self.settings.model_dump_json(), os.getpid(), self.heartbeat),
            name="uronode-worker", daemon=True,
        )
        self.proc.start()

    def check(self) -> None:
        """Restart the worker if it has exited, once the job it was running is taken back and its temporary
        files removed; after a pause when it died soon after its start (:data:`QUICK_DEATH_S`). A worker whose
        heartbeat is older than :data:`FROZEN_KILL_AFTER` times ``stale_after_s`` (stopped, or stuck beyond
        Python's reach) is killed first, and so replaced (probe 41: a stopped worker held its job and the queue
        for good, while ``uronode cancel`` said a new one would take its place)."""
        if self.proc is None:
            return
        now = time.monotonic()
        if self.proc.is_alive():
            age = now - self.heartbeat.value
            ran = self._job_ran(now)
            if ran is not None and ran[1] > self.settings.inference.job_timeout_s:
                log.error("the worker (pid %s) has run job %d for %.0f s, longer than inference.job_timeout_s: "
                          "killing it; the job goes back to the queue, the try counted", self.proc.pid, ran[0], ran[1])
                self._kill_cause = (f"killed by the node: the job ran for more than "
                                    f"{self.settings.inference.job_timeout_s:.0f} s (inference.job_timeout_s)")
                self.proc.kill()
                self.proc.join(10)
            elif age > FROZEN_KILL_AFTER * self.stale_after_s:
                log.error("the worker (pid %s) has not beaten for %.0f s (frozen or stopped): killing it; its job "
                          "goes back to the queue, the try counted", self.proc.pid, age)
                self._kill_cause = f"killed by the node: it had not beaten for {age:.0f} s, frozen or stopped"
                self.proc.kill()
                self.proc.join(10)
            elif self._quick_deaths and now - self.started_at >= QUICK_DEATH_S:
                self._quick_deaths = 0  # it started and stays up: a death now is no longer one "in a row"
            if self.proc.is_alive():
                return
        if self._restart_at is None and self.proc.exitcode == DROPPED_JOB_EXIT:
            # it stopped the computation of a job that is no longer its own (cancelled): no death, a new one now
            self._take_back()  # nothing left running in its name, unless it was taken in the last moment
            _remove_spares(self.queue.store.tmp_dir, self.proc.pid)
            log.info("the worker (pid %s) stopped the computation of a job cancelled while it ran; starting a new"
                     " one", self.proc.pid)
            self.start()
            return
        if self._restart_at is None:  # found dead this round
            self._take_back()
            _remove_spares(self.queue.store.tmp_dir, self.proc.pid)
            why = read_why(self.queue.store.root, self.proc.pid)  # what it said before it ended (probe 41)
            self._exit_said = bool(self._kill_cause or why)
            self.last_exit = self._kill_cause or exit_cause(self.proc.exitcode) + (f": {why}" if why else "")
            self._kill_cause = None
            self.deaths.append(now)
            self._count_death()
            self._quick_deaths = self._quick_deaths + 1 if now - self.started_at < QUICK_DEATH_S else 0
            pause = 0.0 if self._quick_deaths < 2 else min(self.restart_pause_s * 2 ** (self._quick_deaths - 2),
                                                            RESTART_PAUSE_MAX_S)
            self._restart_at = now + pause
            log.error("the worker (pid %s) exited with %s; restarting it%s", self.proc.pid, self.proc.exitcode,
                      f" in {pause:g} s (it died {self._quick_deaths} times in a row soon after starting)"
                      if pause else "")
        if now >= self._restart_at:
            self._restart_at = None
            self.start()

    def _count_death(self) -> None:
        """``uronode_worker_deaths_total``: a worker killed by the kernel now and then, each time after more than a
        minute up, made /readyz fail for a minute at most, and only the log said it (probe 57)."""
        try:
            with self.queue.store.transaction() as conn:
                bump_counter(conn, WORKER_DEATHS)
        except sqlite3.Error as exc:  # a full disk: the death itself is logged
            log.error("the worker's death could not be counted in the index: %s", exc)

    def _job_ran(self, now: float) -> tuple[int, float] | None:
        """The job this worker process runs and how long it has run (on the steady clock once seen: a step of the
        host's clock is no time run), or None while it runs none."""
        if self.proc is None or self.proc.pid is None:
            return None
        try:
            row = self.queue.store.conn().execute(
                "SELECT id, updated_at FROM jobs WHERE state = 'running' AND claimed_by = ? ORDER BY id LIMIT 1",
                (local_worker(self.proc.pid),)).fetchone()
        except sqlite3.Error:
            return None  # the index busy a moment: looked at again next round
        if row is None:
            return None
        return int(row["id"]), self._job_waits.waited("job", (row["id"], row["updated_at"]), row["updated_at"],
                                                      time.time(), now)

    def problem(self, now: float | None = None) -> str | None:
        """Why this worker cannot be trusted to run jobs (for ``/readyz``), or None: it died
        :data:`RESTARTS_TOO_MANY` times within :data:`RESTART_WINDOW_S`, or it is alive and its heartbeat is
        older than ``stale_after_s``."""
        if self.proc is None:
            return None
        at = time.monotonic() if now is None else now
        if self.proc.is_alive():  # what it does now first (probe 41: an old crash loop hid a frozen worker)
            age = at - self.heartbeat.value
            if age > self.stale_after_s:
                return (f"the worker (pid {self.proc.pid}) has not beaten for {age:.0f} s: frozen or stopped? It is "
                        f"killed and replaced after {FROZEN_KILL_AFTER * self.stale_after_s:.0f} s")
            if at - self.started_at >= QUICK_DEATH_S:
                return None  # up and beating since: recovered, whatever it did before (probe 41: red for 10 min)
        recent = [t for t in self.deaths if at - t <= RESTART_WINDOW_S]
        if len(recent) >= RESTARTS_TOO_MANY:
            # the deaths' own span (probe 57: the count stopped at 3 and the span ran on to now)
            return (f"the worker died {len(recent)} times in {recent[-1] - recent[0]:.0f} s (last: {self.last_exit})"
                    + ("" if self._exit_said else "; see the log for why"))
        return None

    def _take_back(self) -> None:
        if self.proc is not None and self.proc.pid is not None:
            self.queue.take_back(local_worker(self.proc.pid), self._kill_cause or exit_cause(self.proc.exitcode))

    def stop(self, hurry: threading.Event | None = None) -> None:
        """Stop the process: it finishes the job it is running, for up to :data:`WORKER_STOP_WAIT_S` (no wait
        when ``hurry`` is set), then it is killed and that job goes back to the queue, the try not counted."""
        if self.proc is None:
            return
        if not self.proc.is_alive():  # it died after the supervisor's last round
            self._take_back()
            return
        self.proc.terminate()  # the worker finishes its job, then exits
        _wait_for_exit(self.proc, WORKER_STOP_WAIT_S, hurry)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        if self.proc.pid is not None:
            self.queue.release(local_worker(self.proc.pid))


class StopSignals:
    """SIGINT and SIGTERM while the node runs, handled alike: the first asks for a clean stop, a second for a
    stop at once, and a third ends the process outright.

    The node handles them itself, not uvicorn, because uvicorn raises the signal again once its server has
    shut down: for SIGTERM (what Docker, Kubernetes and systemd send) that ended the process before the node's
    clean-up, so the worker was killed outright and its job, left running, had that try counted at the next
    start. The first signal sets :attr:`requested` and tells the HTTP server to shut down; the clean-up that
    follows waits for the worker's job and the receiving processes. A second sets :attr:`hurry`, which ends
    those waits (the processes are killed, the job still goes back to the queue, the try not counted) and
    makes the HTTP server stop without waiting for its open connections.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.hurry = threading.Event()
        self.server: uvicorn.Server | None = None
        """The HTTP server to stop; a signal that came before it was set reaches it through :attr:`requested`."""

    @contextmanager
    def installed(self) -> Generator[StopSignals, None, None]:
        """Handle SIGINT and SIGTERM within the block; the handlers there before are put back after it."""
        previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def unless_stopping(self, check: Callable[[], None]) -> Callable[[], None]:
        """``check`` (a supervisor's round) made to do nothing once a stop is asked for: a child process that
        ends then (SIGINT from a terminal, or SIGTERM from systemd, reaches every process of the node) is not
        restarted only to be stopped."""

        def round_() -> None:
            if not self.requested.is_set():
                check()

        return round_

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.requested.is_set():
            self.requested.set()
            log.info("%s: stopping (a second SIGINT or SIGTERM stops at once)", name)
            if self.server is not None:
                self.server.should_exit = True
            return
        # first, so that a third signal, even one that comes while this one is handled, takes its default
        # action: the process ends there and then
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        self.hurry.set()
        log.warning("%s while stopping: stopping at once; the worker and the receiving processes are not waited"
                    " for", name)
        if self.server is not None:
            self.server.force_exit = True


class HttpServer(uvicorn.Server):
    """uvicorn's server without its signal handling: :class:`StopSignals` stops it, and the signal is not
    raised again once it has shut down (that ended the node before its clean-up)."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown; when forced (a second stop signal) it leaves the application's own shutdown out,
        and the cancelled application then logs an ERROR with a traceback. The node's takes no time, so it is
        run even then: the log of a forced stop shows nothing that went wrong."""
        await super().shutdown(sockets)
        if self.force_exit:
            await self.lifespan.shutdown()


def http_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """uvicorn's settings for the node's HTTP side.

    httptools (with the bounds on a request's head of :mod:`uronode.app.httpguard`, probe 40) and uvloop
    (uvicorn's "standard" set) are named, so that a missing one fails at start-up
    instead of uvicorn falling back without a word to its pure-Python parser and asyncio's own loop,
    slower on every small answer (docs/benchmarks.md, DICOMweb).
    uvicorn's own reading of ``X-Forwarded-*`` (from 127.0.0.1 by default) is off: the node believes them
    only from ``dicomweb.trusted_proxies`` (:mod:`dicomweb.auth`, ``ForwardedScheme`` in :mod:`dicomweb.app`),
    so that a local process cannot put another address in the audit log.
    """
    return uvicorn.Config(app, host=settings.host, port=settings.dicomweb.port, log_config=None, access_log=False,
                          http=GuardedHttpTools, loop="uvloop", proxy_headers=False)

def model_missing(settings: Settings) -> str | None:
    """Why the worker cannot run: its model's folder is not there (None: it is)."""
    if model_available(settings.inference.model, settings.inference.models_dir):
        return None
    return f"model {settings.inference.model!r} not found under {settings.inference.models_dir}"


def whatever_the_store(check: Callable[[], str | None]) -> ReadyCheck:
    """A ``/readyz`` condition that holds or not whether the store takes work."""
    return lambda _store_takes_work: check()


def jobs_unattended(queue: JobQueue, settings: Settings, store_takes_work: bool) -> str | None:
    """Jobs wait and none runs: no worker takes them (none configured, none started, only remote workers of
    another model). Waiting means longer than ``queue.claim_timeout_s``, the time a published job is given to
    be claimed. Silent while the store takes no work (over its disk watermark, its index locked): no job is
    taken on purpose then, and ``/readyz`` names that reason (review 28)."""
    waited_s = settings.queue.claim_timeout_s
    if not store_takes_work or not (count := queue.unattended(waited_s)):
        return None
    takers = ("the node's workers (inference.workers)" if settings.queue.backend != "dramatiq"
              else f"a remote worker running model {settings.inference.model!r}, or the node's own workers")
    return f"{count} job(s) queued for more than {waited_s:.0f} s and none running: no worker takes them ({takers})"


def workers_problem(workers: list[WorkerProcess]) -> str | None:
    """The first of the worker processes that cannot run jobs (crash-looping, frozen), or None."""
    for number, worker in enumerate(workers):
        if (problem := worker.problem()) is not None:
            return problem if len(workers) == 1 else f"worker {number}: {problem}"
    return None


def port_free(host: str, port: int, what: str) -> None:
    """Nothing listens on ``port`` at any address ``host`` names (the node binds it later, as before); an
    OSError naming the port when something does. A check, not a reservation: a port bound and not listening
    is no reservation under SO_REUSEADDR (review 31), and a port that listens before the node serves would
    hold callers until it does, where a port that answers has meant a node that serves."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(exc.errno, f"cannot listen for {what} on {host or '*'}:{port}: {exc.strerror}") from None
    for family, kind, proto, _, address in dict.fromkeys(infos):
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue  # a family the kernel lacks (IPv6 turned off): the node would not bind it either
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a connection in TIME_WAIT is no user
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
                sock.listen(1)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot listen for {what} on {host or '*'}:{port}: {exc.strerror}") from None


def hold_data_dir(root: Path) -> int | None:
    """Lock the data folder for this ``uronode serve`` (an exclusive ``flock`` on the folder itself, held while
    the process lives; nothing is written into it); the descriptor that holds it, None where the folder does
    not exist yet (nothing to guard) or cannot be locked (a file system without locks: said, not fatal).

    Probe 31: a second node started on the folder of a running one (an upgrade started before the old node
    was stopped) brought its index up to its own schema, which the running node then refused, C-STORE by
    C-STORE, and took back the running node's jobs as "left running by a previous run". Now it stops first."""
    if not root.is_dir():
        return None
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        log.warning("the data folder %s could not be opened to lock it: %s", root, exc.strerror or exc)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirUnusable(f"the data folder {root} is in use by another uronode serve (or a uronode reindex):"
                              " stop that one first (docs/operations.md, \"Upgrading uronode\"), or give this one"
                              " a data folder of its own (storage.data_dir)") from None
    except OSError as exc:
        os.close(fd)
        log.warning("the data folder %s could not be locked (%s): a second node started on it would not be"
                    " stopped", root, exc.strerror or exc)
        return None
    return fd


def drop_unwanted(outbox: Outbox, settings: Settings) -> dict[str, int]:
    """:meth:`Outbox.drop_unwanted` for the node's destinations; an index it cannot write now is left for the
    delivery loop (which says the same per delivery)."""
    try:
        return outbox.drop_unwanted(settings.delivery.destinations)
    except sqlite3.Error as exc:
        log.warning("deliveries no longer wanted could not be dropped now: %s", exc)
        return {}


def open_files_to_hard_limit() -> int:
    """Raise this process's limit of open files (inherited by the receiving processes and workers) to the hard
    limit the system allows; returns it. Every connection holds a descriptor: at the usual soft limit of 1,024,
    a thousand idle HTTP connections had every request fail and the audit log unwritten (probe 40)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # a container that forbids it: the soft limit stays
            log.warning("the limit of open files stays at %d (the hard limit %d could not be set: %s)", soft, hard,
                        exc)
            return soft
        return hard
    return soft


def serve(settings: Settings) -> None:
    """Run the node until SIGINT or SIGTERM, then stop it cleanly (:class:`StopSignals`): the HTTP server, the
    background loops, the workers (a job they are running goes back to the queue, the try not counted) and the
    receiving processes, in that order."""
    if settings.queue.backend == "dramatiq" and importlib.util.find_spec("dramatiq") is None:
        raise ConfigError("queue.backend dramatiq needs Dramatiq: pip install 'uronode[distributed]'")
    os.umask(PRIVATE_UMASK)  # before anything is made: the index, its journal, the metadata cache, every folder
    settings.scp.ssl_context()  # here, one sentence: in each receiving process it was a traceback and a 2-minute wait
    open_files_to_hard_limit()
    # The ports first, then the folder's lock, then the index (probe 31): a node of an earlier version, which
    # takes no lock, still listens on them while it runs, and nothing is touched while it does
    port_free(settings.host, settings.scp.port, "DICOM")
    port_free(settings.host, settings.dicomweb.port, "HTTP")
    root = Path(settings.storage.data_dir).resolve()
    held = hold_data_dir(root)
    store = Store(  # DataDirUnusable, naming the folder and the cause, when it cannot be used
        root,
        fsync=settings.storage.fsync,
        max_disk_used_percent=settings.storage.max_disk_used_percent,
    )
    if held is None:
        hold_data_dir(store.root)  # made just now: locked from here on (the descriptor lives with the process)
    keep_private(store.root)
    queue = JobQueue(store)
    try:
        store.recover()
        requeued = queue.recover()
        queue.restamp(settings.inference.model)
    except (sqlite3.Error, OSError) as exc:
        raise DataDirUnusable(f"the data folder {store.root} cannot be used: the start-up recovery could not write"
                              f" the index: {disk_problem(store.root, exc)}") from exc
    if requeued:
        log.warning("%d job(s) left running by a previous run are queued again", requeued)
    for caution in settings.cautions():
        log.warning("%s", caution)
    with StopSignals().installed() as signals:  # from here on, a stop signal stops the node cleanly
        _run(settings, store, queue, signals)


def _run(settings: Settings, store: Store, queue: JobQueue, signals: StopSignals) -> None:
    """Start the node's parts, serve HTTP until a stop signal, then stop the parts (:func:`serve`)."""
    receivers = Receivers(settings, store)
    receivers.start()
    loops = Loops()
    outbox = Outbox(
        store,
        max_attempts=settings.delivery.max_attempts,
        backoff_s=settings.delivery.backoff_s,
        backoff_max_s=settings.delivery.backoff_max_s,
    ) if settings.delivery.destinations else None
    monitor = CompletionMonitor(
        store,
        queue,
        grace_s=settings.scp.completion_grace_s,
        quiet_s=settings.scp.completion_quiet_s,
        model=settings.inference.model,
        contrast_series=settings.inference.contrast_series,
        sharp_kernel_series=settings.inference.sharp_kernel_series,
        other_region_series=settings.inference.other_region_series,
        outbox=outbox,  # a withdrawn series' rejection notes (its images all moved to another series)
        destinations=settings.delivery.destinations,
    )
    loops.add("completion", monitor.complete_due, COMPLETION_INTERVAL_S)
    store.note_seen()
    loops.add("seen", store.note_seen, SEEN_INTERVAL_S)  # what the index has taken, for the next start (probe 49)
    loops.add("receivers", signals.unless_stopping(receivers.check), SUPERVISOR_INTERVAL_S,
              stale_after_s=SUPERVISOR_STALE_S)
    if outbox is not None:
        # what the destinations as now configured do not want is no longer owed (probe 41: a destination removed,
        # or its results narrowed, left deliveries retried for a day and their jobs failed)
        if settings.delivery.destinations:  # a node started without its destinations drops nothing on that word
            for why, count in drop_unwanted(outbox, settings).items():
                log.warning("%d result(s) owed are not sent: %s (delivery.destinations)", count, why)
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
    if not workers and settings.queue.backend != "dramatiq":
        # a node that only receives is allowed (maintenance, tests), but said at once (probe 20: jobs waited
        # for ever while nothing said why)
        log.warning("inference.workers is 0 and queue.backend is %r: series are queued and no job will run here "
                    "(set inference.workers, or queue.backend = \"dramatiq\" with remote workers)",
                    settings.queue.backend)
    ready_checks: list[ReadyCheck] = [partial(jobs_unattended, queue, settings)]
    waiting_for_model = False
    if workers:
        ready_checks.append(whatever_the_store(partial(model_missing, settings)))
        if (missing := model_missing(settings)) is not None:
            log.error("%s: series are queued but not processed; the workers start once it is there", missing)
            waiting_for_model = True
        ready_checks.append(whatever_the_store(partial(workers_problem, workers)))
    for worker in workers if not waiting_for_model else ():
        worker.start()
    if workers:

        def check_workers() -> None:
            nonlocal waiting_for_model
            if waiting_for_model:  # probe 41: a models folder put back had needed a restart that nothing named
                if model_missing(settings) is not None:
                    return
                log.warning("model %r found under %s: starting the workers", settings.inference.model,
                            settings.inference.models_dir)
                waiting_for_model = False
                for worker in workers:
                    worker.start()
                return
            for worker in workers:
                worker.check()

        loops.add("workers", signals.unless_stopping(check_workers), SUPERVISOR_INTERVAL_S,
                  stale_after_s=SUPERVISOR_STALE_S)
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
    server = HttpServer(http_config(create_app(settings, loops, ready_checks), settings))
    signals.server = server
    if signals.requested.is_set():  # a signal during the start: the server stops as soon as it has started
        server.should_exit = True
    if signals.hurry.is_set():
        server.force_exit = True
    try:
        server.run()  # returns once a stop signal has shut it down
    finally:
        loops.stop()  # first, so that no supervisor restarts what is being stopped
        for worker in workers:
            worker.stop(signals.hurry)
        receivers.stop(signals.hurry)
        try:
            store.note_seen()
        except (sqlite3.Error, OSError) as exc:
            log.warning("%s could not be written at the stop: %s", SEEN_FILE, exc)
        log.info("uronode stopped")
