"""Waits measured on a clock that a step of the host's clock does not move (probe 39).

The index stores when things happened as wall-clock times (they outlive the process), and NTP, a virtual machine
resumed or a wrong clock corrected can step the wall clock by hours. :class:`Waits` counts how long something
has waited since such a stored time: by the wall clock's difference when this process first sees it in a given
state (what happened before it looked: the node restarted), by the monotonic clock from then on.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable


class Waits:
    """How long each thing (a key) has waited since its stored wall-clock time, a step of the clock not counted."""

    def __init__(self) -> None:
        self._seen: dict[Hashable, tuple[object, float]] = {}
        """Per key: the state it was last seen in, and the steady clock's reading its wait counts from."""

    def waited(self, key: Hashable, state: object, since: float, now: float, steady: float) -> float:
        """The wait of ``key`` since ``since`` (stored, wall clock), seen in ``state`` (what was stored of it: a
        new state starts a new wait), ``now`` the wall clock and ``steady`` the monotonic one."""
        seen = self._seen.get(key)
        if seen is None or seen[0] != state:
            seen = (state, steady - max(0.0, now - since))
            self._seen[key] = seen
        return steady - seen[1]

    def keep_only(self, keep: Callable[[Hashable], bool]) -> None:
        """Forget the keys ``keep`` says no to (things that no longer wait)."""
        for key in [k for k in self._seen if not keep(k)]:
            del self._seen[key]
