"""The node's Prometheus metrics, read from its database at each scrape.

A custom collector (``prometheus-client``'s way for values that live
elsewhere): nothing is counted in memory, so the figures are the same
whichever process did the work (receivers, worker, delivery) and survive
restarts. :func:`exposition` gives the text format for ``GET /metrics``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from uronode.db import Database
from uronode.jobs import LOCAL_WORKER, WORKER_JOBS
from uronode.types import OWN_RESULTS, SERIES_COMPLETIONS, WORKER_DEATHS, JobState

INFERENCE_BUCKETS_S = (1, 2, 5, 10, 20, 30, 60, 120, 300)
"""Bucket bounds of ``uronode_inference_seconds``: a series takes seconds to a few minutes."""
DELIVERY_STATES = ("pending", "delivered", "dead", "superseded")
PRUNED = "pruned:"
"""Prefix of the ``counters`` rows in which retention (:mod:`uronode.retention`) keeps what the jobs and
deliveries it pruned counted, so that the counters here never go down: ``pruned:delivery_failures``,
``pruned:inference_ms:<worker>``, ``pruned:inference_le:<bound>``, ``pruned:inference_count``,
``pruned:inference_ms_sum`` (``pruned:jobs:<worker>:<outcome>`` of before schema 20 are no longer read: the jobs
are counted as they end, ``uronode.jobs.WORKER_JOBS``)."""
DELIVERY_FAILURES = f"{PRUNED}delivery_failures"
"""The ``counters`` row that keeps the failed tries of deliveries pruned, or set to 0 by a retry."""
FAILED_TRIES = "coalesce(sum(CASE WHEN state = 'delivered' THEN max(attempts - 1, 0) ELSE attempts END), 0)"
"""The failed tries of the deliveries a query selects: a delivered one's last try succeeded, every try of one
still pending or dead failed."""
CONTENT_TYPE = CONTENT_TYPE_LATEST
REFUSED = "associations_refused:"
"""Prefix of the ``counters`` rows of refused associations, by why (:data:`REFUSAL_REASONS`)."""
REFUSAL_REASONS = ("called_ae", "calling_ae", "association_limit", "host_share", "host_connections")
"""Why an association or connection was refused: the called AE title is not the node's, the calling one is not
allowed (``scp.allowed_callers``), the node holds ``scp.max_associations``, the caller's host holds its share
(``scp.max_associations_per_host``), or its host holds twice that share as connections of one receiving process
(closed as it came, before any association)."""
SKIP_KINDS = (
    ("the series has no instances", "empty"),
    ("modality ", "not_ct"),
    ("SOP class ", "not_ct"),
    ("localizer (scout) images", "localizer"),
    ("derived secondary images", "derived"),
    ("images without a position", "no_position"),
    ("not an axial stack", "not_axial"),
    ("a sharp-kernel reconstruction", "sharp_kernel"),
    ("contrast-enhanced (", "contrast"),
    ("not an abdominal CT (a phantom", "phantom"),
    ("not an abdominal CT (", "not_abdomen"),
)
"""The reasons a series is skipped (``uronode.completion.qualify``) by how they begin, and the label each gets in
``uronode_series_skipped``; multi-energy images are ``energy`` (:func:`skip_kind`)."""

log = logging.getLogger(__name__)


def skip_kind(reason: str | None) -> str:
    """The label of a skipped series' reason: one of a few kinds, never the reason's text (a label per text, with
    kernels and descriptions in it, would grow without bound)."""
    text = reason or ""
    for start, kind in SKIP_KINDS:
        if text.startswith(start):
            return kind
    if ": its values are not the conventional Hounsfield units" in text or ": calcium, and with it stones" in text:
        return "energy"
    return "other"


class Tally:
    """Counts kept in memory and added to the ``counters`` table at most once a second (a timer writes what is
    left): for events that can come in floods (refused associations), where a write each would compete with
    the instances' own. What a process held when it died is lost (at most a second of counts)."""

    def __init__(self, database: Database, prefix: str, every_s: float = 1.0) -> None:
        self.database = database
        self.prefix = prefix
        self.every_s = every_s
        self._pending: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def add(self, name: str) -> None:
        with self._lock:
            self._pending[name] += 1
            if self._timer is None:
                self._timer = threading.Timer(self.every_s, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Add what is pending to the table now."""
        with self._lock:
            pending, self._pending, self._timer = self._pending, Counter(), None
        if not pending:
            return
        try:
            with self.database.transaction() as conn:
                conn.executemany(
                    "INSERT INTO counters (name, value) VALUES (?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    [(self.prefix + name, n) for name, n in sorted(pending.items())],
                )
        except sqlite3.Error as exc:  # a full disk: the counts are lost, the refusals themselves were said
            log.error("%d count(s) of %s could not be written to the index: %s", sum(pending.values()),
                      self.prefix.rstrip(":"), exc)


class IndexCollector(Collector):
    """Every ``uronode_*`` metric, computed from the index, queue and outbox tables when collected."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def collect(self) -> Iterator[Metric]:
        conn = self.database.conn()
        stored = conn.execute("SELECT count(*) FROM instances").fetchone()[0]
        deleted = {r["name"]: r["value"] for r in conn.execute("SELECT name, value FROM counters")}
        yield _gauge("uronode_instances_stored", "Instances in the store.", stored)
        yield _counter(
            "uronode_instances_received",
            "Instances received (C-STORE, STOW-RS, upload) and results stored, retention's deletions included.",
            stored + deleted.get("instances_deleted", 0),
        )
        yield _counter("uronode_series_completed", "Series completions (a series completed again after a late image"
                       " counts again), counted as they happen.", deleted.get(SERIES_COMPLETIONS, 0))
        series = GaugeMetricFamily(
            "uronode_series", "Series by state and what was decided when they completed (results: the node's own).",
            labels=["disposition", "state"],
        )
        for row in conn.execute(  # the node's own result series apart: four a job would swamp "skipped" (probe 22)
            "SELECT state, CASE WHEN reason = ? THEN 'results' ELSE coalesce(disposition, '') END AS d,"
            " count(*) AS n FROM series GROUP BY 1, 2", (OWN_RESULTS,)
        ):
            series.add_metric([row["d"], row["state"]], row["n"])
        yield series
        skipped = GaugeMetricFamily(
            "uronode_series_skipped", "Series in the index skipped when they completed (not read by the model), by why.",
            labels=["reason"],
        )
        kinds: Counter[str] = Counter()
        for row in conn.execute("SELECT reason, count(*) AS n FROM series WHERE state = 'complete' AND disposition ="
                                " 'skipped' AND reason IS NOT ? GROUP BY reason", (OWN_RESULTS,)):
            kinds[skip_kind(row["reason"])] += row["n"]
        for kind in sorted({k for _, k in SKIP_KINDS} | {"energy", "other"}):
            skipped.add_metric([kind], kinds[kind])
        yield skipped
        refused = CounterMetricFamily(
            "uronode_associations_refused", "DICOM associations refused (A-ASSOCIATE-RJ), and connections closed as"
            " they came (host_connections), by why.", labels=["reason"],
        )
        for reason in REFUSAL_REASONS:
            refused.add_metric([reason], deleted.get(REFUSED + reason, 0))
        yield refused

        jobs = {r["state"]: r["n"] for r in conn.execute("SELECT state, count(*) AS n FROM jobs GROUP BY state")}
        by_state = GaugeMetricFamily("uronode_jobs", "Jobs by state.", labels=["state"])
        for state in JobState:
            by_state.add_metric([state.value], jobs.get(state.value, 0))
        yield by_state
        yield _gauge("uronode_queue_depth", "Jobs waiting for a worker.", jobs.get(JobState.QUEUED.value, 0))

        deliveries = {
            r["state"]: r["n"] for r in conn.execute("SELECT state, count(*) AS n FROM deliveries GROUP BY state")
        }
        outbox = GaugeMetricFamily("uronode_deliveries", "Result deliveries by state.", labels=["state"])
        for delivery_state in DELIVERY_STATES:
            outbox.add_metric([delivery_state], deliveries.get(delivery_state, 0))
        yield outbox
        # the same by destination (probe 41: with two destinations, which one is down could not be told)
        by_destination = GaugeMetricFamily("uronode_destination_deliveries", "Result deliveries by destination and "
                                           "state (destinations that have any).", labels=["destination", "state"])
        for row in conn.execute("SELECT destination, state, count(*) AS n FROM deliveries GROUP BY destination, state"
                                " ORDER BY destination, state"):
            by_destination.add_metric([row["destination"], row["state"]], row["n"])
        yield by_destination
        (failures,) = conn.execute(f"SELECT {FAILED_TRIES} FROM deliveries").fetchone()
        yield _counter("uronode_delivery_failures", "Failed delivery tries.",
                       failures + deleted.get(DELIVERY_FAILURES, 0))

        # Remote workers (queue.backend dramatiq): what waits on the broker, what the leases did, who did what.
        (unclaimed,) = conn.execute(
            "SELECT count(*) FROM jobs WHERE state = 'queued' AND dispatched_at IS NOT NULL"
        ).fetchone()
        yield _gauge("uronode_jobs_published_unclaimed", "Jobs published on the broker that no worker has claimed yet.",
                     unclaimed)
        (held,) = conn.execute("SELECT count(*) FROM jobs WHERE state = 'running' AND lease_until IS NOT NULL").fetchone()
        yield _gauge("uronode_claims_held", "Jobs a remote worker holds under a lease.", held)
        yield _counter("uronode_worker_deaths", "The node's own worker processes found dead (killed, crashed) and"
                       " restarted.", deleted.get(WORKER_DEATHS, 0))
        yield _counter("uronode_leases_expired", "Remote workers' claims whose lease ran out (the job ran again, or failed on its last try).",
                       deleted.get("leases_expired", 0))
        yield _counter("uronode_jobs_republished", "Jobs published on the broker again (unclaimed in time, or lease expired).",
                       deleted.get("jobs_republished", 0))
        yield _counter("uronode_completions_refused", "Completions refused because their claim no longer held the job.",
                       deleted.get("completions_refused", 0))
        by_worker = CounterMetricFamily(
            "uronode_worker_jobs", "Jobs each worker finished ('local': the node's own), by outcome.",
            labels=["worker", "outcome"],
        )
        worker_seconds = CounterMetricFamily(
            "uronode_worker_inference_seconds", "The model's time on the series each worker finished.", labels=["worker"]
        )
        # The node's worker processes claim as 'local:<pid>': counted together as 'local' (a label per pid
        # would grow with every restart of a worker).
        # The jobs each ended, counted as they end (uronode.jobs.count_outcome); the seconds from the jobs, with
        # what retention pruned (kept as 'pruned:inference_ms:*' counters).
        jobs_by: dict[str, dict[str, float]] = {}
        for row in conn.execute(
            "SELECT CASE WHEN claimed_by GLOB ? || ':*' THEN ? ELSE claimed_by END AS w, coalesce(sum(seconds), 0) AS s"
            " FROM jobs WHERE claimed_by IS NOT NULL AND state IN ('delivering', 'delivered', 'failed') GROUP BY w",
            (LOCAL_WORKER, LOCAL_WORKER),
        ):
            jobs_by[row["w"]] = {"done": 0, "failed": 0, "s": row["s"]}
        for name, value in deleted.items():
            if name.startswith(WORKER_JOBS) and name.endswith((":done", ":failed")):
                worker, _, outcome = name[len(WORKER_JOBS):].rpartition(":")
                jobs_by.setdefault(worker, {"done": 0, "failed": 0, "s": 0.0})[outcome] += value
            elif name.startswith(f"{PRUNED}inference_ms:"):
                jobs_by.setdefault(name[len(f"{PRUNED}inference_ms:"):], {"done": 0, "failed": 0, "s": 0.0})["s"] += \
                    value / 1000
        for worker, tally in sorted(jobs_by.items()):
            by_worker.add_metric([worker, "done"], tally["done"])
            by_worker.add_metric([worker, "failed"], tally["failed"])
            worker_seconds.add_metric([worker], round(tally["s"], 3))
        yield by_worker
        yield worker_seconds

        bounds = ", ".join(f"coalesce(sum(seconds <= {bound:g}), 0)" for bound in INFERENCE_BUCKETS_S)
        *counts, total, count = conn.execute(
            f"SELECT {bounds}, coalesce(sum(seconds), 0), count(seconds) FROM jobs WHERE seconds IS NOT NULL"
        ).fetchone()
        counts = [n + deleted.get(f"{PRUNED}inference_le:{b:g}", 0) for b, n in zip(INFERENCE_BUCKETS_S, counts,
                                                                                       strict=True)]
        count += deleted.get(f"{PRUNED}inference_count", 0)
        total += deleted.get(f"{PRUNED}inference_ms_sum", 0) / 1000
        yield HistogramMetricFamily(
            "uronode_inference_seconds",
            "The model's run on a series (read, candidates, network, measuring).",
            buckets=[*((f"{b:g}", n) for b, n in zip(INFERENCE_BUCKETS_S, counts, strict=True)), ("+Inf", count)],
            sum_value=round(total, 3),
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def exposition(database: Database) -> bytes:
    """The metrics in Prometheus' text format (:data:`CONTENT_TYPE`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IndexCollector(database))
    return generate_latest(registry)
