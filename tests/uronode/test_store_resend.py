"""An image sent again: what changes its series and what does not (probe 47).

A VNA re-sending a series losslessly compressed, or a PACS adding the Issuer of Patient ID, had every image
re-open its series: the job ran again and its results went out again with a rejection note for the earlier ones.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSNearLossless, RLELossless

from tests.factory import ct_slice
from tests.peers.processes import DCMTK_ENV, require
from tests.uronode.test_store import encoded, put
from uronode import queries
from uronode.dicomfile import encode_file_meta
from uronode.header import read_header
from uronode.store import Store
from uronode.types import StoreOutcome

STUDY, SERIES = "1.2.3", "1.2.3.4"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


def _sent(change: Callable[[Dataset], None] = lambda ds: None, *, syntax: str = ExplicitVRLittleEndian,
          seed: int = 1) -> list[bytes]:
    """The first image of the series, changed by ``change``, in ``syntax``, as the listener holds it."""
    ds = ct_slice(STUDY, SERIES, 0, seed=seed)
    change(ds)
    if syntax == RLELossless:
        ds.compress(RLELossless, generate_instance_uid=False)
    elif syntax == JPEGLSNearLossless:  # a lossy copy: pixels off by up to 3
        ds.compress(JPEGLSNearLossless, jls_error=3, generate_instance_uid=False)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return [encode_file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, "PACS"), fp.getvalue()]


def _issuer(ds: Dataset) -> None:
    ds.IssuerOfPatientID = "HOSPITAL-A"


def _lossy(ds: Dataset) -> None:
    ds.LossyImageCompression, ds.LossyImageCompressionRatio, ds.LossyImageCompressionMethod = "01", 10, "ISO_10918_1"


def _order_issuer(ds: Dataset) -> None:
    item = Dataset()
    item.LocalNamespaceEntityID = "RIS-B"
    ds.IssuerOfAccessionNumberSequence = [item]


def _coerced(ds: Dataset) -> None:
    item = Dataset()
    item.AttributeModificationDateTime, item.ModifyingSystem = "20261207120000", "PACS"
    item.ReasonForTheAttributeModification = "COERCE"
    ds.OriginalAttributesSequence = [item]


def _private(ds: Dataset) -> None:
    block = ds.private_block(0x0029, "ACME PACS 1.0", create=True)
    block.add_new(0x01, "LO", "archived 2026-12-07")


def _retrieve(ds: Dataset) -> None:
    ds.RetrieveAETitle = "VNA"
    ds.InstanceAvailability = "ONLINE"


def _description(ds: Dataset) -> None:
    ds.SeriesDescription = "Abdomen 1.0 B30f corrected"


def _series_row(store: Store) -> tuple[int, int]:
    row = queries.series_row(store.db, SERIES)
    assert row is not None
    return row["replaced_count"], row["generation"]


@pytest.mark.parametrize(("name", "again"), [
    ("losslessly compressed (RLE)", lambda: _sent(syntax=RLELossless)),
    ("with a private element of the PACS", lambda: _sent(_private)),
    ("with where to retrieve it", lambda: _sent(_retrieve)),
    ("with what the PACS coerced", lambda: _sent(_coerced)),
    ("compressed, with where to retrieve it", lambda: _sent(_retrieve, syntax=RLELossless)),
    # probe 48: a patient's CD, lossy-compressed under the original UIDs, had replaced the originals and re-run
    # the analysis on the copy; the original is kept (review 43's flag alone: the original needs no lossy caution)
    ("flagged lossy", lambda: _sent(_lossy)),
    # a lossy image never replaces a lossless one of the same header, whatever its pixels (review 46)
    ("flagged lossy over other pixels", lambda: _sent(_lossy, seed=2)),
])
def test_the_same_image_sent_again_changes_nothing(store: Store, name: str,
                                                   again: Callable[[], list[bytes]]) -> None:
    first = _sent()
    assert put(store, first) is StoreOutcome.STORED
    stored = store.get_instance(read_header(first).sop_instance_uid)
    assert stored is not None
    before = _series_row(store)
    parts = again()
    assert b"".join(parts) != b"".join(first)
    assert put(store, parts) is StoreOutcome.DUPLICATE, name
    assert _series_row(store) == before  # not re-opened: no new job, no results sent again
    kept = store.get_instance(read_header(first).sop_instance_uid)
    assert kept is not None and kept.path == stored.path and kept.path.read_bytes() == b"".join(first)
    assert len(list(kept.path.parent.iterdir())) == 1


@pytest.mark.parametrize(("name", "again"), [
    ("other pixels", lambda: _sent(seed=2)),
    ("other pixels, compressed", lambda: _sent(syntax=RLELossless, seed=2)),
    ("another Series Description", lambda: _sent(_description)),
    ("another Series Description, compressed", lambda: _sent(_description, syntax=RLELossless)),
    # review 43: what the loader reads (two issuers are two patients; the lossy caution) or the results copy
    ("with the Issuer of Patient ID", lambda: _sent(_issuer)),
    ("compressed with the Issuer of Patient ID", lambda: _sent(_issuer, syntax=RLELossless)),
    ("with the issuer of the Accession Number", lambda: _sent(_order_issuer)),
    ("a lossy copy with another Series Description", lambda: _sent(_description, syntax=JPEGLSNearLossless)),
])
def test_an_image_that_changed_replaces_and_re_opens_its_series(store: Store, name: str,
                                                                again: Callable[[], list[bytes]]) -> None:
    first = _sent()
    put(store, first)
    replaced, generation = _series_row(store)
    parts = again()
    assert put(store, parts) is StoreOutcome.REPLACED, name
    assert _series_row(store) == (replaced + 1, generation)  # re-opened (still receiving: the same generation)
    now = store.get_instance(read_header(parts).sop_instance_uid)
    assert now is not None and now.path.read_bytes() == b"".join(parts)


def test_two_identical_copies_at_once_are_one_image(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe 47: two senders storing the same image at the same moment made the second copy a replacement (its
    series counted as changed): the copy indexed between the comparison and the write is compared again."""
    parts = encoded(0, seed=1)
    compare = Store._kept
    landed: list[StoreOutcome] = []

    def racing(self: Store, *args: object, **kwargs: object) -> bool:
        kept = compare(self, *args, **kwargs)  # type: ignore[arg-type]
        if not landed:  # the other sender's copy is indexed right after this one was compared with nothing
            landed.append(StoreOutcome.STORED)
            landed.append(put(store, list(parts)))
        return kept

    monkeypatch.setattr(Store, "_kept", racing)
    assert put(store, parts) is StoreOutcome.DUPLICATE
    assert landed == [StoreOutcome.STORED, StoreOutcome.STORED]
    assert _series_row(store)[0] == 0
    (instance,) = queries.series_instances(store.db, SERIES)
    assert len(list(instance.path.parent.iterdir())) == 1  # the second copy's file taken out again


def _frames(last: int) -> Callable[[Dataset], None]:
    """Three frames, the last one's first pixel ``last``: a multi-frame image compared a frame at a time."""
    def change(ds: Dataset) -> None:
        pixels = ds.pixel_array
        stack = np.stack([pixels, pixels, pixels]).astype(pixels.dtype)
        stack[2, 0, 0] = last
        ds.NumberOfFrames = 3
        ds.PixelData = stack.tobytes()
    return change


def test_every_frame_of_a_multi_frame_image_is_compared(store: Store) -> None:
    assert put(store, _sent(_frames(7))) is StoreOutcome.STORED
    before = _series_row(store)
    assert put(store, _sent(_frames(7), syntax=RLELossless)) is StoreOutcome.DUPLICATE
    assert _series_row(store) == before
    assert put(store, _sent(_frames(8), syntax=RLELossless)) is StoreOutcome.REPLACED  # one pixel of the third


def test_a_lossless_image_replaces_a_lossy_one(store: Store) -> None:
    """The original after its lossy copy (a CD's images first, the PACS's later): the better image is kept."""
    assert put(store, _sent(syntax=JPEGLSNearLossless)) is StoreOutcome.STORED
    assert put(store, _sent()) is StoreOutcome.REPLACED


@pytest.mark.parametrize("how", ["dcmcjpeg +ee +q 75", "dcmcjpeg +ee +q 30", "dcmcjpeg +eb +q 75", "dcmcjpeg +ep +q 75",
                                 "JPEG-LS near-lossless"])
def test_a_lossy_copy_keeps_the_original(store: Store, tmp_path: Path, how: str) -> None:
    """Probe 48: a CD's lossy copy under the original UIDs replaced the original and had it analysed again. Review
    45 and 46: DCMTK's dcmcjpeg (the CD burners' kind of copy) also makes the image DERIVED, describes the
    derivation and rescales it, into 8 bits with +eb; with +ep (progressive) the node cannot decode it. A lossy
    image never replaces a lossless one of the same header, whatever its pixels; one that changes the header
    (a correction) does."""
    from lab.synth import generate_phantom, write_series

    original = write_series(generate_phantom(5, rows=128, slices=1), tmp_path / "ct")[0]
    another = write_series(generate_phantom(6, rows=128, slices=1), tmp_path / "another")[0]
    copy = tmp_path / "lossy.dcm"
    if how.startswith("dcmcjpeg"):
        subprocess.run([require("dcmcjpeg"), *how.split()[1:], "+un", str(original), str(copy)], check=True,
                       env=DCMTK_ENV)
    else:
        ds = pydicom.dcmread(original)
        ds.compress(JPEGLSNearLossless, jls_error=3, generate_instance_uid=False)
        ds.save_as(copy)
    assert put(store, [original.read_bytes()]) is StoreOutcome.STORED
    assert put(store, [copy.read_bytes()]) is StoreOutcome.DUPLICATE
    other = pydicom.dcmread(original)  # the original's header over another abdomen's pixels, lossy
    other.PixelData = pydicom.dcmread(another).PixelData
    other.compress(JPEGLSNearLossless, jls_error=3, generate_instance_uid=False)
    buffer = io.BytesIO()
    other.save_as(buffer, enforce_file_format=True)
    assert put(store, [buffer.getvalue()]) is StoreOutcome.DUPLICATE
    corrected = pydicom.dcmread(copy)  # a lossy copy that corrects the header replaces
    corrected.SeriesDescription = "Abdomen 1.0 corrected"
    corrected.save_as(buffer := io.BytesIO(), enforce_file_format=True)
    assert put(store, [buffer.getvalue()]) is StoreOutcome.REPLACED


def test_a_lossy_image_that_corrects_only_the_rescale_replaces(store: Store, tmp_path: Path) -> None:
    """Review 47 #4: a rescale changes in a lossy copy with the stored values' range (into 12 or 8 bits, or
    unsigned); one that changes alone is a correction of the HU, and was dropped as a copy."""
    from lab.synth import generate_phantom, write_series

    original = write_series(generate_phantom(5, rows=128, slices=1), tmp_path / "ct")[0]
    assert put(store, [original.read_bytes()]) is StoreOutcome.STORED
    corrected = pydicom.dcmread(original)
    corrected.RescaleIntercept = float(corrected.RescaleIntercept) + 24
    corrected.compress(JPEGLSNearLossless, jls_error=3, generate_instance_uid=False)
    corrected.save_as(buffer := io.BytesIO(), enforce_file_format=True)
    assert put(store, [buffer.getvalue()]) is StoreOutcome.REPLACED
    same = pydicom.dcmread(original)  # the same rescale written otherwise is no correction
    same.RescaleIntercept = f"{float(same.RescaleIntercept):.1f}"
    same.compress(JPEGLSNearLossless, jls_error=3, generate_instance_uid=False)
    store2 = Store(tmp_path / "other", fsync=False)
    assert put(store2, [original.read_bytes()]) is StoreOutcome.STORED
    same.save_as(buffer := io.BytesIO(), enforce_file_format=True)
    assert put(store2, [buffer.getvalue()]) is StoreOutcome.DUPLICATE
