"""Operations endpoints: liveness, readiness and Prometheus metrics.

The metrics are read from the node's database when scraped, so they are the
same whichever process did the work (receivers, worker, delivery) and
survive restarts.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse

from dicomweb.deps import StoreDep
from uronode.errors import OutOfResources
from uronode.loops import Loops

router = APIRouter(tags=["operations"])

ReadyCheck = Callable[[], str | None]
"""A condition the node adds to ``/readyz`` (its model's folder is there): None while it holds,
else the reason it does not."""


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Alive: the HTTP server answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request, store: StoreDep) -> dict[str, object]:
    """Ready: the store is writable and under its disk watermark, the node's own conditions hold (the
    model's folder is there) and every background loop beats (503 naming each one that does not)."""
    try:
        store.check_space()
        probe = store.tmp_dir / ".ready"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OutOfResources as exc:
        raise HTTPException(503, detail=str(exc)) from exc
    except OSError as exc:
        raise HTTPException(503, detail=f"the store is not writable: {exc.strerror or exc}") from exc
    checks: tuple[ReadyCheck, ...] = request.app.state.ready_checks
    for check in checks:
        if (problem := check()) is not None:
            raise HTTPException(503, detail=problem)
    loops: Loops | None = request.app.state.loops
    if loops is not None and (problems := loops.problems()):
        raise HTTPException(503, detail="; ".join(problems))
    return {"status": "ready", "loops": loops.names if loops is not None else []}


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}} {value:g}"
    return f"{name} {value:g}"


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(store: StoreDep) -> PlainTextResponse:
    """Prometheus text format."""
    conn = store.conn()
    stored = conn.execute("SELECT count(*) FROM instances").fetchone()[0]
    deleted = {r["name"]: r["value"] for r in conn.execute("SELECT name, value FROM counters")}
    completed = conn.execute("SELECT count(*) FROM series WHERE state = 'complete'").fetchone()[0]
    out = [
        "# HELP uronode_instances_stored Instances in the store.",
        "# TYPE uronode_instances_stored gauge",
        _line("uronode_instances_stored", stored),
        "# HELP uronode_instances_received_total Instances received (C-STORE, STOW-RS, upload) and results stored,"
        " retention's deletions included.",
        "# TYPE uronode_instances_received_total counter",
        _line("uronode_instances_received_total", stored + deleted.get("instances_deleted", 0)),
        "# HELP uronode_series_completed_total Series that completed, retention's deletions included.",
        "# TYPE uronode_series_completed_total counter",
        _line("uronode_series_completed_total", completed + deleted.get("series_deleted", 0)),
        "# HELP uronode_series Series by state and what was decided when they completed.",
        "# TYPE uronode_series gauge",
    ]
    for row in conn.execute("SELECT state, coalesce(disposition, '') AS d, count(*) AS n FROM series GROUP BY 1, 2"):
        out.append(_line("uronode_series", row["n"], {"state": row["state"], "disposition": row["d"]}))
    out += ["# HELP uronode_jobs Jobs by state.", "# TYPE uronode_jobs gauge"]
    states = {r["state"]: r["n"] for r in conn.execute("SELECT state, count(*) AS n FROM jobs GROUP BY state")}
    for state in ("queued", "running", "delivering", "delivered", "failed"):
        out.append(_line("uronode_jobs", states.get(state, 0), {"state": state}))
    out += ["# HELP uronode_queue_depth Jobs waiting for a worker.", "# TYPE uronode_queue_depth gauge",
            _line("uronode_queue_depth", states.get("queued", 0))]
    out += ["# HELP uronode_deliveries Result deliveries by state.", "# TYPE uronode_deliveries gauge"]
    deliveries = {r["state"]: r["n"] for r in conn.execute("SELECT state, count(*) AS n FROM deliveries GROUP BY state")}
    for state in ("pending", "delivered", "dead"):
        out.append(_line("uronode_deliveries", deliveries.get(state, 0), {"state": state}))
    failures = conn.execute("SELECT coalesce(sum(attempts), 0) - count(*) FROM deliveries WHERE state = 'delivered'")
    failed_tries = conn.execute("SELECT coalesce(sum(attempts), 0) FROM deliveries WHERE state != 'delivered'")
    out += ["# HELP uronode_delivery_failures_total Failed delivery tries.", "# TYPE uronode_delivery_failures_total counter",
            _line("uronode_delivery_failures_total", max(0, failures.fetchone()[0]) + failed_tries.fetchone()[0])]
    out += ["# HELP uronode_inference_seconds The model's run on a series (read, candidates, network, measuring).",
            "# TYPE uronode_inference_seconds histogram"]
    buckets = ", ".join(f"coalesce(sum(seconds <= {bound:g}), 0)" for bound in INFERENCE_BUCKETS_S)
    *counts, total, count = conn.execute(
        f"SELECT {buckets}, coalesce(sum(seconds), 0), count(seconds) FROM jobs WHERE seconds IS NOT NULL"
    ).fetchone()
    for bound, n in zip(INFERENCE_BUCKETS_S, counts, strict=True):
        out.append(_line("uronode_inference_seconds_bucket", n, {"le": f"{bound:g}"}))
    out += [_line("uronode_inference_seconds_bucket", count, {"le": "+Inf"}),
            _line("uronode_inference_seconds_sum", round(total, 3)),
            _line("uronode_inference_seconds_count", count)]
    return PlainTextResponse("\n".join(out) + "\n", media_type="text/plain; version=0.0.4")


INFERENCE_BUCKETS_S = (1, 2, 5, 10, 20, 30, 60, 120, 300)
