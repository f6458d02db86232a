"""Hot-path tuning of pynetdicom 3.0.4 for the listener.

Profiled here, a stock pynetdicom acceptor spends most of each C-STORE on
things other than receiving: two reactor threads that poll with 1 ms sleeps
(adding up to three polling delays to every instance), and building the
C-STORE response through a pydicom Dataset. This module removes both, for
associations created by our request handler only:

- **Event-driven reactors.** pynetdicom's reactors call ``time.sleep`` when
  idle. Both modules get a ``time`` whose ``sleep`` lets a thread that we
  marked wait for its real wake-up instead: the association thread on an
  Event set whenever the DUL hands it a message, the DUL thread in
  ``select()`` on its socket and a wake-up pipe written whenever a primitive
  is queued for sending. Waits are capped (50 ms) so every periodic check
  (timers, kill flags) still runs. Unmarked threads sleep as before.
- **Lean C-STORE-RSP.** A response without extra elements (the usual case)
  is encoded straight to its bytes (command set, Implicit VR Little Endian)
  and queued as one P-DATA; anything else takes pynetdicom's own path.

It relies on pynetdicom internals, so the version is pinned in
pyproject.toml and :func:`install` refuses any other version (the node then
runs on stock pynetdicom, only slower). ``tests/scp/test_fastpath.py`` checks
that it is active and that responses match pynetdicom's own encoding.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
import time as _time
import types
import weakref
from collections.abc import Callable
from typing import Any

import pynetdicom
from pydicom import config as pydicom_config
from pynetdicom import _config, evt
from pynetdicom import association as _association_mod
from pynetdicom import dul as _dul_mod
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE, DimsePrimitiveType
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

log = logging.getLogger(__name__)

SUPPORTED_VERSION = "3.0.4"
MAX_WAIT_S = 0.05

_installed = False
_original_send_msg = DIMSEServiceProvider.send_msg


class _ThreadAwareTime:
    """Stands in for the ``time`` module inside pynetdicom's reactors."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        waiter: Callable[[float], None] | None = getattr(threading.current_thread(), "_uronode_wait", None)
        if waiter is None or seconds > 0.01:
            _time.sleep(seconds)
        else:
            waiter(seconds)


def _uid_bytes(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def encode_store_response(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int
) -> bytes:
    """The command set of a C-STORE-RSP without optional elements, Implicit VR Little Endian."""
    body = b"".join(
        (
            _element(0x00000002, _uid_bytes(sop_class_uid)),
            _element(0x00000100, struct.pack("<H", 0x8001)),
            _element(0x00000120, struct.pack("<H", message_id)),
            _element(0x00000800, struct.pack("<H", 0x0101)),
            _element(0x00000900, struct.pack("<H", status)),
            _element(0x00001000, _uid_bytes(sop_instance_uid)),
        )
    )
    return _element(0x00000000, struct.pack("<I", len(body))) + body


def encode_pdata_tf(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF PDU holding one command PDV, last fragment (PS3.8 9.3.5)."""
    item = struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command
    return struct.pack(">BBI", 0x04, 0x00, len(item)) + item


def _lean_send_msg(self: DIMSEServiceProvider, primitive: DimsePrimitiveType, context_id: int) -> None:
    if (
        type(primitive) is C_STORE
        and primitive.MessageIDBeingRespondedTo is not None
        and getattr(self.assoc, "_uronode_fast", False)
        and primitive.ErrorComment is None
        and primitive.OffendingElement is None
        and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
    ):
        command = encode_store_response(
            int(primitive.MessageIDBeingRespondedTo or 0),
            str(primitive.AffectedSOPClassUID),
            str(primitive.AffectedSOPInstanceUID),
            int(primitive.Status or 0),
        )
        if self.dul.state_machine.current_state == "Sta6" and self.dul.socket is not None:
            # Data transfer state: a P-DATA request leaves the state unchanged (DT-1), so the
            # PDU can go straight onto the socket from this thread, without a hop through the DUL.
            self.dul.socket.send(encode_pdata_tf(context_id, command))
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]  # type: ignore[list-item]
        self.dul.send_pdu(pdata)
        return
    _original_send_msg(self, primitive, context_id)


def attach(assoc: Association) -> None:
    """Make one acceptor association event-driven (call before it starts)."""
    if not _installed:
        return
    assoc._uronode_fast = True  # type: ignore[attr-defined]  # our mark on pynetdicom's object
    dul = assoc.dul
    woken = threading.Event()

    def wait_association(_seconds: float) -> None:
        if assoc.dimse.msg_queue.qsize() or dul.to_user_queue.qsize():
            return
        woken.wait(MAX_WAIT_S)
        woken.clear()

    def on_put(put: Callable[..., None]) -> Callable[..., None]:
        def wrapped(item: object, *args: object, **kwargs: object) -> None:
            put(item, *args, **kwargs)
            woken.set()

        return wrapped

    # the patch itself: the queues wake the waiting reactor as they are filled
    assoc.dimse.msg_queue.put = on_put(assoc.dimse.msg_queue.put)  # type: ignore[method-assign]
    dul.to_user_queue.put = on_put(dul.to_user_queue.put)  # type: ignore[method-assign]
    assoc._uronode_wait = wait_association  # type: ignore[attr-defined]  # read by _ThreadAwareTime.sleep

    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    weakref.finalize(dul, wake_r.close)
    weakref.finalize(dul, wake_w.close)
    provider_put: Callable[..., None] = dul.to_provider_queue.put

    def put_and_wake(item: object, *args: object, **kwargs: object) -> None:
        provider_put(item, *args, **kwargs)
        try:
            wake_w.send(b"\x00")
        except OSError:  # full (already woken) or closed (association over)
            pass

    dul.to_provider_queue.put = put_and_wake  # type: ignore[method-assign]  # the patch itself

    def wait_dul(seconds: float) -> None:
        if dul.to_provider_queue.qsize() or not dul.event_queue.empty():
            return
        wrapped = getattr(dul.socket, "socket", None)
        if wrapped is None or wrapped.fileno() < 0:
            _time.sleep(seconds)
            return
        pending = getattr(wrapped, "pending", None)
        if pending is not None and pending():
            return  # TLS bytes already decrypted and buffered
        try:
            select.select([wrapped, wake_r], [], [], MAX_WAIT_S)
            while True:
                if not wake_r.recv(4096):
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except (OSError, ValueError):
            _time.sleep(seconds)

    dul._uronode_wait = wait_dul  # type: ignore[attr-defined]  # read by _ThreadAwareTime.sleep
    dul._read_pdu_data = types.MethodType(_read_pdu_lean, dul)  # type: ignore[method-assign]  # the patch itself


def _recv_exactly(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv`` reading into one buffer with as few system calls as the kernel allows.

    pynetdicom's own reads 4 KiB at a time and extends a bytearray each time:
    128 calls for a 512 KiB CT slice.
    """
    sock = self.socket
    if sock is None:
        return bytearray()
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    got = 0
    timeout = getattr(getattr(self, "_assoc", None), "network_timeout", None)
    deadline = None if timeout is None else _time.monotonic() + timeout
    while got < nr_bytes:
        try:
            n = sock.recv_into(view[got:], nr_bytes - got)
        except (BlockingIOError, TimeoutError, InterruptedError, ssl.SSLWantReadError):  # SO_RCVTIMEO: nothing came
            if deadline is not None and _time.monotonic() > deadline:
                n = 0  # a PDU whose bytes stopped coming (probe 40): given up as if the connection had closed
            else:
                continue
        if not n:  # connection closed: return what arrived, as pynetdicom does
            del view
            return buffer[:got]
        got += n
        if deadline is not None and got < nr_bytes and _time.monotonic() > deadline:
            del view  # a byte now and then (probe 40: one every 10 s held a slot for minutes): the same
            return buffer[:got]
    return buffer


_PDU_TYPES = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07)


UNLIMITED_PDU_CAP = 256 * 1024 * 1024
CONTROL_PDU_CAP = 1024 * 1024


def _pdu_limit(assoc: Association, pdu_type: int) -> int:
    """The largest PDU we accept: our negotiated maximum (plus its header) for P-DATA, 1 MiB for the rest."""
    if pdu_type != 0x04:
        return CONTROL_PDU_CAP
    maximum = int(getattr(assoc.acceptor, "maximum_length", 0) or 0)
    return maximum + 64 if maximum else UNLIMITED_PDU_CAP


def _read_pdu_lean(self: DULServiceProvider) -> None:
    """``DULServiceProvider._read_pdu_data`` with a short way for P-DATA-TF in the data transfer state.

    In Sta6 a P-DATA-TF PDU only ever leads to DT-2 (hand the PDVs to DIMSE,
    stay in Sta6), so its PDVs go straight to DIMSE as views of the one
    receive buffer, without the PDU objects, the event queue round trip and
    four copies of the data that pynetdicom's general path makes. Every other
    PDU, and any PDU in another state, takes pynetdicom's own path. Both end
    in ``assoc.dimse.receive_primitive``, where :func:`scp.policy.cap_message_size`
    bounds the message being gathered, with or without this module.
    """
    sock = self.socket
    if sock is None:  # the association's transport is already gone
        self.event_queue.put("Evt17")
        return
    if getattr(self, "_uronode_refused", False):
        # A PDU was refused and the association is being aborted: what still arrives is the rest of that
        # PDU (or more), which would read as PDU headers of garbage. Nothing more is read; once our
        # A-ABORT is out (Sta13), the connection is closed (Evt17, the end of the association).
        if self.state_machine.current_state == "Sta13":
            sock.close()
        return
    try:
        head = sock.recv(6)
    except (OSError, TimeoutError):
        self.event_queue.put("Evt17")  # transport connection closed
        return
    if len(head) != 6:
        self.event_queue.put("Evt17")
        return
    pdu_type, _, length = struct.unpack(">BBL", head)
    if pdu_type not in _PDU_TYPES:
        _refuse(self, f"unknown PDU type 0x{pdu_type:02X}")
        return
    limit = _pdu_limit(self.assoc, pdu_type)
    if length > limit:
        # Never allocate what a peer claims beyond what we negotiated: abort instead.
        _refuse(self, f"PDU of {length} bytes announced, over the {limit}-byte limit")
        return
    try:
        body = sock.recv(length)
    except (OSError, TimeoutError):
        self.event_queue.put("Evt17")
        return
    if len(body) != length:
        self.event_queue.put("Evt17")
        return
    if (
        pdu_type == 0x04
        and self.state_machine.current_state == "Sta6"
        and not self.assoc.get_handlers(evt.EVT_PDU_RECV)
        and not self.assoc.get_handlers(evt.EVT_DATA_RECV)
    ):
        view = memoryview(body)
        pdvs: list[list[int | memoryview]] = []
        pos = 0
        while pos < length:
            (item_length,) = struct.unpack_from(">I", body, pos) if pos + 6 <= length else (0,)
            if item_length < 2 or pos + 4 + item_length > length:
                _refuse(self, "a P-DATA-TF whose PDV items do not fit it")
                return
            pdvs.append([body[pos + 4], view[pos + 5 : pos + 4 + item_length]])
            pos += 4 + item_length
        primitive = P_DATA()
        primitive._presentation_data_value_list = pdvs  # type: ignore[assignment]  # views; DIMSE copies what it keeps
        self.assoc.dimse.receive_primitive(primitive)
        return
    try:
        pdu, event = self._decode_pdu(head + body)
    except Exception:  # noqa: BLE001 - pynetdicom's own path treats any decoding error as Evt19
        log.exception("unable to decode a received PDU")
        self.event_queue.put("Evt19")
        return
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)


def peer_name(assoc: Association) -> str:
    """``AE@address`` of an acceptor association's peer (the AE as its A-ASSOCIATE-RQ gave it, if one came)."""
    rq = assoc.requestor.primitive
    ae = str(rq.calling_ae_title).strip() if rq is not None else "?"
    return f"{ae}@{assoc.requestor.address}"


def _refuse(dul: DULServiceProvider, what: str) -> None:
    """Abort the association over a PDU we do not take (Evt19: A-ABORT to the peer), with one log line
    naming the peer, and read nothing more from it."""
    dul._uronode_refused = True  # type: ignore[attr-defined]  # our mark on pynetdicom's object
    log.error("%s from %s: association aborted", what, peer_name(dul.assoc))
    dul.event_queue.put("Evt19")


def install() -> bool:
    """Apply the tuning once per process; returns whether it is active."""
    global _installed
    if _installed:
        return True
    _config.LOG_HANDLER_LEVEL = "none"  # public setting: no per-PDU debug handlers
    # pydicom re-validates every UID it builds with regular expressions (about 40 per C-STORE in
    # pynetdicom's message handling). The listener checks the UIDs it relies on itself
    # (uronode.dicomfile.is_valid_uid), so reading validation is off in receiving processes.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    if pynetdicom.__version__ != SUPPORTED_VERSION:
        log.warning(
            "pynetdicom %s is not %s: receiving without the fast path", pynetdicom.__version__, SUPPORTED_VERSION
        )
        return False
    _association_mod.time = _ThreadAwareTime()  # type: ignore[assignment]
    _dul_mod.time = _ThreadAwareTime()  # type: ignore[assignment]
    DIMSEServiceProvider.send_msg = _lean_send_msg  # type: ignore[method-assign]
    AssociationSocket.recv = _recv_exactly  # type: ignore[method-assign]
    _installed = True
    return True


def is_installed() -> bool:
    return _installed
