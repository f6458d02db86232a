"""Benchmark: seconds from the last slice of a CT series to its results in the PACS (Orthanc).

Two chains, in the same run, on a synthetic 512x512 abdominal CT with stones
(lab.synth, default 300 slices):

1. **Modality push**: DCMTK storescu sends the series straight to the node;
   the node completes it (2 s grace), runs the model, and stores SEG, SC and
   SR into Orthanc by C-STORE. Timed from storescu's end (the last C-STORE
   response) until Orthanc holds every result instance.
2. **Conventional chain**: storescu sends the series to Orthanc; Orthanc's
   OnStableSeries (the StableAge it ships with, 60 s, unless --stable-age)
   routes it to the node (orthanc/autoroute.lua), and the results come back.
   Timed from storescu's end until Orthanc holds the results.

Everything runs in a private network namespace on loopback.
Usage: python -m bench.e2e [--slices N] [--stable-age S]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TypedDict

from lab.synth import generate_phantom, write_series
from tests.peers.netns import reexec_in_netns
from tests.peers.processes import DCMTK_ENV, Node, require, start_orthanc, wait_until

ROOT = Path(__file__).resolve().parents[1]


def send(port: int, called: str, folder: Path) -> float:
    done = subprocess.run(
        [require("storescu"), "-aet", "SCANNER", "-aec", called, "127.0.0.1", str(port), "+sd", str(folder)],
        capture_output=True, text=True, env=DCMTK_ENV,
    )
    if done.returncode != 0:
        raise RuntimeError(f"storescu to {called} failed: {done.stderr[-500:]}")
    return time.perf_counter()


def orthanc_results(http: int, study: str) -> int:
    """Instances in Orthanc made by the node (SEG, SR and the Secondary Capture series) for this study."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{http}/dicom-web/studies/{study}/series", headers={"Accept": "application/dicom+json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    total = 0
    for series in json.loads(body) if body else []:
        modality = series.get("00080060", {}).get("Value", [""])[0]
        number = series.get("00200011", {}).get("Value", [0])[0]
        if modality in ("SEG", "SR") or int(number or 0) >= 900:
            total += int(series.get("00201209", {}).get("Value", [0])[0])
    return total


def results_expected(node_dir: Path) -> int:
    rows = sqlite3.connect(node_dir / "index.sqlite3").execute(
        "SELECT count(*) FROM deliveries WHERE destination = 'pacs'"
    ).fetchone()
    return int(rows[0])


class Chain(TypedDict):
    send_s: float
    after_last_slice_s: float
    results: int


def run_chain(work: Path, name: str, *, slices: int, seed: int, stable_age: int, via_orthanc: bool) -> Chain:
    phantom = generate_phantom(seed, rows=512, slices=slices, n_stones=3)
    series_dir = work / f"{name}-ct"
    write_series(phantom, series_dir)
    http, dicom, node_dicom, node_http = 18300, 11300, 11301, 18301
    if via_orthanc:
        http, dicom, node_dicom, node_http = http + 10, dicom + 10, node_dicom + 10, node_http + 10
    destination = [{"name": "pacs", "kind": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom}]
    node = Node(work / f"{name}-node", node_dicom, node_http,
                extra_env={"URONODE_DELIVERY__DESTINATIONS": json.dumps(destination)}).start()
    lua = work / "autoroute.lua"
    shutil.copy(ROOT / "orthanc" / "autoroute.lua", lua)
    orthanc = start_orthanc(
        work / f"{name}-orthanc", http_port=http, dicom_port=dicom, StableAge=stable_age, LuaScripts=[str(lua)],
        DicomModalities={"URONODE": ["URONODE", "127.0.0.1", node_dicom]},
    )
    try:
        # the worker loads the model before the clock starts
        wait_until(lambda: "loaded in" in (node.proc.log_text() if node.proc else ""), 180, "the worker's model")
        start = time.perf_counter()
        last = send(dicom if via_orthanc else node_dicom, "ORTHANC" if via_orthanc else "URONODE", series_dir)
        wait_until(lambda: results_expected(node.data_dir) > 0, 600, "the results to be owed to Orthanc")
        expected = results_expected(node.data_dir)
        wait_until(lambda: orthanc_results(http, phantom.study_instance_uid) >= expected, 600, "the results in Orthanc")
        done = time.perf_counter()
    finally:
        node.stop()
        orthanc.stop()
    return {"send_s": last - start, "after_last_slice_s": done - last, "results": expected}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--stable-age", type=int, default=60, help="Orthanc's StableAge for the conventional chain")
    parser.add_argument("--seed", type=int, default=4242)
    args = parser.parse_args()
    reexec_in_netns()
    work = Path(tempfile.mkdtemp(prefix="uronode-bench-e2e-"))
    try:
        push = run_chain(work, "push", slices=args.slices, seed=args.seed, stable_age=args.stable_age, via_orthanc=False)
        print(f"modality push: {push}", flush=True)
        routed = run_chain(work, "routed", slices=args.slices, seed=args.seed + 1, stable_age=args.stable_age,
                           via_orthanc=True)
        print(f"conventional chain: {routed}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"machine: {platform.node()}, {platform.platform()}, {time.strftime('%Y-%m-%d')}")
    print(f"| chain ({args.slices} slices of 512x512) | sending | last slice -> all results in Orthanc |")
    print("|---|---|---|")
    print(f"| storescu -> node -> Orthanc | {push['send_s']:.1f} s | {push['after_last_slice_s']:.1f} s |")
    print(f"| storescu -> Orthanc (StableAge {args.stable_age} s) -> node -> Orthanc | {routed['send_s']:.1f} s "
          f"| {routed['after_last_slice_s']:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
