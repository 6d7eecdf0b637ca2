"""read_series: geometry, HU, compression, multi-frame, irregular input and bad input."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from dicom_io import DicomInputError, read_series
from dicom_io.synthetic_series import make_test_volume, write_ct_series
from tools import dciodvfy

from dicomio_helpers import FEET_FIRST, ROT_Z20


def _same_on_grid(read: sitk.Image, truth: sitk.Image) -> float:
    """Max |difference| after resampling `read` onto `truth`'s grid (nearest; the grids must coincide)."""
    r = sitk.Resample(read, truth, sitk.Transform(), sitk.sitkNearestNeighbor, -5000.0)
    return float(np.abs(sitk.GetArrayFromImage(r) - sitk.GetArrayFromImage(truth)).max())


@pytest.mark.parametrize("direction", [None, ROT_Z20, FEET_FIRST, (1, 0, 0, 0, 1, 0, 0, 0, -1),
                                       (0, 0, 1, 1, 0, 0, 0, 1, 0)],
                         ids=["identity", "rot20", "feet_first", "left_handed", "permuted"])
def test_roundtrip_geometry_and_hu(tmp_path, direction):
    img = make_test_volume(size=(20, 18, 7), direction=direction)
    files = write_ct_series(img, tmp_path)
    random.Random(1).shuffle(files)
    vol = read_series(files)
    assert _same_on_grid(vol.image, img) == 0.0
    d = np.asarray(vol.image.GetDirection()).reshape(3, 3)
    assert np.allclose(np.cross(d[:, 0], d[:, 1]), d[:, 2])  # right-handed, normal = row x col
    # slices sorted along the normal, SOP UIDs follow the slice order
    pos = [float(np.dot(ds.ImagePositionPatient, d[:, 2])) for ds in vol.datasets]
    assert pos == sorted(pos)
    assert vol.sop_instance_uids == [ds.SOPInstanceUID for ds in vol.datasets]
    assert "PixelData" not in vol.datasets[0]
    assert vol.patient["PatientID"] == "SYN0001"
    assert vol.windows[0] == (40.0, 400.0, "SOFT TISSUE")


def test_synthetic_series_passes_dciodvfy(tmp_path):
    files = write_ct_series(make_test_volume(size=(16, 16, 3), direction=ROT_Z20), tmp_path)
    for f in (files[0], files[-1]):
        errors, out = dciodvfy(f)
        assert errors == [], out
    files = write_ct_series(make_test_volume(size=(16, 16, 3)), tmp_path / "nobody", body_part="")
    errors, out = dciodvfy(files[0])
    assert errors == [], out


@pytest.mark.parametrize("ts", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=["rle", "jpegls", "j2k"])
def test_compressed_transfer_syntaxes(tmp_path, ts):
    img = make_test_volume(size=(36, 34, 4))
    files = write_ct_series(img, tmp_path, transfer_syntax=ts)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == ts
    assert _same_on_grid(read_series(tmp_path).image, img) == 0.0


def test_rescale_slope_intercept(tmp_path):
    img = make_test_volume(size=(16, 16, 4))
    write_ct_series(img, tmp_path, rescale_slope=2.0, rescale_intercept=-2048.0)
    ds = pydicom.dcmread(sorted(tmp_path.iterdir())[0])
    assert float(ds.RescaleSlope) == 2.0
    vol = read_series(tmp_path)
    # stored = round((HU + 2048) / 2): HU recovered within the 2 HU quantisation
    assert _same_on_grid(vol.image, img) <= 1.0


def test_enhanced_multiframe(tmp_path):
    img = make_test_volume(size=(16, 16, 5), direction=ROT_Z20)
    files = write_ct_series(img, tmp_path / "sf")
    dss = [pydicom.dcmread(f) for f in files]
    mf = hd.legacy.LegacyConvertedEnhancedCTImage(dss, series_instance_uid=hd.UID(), series_number=3,
                                                  sop_instance_uid=hd.UID(), instance_number=1)
    mf.save_as(tmp_path / "mf.dcm", enforce_file_format=True)
    vol = read_series(tmp_path / "mf.dcm")
    assert _same_on_grid(vol.image, img) == 0.0
    assert len(vol.datasets) == 1 and vol.sop_instance_uids == [mf.SOPInstanceUID] * 5
    # the same content labelled as Enhanced CT Image Storage reads identically (per-frame functional groups)
    mf.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    mf.file_meta.MediaStorageSOPClassUID = mf.SOPClassUID
    mf.save_as(tmp_path / "enh.dcm", enforce_file_format=True)
    assert _same_on_grid(read_series(tmp_path / "enh.dcm").image, img) == 0.0


def _series(tmp_path, **kw) -> list[Path]:
    return write_ct_series(make_test_volume(size=(12, 12, 8), spacing=(1.0, 1.0, 2.5),
                                            origin=(0.0, 0.0, -130.0)), tmp_path, **kw)


def test_missing_slice_named(tmp_path):
    files = _series(tmp_path)
    files[3].unlink()  # slices at z = -130 + 2.5 k: remove z = -122.5
    with pytest.raises(DicomInputError, match=r"slice missing between z=-125.0 and z=-120.0 mm \(spacing 2.5 mm\)"):
        read_series(tmp_path)
    vol = read_series(tmp_path, missing_slices="resample")
    assert vol.image.GetSize()[2] == 8 and abs(vol.image.GetSpacing()[2] - 2.5) < 1e-6
    assert any("gap" in n for n in vol.notes)


def test_duplicates(tmp_path):
    files = _series(tmp_path / "s")
    shutil.copy(files[2], tmp_path / "s" / "copy_of_3.dcm")  # same SOP instance twice: dropped
    vol = read_series(tmp_path / "s")
    assert vol.image.GetSize()[2] == 8
    ds = pydicom.dcmread(files[4])  # a different instance at the position of slice 2 with other pixels
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.ImagePositionPatient = pydicom.dcmread(files[2]).ImagePositionPatient
    ds.save_as(tmp_path / "s" / "conflict.dcm", enforce_file_format=True)
    with pytest.raises(DicomInputError, match="two different slices at the same position"):
        read_series(tmp_path / "s")


def _move_slice(path: Path, dz: float) -> None:
    ds = pydicom.dcmread(path)
    ipp = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + dz]
    ds.save_as(path, enforce_file_format=True)


def test_nonuniform_spacing_policies(tmp_path):
    files = _series(tmp_path)
    _move_slice(files[4], 0.3)  # spacing 2.8 / 2.2 around slice 4: 12 % deviation
    vol = read_series(tmp_path)
    assert vol.image.GetSize()[2] == 8 and abs(vol.image.GetSpacing()[2] - 2.5) < 1e-6
    assert any("irregular" in n for n in vol.notes)
    with pytest.raises(DicomInputError, match="slice spacing varies from 2.2 to 2.8 mm"):
        read_series(tmp_path, nonuniform="refuse")
    _move_slice(files[4], 0.7)  # now 3.5 / 1.5: 40 % deviation, refused by default
    with pytest.raises(DicomInputError, match="irregular series refused"):
        read_series(tmp_path)


def test_gantry_tilt_corrected_or_refused(tmp_path):
    img = make_test_volume(size=(24, 24, 6), spacing=(1.0, 1.0, 2.0))
    files = write_ct_series(img, tmp_path)
    # tilt: slice k shifted by k * 1.0 mm along +y (posterior) => anatomy at (x, y + k, z)
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1] + 1.0 * k, ipp[2]]
        ds.save_as(f, enforce_file_format=True)
    with pytest.raises(DicomInputError, match="gantry tilt of 26.6 degrees"):
        read_series(tmp_path, tilt="error")
    vol = read_series(tmp_path)
    assert vol.image.GetOrigin() == pytest.approx(img.GetOrigin())
    arr = sitk.GetArrayFromImage(vol.image)
    src = sitk.GetArrayFromImage(img)
    # output row j of slice k shows source row j - k (shifted by k pixels); rows that no slice reaches are -1024
    for k in range(6):
        assert np.array_equal(arr[k, k:, :], src[k, : 24 - k, :])
        assert (arr[k, :k, :] == -1024).all()


def test_mixed_frame_of_reference(tmp_path):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[1])
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.save_as(files[1], enforce_file_format=True)
    with pytest.raises(DicomInputError, match="more than one Frame of Reference"):
        read_series(tmp_path)


def test_two_patients(tmp_path):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[5])
    ds.PatientID = "SOMEONE_ELSE"
    ds.save_as(files[5], enforce_file_format=True)
    with pytest.raises(DicomInputError, match=r"more than one patient \(PatientID\)"):
        read_series(tmp_path)


def test_not_ct(tmp_path):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[0])
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    ds.Modality = "MR"
    ds.save_as(files[0], enforce_file_format=True)
    with pytest.raises(DicomInputError, match=r"CT00001.dcm is not a CT image \(SOP class MR Image Storage, modality MR\)"):
        read_series(tmp_path)


def test_single_2d_image(tmp_path):
    files = _series(tmp_path)
    with pytest.raises(DicomInputError, match="has only 1 image"):
        read_series(files[:1])


@pytest.mark.parametrize("keep", [300, 1000, -100], ids=["in_header", "before_pixels", "in_pixels"])
def test_truncated_file(tmp_path, keep):
    files = _series(tmp_path)
    data = files[3].read_bytes()
    files[3].write_bytes(data[:keep])
    with pytest.raises(DicomInputError, match=r"CT00004.dcm.*truncated"):
        read_series(tmp_path)


def test_not_dicom(tmp_path):
    _series(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DicomInputError, match="notes.txt is not a DICOM file"):
        read_series(tmp_path)


def test_several_series(tmp_path):
    _series(tmp_path / "a")
    _series(tmp_path / "b")
    with pytest.raises(DicomInputError, match="several series given"):
        read_series(tmp_path)


def test_mixed_orientation_and_spacing(tmp_path):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9950042, -0.0998334]
    ds.save_as(files[2], enforce_file_format=True)
    with pytest.raises(DicomInputError, match="more than one image orientation"):
        read_series(tmp_path)
    files = _series(tmp_path / "b")
    ds = pydicom.dcmread(files[2])
    ds.PixelSpacing = [0.8, 0.8]
    ds.save_as(files[2], enforce_file_format=True)
    with pytest.raises(DicomInputError, match="more than one pixel spacing"):
        read_series(tmp_path / "b")


def test_policy_arguments_checked(tmp_path):
    with pytest.raises(ValueError, match="missing_slices"):
        read_series(tmp_path, missing_slices="ignore")
