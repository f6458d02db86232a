"""C-STORE SCU: send stored files to a DICOM peer and report the peer's status for each.

The transfer syntax is negotiated: each SOP class is proposed with the file's
own transfer syntax first, then Explicit and Implicit VR Little Endian. A
file goes in its own syntax when the peer accepts it, else decompressed to
an uncompressed one. A success or warning status (PS3.4 B.2.3) counts as
delivered; anything else, including no answer, is a failure with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.association import Association

from scp.identity import node_ae

log = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
WARNING_STATUSES = {0xB000, 0xB006, 0xB007}


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


def _syntax_of(path: Path) -> str:
    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    return str(meta.file_meta.TransferSyntaxUID)


def store_files(
    files: Sequence[Outgoing],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "URONODE",
    timeout_s: float = 30.0,
) -> list[SendResult]:
    """Send the files in one association; one result per file, in order. Never raises for peer trouble."""
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
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    contexts = [build_context(sop_class, ts) for sop_class, ts in syntaxes.items()]
    where = f"{called_ae} at {host}:{port}"
    if len(contexts) > 128:
        return [SendResult(f.sop_instance_uid, False, None, "more than 128 SOP classes in one send") for f in files]
    assoc = ae.associate(host, port, contexts=contexts, ae_title=called_ae) if contexts else None
    if assoc is None or not assoc.is_established:
        if assoc is not None and assoc.is_rejected and assoc.acceptor.primitive is not None:
            rj = assoc.acceptor.primitive
            reason = f"association rejected by {where} (result {rj.result}, source {rj.result_source}, reason {rj.diagnostic})"
        else:
            reason = f"no association with {where} (refused, aborted or timed out)"
        return [SendResult(f.sop_instance_uid, False, None, reason) for f in files]
    accepted: dict[str, set[str]] = {}
    for cx in assoc.accepted_contexts:
        accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    results = []
    try:
        for item in files:
            results.append(_send_one(assoc, item, file_syntax.get(item.path, ""), accepted, where))
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    for item in files[len(results) :]:
        results.append(SendResult(item.sop_instance_uid, False, None, f"association with {where} ended early"))
    return results


def _send_one(assoc: Association, item: Outgoing, syntax: str, accepted: dict[str, set[str]], where: str) -> SendResult:
    if not syntax:
        return SendResult(item.sop_instance_uid, False, None, f"{item.path} is missing or not DICOM")
    offered = accepted.get(item.sop_class_uid, set())
    if not offered:
        return SendResult(item.sop_instance_uid, False, None,
                          f"{where} accepts no context for SOP class {item.sop_class_uid} (to send a destination only "
                          'what it stores, set its results, e.g. ["sc", "sr"])')
    try:
        ds = dcmread(item.path)
        if syntax not in offered:
            target = next(ts for ts in UNCOMPRESSED if ts in offered)
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress(generate_instance_uid=False)  # the same instance, only re-encoded
            ds.file_meta.TransferSyntaxUID = target
        status = assoc.send_c_store(ds)
    except (OSError, InvalidDicomError, ValueError, RuntimeError, StopIteration) as exc:
        return SendResult(item.sop_instance_uid, False, None, f"cannot send {item.path.name}: {exc}")
    if status is None or "Status" not in status:
        return SendResult(item.sop_instance_uid, False, None, f"no C-STORE response from {where}")
    code = int(status.Status)
    if code == 0x0000 or code in WARNING_STATUSES:
        return SendResult(item.sop_instance_uid, True, code, None)
    comment = f": {status.ErrorComment}" if "ErrorComment" in status else ""
    return SendResult(item.sop_instance_uid, False, code, f"{where} answered 0x{code:04X}{comment}")
