"""Benchmark: how fast the node receives CT over DICOM, against DCMTK storescp and Orthanc in the same run.

300 CT instances of 512x512 (about 512 KB each) go from DCMTK storescu in one
association to each receiver in turn, for several rounds, each round with
fresh SOP Instance UIDs (no receiver gets an easy duplicate). A second case
sends 4 series of 75 instances over 4 concurrent associations. Everything runs
in a private network namespace on loopback, TCP_NODELAY=1 for DCMTK and
Orthanc. The node runs as ``uronode serve`` with its defaults (fsync on) but
for its worker: it runs no model unless ``--worker`` (the peers only receive;
a model run takes both cores for seconds after each series and would slow
whichever receiver came next).

Usage: python -m bench.ingest [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.factory import write_series
from tests.peers.netns import reexec_in_netns
from tests.peers.processes import (
    DCMTK_ENV,
    Node,
    require,
    start_orthanc,
    start_storescp,
)

SINGLE = 300
CONCURRENT = 4
PER_ASSOC = 75


def send_one(port: int, called: str, folder: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(
        [require("storescu"), "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port), "+sd", str(folder)],
        capture_output=True, text=True, env=DCMTK_ENV,
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"storescu to {called} failed: {done.stderr[-500:]}")
    return elapsed


def send_concurrent(port: int, called: str, folders: list[Path]) -> float:
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [require("storescu"), "-aet", f"BENCH{i}", "-aec", called, "127.0.0.1", str(port), "+sd", str(f)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=DCMTK_ENV,
        )
        for i, f in enumerate(folders)
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"storescu to {called} failed: {err.decode()[-500:]}")
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (one more warms up)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", action="store_true",
                        help="let the node's worker run the model on every series it receives, as in service (by "
                             "default it runs none: receiving alone, as the peers do)")
    args = parser.parse_args()
    reexec_in_netns()

    work = Path(tempfile.mkdtemp(prefix="uronode-bench-ingest-"))
    receivers = ["uronode", "storescp", "orthanc"]
    print(f"writing test data to {work} ...", flush=True)
    single: dict[str, list[Path]] = {r: [] for r in receivers}
    concurrent: dict[str, list[list[Path]]] = {r: [] for r in receivers}
    for rx in receivers:
        for n in range(args.rounds + 1):
            folder = work / "data" / f"{rx}-single-{n}"
            write_series(folder, SINGLE, size=512)
            single[rx].append(folder)
            group = []
            for a in range(CONCURRENT):
                folder = work / "data" / f"{rx}-conc-{n}-{a}"
                write_series(folder, PER_ASSOC, size=512)
                group.append(folder)
            concurrent[rx].append(group)

    results: dict[str, dict[str, list[float]]] = {r: {"single": [], "concurrent": []} for r in receivers}
    port, http = 11200, 18200
    called = {"uronode": ("URONODE", port), "storescp": ("STORESCP", port + 1), "orthanc": ("ORTHANC", port + 2)}

    # All three run side by side; each round sends to each of them in turn, in a rotating order,
    # so that the machine's noise falls on all of them alike. Round 0 warms up and is not counted.
    # Without --worker the node runs no model: the peers receive and nothing else, the model's seconds
    # of CPU per series would fall on whichever receiver came next, and the 2026-11-26 record was
    # measured before the node had a worker (bench.e2e times the model).
    node = Node(work / "uronode", port, http,
                extra_env={} if args.worker else {"URONODE_INFERENCE__WORKERS": "0"}).start()
    scp = start_storescp(work / "storescp-out", port + 1)
    orthanc = start_orthanc(work / "orthanc", http_port=http + 2, dicom_port=port + 2)
    try:
        for n in range(args.rounds + 1):
            order = receivers[n % 3 :] + receivers[: n % 3]
            for rx in order:
                ae, dport = called[rx]
                # storescp and Orthanc leave their files to the kernel's write-back (no fsync); flush it
                # first, so that no receiver's fsyncs wait behind another one's dirty pages.
                os.sync()
                one = SINGLE / send_one(dport, ae, single[rx][n])
                os.sync()
                many = CONCURRENT * PER_ASSOC / send_concurrent(dport, ae, concurrent[rx][n])
                if n == 0:
                    continue
                results[rx]["single"].append(one)
                results[rx]["concurrent"].append(many)
                print(f"  round {n}: {rx:8s} {one:5.0f}/s one association, {many:5.0f}/s over {CONCURRENT}", flush=True)
        expected = (args.rounds + 1) * (SINGLE + CONCURRENT * PER_ASSOC)
        import sqlite3

        # what storescu sent (calling AE BENCH, BENCH0...), not the results the node's worker made meanwhile
        count = sqlite3.connect(work / "uronode" / "index.sqlite3").execute(
            "select count(*) from instances where calling_ae LIKE 'BENCH%'"
        ).fetchone()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{http + 2}/statistics") as r:
            in_orthanc = json.load(r)["CountInstances"]
        in_storescp = sum(1 for _ in (work / "storescp-out").iterdir())
        print(f"  received: uronode {count}, storescp {in_storescp}, orthanc {in_orthanc} (each expected {expected})")
        if count != expected:
            raise RuntimeError(f"uronode indexed {count} instances, expected {expected}")
    finally:
        node.stop()
        scp.stop()
        orthanc.stop()

    med = {rx: {case: statistics.median(v) for case, v in results[rx].items()} for rx in receivers}
    # The ratio of each round (same minute, same machine state), then their median.
    ratios = {
        case: {
            peer: statistics.median(u / p for u, p in zip(results["uronode"][case], results[peer][case], strict=True))
            for peer in ("orthanc", "storescp")
        }
        for case in ("single", "concurrent")
    }
    print()
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, {platform.platform()}, {time.strftime('%Y-%m-%d')}")
    print("| case | uronode | DCMTK storescp | Orthanc | uronode / Orthanc | uronode / storescp |")
    print("|---|---|---|---|---|---|")
    for case, label in (("single", f"{SINGLE} instances, 1 association"), ("concurrent", f"{CONCURRENT}x{PER_ASSOC} instances, {CONCURRENT} associations")):
        u, s, o = med["uronode"][case], med["storescp"][case], med["orthanc"][case]
        r = ratios[case]
        print(f"| {label} | {u:.0f}/s | {s:.0f}/s | {o:.0f}/s | {r['orthanc']:.2f} | {r['storescp']:.2f} |")
    print("(medians over the rounds; the ratios are medians of each round's ratio)")
    if args.json:
        args.json.write_text(json.dumps({"rounds": results, "median": med, "ratios": ratios}, indent=2))
    subprocess.run(["rm", "-rf", str(work)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
