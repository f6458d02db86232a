"""The node's DICOMweb read and written by a real client (dicomweb-client), plus the error cases."""

from __future__ import annotations

import io
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from requests.exceptions import HTTPError

from tests.conftest import query
from tests.factory import ct_slice, uid, write_series
from tests.peers.processes import Node, storescu, wait_until


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, str, str, list[Path]]]:
    from tests.conftest import FAST_COMPLETION
    from tests.peers.processes import free_port

    folder = tmp_path_factory.mktemp("dicomweb")
    node = Node(folder / "node", free_port(), free_port(), extra_env=dict(FAST_COMPLETION)).start()
    study, series, files = write_series(folder / "ct", 5, size=32)
    assert storescu(node.dicom_port, folder / "ct").returncode == 0
    yield node, study, series, files
    node.stop()


def client(node: Node) -> DICOMwebClient:
    return DICOMwebClient(url=f"http://127.0.0.1:{node.http_port}/dicom-web")


def test_search_for_studies_with_matching(loaded: tuple[Node, str, str, list[Path]]) -> None:
    node, study, _, _ = loaded
    web = client(node)
    (found,) = web.search_for_studies()
    assert found["0020000D"]["Value"] == [study]
    assert found["00100020"]["Value"] == ["SYN0001"]
    assert found["00100010"]["Value"] == [{"Alphabetic": "Synthetic^Patient"}]
    assert found["00080061"]["Value"] == ["CT"]
    assert found["00201208"]["Value"] == [5] and found["00201206"]["Value"] == [1]
    for filters, count in [
        ({"PatientName": "Synth*"}, 1), ({"PatientName": "Nobody*"}, 0), ({"PatientID": "SYN0001"}, 1),
        ({"StudyDate": "20250101-20261231"}, 1), ({"StudyDate": "20270101-"}, 0), ({"AccessionNumber": "ACC?001"}, 1),
        ({"ModalitiesInStudy": "CT"}, 1), ({"ModalitiesInStudy": "MR"}, 0), ({"StudyInstanceUID": f"1.2.3,{study}"}, 1),
    ]:
        assert len(web.search_for_studies(search_filters=filters)) == count, filters
    assert web.search_for_studies(offset=1) == []


def test_search_for_series_and_instances(loaded: tuple[Node, str, str, list[Path]]) -> None:
    node, study, series, _ = loaded
    web = client(node)
    (found,) = web.search_for_series(study_instance_uid=study)
    assert found["0020000E"]["Value"] == [series] and found["00080060"]["Value"] == ["CT"]
    assert found["00201209"]["Value"] == [5]
    assert len(web.search_for_series(search_filters={"Modality": "CT"})) == 1
    instances = web.search_for_instances(study_instance_uid=study, series_instance_uid=series)
    assert [i["00200013"]["Value"][0] for i in instances] == [1, 2, 3, 4, 5]
    assert len(web.search_for_instances(study_instance_uid=study, series_instance_uid=series, limit=2)) == 2


def test_retrieve_instances_metadata_and_frames(loaded: tuple[Node, str, str, list[Path]]) -> None:
    node, study, series, files = loaded
    web = client(node)
    original = pydicom.dcmread(files[0])
    got = web.retrieve_instance(study, series, original.SOPInstanceUID)
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(got.pixel_array, original.pixel_array)
    assert len(web.retrieve_series(study, series)) == 5
    metadata = web.retrieve_series_metadata(study, series)
    assert len(metadata) == 5
    assert "BulkDataURI" in metadata[0]["7FE00010"]
    (frame,) = web.retrieve_instance_frames(study, series, original.SOPInstanceUID, frame_numbers=[1])
    assert frame == original.PixelData


def test_store_over_stow_goes_the_c_store_way(loaded: tuple[Node, str, str, list[Path]]) -> None:
    node, _, _, _ = loaded
    study, series = uid("stow-study"), uid("stow-series")
    client(node).store_instances([ct_slice(study, series, i, size=32) for i in range(3)])
    wait_until(lambda: len(query(node.data_dir, "SELECT * FROM jobs WHERE series_instance_uid = ?", series)) == 1,
               20, "the STOW series to complete and be queued")
    assert len(client(node).search_for_instances(study_instance_uid=study)) == 3
    assert len(client(node).retrieve_series_metadata(study, series)) == 3  # and now cached
    client(node).store_instances([ct_slice(study, series, 3, size=32)])  # a late instance: the cache is stale
    metadata = client(node).retrieve_series_metadata(study, series)
    assert sorted(m["00200013"]["Value"][0] for m in metadata) == [1, 2, 3, 4]
    # the URIs as served (dicomweb-client rewrites them when it reads them)
    import httpx

    raw = httpx.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{study}/series/{series}/metadata",
                    headers={"Accept": "application/dicom+json"}, timeout=30).json()
    assert all(m["7FE00010"]["BulkDataURI"].startswith(f"http://127.0.0.1:{node.http_port}/dicom-web/") for m in raw)


def http(node: Node, path: str, *, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{node.http_port}{path}", data=data, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_errors_have_the_right_status(loaded: tuple[Node, str, str, list[Path]]) -> None:
    node, study, series, _ = loaded
    with pytest.raises(HTTPError) as missing:
        client(node).retrieve_study("1.2.3.4.5.6")
    assert missing.value.response is not None and missing.value.response.status_code == 404
    assert http(node, "/dicom-web/studies?StudyDate=yesterday") == 400
    assert http(node, "/dicom-web/studies?limit=-1") == 400
    assert http(node, f"/dicom-web/studies/{study}/series/{series}", headers={"Accept": "image/png"}) == 406
    assert http(node, "/dicom-web/studies", method="POST", data=b"x", headers={"Content-Type": "text/plain"}) == 415
    garbage = b"--b\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--b--\r\n"
    assert http(node, "/dicom-web/studies", method="POST", data=garbage,
                headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}) == 409
    assert http(node, "/healthz") == 200


def test_rendered_png_and_jpeg_and_bulk_data(loaded: tuple[Node, str, str, list[Path]]) -> None:
    import io

    import httpx
    from PIL import Image

    node, study, series, files = loaded
    original = pydicom.dcmread(files[0])
    url = f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{study}/series/{series}/instances/{original.SOPInstanceUID}"
    png = httpx.get(f"{url}/rendered?window=40,400", headers={"Accept": "image/png"}, timeout=30)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (32, 32)
    jpeg = httpx.get(f"{url}/frames/1/rendered", headers={"Accept": "image/jpeg"}, timeout=30)
    assert jpeg.status_code == 200 and jpeg.content[:2] == b"\xff\xd8"
    assert httpx.get(f"{url}/rendered", headers={"Accept": "image/gif"}, timeout=30).status_code == 406
    assert httpx.get(f"{url}/rendered?window=40,-1", timeout=30).status_code == 400
    bulk = httpx.get(f"{url}/bulk/7FE00010", headers={"Accept": "multipart/related"}, timeout=30)
    assert bulk.status_code == 200 and original.PixelData in bulk.content
    assert httpx.get(f"{url}/bulk/00100010", timeout=30).status_code == 404  # a name is not bulk data
    assert httpx.get(f"{url}/bulk/nothex", timeout=30).status_code == 400


def test_rendered_viewport_quality_window_function_and_thumbnails(loaded: tuple[Node, str, str, list[Path]]) -> None:
    """Found by probing against PS3.18 8.3.5.1 and 10.4.1: viewport and quality were ignored, a window
    function other than LINEAR was rendered as LINEAR, a frame list gave FastAPI's 422, /thumbnail was 404."""
    import httpx
    from PIL import Image

    node, study, series, files = loaded
    sop = pydicom.dcmread(files[0]).SOPInstanceUID
    base = f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{study}"
    url = f"{base}/series/{series}/instances/{sop}"

    def size(path: str, accept: str = "image/png") -> tuple[int, int]:
        answer = httpx.get(f"{url}{path}" if path.startswith(("/", "?")) else path, headers={"Accept": accept}, timeout=30)
        assert answer.status_code == 200, (path, answer.text)
        return Image.open(io.BytesIO(answer.content)).size

    assert size("/rendered?viewport=16,8") == (8, 8)  # 32 x 32 fitted into 16 x 8, its aspect kept
    assert size("/rendered?viewport=64,64") == (32, 32)  # never scaled up
    low, high = (httpx.get(f"{url}/rendered?quality={q}", headers={"Accept": "image/jpeg"}, timeout=30).content
                 for q in (5, 95))
    assert len(low) < len(high)
    for path in ("/rendered?window=40,400,SIGMOID", "/rendered?viewport=0,8", "/rendered?quality=0",
                 "/frames/1,2/rendered"):
        answer = httpx.get(f"{url}{path}", timeout=30)
        assert answer.status_code == 400 and answer.json()["detail"], path
    assert size("/rendered?window=40,400,LINEAR") == (32, 32)
    for thumbnail in (f"{base}/thumbnail", f"{base}/series/{series}/thumbnail", f"{url}/thumbnail",
                      f"{url}/frames/1/thumbnail"):
        assert size(thumbnail) == (32, 32)  # no larger than its image, nor than 128 x 128
        assert size(f"{thumbnail}?viewport=10,10", "image/jpeg") == (10, 10)
    assert httpx.get(f"{base}.9/thumbnail", timeout=30).status_code == 404


def encoded(study: str, series: str, index: int) -> tuple[str, bytes]:
    ds = ct_slice(study, series, index, size=16)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return str(ds.SOPInstanceUID), buffer.getvalue()


def stow(node: Node, *parts: bytes, path: str = "/dicom-web/studies",
         content_type: str = 'multipart/related; type="application/dicom"; boundary=b0undary') -> httpx.Response:
    body = b"".join(b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n" for part in parts)
    return httpx.post(f"http://127.0.0.1:{node.http_port}{path}", content=body + b"--b0undary--\r\n",
                      headers={"Content-Type": content_type, "Accept": "application/dicom+json"}, timeout=30)


def is_indexed(node: Node, sop: str) -> bool:
    return bool(query(node.data_dir, "SELECT 1 FROM instances WHERE sop_instance_uid = ?", sop))


def test_stow_refuses_metadata_bodies_and_a_study_path_that_is_not_a_uid(
        loaded: tuple[Node, str, str, list[Path]]) -> None:
    node, _, _, _ = loaded
    sop, data = encoded(uid("stow-refused"), uid("stow-refused-series"), 0)
    for part_type in ("application/dicom+xml", "application/dicom+json", "application/octet-stream"):
        response = stow(node, data, content_type=f'multipart/related; type="{part_type}"; boundary=b0undary')
        assert response.status_code == 415, part_type
        assert response.json()["detail"] == ('send multipart/related; type="application/dicom": the node takes DICOM '
                                             f"files only, not metadata and bulk data or other parts ({part_type})")
    response = stow(node, data, path="/dicom-web/studies/not-a-uid")
    assert (response.status_code, response.json()["detail"]) == (400, "the study in the path, 'not-a-uid', is not a UID")
    assert not is_indexed(node, sop)  # nothing of a refused body is kept
    mixed_case = stow(node, data, content_type="Multipart/Related; Type=Application/DICOM; boundary=b0undary")
    assert mixed_case.status_code == 200 and is_indexed(node, sop)


def test_stow_names_the_study_to_retrieve_and_says_in_words_what_is_wrong(
        loaded: tuple[Node, str, str, list[Path]]) -> None:
    node, _, _, _ = loaded
    base = f"http://127.0.0.1:{node.http_port}/dicom-web"
    one, other = uid("stow-url-1"), uid("stow-url-2")
    both = stow(node, encoded(one, uid("stow-url-1s"), 0)[1], encoded(one, uid("stow-url-1s"), 1)[1])
    assert both.status_code == 200, both.text
    assert both.json()["00081190"] == {"vr": "UR", "Value": [f"{base}/studies/{one}"]}
    two_studies = stow(node, encoded(one, uid("stow-url-1s"), 2)[1], encoded(other, uid("stow-url-2s"), 0)[1])
    assert two_studies.status_code == 200 and two_studies.json()["00081190"] == {"vr": "UR"}  # Type 2: there, empty
    elsewhere = stow(node, encoded(other, uid("stow-url-2s"), 1)[1], path=f"/dicom-web/studies/{one}")
    assert elsewhere.status_code == 409  # of another study: refused, the study the path names still named
    assert elsewhere.json()["00081190"] == {"vr": "UR", "Value": [f"{base}/studies/{one}"]}

    refused = stow(node, b"not dicom", b"")
    assert refused.status_code == 409
    warning = refused.headers["Warning"]
    assert warning == ('299 uronode "part 1: not a DICOM data set: no SOPClassUID could be read from it", '
                       '299 uronode "part 2: not a DICOM data set: the part is empty (0 bytes)"')
    assert "00081199" not in refused.json() and len(refused.json()["00081198"]["Value"]) == 2


def test_a_series_sent_in_two_stow_requests_completes_once_though_the_second_uploads_slowly(
        loaded: tuple[Node, str, str, list[Path]]) -> None:
    """The second request's body takes several grace periods (0.5 s) to arrive: the series waits for it and
    completes once, with every instance (it had completed after the first request and re-opened: two analyses,
    the first of part of the series)."""
    import time

    node, _, _, _ = loaded
    study, series = uid("stow-batches"), uid("stow-batches-series")
    client(node).store_instances([ct_slice(study, series, i, size=16) for i in range(3)])
    parts = [encoded(study, series, i)[1] for i in (3, 4)]
    body = b"".join(b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n" for part in parts)
    body += b"--b0undary--\r\n"

    def slowly() -> Iterator[bytes]:
        yield body[:100]
        time.sleep(2.5)  # five grace periods
        yield body[100:]

    response = httpx.post(f"http://127.0.0.1:{node.http_port}/dicom-web/studies", content=slowly(),
                          headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary',
                                   "Accept": "application/dicom+json"}, timeout=30)
    assert response.status_code == 200, response.text
    wait_until(lambda: query(node.data_dir, "SELECT state FROM series WHERE series_instance_uid = ?",
                             series)[0]["state"] == "complete", 20, "the series to complete")
    row = query(node.data_dir, "SELECT generation FROM series WHERE series_instance_uid = ?", series)[0]
    assert row["generation"] == 1  # completed once: never re-opened
    held = query(node.data_dir, "SELECT a.calling_ae, a.peer_host, a.outcome FROM series_associations sa"
                 " JOIN associations a ON a.id = sa.association_id WHERE sa.series_instance_uid = ?", series)
    assert [(r["calling_ae"], r["peer_host"], r["outcome"]) for r in held] == [("STOW-RS", "127.0.0.1", "released")] * 2



def test_a_stow_request_refused_for_its_body_ends_as_a_release(loaded: tuple[Node, str, str, list[Path]]) -> None:
    """Review 38: a body refused as malformed (nothing of it stored) ended as an abort, and the series its sender
    had sent just before waited for the quiet period instead of the grace period."""
    node, _, _, _ = loaded
    broken = httpx.post(f"http://127.0.0.1:{node.http_port}/dicom-web/studies", content=b"--b0undary--\r\n",
                        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary'},
                        timeout=30)
    assert broken.status_code == 400
    (last,) = query(node.data_dir, "SELECT calling_ae, outcome FROM associations ORDER BY id DESC LIMIT 1")
    assert (last["calling_ae"], last["outcome"]) == ("STOW-RS", "released")
