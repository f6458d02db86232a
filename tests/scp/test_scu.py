"""The C-ECHO SCU: its arguments are checked before any network, and network trouble is a sentence."""

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
    ],
)
def test_an_ae_title_the_dicom_rule_refuses_is_named(called: str, calling: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        echo("127.0.0.1", 104, called, calling_ae=calling, timeout_s=1)


def test_a_host_that_cannot_be_resolved_is_named() -> None:
    done = echo("nosuch.invalid", 104, "PEER", timeout_s=3)  # .invalid never resolves (RFC 2606)
    assert not done.ok
    assert done.message.startswith("cannot resolve host 'nosuch.invalid' (")
