"""A node with the dramatiq backend, a real redis-server, real `uronode worker` processes and storescp as the PACS.

Short leases and sweeps keep the failure tests quick: a lease of 4 s (a
heartbeat every 1.3 s), the sweeper every 0.5 s, an unclaimed job published
again after 6 s. The series are small (256 x 256, 8 slices): the model runs
on each in about a second on two loaded cores; loading it takes a worker
10 to 30 s, so each test starts only the workers it needs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest

from lab.synth import generate_phantom, write_series
from tests.conftest import query
from tests.peers.processes import Node, Proc, free_port, start_storescp, storescu, wait_until
from tests.peers.redis import Redis
from uronode.claims import claim_key, claim_secret, new_worker_token

LEASE_S = "4"
QUEUE_ENV = {
    "URONODE_QUEUE__BACKEND": "dramatiq",
    "URONODE_QUEUE__LEASE_S": LEASE_S,
    "URONODE_QUEUE__CLAIM_TIMEOUT_S": "6",
    "URONODE_QUEUE__SWEEP_INTERVAL_S": "0.5",
}


@dataclass
class Worker:
    name: str
    proc: Proc

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc.popen.poll() is None:
            os.kill(self.pid, signal.SIGCONT)


@dataclass
class Cluster:
    tmp: Path
    redis: Redis
    pacs_dir: Path
    pacs_port: int
    start_node: Callable[..., Node]
    node: Node | None = None
    workers: list[Worker] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    """Settings of this test for the node and its workers (a longer lease, say)."""

    @property
    def data(self) -> Path:
        assert self.node is not None
        return self.node.data_dir

    def env(self) -> dict[str, str]:
        destination = [{"name": "pacs", "kind": "dicom", "ae_title": "STORESCP", "host": "127.0.0.1",
                        "port": self.pacs_port}]
        return {
            **QUEUE_ENV,
            "URONODE_QUEUE__BROKER_URL": self.redis.url,
            "URONODE_QUEUE__WORKER_TOKENS_FILE": str(self.tmp / "worker-tokens"),
            "URONODE_DELIVERY__DESTINATIONS": json.dumps(destination),
            "URONODE_DELIVERY__BACKOFF_S": "0.5",
            "URONODE_DELIVERY__BACKOFF_MAX_S": "1",
            **self.extra_env,
        }

    def start(self) -> Node:
        """The node (again, on the same data folder and ports when it ran before), with no model of its own."""
        if self.node is None:
            self.node = self.start_node(self.tmp / "node", **self.env())
        else:
            self.node.start()
        return self.node

    def token(self, name: str) -> Path:
        path = self.tmp / f"{name}.token"
        path.write_text(new_worker_token(self.tmp / "worker-tokens", name) + "\n")
        return path

    def add_worker(self, name: str, token_file: Path | None = None) -> Worker:
        assert self.node is not None
        log = self.tmp / f"worker-{name}.log"
        env = {**os.environ, **self.env(), "URONODE_LOG_LEVEL": "INFO"}
        cmd = [sys.executable, "-m", "uronode", "worker", "--node", f"http://127.0.0.1:{self.node.http_port}",
               "--token-file", str(token_file or self.token(name))]
        with log.open("ab") as out:
            popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        worker = Worker(name, Proc(popen, log))
        self.workers.append(worker)
        return worker

    def wait_workers_ready(self, timeout: float = 300) -> None:
        def ready() -> bool:
            for worker in self.workers:
                if worker.proc.popen.poll() is not None:
                    raise RuntimeError(f"worker {worker.name} exited:\n{worker.proc.log_text()[-3000:]}")
            return all("worker: taking jobs" in w.proc.log_text() for w in self.workers)

        wait_until(ready, timeout, "the workers to load the model", 0.2)

    def send_series(self, count: int, seed: int = 100) -> list[str]:
        """``count`` small CT series, sent in one association; returns their series UIDs."""
        assert self.node is not None
        folder = self.tmp / f"ct-{seed}"
        uids = []
        for i in range(count):
            phantom = generate_phantom(seed + i, rows=256, slice_spacing=2.5, slices=8, coverage=(0.72, 0.88),
                                       n_stones=2, stone_sites=("kidney",))
            write_series(phantom, folder / f"s{i}")
            uids.append(phantom.series_instance_uid)
        result = storescu(self.node.dicom_port, [*sorted(folder.rglob("*.dcm"))], calling="SCANNER")
        assert result.returncode == 0, result.stderr
        return uids

    def jobs(self) -> list[dict]:
        return [dict(r) for r in query(self.data, "SELECT id, state, attempts, claimed_by, reason FROM jobs ORDER BY id")]

    def wait_delivered(self, count: int, timeout: float = 240) -> None:
        def done() -> bool:
            jobs = self.jobs()
            failed = [j for j in jobs if j["state"] == "failed"]
            assert not failed, failed
            return len(jobs) == count and all(j["state"] == "delivered" for j in jobs)

        wait_until(done, timeout, f"{count} jobs to be delivered", 0.2)

    def received(self) -> Counter[str]:
        """How many times the PACS received each SOP Instance UID."""
        return Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                       for p in self.pacs_dir.rglob("*") if p.is_file())

    def owed(self) -> set[str]:
        return {r["sop_instance_uid"] for r in query(self.data, "SELECT sop_instance_uid FROM deliveries")}

    def lost_responses(self) -> Counter[str]:
        """SOP Instance UID -> the node's sends of it whose C-STORE response never came (the audit log's retries
        for a connection that ended, or a response that timed out, after the instance went out): the PACS may
        hold those, and the node, not knowing, sends them again (deterministic UIDs: a PACS keeps one)."""
        lost: Counter[str] = Counter()
        for line in (self.data / "audit.log").read_text().splitlines():
            record = json.loads(line)
            reason = str(record.get("reason", ""))
            if (record.get("event") == "delivery" and record.get("outcome") == "retry"
                    and ("before its C-STORE response" in reason or "the peer may have stored it" in reason)):
                lost[str(record["sop_instance_uid"])] += 1
        return lost

    def assert_each_result_received_once(self) -> None:
        """Every result the node owes is at the PACS, each sent once: a second copy only where the node's audit
        log shows the first one's response lost (on a loaded machine storescp has closed a connection before
        answering; the node cannot know the instance arrived, and must send it again)."""
        owed = self.owed()
        assert owed
        wait_until(lambda: set(self.received()) >= owed, 30, "the PACS to hold every result")
        received = self.received()
        assert set(received) == owed
        lost = self.lost_responses()
        unexplained = {uid: n for uid, n in received.items() if n > 1 + lost[uid]}
        assert not unexplained, (unexplained, lost)

    def counter(self, name: str) -> int:
        rows = query(self.data, "SELECT value FROM counters WHERE name = ?", name)
        return int(rows[0]["value"]) if rows else 0


@contextmanager
def open_cluster(start_node: Callable[..., Node], tmp_path: Path,
                 extra_env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """Redis, storescp as the PACS, and a cluster to start the node and workers in (``extra_env``: settings of
    the test for both); everything stopped at the end, the logs printed for a failed test."""
    redis = Redis(tmp_path / "redis").start()
    pacs_port = free_port()
    pacs = start_storescp(tmp_path / "pacs", pacs_port, unique=True)
    made = Cluster(tmp_path, redis, tmp_path / "pacs", pacs_port, start_node, extra_env=dict(extra_env or {}))
    try:
        yield made
    finally:
        for log in sorted(tmp_path.glob("*.log")):  # shown by pytest when the test failed
            print(f"==== {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        for worker in made.workers:
            worker.resume()  # a stopped process would not see SIGTERM
            worker.proc.stop()
        pacs.stop()
        redis.stop()


@pytest.fixture
def cluster(start_node: Callable[..., Node], tmp_path: Path) -> Iterator[Cluster]:
    with open_cluster(start_node, tmp_path) as made:
        yield made


def claim_key_of(data_dir: Path, job_id: int, generation: int) -> str:
    """The claim key the node's message for this job carries (what the broker gives a worker)."""
    return claim_key(claim_secret(Path(data_dir).resolve()), job_id, generation)
