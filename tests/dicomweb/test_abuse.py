"""Requests and stored instances meant to exhaust the node (probe6 findings 3, 4 and 7), against a running node.

A frame list that repeats a frame, or names one the instance does not hold, is a 400 before anything is made;
frames are made one at a time as the response goes out. An instance whose header claims more pixels than the
node decodes is refused before any memory is taken, with the reason, wherever it would be decoded; it is
written straight into the node's store (as one stored before the ingest refused such headers would be), so
that the decode guard is what answers. QIDO-RS values SQLite cannot take are a 400 naming them, not a 500.
"""

from __future__ import annotations

import io
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from dicomweb import transcoding
from dicomweb.wado import render_png
from tests.conftest import FAST_COMPLETION
from tests.factory import ct_slice, pydicom_test_file, uid
from tests.peers.processes import Node, free_port
from uronode.store import Store
from uronode.types import InstanceHeader

FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
"""What OHIF's image loader sends for every frame."""
INSTANCE = 'multipart/related; type="application/dicom"'
JSON = {"Accept": "application/dicom+json"}
STUDY, SERIES = uid("abuse", "study"), uid("abuse", "series")


def absurd(rows: int, columns: int, frames: int = 1) -> Dataset:
    """An RLE Lossless CT image whose header claims ``rows`` x ``columns`` (x ``frames``) 16-bit pixels, each frame
    one RLE fragment of a few bytes (probe6's p5b: 860 bytes in all for 30000 x 30000)."""
    ds = ct_slice(STUDY, SERIES, 90, size=4)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("abuse", rows, columns, frames)
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    segment = bytes([1, 0, 0])  # two literal bytes: a few pixels of each byte plane, nowhere near a frame
    header = (2).to_bytes(4, "little") + (64).to_bytes(4, "little") + (67).to_bytes(4, "little") + bytes(52)
    ds.PixelData = encapsulate([header + segment + segment + b"\0"] * frames)
    ds["PixelData"].VR = "OB"
    return ds


def broken_second_frame() -> Dataset:
    """pydicom's 10-frame JPEG 2000 MR with its second frame's code stream overwritten past its first 16 bytes."""
    ds = pydicom.dcmread(pydicom_test_file("emri_small_jpeg_2k_lossless.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("abuse", "broken-frame")
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    frames[1] = frames[1][:16] + b"\x00" * (len(frames[1]) - 16)
    ds.PixelData = encapsulate(frames)
    return ds


def two_frames() -> Dataset:
    """A 2-frame 16 x 16 native CT image, the frames told apart by their values."""
    ds = ct_slice(STUDY, SERIES, 0, size=16)
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([np.full((16, 16), 100, np.uint16), np.full((16, 16), 200, np.uint16)]).tobytes()
    return ds


def as_file(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def put(store: Store, ds: Dataset) -> None:
    """Into the store as it is, past every check at ingest (as an instance stored before them was)."""
    header = InstanceHeader(
        sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
        study_instance_uid=str(ds.StudyInstanceUID), series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), modality=str(ds.get("Modality", "")),
        instance_number=int(ds.get("InstanceNumber", 0) or 0), patient_name=str(ds.get("PatientName", "")),
        patient_id=str(ds.get("PatientID", "")), study_date=str(ds.get("StudyDate", "")),
    )
    store.put(header, [as_file(ds)])


@dataclass(frozen=True)
class Loaded:
    node: Node
    base: str
    native: str  # the URL of the 2-frame native instance, stored by STOW-RS
    broken: str  # of the JPEG 2000 instance whose second frame does not decode
    huge: str  # of the RLE instance claiming 8200 x 8200 pixels

    def get(self, url: str, accept: str | None = FRAMES) -> httpx.Response:
        return httpx.get(url, headers={"Accept": accept} if accept else {}, timeout=60)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    folder = tmp_path_factory.mktemp("abuse")
    node = Node(folder / "node", free_port(), free_port(), extra_env=dict(FAST_COMPLETION)).start()
    try:
        base = f"http://127.0.0.1:{node.http_port}/dicom-web"
        native = two_frames()
        DICOMwebClient(url=base).store_instances([native])
        store = Store(node.data_dir, fsync=False)
        broken, huge = broken_second_frame(), absurd(8200, 8200)
        for ds in (broken, huge):
            put(store, ds)
        series = f"{base}/studies/{STUDY}/series/{SERIES}/instances"
        yield Loaded(node, base, f"{series}/{native.SOPInstanceUID}", f"{series}/{broken.SOPInstanceUID}",
                     f"{series}/{huge.SOPInstanceUID}")
    finally:
        node.stop()


def parts(response: httpx.Response) -> list[bytes]:
    """The bodies of a multipart/related answer's parts (its closing delimiter checked)."""
    boundary = re.search(r"boundary=\"?([^\";]+)", response.headers["content-type"])
    assert boundary is not None, response.headers["content-type"]
    delimiter = b"\r\n--" + boundary.group(1).encode()
    body = b"\r\n" + response.content
    assert body.endswith(delimiter + b"--\r\n"), "the closing boundary is missing"
    return [chunk[2:].partition(b"\r\n\r\n")[2] for chunk in body[: -len(delimiter) - 4].split(delimiter)[1:]]


def refused(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:200])
    assert reason in response.json()["detail"], response.json()["detail"]


# -- frame lists ------------------------------------------------------------------------------------------


def test_a_frame_list_that_repeats_a_frame_is_400(loaded: Loaded) -> None:
    """Found by probe6 (finding 4): /frames/2,2,2,... (3,000 times in a 6 KB URL) made 3,000 copies of the
    frame, 1.6 GB, before the first byte. PS3.18 asks for a list of non-duplicate frame numbers."""
    refused(loaded.get(f"{loaded.native}/frames/{','.join(['2'] * 3000)}"), 400, "names frame 2 more than once")
    refused(loaded.get(f"{loaded.native}/frames/1,2,1"), 400, "names frame 1 more than once")
    answer = loaded.get(f"{loaded.native}/frames/2,1")  # any order, each once: as before
    assert answer.status_code == 200
    assert [np.frombuffer(p, "<u2")[0] for p in parts(answer)] == [200, 100]


def test_a_frame_the_instance_does_not_hold_is_400(loaded: Loaded) -> None:
    """It was a 404, as if the instance were missing; PS3.18 9.5.2 makes a frame number beyond the
    instance's frames a 400 (Bad Request), the frames resource now too, naming what is wrong."""
    refused(loaded.get(f"{loaded.native}/frames/1,3"), 400, "the instance has 2 frame(s); the frame list names 3")
    refused(loaded.get(f"{loaded.native}/frames/{','.join(map(str, range(1, 3001)))}"), 400,
            "the frame list names 3, 4, 5, 6, 7, ...")
    for resource in ("frames/3/rendered", "frames/3/thumbnail"):
        refused(loaded.get(f"{loaded.native}/{resource}", "image/png"), 400, "the instance has 2 frame(s), not frame 3")
    assert loaded.get(f"{loaded.native}/frames/2/rendered", "image/png").status_code == 200


def test_frames_are_made_one_at_a_time_as_they_are_taken() -> None:
    """Every requested frame was made before the response began; now each is made as the response takes it,
    so a second frame that does not decode shows only when it is reached."""
    ds = broken_second_frame()
    made = transcoding.frames_of(ds, [1, 2])
    assert next(made) == pixel_array(ds, index=0).astype("<u2").tobytes()
    with pytest.raises(RuntimeError, match="Unable to decode"):
        next(made)


def test_a_frame_that_does_not_decode_is_a_500_with_its_reason(loaded: Loaded) -> None:
    """Found by probe6 (finding 3): a decoder's error on /frames was a bare 500 "Internal Server Error"
    with a traceback in the log; it is now the reason, as the instance retrieve gives it. Once frames have
    gone out, one that does not decode cuts the answer short (no status can follow), not silently left out."""
    refused(loaded.get(f"{loaded.broken}/frames/2"), 500, "frame 2 of instance")
    assert "transfer-syntax=*" in loaded.get(f"{loaded.broken}/frames/2").json()["detail"]
    (first,) = parts(loaded.get(f"{loaded.broken}/frames/1"))
    assert len(first) == 64 * 64 * 2
    with pytest.raises(httpx.RemoteProtocolError):  # the connection drops before the closing boundary
        loaded.get(f"{loaded.broken}/frames/1,2")


# -- absurd pixel geometry --------------------------------------------------------------------------------


def test_a_header_claiming_an_absurd_frame_is_not_decoded(tmp_path: Path) -> None:
    """Found by probe6 (finding 3): 860 bytes claiming 30000 x 30000 pixels made a decode allocate 1.8-2.5 GB
    before the decoder found the data short. Now the header is checked before any decode: re-encoding, frames,
    rendering (8200 x 8200 here, just over the bound, keeps what the unguarded decoders would take small)."""
    for rows, columns in ((30000, 30000), (8200, 8200), (65535, 1100)):
        with pytest.raises(ValueError, match=f"the instance claims {rows} x {columns} pixels; not decoded"):
            transcoding.check_decoded_size(absurd(rows, columns))
    path = tmp_path / "huge.dcm"
    path.write_bytes(as_file(absurd(8200, 8200)))
    reason = "the instance claims 8200 x 8200 pixels; not decoded"
    with pytest.raises(ValueError, match=reason):
        transcoding.reencode(path, ExplicitVRLittleEndian)
    with pytest.raises(ValueError, match=reason):
        transcoding.frames_of(pydicom.dcmread(path), [1])
    with pytest.raises(ValueError, match=reason):
        render_png(path, 1, None)


def test_a_whole_decode_over_the_bound_is_refused_but_its_frames_are_not() -> None:
    """Re-encoding decodes every frame at once: 200 frames of 4096 x 4096 16-bit pixels is 6.7 GB. One frame at a
    time (frames, rendered) is 32 MB and goes on."""
    ds = absurd(4096, 4096, frames=200)
    transcoding.check_decoded_size(ds)  # one frame
    with pytest.raises(ValueError, match=r"200 frame\(s\) of 4096 x 4096 pixels x 1 sample\(s\) x 16 bits, "
                                         r"6710886400 bytes decoded; not decoded \(the node decodes at most 2 GiB"):
        transcoding.check_decoded_size(ds, whole=True)
    del ds.Rows
    with pytest.raises(ValueError, match="cannot be read"):
        transcoding.check_decoded_size(ds)


def test_a_stored_instance_claiming_absurd_pixels_is_answered_with_the_reason(loaded: Loaded) -> None:
    """Through the node, for an instance already in the store: a 500 naming what it claims for the instance
    re-encoded, its frames, rendered and thumbnail; as stored on request; as stored inside its series."""
    reason = "the instance claims 8200 x 8200 pixels; not decoded"
    refused(loaded.get(loaded.huge, INSTANCE), 500, reason)
    assert "transfer-syntax=*" in loaded.get(loaded.huge, INSTANCE).json()["detail"]
    refused(loaded.get(f"{loaded.huge}/frames/1"), 500, reason)
    for resource in ("rendered", "thumbnail", "frames/1/rendered", "frames/1/thumbnail"):
        refused(loaded.get(f"{loaded.huge}/{resource}", "image/png"), 500, reason)
    as_stored = loaded.get(loaded.huge, f"{INSTANCE}; transfer-syntax=*")
    assert as_stored.status_code == 200 and f"transfer-syntax={RLELossless}" in as_stored.text[:300]
    series = loaded.get(f"{loaded.base}/studies/{STUDY}/series/{SERIES}", INSTANCE)
    assert series.status_code == 200 and len(parts(series)) == 3  # each part whole, the closing boundary there
    assert series.content.count(f"transfer-syntax={RLELossless}".encode()) == 1  # the huge one, as stored
    assert httpx.get(f"{loaded.base}/studies/{STUDY}/series/{SERIES}/metadata", headers=JSON,
                     timeout=60).status_code == 200


# -- QIDO-RS values SQLite cannot take --------------------------------------------------------------------


def search(loaded: Loaded, path: str, query: str) -> httpx.Response:
    """``query`` sent as written (``*``, ``?`` and ``,`` unencoded, as a browser sends them)."""
    return httpx.get(httpx.URL(f"{loaded.base}{path}?{query}"), headers=JSON, timeout=60)


def encoded(**params: str) -> str:
    return urllib.parse.urlencode(params, safe="*?,")


@pytest.mark.parametrize(("path", "query", "reason"), [
    ("/studies", encoded(offset=str(10**20)), "offset must be at most 9223372036854775807"),
    ("/series", encoded(SeriesNumber=str(10**20)), "SeriesNumber: '100000000000000000000' is not an IS number"),
    ("/instances", encoded(InstanceNumber=str(-(10**30))), "InstanceNumber: '-1000000000000000000000000000000' is not"),
    ("/studies", encoded(StudyDescription="*a" * 30000 + "b"), "StudyDescription: a pattern of 60001 characters; "
                                                               "at most 1024"),
    ("/studies", encoded(PatientName="?" * 60000), "PatientName: a pattern of 60000 characters; at most 1024"),
    ("/studies", "&".join(["StudyInstanceUID=1.2"] * 3000),
     "StudyInstanceUID is given more than once; give several UIDs as one comma-separated value"),
])
def test_values_sqlite_cannot_take_are_400_naming_them(loaded: Loaded, path: str, query: str, reason: str) -> None:
    """Found by probe6 (finding 7): each was a bare 500 (OverflowError, "LIKE or GLOB pattern too complex",
    "Expression tree is too large") with a traceback in the log."""
    refused(search(loaded, path, query), 400, reason)


def test_values_within_the_bounds_are_searched_as_before(loaded: Loaded) -> None:
    for path, query in [
        ("/studies", encoded(offset=str(2**63 - 1))),
        ("/studies", encoded(limit=str(10**20))),  # cut to the node's limit, as before
        ("/series", encoded(SeriesNumber=str(2**31 - 1))),
        ("/studies", encoded(PatientName="*" * 1024)),
        ("/studies", "StudyInstanceUID=" + ",".join(["1.2"] * 3000)),  # a list is one value
    ]:
        response = search(loaded, path, query)
        assert response.status_code == 200, (path, query[:40], response.text[:200])
    (found,) = search(loaded, "/studies", encoded(StudyInstanceUID=STUDY, PatientName="synthetic*")).json()
    assert found["00201208"]["Value"] == [3]
