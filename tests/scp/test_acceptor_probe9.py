"""The listener's answers and log lines that probe9 found wanting (findings 5, 6, 7, 8), against real peers:
DCMTK dcmsend, findscu, echoscu and storescu, and a pynetdicom requestor where DCMTK cannot do the thing."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from tests.conftest import query
from tests.factory import ct_slice, uid, write_series
from tests.peers.processes import DCMTK_ENV, Node, echoscu, require, storescu, wait_until

StartNode = Callable[..., Node]


def log_of(node: Node) -> str:
    assert node.proc is not None
    return node.proc.log_text()


def test_the_senders_first_proposed_transfer_syntax_wins_within_one_context(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Finding 5: dcmsend proposes the file's JPEG Lossless and the uncompressed syntaxes in one presentation
    context; the node took Explicit VR Little Endian (first in its own list) and dcmsend decompressed."""
    node = start_node()
    jpeg = Path(shutil.copy(str(get_testdata_file("JPEG-LL.dcm")), tmp_path / "jpeg-ll.dcm"))
    sent = pydicom.dcmread(jpeg)
    assert sent.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    done = subprocess.run(
        [require("dcmsend"), "-d", "-aet", "DCMSEND", "-aec", "URONODE", "127.0.0.1", str(node.dicom_port), str(jpeg)],
        capture_output=True, text=True, env=DCMTK_ENV, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    proposal = done.stdout + done.stderr
    assert "Proposed Transfer Syntax(es):" in proposal and "=LittleEndianExplicit" in proposal  # several in one
    (row,) = query(node.data_dir, "SELECT transfer_syntax_uid FROM instances WHERE sop_instance_uid = ?",
                   str(sent.SOPInstanceUID))
    assert row["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.70"  # kept compressed, as sent


def test_a_requestor_that_prefers_uncompressed_gets_uncompressed(start_node: StartNode) -> None:
    """The sender's order decides, not a preference for compression: uncompressed first, uncompressed taken."""
    node = start_node()
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="URONODE")
    try:
        assert assoc.is_established
        (context,) = assoc.accepted_contexts
        assert context.transfer_syntax[0] == "1.2.840.10008.1.2"
    finally:
        assoc.release()


def associate_rq(called: str, calling: str, abstract: str, transfer: str) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) with one presentation context, written out byte by byte."""

    def item(kind: int, value: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(value)) + value

    context = item(0x20, b"\x01\x00\x00\x00" + item(0x30, abstract.encode()) + item(0x40, transfer.encode()))
    user = item(0x50, item(0x51, struct.pack(">I", 0)) + item(0x52, b"1.2.3.4"))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1") + context + user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return 0, b""
        head += chunk
    kind, _, length = struct.unpack(">BBI", head)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return kind, body


def test_an_oversized_pdu_is_refused_with_one_log_line_and_its_body_is_not_read_as_pdus(
    start_node: StartNode,
) -> None:
    """Finding 6: after the refusal the reader took the rest of the PDU for PDU headers: 22 bogus ERROR lines."""
    node = start_node(URONODE_SCP__MAX_PDU_SIZE="8192")
    with socket.create_connection(("127.0.0.1", node.dicom_port), timeout=30) as sock:
        sock.sendall(associate_rq("URONODE", "BIGPDU", CTImageStorage, "1.2.840.10008.1.2.1"))
        kind, _ = read_pdu(sock)
        assert kind == 0x02  # A-ASSOCIATE-AC
        body = b"\x33" * 33724  # a data set's bytes: "3333..." would read as PDU type 0x33, again and again
        sock.sendall(b"\x04\x00" + struct.pack(">I", len(body)) + body)
        kind, _ = read_pdu(sock)
        assert kind == 0x07  # A-ABORT
        assert read_pdu(sock) == (0, b"")  # then the node closed the connection: nothing more was read
    assert echoscu(node.dicom_port).returncode == 0  # and the node still serves
    errors = [line for line in log_of(node).splitlines() if " ERROR " in line]
    assert errors and len(errors) == 1, errors
    assert errors[0].endswith("PDU of 33724 bytes announced, over the 8256-byte limit from BIGPDU@127.0.0.1:"
                              " association aborted")


def test_refusals_and_replacements_are_logged_naming_the_peer(start_node: StartNode, tmp_path: Path) -> None:
    """Finding 8: a wrong called AE title, refused presentation contexts (C-FIND here) and a replaced instance
    left no line in the node's log."""
    node = start_node()
    wrong = echoscu(node.dicom_port, called="SOMEONEELSE", calling="LOST")
    assert wrong.returncode != 0
    find = subprocess.run(
        [require("findscu"), "-aet", "FINDER", "-aec", "URONODE", "-S", "-k", "QueryRetrieveLevel=STUDY",
         "127.0.0.1", str(node.dicom_port)],
        capture_output=True, text=True, env=DCMTK_ENV, timeout=60,
    )
    assert find.returncode != 0  # no presentation context accepted
    _, _, (first,) = write_series(tmp_path / "a", 1, size=32)
    assert storescu(node.dicom_port, [first], calling="MODALITY").returncode == 0
    changed = pydicom.dcmread(first)
    changed.SeriesDescription = "Corrected"
    changed.save_as(tmp_path / "changed.dcm")
    assert storescu(node.dicom_port, [tmp_path / "changed.dcm"], calling="MODALITY").returncode == 0
    wait_until(lambda: "FINDER@127.0.0.1: presentation contexts refused" in log_of(node), 20, "the refusal's log line")
    log = log_of(node)
    assert "association from LOST at 127.0.0.1 rejected: called AE title 'SOMEONEELSE' is not ours (URONODE)" in log
    refused = next(line for line in log.splitlines() if "FINDER@127.0.0.1: presentation contexts refused" in line)
    assert "abstract syntax not supported: 1.2.840.10008.5.1.4.1.2.2.1 (Study Root Query/Retrieve" in refused
    assert (f"instance {changed.SOPInstanceUID} from MODALITY@127.0.0.1: other bytes under a SOP Instance UID"
            " already stored; replaced") in log


def test_an_aborted_association_does_not_complete_its_partial_series(start_node: StartNode) -> None:
    """Finding 7: a sender killed mid-series had its fragment completed (and a job queued) after the grace
    period, as after a release. Now the fragment waits for the quiet period; the sender sends it all again."""
    node = start_node(URONODE_SCP__COMPLETION_GRACE_S="0.5", URONODE_SCP__COMPLETION_QUIET_S="600")
    study, series = uid("abort-study"), uid("abort-series")
    ae = AE(ae_title="KILLED")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    slices = [ct_slice(study, series, i, size=32) for i in range(8)]
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="URONODE")
    for ds in slices[:3]:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.abort()  # the sender dies mid-series
    # aborted, or closed when the connection's end is handled before the abort: either way, not released
    wait_until(lambda: [r["outcome"] for r in query(node.data_dir, "SELECT outcome FROM associations")]
               in (["aborted"], ["closed"]), 20, "the association to end without a release")
    # Another series, sent and released after that, completes after the grace period. The completion loop
    # looks at every series in one round, so the fragment, ended earlier, would have completed by then too.
    other_study, other = uid("abort-other-study"), uid("abort-other")
    later = ae.associate("127.0.0.1", node.dicom_port, ae_title="URONODE")
    assert later.send_c_store(ct_slice(other_study, other, 0, size=32)).Status == 0x0000
    later.release()
    wait_until(lambda: query(node.data_dir, "SELECT state FROM series WHERE series_instance_uid = ?", other)[0]["state"]
               == "complete", 60, "the released series to complete")  # 20 s was once too short on a loaded CI
    (row,) = query(node.data_dir, "SELECT state FROM series WHERE series_instance_uid = ?", series)
    assert row["state"] == "receiving"
    assert query(node.data_dir, "SELECT id FROM jobs WHERE series_instance_uid = ?", series) == []
    # the sender comes back and sends the whole series: one job, of all of it
    again = ae.associate("127.0.0.1", node.dicom_port, ae_title="URONODE")
    for ds in slices:
        assert again.send_c_store(ds).Status == 0x0000
    again.release()
    wait_until(lambda: query(node.data_dir, "SELECT state FROM series WHERE series_instance_uid = ?", series)[0]["state"]
               == "complete", 60, "the whole series to complete")
    jobs = query(node.data_dir, "SELECT id FROM jobs WHERE series_instance_uid = ?", series)
    assert len(jobs) == 1
    assert len(query(node.data_dir, "SELECT 1 FROM instances WHERE series_instance_uid = ?", series)) == 8
