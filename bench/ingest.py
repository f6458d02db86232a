"""Benchmark: how fast the node receives CT over DICOM, against DCMTK storescp and Orthanc in the same run.

300 CT instances of 512x512 (about 512 KB each) go from DCMTK storescu in one
association to each receiver in turn, for several rounds, each round with
fresh SOP Instance UIDs (no receiver gets an easy duplicate). A second case
sends 4 series of 75 instances over 4 concurrent associations. Everything runs
in a private network namespace on loopback, TCP_NODELAY=1 for DCMTK and
Orthanc. The node runs as ``uronode serve`` with its defaults (fsync on) but
for its worker: it runs no model unless ``--worker`` (the peers only receive;
a model run takes both cores for seconds after each series and would slow
whichever receiver came next). Before every timed send the bench writes and
deletes a scratch file larger than what the receiver is about to write
(``prime_page_cache``): on a virtual machine whose host takes freed guest
memory back (free page reporting), the first touch of every page costs a
fault on the host, and a receiver writing into never-touched memory ran 3-10x
slower than one writing into recycled pages; priming gives each receiver the
same recycled pages. For the same reason the bench's memory stays flat: each
round's files are written just before its sends and deleted after them, and
the peers' copies (storescp's files, Orthanc's studies) are counted and
deleted after each round; the node's stay and are counted from its index.

``--baseline DIR`` adds a fourth receiver: the node as an earlier revision's
checkout (``git worktree add DIR REV``) runs it, started the same way beside
the current one, so that "no worse than the record" is measured in one run
on one machine state instead of against figures taken on another day.

Usage: python -m bench.ingest [--rounds N] [--json FILE] [--no-fsync] [--worker] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
# more than a send writes (300 instances of about 512 KB), so that the receiver's new page-cache pages are recycled ones
PRIME_BYTES = 512 << 20


def prime_page_cache(folder: Path, nbytes: int = PRIME_BYTES) -> None:
    """Write and delete ``nbytes`` so that the page cache's next pages are ones the host already backs.

    Measured on this project's development VMs (Firecracker, virtio balloon with free page reporting):
    writing 300 MB into the page cache took 2.1-3.0 s into memory the guest had not touched lately and
    0.07-0.10 s right after 400 MB had been written and deleted, 96 % of the time in the guest's copy into
    fresh pages (the host faulting them in). The file is deleted before write-back, so it costs no disk I/O.
    """
    scratch = folder / "prime.bin"
    block = b"\0" * (1 << 20)
    with scratch.open("wb") as f:
        for _ in range(nbytes >> 20):
            f.write(block)
    scratch.unlink()


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


def fsync_ms(folder: Path, count: int = 100) -> float:
    """Median time (ms) to write a 512 KB file, fsync it and fsync its directory, as the node does for each
    instance before its success status (it fsyncs its index's commit too). The peers fsync no file, so the
    node's ratios move with this figure of the machine's disk: it is printed with every run."""
    probe = folder / "fsync-probe"
    probe.mkdir()
    data = os.urandom(512 * 1024)
    times = []
    directory = os.open(probe, os.O_RDONLY)
    try:
        for i in range(count):
            t0 = time.perf_counter()
            fd = os.open(probe / f"{i}", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.fsync(directory)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(directory)
        shutil.rmtree(probe)
    return statistics.median(times) * 1e3


def _clear_peer(rx: str, storescp_out: Path, orthanc_url: str) -> int:
    """A peer's instances of the round just sent, counted, then deleted (storescp's files, Orthanc's studies)
    so that the peers' memory does not grow from round to round either; the node's stay (it is counted at
    the end from its index)."""
    if rx == "storescp":
        files = list(storescp_out.iterdir())
        for f in files:
            f.unlink()
        return len(files)
    if rx == "orthanc":
        with urllib.request.urlopen(f"{orthanc_url}/statistics") as r:
            count = int(json.load(r)["CountInstances"])
        with urllib.request.urlopen(f"{orthanc_url}/studies") as r:
            studies = json.load(r)
        for study in studies:
            urllib.request.urlopen(urllib.request.Request(f"{orthanc_url}/studies/{study}", method="DELETE")).close()
        return count
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (one more warms up)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-fsync", action="store_true",
                        help="run the node with storage.fsync off, as the peers run (only to tell the receive path's "
                             "own cost from the disk's fsync latency; the node's default and the record keep it on)")
    parser.add_argument("--worker", action="store_true",
                        help="let the node's worker run the model on every series it receives, as in service (by "
                             "default it runs none: receiving alone, as the peers do)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run the node from this checkout of an earlier revision (git worktree add DIR REV), "
                             "with the same settings, as a fourth receiver")
    args = parser.parse_args()
    if args.baseline and not (args.baseline / "uronode" / "__main__.py").is_file():
        parser.error(f"--baseline {args.baseline}: no uronode package there (a checkout of this repository is expected)")
    reexec_in_netns()

    work = Path(tempfile.mkdtemp(prefix="uronode-bench-ingest-"))
    receivers = ["uronode", "storescp", "orthanc"] + (["baseline"] if args.baseline else [])
    results: dict[str, dict[str, list[float]]] = {r: {"single": [], "concurrent": []} for r in receivers}
    received = {r: 0 for r in receivers}
    port, http = 11200, 18200
    called = {"uronode": ("URONODE", port), "storescp": ("STORESCP", port + 1), "orthanc": ("ORTHANC", port + 2),
              "baseline": ("URONODE", port + 3)}
    orthanc_url = f"http://127.0.0.1:{http + 2}"

    # All three run side by side; each round sends to each of them in turn, in a rotating order,
    # so that the machine's noise falls on all of them alike. Round 0 warms up and is not counted.
    # Without --worker the node runs no model: the peers receive and nothing else, the model's seconds
    # of CPU per series would fall on whichever receiver came next, and the 2026-11-26 record was
    # measured before the node had a worker (bench.e2e times the model).
    node_env = {} if args.worker else {"URONODE_INFERENCE__WORKERS": "0"}
    if args.no_fsync:
        node_env["URONODE_STORAGE__FSYNC"] = "false"
    fsync_before = fsync_ms(work)
    node = Node(work / "uronode", port, http, extra_env=node_env).start()
    scp = start_storescp(work / "storescp-out", port + 1)
    orthanc = start_orthanc(work / "orthanc", http_port=http + 2, dicom_port=port + 2)
    baseline = None
    if args.baseline:
        # started from the checkout's folder, so that python -m uronode imports the earlier revision's packages
        baseline = Node(work / "baseline", port + 3, http + 3, extra_env=node_env, cwd=args.baseline.resolve()).start()
    try:
        for n in range(args.rounds + 1):
            k = n % len(receivers)
            order = receivers[k:] + receivers[:k]
            for rx in order:
                ae, dport = called[rx]
                # This round's data, written now and deleted after it: the bench's memory stays about the
                # same from round to round (see prime_page_cache), and every send reads files just written.
                single = work / "data" / f"{rx}-single-{n}"
                write_series(single, SINGLE, size=512)
                group = [work / "data" / f"{rx}-conc-{n}-{a}" for a in range(CONCURRENT)]
                for folder in group:
                    write_series(folder, PER_ASSOC, size=512)
                # storescp and Orthanc leave their files to the kernel's write-back (no fsync); flush it
                # first, so that no receiver's fsyncs wait behind another one's dirty pages.
                os.sync()
                prime_page_cache(work)
                one = SINGLE / send_one(dport, ae, single)
                os.sync()
                prime_page_cache(work)
                many = CONCURRENT * PER_ASSOC / send_concurrent(dport, ae, group)
                shutil.rmtree(work / "data")
                received[rx] += _clear_peer(rx, work / "storescp-out", orthanc_url)
                if n == 0:
                    continue
                results[rx]["single"].append(one)
                results[rx]["concurrent"].append(many)
                print(f"  round {n}: {rx:8s} {one:5.0f}/s one association, {many:5.0f}/s over {CONCURRENT}", flush=True)
        expected = (args.rounds + 1) * (SINGLE + CONCURRENT * PER_ASSOC)
        import sqlite3

        # what storescu sent (calling AE BENCH, BENCH0...), not the results the node's worker made meanwhile
        for rx in ("uronode", "baseline"):
            if rx in receivers:
                received[rx] = sqlite3.connect(work / rx / "index.sqlite3").execute(
                    "select count(*) from instances where calling_ae LIKE 'BENCH%'"
                ).fetchone()[0]
        print("  received: " + ", ".join(f"{rx} {received[rx]}" for rx in receivers) + f" (each expected {expected})")
        wrong = {rx: count for rx, count in received.items() if count != expected}
        if wrong:
            raise RuntimeError(f"instances received {wrong}, expected {expected} each")
    finally:
        node.stop()
        if baseline:
            baseline.stop()
        scp.stop()
        orthanc.stop()
    fsync_after = fsync_ms(work)

    med = {rx: {case: statistics.median(v) for case, v in results[rx].items()} for rx in receivers}
    # The ratio of each round (same minute, same machine state), then their median.
    ratios = {
        case: {
            peer: statistics.median(u / p for u, p in zip(results["uronode"][case], results[peer][case], strict=True))
            for peer in receivers[1:]
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
    if baseline:
        rev = subprocess.run(["git", "-C", str(args.baseline), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip() or str(args.baseline)
        for case, label in (("single", "1 association"), ("concurrent", f"{CONCURRENT} associations")):
            print(f"baseline ({rev}), {label}: {med['baseline'][case]:.0f}/s; uronode / baseline "
                  f"{ratios[case]['baseline']:.2f}")
    print(f"node's fsync {'off' if args.no_fsync else 'on'}; the disk: 512 KB written + fsync + directory fsync "
          f"{fsync_before:.2f} ms before the rounds, {fsync_after:.2f} ms after (median of 100)")
    if args.json:
        args.json.write_text(json.dumps({"rounds": results, "median": med, "ratios": ratios, "node_fsync": not args.no_fsync,
                                         "fsync_ms": [fsync_before, fsync_after]}, indent=2))
    subprocess.run(["rm", "-rf", str(work)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
