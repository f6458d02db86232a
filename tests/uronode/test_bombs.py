"""Instances that claim far more memory than they carry are refused at ingest, before anything believes them.

Two claims, each a few hundred kilobytes or bytes on the wire (found by a
security probe, probe6):

- a deflated data set (Deflated Explicit VR Little Endian) that inflates
  1000:1: refused once it inflates past the bound, which is enforced while
  inflating, so the node never holds more than the bound;
- pixel data claiming Rows x Columns x frames that no modality makes: a
  decoder allocates the claim before it finds the compressed data short.

Built from real bytes: pydicom writes the instances, zlib deflates them. One
test sends the bomb over C-STORE (pynetdicom, byte for byte) to a node
started as in production and checks it answers C000 with the reason and
goes on serving.
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from tests.conftest import FAST_COMPLETION, query
from tests.factory import ct_slice, pydicom_test_file, uid
from tests.peers.processes import Node, free_port
from tests.robustness.senders import as_file, raw_scu, running_node, still_serves
from uronode import queries
from uronode.dicomfile import encode_file_meta
from uronode.errors import MalformedDataSet
from uronode.ingest import Verdict, take_instance
from uronode.store import Store
from uronode.structure import (
    INFLATE_FLOOR,
    MAX_DEFLATE_RATIO,
    MAX_FRAME_PIXELS,
    check_data_set,
    inflate,
    inflate_limit,
)

DEFLATED = str(DeflatedExplicitVRLittleEndian)
BOMB_INFLATED = 256 * 1024**2
"""What the bomb inflates to: four times the floor it is refused at (a quarter of a GiB, ~260 KB deflated)."""
CANNOT_UNDERSTAND = 0xC000


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


def encode(ds: Dataset) -> bytes:
    """The data set's bytes, explicit VR little endian, without preamble or File Meta."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def a_slice(index: int, size: int = 32) -> Dataset:
    return ct_slice(uid("bombs", "study"), uid("bombs", "series"), index, size=size)


@pytest.fixture(scope="module")
def bomb() -> tuple[Dataset, bytes]:
    """A valid CT slice, then a private OB element of BOMB_INFLATED zeros, deflated (about 1000:1)."""
    ds = a_slice(900)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [packer.compress(encode(ds) + struct.pack("<HH2sHI", 0x0011, 0x1010, b"OB", 0, BOMB_INFLATED))]
    zeros = bytes(16 * 1024**2)
    chunks += [packer.compress(zeros) for _ in range(BOMB_INFLATED // len(zeros))]
    chunks.append(packer.flush())
    return ds, b"".join(chunks)


def nothing_stored(store: Store) -> bool:
    return queries.count_instances(store.db) == 0 and not list(store.root.rglob("*.dcm"))


# -- the deflate bomb ----------------------------------------------------------------------------


def test_the_bound_is_relative_with_a_floor_and_absolute() -> None:
    assert inflate_limit(1000) == INFLATE_FLOOR  # a small object packs as well as it likes
    assert inflate_limit(10 * 1024**2) == MAX_DEFLATE_RATIO * 10 * 1024**2
    assert inflate_limit(100 * 1024**2) == 2 * 1024**3  # never more than the instance limit
    assert inflate_limit(100 * 1024**2, max_instance_bytes=1024**3) == 1024**3


@pytest.mark.parametrize("form", ["listener", "whole file"])
def test_a_deflate_bomb_is_refused_with_the_bound_and_nothing_is_stored(
    store: Store, bomb: tuple[Dataset, bytes], form: str
) -> None:
    ds, deflated = bomb
    meta = encode_file_meta(CTImageStorage, str(ds.SOPInstanceUID), DEFLATED)
    tracemalloc.start()
    try:
        if form == "listener":  # as C-STORE hands it over: our File Meta, the data set, the negotiated syntax
            report = take_instance(store, [meta, deflated], source="CT1", transfer_syntax_uid=DEFLATED)
        else:  # as STOW-RS and the upload hand it over: one file
            report = take_instance(store, [meta + deflated], source="STOW-RS", bare_data_sets=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.verdict is Verdict.CANNOT_UNDERSTAND
    assert report.reason is not None
    assert report.reason.startswith(f"the deflated data set inflates to more than {INFLATE_FLOOR} bytes")
    assert nothing_stored(store)
    # the bound is enforced while inflating: never more than it was held, not the quarter GiB claimed
    assert peak < INFLATE_FLOOR + 32 * 1024**2 < BOMB_INFLATED


def test_a_bare_data_set_with_a_deflated_file_meta_is_bounded_before_pydicom_reads_it(
    store: Store, bomb: tuple[Dataset, bytes]
) -> None:
    """A File Meta group without preamble: pydicom, forced, would inflate all of it to re-encode it."""
    ds, deflated = bomb
    meta = encode_file_meta(CTImageStorage, str(ds.SOPInstanceUID), DEFLATED)[128 + 4 :]
    tracemalloc.start()
    try:
        report = take_instance(store, [meta + deflated], source="STOW-RS", bare_data_sets=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.verdict is Verdict.CANNOT_UNDERSTAND
    assert report.reason is not None and report.reason.startswith("the deflated data set inflates to more than")
    assert nothing_stored(store)
    assert peak < INFLATE_FLOOR + 32 * 1024**2


def test_inflate_stops_at_its_limit() -> None:
    data = deflate(bytes(4 * 1024**2))
    with pytest.raises(MalformedDataSet, match="inflates to more than 1048576 bytes"):
        inflate(data, max_instance_bytes=1024**2)
    assert inflate(data) == bytes(4 * 1024**2)
    with pytest.raises(MalformedDataSet, match="cannot be inflated: incomplete or truncated stream"):
        inflate(data[:-5])


def test_the_setting_bounds_a_deflated_instance_below_the_default(store: Store) -> None:
    ds = a_slice(1, size=512)  # 512 KB of pixels, deflated a few times
    parts = [encode_file_meta(CTImageStorage, str(ds.SOPInstanceUID), DEFLATED), deflate(encode(ds))]
    small = take_instance(store, parts, source="CT1", transfer_syntax_uid=DEFLATED, max_instance_bytes=256 * 1024)
    assert small.verdict is Verdict.CANNOT_UNDERSTAND
    assert small.reason is not None and small.reason.startswith("the deflated data set inflates to more than 262144")
    assert nothing_stored(store)


def test_legitimate_deflated_instances_are_still_taken(store: Store) -> None:
    ds = a_slice(2, size=256)
    body = deflate(encode(ds))
    meta = encode_file_meta(CTImageStorage, str(ds.SOPInstanceUID), DEFLATED)
    listener = take_instance(store, [meta, body], source="CT1", transfer_syntax_uid=DEFLATED)
    assert listener.verdict is Verdict.STORED, listener.reason
    assert listener.header is not None and listener.header.transfer_syntax_uid == DEFLATED
    assert listener.header.sop_instance_uid == ds.SOPInstanceUID
    real = pydicom_test_file("image_dfl.dcm").read_bytes()  # pydicom's deflated sample, as one file
    whole = take_instance(store, [real], source="STOW-RS")
    assert whole.verdict is Verdict.STORED, whole.reason
    assert whole.header is not None and whole.header.transfer_syntax_uid == DEFLATED
    bare = take_instance(store, [real[128 + 4 :]], source="STOW-RS", bare_data_sets=True)  # File Meta, no preamble
    assert bare.stored, bare.reason


# -- pixel data claiming more than any modality makes ------------------------------------------


def rle_claim(rows: int, columns: int, frames: int = 1) -> Dataset:
    """A CT slice in RLE Lossless whose one tiny fragment claims ``rows`` x ``columns`` x ``frames``."""
    ds = a_slice(3)
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    segment = bytes([1, 0, 0])  # a literal run of two bytes
    header = struct.pack("<16I", 2, 64, 67, *([0] * 13))
    ds.PixelData = encapsulate([header + segment + segment + b"\0"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def as_file_bytes(ds: Dataset, syntax: str) -> bytes:
    return encode_file_meta(CTImageStorage, str(ds.SOPInstanceUID), syntax) + encode(ds)


def test_rle_pixel_data_claiming_30000_by_30000_is_refused(store: Store) -> None:
    ds = rle_claim(30000, 30000)
    data = as_file_bytes(ds, RLELossless)
    assert len(data) < 2000
    report = take_instance(store, [data], source="CT1")
    assert report.verdict is Verdict.CANNOT_UNDERSTAND
    assert report.reason is not None and report.reason.startswith("a frame of 30000 x 30000 pixels")
    assert nothing_stored(store)


def test_native_pixel_data_claiming_a_huge_frame_is_refused_for_its_size(store: Store) -> None:
    ds = a_slice(4)
    ds.Rows = ds.Columns = 30000  # 1.8 GB claimed, 2 KB sent
    report = take_instance(store, [as_file_bytes(ds, "1.2.840.10008.1.2.1")], source="CT1")
    assert report.reason is not None and report.reason.startswith("a frame of 30000 x 30000 pixels")
    assert nothing_stored(store)


def test_compressed_frames_decoding_past_the_instance_limit_are_refused(store: Store) -> None:
    ds = rle_claim(4096, 4096, frames=100)  # 4096 x 4096 x 100 x 16 bits: 3.4 GB decoded
    data = encode_file_meta(CTImageStorage, str(ds.SOPInstanceUID), JPEG2000Lossless) + encode(ds)
    report = take_instance(store, [data], source="CT1")
    assert report.reason is not None
    assert report.reason.startswith(f"pixel data claiming {4096 * 4096 * 100 * 2} bytes decoded, more than")
    assert nothing_stored(store)


def test_rle_claiming_more_than_rle_can_pack_is_refused(store: Store) -> None:
    report = take_instance(store, [as_file_bytes(rle_claim(2048, 2048), RLELossless)], source="CT1")
    assert report.reason is not None and report.reason.startswith("RLE pixel data of ")
    assert "cannot decode to the 8388608 bytes" in report.reason
    assert nothing_stored(store)


def test_the_largest_frame_any_modality_makes_is_taken() -> None:
    """A 4728 x 5928 mammogram (Fujifilm's 50 micron detector) and 8192 x 8192 pass; one pixel more does not."""
    for rows, columns in ((5928, 4728), (8192, 8192)):
        ds = rle_claim(rows, columns)
        ds.PixelData = encapsulate([bytes(rows * columns * 2 // 60)])  # as much as RLE needs, at most
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        check_data_set(encode(ds), JPEG2000Lossless)
        check_data_set(encode(ds), RLELossless)
    too_wide = rle_claim(8192, 8193)
    with pytest.raises(MalformedDataSet, match=f"at most {MAX_FRAME_PIXELS} pixels a frame"):
        check_data_set(encode(too_wide), JPEG2000Lossless)


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "emri_small_RLE.dcm", "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm", "CT_small.dcm"]
)
def test_real_images_are_still_taken(store: Store, name: str) -> None:
    report = take_instance(store, [pydicom_test_file(name).read_bytes()], source="UPLOAD")
    assert report.stored, report.reason


# -- over C-STORE, to a running node ----------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from running_node(tmp_path_factory.mktemp("bombs"), dict(FAST_COMPLETION))


def test_a_c_store_deflate_bomb_answers_c000_and_the_node_goes_on(
    node: Node, tmp_path: Path, bomb: tuple[Dataset, bytes]
) -> None:
    ds, deflated = bomb
    path = as_file(tmp_path, "bomb", CTImageStorage, str(ds.SOPInstanceUID), deflated, DEFLATED)
    claim = rle_claim(30000, 30000)
    claim_path = as_file(tmp_path, "claim", CTImageStorage, str(claim.SOPInstanceUID), encode(claim), RLELossless)
    with raw_scu(node, CTImageStorage, syntax=DEFLATED) as assoc:
        response = assoc.send_c_store(path)
    with raw_scu(node, CTImageStorage, syntax=RLELossless) as assoc:
        claimed = assoc.send_c_store(claim_path)
    assert response.Status == CANNOT_UNDERSTAND
    assert response.ErrorComment.startswith("the deflated data set inflates to more than")
    assert claimed.Status == CANNOT_UNDERSTAND
    assert claimed.ErrorComment.startswith("a frame of 30000 x 30000 pixels")
    for sop in (ds.SOPInstanceUID, claim.SOPInstanceUID):
        assert query(node.data_dir, "SELECT * FROM instances WHERE sop_instance_uid = ?", sop) == []
        assert not list((node.data_dir / "instances").rglob(f"{sop}-*.dcm"))
    still_serves(node, tmp_path)


def test_the_listener_bounds_inflating_by_its_own_setting(tmp_path_factory: pytest.TempPathFactory,
                                                          tmp_path: Path) -> None:
    """``scp.max_instance_bytes`` bounds what a C-STORE's deflated data set may inflate to, not only what is
    sent: 6 MiB of zeros (a few KB sent) is taken under the default and refused under a 4 MiB setting."""
    env = {**FAST_COMPLETION, "URONODE_SCP__MAX_INSTANCE_BYTES": str(4 * 1024**2)}
    ds = a_slice(901)
    deflated = deflate(encode(ds) + struct.pack("<HH2sHI", 0x0011, 0x1010, b"OB", 0, 6 * 1024**2)
                       + bytes(6 * 1024**2))
    assert len(deflated) < 64 * 1024
    path = as_file(tmp_path, "six", CTImageStorage, str(ds.SOPInstanceUID), deflated, DEFLATED)
    for limited in (False, True):
        folder = tmp_path_factory.mktemp("limited" if limited else "default")
        node = Node(folder / "node", free_port(), free_port(),
                    extra_env=env if limited else dict(FAST_COMPLETION)).start()
        try:  # stopped whatever the asserts say
            with raw_scu(node, CTImageStorage, syntax=DEFLATED) as assoc:
                response = assoc.send_c_store(path)
        finally:
            node.stop()
        if limited:
            assert response.Status == CANNOT_UNDERSTAND
            assert response.ErrorComment.startswith("the deflated data set inflates to more than")
        else:
            assert response.Status == 0
