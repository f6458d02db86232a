"""Malformed data sets over C-STORE: each gets its DIMSE status and a reason, nothing broken is kept, the node goes on.

Sent by DCMTK's storescu where it will send the file, and by pynetdicom sending
the data set byte for byte where DCMTK refuses to (a truncated file) or where
the request itself must lie (UIDs that differ from the data set's).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)

from tests.conftest import FAST_COMPLETION, query
from tests.factory import ct_slice, uid
from tests.peers.processes import Node, wait_until
from tests.robustness.senders import (
    as_file,
    dcmtk_store,
    encode,
    raw_scu,
    running_node,
    still_serves,
)

STUDY = uid("robustness", "study")
SERIES = uid("robustness", "series")
CANNOT_UNDERSTAND, DOES_NOT_MATCH, NOT_SUPPORTED, WARNING_DOES_NOT_MATCH = 0xC000, 0xA900, 0x0122, 0xB007
UNKNOWN_SOP_CLASS = "1.2.826.0.1.3680043.10.1431.99.1"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from running_node(tmp_path_factory.mktemp("bad-datasets"), dict(FAST_COMPLETION))


def a_slice(index: int, *, sop_class: str = CTImageStorage, modality: str = "CT") -> Dataset:
    return ct_slice(STUDY, SERIES, index, size=32, sop_class=sop_class, modality=modality)


def stored(node: Node, sop_instance_uid: str) -> list[Path]:
    """The instance's files in the store, after checking the index agrees."""
    files = list((node.data_dir / "instances").rglob(f"{sop_instance_uid}-*.dcm"))
    rows = query(node.data_dir, "SELECT count(*) AS n FROM instances WHERE sop_instance_uid = ?", sop_instance_uid)
    assert rows[0]["n"] == len(files), "index and files disagree"
    return files


def without(keyword: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        ds["PixelData"].VR = "OW"  # written without BitsAllocated to say which
        delattr(ds, keyword)

    return change


def short_pixels(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[:-200]


def bad_series_uid(ds: Dataset) -> None:
    ds.SeriesInstanceUID = "../../../etc"


def bad_study_uid(ds: Dataset) -> None:
    ds.StudyInstanceUID = "1.02.3"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (short_pixels, "PixelData holds 1848 bytes but Rows 32 x Columns 32 x 1 sample(s) x 1 frame(s) x 16 bits"),
        (without("Rows"), "the data set has PixelData but no Rows"),
        (without("BitsAllocated"), "the data set has PixelData but no BitsAllocated"),
        (without("SeriesInstanceUID"), "SeriesInstanceUID is missing"),
        (without("StudyInstanceUID"), "StudyInstanceUID is missing"),
        (bad_series_uid, "SeriesInstanceUID '../../../etc' is not a valid UID"),
        (bad_study_uid, "StudyInstanceUID '1.02.3' is not a valid UID"),
    ],
    ids=["pixel-data-too-short", "no-rows", "no-bits-allocated", "no-series-uid", "no-study-uid",
         "series-uid-a-path", "study-uid-leading-zero"],
)
def test_dcmtk_gets_cannot_understand_with_the_reason(
    node: Node, tmp_path: Path, change: Callable[[Dataset], None], reason: str
) -> None:
    ds = a_slice(1)
    change(ds)
    path = tmp_path / "bad.dcm"
    ds.save_as(path, enforce_file_format=True)
    status, comment = dcmtk_store(node, path)
    assert (status, comment) == (CANNOT_UNDERSTAND, reason[:64].rstrip())
    assert stored(node, ds.SOPInstanceUID) == []
    assert not list(node.data_dir.rglob("etc"))  # no path made of a UID that is not one
    still_serves(node, tmp_path)


@pytest.mark.parametrize(
    ("cut", "reason"),
    [
        (-700, "the value of (7FE0,0010) needs 2048 bytes but 1348 are left: the data set is truncated"),
        (300, "the data set ends inside an element header (byte 296): it is truncated"),
        (0, "the data set is empty"),
    ],
    ids=["in-the-pixel-data", "in-the-header", "empty"],
)
def test_a_truncated_data_set_is_not_understood(node: Node, tmp_path: Path, cut: int, reason: str) -> None:
    ds = a_slice(2)
    path = as_file(tmp_path, "truncated", CTImageStorage, ds.SOPInstanceUID, encode(ds)[:cut])
    with raw_scu(node, CTImageStorage) as assoc:
        response = assoc.send_c_store(path)
    assert response.Status == CANNOT_UNDERSTAND
    assert response.ErrorComment == reason[:64].rstrip()
    assert stored(node, ds.SOPInstanceUID) == []
    still_serves(node, tmp_path)


def encoded_as(ds: Dataset, syntax: str) -> bytes:
    if syntax == DeflatedExplicitVRLittleEndian:
        deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return deflate.compress(encode(ds)) + deflate.flush()
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = syntax != ExplicitVRBigEndian, syntax == ImplicitVRLittleEndian
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.mark.parametrize(
    ("offset", "syntax"),
    [(40, ImplicitVRLittleEndian), (50, ExplicitVRBigEndian), (60, DeflatedExplicitVRLittleEndian)],
    ids=["implicit", "big-endian", "deflated"],
)
def test_every_native_transfer_syntax_is_checked(node: Node, tmp_path: Path, offset: int, syntax: str) -> None:
    good, short, cut = a_slice(offset), a_slice(offset + 1), a_slice(offset + 2)
    short_pixels(short)
    with raw_scu(node, CTImageStorage, syntax=syntax) as assoc:
        responses = [
            assoc.send_c_store(as_file(tmp_path, name, CTImageStorage, ds.SOPInstanceUID, body, syntax))
            for name, ds, body in [
                ("good", good, encoded_as(good, syntax)),
                ("short", short, encoded_as(short, syntax)),
                ("cut", cut, encoded_as(cut, syntax)[:-700]),
            ]
        ]
    assert [r.Status for r in responses] == [0x0000, CANNOT_UNDERSTAND, CANNOT_UNDERSTAND]
    assert responses[1].ErrorComment.startswith("PixelData holds 1848 bytes but Rows 32 x Columns 32")
    assert responses[2].ErrorComment.startswith(
        "the deflated data set cannot be inflated" if syntax == DeflatedExplicitVRLittleEndian
        else "the value of (7FE0,0010) needs 2048 bytes but 1348 are left"
    )
    assert [len(stored(node, ds.SOPInstanceUID)) for ds in (good, short, cut)] == [1, 0, 0]


def test_a_data_set_without_its_sop_instance_uid(node: Node, tmp_path: Path) -> None:
    ds = a_slice(3)
    sop = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    with raw_scu(node, CTImageStorage) as assoc:
        response = assoc.send_c_store(as_file(tmp_path, "no-sop", CTImageStorage, sop, encode(ds)))
    assert (response.Status, response.ErrorComment) == (CANNOT_UNDERSTAND, "SOPInstanceUID is missing")
    assert stored(node, sop) == []
    still_serves(node, tmp_path)


def test_excess_pixel_data_is_stored_as_sent_with_a_warning(node: Node, tmp_path: Path) -> None:
    ds = a_slice(4)
    pixels = ds.PixelData
    ds.PixelData = pixels + bytes(64)
    path = tmp_path / "long.dcm"
    ds.save_as(path, enforce_file_format=True)
    status, comment = dcmtk_store(node, path)
    assert status == WARNING_DOES_NOT_MATCH
    assert comment == "PixelData holds 2112 bytes, 64 more than Rows 32 x Columns 32 x 1 sample(s)"[:64].rstrip()
    (kept,) = stored(node, ds.SOPInstanceUID)
    assert kept.read_bytes().endswith(ds.PixelData)
    # and it is served as the image it is: its frame without the excess, rendered
    base = f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{ds.SOPInstanceUID}"
    frame = httpx.get(f"{base}/frames/1", headers={"Accept": 'multipart/related; type="application/octet-stream"'},
                      timeout=30)
    assert frame.status_code == 200 and pixels + b"\r\n--" in frame.content
    assert httpx.get(f"{base}/rendered", headers={"Accept": "image/png"}, timeout=30).status_code == 200
    still_serves(node, tmp_path)


def test_zero_padding_after_the_last_element_is_stored_with_a_warning(node: Node, tmp_path: Path) -> None:
    ds = a_slice(9)
    body = encode(ds) + bytes(4)  # readers stop at the end of the last element; the padding is harmless
    with raw_scu(node, CTImageStorage) as assoc:
        response = assoc.send_c_store(as_file(tmp_path, "padded", CTImageStorage, ds.SOPInstanceUID, body))
    assert (response.Status, response.ErrorComment) == (WARNING_DOES_NOT_MATCH, "4 zero byte(s) after the last element")
    (kept,) = stored(node, ds.SOPInstanceUID)
    assert kept.read_bytes().endswith(body)
    with raw_scu(node, CTImageStorage) as assoc:  # but bytes that are not zero are the start of a cut element
        other = a_slice(10)
        body = encode(other)
        cut = assoc.send_c_store(as_file(tmp_path, "cut", CTImageStorage, other.SOPInstanceUID, body + b"\xe0\x7f"))
    assert cut.Status == CANNOT_UNDERSTAND
    assert cut.ErrorComment == f"the data set ends inside an element header (byte {len(body)}): it is truncated"[:64]
    assert stored(node, other.SOPInstanceUID) == []


def test_sop_uids_that_differ_from_the_request(node: Node, tmp_path: Path) -> None:
    mr = a_slice(5, sop_class=MRImageStorage, modality="MR")
    other = a_slice(6)
    with raw_scu(node, CTImageStorage) as assoc:
        # an MR data set sent as CT (request and context say CT)
        as_ct = assoc.send_c_store(as_file(tmp_path, "mr-as-ct", CTImageStorage, mr.SOPInstanceUID, encode(mr)))
        # the request names another SOP instance than the data set holds
        renamed = assoc.send_c_store(as_file(tmp_path, "renamed", CTImageStorage, uid("elsewhere"), encode(other)))
    assert (as_ct.Status, as_ct.ErrorComment) == (DOES_NOT_MATCH, "the data set's SOP Class UID differs from the request's")
    assert (renamed.Status, renamed.ErrorComment) == (DOES_NOT_MATCH, "the data set's SOP Instance UID differs from the request's")
    assert stored(node, mr.SOPInstanceUID) == [] and stored(node, other.SOPInstanceUID) == []
    assert stored(node, uid("elsewhere")) == []
    still_serves(node, tmp_path)


@pytest.mark.parametrize("sop_class", [MRImageStorage, UNKNOWN_SOP_CLASS], ids=["mr", "unknown"])
def test_a_request_for_another_sop_class_than_its_context(node: Node, tmp_path: Path, sop_class: str) -> None:
    ds = a_slice(7, sop_class=sop_class, modality="MR")
    with raw_scu(node, CTImageStorage) as assoc:
        (ct_context,) = assoc.accepted_contexts
        assoc._get_valid_context = lambda *args, **kwargs: ct_context  # type: ignore[method-assign]  # as if it were the CT context's
        response = assoc.send_c_store(as_file(tmp_path, "other-class", sop_class, ds.SOPInstanceUID, encode(ds)))
        assert assoc.is_established  # answered, not aborted
    assert response.Status == NOT_SUPPORTED
    assert response.ErrorComment == "SOP class differs from the presentation context's"
    assert stored(node, ds.SOPInstanceUID) == []
    still_serves(node, tmp_path)


def test_an_unknown_sop_class_is_refused_at_association(node: Node, tmp_path: Path) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="BADSCU")
    ae.add_requested_context(UNKNOWN_SOP_CLASS)
    alone = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.ae_title)
    assert [(cx.abstract_syntax, cx.result) for cx in alone.rejected_contexts] == [(UNKNOWN_SOP_CLASS, 0x03)]
    assert alone.is_aborted and not alone.is_established  # A-ASSOCIATE-AC, nothing accepted: the requestor gives up
    ae.add_requested_context(CTImageStorage)
    mixed = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.ae_title)
    try:
        assert mixed.is_established
        assert [cx.result for cx in mixed.rejected_contexts] == [0x03]  # abstract syntax not supported
        assert [cx.abstract_syntax for cx in mixed.accepted_contexts] == [CTImageStorage]
        with pytest.raises(ValueError, match="No presentation context"):
            mixed.send_c_store(a_slice(8, sop_class=UNKNOWN_SOP_CLASS))
    finally:
        mixed.release()
    still_serves(node, tmp_path)


def qido_study(node: Node, study: str) -> dict[str, Any]:
    response = httpx.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies", params={"StudyInstanceUID": study},
                         timeout=30)
    assert response.status_code == 200, response.text
    (found,) = response.json()
    assert isinstance(found, dict)
    return found


@pytest.mark.parametrize(
    ("charsets", "patient_name", "raw_name", "indexed"),
    [
        ("ISO_IR 999", None, b"Jos\xe9^M\xfcller", "José^Müller"),  # unknown: read as Latin-1
        ("ISO_IR 192", None, b"Jos\xe9^M\xfcller", "Jos\ufffd^M\ufffdller"),  # not UTF-8 after all
        ("ISO_IR 100", None, b"Jos\xc3\xa9^Smith", "JosÃ©^Smith"),  # UTF-8 declared as Latin-1
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎", None, "山田^太郎"),  # code extensions
        ("GB18030", "Wang^XiaoDong=王^小东", None, "王^小东"),
    ],
    ids=["unknown", "bad-utf8", "utf8-as-latin1", "iso2022-japanese", "gb18030"],
)
def test_character_sets_are_stored_as_they_came(
    node: Node, tmp_path: Path, charsets: object, patient_name: str | None, raw_name: bytes | None, indexed: str
) -> None:
    study = uid("charset", charsets, indexed)
    ds = ct_slice(study, uid("charset-series", study), 0, size=16)
    ds.SpecificCharacterSet = charsets
    if patient_name is not None:
        ds.PatientName = patient_name
    body = encode(ds)
    if raw_name is not None:  # bytes no encoder would write
        body = body.replace(b"Synthetic^Patient ", raw_name.ljust(18, b" "))
    with raw_scu(node, CTImageStorage) as assoc:  # DCMTK would re-encode the text
        response = assoc.send_c_store(as_file(tmp_path, "charset", CTImageStorage, ds.SOPInstanceUID, body))
    assert response.Status == 0x0000
    (kept,) = stored(node, ds.SOPInstanceUID)
    assert kept.read_bytes().endswith(body)  # the data set's bytes exactly as sent
    name = qido_study(node, study)["00100010"]["Value"][0]
    assert indexed in "=".join(name.values())
    metadata = httpx.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{study}/metadata", timeout=30)
    assert metadata.status_code == 200, metadata.text
    still_serves(node, tmp_path)


def test_a_c_store_request_without_a_data_set_is_answered(node: Node, tmp_path: Path) -> None:
    """Command Data Set Type 0101 (no data set) on a C-STORE: answered at once, not left to the sender's timeout."""
    from pynetdicom.dimse_primitives import C_STORE

    with raw_scu(node, CTImageStorage) as assoc:
        assoc.dimse_timeout = 10  # without an answer, the test fails in 10 s rather than hangs
        (context,) = assoc.accepted_contexts
        request = C_STORE()
        request.MessageID, request.Priority = 9, 2
        request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = CTImageStorage, uid("no-data-set")
        assoc._reactor_checkpoint.clear()  # as send_c_store does: the reactor must not take the response
        try:
            assert context.context_id is not None
            assoc.dimse.send_msg(request, context.context_id)
            _, response = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        assert response is not None, "no C-STORE-RSP"
        assert (response.Status, response.ErrorComment) == (CANNOT_UNDERSTAND, "the data set is empty")
        assert assoc.is_established
    still_serves(node, tmp_path)


def test_a_data_set_cut_off_by_an_abort_leaves_nothing(node: Node, tmp_path: Path) -> None:
    """The sender aborts after part of the data set's fragments: nothing is stored, nothing is left open."""
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    ds = a_slice(70)
    with raw_scu(node, CTImageStorage) as assoc:
        (context,) = assoc.accepted_contexts
        request = C_STORE()
        request.MessageID, request.Priority = 1, 2
        request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = CTImageStorage, ds.SOPInstanceUID
        request.DataSet = BytesIO(encode(ds))
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        assert context.context_id is not None
        fragments = list(message.encode_msg(context.context_id, 512))
        assert len(fragments) > 3
        for fragment in fragments[: len(fragments) // 2]:
            assoc.dul.send_pdu(fragment)
        assoc.abort()
    wait_until(lambda: not query(node.data_dir, "SELECT 1 FROM associations WHERE ended_at IS NULL"),
               20, "every association to be closed")
    assert stored(node, ds.SOPInstanceUID) == []
    still_serves(node, tmp_path)


def series_uid_as_ul(body: bytes, junk: bytes) -> bytes:
    """The data set with the VR of its SeriesInstanceUID made UL: ``junk`` replaces the VR's I (and what follows)."""
    at = body.index(b"\x20\x00\x0e\x00UI") + 5
    return body[:at] + junk + body[at + len(junk) :]


@pytest.mark.parametrize(
    ("junk", "index"),
    [(b"L\x01", 80), (b"L", 82)],
    ids=["one-byte", "whole-values"],  # as fuzzing found (pydicom raised); 44 bytes, 11 values (it was stored)
)
def test_a_uid_in_a_numeric_vr_is_not_understood_and_the_association_goes_on(
    node: Node, tmp_path: Path, junk: bytes, index: int
) -> None:
    bad, good = a_slice(index), a_slice(index + 1)
    body = series_uid_as_ul(encode(bad), junk)
    with raw_scu(node, CTImageStorage) as assoc:
        refused = assoc.send_c_store(as_file(tmp_path, "uid-as-ul", CTImageStorage, bad.SOPInstanceUID, body))
        assert assoc.is_established  # answered, not aborted
        accepted = assoc.send_c_store(as_file(tmp_path, "good", CTImageStorage, good.SOPInstanceUID, encode(good)))
    assert (refused.Status, refused.ErrorComment) == (CANNOT_UNDERSTAND, "SeriesInstanceUID has VR UL, not UI")
    assert accepted.Status == 0x0000
    assert stored(node, bad.SOPInstanceUID) == []
    assert len(stored(node, good.SOPInstanceUID)) == 1
    still_serves(node, tmp_path)
