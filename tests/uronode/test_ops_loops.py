"""A loop that fails round after round: its log is bounded (the first traceback, then one counted line a
while, then a line when it recovers) and ``/readyz`` names it (probe10, sections 2 and 12: a full traceback
5 times a second while the disk was full, and ``ready`` all along)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.peers.processes import wait_until
from tests.uronode.test_loops import node_settings, readyz, serving
from uronode import loops as loops_module
from uronode.loops import Loops


@pytest.fixture
def loops() -> Iterator[Loops]:
    started = Loops()
    yield started
    started.stop()


class Breakable:
    """A loop body that fails (with a message whose number changes each round, as a real one's may) while
    ``broken`` is set."""

    def __init__(self) -> None:
        self.broken = threading.Event()
        self.broken.set()
        self.rounds = 0

    def __call__(self) -> None:
        self.rounds += 1
        if self.broken.is_set():
            raise OSError(f"[Errno 28] No space left on device: 'tmp/{self.rounds}.part'")


def messages(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if f"loop {name}:" in r.getMessage()]


def test_a_loop_failing_every_round_logs_one_traceback_then_counts_then_says_it_recovered(
    loops: Loops, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loops_module, "REPEAT_LOG_S", 0.3)
    body = Breakable()
    loop = loops.add("completion", body, 0.01)
    with caplog.at_level(logging.INFO, logger="uronode.loops"):
        loops.start()
        wait_until(lambda: any("failed again" in r.getMessage() for r in messages(caplog, "completion")), 30,
                   "a counted line for the repeated failures")
        failed = loop.failures
        body.broken.clear()
        wait_until(lambda: any("succeeded again" in r.getMessage() for r in messages(caplog, "completion")), 30,
                   "the line that says the loop recovered")
    records = messages(caplog, "completion")
    with_traceback = [r for r in records if r.exc_info is not None]
    assert len(with_traceback) == 1 and "No space left on device" in str(with_traceback[0].exc_info[1])  # type: ignore[index]  # checked not None
    assert failed > 10 and len(records) < failed / 2, (failed, [r.getMessage() for r in records])
    counted = [r.getMessage() for r in records if "failed again" in r.getMessage()]
    assert counted and all("time(s) in" in m and "No space left on device" in m for m in counted), counted
    (recovered,) = [r.getMessage() for r in records if "succeeded again" in r.getMessage()]
    assert "failed round(s)" in recovered


def test_readyz_names_a_loop_that_fails_every_round_until_it_recovers(tmp_path: Path, loops: Loops) -> None:
    body = Breakable()
    loops.add("delivery", body, 0.02, failing_after_s=0.3)
    with serving(node_settings(tmp_path / "data"), loops) as base:
        loops.start()
        wait_until(lambda: readyz(base)[0] == 503, 30, "/readyz to name the failing loop")
        status, answer = readyz(base)
        detail = str(answer["detail"])
        assert status == 503 and detail.startswith("loop delivery has failed its last "), detail
        assert "OSError: [Errno 28] No space left on device" in detail
        assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200  # liveness is not readiness
        body.broken.clear()
        wait_until(lambda: readyz(base)[0] == 200, 30, "/readyz to be ready once the rounds succeed")


def test_one_failed_round_is_not_a_failing_loop(loops: Loops) -> None:
    body = Breakable()
    loop = loops.add("dispatch", body, 0.01, failing_after_s=0.0001)
    loops.start()
    wait_until(lambda: loop.failures >= 1, 30, "the failed round")
    body.broken.clear()
    wait_until(lambda: loop.failed_in_a_row == 0, 30, "a round that succeeds")
    assert loops.problems() == []
