"""The pynetdicom tuning: active, byte-identical to pynetdicom's own encoding, Nagle off."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pynetdicom
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket

from scp import fastpath
from scp.server import make_server
from tests.factory import ct_slice, uid
from tests.peers.processes import free_port, wait_until
from uronode.settings import load_settings
from uronode.store import Store


def test_installed_on_the_pinned_pynetdicom() -> None:
    assert pynetdicom.__version__ == fastpath.SUPPORTED_VERSION
    assert fastpath.install() is True
    assert fastpath.is_installed()


def test_lean_store_response_matches_pynetdicom_encoding() -> None:
    for status in (0x0000, 0xA700, 0xC000, 0xB007):
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = 7
        rsp.AffectedSOPClassUID = CTImageStorage
        rsp.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1234567"
        rsp.Status = status
        msg = C_STORE_RSP()
        msg.primitive_to_message(rsp)
        (pdata,) = list(msg.encode_msg(3, 16384))
        ((context_id, pdv),) = pdata.presentation_data_value_list
        ours = fastpath.encode_store_response(7, CTImageStorage, "1.2.826.0.1.3680043.8.498.1234567", status)
        assert context_id == 3
        assert pdv == b"\x03" + ours


def test_pdata_pdu_decodes_as_pynetdicom_expects() -> None:
    command = fastpath.encode_store_response(1, CTImageStorage, "1.2.3.4", 0)
    pdu = P_DATA_TF()
    pdu.decode(fastpath.encode_pdata_tf(5, command))
    ((context_id, pdv),) = pdu.to_primitive().presentation_data_value_list
    assert context_id == 5 and pdv == b"\x03" + command


def test_recv_reads_exactly_what_was_asked_across_many_segments() -> None:
    a, b = socket.socketpair()
    payload = bytes(range(256)) * 4096  # 1 MiB

    def send_in_pieces() -> None:
        for i in range(0, len(payload), 7000):
            b.sendall(payload[i : i + 7000])

    sender = threading.Thread(target=send_in_pieces)
    sender.start()
    fake = cast(AssociationSocket, SimpleNamespace(socket=a))  # _recv_exactly reads only its .socket
    first = fastpath._recv_exactly(fake, 300_000)
    rest = fastpath._recv_exactly(fake, len(payload) - 300_000)
    sender.join()
    assert bytes(first + rest) == payload
    b.close()
    assert fastpath._recv_exactly(fake, 10) == bytearray()  # peer closed: what arrived, i.e. nothing
    a.close()


def test_accepted_associations_have_nagle_off_and_event_driven_reactors(tmp_path: Path) -> None:
    port = free_port()
    settings = load_settings(overrides={"host": "127.0.0.1", "scp": {"port": port, "processes": 1}})
    server = make_server(settings, Store(tmp_path / "data"), None, None)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="URONODE")
        assert assoc.is_established
        wait_until(lambda: len(server.active_associations) == 1, 5, "the acceptor")
        acceptor = server.active_associations[0]
        assert acceptor.dul.socket is not None and acceptor.dul.socket.socket is not None
        sock = acceptor.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert callable(getattr(acceptor, "_uronode_wait", None))
        assert callable(getattr(acceptor.dul, "_uronode_wait", None))
        for i in range(20):  # many round trips through the event-driven path
            assert assoc.send_c_store(ct_slice(uid("fp"), uid("fp", "se"), i, size=16)).Status == 0x0000
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert assoc.is_released
    finally:
        server.shutdown()


def test_contexts_copy_cheaply_but_completely() -> None:
    import copy

    from scp.server import TRANSFER_SYNTAXES, supported_contexts

    contexts = supported_contexts()
    assert len(contexts) > 100
    assert contexts[-1].abstract_syntax == Verification
    original = next(cx for cx in contexts if cx.abstract_syntax == CTImageStorage)
    copied = copy.deepcopy(original)
    assert copied is not original
    assert copied.abstract_syntax == CTImageStorage
    assert copied.transfer_syntax == TRANSFER_SYNTAXES
    assert copied.transfer_syntax is not original.transfer_syntax  # negotiation may not touch the original
    copied.transfer_syntax = [TRANSFER_SYNTAXES[0]]
    assert original.transfer_syntax == TRANSFER_SYNTAXES


def test_a_malformed_pdata_pdu_aborts_that_association_only(tmp_path: Path) -> None:
    import struct

    port = free_port()
    settings = load_settings(overrides={"host": "127.0.0.1", "scp": {"port": port, "processes": 1}})
    server = make_server(settings, Store(tmp_path / "data"), None, None)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(Verification)
        bad = ae.associate("127.0.0.1", port, ae_title="URONODE")
        assert bad.is_established and bad.dul.socket is not None
        # a P-DATA-TF whose only PDV claims 100 bytes in a 6-byte PDU
        bad.dul.socket.send(b"\x04\x00" + struct.pack(">I", 6) + struct.pack(">I", 100) + b"\x01\x03")
        wait_until(lambda: bad.is_aborted or not bad.is_established, 10, "the node to abort the association")
        good = ae.associate("127.0.0.1", port, ae_title="URONODE")
        assert good.is_established and good.send_c_echo().Status == 0x0000
        good.release()
    finally:
        server.shutdown()
