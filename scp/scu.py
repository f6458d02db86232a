"""The SCU side: C-ECHO now; C-STORE for delivering results comes with the delivery outbox."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from scp.identity import node_ae
from uronode.settings import check_ae_title


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    message: str


def echo(host: str, port: int, called_ae: str, calling_ae: str = "URONODE", timeout_s: float = 10.0) -> EchoResult:
    """C-ECHO a peer; never raises for network trouble (an unknown host included), says what happened instead.

    Raises ValueError naming the argument for a port outside 1-65535 or an AE title the DICOM AE
    rule refuses (empty, over 16 characters, a backslash, anything but printable ASCII).
    """
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not in 1-65535")
    called_ae = check_ae_title(called_ae, "called AE title")
    calling_ae = check_ae_title(calling_ae, "calling AE title")
    ae = node_ae(calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    ae.add_requested_context(Verification)
    try:
        assoc = ae.associate(host, port, ae_title=called_ae)
    except socket.gaierror as exc:
        return EchoResult(False, f"cannot resolve host {host!r} ({exc.strerror})")
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        detail = f"result 0x{rj.result:02X}, source 0x{rj.result_source:02X}, reason 0x{rj.diagnostic:02X}" if rj else ""
        return EchoResult(False, f"association rejected by {called_ae} at {host}:{port} ({detail})")
    if not assoc.is_established:
        return EchoResult(False, f"no association with {called_ae} at {host}:{port} (refused, aborted or timed out)")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status is None or "Status" not in status:
        return EchoResult(False, f"no C-ECHO response from {called_ae} at {host}:{port}")
    if status.Status != 0x0000:
        return EchoResult(False, f"C-ECHO answered status 0x{status.Status:04X}")
    return EchoResult(True, f"C-ECHO to {called_ae} at {host}:{port}: success")
