"""Sending results: the C-STORE SCU and the outbox against real peers (storescp, Orthanc, the node)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from scp.sender import Outgoing, store_files
from tests.factory import pydicom_test_file, write_series
from tests.peers.processes import Node, free_port, start_orthanc, start_storescp, wait_until
from uronode.app.delivery import Deliverer
from uronode.outbox import DeliveryState, Outbox
from uronode.settings import DeliverySettings
from uronode.store import Store


def outgoing(paths: list[Path]) -> list[Outgoing]:
    items = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        items.append(Outgoing(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return items


def test_storescp_gets_each_file_and_compressed_ones_decompressed_when_it_must(tmp_path: Path) -> None:
    port = free_port()
    scp = start_storescp(tmp_path / "received", port)  # storescp accepts uncompressed syntaxes only
    try:
        _, _, plain = write_series(tmp_path / "ct", 2, size=32)
        j2k = Path(shutil.copy(pydicom_test_file("693_J2KR.dcm"), tmp_path / "j2k.dcm"))
        results = store_files(outgoing([*plain, j2k]), host="127.0.0.1", port=port, called_ae="STORESCP")
    finally:
        scp.stop()
    assert [r.ok for r in results] == [True, True, True], results
    assert all(r.status == 0 for r in results)
    received = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in (tmp_path / "received").iterdir()}
    original = pydicom.dcmread(j2k)
    copy = received[original.SOPInstanceUID]
    assert not copy.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(copy.pixel_array, original.pixel_array)  # lossless all the way


def test_a_failure_status_is_a_failure_with_its_reason(start_node: Callable[..., Node], tmp_path: Path) -> None:
    node = start_node()
    _, _, files = write_series(tmp_path / "ct", 2, size=32)
    subprocess.run(["chattr", "+i", str(node.data_dir / "tmp")], check=True)
    try:
        results = store_files(outgoing(files), host="127.0.0.1", port=node.dicom_port, called_ae="URONODE")
    finally:
        subprocess.run(["chattr", "-i", str(node.data_dir / "tmp")], check=True)
    assert [r.ok for r in results] == [False, False]
    assert results[0].status == 0xA700 and "0xA700" in (results[0].reason or "")


def test_no_peer_means_every_file_failed_with_the_reason(tmp_path: Path) -> None:
    _, _, files = write_series(tmp_path / "ct", 2, size=32)
    results = store_files(outgoing(files), host="127.0.0.1", port=free_port(), called_ae="NOBODY", timeout_s=5)
    assert [r.ok for r in results] == [False, False]
    assert "no association" in (results[0].reason or "")


def orthanc_instances(http: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/statistics", timeout=10) as response:
        return int(json.load(response)["CountInstances"])


def test_orthanc_down_for_a_while_gets_everything_exactly_once(tmp_path: Path) -> None:
    http, dicom = free_port(), free_port()
    settings = DeliverySettings.model_validate(
        {"destinations": [{"name": "pacs", "kind": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom}],
         "backoff_s": 0.2, "backoff_max_s": 0.5, "max_attempts": 50}
    )
    outbox = Outbox(Store(tmp_path / "node"), max_attempts=50, backoff_s=0.2, backoff_max_s=0.5)
    deliverer = Deliverer(outbox, settings, calling_ae="URONODE")
    _, _, files = write_series(tmp_path / "results", 5, size=32)
    with outbox.store.transaction() as conn:
        for item in outgoing(files):
            outbox.enqueue_in(conn, destination="pacs", sop_instance_uid=item.sop_instance_uid,
                              sop_class_uid=item.sop_class_uid, path=item.path, job_id=7)
    assert deliverer.run_once() == {"delivered": 0, "failed": 5}  # Orthanc is not there yet
    assert outbox.counts() == {"pending": 5}
    assert "no association" in (outbox.list()[0].last_error or "")
    orthanc = start_orthanc(tmp_path / "orthanc", http_port=http, dicom_port=dicom)
    try:
        wait_until(lambda: deliverer.run_once()["delivered"] > 0 or outbox.counts() == {"delivered": 5}, 20, "delivery")
        wait_until(lambda: (deliverer.run_once(), outbox.counts())[1] == {"delivered": 5}, 20, "all delivered")
        assert orthanc_instances(http) == 5
        assert deliverer.run_once() == {"delivered": 0, "failed": 0}  # nothing owed any more
        # A re-run owes the same (deterministic) UIDs again: Orthanc still holds each once.
        with outbox.store.transaction() as conn:
            for item in outgoing(files):
                outbox.enqueue_in(conn, destination="pacs", sop_instance_uid=item.sop_instance_uid,
                                  sop_class_uid=item.sop_class_uid, path=item.path, job_id=8)
        assert deliverer.run_once() == {"delivered": 5, "failed": 0}
        assert orthanc_instances(http) == 5
        assert all(d.state is DeliveryState.DELIVERED for d in outbox.list())
    finally:
        orthanc.stop()


def test_unknown_sender_and_unconfigured_destination_fail_with_reasons(tmp_path: Path) -> None:
    settings = DeliverySettings.model_validate({"destinations": [{"name": "back", "kind": "sender"}], "max_attempts": 1})
    outbox = Outbox(Store(tmp_path / "node"), max_attempts=1)
    with outbox.store.transaction() as conn:
        outbox.enqueue_in(conn, destination="back", sop_instance_uid="1.2.3", sop_class_uid="1.2", path=tmp_path / "x.dcm", calling_ae="CT9")
        outbox.enqueue_in(conn, destination="gone", sop_instance_uid="1.2.4", sop_class_uid="1.2", path=tmp_path / "y.dcm")
    assert Deliverer(outbox, settings, "URONODE").run_once() == {"delivered": 0, "failed": 2}
    reasons = {d.destination: d.last_error for d in outbox.list(DeliveryState.DEAD)}
    assert "'CT9' is not in delivery.known_aes" in (reasons["back"] or "")
    assert "not configured" in (reasons["gone"] or "")


def test_stow_rs_to_orthanc_with_basic_auth(tmp_path: Path) -> None:
    http, dicom = free_port(), free_port()
    orthanc = start_orthanc(
        tmp_path / "orthanc", http_port=http, dicom_port=dicom,
        AuthenticationEnabled=True, RegisteredUsers={"uronode": "s3cret"},
    )
    try:
        url = f"http://127.0.0.1:{http}/dicom-web"
        _, _, files = write_series(tmp_path / "results", 3, size=32)
        pairs = [(o.path, o.sop_instance_uid) for o in outgoing(files)]

        from dicomweb.stow_client import stow

        refused = stow(url, pairs, username="uronode", password="wrong")
        assert [r.ok for r in refused] == [False] * 3 and "HTTP 401" in (refused[0].reason or "")
        garbage = tmp_path / "garbage.dcm"
        garbage.write_bytes(b"not a DICOM file at all")
        (bad,) = stow(url, [(garbage, "1.2.3.4.5")], username="uronode", password="s3cret")
        assert not bad.ok and bad.reason

        settings = DeliverySettings.model_validate(
            {"destinations": [{"name": "web", "kind": "dicomweb", "url": url, "username": "uronode", "password": "s3cret"}]}
        )
        outbox = Outbox(Store(tmp_path / "node"))
        with outbox.store.transaction() as conn:
            for item in outgoing(files):
                outbox.enqueue_in(conn, destination="web", sop_instance_uid=item.sop_instance_uid,
                                  sop_class_uid=item.sop_class_uid, path=item.path, job_id=1)
        assert Deliverer(outbox, settings, "URONODE").run_once() == {"delivered": 3, "failed": 0}
        request = urllib.request.Request(f"http://127.0.0.1:{http}/statistics")
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(b"uronode:s3cret").decode())
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["CountInstances"] == 3
    finally:
        orthanc.stop()
