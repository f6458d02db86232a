"""WADO-RS as PS3.18 8.7.3 and 10.4 say, against a running node: transfer syntax and part type
negotiation, frames of 1-bit and colour instances, the metadata that describes those frames.

Instances go in over STOW-RS as their files are (compressed ones stay compressed on disk); each
answer is read as bytes off the wire, plus dicomweb-client where a real client's view matters.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.uid import UID, JPEG2000Lossless

from dicomweb.node_client import SERIES_ACCEPT
from tests.factory import pydicom_test_file, uid, write_series
from tests.peers.processes import Node

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
J2K = "1.2.840.10008.1.2.4.91"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
"""What OHIF 3.13's image loader sends for every frame (cornerstone's wadors loadImage, unquoted)."""
OHIF_INSTANCE = 'multipart/related; type="application/dicom"'
"""What OHIF's dicomweb-client sends to retrieve a whole instance (SEG, RTSTRUCT, parametric map)."""


def dicom(syntax: str = "") -> str:
    return 'multipart/related; type="application/dicom"' + (f"; transfer-syntax={syntax}" if syntax else "")


@dataclass(frozen=True)
class Stored:
    """One instance as sent: its UIDs, the data set, and its URL on the node."""

    name: str
    ds: Dataset
    url: str

    @property
    def sop(self) -> str:
        return str(self.ds.SOPInstanceUID)


@dataclass(frozen=True)
class Loaded:
    node: Node
    base: str
    instances: dict[str, Stored]
    mixed: tuple[str, str]  # (study, series) holding a JPEG 2000 and an Explicit VR LE instance
    j2k_seg_mask: np.ndarray  # what the JPEG 2000 binary SEG was made from

    def __getitem__(self, name: str) -> Stored:
        return self.instances[name]


def _with_uids(ds: Dataset, study: str, series: str, sop: str) -> Dataset:
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    return ds


def _as_file(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _own_seg(folder: Path) -> Dataset:
    """The node's own binary SEG of a 4-slice, 30 x 30 series, stones on the last three (its frames): 900 bits a
    frame, so frames 2 and 3 start mid-byte."""
    from inference.postprocess import measure_stones
    from inference.volume import load_volume
    from inference.writers import write_results

    _, _, paths = write_series(folder, 4, size=30)
    volume = load_volume(paths)
    mask = np.zeros(volume.shape, np.uint8)
    mask[1:3, 10:14, 5:9] = 1
    mask[3, 20, 21] = 1
    seg = write_results(volume, measure_stones(volume, mask, model_name="t", model_version="1")).seg
    assert seg is not None and seg.BitsAllocated == 1
    return seg


def _j2k_binary_seg(folder: Path) -> tuple[Dataset, np.ndarray]:
    """A binary SEG (BitsAllocated 1) stored as JPEG 2000 Lossless, as highdicom writes one."""
    _, _, paths = write_series(folder, 3, size=36)
    sources = [pydicom.dcmread(p) for p in paths]
    mask = np.zeros((3, 36, 36), bool)
    mask[1, 3:9, 4:20] = True
    mask[2, 0, 0] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="stone",
        segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical structure"),
        segmented_property_type=hd.sr.CodedConcept("56381008", "SCT", "Calculus"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=uid("j2kseg", "series"), series_number=5,
        sop_instance_uid=uid("j2kseg", "sop"), instance_number=1, manufacturer="elsewhere",
        manufacturer_model_name="m", software_versions="1", device_serial_number="1",
        transfer_syntax_uid=JPEG2000Lossless, omit_empty_frames=False,
    )
    return pydicom.dcmread(io.BytesIO(_as_file(seg))), mask


TEST_FILES = {
    "j2k": "JPEG2000.dcm",  # MONOCHROME2, 16 bits, JPEG 2000 (.4.91)
    "ct": "CT_small.dcm",  # Explicit VR LE
    "implicit": "MR_small_implicit.dcm",
    "big_endian": "MR_small_bigendian.dcm",
    "deflated": "image_dfl.dcm",
    "ybr_full": "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
    "ybr_422": "SC_rgb_dcmtk_+eb+cy+s2.dcm",  # JPEG baseline, YBR_FULL_422
    "ybr_rct": "US1_J2KR.dcm",  # JPEG 2000 lossless, YBR_RCT
    "j2k_frames": "emri_small_jpeg_2k_lossless.dcm",  # 10 frames, JPEG 2000 lossless
    "rle_rgb": "SC_rgb_rle_2frame.dcm",
    "liver": "liver.dcm",  # a binary SEG, 512 x 512 x 3 frames, Explicit VR LE
}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    from tests.conftest import FAST_COMPLETION
    from tests.peers.processes import free_port

    folder = tmp_path_factory.mktemp("wado")
    datasets: dict[str, Dataset] = {}
    for name, file in TEST_FILES.items():
        ds = pydicom.dcmread(pydicom_test_file(file))
        datasets[name] = _with_uids(ds, uid(name, "study"), uid(name, "series"), uid(name, "sop"))
    mixed = (uid("mixed", "study"), uid("mixed", "series"))
    for name, file in (("mixed_j2k", "JPEG2000.dcm"), ("mixed_ct", "CT_small.dcm")):
        datasets[name] = _with_uids(pydicom.dcmread(pydicom_test_file(file)), *mixed, uid(name, "sop"))
    planar = pydicom.dcmread(pydicom_test_file("SC_rgb_rle_2frame.dcm"))
    planar.PlanarConfiguration = 1  # RLE codes colour by plane whatever this says; the metadata says by plane
    datasets["rle_planar"] = _with_uids(planar, uid("rle_planar", "study"), uid("rle_planar", "series"),
                                        uid("rle_planar", "sop"))
    datasets["own_seg"] = _own_seg(folder / "ct")
    datasets["j2k_seg"], j2k_mask = _j2k_binary_seg(folder / "ct2")

    node = Node(folder / "node", free_port(), free_port(), extra_env=dict(FAST_COMPLETION)).start()
    try:
        base = f"http://127.0.0.1:{node.http_port}/dicom-web"
        boundary = "wado-conformance"
        body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + _as_file(ds) + b"\r\n"
                        for ds in datasets.values()) + f"--{boundary}--\r\n".encode()
        stored = httpx.post(f"{base}/studies", content=body, timeout=60, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json"})
        assert stored.status_code == 200, stored.text
        instances = {
            name: Stored(name, ds, f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                                   f"/instances/{ds.SOPInstanceUID}")
            for name, ds in datasets.items()
        }
        yield Loaded(node, base, instances, mixed, j2k_mask)
    finally:
        node.stop()


def parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """The (Content-Type, body) of each part of a multipart/related answer."""
    boundary = re.search(r"boundary=\"?([^\";]+)", response.headers["content-type"])
    assert boundary is not None, response.headers["content-type"]
    delimiter = b"\r\n--" + boundary.group(1).encode()
    body = b"\r\n" + response.content
    assert body.endswith(delimiter + b"--\r\n"), "the closing boundary is missing"
    found = []
    for chunk in body[: -len(delimiter) - 4].split(delimiter)[1:]:
        head, _, content = chunk[2:].partition(b"\r\n\r\n")
        (content_type,) = [h.split(b":", 1)[1].strip().decode() for h in head.split(b"\r\n")
                           if h.lower().startswith(b"content-type:")]
        found.append((content_type, content))
    return found


def get(url: str, accept: str | None) -> httpx.Response:
    return httpx.get(url, headers={"Accept": accept} if accept is not None else {}, timeout=60)


def instance(response: httpx.Response) -> tuple[str, Dataset]:
    """The one part of a retrieve answer: the syntax its Content-Type names, and the data set."""
    assert response.status_code == 200, response.text
    (part,) = parts(response)
    content_type, content = part
    assert content_type.startswith("application/dicom; transfer-syntax=")
    return content_type.split("=", 1)[1], pydicom.dcmread(io.BytesIO(content))


def decoded(ds: Dataset) -> np.ndarray:
    """The values as stored, decoded without any colour conversion."""
    return pixel_array(ds, raw=True)


@pytest.mark.parametrize(("name", "accept", "expected"), [
    ("j2k", None, EXPLICIT),  # no Accept at all: the defaults
    ("j2k", "*/*", EXPLICIT),
    ("j2k", dicom(), EXPLICIT),  # no transfer-syntax: Explicit VR LE (PS3.18 8.7.3.5)
    ("j2k", dicom(EXPLICIT), EXPLICIT),
    ("j2k", dicom(IMPLICIT), IMPLICIT),
    ("j2k", dicom("*"), J2K),
    ("j2k", dicom(J2K), J2K),
    ("j2k", f"{dicom(JPEG_BASELINE)}, {dicom('*')}", J2K),  # the first it can give
    ("j2k", f'{dicom("*")}; q=0.5, {dicom(EXPLICIT)}', EXPLICIT),  # by weight, not by place
    ("j2k", f'{dicom(EXPLICIT)}; q=0, {dicom(J2K)}', J2K),  # q=0: not acceptable
    ("j2k", f'multipart/related; type="application/dicom"; transfer-syntax="{IMPLICIT}"', IMPLICIT),
    ("ct", dicom(), EXPLICIT),
    ("ct", dicom(IMPLICIT), IMPLICIT),
    ("implicit", dicom(), EXPLICIT),
    ("implicit", dicom(IMPLICIT), IMPLICIT),
    ("deflated", dicom(), EXPLICIT),
    ("big_endian", dicom("*"), BIG_ENDIAN),
    ("ybr_422", dicom(), EXPLICIT),
    ("ybr_rct", dicom(), EXPLICIT),
    ("rle_rgb", dicom(), EXPLICIT),
    ("j2k_frames", dicom(), EXPLICIT),
    ("own_seg", OHIF_INSTANCE, EXPLICIT),
    ("j2k_seg", OHIF_INSTANCE, EXPLICIT),
])
def test_retrieve_gives_the_transfer_syntax_asked_for(loaded: Loaded, name: str, accept: str | None,
                                                      expected: str) -> None:
    sent = loaded[name].ds
    syntax, got = instance(get(loaded[name].url, accept))
    assert syntax == expected and got.file_meta.TransferSyntaxUID == expected
    assert got.SOPInstanceUID == sent.SOPInstanceUID  # re-encoded, not a new instance
    if expected == sent.file_meta.TransferSyntaxUID:
        assert got.PixelData == sent.PixelData  # as stored, compressed or not
    elif name == "j2k_seg":  # 1-bit pixel data packed again after decoding
        assert got.BitsAllocated == 1 and len(got.PixelData) == (3 * 36 * 36 + 7) // 8
        np.testing.assert_array_equal(pixel_array(got), loaded.j2k_seg_mask)
    else:  # lossless: the values the stored encoding decodes to
        np.testing.assert_array_equal(pixel_array(got, raw=True), decoded(sent))
        if name == "ybr_422":  # the decoder gives full chroma: YBR_FULL, not converted to RGB
            assert got.PhotometricInterpretation == "YBR_FULL"


def test_as_stored_is_the_stored_file(loaded: Loaded) -> None:
    """``transfer-syntax=*`` and Explicit VR LE on an Explicit VR LE instance: the file as stored, streamed."""
    raw = {accept: parts(get(loaded["ct"].url, accept))[0][1] for accept in (dicom("*"), dicom(), OHIF_INSTANCE)}
    assert len(set(raw.values())) == 1
    stored = [p for p in (loaded.node.data_dir).rglob("*") if p.is_file() and p.read_bytes() == raw[dicom("*")]]
    assert len(stored) == 1


def test_a_series_is_negotiated_instance_by_instance(loaded: Loaded) -> None:
    study, series = loaded.mixed
    url = f"{loaded.base}/studies/{study}/series/{series}"
    for accept, syntaxes in [
        (dicom(), {EXPLICIT}),
        (dicom("*"), {J2K, EXPLICIT}),
        (f"{dicom(J2K)}, {dicom(EXPLICIT)}", {J2K, EXPLICIT}),  # each the first it can give
        (dicom(IMPLICIT), {IMPLICIT}),
    ]:
        for target in (url, f"{loaded.base}/studies/{study}"):
            response = get(target, accept)
            assert response.status_code == 200, response.text
            got = [ct.split("=", 1)[1] for ct, _ in parts(response)]
            assert len(got) == 2 and set(got) == syntaxes, (accept, got)
    refused = get(url, dicom(J2K))  # the Explicit VR LE instance cannot be given as JPEG 2000
    assert refused.status_code == 406
    assert loaded["mixed_ct"].sop in refused.json()["detail"]


def test_a_remote_worker_gets_the_series_as_stored(loaded: Loaded) -> None:
    """Found in review: the remote worker's client sent no transfer syntax, so once the default became
    Explicit VR LE the node re-encoded every compressed series it handed out (and refused Big Endian)."""
    study, series = loaded.mixed
    response = get(f"{loaded.base}/studies/{study}/series/{series}", SERIES_ACCEPT)
    assert response.status_code == 200, response.text
    assert {ct.split("=", 1)[1] for ct, _ in parts(response)} == {J2K, EXPLICIT}


@pytest.mark.parametrize(("name", "accept", "offered"), [
    ("j2k", dicom(JPEG_BASELINE), (J2K, EXPLICIT, IMPLICIT)),
    ("ct", dicom(JPEG_BASELINE), (EXPLICIT, IMPLICIT)),
    ("ct", dicom("1.2.840.10008.1.2.4.90"), (EXPLICIT, IMPLICIT)),
    ("big_endian", dicom(), (BIG_ENDIAN,)),  # not re-encoded: raw values would need swapping one by one
    ("j2k", f"{dicom(JPEG_BASELINE)}, {dicom('*')}; q=0", (J2K, EXPLICIT, IMPLICIT)),
])
def test_a_syntax_it_cannot_give_is_406_naming_those_it_can(loaded: Loaded, name: str, accept: str,
                                                             offered: tuple[str, ...]) -> None:
    response = get(loaded[name].url, accept)
    assert response.status_code == 406
    detail = response.json()["detail"]
    assert all(syntax in detail for syntax in offered), detail
    assert "transfer-syntax=*" in detail


@pytest.mark.parametrize("accept", [
    'multipart/related; type="application/octet-stream"',
    'multipart/related; type="image/jpeg"',
    "application/dicom",  # single part: not offered
    "image/png",
])
def test_retrieve_refuses_part_types_it_does_not_produce(loaded: Loaded, accept: str) -> None:
    response = get(loaded["ct"].url, accept)
    assert response.status_code == 406
    assert 'type="application/dicom"' in response.json()["detail"]


def test_dicomweb_client_gets_the_syntax_it_asks_for(loaded: Loaded) -> None:
    """The probe's case: dicomweb-client asking for Explicit VR LE got JPEG 2000 labelled as success."""
    j2k = loaded["j2k"].ds
    web = DICOMwebClient(url=loaded.base)
    got = web.retrieve_instance(j2k.StudyInstanceUID, j2k.SeriesInstanceUID, j2k.SOPInstanceUID,
                                media_types=(("application/dicom", EXPLICIT),))
    assert got.file_meta.TransferSyntaxUID == EXPLICIT
    np.testing.assert_array_equal(got.pixel_array, j2k.pixel_array)
    as_stored = web.retrieve_instance(j2k.StudyInstanceUID, j2k.SeriesInstanceUID, j2k.SOPInstanceUID,
                                      media_types=(("application/dicom", "*"),))
    assert as_stored.file_meta.TransferSyntaxUID == J2K


def frames(loaded: Loaded, name: str, numbers: str, accept: str | None = OHIF_FRAMES) -> list[bytes]:
    response = get(f"{loaded[name].url}/frames/{numbers}", accept)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith('multipart/related; type="application/octet-stream"')
    found = parts(response)
    assert all(ct == f"application/octet-stream; transfer-syntax={EXPLICIT}" for ct, _ in found)
    return [content for _, content in found]


def bits(frame: bytes, rows: int, columns: int) -> np.ndarray:
    """A 1-bit frame unpacked: the first pixel in the least significant bit (PS3.5 8.1.1)."""
    assert len(frame) == (rows * columns + 7) // 8
    unpacked = np.unpackbits(np.frombuffer(frame, np.uint8), bitorder="little")
    return unpacked[: rows * columns].reshape(rows, columns)


def test_frames_of_the_nodes_own_binary_seg_are_its_bits_packed(loaded: Loaded) -> None:
    seg = loaded["own_seg"].ds
    masks = pixel_array(seg)
    assert masks.shape == (3, 30, 30) and all(mask.any() for mask in masks)  # a frame on each slice with a stone
    got = frames(loaded, "own_seg", "1,2,3")
    assert [len(f) for f in got] == [113] * 3  # 900 bits in whole bytes; stored, frames 2 and 3 start mid-byte
    for frame, mask in zip(got, masks, strict=True):
        np.testing.assert_array_equal(bits(frame, 30, 30), mask)


def test_frames_of_a_one_bit_seg_from_elsewhere(loaded: Loaded) -> None:
    liver = loaded["liver"].ds
    got = frames(loaded, "liver", "1,2,3", accept=None)
    assert [len(f) for f in got] == [512 * 512 // 8] * 3
    for index, frame in enumerate(got):
        np.testing.assert_array_equal(bits(frame, 512, 512), pixel_array(liver, index=index))
    # the metadata's PixelData BulkDataURI is that same frames resource, fetched as dicomweb-client's
    # retrieve_bulkdata asks for it
    (found,) = get(f"{loaded['liver'].url}/metadata", "application/dicom+json").json()
    bulk = get(found["7FE00010"]["BulkDataURI"], 'multipart/related; type="*/*"')
    assert [content for _, content in parts(bulk)] == got
    compressed = frames(loaded, "j2k_seg", "2,3")  # stored as JPEG 2000: decoded, then packed
    for frame, mask in zip(compressed, loaded.j2k_seg_mask[1:], strict=True):
        np.testing.assert_array_equal(bits(frame, 36, 36), mask)


@pytest.mark.parametrize(("name", "numbers"), [
    ("ct", "1"), ("j2k", "1"), ("implicit", "1"), ("deflated", "1"), ("j2k_frames", "3,1,10"), ("rle_rgb", "2"),
])
def test_grey_and_rgb_frames_are_the_decoded_values(loaded: Loaded, name: str, numbers: str) -> None:
    sent = loaded[name].ds
    for number, frame in zip(numbers.split(","), frames(loaded, name, numbers), strict=True):
        assert frame == pixel_array(sent, index=int(number) - 1).tobytes()


def test_big_endian_frames_are_little_endian(loaded: Loaded) -> None:
    (frame,) = frames(loaded, "big_endian", "1")
    little = pydicom.dcmread(pydicom_test_file("MR_small.dcm"))  # the same image, little endian
    assert frame == little.PixelData


def metadata(loaded: Loaded, name: str) -> dict[str, dict[str, list[object]]]:
    ds = loaded[name].ds
    response = get(f"{loaded.base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata",
                   "application/dicom+json")
    assert response.status_code == 200, response.text
    (found,) = response.json()
    return dict(found)


@pytest.mark.parametrize(("name", "photometric", "planar", "raw"), [
    ("ybr_full", "YBR_FULL", 0, True),  # kept: the frame is the decoded YCbCr, as the metadata says
    ("ybr_422", "RGB", 0, False),  # the decoders give RGB: the metadata says RGB
    ("ybr_rct", "RGB", 0, False),
    ("rle_rgb", "RGB", 0, False),
])
def test_colour_frames_are_what_the_metadata_says(loaded: Loaded, name: str, photometric: str, planar: int,
                                                  raw: bool) -> None:
    sent = loaded[name].ds
    found = metadata(loaded, name)
    assert (found["00280004"]["Value"], found["00280006"]["Value"]) == ([photometric], [planar])
    (instance_found,) = get(f"{loaded[name].url}/metadata", "application/dicom+json").json()
    assert instance_found["00280004"]["Value"] == [photometric]
    (frame,) = frames(loaded, name, "1")
    assert frame == pixel_array(sent, index=0, raw=raw).tobytes()
    _, whole = instance(get(loaded[name].url, dicom("*")))  # the stored instance is unchanged
    assert whole.PhotometricInterpretation == sent.PhotometricInterpretation


def test_compressed_colour_frames_are_laid_out_by_plane_when_the_metadata_says_so(loaded: Loaded) -> None:
    assert metadata(loaded, "rle_planar")["00280006"]["Value"] == [1]
    (frame,) = frames(loaded, "rle_planar", "2")
    by_pixel = pixel_array(loaded["rle_planar"].ds, index=1)
    assert frame == np.moveaxis(by_pixel, -1, 0).tobytes()


def test_a_metadata_cache_of_the_former_format_is_stale(loaded: Loaded) -> None:
    """A node upgraded over its data: the series cache it wrote before says YBR_FULL_422."""
    metadata(loaded, "ybr_422")  # cached now
    (cache,) = [p for p in loaded.node.data_dir.rglob(".metadata.json")
                if loaded["ybr_422"].sop in p.read_text(encoding="utf-8")]
    key, _, text = cache.read_text(encoding="utf-8").partition("\n")
    former_key = key.split(":", 1)[1]  # without the format
    cache.write_text(former_key + "\n" + text.replace('"RGB"', '"YBR_FULL_422"'), encoding="utf-8")
    assert metadata(loaded, "ybr_422")["00280004"]["Value"] == ["RGB"]
    assert metadata(loaded, "ct")["00280004"]["Value"] == ["MONOCHROME2"]  # others as stored


@pytest.mark.parametrize("accept", [
    None,
    "*/*",
    OHIF_FRAMES,
    'multipart/related; type="application/octet-stream"',
    f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT}',
    'multipart/related; type="*/*"',  # dicomweb-client's retrieve_bulkdata
    f'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.80, {OHIF_FRAMES}',
])
def test_frames_go_as_octet_stream_when_that_is_acceptable(loaded: Loaded, accept: str | None) -> None:
    assert frames(loaded, "j2k", "1", accept) == [pixel_array(loaded["j2k"].ds).tobytes()]


@pytest.mark.parametrize("accept", [
    'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.80',
    'multipart/related; type="image/jp2"',
    f'multipart/related; type="image/jp2"; transfer-syntax={J2K}',
    'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.80',
    'multipart/related; type="application/dicom"',
    f"{OHIF_FRAMES}; q=0",
    "application/octet-stream",  # single part: not offered
])
def test_frames_refuse_what_they_do_not_produce(loaded: Loaded, accept: str) -> None:
    response = get(f"{loaded['j2k'].url}/frames/1", accept)
    assert response.status_code == 406
    assert f"transfer-syntax={EXPLICIT}" in response.json()["detail"]


@pytest.mark.parametrize(("accept", "status"), [
    ("application/dicom+json", 200),
    ("application/json", 200),
    ("application/*", 200),
    (None, 200),
    ("application/dicom+xml, application/json; q=0.5", 200),
    ("application/dicom+xml", 406),
    ('multipart/related; type="application/dicom+xml"', 406),
    ("application/json; q=0", 406),
])
def test_metadata_is_dicom_json_also_for_application_json(loaded: Loaded, accept: str | None, status: int) -> None:
    for url in (f"{loaded['ct'].url}/metadata", f"{loaded.base}/studies/{loaded['ct'].ds.StudyInstanceUID}/metadata"):
        response = get(url, accept)
        assert response.status_code == status, (url, response.text)
        if status == 200:
            assert response.headers["content-type"] == "application/dicom+json"
            assert response.json()[0]["00080018"]["Value"] == [loaded["ct"].sop]


def test_an_instance_that_cannot_be_decoded_mid_series_goes_as_stored(loaded: Loaded) -> None:
    """Found in review: once a series' answer had begun, an instance whose re-encoding failed raised inside
    the stream, cutting the body short and every part after it. It now goes as stored, its part saying so;
    alone, it is still a 500 with the reason."""
    study, series = uid("broken", "study"), uid("broken", "series")
    broken = _with_uids(pydicom.dcmread(pydicom_test_file("JPEG2000.dcm")), study, series, uid("broken", "sop"))
    (frame,) = pydicom.encaps.generate_frames(broken.PixelData, number_of_frames=1)
    broken.PixelData = pydicom.encaps.encapsulate([frame[:16] + b"\x00" * (len(frame) - 16)])
    fine = _with_uids(pydicom.dcmread(pydicom_test_file("CT_small.dcm")), study, series, uid("broken", "ct"))
    boundary = "broken-part"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + _as_file(ds) + b"\r\n"
                    for ds in (broken, fine)) + f"--{boundary}--\r\n".encode()
    stored = httpx.post(f"{loaded.base}/studies", content=body, timeout=60, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert stored.status_code == 200, stored.text
    response = get(f"{loaded.base}/studies/{study}/series/{series}", dicom())
    assert response.status_code == 200
    got = sorted(ct.split("=", 1)[1] for ct, _ in parts(response))  # parts() checks the closing boundary
    assert got == sorted([J2K, EXPLICIT])
    alone = get(f"{loaded.base}/studies/{study}/series/{series}/instances/{broken.SOPInstanceUID}", dicom())
    assert alone.status_code == 500 and "could not be decoded" in alone.json()["detail"]
