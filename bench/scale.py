"""Benchmark: remote workers (Dramatiq on Redis) against the node's own SQLite worker, in the same run.

1. **Throughput**: N synthetic CT series (default 9 of 512x512 x 16 slices)
   sent in one association; timed from the end of sending until every job is
   delivered to the PACS (DCMTK storescp). First the node's own worker
   (``queue.backend = "sqlite"``, one worker process), then the dramatiq
   backend with no local model and 1, 2 and 3 ``uronode worker`` processes
   on this machine. Series per minute for each.
2. **One large series**: one 512x512 series of 300 slices, last slice to all
   results confirmed by the PACS, through the node's own worker and through
   one remote worker (which fetches it by WADO-RS and stores its results by
   STOW-RS).

Each worker loads its model before the clock starts. A private network
namespace, loopback only; Redis on a unix socket, no persistence.
Usage: python -m bench.scale [--series N] [--slices N] [--large-slices N] [--workers 1,2,3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab.synth import generate_phantom, write_series
from tests.peers.netns import reexec_in_netns
from tests.peers.processes import Node, Proc, free_port, start_storescp, storescu, wait_until
from tests.peers.redis import Redis
from uronode.claims import new_worker_token


def delivered(data: Path) -> tuple[int, int]:
    """(jobs delivered, jobs in all); a failed job stops the benchmark."""
    conn = sqlite3.connect(data / "index.sqlite3", timeout=10)
    try:
        states = [r[0] for r in conn.execute("SELECT state FROM jobs")]
    finally:
        conn.close()
    if "failed" in states:
        raise RuntimeError(f"a job failed in {data}")
    return states.count("delivered"), len(states)


def make_series(folder: Path, count: int, slices: int, seed: int) -> Path:
    for i in range(count):
        phantom = generate_phantom(seed + i, rows=512, slice_spacing=2.5, slices=slices, n_stones=2)
        write_series(phantom, folder / f"s{i:02d}")
    return folder


class Setup:
    """A node (its own worker, or the dramatiq backend with remote workers), storescp as the PACS, Redis."""

    def __init__(self, work: Path, name: str, redis: Redis, pacs_port: int, remote_workers: int) -> None:
        self.work = work / name
        self.work.mkdir(parents=True)
        redis.cli("FLUSHALL")  # nothing left from the last setup's node
        destination = [{"name": "pacs", "kind": "dicom", "ae_title": "STORESCP", "host": "127.0.0.1",
                        "port": pacs_port}]
        self.env = {
            "URONODE_DICOMWEB__AUTH": "none",
            "URONODE_SCP__COMPLETION_GRACE_S": "0.5",
            "URONODE_DELIVERY__DESTINATIONS": json.dumps(destination),
            "URONODE_QUEUE__WORKER_TOKENS_FILE": str(self.work / "worker-tokens"),
        }
        if remote_workers:
            self.env |= {"URONODE_QUEUE__BACKEND": "dramatiq", "URONODE_QUEUE__BROKER_URL": redis.url,
                         "URONODE_INFERENCE__WORKERS": "0"}
        else:
            self.env |= {"URONODE_INFERENCE__WORKERS": "1"}
        self.node = Node(self.work / "node", free_port(), free_port(), extra_env=self.env).start()
        self.workers: list[Proc] = []
        for index in range(remote_workers):
            token = self.work / f"w{index}.token"
            token.write_text(new_worker_token(self.work / "worker-tokens", f"w{index}") + "\n")
            log = self.work / f"worker-{index}.log"
            with log.open("ab") as out:
                popen = subprocess.Popen(
                    [sys.executable, "-m", "uronode", "worker", "--node", f"http://127.0.0.1:{self.node.http_port}",
                     "--token-file", str(token)],
                    stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                )
            self.workers.append(Proc(popen, log))

    def wait_models(self) -> None:
        if self.workers:
            wait_until(lambda: all("worker: taking jobs" in w.log_text() for w in self.workers), 600,
                       "the remote workers' models")
        else:
            wait_until(lambda: "loaded in" in (self.node.proc.log_text() if self.node.proc else ""), 600,
                       "the node's worker's model")

    def run(self, folder: Path, count: int) -> tuple[float, float]:
        """Send ``folder`` in one association; (seconds sending, seconds from the last slice to all delivered)."""
        started = time.perf_counter()
        done = storescu(self.node.dicom_port, sorted(folder.rglob("*.dcm")), calling="SCANNER")
        if done.returncode != 0:
            raise RuntimeError(f"storescu failed: {done.stderr[-500:]}")
        last = time.perf_counter()
        wait_until(lambda: delivered(self.node.data_dir) == (count, count), 3600, "every job delivered", 0.1)
        return last - started, time.perf_counter() - last

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=9)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--large-slices", type=int, default=300, help="0: leave the one-large-series part out")
    parser.add_argument("--workers", default="1,2,3", help="remote worker counts to measure")
    parser.add_argument("--seed", type=int, default=5150)
    args = parser.parse_args()
    reexec_in_netns()
    work = Path(tempfile.mkdtemp(prefix="uronode-bench-scale-"))
    redis = Redis(work / "redis").start()
    pacs_port = free_port()
    pacs = start_storescp(work / "pacs", pacs_port)
    rows: list[tuple[str, int, float, float]] = []
    large: list[tuple[str, float]] = []
    try:
        series = make_series(work / "series", args.series, args.slices, args.seed)
        configs = [("node's own worker (sqlite)", 0)] + [
            (f"{n} remote worker{'s' if n > 1 else ''} (dramatiq)", n) for n in map(int, args.workers.split(","))
        ]
        for label, remote in configs:
            setup = Setup(work, f"throughput-{remote}", redis, pacs_port, remote)
            try:
                setup.wait_models()
                sending, elapsed = setup.run(series, args.series)
            finally:
                setup.stop()
            rows.append((label, remote, sending, elapsed))
            print(f"{label}: {args.series} series delivered {elapsed:.1f} s after the last slice "
                  f"({args.series / elapsed * 60:.1f} series/min)", flush=True)
        if args.large_slices:
            one = make_series(work / "large", 1, args.large_slices, args.seed + 100)
            for label, remote in (("node's own worker (sqlite)", 0), ("1 remote worker (dramatiq)", 1)):
                setup = Setup(work, f"large-{remote}", redis, pacs_port, remote)
                try:
                    setup.wait_models()
                    _, elapsed = setup.run(one, 1)
                finally:
                    setup.stop()
                large.append((label, elapsed))
                print(f"{label}: {args.large_slices} slices, last slice to results in the PACS {elapsed:.1f} s",
                      flush=True)
    finally:
        pacs.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"machine: {platform.node()}, {platform.platform()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print(f"| {args.series} series of 512x512 x {args.slices} slices | last slice -> all delivered | series/min "
          f"| vs the node's own worker |")
    print("|---|---|---|---|")
    base = rows[0][3]
    for label, _, _, elapsed in rows:
        print(f"| {label} | {elapsed:.1f} s | {args.series / elapsed * 60:.1f} | {base / elapsed:.2f}x |")
    if large:
        print()
        print(f"| one series of {args.large_slices} slices | last slice -> results in the PACS |")
        print("|---|---|")
        for label, elapsed in large:
            print(f"| {label} | {elapsed:.1f} s |")
        print(f"remote minus local: {large[1][1] - large[0][1]:+.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
