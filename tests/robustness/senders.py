"""Peers that send bad input on purpose, and the check that the node still serves afterwards."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association

from tests.factory import SecondaryCaptureImageStorage, ct_slice, uid
from tests.peers.processes import Node, echoscu, free_port, storescu
from uronode.dicomfile import encode_file_meta


def running_node(folder: Path, env: dict[str, str]) -> Iterator[Node]:
    """A node for a whole test module (the bad inputs share it, and it must keep serving through them)."""
    started = Node(folder / "node", free_port(), free_port(), extra_env=env).start()
    yield started
    started.stop()


def encode(ds: Dataset, *, implicit: bool = False) -> bytes:
    """The data set's bytes (no preamble, no File Meta), little endian."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def as_file(folder: Path, name: str, sop_class: str, sop_instance: str, body: bytes,
            syntax: str = ExplicitVRLittleEndian) -> Path:
    """A file whose File Meta names these UIDs and whose data set is ``body`` exactly, however broken."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.dcm"
    path.write_bytes(encode_file_meta(sop_class, sop_instance, syntax) + body)
    return path


@contextlib.contextmanager
def raw_scu(node: Node, *contexts: str, syntax: str = ExplicitVRLittleEndian) -> Iterator[Association]:
    """A pynetdicom association that sends files' data sets byte for byte (no decoding, no checks)."""
    ae = AE(ae_title="BADSCU")
    for sop_class in contexts:
        ae.add_requested_context(sop_class, syntax)
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send_c_store(path) then streams the data set as it is in the file
    try:
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.ae_title)
        assert assoc.is_established
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


def still_serves(node: Node, folder: Path) -> None:
    """C-ECHO and a good C-STORE (DCMTK) succeed, HTTP /healthz answers: the node goes on."""
    assert node.proc is not None and node.proc.popen.poll() is None, "the node exited"
    assert echoscu(node.dicom_port).returncode == 0
    good = folder / "still-serves"
    good.mkdir(parents=True, exist_ok=True)
    # a Secondary Capture: stored like any instance, never a job (so it leaves the job queue alone)
    ds = ct_slice(uid("still-serves-study"), uid("still-serves", secrets.token_hex(8)), 0, size=16,
                  modality="OT", sop_class=SecondaryCaptureImageStorage)
    path = good / f"{ds.SeriesInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    sent = storescu(node.dicom_port, [path])
    assert sent.returncode == 0, sent.stdout + sent.stderr
    health = httpx.get(f"http://127.0.0.1:{node.http_port}/healthz", timeout=30)
    assert health.status_code == 200, health.text


def dcmtk_store(node: Node, path: Path) -> tuple[int, str]:
    """Send one file with DCMTK's storescu; return the response's DIMSE status and Error Comment (or "")."""
    sent = storescu(node.dicom_port, [path], extra=["-d"])
    statuses = re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", sent.stderr)
    assert statuses, f"storescu got no C-STORE response:\n{sent.stderr[-2000:]}"
    comments = re.findall(r"\(0000,0902\) LO \[(.*)\]", sent.stderr)
    return int(statuses[-1], 16), (comments[-1] if comments else "")
