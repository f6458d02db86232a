"""The node's background loops, each in a thread and watched through its heartbeat.

A :class:`Loop` runs its body every ``interval_s`` seconds until the node stops. An exception in
a round is logged and the loop goes on with the next round; every round that
ends, well or not, records a heartbeat. A loop whose thread has ended, whose heartbeat is
older than its ``stale_after_s`` (a round stuck, on a lock or a peer that never answers), or whose
every round has failed for ``failing_after_s`` (a full disk, a peer that breaks each round) is
reported by :meth:`Loops.problems`, and ``/readyz`` answers 503 naming it.

A failing round's log is bounded: the first failure of a kind (the exception's type and message, its
numbers left out) is logged with its traceback; the same kind again, at most one line every
:data:`REPEAT_LOG_S` with how many there were; the first round that succeeds after failures, one line.

``stale_after_s`` is a few intervals, and at least as long as one round may take when all is
well (a delivery round sends up to a thousand instances; restarting a receiving process waits
up to two minutes for it).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

STALE_INTERVALS = 5
"""By default a loop is late after this many intervals without a heartbeat ..."""
MIN_STALE_S = 60.0
"""... and never sooner than this."""
REPEAT_LOG_S = 60.0
"""A failure of a kind already logged is logged again at most this often, counted."""
MAX_KINDS = 20
"""Kinds of failure remembered at once; any more are counted together."""
_NUMBERS = re.compile(r"\d+")


class Loop:
    """One background loop: ``body`` every ``interval_s``, surviving its exceptions, with a heartbeat."""

    def __init__(
        self,
        name: str,
        body: Callable[[], object],
        interval_s: float,
        *,
        stale_after_s: float | None = None,
        first_round_at_once: bool = False,
        failing_after_s: float | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"loop {name}: interval_s must be positive, not {interval_s}")
        if stale_after_s is not None and stale_after_s <= 0:
            raise ValueError(f"loop {name}: stale_after_s must be positive, not {stale_after_s}")
        self.name = name
        self.body = body
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s if stale_after_s is not None else max(
            STALE_INTERVALS * interval_s, MIN_STALE_S
        )
        self.failing_after_s = failing_after_s if failing_after_s is not None else min(
            self.stale_after_s, max(STALE_INTERVALS * interval_s, MIN_STALE_S)
        )
        """A loop whose every round has failed for this long (two rounds at least) is reported."""
        self.first_round_at_once = first_round_at_once
        self.heartbeat = time.monotonic()
        """When the loop started or last finished a round (``time.monotonic``)."""
        self.rounds = 0
        self.failures = 0
        """Rounds that raised."""
        self.failed_in_a_row = 0
        self.failing_since: float | None = None
        """When the first of the rounds that failed in a row ended (None: the last round succeeded)."""
        self.last_failure: str | None = None
        self._kinds: dict[str, list[float]] = {}
        """Each kind of failure since the last good round: [when it was last logged, how many since]."""
        self._thread: threading.Thread | None = None

    def run(self, stop: threading.Event) -> None:
        """Run rounds until ``stop`` is set (the loop's thread does this)."""
        self.heartbeat = time.monotonic()
        if not self.first_round_at_once and stop.wait(self.interval_s):
            return
        while True:
            try:
                self.body()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one round; logged, bounded
                self._failed(exc)
            else:
                self._succeeded()
            self.rounds += 1
            self.heartbeat = time.monotonic()
            if stop.wait(self.interval_s):
                return

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self.failures += 1
        self.failed_in_a_row += 1
        if self.failing_since is None:
            self.failing_since = now
        said = f"{type(exc).__name__}: {exc}"
        self.last_failure = said[:300]
        kind = _NUMBERS.sub("N", said)[:300]
        if kind not in self._kinds and len(self._kinds) >= MAX_KINDS:
            kind = "other"
        seen = self._kinds.get(kind)
        if seen is None:
            self._kinds[kind] = [now, 0]
            log.error("loop %s: a round failed (%d so far); the loop goes on", self.name, self.failures, exc_info=exc)
            return
        seen[1] += 1
        if now - seen[0] >= REPEAT_LOG_S:
            log.error("loop %s: a round failed again, %d time(s) in %.0f s (%d in a row): %s", self.name, seen[1],
                      now - seen[0], self.failed_in_a_row, self.last_failure)
            seen[0], seen[1] = now, 0

    def _succeeded(self) -> None:
        if self.failing_since is not None:
            log.warning("loop %s: a round succeeded again, after %d failed round(s) in %.0f s", self.name,
                        self.failed_in_a_row, time.monotonic() - self.failing_since)
        self.failed_in_a_row = 0
        self.failing_since = None
        self._kinds.clear()

    def start(self, stop: threading.Event) -> None:
        self._thread = threading.Thread(target=self.run, args=(stop,), name=self.name, daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def problem(self, now: float | None = None) -> str | None:
        """Why this loop is not beating, or None while it is."""
        if self._thread is None:
            return f"loop {self.name} has not started"
        if not self._thread.is_alive():
            return f"loop {self.name} has stopped"
        at = time.monotonic() if now is None else now
        age = at - self.heartbeat
        if age > self.stale_after_s:
            return f"loop {self.name} has not finished a round for {age:.0f} s (limit {self.stale_after_s:g} s)"
        failing = self.failing_since
        if failing is not None and self.failed_in_a_row >= 2 and at - failing >= self.failing_after_s:
            return (f"loop {self.name} has failed its last {self.failed_in_a_row} rounds, for {at - failing:.0f} s:"
                    f" {self.last_failure}")
        return None


class Loops:
    """The node's loops: started together, stopped together, watched by ``/readyz``."""

    def __init__(self) -> None:
        self._loops: list[Loop] = []
        self._stop = threading.Event()

    def add(
        self,
        name: str,
        body: Callable[[], object],
        interval_s: float,
        *,
        stale_after_s: float | None = None,
        first_round_at_once: bool = False,
        failing_after_s: float | None = None,
    ) -> Loop:
        if any(loop.name == name for loop in self._loops):
            raise ValueError(f"there is a loop named {name!r} already")
        loop = Loop(name, body, interval_s, stale_after_s=stale_after_s, first_round_at_once=first_round_at_once,
                    failing_after_s=failing_after_s)
        self._loops.append(loop)
        return loop

    @property
    def names(self) -> list[str]:
        return [loop.name for loop in self._loops]

    def start(self) -> None:
        for loop in self._loops:
            loop.start(self._stop)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask every loop to stop and wait for each (a round in progress ends first) up to ``timeout_s``."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for loop in self._loops:
            loop.join(max(0.0, deadline - time.monotonic()))

    def problems(self) -> list[str]:
        """One line for each loop that stopped beating; empty while all of them beat."""
        if self._stop.is_set():
            return ["the node is stopping"]
        now = time.monotonic()
        return [p for loop in self._loops if (p := loop.problem(now)) is not None]
