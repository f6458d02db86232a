"""The C-ECHO SCU: its arguments are checked before any network, and network trouble is a sentence."""

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from scp.scu import echo


@pytest.fixture
def peer() -> Iterator[ThreadedAssociationServer]:
    """A real Verification SCP on a free loopback port, with a title of 16 characters."""
    ae = AE(ae_title="PEER_OF_16_CHARS")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    assert server is not None
    try:
        yield server
    finally:
        server.shutdown()


def test_echo_reaches_a_peer_and_takes_titles_of_16_characters(peer: ThreadedAssociationServer) -> None:
    port = peer.server_address[1]
    done = echo("127.0.0.1", port, "PEER_OF_16_CHARS", calling_ae="CALLER_OF_16_CHR", timeout_s=10)
    assert done.ok, done.message
    assert done.message == f"C-ECHO to PEER_OF_16_CHARS at 127.0.0.1:{port}: success"


@pytest.mark.parametrize("port", [0, -1, 65536, 70000])
def test_a_port_outside_1_65535_is_refused_before_connecting(port: int) -> None:
    with pytest.raises(ValueError, match=rf"^port {port} is not in 1-65535$"):
        echo("127.0.0.1", port, "PEER", timeout_s=1)


@pytest.mark.parametrize(
    ("called", "calling", "message"),
    [
        ("THIS_AE_TITLE_IS_TOO_LONG", "URONODE", "called AE title 'THIS_AE_TITLE_IS_TOO_LONG' is 25 characters long"),
        ("PEER", "", "calling AE title must not be empty"),
        ("   ", "URONODE", "called AE title must not be empty"),
        ("PE\\ER", "URONODE", "called AE title .* holds a backslash"),
        ("PE\tER", "URONODE", "called AE title .* holds a control character"),
        # probe 28: an accented letter was said to be a backslash or a control character
        ("PEER", "CT\u00c41", "calling AE title 'CT\u00c41' holds 'Ä', not printable ASCII"),
    ],
)
def test_an_ae_title_the_dicom_rule_refuses_is_named(called: str, calling: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        echo("127.0.0.1", 104, called, calling_ae=calling, timeout_s=1)


def test_a_host_that_cannot_be_resolved_is_named() -> None:
    done = echo("nosuch.invalid", 104, "PEER", timeout_s=3)  # .invalid never resolves (RFC 2606)
    assert not done.ok
    assert done.message.startswith("cannot resolve host 'nosuch.invalid' (")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose SYNs go unanswered, as behind a firewall that drops packets: a listener that never accepts,
    its accept queue filled (review 21: echo then hung for minutes with --timeout 2)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        client = socket.socket()
        client.setblocking(False)
        try:
            client.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(client)
    time.sleep(0.5)
    try:
        yield port
    finally:
        for client in fillers:
            client.close()
        server.close()


def test_the_timeout_bounds_the_tcp_connection_too(silent_port: int) -> None:
    """Without a connection timeout the kernel's SYN retries (about 2 minutes) held the command."""
    done: list = []
    thread = threading.Thread(target=lambda: done.append(echo("127.0.0.1", silent_port, "PEER", timeout_s=1)),
                              daemon=True)
    thread.start()
    thread.join(30)  # a bound the fix meets 30 times over, far below the kernel's retries
    assert done, "echo did not give up on a peer that never answers the TCP handshake"
    assert not done[0].ok
    assert f"at 127.0.0.1:{silent_port}" in done[0].message
