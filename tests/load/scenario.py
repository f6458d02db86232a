"""The load scenario, shared by the CI test (tests/load/test_load.py) and the benchmark (bench/load.py).

Several DCMTK storescu processes send one CT series each, at the same time
(one association per series), to a real node whose results go to a real
Orthanc, while HTTP clients keep reading the node's DICOMweb (QIDO-RS,
series metadata, frames). The node's memory is sampled all along: the
proportional set size (PSS, shared pages split between processes) of its
whole process tree. The outcome says whether every series was processed and
every result delivered exactly once, and whether anything failed.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pydicom

from lab.synth import generate_phantom, write_series
from tests.peers.orthanc import sop_instance_uids_in_study
from tests.peers.processes import DCMTK_ENV, Node, require, wait_until


@dataclass
class LoadOutcome:
    series: int
    slices: int
    rows: int
    send_s: float = 0.0
    all_delivered_s: float = 0.0
    send_failures: list[str] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)
    results_owed: int = 0
    results_in_orthanc: int = 0
    duplicates_in_orthanc: int = 0
    missing_in_orthanc: int = 0
    reads: int = 0
    reads_gone: int = 0
    read_errors: list[str] = field(default_factory=list)
    peak_pss_mb: float = 0.0
    pss_samples_mb: list[float] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Everything that went wrong; empty when the run met the bar."""
        found = [f"send: {f}" for f in self.send_failures] + [f"read: {e}" for e in self.read_errors[:5]]
        if self.jobs != {"delivered": self.series}:
            found.append(f"jobs {self.jobs}, expected {self.series} delivered")
        if self.duplicates_in_orthanc or self.missing_in_orthanc:
            found.append(f"Orthanc: {self.missing_in_orthanc} results missing, {self.duplicates_in_orthanc} twice")
        if self.reads == 0:
            found.append("no DICOMweb read was made")
        return found

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("pss_samples_mb")
        return data


def tree_pss_mb(pid: int) -> float:
    """PSS of a process and all its descendants, in MB (from /proc/<pid>/smaps_rollup)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total_kb, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
                    break
        except OSError:
            continue
    return total_kb / 1024


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.samples.append(tree_pss_mb(self.pid))


class Reader(threading.Thread):
    """A DICOMweb client reading whatever the node holds, over and over, until told to stop."""

    def __init__(self, base: str, seed: int, *, deletions_expected: bool = False) -> None:
        super().__init__(daemon=True)
        self.base, self.random = base, random.Random(seed)
        self.deletions_expected = deletions_expected
        self.reads = 0
        self.gone = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def get(self, path: str, accept: str) -> bytes:
        request = urllib.request.Request(self.base + path, headers={"Accept": accept})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                self.reads += 1
                return response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and self.deletions_expected:
                self.gone += 1  # retention deleted the series between two requests: a right answer
            else:
                self.errors.append(f"GET {path}: {exc}")
            return b""
        except (urllib.error.URLError, OSError) as exc:
            self.errors.append(f"GET {path}: {exc}")
            return b""

    def run(self) -> None:
        while not self.stop.is_set():
            studies = json.loads(self.get("/studies", "application/dicom+json") or b"[]")
            if not studies:
                self.stop.wait(0.2)
                continue
            study = self.random.choice(studies)["0020000D"]["Value"][0]
            series_list = json.loads(self.get(f"/studies/{study}/series", "application/dicom+json") or b"[]")
            if not series_list:
                continue
            series = self.random.choice(series_list)["0020000E"]["Value"][0]
            metadata = json.loads(self.get(f"/studies/{study}/series/{series}/metadata", "application/dicom+json")
                                  or b"[]")
            for instance in self.random.sample(metadata, min(3, len(metadata))):
                sop = instance["00080018"]["Value"][0]
                if "7FE00010" in instance:
                    self.get(f"/studies/{study}/series/{series}/instances/{sop}/frames/1",
                             'multipart/related; type="application/octet-stream"; transfer-syntax=*')


def write_load_series(folder: Path, *, series: int, slices: int, rows: int, seed: int = 7000) -> list[tuple[str, Path]]:
    """Distinct synthetic CT series (each with stones); returns (study UID, folder) for each."""
    made = []
    for i in range(series):
        phantom = generate_phantom(seed + i, rows=rows, slices=slices, slice_spacing=2.5, n_stones=2,
                                   coverage=(0.62, 0.92), stone_sites=("kidney",))
        target = folder / f"series{i}"
        write_series(phantom, target)
        made.append((phantom.study_instance_uid, target))
    return made


def run_load(node: Node, orthanc_http: int, made: list[tuple[str, Path]], *, readers: int = 2,
             timeout_s: float = 900, sampler_interval_s: float = 0.25, deletions_expected: bool = False) -> LoadOutcome:
    """Send every series at once, read over DICOMweb meanwhile, wait until all is delivered, count.

    ``deletions_expected``: retention is on, so a 404 for a series deleted between
    the metadata and the frame request is counted as gone, not as an error."""
    assert node.proc is not None
    files = sorted(made[0][1].iterdir())
    rows = int(pydicom.dcmread(files[0], stop_before_pixels=True).Rows)
    outcome = LoadOutcome(series=len(made), slices=len(files), rows=rows)
    sampler = MemorySampler(node.proc.popen.pid, sampler_interval_s)
    sampler.start()
    clients = [Reader(f"http://127.0.0.1:{node.http_port}/dicom-web", seed, deletions_expected=deletions_expected)
               for seed in range(readers)]
    for client in clients:
        client.start()
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            [require("storescu"), "-aet", f"SCANNER{i}", "-aec", node.ae_title, "127.0.0.1", str(node.dicom_port),
             "+sd", str(folder)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV,
        )
        for i, (_, folder) in enumerate(made)
    ]
    for i, sender in enumerate(senders):
        output, _ = sender.communicate(timeout=timeout_s)
        if sender.returncode != 0:
            outcome.send_failures.append(f"series {i}: storescu exited {sender.returncode}: {output[-300:]}")
    outcome.send_s = time.perf_counter() - started
    index = node.data_dir / "index.sqlite3"

    studies = [study for study, _ in made]
    marks = ",".join("?" * len(studies))

    def job_states() -> dict[str, int]:
        """This round's jobs by state (a soak runs round after round on one node)."""
        with sqlite3.connect(index, timeout=30) as conn:
            return dict(conn.execute(f"SELECT state, count(*) FROM jobs WHERE study_instance_uid IN ({marks})"
                                     " GROUP BY state", studies).fetchall())

    def settled() -> bool:
        states = job_states()
        return sum(states.values()) >= len(made) and not {"queued", "running", "delivering"} & states.keys()

    try:
        wait_until(settled, timeout_s, "every job to be delivered or failed", interval=0.5)
    finally:
        outcome.all_delivered_s = time.perf_counter() - started
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(60)
        sampler.stop.set()
        sampler.join(5)
    outcome.jobs = job_states()
    outcome.reads = sum(c.reads for c in clients)
    outcome.reads_gone = sum(c.gone for c in clients)
    outcome.read_errors = [e for c in clients for e in c.errors]
    outcome.pss_samples_mb = sampler.samples
    outcome.peak_pss_mb = max(sampler.samples, default=0.0)
    with sqlite3.connect(index, timeout=30) as conn:
        owed = {r[0] for r in conn.execute(
            "SELECT d.sop_instance_uid FROM deliveries d JOIN jobs j ON j.id = d.job_id"
            f" WHERE d.state = 'delivered' AND j.study_instance_uid IN ({marks})", studies)}
    outcome.results_owed = len(owed)
    in_orthanc = [uid for study, _ in made for uid in sop_instance_uids_in_study(orthanc_http, study)]
    outcome.results_in_orthanc = len(in_orthanc)
    outcome.duplicates_in_orthanc = len(in_orthanc) - len(set(in_orthanc))
    outcome.missing_in_orthanc = len(owed - set(in_orthanc))
    return outcome
