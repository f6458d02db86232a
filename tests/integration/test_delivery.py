"""Sending results: the C-STORE SCU and the outbox against real peers (storescp, Orthanc, the node)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from scp.sender import Outgoing, Timeouts, store_files
from tests.factory import pydicom_test_file, write_series
from tests.peers.processes import (
    Node,
    Proc,
    free_port,
    start_orthanc,
    start_storescp,
    wait_until,
)
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
    assert results[0].status == 0xA700 and "0xA700 (out of resources: its disk or memory?)" in (results[0].reason or "")


def test_no_peer_means_every_file_failed_with_the_reason(tmp_path: Path) -> None:
    _, _, files = write_series(tmp_path / "ct", 2, size=32)
    results = store_files(outgoing(files), host="127.0.0.1", port=free_port(), called_ae="NOBODY",
                          timeouts=Timeouts(connect_s=5))
    assert [r.ok for r in results] == [False, False]
    assert (results[0].reason or "").startswith("cannot connect to NOBODY at 127.0.0.1:")


def test_a_stow_rs_destination_with_a_query_gets_it_after_studies_and_reasons_leave_its_token_out(
    tmp_path: Path,
) -> None:
    """Review 52: ``/studies`` was added after the whole URL, so ``...?access_token=t`` posted to
    ``/dicom-web?access_token=t/studies``; and the token went into each delivery's reason, which ``uronode jobs``
    and the log show."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from dicomweb.stow_client import stow

    asked: list[str] = []

    class Refusing(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            asked.append(self.path)
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _, _, files = write_series(tmp_path / "ct", 1, size=32)
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web/?access_token=tok-123&region=eu#part"
        (result,) = stow(url, [(files[0], "1.2.3")], timeout_s=10)
    finally:
        server.shutdown()
        server.server_close()
    assert asked == ["/dicom-web/studies?access_token=tok-123&region=eu"]
    assert not result.ok and result.reason == (
        f"STOW-RS to {url.replace('tok-123', '...')} answered HTTP 400"), result.reason


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
    assert "cannot connect to ORTHANC" in (outbox.list()[0].last_error or "")
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


def test_a_stow_rs_destination_that_never_answers_times_out_after_the_setting(tmp_path: Path) -> None:
    """Review 21: a STOW-RS destination had a fixed 60 s that no setting changed; it waits
    ``delivery.dimse_timeout_s`` for the answer to its body, as a C-STORE waits for its response."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    held: list[socket.socket] = []

    def accept_and_hold() -> None:  # reads the request, never answers
        try:
            while True:
                connection, _ = server.accept()
                held.append(connection)
        except OSError:
            return

    threading.Thread(target=accept_and_hold, daemon=True).start()
    settings = DeliverySettings.model_validate(
        {"destinations": [{"name": "web", "kind": "dicomweb", "url": f"http://127.0.0.1:{port}/dicom-web"}],
         "dimse_timeout_s": 1})
    outbox = Outbox(Store(tmp_path / "node"))
    _, _, files = write_series(tmp_path / "results", 1, size=32)
    owe_files(outbox, "web", files)
    done: list[dict[str, int]] = []
    try:
        runner = threading.Thread(target=lambda: done.append(Deliverer(outbox, settings, "URONODE").run_once()),
                                  daemon=True)
        runner.start()
        runner.join(30)  # far beyond the setting, far below the fixed 60 s it replaced
        assert done == [{"delivered": 0, "failed": 1}]
    finally:
        server.close()
        for connection in held:
            connection.close()
    (row,) = outbox.list()
    assert row.state is DeliveryState.PENDING  # tried again later
    assert "timed out" in (row.last_error or ""), row.last_error


# probe9 findings 2, 3 and 10: what the SCU says when a destination refuses, hangs or is slow, and its message IDs

CT_AND_SC_ONLY = """\
# storescp profile: accepts only CT Image Storage and Secondary Capture (no SEG, SR, KO), as some archives
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = OppositeEndianExplicit
TransferSyntax3 = LittleEndianImplicit
[[PresentationContexts]]
[CTSC]
PresentationContext1 = CTImageStorage\\Uncompressed
PresentationContext2 = SecondaryCaptureImageStorage\\Uncompressed
PresentationContext3 = VerificationSOPClass\\Uncompressed
[[Profiles]]
[CTSC]
PresentationContexts = CTSC
"""
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def start_dest(folder: Path, port: int, *options: str, ae: str = "DEST") -> Proc:
    """DCMTK storescp with options of the test's own (a presentation context profile, a sleep, verbose)."""
    return start_storescp(folder, port, ae, options=options)


def as_class(source: Path, target: Path, sop_class: str) -> Path:
    """A copy of ``source`` under another SOP class and a new SOP Instance UID (storescp does not look inside)."""
    ds = pydicom.dcmread(source)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID(sop_class)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(target)
    return target


def test_a_refused_sop_class_is_named_with_the_setting_on_every_try(tmp_path: Path) -> None:
    """Finding 2: once only refused classes were left (or an SR alone, a job without stones), pynetdicom aborted
    the association and the reason said the destination was unreachable."""
    profile = tmp_path / "ctsc.cfg"
    profile.write_text(CT_AND_SC_ONLY)
    port = free_port()
    scp = start_dest(tmp_path / "received", port, "-xf", str(profile), "CTSC")
    try:
        _, _, (ct,) = write_series(tmp_path / "ct", 1, size=32)
        seg, sc, sr = (as_class(ct, tmp_path / f"{name}.dcm", uid)
                       for name, uid in (("seg", SEG_CLASS), ("sc", SC_CLASS), ("sr", SR_CLASS)))
        first = store_files(outgoing([seg, sc]), host="127.0.0.1", port=port, called_ae="DEST")
        again = store_files(outgoing([seg]), host="127.0.0.1", port=port, called_ae="DEST")  # the retry
        alone = store_files(outgoing([sr]), host="127.0.0.1", port=port, called_ae="DEST")  # no stone: SR only
    finally:
        scp.stop()
    assert [r.ok for r in first] == [False, True]
    for result, sop_class in ((first[0], SEG_CLASS), (again[0], SEG_CLASS), (alone[0], SR_CLASS)):
        assert not result.ok and result.reason is not None
        assert result.reason.startswith(f"DEST at 127.0.0.1:{port} accepts no context for SOP class {sop_class}: ")
        assert 'set its results, e.g. ["sc", "sr"]' in result.reason
        assert result.permanent  # abstract syntax not supported: trying again cannot help
    assert not first[1].permanent


def test_a_sop_class_the_destination_does_not_support_is_a_dead_letter_at_once(tmp_path: Path) -> None:
    """Probe 24: a SOP class the destination never accepts was tried again for a day (delivery.retry_for_s);
    it is a dead letter at its first refusal, with the reason, for `uronode retry` once that changes."""
    profile = tmp_path / "ctsc.cfg"
    profile.write_text(CT_AND_SC_ONLY)
    port = free_port()
    scp = start_dest(tmp_path / "received", port, "-xf", str(profile), "CTSC")
    settings = DeliverySettings.model_validate(
        {"destinations": [{"name": "pacs", "kind": "dicom", "ae_title": "DEST", "host": "127.0.0.1", "port": port}]})
    outbox = Outbox(Store(tmp_path / "node"))
    try:
        _, _, (ct,) = write_series(tmp_path / "ct", 1, size=32)
        seg, sc = (as_class(ct, tmp_path / f"{name}.dcm", uid) for name, uid in (("seg", SEG_CLASS), ("sc", SC_CLASS)))
        owe_files(outbox, "pacs", [seg, sc])
        assert Deliverer(outbox, settings, "URONODE").run_once() == {"delivered": 1, "failed": 1}
    finally:
        scp.stop()
    states = {row.sop_class_uid: (row.state, row.attempts, row.last_error or "") for row in outbox.list()}
    assert states[SC_CLASS][:2] == (DeliveryState.DELIVERED, 1)
    state, attempts, reason = states[SEG_CLASS]
    assert (state, attempts) == (DeliveryState.DEAD, 1)
    assert "abstract syntax not supported" in reason and reason.endswith(
        "(not tried again: `uronode retry` once the destination or its results change)")


def test_a_peer_that_never_answers_the_association_request_is_named_as_such(tmp_path: Path) -> None:
    """Finding 3 (and 8): an ACSE timeout read "no association ... (refused, aborted or timed out)"."""
    import socket

    _, _, files = write_series(tmp_path / "ct", 1, size=32)
    with socket.socket() as tarpit:  # the kernel accepts the connection; nobody ever answers on it
        tarpit.bind(("127.0.0.1", 0))
        tarpit.listen(4)
        port = tarpit.getsockname()[1]
        (result,) = store_files(outgoing(files), host="127.0.0.1", port=port, called_ae="TARPIT",
                                timeouts=Timeouts(acse_s=1))
    assert result.reason == (f"no answer from TARPIT at 127.0.0.1:{port} to the association request within 1 s"
                             " (delivery.acse_timeout_s)")


def owe_files(outbox: Outbox, destination: str, files: list[Path], job_id: int = 1) -> None:
    with outbox.store.transaction() as conn:
        for item in outgoing(files):
            outbox.enqueue_in(conn, destination=destination, sop_instance_uid=item.sop_instance_uid,
                              sop_class_uid=item.sop_class_uid, path=item.path, job_id=job_id)


def test_the_dimse_timeout_is_a_setting_and_its_expiry_says_so(tmp_path: Path) -> None:
    """Finding 3: the SCU's timeouts were a fixed 30 s; a slow archive's response was "no C-STORE response"."""
    port = free_port()
    scp = start_dest(tmp_path / "received", port, "--sleep-during", "3")  # answers each C-STORE after 3 s
    settings = DeliverySettings.model_validate(
        {"destinations": [{"name": "slow", "kind": "dicom", "ae_title": "DEST", "host": "127.0.0.1", "port": port}],
         "dimse_timeout_s": 1}
    )
    outbox = Outbox(Store(tmp_path / "node"))
    _, _, files = write_series(tmp_path / "results", 1, size=32)
    owe_files(outbox, "slow", files)
    try:
        assert Deliverer(outbox, settings, "URONODE").run_once() == {"delivered": 0, "failed": 1}
    finally:
        scp.stop()
    (row,) = outbox.list()
    assert row.state is DeliveryState.PENDING
    assert (row.last_error or "").startswith(
        f"timed out after 1 s waiting for the C-STORE response from DEST at 127.0.0.1:{port}")


def test_a_hung_destination_does_not_hold_back_the_others(tmp_path: Path) -> None:
    """Finding 3: destinations were served one after another, so one that hangs held back every other."""
    import socket
    import threading

    port = free_port()
    scp = start_storescp(tmp_path / "received", port)
    tarpit = socket.socket()
    tarpit.bind(("127.0.0.1", 0))
    tarpit.listen(4)
    hung: list[socket.socket] = []
    release = threading.Event()

    def hold() -> None:  # takes the connection and says nothing until the test lets go
        connection, _ = tarpit.accept()
        hung.append(connection)
        release.wait(60)
        connection.close()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    settings = DeliverySettings.model_validate(
        {"destinations": [
            {"name": "hung", "kind": "dicom", "ae_title": "TARPIT", "host": "127.0.0.1", "port": tarpit.getsockname()[1]},
            {"name": "pacs", "kind": "dicom", "ae_title": "STORESCP", "host": "127.0.0.1", "port": port}],
         "acse_timeout_s": 600}
    )
    outbox = Outbox(Store(tmp_path / "node"))
    _, _, files = write_series(tmp_path / "results", 1, size=32)
    owe_files(outbox, "hung", files)  # owed first: served first, one after another
    owe_files(outbox, "pacs", files)
    deliverer = Deliverer(outbox, settings, "URONODE")
    tallies: list[dict[str, int]] = []
    round_ = threading.Thread(target=lambda: tallies.append(deliverer.run_once()), daemon=True)
    round_.start()
    try:
        wait_until(lambda: outbox.counts().get("delivered") == 1, 30, "the other destination's delivery")
        assert round_.is_alive() and hung  # ... while the hung one still waits for its A-ASSOCIATE-AC
    finally:
        release.set()  # the tar-pit closes its connection: that try fails at once
        round_.join(60)
        tarpit.close()
        scp.stop()
    assert tallies == [{"delivered": 1, "failed": 1}]


def test_each_c_store_of_an_association_has_its_own_message_id(tmp_path: Path) -> None:
    """Finding 10: every C-STORE-RQ carried Message ID 1."""
    port = free_port()
    scp = start_dest(tmp_path / "received", port, "-v")
    try:
        _, _, files = write_series(tmp_path / "ct", 3, size=32)
        assert [r.ok for r in store_files(outgoing(files), host="127.0.0.1", port=port, called_ae="DEST")] == [True] * 3
    finally:
        scp.stop()
    log = scp.log_text()
    assert [f"MsgID {n}," in log for n in (1, 2, 3)] == [True] * 3, log


def test_a_file_no_longer_wanted_when_its_turn_comes_is_not_sent(tmp_path: Path) -> None:
    """Review 40: a result withdrawn after a patient's correction went out in a delivery round that had begun
    before it. Each file is asked for right before its C-STORE; one no longer wanted is withheld, not failed."""
    port = free_port()
    scp = start_dest(tmp_path / "received", port)
    try:
        _, _, files = write_series(tmp_path / "ct", 3, size=32)
        results = store_files(outgoing(files), host="127.0.0.1", port=port, called_ae="DEST",
                              still_wanted=lambda index: index != 1)
    finally:
        scp.stop()
    assert [(r.ok, r.withheld) for r in results] == [(True, False), (False, True), (True, False)]
    assert len(list((tmp_path / "received").rglob("*"))) == 2


def test_a_pacs_that_accepts_implicit_vr_alone_gets_each_result_re_encoded(tmp_path: Path) -> None:
    """Found by probing: the file's syntax was renamed Implicit VR without re-encoding, pynetdicom raised, and
    the raise ended every delivery round before any destination settled (no try counted, a traceback a second)."""
    port = free_port()
    scp = start_dest(tmp_path / "received", port, "+xi")  # DCMTK: accept Implicit VR Little Endian only
    try:
        _, _, files = write_series(tmp_path / "ct", 2, size=32)
        results = store_files(outgoing(files), host="127.0.0.1", port=port, called_ae="DEST")
    finally:
        scp.stop()
    assert [r.ok for r in results] == [True, True], [r.reason for r in results]
    received = sorted((tmp_path / "received").iterdir())
    assert len(received) == 2
    for path in received:
        got = pydicom.dcmread(path)
        sent = pydicom.dcmread(next(f for f in files if pydicom.dcmread(f).SOPInstanceUID == got.SOPInstanceUID))
        assert got.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
        np.testing.assert_array_equal(got.pixel_array, sent.pixel_array)


def test_a_fault_of_ours_with_one_destination_fails_its_deliveries_not_the_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The destination's boundary: whatever raises while one is served (here the C-STORE SCU, made to raise as
    pynetdicom did) is a failed try of its deliveries with the reason; the others are served and jobs settle."""
    import uronode.app.delivery as delivery

    port = free_port()
    scp = start_storescp(tmp_path / "received", port)
    real = delivery.store_files

    def broken_for_one(items: list[Outgoing], **kwargs: object) -> object:
        if kwargs["called_ae"] == "BROKEN":
            raise AttributeError("'dataset' is encoded as explicit VR little endian but the file meta says otherwise")
        return real(items, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(delivery, "store_files", broken_for_one)
    settings = DeliverySettings.model_validate(
        {"destinations": [
            {"name": "broken", "kind": "dicom", "ae_title": "BROKEN", "host": "127.0.0.1", "port": port},
            {"name": "pacs", "kind": "dicom", "ae_title": "STORESCP", "host": "127.0.0.1", "port": port}]})
    outbox = Outbox(Store(tmp_path / "node"))
    _, _, files = write_series(tmp_path / "results", 1, size=32)
    owe_files(outbox, "broken", files)
    owe_files(outbox, "pacs", files, job_id=2)
    with outbox.store.transaction() as conn:
        conn.execute("INSERT INTO jobs (id, study_instance_uid, series_instance_uid, series_generation, model, state,"
                     " created_at, updated_at) VALUES (2, '1', '2', 1, 'm', 'delivering', 0, 0)")
    try:
        for single in (False, True):  # destinations side by side, and one alone
            if single:
                with outbox.store.transaction() as conn:  # its backoff over
                    conn.execute("UPDATE deliveries SET next_attempt_at = 0")
                settings = settings.model_copy(update={"destinations": settings.destinations[:1]})
            assert Deliverer(outbox, settings, "URONODE").run_once()["failed"] == 1
    finally:
        scp.stop()
    broken = [d for d in outbox.list() if d.destination == "broken"]
    assert [(d.state, d.attempts) for d in broken] == [(DeliveryState.PENDING, 2)]
    assert (broken[0].last_error or "").startswith("internal error sending to broken: AttributeError: ")
    (pacs,) = [d for d in outbox.list() if d.destination == "pacs"]
    assert pacs.state is DeliveryState.DELIVERED
    assert outbox.store.conn().execute("SELECT state FROM jobs WHERE id = 2").fetchone()["state"] == "delivered"


def test_every_warning_status_is_a_delivery_and_a_failure_status_is_not(tmp_path: Path) -> None:
    """Probe 25: a peer answering 0001 (a warning, PS3.7 C.3: stored) got every result again on each retry and
    the job ended failed; only B000, B006 and B007 counted. No DCMTK peer answers a chosen status: this one is
    pynetdicom's storage SCP, on a real association."""
    from pynetdicom import AE, evt

    answers = iter([0x0001, 0xB123, 0xB000, 0xA700, 0x0107])
    ae = AE(ae_title="DEST")
    ae.add_supported_context(pydicom.uid.CTImageStorage, [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda event: next(answers))])
    assert server is not None
    try:
        _, _, files = write_series(tmp_path / "ct", 5, size=32)
        results = store_files(outgoing(files), host="127.0.0.1", port=port, called_ae="DEST")
    finally:
        server.shutdown()
    assert [(r.ok, r.status) for r in results] == [
        (True, 0x0001), (True, 0xB123), (True, 0xB000), (False, 0xA700), (True, 0x0107)]
    assert "0xA700" in (results[3].reason or "")


def test_each_instance_the_destination_stored_is_recorded_as_it_answers(tmp_path: Path) -> None:
    """Probe 24: a round's results were recorded when its association ended, so a stop or a crash during a slow
    round left every instance the PACS had already stored pending, and the next start sent them all again."""
    port = free_port()
    scp = start_dest(tmp_path / "received", port, "--sleep-during", "1")  # answers each C-STORE after 1 s
    settings = DeliverySettings.model_validate(
        {"destinations": [{"name": "slow", "kind": "dicom", "ae_title": "DEST", "host": "127.0.0.1", "port": port}]})
    outbox = Outbox(Store(tmp_path / "node"))
    _, _, files = write_series(tmp_path / "results", 4, size=32)
    owe_files(outbox, "slow", files)
    tallies: list[dict[str, int]] = []
    round_ = threading.Thread(target=lambda: tallies.append(Deliverer(outbox, settings, "URONODE").run_once()))
    round_.start()
    try:
        wait_until(lambda: outbox.counts().get("delivered", 0) >= 1, 30, "the first stored instance's record")
        assert round_.is_alive() and outbox.counts().get("pending", 0) >= 1  # ... while the round goes on
    finally:
        round_.join(60)
        scp.stop()
    assert tallies == [{"delivered": 4, "failed": 0}]
    assert [row.state for row in outbox.list()] == [DeliveryState.DELIVERED] * 4
    assert [row.attempts for row in outbox.list()] == [1] * 4  # recorded once each
