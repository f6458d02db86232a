"""A hostile or broken peer on the network cannot take the listener from the scanners (probe 40): one host's
silent connections are limited to its share, and a peer that stops in the middle of a PDU (or sends a byte now
and then) loses its connection after the network timeout instead of holding its thread and slot for ever."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scp.scu import echo
from scp.server import make_listening_socket, make_server
from tests.peers.processes import free_port
from uronode.settings import load_settings
from uronode.store import Store


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    settings = load_settings(overrides={"host": "127.0.0.1", "storage": {"data_dir": tmp_path / "data"},
                                        "scp": {"port": port, "network_timeout_s": 2, "acse_timeout_s": 30,
                                                "max_associations": 4}})
    server = make_server(settings, Store(settings.storage.data_dir), make_listening_socket("127.0.0.1", port), None)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_one_hosts_silent_connections_do_not_lock_the_scanners_out(listener: int, tmp_path: Path) -> None:
    """70 connections of 127.0.0.2 that never send a byte (pynetdicom's own limit is 64 a process): the host's
    share is 2 (half of scp.max_associations 4), its further connections are closed as they come, and a scanner
    on 127.0.0.1 is answered."""
    silent = []
    try:
        for _ in range(70):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", listener))
            silent.append(sock)
        time.sleep(0.5)
        closed = sum(_closed_by_peer(sock, 0.05) for sock in silent)
        assert closed >= 60, closed  # all but its share (two or so, as the accepting thread counts them)
        result = echo("127.0.0.1", listener, "URONODE", calling_ae="SCANNER", timeout_s=10)
        assert result.ok, result.message
        # each connection closed as it came is counted (probe 41 #7: a flood showed in no metric)
        from tests.uronode.test_metrics import samples

        store, key = Store(tmp_path / "data"), ("uronode_associations_refused_total", (("reason", "host_connections"),))
        deadline = time.monotonic() + 10
        while samples(store)[key] < closed and time.monotonic() < deadline:
            time.sleep(0.1)
        assert samples(store)[key] == closed
    finally:
        for sock in silent:
            sock.close()


def test_a_host_sending_its_share_in_parallel_back_to_back_is_never_cut_off(listener: int) -> None:
    """Review 37: associations released a moment ago, their threads not yet ended, were counted against the host,
    and a PACS's back-to-back parallel sends had connections closed (26 of 80 went through)."""
    results: list[bool] = []

    def sender() -> None:
        for _ in range(20):
            results.append(echo("127.0.0.1", listener, "URONODE", calling_ae="PACS", timeout_s=10).ok)

    threads = [threading.Thread(target=sender) for _ in range(2)]  # the host's share: 2 of 4
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results.count(True) == 40, results.count(False)


@pytest.mark.parametrize("trickle", [False, True])
def test_a_peer_that_stops_mid_pdu_loses_its_connection_after_the_network_timeout(listener: int,
                                                                                  trickle: bool) -> None:
    """An A-ASSOCIATE-RQ announcing 100,000 bytes, then silence (a cable pulled mid-send) or a byte every half
    second (a slow-read attack): the listener blocked in its read for ever (probe 40), never timing out; now the
    connection is closed within a few seconds of the 2 s network timeout."""
    sock = socket.create_connection(("127.0.0.1", listener))
    try:
        sock.sendall(struct.pack(">BBI", 0x01, 0, 100_000) + b"\x00")
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < 20:
            if trickle:
                try:
                    sock.sendall(b"\x00")
                except OSError:
                    closed = True
                    break
            closed = _closed_by_peer(sock, 0.5)
        assert closed, "the listener still holds the connection after 20 s"
        assert time.monotonic() - started < 12
        assert echo("127.0.0.1", listener, "URONODE", calling_ae="SCANNER", timeout_s=10).ok
    finally:
        sock.close()


def test_refused_associations_are_audited_once_a_minute_for_each_caller_and_reason(tmp_path: Path) -> None:
    """Probe 41: a scanner refused for its AE title was in the text log only. The audit log has it, one event a
    minute for each calling AE, host and reason (a peer retrying in a loop writes no more)."""
    import json

    port = free_port()
    settings = load_settings(overrides={"host": "127.0.0.1", "storage": {"data_dir": tmp_path / "data"},
                                        "scp": {"port": port, "restrict_callers": True, "allowed_callers": ["GOOD"]}})
    store = Store(settings.storage.data_dir)
    server = make_server(settings, store, make_listening_socket("127.0.0.1", port), None)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        for _ in range(3):
            assert not echo("127.0.0.1", port, "URONODE", calling_ae="CTSCANNER9", timeout_s=10).ok
        assert not echo("127.0.0.1", port, "NOTUS", calling_ae="GOOD", timeout_s=10).ok
        assert echo("127.0.0.1", port, "URONODE", calling_ae="GOOD", timeout_s=10).ok
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    events = [json.loads(line) for line in (store.root / "audit.log").read_text().splitlines()]
    refused = [(e["calling_ae"], e["host"], e["reason"]) for e in events if e["event"] == "association_refused"]
    assert refused == [("CTSCANNER9", "127.0.0.1", "calling AE title not allowed (scp.allowed_callers)"),
                       ("GOOD", "127.0.0.1", "called AE title 'NOTUS' is not ours")]
    # and counted, each refusal, by kind (probe 41 #7), within a second
    from tests.uronode.test_metrics import samples

    def refused_count(reason: str) -> float:
        return samples(store)[("uronode_associations_refused_total", (("reason", reason),))]

    deadline = time.monotonic() + 10
    while refused_count("called_ae") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (refused_count("calling_ae"), refused_count("called_ae"), refused_count("host_share")) == (3, 1, 0)
