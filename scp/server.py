"""The DICOM listener: C-ECHO and C-STORE SCP for every storage SOP class.

The node runs ``scp.processes`` receiving processes. The parent binds one
listening socket and hands it to each; the kernel gives each new association
to whichever process accepts first. Each association runs in its own thread.

The C-STORE handler stores the data set exactly as it came off the wire
(no pixel decoding): it prefixes our File Meta Information and hands both to
:func:`uronode.ingest.take_instance`, which reads the few attributes the
index needs and makes file and index durable; only then is success sent.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Event as EventFlag
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from scp import fastpath
from scp.identity import node_ae
from scp.policy import (
    AssociationSlots,
    CallerPolicy,
    RefusalAudit,
    make_request_handler,
    release_slot,
    released_normally,
)
from scp.status import StoreStatus
from uronode.associations import Associations
from uronode.audit import AuditLog
from uronode.dicomfile import encode_file_meta
from uronode.errors import OutOfResources
from uronode.ingest import Expected, Verdict, take_instance
from uronode.logs import Sometimes
from uronode.metrics import REFUSED, Tally
from uronode.processes import die_with_parent
from uronode.settings import Settings
from uronode.store import Store
from uronode.structure import MAX_INSTANCE_BYTES
from uronode.types import StoreOutcome

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]


class _SharedContext(PresentationContext):
    """A presentation context whose deep copy shares its (immutable) UIDs.

    pynetdicom deep-copies every supported context for each new association:
    about 150 contexts with 13 transfer syntaxes each, re-validating every
    UID, tens of milliseconds per association. Copying the attributes and
    lists is enough, since UIDs are immutable strings.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedContext:
        new = object.__new__(type(self))
        new.__dict__.update({k: list(v) if isinstance(v, list) else v for k, v in self.__dict__.items()})
        return new


def storage_contexts() -> list[PresentationContext]:
    """Every storage SOP class pynetdicom knows, each with all our transfer syntaxes."""
    contexts: list[PresentationContext] = []
    for cx in AllStoragePresentationContexts:
        new = _SharedContext()
        new.abstract_syntax = cx.abstract_syntax
        new.transfer_syntax = list(TRANSFER_SYNTAXES)
        contexts.append(new)
    return contexts


@dataclass
class Receiver:
    """What the handlers of one receiving process share: the store and the open associations."""

    store: Store
    associations: Associations
    slots: AssociationSlots | None = None
    max_instance_bytes: int = MAX_INSTANCE_BYTES
    """``scp.max_instance_bytes``: the most a data set may inflate or decode to (:mod:`uronode.structure`)."""
    association_ids: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def association_id(self, event: Event) -> int:
        key = id(event.assoc)
        with self.lock:
            found = self.association_ids.get(key)
        if found is None:
            requestor = event.assoc.requestor
            found = self.associations.open(str(requestor.ae_title).strip(), str(requestor.address))
            with self.lock:
                self.association_ids[key] = found
        return found

    def end_association(self, event: Event, outcome: str) -> None:
        with self.lock:
            found = self.association_ids.pop(id(event.assoc), None)
        if found is not None:
            self.associations.close(found, outcome)


def store_response(status: StoreStatus, comment: str | None = None) -> Dataset | int:
    """The handler's answer: the status alone, or with an Error Comment (LO: 64 characters) saying why."""
    if comment is None:
        return int(status)
    response = Dataset()
    response.Status = int(status)
    response.ErrorComment = comment.replace("\\", "/")[:64].rstrip()
    return response


_ANSWERS = {
    Verdict.CANNOT_UNDERSTAND: StoreStatus.CANNOT_UNDERSTAND,
    Verdict.DOES_NOT_MATCH: StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    Verdict.OUT_OF_RESOURCES: StoreStatus.OUT_OF_RESOURCES,
    Verdict.STORED_WITH_WARNING: StoreStatus.WARNING_DATA_SET_DOES_NOT_MATCH,
}
"""The C-STORE status for each verdict but a plain success, sent with the report's reason."""


def handle_store(event: Event, receiver: Receiver) -> Dataset | int:
    """EVT_C_STORE: take the instance in (durable and indexed), then answer."""
    request = cast(C_STORE, event.request)
    calling_ae = str(event.assoc.requestor.ae_title).strip()
    sop_class_uid = str(request.AffectedSOPClassUID)
    sop_instance_uid = str(request.AffectedSOPInstanceUID)
    data = request.DataSet
    if data is None:
        log.warning("C-STORE from %s without a data set", calling_ae)
        return store_response(StoreStatus.CANNOT_UNDERSTAND, "no data set")
    try:
        association_id = receiver.association_id(event)
    except OutOfResources as exc:
        log.error("C-STORE from %s refused, out of resources: %s", calling_ae, exc)
        return store_response(StoreStatus.OUT_OF_RESOURCES, str(exc))
    meta = encode_file_meta(sop_class_uid, sop_instance_uid, event.context.transfer_syntax, calling_ae)
    body = data.getbuffer()
    try:
        report = take_instance(
            receiver.store, [meta, body], source=calling_ae, transfer_syntax_uid=event.context.transfer_syntax,
            association_id=association_id,
            expected=Expected(sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid),
            max_instance_bytes=receiver.max_instance_bytes,
        )
    finally:
        body.release()
    if report.outcome is StoreOutcome.REPLACED and report.header is not None:
        log.info("instance %s from %s: other bytes under a SOP Instance UID already stored; replaced, series %s"
                 " re-opened", sop_instance_uid, fastpath.peer_name(event.assoc), report.header.series_instance_uid)
    if report.verdict is Verdict.STORED:
        return StoreStatus.SUCCESS
    return store_response(_ANSWERS[report.verdict], report.reason)


CONTEXT_RESULTS = {1: "user rejection", 2: "no reason", 3: "abstract syntax not supported",
                   4: "transfer syntaxes not supported"}


def log_refused_contexts(assoc: Association) -> None:
    """One line at the end of an association that had presentation contexts refused: which SOP classes,
    and why (a Query/Retrieve class, C-FIND, C-MOVE, C-GET, names itself: the node is no Q/R SCP)."""
    refused: dict[str, list[str]] = {}
    for context in assoc.rejected_contexts:
        uid = UID(str(context.abstract_syntax))
        name = f"{uid} ({uid.name})" if uid.name != str(uid) else str(uid)
        refused.setdefault(CONTEXT_RESULTS.get(int(context.result or 0), f"result {context.result}"), []).append(name)
    if refused:
        log.warning("association from %s: presentation contexts refused: %s", fastpath.peer_name(assoc),
                    "; ".join(f"{why}: {', '.join(dict.fromkeys(names))}" for why, names in refused.items()))


def handle_released(event: Event, receiver: Receiver) -> None:
    receiver.end_association(event, "released")


def handle_aborted(event: Event, receiver: Receiver) -> None:
    assoc = event.assoc
    if assoc.is_acceptor and assoc.dul.idle_timer_expired():
        log.warning("association from %s aborted: nothing received for %g s (scp.network_timeout_s)",
                    fastpath.peer_name(assoc), assoc.network_timeout)
    receiver.end_association(event, "aborted")


def handle_conn_close(event: Event, receiver: Receiver) -> None:
    assoc = event.assoc
    if assoc.requestor.primitive is None and assoc.dul.artim_timer.expired:
        log.warning("connection from %s closed: no A-ASSOCIATE-RQ within %g s (scp.acse_timeout_s)",
                    assoc.requestor.address, assoc.acse_timeout)
    log_refused_contexts(assoc)
    # after our A-RELEASE-RP the peer may close before pynetdicom's EVT_RELEASED is handled: still released
    receiver.end_association(event, "released" if released_normally(assoc) else "closed")
    release_slot(assoc, receiver.slots)


READ_STALL_S = 5.0
"""How long one read of an accepted connection waits for bytes before it looks at the time again (SO_RCVTIMEO): a
PDU whose bytes stop coming is given up after the network timeout (``scp.fastpath``), not waited for forever."""
TLS_HANDSHAKE_S = 10.0
"""How long a TLS connection's handshake may take (in the connection's own thread)."""
KEEPALIVE = ((socket.TCP_KEEPIDLE, 60), (socket.TCP_KEEPINTVL, 10), (socket.TCP_KEEPCNT, 6))
"""TCP keepalive of accepted connections: a peer gone without a word (a cable pulled, a NAT's entry dropped) is
found within about 2 minutes of silence, its association's slot freed (probe 40: it was held until a restart)."""


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))


COLLECT_EVERY_S = 30.0
"""How often a receiving process collects its garbage (pynetdicom's cadence at its own 0.5 s poll)."""


class SharedSocketServer(ThreadedAssociationServer):
    """A pynetdicom server that accepts on a listening socket it was handed, with Nagle off, keepalive on, reads
    and writes that give up on a silent peer, and at most ``connections_per_host`` connections of one host."""

    listening_socket: socket.socket | None = None
    connections_per_host: int | None = None
    """Connections one host may hold in this process (twice its share of associations), counted as they are
    accepted (before any A-ASSOCIATE-RQ), associations already ended left out: a host holding that many gets its
    next one closed at once (probe 40: 140 silent connections of one host
    filled every process's pynetdicom limit, and the allowed scanners were refused)."""
    _refusals = Sometimes()
    """Told one line a minute, however many come."""
    refusal_tally: Tally | None = None
    """Where such a refusal is counted (``uronode_associations_refused{reason="host_connections"}``)."""

    _collected_at = 0.0

    def service_actions(self) -> None:
        """pynetdicom's: a full garbage collection every 60 turns of the accept loop (its threads of ended
        associations are not collected otherwise), made a collection every :data:`COLLECT_EVERY_S`: the loop turns
        every 0.1 s (a node's stop waits for a turn), and a collection holds the process's associations up for
        tens of milliseconds (review 50)."""
        now = time.monotonic()
        if now - self._collected_at >= COLLECT_EVERY_S:
            self._collected_at = now
            gc.collect()

    def server_bind(self) -> None:
        inherited = type(self).listening_socket
        if inherited is None:
            super().server_bind()
            return
        if self.socket is not None:
            self.socket.close()
        self.socket = inherited
        self.server_address = inherited.getsockname()

    def server_activate(self) -> None:
        if type(self).listening_socket is None:
            super().server_activate()

    def get_request(self) -> tuple[socket.socket, Any]:
        # Every receiving process wakes for a new connection and one wins the accept; a busy
        # process waits a little first, so that associations spread over the processes.
        busy = len(self.active_associations)
        if busy:
            time.sleep(min(0.002 * busy, 0.02))
        listening = cast(socket.socket, self.socket)
        client, address = listening.accept()
        # Accepted from a non-blocking listening socket, the client socket would be in timeout
        # mode (every read: EAGAIN, poll, read again); make it plain blocking, as pynetdicom's own
        # server does. pynetdicom waits for readiness with select before reading.
        client.setblocking(True)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in KEEPALIVE:
            client.setsockopt(socket.IPPROTO_TCP, option, value)
        # a blocked read returns after READ_STALL_S (EAGAIN), a blocked write after the network timeout (an
        # error: pynetdicom ends the association): a peer that stops mid-PDU cannot hold its thread and its slot
        if fastpath.is_installed():  # pynetdicom's own reads take the EAGAIN for a closed connection (review 37)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(READ_STALL_S))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(self.ae.network_timeout or 60.0))
        if self.ssl_context:
            # the handshake in the connection's own thread (process_request_thread), not here: pynetdicom's in the
            # accepting thread let one connection that never sent its ClientHello stop the process's accepts
            # (review 37: every TLS scanner timed out behind it)
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(TLS_HANDSHAKE_S)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ValueError) as exc:
                host = client_address[0] if isinstance(client_address, tuple) else client_address
                log.warning("TLS handshake with %s failed: %s", host, exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse (close) a connection of a host that holds ``connections_per_host`` live connections of this
        process already."""
        limit = type(self).connections_per_host
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if limit is None:
            return True
        held = sum(1 for assoc in self.active_associations if _address(assoc) == host and _live(assoc))
        if held < limit:
            return True
        if (tally := type(self).refusal_tally) is not None:
            tally.add("host_connections")
        if (count := self._refusals.happened()) is not None:
            log.warning("connection from %s closed as it came: its host holds %d connections of this receiving "
                        "process, twice its share of associations (scp.max_associations_per_host); %d refused since"
                        " the last such line", host, held, count)
        return False


def _live(assoc: Association) -> bool:
    """Whether an acceptor thread's association is still on (review 37: threads of associations released or
    refused a moment ago, not yet ended, were counted, and a PACS's back-to-back parallel sends were closed)."""
    return not (assoc.is_released or assoc.is_aborted or assoc.is_rejected)


def _address(assoc: Association) -> str | None:
    """The peer's address of an acceptor thread, None while its handler has not set it yet."""
    try:
        return str(assoc.requestor.address)
    except (AttributeError, TypeError):
        return None


def build_ae(settings: Settings) -> AE:
    scp = settings.scp
    ae = node_ae(scp.ae_title)
    ae.require_called_aet = True
    # The node-wide limit is enforced by scp.policy over all processes; pynetdicom's own count
    # includes connections that never sent an A-ASSOCIATE-RQ, so it only backstops.
    ae.maximum_associations = max(scp.max_associations * 4, 64)
    ae.maximum_pdu_size = scp.max_pdu_size
    ae.acse_timeout = scp.acse_timeout_s
    ae.dimse_timeout = scp.dimse_timeout_s
    ae.network_timeout = scp.network_timeout_s
    return ae


def supported_contexts() -> list[PresentationContext]:
    """Verification and every storage SOP class, as the listener accepts them."""
    verification = _SharedContext()
    verification.abstract_syntax = Verification
    verification.transfer_syntax = list[str | bytes | UID](TRANSFER_SYNTAXES[:3])
    return [*storage_contexts(), verification]


def make_listening_socket(host: str, port: int) -> socket.socket:
    """Bind and listen; fails clearly if the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen for DICOM on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)  # several processes accept on it; the losers must not block
    return sock


def make_server(
    settings: Settings, store: Store, listening: socket.socket | None, slots: AssociationSlots | None
) -> ThreadedAssociationServer:
    """A ready, not yet serving, association server for this process."""
    fastpath.install()
    receiver = Receiver(store=store, associations=Associations(store.db), slots=slots,
                        max_instance_bytes=settings.scp.max_instance_bytes)
    policy = CallerPolicy.from_rules(settings.scp.restrict_callers, settings.scp.caller_rules())
    handlers: list[EventHandlerType] = [
        (evt.EVT_C_STORE, handle_store, [receiver]),
        (evt.EVT_RELEASED, handle_released, [receiver]),
        (evt.EVT_ABORTED, handle_aborted, [receiver]),
        (evt.EVT_CONN_CLOSE, handle_conn_close, [receiver]),
    ]
    # twice the host's share of associations: connections held by associations the share refuses (with an
    # A-ASSOCIATE-RJ, as a sender expects) or ending are not cut off; silent ones still are (review 37)
    tally = Tally(store.db, REFUSED)
    server_class = type("BoundServer", (SharedSocketServer,), {"listening_socket": listening,
                                                               "connections_per_host": 2 * settings.scp.host_share(),
                                                               "refusal_tally": tally})
    ae = build_ae(settings)
    server = ae.make_server(
        (settings.host, settings.scp.port),
        contexts=supported_contexts(),
        ssl_context=settings.scp.ssl_context(),
        evt_handlers=handlers,
        server_class=server_class,
        request_handler=make_request_handler(policy, slots, settings.scp.max_instance_bytes,
                                             RefusalAudit(AuditLog(store.root), tally=tally)),
    )
    ae._servers.append(server)
    return server


def run_receiver(
    settings_json: str, listening: socket.socket, held: SynchronizedArray[int], index: int, ready: EventFlag,
    parent_pid: int | None = None,
) -> None:
    """Entry point of one receiving process."""
    from uronode.logs import setup_logging

    die_with_parent(parent_pid)
    settings = Settings.model_validate_json(settings_json)
    setup_logging(settings.log_level)
    slots = AssociationSlots(held, index, settings.scp.max_associations, settings.scp.host_share())
    slots.reset()
    store = Store(
        settings.storage.data_dir,
        fsync=settings.storage.fsync,
        max_disk_used_percent=settings.storage.max_disk_used_percent,
    )
    server = make_server(settings, store, listening, slots)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    # Ctrl+C in a terminal reaches every process of the group: the node stops its receivers with SIGTERM
    # (uronode.app.node), so a receiver ignores SIGINT rather than die mid-association with a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log.info("receiver %d (pid %d) accepting associations", index, os.getpid())
    ready.set()
    # the loop looks for a stop this often: a node's stop (a restart, an upgrade) waits for it
    server.serve_forever(poll_interval=0.1)
    if (tally := getattr(type(server), "refusal_tally", None)) is not None:
        tally.flush()  # a stop (SIGTERM: an upgrade, a restart) keeps the last second's refusals counted
