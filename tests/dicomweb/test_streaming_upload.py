"""A 1 GiB STOW-RS does not stall the node: the body goes to disk as it arrives, the storing runs off the event loop.

A real node takes a STOW-RS of 1 GiB (about 1,700 instances: real files from
pydicom's test data, each sent again and again under a new SOP Instance UID),
streamed from a generator by a process of its own, so that neither the test
nor its clock holds or waits for the body. While it is in flight,
``/healthz`` and a QIDO-RS search are polled every 50 ms (after one warm-up
request each): each must answer within 100 ms, and the node's resident memory
must grow by less than 100 MB. Every instance must then be stored.

The 100 ms are a bound on blocking, not a benchmark: on a machine whose CPUs
are shared with other work, any process waits for a CPU now and then (an idle
node was measured answering in up to 210 ms on the 2-core development machine
while a model trained on it). So a second node, idle, is polled in the same
rounds; its slowest answer to either request is how long the machine keeps a
process waiting, and the bound is 100 ms plus twice that: twice, because an
answer of the uploading node can wait for a CPU once for itself and once more
for its storing thread to let go of the GIL. On a quiet machine the bound is
about 100 ms; on a busy one, the machine's noise is not taken for blocking.
Of each kind of request, the one slowest answer may take up to 1 s (at load 8,
one answer of 190 ms came among idle answers of 26 ms at most): a single wait
for a CPU is not blocking; blocking is a stall (seconds, caught by the 1 s) or
answers slow again and again (caught by all the others).
Before uploads were streamed, the node answered nothing for 24-32 s during
this upload and grew by 1.1-1.6 GB; streamed, it grows by about 13 MB, and
the whole test takes about 50 s here.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.peers.processes import Node

BODY_BYTES = 1024**3
TEMPLATES = ("693_UNCR.dcm", "eCT_Supplemental.dcm", "US1_UNCR.dcm", "CT_small.dcm")
"""Real files: a CT slice, an enhanced CT, an ultrasound image, a small CT (0.5, 1, 0.9 and 0.04 MB)."""
BOUNDARY = "uronode-streaming-test"
PATHS = ("/healthz", "/dicom-web/series?limit=10")
LATENCY_BOUND_S = 0.100
STALL_BOUND_S = 1.0
"""The one slowest answer of each kind may take up to this: one wait for a CPU is not blocking, a stall is."""
MEMORY_BOUND_BYTES = 100 * 1024**2
POLL_INTERVAL_S = 0.05


@dataclass(frozen=True)
class Template:
    """A real DICOM file and the bytes of its SOP Instance UID, to be replaced by others of the same length."""

    data: bytes
    sop_instance_uid: bytes
    study_instance_uid: str
    series_instance_uid: str

    @classmethod
    def load(cls, name: str) -> Template:
        path = get_testdata_file(name)
        assert path is not None, f"pydicom's test file {name} is missing"
        data = Path(path).read_bytes()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return cls(data, str(ds.SOPInstanceUID).encode(), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))

    def copy(self, number: int) -> bytes:
        """The file again, its SOP Instance UID (file meta and data set) made unique by ``number``."""
        tail = str(number)
        uid = b"2.25.9" + b"0" * (len(self.sop_instance_uid) - 6 - len(tail)) + tail.encode()
        assert len(uid) == len(self.sop_instance_uid)
        return self.data.replace(self.sop_instance_uid, uid)


def part_head(number: int) -> bytes:
    return f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\nContent-ID: <{number}>\r\n\r\n".encode()


def plan(templates: list[Template], total: int) -> list[Template]:
    """Which template each instance copies, round robin, until the body holds ``total`` bytes."""
    chosen: list[Template] = []
    size = 0
    while size < total:
        template = templates[len(chosen) % len(templates)]
        size += len(part_head(len(chosen))) + len(template.data) + 2
        chosen.append(template)
    return chosen


def stow_body(chosen: list[Template]) -> Iterator[bytes]:
    for number, template in enumerate(chosen):
        yield part_head(number)
        yield template.copy(number)
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


def body_length(chosen: list[Template]) -> int:
    closing = len(f"--{BOUNDARY}--\r\n")
    return sum(len(part_head(n)) + len(t.data) + 2 for n, t in enumerate(chosen)) + closing


def upload(base: str, total: int, answer: Connection) -> None:
    """Send the STOW-RS (in a process of its own, so that its work never delays the probe's clock; at a lower
    priority, so that the test's own load generator takes no CPU from the nodes it measures)."""
    os.nice(10)
    chosen = plan([Template.load(name) for name in TEMPLATES], total)
    response = httpx.post(
        f"{base}/dicom-web/studies",
        content=stow_body(chosen),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Content-Length": str(body_length(chosen)),
            "Accept": "application/dicom+json",
        },
        timeout=600,
    )
    stored = response.json().get("00081199", {}).get("Value", []) if response.status_code < 300 else []
    answer.send((response.status_code, len(stored), response.text[:2000] if response.status_code != 200 else ""))


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@dataclass
class Probe:
    """Polls nodes in rounds while an upload is in flight: how long each (node, path) took to answer, the largest
    resident memory of the node that takes the upload."""

    bases: dict[str, str]
    pid: int
    answers: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    rounds: int = 0
    peak_rss: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)

    def _run(self) -> None:
        clients = {name: httpx.Client(base_url=base, timeout=60) for name, base in self.bases.items()}
        try:
            for client in clients.values():  # one connection each, open and warm before the upload starts
                for path in PATHS:
                    client.get(path)
            while not self._stop.is_set():
                for name, client in clients.items():
                    for path in PATHS:
                        start = time.perf_counter()
                        response = client.get(path)
                        elapsed = time.perf_counter() - start
                        if response.status_code != 200:
                            self.failures.append(f"{name} {path}: {response.status_code}")
                        self.answers.setdefault((name, path), []).append(elapsed)
                self.rounds += 1
                self.peak_rss = max(self.peak_rss, resident_bytes(self.pid))
                self._stop.wait(POLL_INTERVAL_S)
        finally:
            for client in clients.values():
                client.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_1_gib_stow_leaves_the_node_responsive(start_node: Callable[..., Node]) -> None:
    node, idle = start_node(), start_node()
    assert node.proc is not None
    pid = node.proc.popen.pid  # `uronode serve` itself: the HTTP server runs in its main process
    base = f"http://127.0.0.1:{node.http_port}"
    templates = [Template.load(name) for name in TEMPLATES]
    chosen = plan(templates, BODY_BYTES)
    before = resident_bytes(pid)
    receive, send = multiprocessing.Pipe(duplex=False)
    sender = multiprocessing.get_context("spawn").Process(target=upload, args=(base, BODY_BYTES, send))
    with Probe({"node": base, "idle": f"http://127.0.0.1:{idle.http_port}"}, pid) as probe:
        while probe.rounds < 1:  # the warm-up requests are done
            time.sleep(0.01)
        sender.start()
        try:
            assert receive.poll(540), "the STOW-RS got no answer"
            status, referenced, text = receive.recv()
        finally:
            sender.join(30)
    grown = max(probe.peak_rss, resident_bytes(pid)) - before
    slowest = {key: sorted(times, reverse=True)[:2] for key, times in probe.answers.items()}
    measured = ", ".join(f"{name} {path} {' and '.join(f'{t * 1000:.0f}' for t in times)} ms"
                         for (name, path), times in sorted(slowest.items()))
    assert status == 200, text
    assert referenced == len(chosen)
    assert not probe.failures, probe.failures[:10]
    assert probe.rounds >= 10, f"only {probe.rounds} rounds of polling during the upload"
    noise = max(slowest["idle", path][0] for path in PATHS)  # how long this machine kept a process waiting
    for path in PATHS:
        worst, next_worst = slowest["node", path]
        assert worst < STALL_BOUND_S, f"{path} stalled during the upload: {measured}"
        assert next_worst < LATENCY_BOUND_S + 2 * noise, f"{path} answered too slowly during the upload: {measured}"
    assert grown < MEMORY_BOUND_BYTES, f"the node grew by {grown / 1024**2:.0f} MB during the upload"
    # every instance is there, counted by QIDO-RS series by series
    expected: dict[str, int] = {}
    for template in chosen:
        expected[template.series_instance_uid] = expected.get(template.series_instance_uid, 0) + 1
    for template in templates:
        found = httpx.get(f"{base}/dicom-web/studies/{template.study_instance_uid}/series",
                          params={"SeriesInstanceUID": template.series_instance_uid}, timeout=30).json()
        (series,) = found
        assert series["00201209"]["Value"] == [expected[template.series_instance_uid]]
