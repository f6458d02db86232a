"""Bad uploads and broken STOW-RS bodies over HTTP: the status PS3.18 (or the API) gives, a reason, the node goes on.

The upload page posts to ``/api/predict``; STOW-RS bodies are multipart/related
with ``application/dicom`` parts. Good parts come from dicomweb-client or are
files as any client sends them; the broken ones are written by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import CTImageStorage, MRImageStorage

from tests.conftest import FAST_COMPLETION, query
from tests.factory import ct_slice, uid
from tests.peers.processes import Node
from tests.robustness.senders import encode, running_node, still_serves
from uronode.dicomfile import encode_file_meta

STOW_TYPE = 'multipart/related; type="application/dicom"; boundary={boundary}'
CANNOT_UNDERSTAND, DOES_NOT_MATCH, WARNING_DOES_NOT_MATCH = 0xC000, 0xA900, 0xB007


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from running_node(tmp_path_factory.mktemp("bad-http"), dict(FAST_COMPLETION))


def url(node: Node, path: str) -> str:
    return f"http://127.0.0.1:{node.http_port}{path}"


def dicom_file(
    index: int, *, series: str = "http-series", sop_class: str = CTImageStorage, modality: str = "CT"
) -> tuple[str, bytes]:
    """(SOP Instance UID, a DICOM file's bytes) of a small CT slice."""
    ds = ct_slice(uid("http-study"), uid(series), index, size=16, sop_class=sop_class, modality=modality)
    return ds.SOPInstanceUID, encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1") + encode(ds)


def is_stored(node: Node, sop_instance_uid: str) -> bool:
    return bool(query(node.data_dir, "SELECT 1 FROM instances WHERE sop_instance_uid = ?", sop_instance_uid))


def predict(node: Node, *files: tuple[str, bytes]) -> httpx.Response:
    return httpx.post(url(node, "/api/predict"), files=[("files", (name, data, "application/dicom")) for name, data in files],
                      timeout=60)


# -- /api/predict (the upload page's endpoint) ----------------------------------------------------


def test_uploads_that_hold_no_dicom_are_400_with_a_reason_per_file(node: Node, tmp_path: Path) -> None:
    sop, whole = dicom_file(0)
    response = predict(node, ("empty.dcm", b""), ("notes.txt", b"hello, not DICOM"),
                       ("cut.dcm", whole[:-100]), ("png.dcm", b"\x89PNG\r\n\x1a\n" + bytes(200)))
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail["message"] == "no DICOM file among the upload"
    assert detail["rejected"] == [
        {"file": "empty.dcm", "reason": "an empty file (0 bytes)"},
        {"file": "notes.txt", "reason": "not a DICOM file (no DICM prefix)"},
        {"file": "cut.dcm", "reason": "the value of (7FE0,0010) needs 512 bytes but 412 are left: the data set is truncated"},
        {"file": "png.dcm", "reason": "a picture (PNG), not a DICOM file: the node reads DICOM images; export the"
                                      " image as DICOM from the PACS or the viewer"},
    ]
    assert not is_stored(node, sop)
    still_serves(node, tmp_path)


def test_an_upload_mixing_good_and_bad_files_stores_the_good_ones(node: Node, tmp_path: Path) -> None:
    good = [dicom_file(i, series="mixed-upload") for i in (1, 2)]
    tail_sop, long_file = dicom_file(3, series="mixed-upload")
    response = predict(node, ("a.dcm", good[0][1]), ("junk.bin", b"\x00" * 10), ("b.dcm", good[1][1]),
                       ("tail.dcm", long_file + bytes(8)))  # 8 stray bytes after the pixel data
    assert response.status_code == 200, response.text
    body = response.json()
    (series,) = body["series"]
    assert series["series_instance_uid"] == uid("mixed-upload") and series["job_id"] is not None
    assert body["rejected"] == [
        {"file": "junk.bin", "reason": "not a DICOM file (no DICM prefix)"},
        {"file": "tail.dcm", "reason": "element (0000,0000) has an unknown VR b'\\x00\\x00'"},
    ]
    assert all(is_stored(node, sop) for sop, _ in good) and not is_stored(node, tail_sop)
    job = httpx.get(url(node, f"/api/jobs/{series['job_id']}"), timeout=30).json()
    assert job["state"] == "queued"  # this node has no worker: the job waits for one
    still_serves(node, tmp_path)


def test_a_non_ct_upload_is_skipped_with_its_reason(node: Node, tmp_path: Path) -> None:
    _, mr = dicom_file(0, series="mr-upload", modality="MR", sop_class=MRImageStorage)
    response = predict(node, ("mr.dcm", mr))
    assert response.status_code == 200, response.text
    (series,) = response.json()["series"]
    assert series["job_id"] is None and series["skipped"] == "modality MR, not CT"


def test_a_broken_upload_request(node: Node, tmp_path: Path) -> None:
    no_files = httpx.post(url(node, "/api/predict"), timeout=30)
    assert no_files.status_code == 422 and no_files.json()["detail"][0]["loc"] == ["body", "files"]
    no_boundary = httpx.post(url(node, "/api/predict"), content=b"--x\r\n", timeout=30,
                             headers={"Content-Type": "multipart/form-data"})
    assert no_boundary.status_code == 400 and "boundary" in no_boundary.json()["detail"].lower()
    raw = httpx.post(url(node, "/api/predict"), content=dicom_file(0)[1], timeout=30,
                     headers={"Content-Type": "application/dicom"})
    assert raw.status_code == 422
    assert httpx.get(url(node, "/upload"), timeout=30).status_code == 200  # the page itself
    still_serves(node, tmp_path)


def form(*fields: tuple[str, str | None, bytes], boundary: str = "f0rm") -> bytes:
    """A multipart/form-data body written by hand: (field name, file name or None, content) each."""
    body = b""
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def post_form(node: Node, body: bytes, boundary: str = "f0rm") -> httpx.Response:
    return httpx.post(url(node, "/api/predict"), content=body, timeout=60,
                      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


def test_upload_forms_written_by_hand(node: Node, tmp_path: Path) -> None:
    sop, data = dicom_file(40, series="form-upload")
    truncated = post_form(node, form(("files", "a.dcm", data))[:-50])
    assert truncated.status_code == 400
    assert truncated.json()["detail"] == "the body ends without its closing boundary: it is truncated"
    not_a_file = post_form(node, form(("files", None, data)))
    assert not_a_file.status_code == 422 and not_a_file.json()["detail"][0]["loc"] == ["body", "files", 0]
    no_files_field = post_form(node, form(("other", "a.dcm", data)))
    assert no_files_field.status_code == 422 and no_files_field.json()["detail"][0]["loc"] == ["body", "files"]
    assert not is_stored(node, sop)  # nothing of a refused form is kept
    response = post_form(node, form(("note", None, b"a field the API does not take"), ("files", "Röntgen.dcm", data)))
    assert response.status_code == 200, response.text
    assert response.json()["rejected"] == [] and is_stored(node, sop)
    still_serves(node, tmp_path)


# -- STOW-RS --------------------------------------------------------------------------------------


def multipart(*parts: tuple[str, bytes], boundary: str = "b0undary", close: bool = True) -> bytes:
    body = b"".join(f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n" for kind, data in parts)
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


def stow(node: Node, body: bytes, content_type: str = STOW_TYPE.format(boundary="b0undary"),
         path: str = "/dicom-web/studies") -> httpx.Response:
    return httpx.post(url(node, path), content=body, headers={"Content-Type": content_type,
                                                               "Accept": "application/dicom+json"}, timeout=60)


def failures(response: httpx.Response) -> list[int]:
    return [item["00081197"]["Value"][0] for item in response.json().get("00081198", {}).get("Value", [])]


def stored_refs(response: httpx.Response) -> list[str]:
    return [item["00081155"]["Value"][0] for item in response.json().get("00081199", {}).get("Value", [])]


@pytest.mark.parametrize(
    ("content_type", "body", "status", "reason"),
    [
        ('multipart/related; type="application/dicom"', multipart(("application/dicom", b"x")), 400,
         "the Content-Type names no boundary"),
        ("application/json", b"{}", 415, 'send multipart/related; type="application/dicom"'),
        ("application/dicom", dicom_file(0)[1], 415, 'send multipart/related; type="application/dicom"'),
        (STOW_TYPE.format(boundary="b0undary"), b"", 400,
         "the body holds no part with the boundary its Content-Type names"),
        (STOW_TYPE.format(boundary="other"), multipart(("application/dicom", dicom_file(4)[1])), 400,
         "the body holds no part with the boundary its Content-Type names"),
        (STOW_TYPE.format(boundary="b0undary"), multipart(("application/dicom", dicom_file(5)[1]))[:-300], 400,
         "the body ends without its closing boundary: it is truncated"),
        (STOW_TYPE.format(boundary="b0undary"), b"--b0undary\r\nContent-Type: application/dicom\r\n" + bytes(40)
         + b"\r\n--b0undary--\r\n", 400, "a part has no blank line after its headers"),
    ],
    ids=["no-boundary", "json", "bare-dicom", "empty-body", "wrong-boundary", "truncated-multipart", "no-part-headers-end"],
)
def test_stow_bodies_that_are_not_well_formed(
    node: Node, tmp_path: Path, content_type: str, body: bytes, status: int, reason: str
) -> None:
    response = stow(node, body, content_type)
    assert (response.status_code, response.json()["detail"]) == (status, reason)
    for sop in (dicom_file(4)[0], dicom_file(5)[0]):
        assert not is_stored(node, sop)  # nothing of a refused body is kept
    still_serves(node, tmp_path)


def test_stow_of_parts_that_are_not_dicom_is_409(node: Node, tmp_path: Path) -> None:
    response = stow(node, multipart(("application/dicom", b"not dicom"), ("application/dicom", b""),
                                    ("text/plain", b"hello"), ("text/\x00\x01\x7f", b"control characters")))
    assert response.status_code == 409
    assert failures(response) == [CANNOT_UNDERSTAND] * 4
    warning = response.headers["Warning"]
    assert warning.startswith('299 uronode "part 1: not a DICOM data set')
    assert '299 uronode "part 2: not a DICOM data set' in warning
    assert '299 uronode "part 3: text/plain, not application/dicom"' in warning
    assert '299 uronode "part 4: text/???, not application/dicom"' in warning  # a header value cannot hold them
    still_serves(node, tmp_path)


def test_stow_of_good_and_bad_parts_stores_the_good_and_names_the_bad(node: Node, tmp_path: Path) -> None:
    sops, files = zip(*(dicom_file(i, series="stow-mixed") for i in range(10, 16)), strict=True)
    bare = ct_slice(uid("http-study"), uid("stow-mixed"), 16, size=16)
    long_pixels = ct_slice(uid("http-study"), uid("stow-mixed"), 17, size=16)
    long_pixels.PixelData += bytes(32)
    response = stow(node, multipart(
        ("application/dicom", files[0]),                 # 1: good
        ("application/dicom", files[1][:-200]),          # 2: a file cut short
        ("application/dicom", b"\x00" * 128 + b"DICM"),  # 3: a preamble and nothing else
        ("application/dicom", files[2]),                 # 4: good
        ("application/dicom", encode(bare)[:-100]),      # 5: a bare data set cut short
        ("application/dicom", encode(long_pixels)),      # 6: stored with a warning
        ("application/octet-stream", files[3]),          # 7: not declared DICOM
    ))
    assert response.status_code == 202, response.text
    assert stored_refs(response) == [sops[0], sops[2], long_pixels.SOPInstanceUID]
    assert failures(response) == [CANNOT_UNDERSTAND] * 4
    (warned,) = [item for item in response.json()["00081199"]["Value"] if "00081196" in item]
    assert warned["00081196"]["Value"] == [WARNING_DOES_NOT_MATCH]
    warning = response.headers["Warning"]
    for text in (
        '"part 2: the value of (7FE0,0010) needs 512 bytes but 312 are left: the data set is truncated"',
        '"part 3: the data set is empty"',
        '"part 5: the value of (7FE0,0010) needs 512 bytes but 412 are left: the data set is truncated"',
        '"part 6: stored with a warning: PixelData holds 544 bytes, 32 more than',
        '"part 7: application/octet-stream, not application/dicom"',
    ):
        assert text in warning, text
    assert [is_stored(node, sop) for sop in sops[:4]] == [True, False, True, False]
    assert not is_stored(node, bare.SOPInstanceUID)
    assert is_stored(node, long_pixels.SOPInstanceUID)
    still_serves(node, tmp_path)


def test_stow_into_another_study_is_409_and_a_good_client_still_stores(node: Node, tmp_path: Path) -> None:
    sop, data = dicom_file(20, series="stow-study")
    response = stow(node, multipart(("application/dicom", data)), path=f"/dicom-web/studies/{uid('not-this-study')}")
    assert response.status_code == 409 and failures(response) == [DOES_NOT_MATCH]
    assert "its Study Instance UID is not the study of the request" in response.headers["Warning"]
    assert not is_stored(node, sop)
    client = DICOMwebClient(url=url(node, "/dicom-web"))
    good = ct_slice(uid("http-study"), uid("stow-study"), 21, size=16)
    client.store_instances([good])  # raises on any status but 200
    assert is_stored(node, good.SOPInstanceUID)
    still_serves(node, tmp_path)


def test_a_stow_of_a_class_the_model_does_not_take_is_stored(node: Node) -> None:
    """Storage takes every class (MR here); only completion decides what the model gets."""
    sop, data = dicom_file(30, series="stow-mr", modality="MR", sop_class=MRImageStorage)
    response = stow(node, multipart(("application/dicom", data)))
    assert response.status_code == 200 and stored_refs(response) == [sop]
    (row,) = query(node.data_dir, "SELECT sop_class_uid FROM instances WHERE sop_instance_uid = ?", sop)
    assert row[0] == MRImageStorage
