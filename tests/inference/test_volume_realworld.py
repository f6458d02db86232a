"""Headers as real exports write them (found by probing, probe 12): Enhanced CT whose rescale is not where the
standard puts it or whose functional groups are short, numbers written with a decimal comma or not at all,
a Part 10 file without its transfer syntax, and refusals that name the files they are about."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from inference.errors import VolumeError
from inference.volume import ENHANCED_CT_IMAGE_STORAGE, group_series, load_volume, read_dicom
from lab.synth import Phantom

SLICES = 5
"""The first slices of the shared small series: enough for a stack, little to decode."""


def _raw(ds: Dataset, keyword: str, text: str) -> None:
    """Put ``text`` into ``ds`` as the bytes of ``keyword``, unparsed: pydicom refuses to make a DS of
    "-1024,0", but a file can hold it, and reading it back gives what a sender's file gives."""
    tag = Tag(keyword)
    value = text.encode() + b" " * (len(text.encode()) % 2)
    ds[tag] = RawDataElement(tag, dictionary_VR(keyword), len(value), value, 0, False, True)


Change = Callable[[int, Dataset], None]


def _modified(paths: list[Path], folder: Path, change: Change) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        change(k, ds)
        target = folder / path.name
        ds.save_as(target)
        out.append(target)
    return out


def _enhanced(paths: list[Path], *, rescale: str = "shared") -> Dataset:
    """The slices as one Enhanced CT instance: positions per frame, orientation and pixel measures shared,
    and the rescale ``"shared"`` (in the CT Pixel Value Transformation functional group, as the standard
    has it), ``"top"`` (RescaleIntercept and RescaleSlope at the top level only, as converters that flatten
    an Enhanced CT write it) or ``"none"``."""
    slices = [pydicom.dcmread(path) for path in paths]
    enhanced = copy.deepcopy(slices[0])
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "RescaleIntercept", "RescaleSlope", "RescaleType", "SliceLocation"):
        delattr(enhanced, keyword)
    enhanced.SOPClassUID = enhanced.file_meta.MediaStorageSOPClassUID = UID(ENHANCED_CT_IMAGE_STORAGE)
    enhanced.SOPInstanceUID = enhanced.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    enhanced.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    enhanced.InstanceNumber = 1
    enhanced.NumberOfFrames = len(slices)
    measures = Dataset()
    measures.PixelSpacing = slices[0].PixelSpacing
    measures.SliceThickness = slices[0].SliceThickness
    orientation = Dataset()
    orientation.ImageOrientationPatient = slices[0].ImageOrientationPatient
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    if rescale == "shared":
        transformation = Dataset()
        transformation.RescaleIntercept, transformation.RescaleSlope, transformation.RescaleType = -1024, 1, "HU"
        shared.PixelValueTransformationSequence = [transformation]
    elif rescale == "top":
        enhanced.RescaleIntercept, enhanced.RescaleSlope = -1024, 1
    enhanced.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for ds in slices:
        position = Dataset()
        position.ImagePositionPatient = ds.ImagePositionPatient
        frame = Dataset()
        frame.PlanePositionSequence = [position]
        frames.append(frame)
    enhanced.PerFrameFunctionalGroupsSequence = frames
    enhanced.PixelData = b"".join(ds.PixelData for ds in slices)
    return enhanced


def _saved(ds: Dataset, folder: Path, name: str = "enhanced.dcm") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


# --- Enhanced CT: where its rescale is, and short functional groups ---------------------------------------


@pytest.mark.parametrize("rescale", ["shared", "top"])
def test_enhanced_ct_reads_its_rescale_from_the_functional_group_or_the_top_level(
        small_phantom: Phantom, small_series: list[Path], tmp_path: Path, rescale: str) -> None:
    """Found by probing: RescaleIntercept at the top level (converters that flatten an Enhanced CT put it
    there) was never looked at; every voxel read 1,024 HU too dense, and predict reported no stone."""
    volume = load_volume([_saved(_enhanced(small_series[:SLICES], rescale=rescale), tmp_path)])
    assert volume.frame_numbers == tuple(range(1, SLICES + 1))
    np.testing.assert_array_equal(volume.hu, small_phantom.hu[:SLICES])


def test_enhanced_ct_with_unsigned_pixels_and_no_rescale_is_refused(small_series: list[Path], tmp_path: Path) -> None:
    """As a single-frame slice is: stored values are no Hounsfield units."""
    path = _saved(_enhanced(small_series[:SLICES], rescale="none"), tmp_path)
    with pytest.raises(VolumeError, match=r"frame 1 of instance 1 \(enhanced.dcm\) has no RescaleIntercept and "
                                          "unsigned pixel values"):
        load_volume([path])


def test_enhanced_ct_with_signed_pixels_and_no_rescale_reads_them_as_hu(small_phantom: Phantom,
                                                                        small_series: list[Path],
                                                                        tmp_path: Path) -> None:
    enhanced = _enhanced(small_series[:SLICES], rescale="none")
    enhanced.PixelRepresentation = 1
    enhanced.PixelData = small_phantom.hu[:SLICES].astype(np.int16).tobytes()
    np.testing.assert_array_equal(load_volume([_saved(enhanced, tmp_path)]).hu, small_phantom.hu[:SLICES])


def test_enhanced_ct_with_fewer_per_frame_groups_than_frames_is_refused(small_series: list[Path],
                                                                         tmp_path: Path) -> None:
    """Found by probing: 40 frames and 39 per-frame items ended the run with an IndexError."""
    enhanced = _enhanced(small_series[:SLICES])
    enhanced.PerFrameFunctionalGroupsSequence = enhanced.PerFrameFunctionalGroupsSequence[:-1]
    with pytest.raises(VolumeError, match=rf"instance 1 \(enhanced.dcm\) holds {SLICES} frames \(NumberOfFrames\) "
                                          rf"but {SLICES - 1} items of per-frame functional groups"):
        load_volume([_saved(enhanced, tmp_path)])


# --- numbers with a decimal comma, and values that are no number ------------------------------------------


@pytest.mark.parametrize(("keyword", "text"), [("RescaleIntercept", "-1024,0"), ("RescaleSlope", "1,0"),
                                               ("SliceThickness", "2,0")])
def test_a_decimal_comma_is_read_as_the_number_it_means(small_phantom: Phantom, small_series: list[Path],
                                                        tmp_path: Path, keyword: str, text: str) -> None:
    """Found by probing: "-1024,0" (exports made under a European locale) ended the whole run with
    ValueError: could not convert string to float."""
    paths = _modified(small_series[:SLICES], tmp_path, lambda k, ds: _raw(ds, keyword, text))
    assert isinstance(pydicom.dcmread(paths[0]).get(keyword), str)  # pydicom could not parse it either
    volume = load_volume(paths)
    np.testing.assert_array_equal(volume.hu, small_phantom.hu[:SLICES])
    assert load_volume(paths[:1]).slice_spacing == pytest.approx(2.0)  # a lone slice's SliceThickness


@pytest.mark.parametrize(("keyword", "text"), [("RescaleIntercept", "-1024,0"), ("RescaleSlope", "1,0"),
                                               ("SliceThickness", "2,0")])
def test_a_decimal_comma_in_the_functional_groups_is_read_too(small_phantom: Phantom, small_series: list[Path],
                                                              tmp_path: Path, keyword: str, text: str) -> None:
    enhanced = _enhanced(small_series[:SLICES])
    shared = enhanced.SharedFunctionalGroupsSequence[0]
    group = shared.PixelMeasuresSequence[0] if keyword == "SliceThickness" else \
        shared.PixelValueTransformationSequence[0]
    _raw(group, keyword, text)
    np.testing.assert_array_equal(load_volume([_saved(enhanced, tmp_path)]).hu, small_phantom.hu[:SLICES])


@pytest.mark.parametrize(("keyword", "text"), [("RescaleIntercept", "-1024 HU"), ("RescaleIntercept", "-1024\\0"),
                                               ("RescaleIntercept", "NaN"), ("RescaleSlope", "1,000,0"),
                                               ("SliceThickness", "thin")])
def test_a_value_that_is_no_number_is_refused_naming_the_file_and_the_attribute(
        small_series: list[Path], tmp_path: Path, keyword: str, text: str) -> None:
    def spoil(k: int, ds: Dataset) -> None:
        if k == 2:
            _raw(ds, keyword, text)

    paths = _modified(small_series[:SLICES], tmp_path / "single", spoil)
    with pytest.raises(VolumeError, match=rf"{keyword} of instance 3 \({paths[2].name}\) is not a number"):
        load_volume(paths)
    enhanced = _enhanced(small_series[:SLICES])
    shared = enhanced.SharedFunctionalGroupsSequence[0]
    _raw(shared.PixelMeasuresSequence[0] if keyword == "SliceThickness" else
         shared.PixelValueTransformationSequence[0], keyword, text)
    with pytest.raises(VolumeError, match=rf"{keyword} of instance 1 \(enhanced.dcm\) is not a number"):
        load_volume([_saved(enhanced, tmp_path / "enhanced")])


@pytest.mark.parametrize("text", ["12A", "1.5", "n/a"])
def test_an_instance_number_that_is_no_whole_number_counts_as_absent(small_phantom: Phantom,
                                                                     small_series: list[Path],
                                                                     tmp_path: Path, text: str) -> None:
    """Found by probing: InstanceNumber "12A" ended the run with a ValueError from int(). The positions
    order the slices; the number only breaks a tie at one position, which an instance without one loses."""
    paths = _modified(small_series[:SLICES], tmp_path / "single", lambda k, ds: _raw(ds, "InstanceNumber", text))
    np.testing.assert_array_equal(load_volume(paths).hu, small_phantom.hu[:SLICES])

    rival = pydicom.dcmread(small_series[2])  # another instance at slice 3's position, with a number
    rival.SOPInstanceUID = rival.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    rival.InstanceNumber = 1
    rival.PixelData = np.full((rival.Rows, rival.Columns), 1024 + 77, np.uint16).tobytes()
    volume = load_volume([*paths, _saved(rival, tmp_path, "rival.dcm")])
    assert volume.sop_instance_uids[2] == rival.SOPInstanceUID and np.all(volume.hu[2] == 77)

    enhanced = _enhanced(small_series[:SLICES])
    _raw(enhanced, "InstanceNumber", text)
    np.testing.assert_array_equal(load_volume([_saved(enhanced, tmp_path / "enhanced")]).hu,
                                  small_phantom.hu[:SLICES])


# --- refusals that name their files -----------------------------------------------------------------------


def test_pixel_data_that_cannot_be_decoded_names_its_file(small_series: list[Path], tmp_path: Path) -> None:
    """Found by probing: "the pixel data of instance 20 cannot be decoded" counted only the instances kept
    and named no file."""
    def cut(k: int, ds: Dataset) -> None:
        if k == 3:
            ds.PixelData = ds.PixelData[:-5000]

    paths = _modified(small_series[:SLICES], tmp_path, cut)
    not_ct = pydicom.dcmread(small_series[SLICES])  # left out ahead of it: the number is the file's place
    not_ct.Modality = "MR"
    given = [_saved(not_ct, tmp_path / "mr", "mr.dcm"), *paths]
    with pytest.raises(VolumeError, match=rf"the pixel data of instance 5 cannot be decoded \({paths[3].name}\): "):
        load_volume(given)


def test_mixed_sizes_name_each_size_with_a_file(small_series: list[Path], tmp_path: Path) -> None:
    """Found by probing: a coronal scout without LOCALIZER in its ImageType refused the series with "mixed
    sizes: [(128, 128), (256, 128)]" and no word of which file."""
    def scout(k: int, ds: Dataset) -> None:
        if k == 4:
            ds.Rows = 64
            ds.PixelData = ds.PixelData[: 64 * ds.Columns * 2]

    paths = _modified(small_series[:SLICES], tmp_path, scout)
    with pytest.raises(VolumeError) as info:
        load_volume(paths)
    assert info.value.reason == (f"the slices have mixed sizes: [(64, 128), (128, 128)]: (64, 128) in 1 instance(s), "
                                 f"such as instance 5 ({paths[4].name}); (128, 128) in 4 instance(s), such as "
                                 f"instance 1 ({paths[0].name})")


@pytest.mark.parametrize(("keyword", "value", "said"), [
    ("ImageOrientationPatient", [0.9962, 0.0872, 0, -0.0872, 0.9962, 0], "mixed image orientations"),
    ("PixelSpacing", [0.5, 0.5], "mixed pixel spacings"),
])
def test_mixed_orientations_and_pixel_spacings_name_the_files(small_series: list[Path], tmp_path: Path,
                                                              keyword: str, value: list[float], said: str) -> None:
    def odd(k: int, ds: Dataset) -> None:
        if k == 2:
            setattr(ds, keyword, value)

    paths = _modified(small_series[:SLICES], tmp_path, odd)
    with pytest.raises(VolumeError, match=said) as info:
        load_volume(paths)
    assert f"instance 1 ({paths[0].name}) has [" in info.value.reason
    assert f"instance 3 ({paths[2].name}) [{value[0]:g}, {value[1]:g}" in info.value.reason


def test_a_file_named_by_its_uid_is_named_by_instance_number_and_uid(small_series: list[Path],
                                                                    tmp_path: Path) -> None:
    """Probe 48: a failed job's reason named the store's own file ("1.2.826...-45553ffcafde.dcm"), which no
    one who reads it can find; the Instance Number and SOP Instance UID are what a viewer shows."""
    folder = tmp_path / "stored"
    folder.mkdir()
    paths = []
    for k, path in enumerate(small_series[:SLICES]):
        ds = pydicom.dcmread(path)
        if k == 2:
            del ds.ImagePositionPatient
        target = folder / f"{ds.SOPInstanceUID}-45553ffcafde.dcm"
        ds.save_as(target)
        paths.append(target)
    third = pydicom.dcmread(paths[2])
    with pytest.raises(VolumeError) as info:
        load_volume(paths)
    assert info.value.reason == (f"instance 3 (Instance Number {third.InstanceNumber}, SOP Instance UID "
                                 f"{third.SOPInstanceUID}) has no ImagePositionPatient")
    assert "45553ffcafde" not in info.value.reason


def test_a_dose_screen_beside_the_slices_is_left_out(small_series: list[Path], tmp_path: Path) -> None:
    """Probe 48: a dose screen stored as a CT image (DERIVED\\SECONDARY, no position) failed its series with
    "has no ImagePositionPatient"; it is no slice, left out as a localizer is, and alone it says what it is."""
    def dose_screen(k: int, ds: Dataset) -> None:
        if k == SLICES - 1:
            ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
            for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "SliceLocation"):
                delattr(ds, keyword)

    paths = _modified(small_series[:SLICES], tmp_path, dose_screen)
    volume = load_volume(paths)
    assert volume.hu.shape[0] == SLICES - 1
    with pytest.raises(VolumeError) as info:
        load_volume(paths[-1:])
    assert info.value.reason == (f"instance 1 ({paths[-1].name}) is a secondary image without a position (Image Type "
                                 "DERIVED\\SECONDARY\\OTHER): a screen capture such as a dose screen, not a CT slice")
    # an empty position is none (review 48: "is not 3 numbers" refused the series)
    empty = pydicom.dcmread(paths[-1])
    empty.ImagePositionPatient = None
    empty.save_as(paths[-1])
    assert load_volume(paths).hu.shape[0] == SLICES - 1
    # a slice without its position is still a broken slice, and refuses the series: an original one, and a
    # secondary one that has its orientation and spacing and says it is axial (review 48)
    for image_type in (["ORIGINAL", "PRIMARY", "AXIAL"], ["DERIVED", "SECONDARY", "AXIAL"]):
        broken = pydicom.dcmread(small_series[1])
        broken.ImageType = image_type
        del broken.ImagePositionPatient
        broken.save_as(paths[1])
        with pytest.raises(VolumeError, match="has no ImagePositionPatient"):
            load_volume(paths[1:])


# --- a Part 10 file without its transfer syntax -----------------------------------------------------------


@pytest.mark.parametrize("implicit", [True, False])
def test_a_part10_file_whose_meta_lacks_the_transfer_syntax_is_read(small_phantom: Phantom,
                                                                    small_series: list[Path],
                                                                    tmp_path: Path, implicit: bool) -> None:
    """Found by probing: the "DICM" preamble with a File Meta group lacking (0002,0010) was refused ("Unable to
    decode the pixel data"), while the same data set without preamble and meta was read."""
    written = []
    for path in small_series[:SLICES]:
        ds = pydicom.dcmread(path)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta = meta
        target = tmp_path / path.name
        pydicom.dcmwrite(target, ds, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
        assert target.read_bytes()[128:132] == b"DICM"
        written.append(target)
    read = pydicom.dcmread(written[0])
    assert "TransferSyntaxUID" not in read.file_meta and read.preamble is not None
    assert list(group_series([tmp_path]).values()) == [sorted(written)]
    volume = load_volume(written)
    np.testing.assert_array_equal(volume.hu, small_phantom.hu[:SLICES])
    expected = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    assert read_dicom(written[0]).file_meta.TransferSyntaxUID == expected
