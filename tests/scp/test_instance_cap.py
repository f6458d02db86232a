"""A C-STORE data set past ``scp.max_instance_bytes`` aborts its association; the node goes on serving.

A data set is gathered in memory until its last fragment has come, and no
status can be answered before that: a peer that never sets the last-fragment
bit would have the receiving process buffer without end. The peers here are
real: a pynetdicom requestor that writes P-DATA fragments straight onto its
socket (as a hostile or broken peer would), DCMTK's storescu and echoscu.
The receiving process's memory is read as its peak resident size (VmHWM),
so no sampling can miss a peak.
"""

from __future__ import annotations

import re
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from scp import fastpath
from scp.policy import MAX_COMMAND_SET_BYTES
from scp.server import make_server
from tests.conftest import query
from tests.factory import uid, write_series
from tests.peers.processes import Node, echoscu, free_port, storescu, wait_until
from uronode.settings import load_settings
from uronode.store import Store

MIB = 1024 * 1024
CAP = 8 * MIB
SENT_WITHOUT_CAP = 256 * MIB
"""What the endless sender gives up after: without the cap, all of it is held by the receiver."""
MEMORY_BOUND = 96 * MIB
"""The receiver's peak may grow by the cap, one PDU in flight and its own copies of them; far less than what was sent."""


def element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def uid_value(text: str) -> bytes:
    raw = text.encode()
    return raw + b"\x00" if len(raw) % 2 else raw


def store_request(sop_instance_uid: str) -> bytes:
    """The command set of a C-STORE-RQ with a data set, Implicit VR Little Endian."""
    body = b"".join((
        element(0x00000002, uid_value(CTImageStorage)),
        element(0x00000100, struct.pack("<H", 0x0001)),  # C-STORE-RQ
        element(0x00000110, struct.pack("<H", 1)),  # Message ID
        element(0x00000700, struct.pack("<H", 0)),  # Priority
        element(0x00000800, struct.pack("<H", 0x0000)),  # a data set follows
        element(0x00001000, uid_value(sop_instance_uid)),
    ))
    return element(0x00000000, struct.pack("<I", len(body))) + body


def pdata(context_id: int, payload: bytes, control: int) -> bytes:
    item = struct.pack(">IBB", len(payload) + 2, context_id, control) + payload
    return struct.pack(">BBI", 0x04, 0, len(item)) + item


def send_endless_data_set(port: int, calling: str, total: int, *, command: bool = False) -> tuple[Association, int]:
    """Associate, send a C-STORE-RQ, then data-set fragments without the last-fragment bit until the node
    aborts or ``total`` bytes went; the association and the bytes sent. ``command``: command-set fragments
    without the last-fragment bit instead, from the start."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="URONODE")
    assert assoc.is_established and assoc.dul.socket is not None and assoc.dul.socket.socket is not None
    context_id = assoc.accepted_contexts[0].context_id
    assert context_id is not None
    sock = assoc.dul.socket.socket
    size = min(int(assoc.acceptor.maximum_length or 0) or MIB, MIB) - 64
    fragment = pdata(context_id, bytes(size), 0x01 if command else 0x00)
    sent = 0
    try:
        if not command:
            sock.sendall(pdata(context_id, store_request(str(uid("cap", calling))), 0x03))
        while sent < total and assoc.is_established:
            sock.sendall(fragment)
            sent += len(fragment)
    except OSError:  # the node aborted and the connection went while we were sending
        pass
    return assoc, sent


def peak_resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def receiver_pid(node: Node) -> int:
    assert node.proc is not None
    (pid,) = re.findall(r"receiver 0 \(pid (\d+)\) accepting associations", node.proc.log_text())
    return int(pid)


def stored(node: Node) -> int:
    return int(query(node.data_dir, "SELECT count(*) FROM instances")[0][0])


def test_a_data_set_past_the_cap_aborts_its_association_only(start_node: Callable[..., Node], tmp_path: Path) -> None:
    node = start_node(URONODE_SCP__MAX_INSTANCE_BYTES=str(CAP), URONODE_SCP__PROCESSES="1")
    proc = node.proc
    assert proc is not None
    # under the cap: DCMTK's storescu stores as ever (512 KiB slices)
    write_series(tmp_path / "small", 3, size=512)
    sent_small = storescu(node.dicom_port, tmp_path / "small")
    assert sent_small.returncode == 0, sent_small.stderr
    assert stored(node) == 3
    receiver = receiver_pid(node)
    peak_before = peak_resident_bytes(receiver)

    assoc, sent = send_endless_data_set(node.dicom_port, "ENDLESS", SENT_WITHOUT_CAP)
    try:
        wait_until(lambda: assoc.is_aborted, 30, "the node to abort the association")
    finally:
        if assoc.is_established:
            assoc.abort()
    assert sent < SENT_WITHOUT_CAP
    line = f"data set of more than {CAP} bytes from ENDLESS@127.0.0.1: association aborted"
    wait_until(lambda: line in proc.log_text(), 10, "the log line naming the caller")
    assert peak_resident_bytes(receiver) - peak_before < MEMORY_BOUND

    # a real peer sending one instance over the cap (2100 x 2100 x 2 bytes of pixels) is aborted too
    write_series(tmp_path / "large", 1, size=2100)
    large = storescu(node.dicom_port, tmp_path / "large")
    assert large.returncode != 0 and "aborted" in large.stderr
    assert f"data set of more than {CAP} bytes from STORESCU@127.0.0.1" in proc.log_text()
    assert stored(node) == 3  # nothing of either was stored
    echo = echoscu(node.dicom_port)  # a new association is served
    assert echo.returncode == 0, echo.stderr


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "pynetdicom-path"])
@pytest.mark.parametrize("command", [False, True], ids=["data-set", "command-set"])
def test_an_endless_message_is_aborted_with_or_without_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fast: bool, command: bool
) -> None:
    if not fast:  # as on a pynetdicom other than the pinned one: PDUs go through pynetdicom's own state machine
        monkeypatch.setattr(fastpath, "_installed", False)
        monkeypatch.setattr(fastpath, "install", lambda: False)
    port = free_port()
    cap = MIB
    settings = load_settings(
        overrides={"host": "127.0.0.1", "scp": {"port": port, "processes": 1, "max_instance_bytes": cap}}
    )
    store = Store(tmp_path / "data", fsync=False)
    server = make_server(settings, store, None, None)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        assoc, sent = send_endless_data_set(port, "ENDLESS", 64 * MIB, command=command)
        try:
            wait_until(lambda: assoc.is_aborted, 30, "the node to abort the association")
        finally:
            if assoc.is_established:
                assoc.abort()
        assert sent < 64 * MIB
        what = f"command set of more than {MAX_COMMAND_SET_BYTES}" if command else f"data set of more than {cap}"
        line = f"{what} bytes from ENDLESS@127.0.0.1: association aborted"
        wait_until(lambda: line in caplog.text, 10, "the log line naming the caller")
        assert fastpath.is_installed() is fast
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(Verification)
        good = ae.associate("127.0.0.1", port, ae_title="URONODE")
        assert good.is_established and good.send_c_echo().Status == 0x0000
        good.release()
        assert int(store.conn().execute("SELECT count(*) FROM instances").fetchone()[0]) == 0
    finally:
        server.shutdown()
