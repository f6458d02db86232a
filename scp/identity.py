"""The node's application entities, each telling its peers what it is.

Every association the node makes or accepts carries uronode's own Implementation
Class UID and Implementation Version Name (PS3.7 D.3.3.2), the ones its stored
files carry in their File Meta (:mod:`uronode.dicomfile`), not pynetdicom's: a
PACS administrator reading an association log, or a peer that keys a
workaround on the implementation, sees the product and its version.

Their timers (the network timeout, ARTIM) run on a clock that the host's clock
being stepped does not move (:func:`steady_timers`).
"""

from __future__ import annotations

import time
from typing import Any

import pynetdicom.timer
from pynetdicom import AE

from uronode.dicomfile import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


class _SteadyTime:
    """Stands in for the ``time`` module inside ``pynetdicom.timer``: its ``time()`` is the monotonic clock."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def time() -> float:
        return time.monotonic()


def steady_timers() -> None:
    """pynetdicom's timers measure their durations with ``time.time()``, the wall clock, which an NTP step or a
    virtual machine resumed moves by minutes or hours: a step forward had the listener abort a scanner's
    association mid-series for "nothing received for 60 s" (probe 39). Only differences of the timers' own
    readings are used, so the monotonic clock serves. Applied before any association of the process starts (a
    timer started on the wall clock and read on the other would be wrong); idempotent."""
    if not isinstance(pynetdicom.timer.time, _SteadyTime):
        pynetdicom.timer.time = _SteadyTime()  # type: ignore[assignment]


def node_ae(ae_title: str) -> AE:
    """A pynetdicom AE titled ``ae_title`` that identifies itself as uronode, its timers steady."""
    steady_timers()
    ae = AE(ae_title=ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return ae
