"""The one ingest path: every verdict, from the same instance bytes the services hand it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from tests.factory import ct_slice, pydicom_test_file
from tests.uronode.test_store import encoded
from uronode import queries
from uronode.ingest import Expected, Verdict, take_instance
from uronode.store import Store
from uronode.types import StoreOutcome

SYNTAX = "1.2.840.10008.1.2.1"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


def test_an_instance_from_the_listener_is_stored_once(store: Store) -> None:
    parts = encoded(0)
    report = take_instance(store, parts, source="CT1", transfer_syntax_uid=SYNTAX)
    assert report.verdict is Verdict.STORED and report.stored and report.reason is None
    assert report.outcome is StoreOutcome.STORED and report.header is not None
    stored = store.get_instance(report.header.sop_instance_uid)
    assert stored is not None and stored.calling_ae == "CT1" and stored.path.read_bytes() == b"".join(parts)
    again = take_instance(store, [b"".join(parts)], source="STOW-RS")  # the same bytes as one file
    assert again.verdict is Verdict.STORED and again.outcome is StoreOutcome.DUPLICATE


def test_what_the_request_says_must_match(store: Store) -> None:
    parts = encoded(0)
    other_class = take_instance(store, parts, source="CT1", transfer_syntax_uid=SYNTAX,
                                expected=Expected(sop_class_uid="1.2.840.10008.5.1.4.1.1.4"))
    assert other_class.verdict is Verdict.DOES_NOT_MATCH and not other_class.stored
    assert other_class.reason == "the data set's SOP Class UID differs from the request's"
    assert other_class.header is not None
    other_sop = take_instance(store, parts, source="CT1", transfer_syntax_uid=SYNTAX,
                              expected=Expected(sop_instance_uid="1.2.3.999"))
    assert other_sop.reason == "the data set's SOP Instance UID differs from the request's"
    other_study = take_instance(store, [b"".join(parts)], source="STOW-RS", expected=Expected(study_instance_uid="9.9"))
    assert other_study.reason == "its Study Instance UID is not the study of the request"
    assert queries.count_instances(store.db) == 0


def test_damaged_or_foreign_content_cannot_be_understood(store: Store) -> None:
    meta, body = encoded(0)
    cut = take_instance(store, [meta, body[: len(body) // 2]], source="CT1", transfer_syntax_uid=SYNTAX)
    assert cut.verdict is Verdict.CANNOT_UNDERSTAND and cut.reason is not None and "truncated" in cut.reason
    assert take_instance(store, [b""], source="UPLOAD").reason == "an empty file (0 bytes)"
    assert take_instance(store, [b"hello"], source="UPLOAD").reason == "not a DICOM file (no DICM prefix)"
    # "BM" alone is no BMP (review 19): a file that only starts so is not DICOM, and no picture either
    assert take_instance(store, [b"BMW service notes"], source="UPLOAD").reason == "not a DICOM file (no DICM prefix)"
    pictures = {b"\xff\xd8\xff\xe0": "JPEG", b"GIF89a": "GIF", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
                b"RIFF\x00\x00\x00\x00WEBP": "WebP", b"\x89PNG\r\n\x1a\n": "PNG",
                b"BM" + (314).to_bytes(4, "little") + bytes(4) + (54).to_bytes(4, "little"): "BMP"}
    for magic, kind in pictures.items():  # the paper's users export pictures: the refusal says what to send
        content = (magic + bytes(314))[:314] if kind == "BMP" else magic + bytes(300)
        reason = take_instance(store, [content], source="UPLOAD").reason
        assert reason == (f"a picture ({kind}), not a DICOM file: the node reads DICOM images; export the image as"
                          " DICOM from the PACS or the viewer"), reason
    # probe 56: a zipped folder got "no DICM prefix" alone
    for head in (b"PK\x03\x04", b"PK\x05\x06"):
        assert take_instance(store, [head + bytes(100)], source="UPLOAD").reason == (
            "a ZIP archive, not a DICOM file: unzip it and choose the folder it holds")
    bare = take_instance(store, [b"hello"], source="STOW-RS", bare_data_sets=True)
    assert bare.verdict is Verdict.CANNOT_UNDERSTAND and bare.reason is not None
    assert bare.reason.startswith("not a DICOM data set")
    assert queries.count_instances(store.db) == 0


def test_a_dicomdir_uploaded_with_a_cd_s_images_is_named_as_what_it_is(store: Store) -> None:
    """A CD or a PACS export folder holds a DICOMDIR beside its images; uploaded with them it was refused as
    "SOPClassUID is missing", which sends the user looking for a broken file."""
    dicomdir = pydicom_test_file("DICOMDIR").read_bytes()
    report = take_instance(store, [dicomdir], source="UPLOAD")
    assert report.verdict is Verdict.CANNOT_UNDERSTAND
    assert report.reason is not None and report.reason.startswith("a DICOMDIR, the index of a CD or folder")
    assert queries.count_instances(store.db) == 0


def test_a_bare_data_set_gets_its_file_meta_sent_or_uploaded(store: Store) -> None:
    """Files without preamble and File Meta (old CD exports, some scanners) are read as what they are, from
    STOW-RS and from the upload alike; the upload refused them as no DICOM."""
    ds = ct_slice("1.2.3", "1.2.3.4", 0)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    report = take_instance(store, [fp.getvalue()], source="STOW-RS", bare_data_sets=True)
    assert report.verdict is Verdict.STORED and report.header is not None
    stored = store.get_instance(report.header.sop_instance_uid)
    assert stored is not None and stored.path.read_bytes()[128:132] == b"DICM"
    uploaded = take_instance(store, [fp.getvalue()], source="UPLOAD")
    assert uploaded.stored and uploaded.header is not None
    assert uploaded.header.sop_instance_uid == report.header.sop_instance_uid  # the same instance again
    # a damaged bare data set is refused with what is wrong with it, not as no DICOM
    cut = take_instance(store, [fp.getvalue()[:-7]], source="UPLOAD")
    assert cut.verdict is Verdict.CANNOT_UNDERSTAND and cut.reason is not None
    assert cut.reason != "not a DICOM file (no DICM prefix)"


def test_padding_after_the_last_element_is_stored_with_the_warning(store: Store) -> None:
    meta, body = encoded(0)
    report = take_instance(store, [meta, body + b"\x00\x00"], source="CT1", transfer_syntax_uid=SYNTAX)
    assert report.verdict is Verdict.STORED_WITH_WARNING and report.stored
    assert report.reason is not None and "zero byte" in report.reason


def test_a_disk_that_cannot_take_it_is_out_of_resources(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", max_disk_used_percent=0)  # every disk is over a 0 % watermark
    report = take_instance(store, encoded(0), source="CT1", transfer_syntax_uid=SYNTAX)
    assert report.verdict is Verdict.OUT_OF_RESOURCES and not report.stored
    assert report.reason is not None and "watermark" in report.reason
    assert queries.count_instances(store.db) == 0
    assert not subprocess.run(["find", str(store.instances_dir), "-type", "f"], capture_output=True,
                              text=True, check=True).stdout
