"""SIGTERM stops the node as SIGINT does: its clean-up runs, it exits 0, and the job its worker was running goes
back to the queue without that try counted; a second signal stops it at once, still giving the job back.

Probe 13 (finding 2): uvicorn raised the signal again once its server had shut down, so SIGTERM (what Docker,
Kubernetes and systemd send) ended the node with status 143 before its clean-up. The worker was killed with
it, its job was left running, and the next start counted that try: two restarts during one job failed it.

A real ``uronode serve`` runs the shipped model on a synthetic CT series sent with DCMTK storescu. While the
job runs, the test stops the worker process (SIGSTOP), so that the job cannot end before the node's stop
gives up waiting for it, as a long job would; the node then kills the worker and gives its job back. The node
is stopped twice during the one job (SIGTERM, then SIGINT followed by SIGTERM), and the job, with its try
never counted, runs to the end after the third start.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import WITH_WORKER
from tests.peers.processes import Node, storescu, wait_until
from tests.uronode.test_worker_death import ct_series, jobs, running, worker_pid
from uronode.app.node import WORKER_STOP_WAIT_S

STOPPED = "uronode.app.node: uronode stopped"


def hold_the_worker(data: Path) -> int:
    """Wait for the one job to run on its first counted try, then freeze its worker (SIGSTOP) so that it cannot
    finish the job before the node's stop stops waiting for it; returns the worker's pid."""
    wait_until(lambda: bool(running(data)), 300, "the job to run", 0.01)
    (job,) = running(data)
    pid = worker_pid(job)
    os.kill(pid, signal.SIGSTOP)
    return pid


def ended(node: Node, timeout: float = 120) -> int:
    """The node's exit status, once it has exited by itself."""
    assert node.proc is not None
    return node.proc.popen.wait(timeout)


def log_of(node: Node) -> str:
    assert node.proc is not None
    return node.proc.log_text()


def test_sigterm_stops_the_node_cleanly_and_its_running_job_is_not_counted(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    data = tmp_path / "node"
    series = ct_series(tmp_path, 41)

    # 1. SIGTERM: the clean stop waits for the worker's job, kills the worker, gives the job back uncounted.
    node = start_node(data, **WITH_WORKER)
    assert storescu(node.dicom_port, series).returncode == 0
    held = hold_the_worker(data)
    assert node.proc is not None
    node.proc.popen.send_signal(signal.SIGTERM)
    assert ended(node) == 0, log_of(node)[-3000:]
    log = log_of(node)
    assert "SIGTERM: stopping" in log and log.count(STOPPED) == 1, log[-3000:]
    (job,) = jobs(data)
    assert (job["state"], job["attempts"]) == ("queued", 0)
    assert f"job {job['id']} series " in log and "its worker was stopped with the node; queued again" in log
    assert not Path(f"/proc/{held}").exists()  # killed and reaped by the node, not left behind

    # 2. Started again: the job runs on its first counted try. SIGINT, then SIGTERM while the node waits for
    # the worker: it stops at once, long before the wait would end, and the job is still given back uncounted.
    node = start_node(data, **WITH_WORKER)
    assert log_of(node).count("job(s) left running by a previous run are queued again") == 0
    hold_the_worker(data)
    assert node.proc is not None
    started = time.monotonic()
    node.proc.popen.send_signal(signal.SIGINT)
    wait_until(lambda: log_of(node).count("SIGINT: stopping") == 1, 30, "the node to begin its stop")
    node.proc.popen.send_signal(signal.SIGTERM)
    assert ended(node) == 0, log_of(node)[-3000:]
    assert time.monotonic() - started < WORKER_STOP_WAIT_S
    log = log_of(node)
    assert "SIGTERM while stopping: stopping at once" in log and log.count(STOPPED) == 2, log[-3000:]
    assert "Traceback" not in log  # a forced stop is not an error
    assert [(j["state"], j["attempts"]) for j in jobs(data)] == [("queued", 0)]

    # 3. Started a third time: the job, interrupted twice by the operator, runs to the end on its first try.
    start_node(data, **WITH_WORKER)
    wait_until(lambda: jobs(data)[0]["state"] == "delivered", 300, "the job to be delivered")
    (job,) = jobs(data)
    assert (job["attempts"], job["reason"]) == (1, None)
