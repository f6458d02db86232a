"""Garbage on the DICOM port: the association (or connection) ends, the node goes on serving."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.peers.processes import Node, echoscu


def blast(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.settimeout(5)
            sock.recv(100)  # an A-ABORT, an A-ASSOCIATE-RJ, or the connection closed
        except OSError:
            pass


def test_random_truncated_and_oversized_pdus(start_node: Callable[..., Node]) -> None:
    node = start_node()
    blast(node.dicom_port, os.urandom(4096))
    blast(node.dicom_port, b"\x01\x00\x00\x00\x10\x00" + b"\x00\x01")  # A-ASSOCIATE-RQ cut short
    blast(node.dicom_port, b"\x01\x00" + struct.pack(">I", 0xFFFFFFF0))  # claims 4 GB
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="URONODE")
    assert assoc.is_established and assoc.dul.socket is not None
    assoc.dul.socket.send(b"\x04\x00" + struct.pack(">I", 0x7FFFFFFF))  # P-DATA beyond our 4 MiB maximum
    assoc.dul.socket.send(b"\x00" * 64)
    for _ in range(50):
        if not assoc.is_established:
            break
        import time

        time.sleep(0.1)
    assert not assoc.is_established  # aborted, not waiting for 2 GB
    assert echoscu(node.dicom_port).returncode == 0  # and the node still serves
    assert "over the" in node.proc.log_text()
