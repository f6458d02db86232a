"""``uronode worker``: a model worker on any machine, fed through the broker, talking to the node over HTTP.

It loads the model once, then consumes the job messages the node publishes on
``queue.broker_url`` (Dramatiq on Redis), one at a time. For each: claim the job
(a 409 drops the message: done, stale, or held by a live claim), renew the
lease by heartbeat while working, fetch the series by WADO-RS, run the model
(the same :class:`uronode.app.worker.SeriesModel` seam as the node's own
worker), store the results by STOW-RS and complete with the claim's token and
the findings. A series the model cannot read fails the job with its reason.
A malformed message goes to the broker's dead letters without being retried;
a node that does not answer is retried with backoff (``docs/distributed.md``).
"""

from __future__ import annotations

import http.client
import logging
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from dicomweb.node_client import NodeClient, NodeUnreachable, Refused, Unauthorized
from inference.errors import InferenceError
from inference.writers.results import findings_record, write_results
from uronode.app.worker import SeriesModel, encode
from uronode.broker import ACTOR_NAME, QUEUE_NAME, JobMessage, MalformedMessage, make_broker
from uronode.errors import UronodeError
from uronode.settings import Settings
from uronode.types import DocumentReference

log = logging.getLogger(__name__)

MESSAGE_RETRIES = 5
"""A message whose node did not answer is tried again this many times (with backoff), then dead-lettered;
the node's sweeper publishes the job again in any case."""


class Heartbeat:
    """Renews a claim's lease every third of it, in a thread, until stopped or the claim is gone."""

    def __init__(self, client: NodeClient, job_id: int, claim: str, lease_s: float) -> None:
        self.client = NodeClient(client.base, client.token, timeout_s=lease_s / 3, patience_s=lease_s / 3)
        self.job_id, self.claim, self.interval_s = job_id, claim, lease_s / 3
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.client.heartbeat(self.job_id, self.claim)
            except Refused as exc:
                log.warning("job %d: the claim is gone (%s)", self.job_id, exc.detail)
                self.lost.set()
                return
            except Unauthorized:  # the token was revoked while the job ran: the claim is as good as gone
                log.error("job %d: the node refuses this worker's token (revoked?): its claim is given up", self.job_id)
                self.lost.set()
                return
            except (NodeUnreachable, RuntimeError) as exc:
                log.warning("job %d: heartbeat failed, trying again: %s", self.job_id, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


class RemoteWorker:
    """What one message makes the worker do."""

    def __init__(
        self, client: NodeClient, model: SeriesModel, model_name: str, stop: threading.Event | None = None
    ) -> None:
        self.client = client
        self.model = model
        self.model_name = model_name
        self.stop = stop if stop is not None else threading.Event()
        """Set when this worker must stop taking jobs (the node no longer knows its token)."""

    def handle(self, fields: dict[str, Any]) -> str:
        """Run the message's job if this worker can claim it; returns what became of it.

        Raises :class:`MalformedMessage` for a message that is not a job message, and
        :class:`NodeUnreachable` when the node does not answer (the message is tried again)."""
        message = JobMessage.parse(fields)
        if message.model != self.model_name:
            log.error("job %d is for model %r; this worker runs %r: left to another worker",
                      message.job_id, message.model, self.model_name)
            return "other model"
        try:
            claim = self.client.claim(message.job_id, message.generation, message.key)
        except Refused as exc:
            log.info("job %d not claimed: %s", message.job_id, exc.detail)
            return "refused"
        except Unauthorized as exc:  # revoked: leave the work to others (the sweeper publishes it again)
            log.error("the node refuses this worker's token (%s): stopping", exc)
            self.stop.set()
            return "unauthorized"
        log.info("job %d series %s claimed (attempt %d)", claim.job_id, claim.series_instance_uid, claim.attempts)
        with Heartbeat(self.client, claim.job_id, claim.token, claim.lease_s):
            try:
                return self._run(claim.job_id, claim.token, claim.study_instance_uid, claim.series_instance_uid,
                                 claim.reports, claim.rejected)
            except Refused as exc:
                log.warning("job %d: the node refused the result: %s", claim.job_id, exc.detail)
                return "refused"

    def _fetch(self, study: str, series: str, folder: Path) -> list[Path]:
        return _fetch_with_retries(self.client, study, series, folder)

    def _run(self, job_id: int, claim: str, study: str, series: str,
             reports: Sequence[tuple[str, DocumentReference]] = (), rejected: Collection[str] = ()) -> str:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"uronode-job-{job_id}-") as tmp:
            try:
                paths = self._fetch(study, series, Path(tmp) / "series")
            except FetchFailed as exc:
                self.client.fail(job_id, claim, f"the series could not be fetched from the node: {exc}")
                return "failed"
            if not paths:
                self.client.fail(job_id, claim, "the series has no instances at the node")
                return "failed"
            try:
                volume, findings = self.model.run_files(paths)
                inference_s = time.perf_counter() - started
                model = f"{findings.model_name} {findings.model_version}"
                results = write_results(volume, findings,
                                        predecessors=[ref for made_by, ref in reports if made_by == model],
                                        avoid=rejected)
            except InferenceError as exc:
                log.warning("job %d series %s failed: %s", job_id, series, exc)
                self.client.fail(job_id, claim, str(exc))
                return "failed"
            except Exception as exc:  # noqa: BLE001 - the job boundary: fail it with the reason, go on
                log.exception("job %d failed unexpectedly", job_id)
                self.client.fail(job_id, claim, f"internal error: {type(exc).__name__}: {exc}")
                return "failed"
            files = []
            out = Path(tmp) / "results"
            out.mkdir()
            for number, ds in enumerate(results.datasets, start=1):
                path = out / f"{number:04d}.dcm"
                path.write_bytes(encode(ds))
                files.append((path, str(ds.SOPInstanceUID)))
            stored = self.client.store(files)
            problems = [f"{r.sop_instance_uid}: {r.reason}" for r in stored if not r.ok]
            if problems and all(r.out_of_resources for r in stored if not r.ok):
                # the node's disk, not the series (review 27: the job failed for good): back to the queue
                self.client.give_back(job_id, claim, f"results refused for want of the node's resources: {problems[0]}")
                return "given back"
            if problems:
                self.client.fail(job_id, claim, f"results not stored at the node: {problems[0]}")
                return "failed"
            state = self.client.complete(
                job_id, claim, [uid for _, uid in files], findings_record(findings, results), round(inference_s, 3)
            )
        log.info("job %d series %s: %d stone(s), %d result instance(s) in %.1f s, %s",
                 job_id, series, len(findings.stones), len(files), time.perf_counter() - started, state)
        return state


class FetchFailed(Exception):
    """The series could not be read from the node, after a few tries."""


FETCH_TRIES = 3


def _fetch_with_retries(client: NodeClient, study: str, series: str, folder: Path) -> list[Path]:
    """WADO-RS of the series, tried again when the body breaks off (a connection reset, a truncated part)."""
    for attempt in range(1, FETCH_TRIES + 1):
        shutil.rmtree(folder, ignore_errors=True)
        try:
            return client.retrieve_series(study, series, folder)
        except NodeUnreachable:
            raise
        except (OSError, ValueError, http.client.HTTPException) as exc:
            if attempt == FETCH_TRIES:
                raise FetchFailed(f"{type(exc).__name__}: {exc}") from exc
            log.warning("series %s: fetching it broke off (%s); trying again", series, exc)
    raise AssertionError("unreachable")


def retry_when(retries: int, exception: BaseException) -> bool:
    """Dramatiq's retry rule: a node that did not answer is tried again; nothing else is."""
    return retries < MESSAGE_RETRIES and isinstance(exception, NodeUnreachable)


class WorkerCannotStart(UronodeError):
    """The node refuses the worker's token, does not answer, or the broker cannot be reached: said, exit 2."""


def check_start(client: NodeClient, broker: Any, node: str) -> None:
    """Before taking any message: the node knows the token and answers, and the broker answers. A worker started
    with a bad token, a wrong --node or a wrong Redis password said "taking jobs" and then held messages, logged
    errors for ever or stopped only at its first job (probe 20)."""
    try:
        name = client.whoami()
    except Unauthorized as exc:
        raise WorkerCannotStart(f"the node at {node} does not know this worker's token ({exc}): make one with "
                                "`uronode worker-token NAME --out FILE` on the node") from None
    except (NodeUnreachable, Refused, RuntimeError, ValueError) as exc:
        raise WorkerCannotStart(f"the node at {node} does not answer as a uronode node: {exc}") from None
    try:
        broker.client.ping()
    except Exception as exc:  # noqa: BLE001 - redis' errors (connection, authentication) are said as they are
        raise WorkerCannotStart(f"the broker (queue.broker_url) cannot be reached: {type(exc).__name__}: {exc}") from None
    log.info("worker: the node at %s knows this token as worker %s; the broker answers", node, name)


def run_remote_worker(settings: Settings, node: str, token: str) -> None:
    """Load the model, then take job messages until SIGTERM or SIGINT."""
    import dramatiq

    from inference.pipeline import Pipeline
    from inference.runtime import resolve_model_dir

    client = NodeClient(node, token, patience_s=max(30.0, settings.queue.lease_s))
    broker = make_broker(settings.queue.broker_url, heartbeat_timeout_s=max(10.0, settings.queue.lease_s))
    check_start(client, broker, node)
    started = time.perf_counter()
    pipeline = Pipeline(resolve_model_dir(settings.inference.model, settings.inference.models_dir))
    log.info("worker: model %s %s loaded in %.1f s", pipeline.name, pipeline.version, time.perf_counter() - started)
    stop = threading.Event()
    worker = RemoteWorker(client, pipeline, settings.inference.model, stop)

    def uronode_job(*args: Any, **fields: Any) -> None:
        if args:
            raise MalformedMessage(f"a job message has no positional arguments, not {len(args)}")
        worker.handle(fields)

    dramatiq.actor(
        actor_name=ACTOR_NAME, queue_name=QUEUE_NAME, broker=broker,
        retry_when=retry_when, min_backoff=1000, max_backoff=30000, time_limit=6 * 3600 * 1000,
    )(uronode_job)
    consumer = dramatiq.Worker(broker, worker_threads=1)
    consumer.queue_prefetch = 1  # one message at a time: the others stay on the queue for other workers
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    consumer.start()
    log.info("worker: taking jobs from %s for the node at %s", QUEUE_NAME, node)
    try:
        stop.wait()
    finally:
        consumer.stop(timeout=30_000)
        broker.close()
        log.info("worker stopped")
