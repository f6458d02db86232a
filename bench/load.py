"""Load and soak: many CT series at once into a real node, results into a real Orthanc, DICOMweb reads meanwhile.

Load (default): 8 DCMTK storescu processes each send a 100-slice 512x512 CT
series at the same moment (8 concurrent associations) to ``uronode serve``
with its default settings (one worker, 2 s grace), while 2 HTTP clients read
its DICOMweb without pause (QIDO-RS, series metadata, frames). Reports the
time until every result is in Orthanc, the node's peak memory (PSS of its
whole process tree, sampled every 0.25 s), and any failure; exits 1 if a
series was not processed, a result is missing or twice in Orthanc, or a send
or read failed.

Soak (``--soak-minutes M``): the same round again and again, with new series
each round, for M minutes, with retention on (received series deleted 60 s
after they arrive) so the disk stays bounded; reports the node's memory at
the end of each round once it is idle, and exits 1 if it grew more than
``--max-growth`` (default 10 %) from the first rounds to the last.

Everything runs in a private network namespace on loopback. Not in CI: the
CI test tests/load/test_load.py runs one round at 256 x 256.
Usage: python -m bench.load [--series 8] [--slices 100] [--rows 512] [--readers 2] [--soak-minutes M] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.load.scenario import LoadOutcome, run_load, tree_pss_mb, write_load_series
from tests.peers.netns import reexec_in_netns
from tests.peers.processes import Node, start_orthanc


@dataclass(frozen=True)
class Round:
    number: int
    outcome: LoadOutcome
    idle_pss_mb: float
    """The node's memory once the round is over and it is idle."""

    def to_json(self) -> dict[str, object]:
        return {"round": self.number, **self.outcome.to_json(), "idle_pss_mb": self.idle_pss_mb}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=8, help="series sent at once (one association each)")
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--readers", type=int, default=2, help="DICOMweb clients reading meanwhile")
    parser.add_argument("--soak-minutes", type=float, default=0.0)
    parser.add_argument("--max-growth", type=float, default=10.0, help="soak: allowed memory growth, percent")
    parser.add_argument("--json", type=Path, help="write every figure here as JSON")
    args = parser.parse_args()
    reexec_in_netns()
    work = Path(tempfile.mkdtemp(prefix="uronode-bench-load-"))
    http, dicom = 18400, 11400
    orthanc = start_orthanc(work / "orthanc", http_port=http, dicom_port=dicom)
    destination = [{"name": "pacs", "kind": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom}]
    env = {"URONODE_DELIVERY__DESTINATIONS": json.dumps(destination)}
    if args.soak_minutes:
        env |= {"URONODE_STORAGE__RETENTION_DAYS": str(60 / 86400), "URONODE_STORAGE__RETENTION_INTERVAL_S": "10"}
    node = Node(work / "node", 11401, 18401, extra_env=env).start()
    assert node.proc is not None
    rounds: list[Round] = []
    failed: list[str] = []
    deadline = time.monotonic() + args.soak_minutes * 60
    try:
        number = 0
        while True:
            folder = work / f"round{number}"
            made = write_load_series(folder, series=args.series, slices=args.slices, rows=args.rows,
                                     seed=7000 + 100 * number)
            outcome = run_load(node, http, made, readers=args.readers, deletions_expected=bool(args.soak_minutes))
            shutil.rmtree(folder, ignore_errors=True)
            time.sleep(2)  # let the last delivery round and the HTTP server go idle
            done = Round(number, outcome, round(tree_pss_mb(node.proc.popen.pid), 1))
            rounds.append(done)
            print(json.dumps(done.to_json()), flush=True)
            failed += [f"round {number}: {p}" for p in outcome.problems()]
            number += 1
            if time.monotonic() >= deadline or failed:
                break
    finally:
        node.stop()
        orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)
    machine, date = f"{platform.node()}, {platform.platform()}", time.strftime("%Y-%m-%d")
    report: dict[str, object] = {"machine": machine, "date": date, "rounds": [r.to_json() for r in rounds],
                                 "problems": failed}
    rows = rounds[0].outcome.rows
    print()
    print(f"machine: {machine}, {date}")
    print(f"| {args.series} series x {args.slices} slices of {rows}x{rows}, {args.readers} readers "
          f"| sending | until all results in Orthanc | results (each once) | DICOMweb reads | node peak PSS |")
    print("|---|---|---|---|---|---|")
    for r in rounds[:1] if not args.soak_minutes else rounds:
        o = r.outcome
        print(f"| round {r.number} | {o.send_s:.1f} s | {o.all_delivered_s:.1f} s | {o.results_in_orthanc} "
              f"| {o.reads} ({len(o.read_errors)} errors, {o.reads_gone} deleted meanwhile) "
              f"| {o.peak_pss_mb:.0f} MB |")
    if args.soak_minutes and len(rounds) >= 4:
        early = statistics.median(r.idle_pss_mb for r in rounds[1:3])  # round 0 still warms caches
        late = statistics.median(r.idle_pss_mb for r in rounds[-2:])
        growth = 100 * (late - early) / early
        report["idle_pss_growth_percent"] = round(growth, 1)
        print(f"soak: {len(rounds)} rounds, idle PSS {early:.0f} MB (rounds 1-2) -> {late:.0f} MB (last 2): "
              f"{growth:+.1f} % (allowed {args.max_growth:g} %)")
        if growth > args.max_growth:
            failed.append(f"memory grew {growth:.1f} %")
    elif args.soak_minutes:
        failed.append(f"only {len(rounds)} rounds: too short a soak to judge memory")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    for problem in failed:
        print(f"PROBLEM: {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
