"""Benchmark: the node's DICOMweb against Orthanc's DICOMweb plugin, on the same study, in the same run.

One synthetic 300-slice 512x512 CT study goes into both (DCMTK storescu).
Then, alternating between the two servers for several rounds, with one
keep-alive HTTP client each:
- QIDO-RS latency: studies by PatientID, the study's series, the series' instances (median ms);
- WADO-RS frames: every frame of the series, one request each (frames/s);
- WADO-RS metadata of the series (seconds, median of 5 requests a round): to the body parsed as
  JSON (the figure recorded since issue 5), and to the body received (the server's part, without
  the client's own JSON parse, which is most of the node's time).
Orthanc runs with "StudiesMetadata"/"SeriesMetadata" "Full", as OHIF needs.
Usage: python -m bench.dicomweb [--slices N] [--rounds N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.factory import write_series
from tests.peers.netns import reexec_in_netns
from tests.peers.processes import DCMTK_ENV, Node, require, start_orthanc, wait_until

JSON = {"Accept": "application/dicom+json"}
FRAMES = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}


def qido_ms(client: httpx.Client, url: str, repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        response = client.get(url, headers=JSON)
        response.raise_for_status()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def frames_per_s(client: httpx.Client, base: str, study: str, series: str, sops: list[str]) -> float:
    t0 = time.perf_counter()
    for sop in sops:
        response = client.get(f"{base}/studies/{study}/series/{series}/instances/{sop}/frames/1", headers=FRAMES)
        response.raise_for_status()
        if len(response.content) < 512 * 512 * 2:
            raise RuntimeError(f"short frame from {base}: {len(response.content)} bytes")
    return len(sops) / (time.perf_counter() - t0)


def metadata_s(client: httpx.Client, base: str, study: str, series: str, count: int,
               repeat: int = 5) -> tuple[float, float]:
    """Median seconds over ``repeat`` requests: to the whole body received, and to the body parsed as JSON."""
    received, parsed = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        response = client.get(f"{base}/studies/{study}/series/{series}/metadata", headers=JSON)
        response.raise_for_status()
        t1 = time.perf_counter()
        if len(response.json()) != count:
            raise RuntimeError(f"{base} gave metadata for {len(response.json())} instances, not {count}")
        received.append(t1 - t0)
        parsed.append(time.perf_counter() - t0)
    return statistics.median(received), statistics.median(parsed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    reexec_in_netns()
    work = Path(tempfile.mkdtemp(prefix="uronode-bench-dicomweb-"))
    study, series, _ = write_series(work / "ct", args.slices, size=512)
    node = Node(work / "node", 11400, 18400).start()
    orthanc = start_orthanc(work / "orthanc", http_port=18401, dicom_port=11401)
    try:
        for port, ae in ((11400, "URONODE"), (11401, "ORTHANC")):
            done = subprocess.run([require("storescu"), "-aet", "BENCH", "-aec", ae, "127.0.0.1", str(port), "+sd",
                                   str(work / "ct")], capture_output=True, text=True, env=DCMTK_ENV)
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-500:])
        servers = {"uronode": "http://127.0.0.1:18400/dicom-web", "orthanc": "http://127.0.0.1:18401/dicom-web"}
        clients = {name: httpx.Client(timeout=60) for name in servers}
        sops = {}
        for name, base in servers.items():
            instances = f"{base}/studies/{study}/series/{series}/instances"

            def indexed(client: httpx.Client = clients[name], url: str = instances) -> bool:
                return len(client.get(url, headers=JSON).json() or []) == args.slices

            wait_until(indexed, 60, f"{name} to index the series")
            items = clients[name].get(instances, headers=JSON).json()
            sops[name] = [i["00080018"]["Value"][0] for i in items]
        results: dict[str, dict[str, list[float]]] = {n: {"qido_studies": [], "qido_series": [], "qido_instances": [],
                                                          "frames": [], "metadata": [], "metadata_body": []}
                                                      for n in servers}
        for r in range(args.rounds + 1):
            for name in (list(servers) if r % 2 == 0 else list(servers)[::-1]):
                base, client = servers[name], clients[name]
                row = {
                    "qido_studies": qido_ms(client, f"{base}/studies?PatientID=SYN0001"),
                    "qido_series": qido_ms(client, f"{base}/studies/{study}/series"),
                    "qido_instances": qido_ms(client, f"{base}/studies/{study}/series/{series}/instances"),
                    "frames": frames_per_s(client, base, study, series, sops[name]),
                }
                row["metadata_body"], row["metadata"] = metadata_s(client, base, study, series, args.slices)
                if r == 0:
                    continue  # warm-up
                for key, value in row.items():
                    results[name][key].append(value)
                print(f"  round {r}: {name:8s} " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    finally:
        node.stop()
        orthanc.stop()
        subprocess.run(["rm", "-rf", str(work)])
    med = {n: {k: statistics.median(v) for k, v in res.items()} for n, res in results.items()}
    u, o = med["uronode"], med["orthanc"]
    print()
    print(f"machine: {platform.node()}, {platform.platform()}, {time.strftime('%Y-%m-%d')}; {args.slices} slices of 512x512")
    print("| measure | uronode | Orthanc DICOMweb | uronode advantage |")
    print("|---|---|---|---|")
    for key, label in (("qido_studies", "QIDO studies by PatientID (ms)"), ("qido_series", "QIDO series of the study (ms)"),
                       ("qido_instances", f"QIDO the series' {args.slices} instances (ms)")):
        print(f"| {label} | {u[key]:.1f} | {o[key]:.1f} | {o[key] / u[key]:.2f}x |")
    print(f"| WADO-RS frames, all {args.slices} (frames/s) | {u['frames']:.0f} | {o['frames']:.0f} | {u['frames'] / o['frames']:.2f}x |")
    print(f"| WADO-RS series metadata, parsed (s) | {u['metadata']:.3f} | {o['metadata']:.3f} | "
          f"{o['metadata'] / u['metadata']:.2f}x |")
    print(f"| of which the body received (s) | {u['metadata_body']:.3f} | {o['metadata_body']:.3f} | "
          f"{o['metadata_body'] / u['metadata_body']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
