"""Who may associate: the called AE title, the calling-AE allow-list and the association limit; what may be sent.

The called AE title, the allow-list (with optional host), the node-wide
association limit and each host's share of it, shared by all receiving
processes, are checked here, in
the acceptor's ACSE negotiation, so that a refused caller gets a proper
A-ASSOCIATE-RJ with the right reason, and the log one line naming it.

Each accepted presentation context takes the first transfer syntax *the sender*
proposed of those the node accepts (:func:`prefer_requestor_order`), so a
sender that offers JPEG and uncompressed in one context keeps its JPEG.

Once associated, a C-STORE must name the SOP class negotiated for the
presentation context it travels on: pynetdicom would pass any storage class
on to the handler and abort the association for a class it does not know;
:func:`guard_store_requests` answers 0122 (SOP class not supported) instead.

A DIMSE message is gathered in memory until its last fragment has come, and
no status can be answered before that, so :func:`cap_message_size` bounds it
while it arrives: past ``scp.max_instance_bytes`` of data set (or
:data:`MAX_COMMAND_SET_BYTES` of command set) the message is dropped and the
association aborted (A-ABORT), with one log line naming the caller.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import SynchronizedArray

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE, DimseServiceType
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import RequestHandler

from scp import fastpath
from scp.status import RejectReason, RejectResult, RejectSource, StoreStatus
from uronode.audit import AuditLog
from uronode.metrics import Tally
from uronode.settings import CallerRule

log = logging.getLogger(__name__)

MAX_COMMAND_SET_BYTES = 64 * 1024
"""Largest command set taken (bytes): a C-STORE-RQ's is about 200, a C-FIND-RQ's no more."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip_address(text: str) -> IPAddress | None:
    """The IP address ``text`` holds, an IPv4-mapped IPv6 address (``::ffff:10.1.2.3``, how a dual-stack
    listener sees an IPv4 caller) as its IPv4 address; None if ``text`` is not an address."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


def resolve_host(name: str) -> frozenset[IPAddress]:
    """Every address ``name`` resolves to (empty if it does not)."""
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        log.warning("allowed caller host %s does not resolve (%s): no caller is let in under it", name, exc)
        return frozenset()
    return frozenset(a for a in (ip_address(str(info[4][0]).partition("%")[0]) for info in infos) if a is not None)


class HostNames:
    """The addresses of the host names in ``scp.allowed_callers``, looked up when asked and kept a while.

    An answer is kept ``ttl_s``; a caller from an address the kept answer does not hold asks again, but
    not sooner than ``retry_s`` after the last lookup, so that a stranger calling under a known AE title
    makes at most one lookup per name every ``retry_s``. One lock: lookups of one process are one at a time.
    """

    def __init__(self, resolve: Callable[[str], frozenset[IPAddress]] = resolve_host, ttl_s: float = 30.0,
                 retry_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.resolve = resolve
        self.ttl_s = ttl_s
        self.retry_s = retry_s
        self.clock = clock
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, frozenset[IPAddress]]] = {}  # name -> (when looked up, addresses)

    def holds(self, name: str, address: IPAddress) -> bool:
        """Whether ``name`` resolves to ``address`` (looking it up again if the answer is old, or lacks it)."""
        with self._lock:
            now = self.clock()
            looked, addresses = self._known.get(name, (None, frozenset()))
            if looked is None or now - looked >= self.ttl_s or (address not in addresses and now - looked >= self.retry_s):
                addresses = self.resolve(name)
                self._known[name] = (now, addresses)
            return address in addresses

    def warm(self, names: Sequence[str]) -> None:
        """Look each name up now (at start-up: a name that does not resolve is a warning in the log at once)."""
        with self._lock:
            for name in dict.fromkeys(names):
                self._known[name] = (self.clock(), self.resolve(name))


@dataclass(frozen=True)
class CallerPolicy:
    """The calling-AE allow-list. ``restrict`` off lets every caller in.

    A rule's host is compared as an IP address (an IPv4 caller on a dual-stack listener, ``::ffff:10.1.2.3``,
    is ``10.1.2.3``); a host name is resolved by ``names`` (:class:`HostNames`)."""

    restrict: bool
    rules: tuple[CallerRule, ...]
    names: HostNames = field(default_factory=HostNames, compare=False, repr=False)

    @classmethod
    def from_rules(cls, restrict: bool, rules: Sequence[CallerRule], names: HostNames | None = None) -> CallerPolicy:
        """The policy; with ``restrict`` on, the host names of ``rules`` are looked up at once."""
        policy = cls(restrict=restrict, rules=tuple(rules), names=names or HostNames())
        if restrict:
            policy.names.warm([r.host for r in policy.rules if r.host is not None and ip_address(r.host) is None])
        return policy

    def allows(self, calling_ae: str, host: str) -> bool:
        if not self.restrict:
            return True
        calling = calling_ae.strip()
        rules = [r for r in self.rules if r.ae_title == calling]
        if any(r.host is None for r in rules):
            return True
        address = ip_address(host)
        if address is None:
            return False
        named = [r.host for r in rules if r.host is not None and ip_address(r.host) is None]
        return (any(r.host is not None and ip_address(r.host) == address for r in rules)
                or any(self.names.holds(name, address) for name in named))


class AssociationSlots:
    """The node-wide association limit and each host's share of it, shared between receiving processes.

    ``held`` is a ``multiprocessing.Array('q', processes * limit)``: process ``index`` owns the
    ``limit`` entries from ``index * limit``, one per association it holds, each the key of the calling
    host (0: free), so that a restarted process can reset its own. An association is taken while fewer
    than ``limit`` are held over the node and fewer than ``per_host`` by its caller's host (probe 27: with
    ``scp.restrict_callers`` off, one host could hold every slot and keep the scanners out).
    """

    def __init__(self, held: SynchronizedArray[int], index: int, limit: int, per_host: int | None = None) -> None:
        self.held = held
        self.index = index
        self.limit = limit
        self.per_host = limit if per_host is None else min(per_host, limit)
        self._own = slice(index * limit, (index + 1) * limit)

    @staticmethod
    def key(host: str) -> int:
        """A host's key: its address (an IPv4-mapped one as IPv4), hashed to a positive 63-bit number."""
        address = ip_address(host)
        digest = hashlib.blake2b(str(address if address is not None else host).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") >> 1 or 1

    def reset(self) -> None:
        with self.held.get_lock():
            self.held[self._own] = [0] * self.limit

    def try_take(self, host: str) -> tuple[str, str] | None:
        """Take a slot for an association from ``host``; None when taken, else why not: its kind
        (``uronode.metrics.REFUSAL_REASONS``) and in words."""
        key = self.key(host)
        with self.held.get_lock():
            held = self.held[:]
            if sum(1 for k in held if k) >= self.limit:
                return "association_limit", f"{self.limit} associations open"
            if held.count(key) >= self.per_host:
                return "host_share", (f"its host holds {self.per_host} associations, its share"
                                      " (scp.max_associations_per_host)")
            own = self._own.start
            self.held[own + held[self._own].index(0)] = key
            return None

    def give_back(self, host: str) -> None:
        key = self.key(host)
        with self.held.get_lock():
            own = self.held[self._own]
            if key in own:
                self.held[self._own.start + own.index(key)] = 0


class RefusalAudit:
    """Refused associations in the audit log (probe 41: a scanner refused for its AE title was in the text log
    only): event ``association_refused`` with the calling AE, the host and why, at most one a minute for each
    (AE, host, why), with how many more there were since (a peer retrying, or a flood, writes no more). Each
    refusal is also counted by its kind (``tally``: ``uronode_associations_refused{reason}``)."""

    def __init__(self, audit: AuditLog | None, every_s: float = 60.0, tally: Tally | None = None) -> None:
        self.audit = audit
        self.tally = tally
        self.every_s = every_s
        self._last: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def record(self, calling_ae: str, host: str, why: str, kind: str) -> None:
        """One refusal: ``kind``, one of :data:`uronode.metrics.REFUSAL_REASONS`, counts it."""
        if self.tally is not None:
            self.tally.add(kind)
        if self.audit is None:
            return
        key = (calling_ae[:64], host[:64], why)
        now = time.monotonic()
        with self._lock:
            last, held = self._last.get(key, (-self.every_s, 0))
            if now - last < self.every_s:
                self._last[key] = (last, held + 1)
                return
            self._last[key] = (now, 0)
            if len(self._last) > 4096:  # many hosts or titles: forget the oldest
                for old in sorted(self._last, key=lambda k: self._last[k][0])[:2048]:
                    del self._last[old]
        self.audit.record("association_refused", calling_ae=key[0], host=key[1], reason=why, more_since=held)


class PolicyACSE(ACSE):
    """ACSE that applies the caller policy and the shared association limit before negotiating."""

    policy: CallerPolicy
    slots: AssociationSlots | None
    refusals: RefusalAudit | None = None

    def _negotiate_as_acceptor(self) -> None:
        rq = self.requestor.primitive
        calling_ae = str(rq.calling_ae_title if rq is not None else "").strip()
        host = str(self.requestor.address)
        called_ae = str(rq.called_ae_title if rq is not None else "").strip()
        ours = str(self.acceptor.ae_title).strip()
        if self.assoc.ae.require_called_aet and called_ae != ours:
            log.warning("association from %s at %s rejected: called AE title %r is not ours (%s)",
                        calling_ae, host, called_ae, ours)
            self._audit(calling_ae, host, f"called AE title {called_ae[:16]!r} is not ours", "called_ae")
            self._reject(RejectResult.PERMANENT, RejectSource.SERVICE_USER, RejectReason.CALLED_AE_NOT_RECOGNISED)
            return
        if not self.policy.allows(calling_ae, host):
            log.warning("association from %s at %s rejected: calling AE title not allowed", calling_ae, host)
            self._audit(calling_ae, host, "calling AE title not allowed (scp.allowed_callers)", "calling_ae")
            self._reject(RejectResult.PERMANENT, RejectSource.SERVICE_USER, RejectReason.CALLING_AE_NOT_RECOGNISED)
            return
        if self.slots is not None:
            refusal = self.slots.try_take(host)
            if refusal is not None:
                kind, why = refusal
                log.warning("association from %s at %s rejected: %s", calling_ae, host, why)
                self._audit(calling_ae, host, why, kind)
                self._reject(
                    RejectResult.TRANSIENT,
                    RejectSource.SERVICE_PROVIDER_PRESENTATION,
                    RejectReason.LOCAL_LIMIT_EXCEEDED,
                )
                return
            self.assoc._uronode_slot = host  # type: ignore[attr-defined]  # our mark on pynetdicom's object
        super()._negotiate_as_acceptor()

    def send_accept(self) -> None:
        prefer_requestor_order(self.assoc)
        super().send_accept()

    def is_release_requested(self) -> bool:
        """pynetdicom's check, marking the association once the peer asked for a release: the mark is set
        before our A-RELEASE-RP goes out, so the connection's close (which can be handled before pynetdicom's
        EVT_RELEASED) still knows the association ended normally (:func:`released_normally`)."""
        requested = super().is_release_requested()
        if requested:
            self.assoc._uronode_release_requested = True  # type: ignore[attr-defined]  # our mark
        return requested

    def _audit(self, calling_ae: str, host: str, why: str, kind: str) -> None:
        if self.refusals is not None:
            self.refusals.record(calling_ae, host, why, kind)

    def _reject(self, result: int, source: int, reason: int) -> None:
        self.requestor.ae_title = str(self.requestor.primitive.calling_ae_title)  # type: ignore[union-attr]
        self.send_reject(result, source, reason)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


def prefer_requestor_order(assoc: Association) -> None:
    """Give each accepted presentation context the first transfer syntax the requestor proposed for it among
    those the node accepts for its SOP class (PS3.8 7.1.1.14 leaves the choice to the acceptor).

    pynetdicom takes the first of the acceptor's own list that the requestor offers, so Explicit VR Little
    Endian, first in the node's list, would win over JPEG proposed before it in the same context, and the
    sender would decompress. Called just before the A-ASSOCIATE-AC is sent: which contexts are accepted
    does not change, only the syntax of each.
    """
    rq = assoc.requestor.primitive
    if rq is None:
        return
    proposed = {cx.context_id: cx for cx in rq.presentation_context_definition_list}
    supported = {str(cx.abstract_syntax): {str(ts) for ts in cx.transfer_syntax}
                 for cx in assoc.acceptor.supported_contexts}
    for context in assoc.accepted_contexts:
        offered = proposed.get(context.context_id)
        ours = supported.get(str(context.abstract_syntax))
        if offered is None or ours is None:
            continue
        first = next((ts for ts in offered.transfer_syntax if str(ts) in ours), None)
        if first is not None and str(first) != str(context.transfer_syntax[0]):
            context.transfer_syntax = [first]


def make_request_handler(
    policy: CallerPolicy, slots: AssociationSlots | None, max_instance_bytes: int, refusals: RefusalAudit | None = None
) -> type[RequestHandler]:
    """A pynetdicom request handler whose associations use :class:`PolicyACSE` and take data sets of at
    most ``max_instance_bytes``."""

    class _Handler(RequestHandler):
        def _create_association(self) -> Association:
            assoc = super()._create_association()
            acse = PolicyACSE(assoc)
            acse.policy = policy
            acse.slots = slots
            acse.refusals = refusals
            assoc.acse = acse
            fastpath.attach(assoc)
            guard_store_requests(assoc)
            cap_message_size(assoc, max_instance_bytes)
            return assoc

    return _Handler


def released_normally(assoc: Association) -> bool:
    """Whether the peer asked for the association's release (A-RELEASE-RQ), as opposed to an abort or a
    lost connection."""
    return bool(getattr(assoc, "_uronode_release_requested", False))


def release_slot(assoc: Association, slots: AssociationSlots | None) -> None:
    """Give back the association's slot, once, when its connection closes."""
    host = getattr(assoc, "_uronode_slot", None)
    if slots is not None and host is not None:
        assoc._uronode_slot = None  # type: ignore[attr-defined]  # our mark on pynetdicom's object
        slots.give_back(host)


def guard_store_requests(assoc: Association) -> None:
    """Answer 0122 to a C-STORE whose SOP class is not its presentation context's, before pynetdicom serves it."""
    serve = assoc._serve_request

    def serve_checked(msg: DimseServiceType, context_id: int) -> None:
        context = assoc._accepted_cx.get(context_id)
        if (
            isinstance(msg, C_STORE)
            and msg.is_valid_request
            and context is not None
            and str(msg.AffectedSOPClassUID) != str(context.abstract_syntax)
        ):
            log.warning(
                "C-STORE from %s refused: SOP class %s sent on the presentation context for %s",
                str(assoc.requestor.ae_title).strip(), msg.AffectedSOPClassUID, context.abstract_syntax,
            )
            response = C_STORE()
            response.MessageIDBeingRespondedTo = msg.MessageID
            response.AffectedSOPClassUID = msg.AffectedSOPClassUID
            response.AffectedSOPInstanceUID = msg.AffectedSOPInstanceUID
            response.Status = StoreStatus.SOP_CLASS_NOT_SUPPORTED
            response.ErrorComment = "SOP class differs from the presentation context's"  # type: ignore[assignment]
            assoc.dimse.send_msg(response, context_id)
            return
        serve(msg, context_id)

    assoc._serve_request = serve_checked  # type: ignore[method-assign]  # this association's own, wrapped


def cap_message_size(assoc: Association, max_data_set_bytes: int) -> None:
    """Abort the association when the DIMSE message it is receiving grows past its limit.

    Both ways of reading PDUs (:mod:`scp.fastpath`'s and pynetdicom's own
    DT-2 action) hand every P-DATA to ``assoc.dimse.receive_primitive``, wrapped
    here: the command-set and data-set bytes of the message in progress are
    counted before pynetdicom keeps them, so what it holds never exceeds the
    limit (the PDU being read adds at most one more). Past the limit the message is dropped, the
    association aborted (Evt19: A-ABORT to the peer, A-P-ABORT to the
    association) and whatever else arrives ignored.
    """
    dimse = assoc.dimse
    receive = dimse.receive_primitive
    counted = [0, 0]  # command-set and data-set bytes of the message in progress (PDV header bit 0: command)
    refused = False

    def receive_capped(primitive: P_DATA) -> None:
        nonlocal refused
        if refused:
            return  # aborting: what is still on its way is dropped
        for _, pdv in primitive.presentation_data_value_list:
            if len(pdv):
                counted[0 if pdv[0] & 1 else 1] += len(pdv) - 1
        if counted[1] > max_data_set_bytes:
            what = f"data set of more than {max_data_set_bytes} bytes"
        elif counted[0] > MAX_COMMAND_SET_BYTES:
            what = f"command set of more than {MAX_COMMAND_SET_BYTES} bytes"
        else:
            receive(primitive)
            if dimse.message is None:  # the message was complete: the next one starts from nothing
                counted[:] = [0, 0]
            return
        refused = True
        dimse.message = None  # free what was gathered now, not when the association is gone
        log.error(
            "%s from %s@%s: association aborted",
            what, str(assoc.requestor.ae_title).strip(), assoc.requestor.address,
        )
        assoc.dul.event_queue.put("Evt19")

    dimse.receive_primitive = receive_capped  # type: ignore[method-assign]  # this association's own, wrapped
