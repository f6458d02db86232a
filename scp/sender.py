"""C-STORE SCU: send stored files to a DICOM peer and report the peer's status for each.

The transfer syntax is negotiated: each SOP class is proposed with the file's
own transfer syntax first, then Explicit and Implicit VR Little Endian. A
file goes in its own syntax when the peer accepts it, else decompressed to
an uncompressed one. A success or warning status (PS3.4 B.2.3) counts as
delivered; anything else, including no answer, is a failure with its reason.

Each failure says what happened, as far as the association shows it: no
connection (and in what time), an A-ASSOCIATE-RJ (decoded), an A-ABORT from
the peer, no answer within the ACSE timeout, a SOP class whose presentation
context the peer refused (naming the ``results`` setting), or no C-STORE
response within the DIMSE timeout. Each C-STORE-RQ of an association has its
own Message ID, 1, 2, 3, ... (PS3.7 9.1.1.1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import VR
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.presentation import PresentationContext

from scp.identity import node_ae

log = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def is_warning(code: int) -> bool:
    """A warning status (PS3.7 C.3: 0001 or Bxxx, C-STORE's own B000, B006 and B007 among them; and the
    attribute warnings 0107 and 0116 of PS3.7 C.4, as pynetdicom classes them): the peer
    stored the instance and says something about it. Probe 25: a peer's 0001 counted as a failure, and every
    result was sent again on each retry until the job failed."""
    return code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF


RESULTS_HINT = '(to send a destination only what it stores, set its results, e.g. ["sc", "sr"])'
CONTEXT_RESULTS = {
    1: "user rejection",
    2: "no reason given",
    3: "abstract syntax not supported",
    4: "transfer syntaxes not supported",
}
"""Presentation context results of an A-ASSOCIATE-AC (PS3.8 9.3.3.2), as the reasons say them."""
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
ABORT_SOURCES = {0: "service user", 1: "reserved", 2: "service provider"}


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long the SCU waits (seconds): for the TCP connection, for the answer to the A-ASSOCIATE-RQ
    (and A-RELEASE-RQ), and for each C-STORE response (``delivery.*_timeout_s``)."""

    connect_s: float = 10.0
    acse_s: float = 30.0
    dimse_s: float = 120.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class SendResult:
    sop_instance_uid: str
    ok: bool
    status: int | None
    reason: str | None
    permanent: bool = False
    """Trying again cannot help until the destination is changed: it supports no presentation context of the
    SOP class (result 3, abstract syntax not supported)."""
    withheld: bool = False
    """Not sent: no longer wanted when its turn came (``store_files``' ``still_wanted``); neither a success nor a
    failed try."""


@dataclass
class _Watch:
    """What the association showed while it ran, read by the reasons (the DUL thread writes, this one reads)."""

    connected: bool = False
    peer_abort: str | None = None
    """The peer's A-ABORT, as a reason says it."""
    requested_at: float = field(default_factory=time.monotonic)

    def handlers(self) -> list[EventHandlerType]:
        return [(evt.EVT_CONN_OPEN, self._opened), (evt.EVT_PDU_RECV, self._pdu)]

    def _opened(self, _event: Event) -> None:
        self.connected = True

    def _pdu(self, event: Event) -> None:
        pdu = event.pdu  # an EVT_PDU_RECV event carries its PDU
        if isinstance(pdu, A_ABORT_RQ):
            source = ABORT_SOURCES.get(int(pdu.source or 0), str(pdu.source))
            self.peer_abort = f"A-ABORT, source {source}, reason {pdu.reason_diagnostic}"


def _syntax_of(path: Path) -> str:
    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    return str(meta.file_meta.TransferSyntaxUID)


def refused_context_reason(where: str, sop_class_uid: str, result: int | None) -> str:
    """Why a file of this SOP class was not sent: the peer refused its presentation context."""
    why = f": {CONTEXT_RESULTS[result]}" if result in CONTEXT_RESULTS else ""
    return f"{where} accepts no context for SOP class {sop_class_uid}{why} {RESULTS_HINT}"


def _no_association_reason(assoc: Association | None, watch: _Watch, where: str, timeouts: Timeouts) -> str:
    """Why no association came about (every case but refused contexts, which are per SOP class)."""
    if assoc is None or not watch.connected:
        return (f"cannot connect to {where} (connection refused, host unreachable, or no TCP connection "
                f"within {timeouts.connect_s:g} s: delivery.connect_timeout_s)")
    rj = assoc.acceptor.primitive if assoc.is_rejected else None
    if rj is not None:
        return (f"association rejected by {where}: {rj.result_str}, {rj.source_str}, {rj.reason_str} "
                f"(result {rj.result}, source {rj.result_source}, reason {rj.diagnostic})")
    if watch.peer_abort is not None:
        return f"{where} aborted the association request ({watch.peer_abort})"
    if time.monotonic() - watch.requested_at >= timeouts.acse_s:
        return (f"no answer from {where} to the association request within {timeouts.acse_s:g} s "
                "(delivery.acse_timeout_s)")
    return f"{where} closed the connection without answering the association request"


def store_files(
    files: Sequence[Outgoing],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "URONODE",
    timeouts: Timeouts = Timeouts(),
    on_stored: Callable[[int, SendResult], None] | None = None,
    still_wanted: Callable[[int], bool] | None = None,
) -> list[SendResult]:
    """Send the files in one association; one result per file, in order. Never raises for peer trouble.
    ``on_stored`` is told of each file the peer stored (its index in ``files``) as soon as it answers, so that
    a stop or a crash later in the association does not send it again (probe 24). ``still_wanted`` is asked of
    each file right before it is sent: one it says no to is not sent (``withheld``; review 40: a result withdrawn
    after a patient's correction went out in a round that had begun before it)."""
    if not files:
        return []
    syntaxes: dict[str, list[str]] = {}
    file_syntax: dict[Path, str] = {}
    for item in files:
        try:
            file_syntax[item.path] = _syntax_of(item.path)
        except (OSError, InvalidDicomError) as exc:
            file_syntax[item.path] = ""
            log.error("cannot read %s for sending: %s", item.path, exc)
            continue
        proposed = syntaxes.setdefault(item.sop_class_uid, [])
        for syntax in (file_syntax[item.path], *UNCOMPRESSED):
            if syntax not in proposed:
                proposed.append(syntax)
    ae = node_ae(calling_ae)
    ae.connection_timeout = timeouts.connect_s
    ae.acse_timeout = timeouts.acse_s
    # The idle timer must not cut a C-STORE whose response is slow but within the DIMSE timeout.
    ae.dimse_timeout = ae.network_timeout = timeouts.dimse_s
    contexts = [build_context(sop_class, ts) for sop_class, ts in syntaxes.items()]
    where = f"{called_ae} at {host}:{port}"
    if len(contexts) > 128:
        return [SendResult(f.sop_instance_uid, False, None, "more than 128 SOP classes in one send") for f in files]
    watch = _Watch()
    assoc = (ae.associate(host, port, contexts=contexts, ae_title=called_ae,
                          evt_handlers=watch.handlers())
             if contexts else None)
    if assoc is None or not assoc.is_established:
        refused = _refused_contexts(assoc)
        if refused:  # A-ASSOCIATE-AC with no context accepted: pynetdicom aborts, but the AC says why
            return [SendResult(f.sop_instance_uid, False, None,
                               refused_context_reason(where, f.sop_class_uid, refused.get(f.sop_class_uid)),
                               permanent=refused.get(f.sop_class_uid) == ABSTRACT_SYNTAX_NOT_SUPPORTED)
                    for f in files]
        reason = _no_association_reason(assoc, watch, where, timeouts)
        return [SendResult(f.sop_instance_uid, False, None, reason) for f in files]
    accepted: dict[str, set[str]] = {}
    for cx in assoc.accepted_contexts:
        accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    refused = _refused_contexts(assoc)
    results: list[SendResult] = []
    try:
        for number, item in enumerate(files):
            if still_wanted is not None and not still_wanted(number):
                results.append(SendResult(item.sop_instance_uid, False, None, "no longer owed", withheld=True))
                continue
            results.append(_send_one(assoc, item, file_syntax.get(item.path, ""), accepted, refused, where,
                                     message_id=number % 0xFFFF + 1, timeouts=timeouts, watch=watch))
            if on_stored is not None and results[-1].ok:
                on_stored(number, results[-1])
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    for item in files[len(results) :]:
        results.append(SendResult(item.sop_instance_uid, False, None,
                                  f"not sent: the association with {where} ended before it (see the instance before)"))
    return results


def _decode_all(ds: Dataset) -> None:
    """Decode every element of ``ds`` and of the items of its sequences, at any depth, from the bytes it was
    read from, so that the writer encodes each afresh in the syntax sent (a raw element is written as read)."""
    for elem in ds:  # iterating a data set decodes each element in place
        if elem.VR == VR.SQ:
            for item in elem.value:
                _decode_all(item)


def _refused_contexts(assoc: Association | None) -> dict[str, int | None]:
    """SOP class -> the result of its refused presentation context, from the peer's A-ASSOCIATE-AC (if one came)."""
    if assoc is None or assoc.acceptor.primitive is None or assoc.acceptor.primitive.result != 0x00:
        return {}
    rejected: list[PresentationContext] = assoc.rejected_contexts
    return {str(cx.abstract_syntax): cx.result for cx in rejected}


def _send_one(
    assoc: Association, item: Outgoing, syntax: str, accepted: dict[str, set[str]], refused: dict[str, int | None],
    where: str, *, message_id: int, timeouts: Timeouts, watch: _Watch,
) -> SendResult:
    if not syntax:
        return SendResult(item.sop_instance_uid, False, None, f"{item.path} is missing or not DICOM")
    offered = accepted.get(item.sop_class_uid, set())
    if not offered:
        return SendResult(item.sop_instance_uid, False, None,
                          refused_context_reason(where, item.sop_class_uid, refused.get(item.sop_class_uid)),
                          permanent=refused.get(item.sop_class_uid) == ABSTRACT_SYNTAX_NOT_SUPPORTED)
    try:
        ds = dcmread(item.path)
        if syntax not in offered:
            target = next(ts for ts in UNCOMPRESSED if ts in offered)
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress(generate_instance_uid=False)  # the same instance, only re-encoded
            ds.file_meta.TransferSyntaxUID = target
            # encoded as the target says (pynetdicom refuses a data set read as explicit VR under an implicit
            # syntax: a PACS that accepts Implicit VR Little Endian alone stopped every delivery), every item of
            # every sequence too (probe 25: items kept their explicit VR bytes in an implicit VR stream, and
            # the PACS aborted on the SEG)
            _decode_all(ds)
            ds.set_original_encoding(target.is_implicit_VR, target.is_little_endian, ds.original_character_set)
        started = time.monotonic()
        status = assoc.send_c_store(ds, msg_id=message_id)
    except (OSError, InvalidDicomError, ValueError, RuntimeError, StopIteration) as exc:
        return SendResult(item.sop_instance_uid, False, None, f"cannot send {item.path.name}: {exc}")
    except Exception as exc:  # noqa: BLE001 - one instance's failure, whatever it is, is that delivery's, not the round's
        log.exception("sending %s to %s failed", item.path.name, where)
        return SendResult(item.sop_instance_uid, False, None,
                          f"cannot send {item.path.name}: {type(exc).__name__}: {exc}")
    if status is None or "Status" not in status:
        if watch.peer_abort is not None:
            why = f"{where} aborted the association ({watch.peer_abort}) before its C-STORE response"
        elif time.monotonic() - started >= timeouts.dimse_s:
            why = (f"timed out after {timeouts.dimse_s:g} s waiting for the C-STORE response from {where} "
                   "(delivery.dimse_timeout_s; the peer may have stored it)")
        else:
            why = f"{where} closed the connection before its C-STORE response"
        return SendResult(item.sop_instance_uid, False, None, why)
    code = int(status.Status)
    if code == 0x0000 or is_warning(code):
        if code:
            comment = f": {status.ErrorComment}" if "ErrorComment" in status else ""
            log.info("%s stored %s with warning 0x%04X%s", where, item.sop_instance_uid, code, comment)
        return SendResult(item.sop_instance_uid, True, code, None)
    comment = f": {status.ErrorComment}" if "ErrorComment" in status else ""
    meaning = " (out of resources: its disk or memory?)" if code & 0xFF00 == 0xA700 else ""  # probe 41
    return SendResult(item.sop_instance_uid, False, code, f"{where} answered 0x{code:04X}{meaning}{comment}")
