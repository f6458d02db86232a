"""The listener's associations on a host whose clock is stepped (probe 39): pynetdicom measures its network
timeout on the wall clock, so a step forward (NTP, a virtual machine resumed) aborted a scanner's association
mid-series for "nothing received for 60 s". Its timers now run on the monotonic clock."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from scp.server import COLLECT_EVERY_S, make_listening_socket, make_server
from tests.peers.processes import free_port
from uronode.settings import load_settings
from uronode.store import Store


def test_an_open_association_outlives_a_step_of_the_host_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    settings = load_settings(overrides={"host": "127.0.0.1", "storage": {"data_dir": tmp_path / "data"},
                                        "scp": {"port": port, "network_timeout_s": 5}})
    server = make_server(settings, Store(settings.storage.data_dir), make_listening_socket("127.0.0.1", port), None)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        scanner = AE(ae_title="SCANNER")
        scanner.add_requested_context(Verification)
        assoc = scanner.associate("127.0.0.1", port, ae_title="URONODE")
        assert assoc.is_established
        wall = time.time
        monkeypatch.setattr(time, "time", lambda: wall() + 7200)  # the host's clock 2 h forward
        time.sleep(2)  # the listener's reactor looks at its timers many times a second
        assert assoc.is_established, "the listener aborted the association"
        status = assoc.send_c_echo()
        assert status is not None and status.Status == 0x0000
        assoc.release()
        assert assoc.is_released
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_receiving_process_collects_its_garbage_by_time_not_by_turns_of_its_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 50: the accept loop turns every 0.1 s for a quick stop, and pynetdicom collected every 60 turns."""
    settings = load_settings(overrides={"host": "127.0.0.1", "storage": {"data_dir": tmp_path / "data"},
                                        "scp": {"port": free_port()}})
    server = make_server(settings, Store(settings.storage.data_dir),
                         make_listening_socket("127.0.0.1", settings.scp.port), None)
    collected: list[float] = []

    def collect(*_: object) -> int:
        collected.append(time.monotonic())
        return 0

    monkeypatch.setattr(gc, "collect", collect)
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    for _ in range(int(COLLECT_EVERY_S / 0.1)):  # turns over 30 s, less one
        server.service_actions()
        clock[0] += 0.1
    assert collected == [1000.0]  # the first turn's (pynetdicom's count: 5)
    clock[0] = 1000.0 + COLLECT_EVERY_S
    server.service_actions()
    assert len(collected) == 2
    server.server_close()
