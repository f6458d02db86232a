"""Volume loading: geometry, compressed and multi-frame inputs, duplicates, rejects with reasons."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from inference.errors import InferenceError, VolumeError
from inference.volume import group_series, load_volume
from lab.synth import Phantom, write_series
from tests.factory import pydicom_test_file


def test_series_round_trip_whatever_the_file_order(small_phantom: Phantom, small_series: list[Path]) -> None:
    shuffled = list(small_series)
    random.Random(3).shuffle(shuffled)
    volume = load_volume(shuffled)
    assert volume.hu.dtype == np.float32
    np.testing.assert_array_equal(volume.hu, small_phantom.hu)
    assert volume.shape == small_phantom.hu.shape
    assert volume.spacing == pytest.approx((2.0, small_phantom.pixel_spacing, small_phantom.pixel_spacing))
    assert np.all(np.diff(volume.offsets_mm) > 0)
    assert volume.uniform_spacing
    assert volume.series_instance_uid == small_phantom.series_instance_uid
    assert volume.frame_of_reference_uid == small_phantom.frame_of_reference_uid
    assert volume.sop_instance_uids == tuple(small_phantom.sop_instance_uid(k) for k in range(volume.shape[0]))
    assert volume.source_paths == tuple(str(p) for p in small_series)
    # voxel (0, 0, 0) sits at the phantom's origin; index_to_patient follows the rows and columns
    np.testing.assert_allclose(volume.index_to_patient(np.array([0, 0, 0])), small_phantom.origin_mm, atol=1e-3)
    np.testing.assert_allclose(
        volume.index_to_patient(np.array([1, 2, 3])) - volume.index_to_patient(np.array([0, 0, 0])),
        [3 * small_phantom.pixel_spacing, 2 * small_phantom.pixel_spacing, 2.0], atol=1e-3)


def test_rle_compressed_series_loads_the_same(small_phantom: Phantom, tmp_path: Path) -> None:
    paths = write_series(small_phantom, tmp_path, transfer_syntax_uid=RLELossless)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(load_volume(paths).hu, small_phantom.hu)


def test_jpeg2000_lossless_equals_uncompressed() -> None:
    compressed = load_volume([pydicom_test_file("693_J2KR.dcm")])
    plain = load_volume([pydicom_test_file("693_UNCR.dcm")])
    np.testing.assert_array_equal(compressed.hu, plain.hu)
    assert compressed.shape == (1, 512, 512)


def test_single_slice_uses_slice_thickness() -> None:
    path = pydicom_test_file("CT_small.dcm")
    volume = load_volume([path])
    ds = pydicom.dcmread(path)
    assert volume.shape == (1, 128, 128)
    assert volume.slice_spacing == pytest.approx(float(ds.SliceThickness))
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(volume.hu[0], expected.astype(np.float32))


def test_enhanced_ct_multiframe() -> None:
    path = pydicom_test_file("eCT_Supplemental.dcm")
    volume = load_volume([path])
    ds = pydicom.dcmread(path)
    assert volume.shape == (2, int(ds.Rows), int(ds.Columns))
    assert volume.frame_numbers in ((1, 2), (2, 1))
    assert volume.sop_instance_uids == (ds.SOPInstanceUID,) * 2
    assert np.all(np.diff(volume.offsets_mm) > 0)
    slope = float(ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleSlope)
    intercept = float(ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleIntercept)
    frame = volume.frame_numbers[0] - 1
    np.testing.assert_allclose(volume.hu[0], ds.pixel_array[frame] * slope + intercept)


def test_the_same_instance_twice_is_one_slice(small_series: list[Path]) -> None:
    volume = load_volume(small_series + small_series[:3])
    assert volume.shape[0] == len(small_series)


def test_two_instances_at_one_position_keep_the_highest_instance_number(small_series: list[Path], tmp_path: Path) -> None:
    ds = pydicom.dcmread(small_series[4])
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.InstanceNumber = 999
    ds.PixelData = (np.full((ds.Rows, ds.Columns), 1024 + 77, np.uint16)).tobytes()
    extra = tmp_path / "dup.dcm"
    ds.save_as(extra)
    for order in ([extra, *small_series], [*small_series, extra]):
        volume = load_volume(order)
        assert volume.shape[0] == len(small_series)
        assert volume.sop_instance_uids[4] == ds.SOPInstanceUID
        assert np.all(volume.hu[4] == 77)


def test_uneven_spacing_is_kept(small_phantom: Phantom, small_series: list[Path],
                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="inference.volume"):
        volume = load_volume(small_series[:5] + small_series[6:])
    assert "1 gap(s) in the slices (the widest 4.00 mm where the others are 2.00 mm): slices missing between " \
           "images" in caplog.text  # found by probing: a missing slice was an INFO line only
    assert volume.shape[0] == len(small_series) - 1
    assert not volume.uniform_spacing
    assert volume.slice_spacing == pytest.approx(2.0)
    np.testing.assert_allclose(volume.slice_extent_mm[3:6], [2.0, 3.0, 3.0])
    np.testing.assert_array_equal(volume.hu[5], small_phantom.hu[6])


Change = Callable[[int, pydicom.Dataset], None]
"""What a test does to the k-th file of a series."""


def _modified(paths: list[Path], tmp_path: Path, change: Change) -> list[Path]:
    out = []
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        change(k, ds)
        target = tmp_path / path.name
        ds.save_as(target)
        out.append(target)
    return out


def _unstated_tilt(k: int, ds: pydicom.Dataset) -> None:
    """Axial orientation, origins shifting front to back: a gantry tilt the header does not state."""
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1] + 0.8 * k, ds.ImagePositionPatient[2]]


def _sagittal(k: int, ds: pydicom.Dataset) -> None:
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]


def _coronal(k: int, ds: pydicom.Dataset) -> None:
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]


def _mixed_size(k: int, ds: pydicom.Dataset) -> None:
    if k == 2:
        ds.Rows = 64
        ds.PixelData = ds.PixelData[: 64 * ds.Columns * 2]


def _mixed_orientation(k: int, ds: pydicom.Dataset) -> None:
    if k == 2:
        ds.ImageOrientationPatient = [0.9962, 0.0872, 0, -0.0872, 0.9962, 0]


def _no_pixels(k: int, ds: pydicom.Dataset) -> None:
    if k == 1:
        del ds.PixelData


def _mr(k: int, ds: pydicom.Dataset) -> None:
    ds.Modality = "MR"


def _localizer(k: int, ds: pydicom.Dataset) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]


def _two_series(k: int, ds: pydicom.Dataset) -> None:
    if k == 0:
        ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".1"


def _frames_in_one_ct_image(k: int, ds: pydicom.Dataset) -> None:
    """Found by probing other sites' exports: read as its first frame only, and "no stone" reported."""
    if k == 1:
        ds.NumberOfFrames = 3
        ds.PixelData = ds.PixelData * 3


def _unsigned_without_intercept(k: int, ds: pydicom.Dataset) -> None:
    """Found by probing: stored values read as HU, every tissue 1,024 HU too dense, and "no stone"."""
    assert ds.PixelRepresentation == 0
    del ds.RescaleIntercept


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_unstated_tilt, "tilted gantry"),
        (_sagittal, "not axial"),
        (_coronal, "not axial"),
        (_mixed_size, "mixed sizes"),
        (_mixed_orientation, "mixed image orientations"),
        (_mr, "not CT"),
        (_two_series, "2 different series"),
        (_frames_in_one_ct_image, "3 frames but one position"),
        (_unsigned_without_intercept, "no RescaleIntercept and unsigned pixel values"),
    ],
)
def test_rejects_with_a_reason(small_series: list[Path], tmp_path: Path, change: Change, reason: str) -> None:
    paths = _modified(small_series[:4], tmp_path, change)
    with pytest.raises(VolumeError, match=reason) as info:
        load_volume(paths)
    assert isinstance(info.value, InferenceError)
    assert reason in info.value.reason


@pytest.mark.parametrize("change", [_sagittal, _coronal])
def test_a_lone_slice_is_read_in_any_plane(small_series: list[Path], tmp_path: Path, change: Change) -> None:
    """One slice (sent twice, even) in a sagittal or coronal plane: read in its plane; a stack of them is not."""
    (path,) = _modified(small_series[:1], tmp_path, change)
    for given in ([path], [path, path]):
        volume = load_volume(given)
        assert volume.shape[0] == 1 and volume.tilt_deg == pytest.approx(90.0)
        np.testing.assert_array_equal(volume.hu[0], load_volume(small_series[:1]).hu[0])


@pytest.mark.parametrize(("change", "said"), [(_localizer, "is a localizer"), (_no_pixels, "has no pixel data"),
                                             (_mr, "is not CT")])
def test_an_instance_that_is_no_slice_is_left_out_and_the_rest_read(
        small_phantom: Phantom, small_series: list[Path], tmp_path: Path, change: Change, said: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Found by probing: a scout, a dose report or a raw-data object in the series failed the whole job
    (completion makes a job for a series that is not all localizers)."""
    def one(k: int, ds: pydicom.Dataset) -> None:
        if k == 1:
            change(k, ds)

    paths = _modified(small_series[:4], tmp_path, one)
    with caplog.at_level("WARNING", logger="inference.volume"):
        volume = load_volume(paths)
    assert volume.shape[0] == 3
    assert volume.sop_instance_uids == tuple(small_phantom.sop_instance_uid(k) for k in (0, 2, 3))
    np.testing.assert_array_equal(volume.hu, small_phantom.hu[[0, 2, 3]])
    assert "left out 1 instance(s)" in caplog.text and said in caplog.text
    (tmp_path / "all").mkdir()
    with pytest.raises(VolumeError, match=f"{said}.*and 1 more like it"):
        load_volume(_modified(small_series[:2], tmp_path / "all", lambda k, ds: change(1, ds)))


def test_signed_values_without_a_rescale_are_the_hu_themselves(small_phantom: Phantom, small_series: list[Path],
                                                               tmp_path: Path) -> None:
    def signed(k: int, ds: pydicom.Dataset) -> None:
        values = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        ds.PixelRepresentation = 1
        ds.PixelData = values.astype(np.int16).tobytes()
        del ds.RescaleIntercept, ds.RescaleSlope

    np.testing.assert_array_equal(load_volume(_modified(small_series, tmp_path, signed)).hu, small_phantom.hu)


def test_rejects_non_dicom_and_empty(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(VolumeError, match="cannot be read as DICOM"):
        load_volume([junk])
    with pytest.raises(VolumeError, match="no instances"):
        load_volume([])
    with pytest.raises(VolumeError, match="not CT"):
        load_volume([pydicom_test_file("MR_small.dcm")])


def test_group_series_skips_other_files(small_series: list[Path], tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    groups = group_series([small_series[0].parent, tmp_path])
    assert list(groups.values()) == [sorted(small_series)]


@pytest.mark.parametrize("implicit", [True, False])
def test_bare_data_sets_without_preamble_are_read_as_what_they_are(small_phantom: Phantom, small_series: list[Path],
                                                                    tmp_path: Path, implicit: bool) -> None:
    """Found by probing: files without the preamble and File Meta group (older software writes them; the
    node's STOW-RS takes them) were skipped as "not DICOM", and `uronode predict` said no DICOM files found."""
    bare = []
    for path in small_series:
        ds = pydicom.dcmread(path)
        ds.preamble = None
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        target = tmp_path / path.name
        pydicom.dcmwrite(target, ds, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
        assert target.read_bytes()[128:132] != b"DICM"
        bare.append(target)
    for name in ("photo.jpg", "notes.txt", "empty.dcm"):
        (tmp_path / name).write_bytes(b"\xff\xd8\xff\xe0 not a data set" * (name != "empty.dcm"))
    assert list(group_series([tmp_path]).values()) == [sorted(bare)]
    np.testing.assert_array_equal(load_volume(bare).hu, small_phantom.hu)
    with pytest.raises(VolumeError, match="cannot be read as DICOM"):
        load_volume([tmp_path / "photo.jpg"])


@pytest.mark.parametrize(("signed", "stored", "vr"), [(False, 63536, "US"), (True, -2000, "SS"),
                                                    (True, 63536, "US"), (False, None, "US"), (False, 63536, "")])
def test_pixel_padding_outside_the_field_of_view_reads_as_air(small_phantom: Phantom, small_series: list[Path],
                                                               tmp_path: Path, signed: bool, stored: int | None,
                                                               vr: str) -> None:
    """Found by probing: GE-style padding stored unsigned (63536, -2000 as unsigned) read as 62,512 HU, a body
    as wide as the image, and the midline that sides a stone moved by 19 mm. With PixelPaddingRangeLimit
    (stored None here) a range of values is padding. Probe 38: an export that stripped PixelPaddingValue (vr ""
    here) left it read as metal on every image: a value no CT's HU scale holds is padding too."""
    rows = small_phantom.hu.shape[1]
    yy, xx = np.mgrid[:rows, :rows]
    outside = (yy - rows / 2) ** 2 + (xx - rows / 2) ** 2 > (rows / 2) ** 2

    def pad(k: int, ds: pydicom.Dataset) -> None:
        values = ds.pixel_array.astype(np.int32)
        if signed:
            values = values + int(ds.RescaleIntercept)
            ds.RescaleIntercept, ds.PixelRepresentation = 0, 1
        if stored is None:
            values[outside] = 63000
            ds.add_new(0x00280120, vr, 65535)  # PixelPaddingValue
            ds.add_new(0x00280121, vr, 60000)  # PixelPaddingRangeLimit: 60000-65535 are padding
        else:
            # signed pixels with the value written as unsigned (63536 for -2000), as GE writes it
            values[outside] = stored - 65536 if signed and stored > 32767 else stored
            if vr:
                ds.add_new(0x00280120, vr, stored)
        ds.PixelData = values.astype(np.int16 if signed else np.uint16).tobytes()

    volume = load_volume(_modified(small_series, tmp_path, pad))
    assert np.all(volume.hu[:, outside] == -1024.0)
    np.testing.assert_array_equal(volume.hu[:, ~outside], small_phantom.hu[:, ~outside])


@pytest.mark.parametrize("slope", ["1e308", "1e30", "-5e4"])
def test_a_rescale_that_puts_a_slice_beyond_any_ct_value_fails_the_series(small_series: list[Path], tmp_path: Path,
                                                                          slope: str) -> None:
    """Probe 40: a RescaleSlope of 1e308 made every pixel infinite, each read as padding (air), and the job was
    delivered as a clean "no stone" report. More than half a slice beyond any CT value is a wrong rescale."""

    def rescale(k: int, ds: pydicom.Dataset) -> None:
        if k == 1:
            ds.RescaleSlope = slope

    with pytest.raises(VolumeError, match=r"of the pixels of .* are beyond any CT value once rescaled \(RescaleSlope"):
        load_volume(_modified(small_series, tmp_path, rescale))

