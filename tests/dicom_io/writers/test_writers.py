"""DSR, rigid REG, registered/subtraction series: validity (dciodvfy, dcentvfy, pydicomrt), direction, numbers."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicomrt.reg import check_deformable_reg_iod, check_spatial_reg_iod, get_deformable_registrations, \
    get_spatial_registrations

from dicom_io import DicomInputError, read_series
from dicom_io.writers import (dsr_vectors, reg_matrix, save_objects, write_dsr, write_registered_series,
                              write_rigid_reg, write_subtraction_series)
from tools import dcentvfy, dciodvfy

from dicomio_helpers import constant_field, make_pair, smooth_field


def _warp(moving: sitk.Image, ref: sitk.Image, field: sitk.Image) -> sitk.Image:
    tx = sitk.DisplacementFieldTransform(sitk.Image(field))
    return sitk.Resample(moving, ref, tx, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)


def _field_at(field: sitk.Image, points: np.ndarray) -> np.ndarray:
    tx = sitk.DisplacementFieldTransform(sitk.Image(field))
    return np.array([np.subtract(tx.TransformPoint(tuple(p)), p) for p in points])


def _grid_points(grid: sitk.Image) -> np.ndarray:
    size = grid.GetSize()
    idx = np.stack(np.meshgrid(np.arange(size[0]), np.arange(size[1]), np.arange(size[2]), indexing="ij"), -1)
    idx = np.transpose(idx, (2, 1, 0, 3)).reshape(-1, 3)  # z, y, x order like the vector array
    d = np.asarray(grid.GetDirection()).reshape(3, 3)
    return np.asarray(grid.GetOrigin()) + (idx * np.asarray(grid.GetSpacing())) @ d.T


@pytest.fixture(scope="module")
def results(pair, tmp_path_factory):
    field = smooth_field(pair.current.image, offset=pair.shift)
    warped = _warp(pair.prior.image, pair.current.image, field)
    affine = sitk.Euler3DTransform((1.0, 2.0, -3.0), 0.05, -0.03, 0.1, tuple(pair.shift))
    dsr = write_dsr(pair.current, pair.prior, field, grid_spacing_mm=3.0, software_version="9.9")
    reg = write_rigid_reg(pair.current, pair.prior, affine)
    series = write_registered_series(pair.current, pair.prior, warped, dsr)
    sub = write_subtraction_series(pair.current, pair.prior, warped, dsr)
    out = tmp_path_factory.mktemp("results") / "out"
    paths = save_objects([dsr, reg, *series, *sub], out)
    return dict(field=field, warped=warped, affine=affine, dsr=dsr, reg=reg, series=series, sub=sub, paths=paths,
                out=out)


def test_dciodvfy_no_errors(results):
    paths = results["paths"]
    dsr_p, reg_p, ser_p, sub_p = paths[0], paths[1], paths[2], paths[-1]
    for p in (dsr_p, reg_p, ser_p, paths[1 + len(results["series"])], sub_p):
        errors, out = dciodvfy(p)
        assert errors == [], out
        assert "Warning" not in out, out


def test_dcentvfy_consistent(pair, results):
    errors, out = dcentvfy([*pair.current_files, *results["paths"]])
    assert errors == [], out
    assert "Warning" not in out, out


def test_multiframe_current_results_consistent(pair, tmp_path):
    """An enhanced (legacy converted) current series: results validate and agree with it (dcentvfy)."""
    import highdicom as hd

    dss = [pydicom.dcmread(f) for f in pair.current_files]
    mf = hd.legacy.LegacyConvertedEnhancedCTImage(dss, series_instance_uid=hd.UID(), series_number=7,
                                                  sop_instance_uid=hd.UID(), instance_number=1)
    mf.save_as(tmp_path / "mf.dcm", enforce_file_format=True)
    cur = read_series(tmp_path / "mf.dcm")
    field = constant_field(cur.image, pair.shift)
    dsr = write_dsr(cur, pair.prior, field)
    warped = _warp(pair.prior.image, cur.image, field)
    objs = [dsr, write_rigid_reg(cur, pair.prior, sitk.TranslationTransform(3, tuple(pair.shift))),
            *write_registered_series(cur, pair.prior, warped, dsr)[:2]]
    paths = save_objects(objs, tmp_path / "out")
    for p in paths[:3]:
        errors, out = dciodvfy(p)
        assert errors == [], out
    errors, out = dcentvfy([tmp_path / "mf.dcm", *paths])
    assert errors == [] and "Warning" not in out, out
    assert dsr.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == mf.SOPInstanceUID


def test_pydicomrt_reads_and_checks(results, pair):
    dsr = pydicom.dcmread(results["paths"][0])
    assert check_deformable_reg_iod(dsr)["result"], check_deformable_reg_iod(dsr)["content"]
    reg = pydicom.dcmread(results["paths"][1])
    assert check_spatial_reg_iod(reg)["result"], check_spatial_reg_iod(reg)["content"]
    regs = get_deformable_registrations(dsr)
    assert len(regs) == 1 and regs[0]["SourceFrameOfReferenceUID"] == pair.prior.frame_of_reference_uid
    ours, _ = dsr_vectors(dsr)
    assert np.array_equal(regs[0]["DeformableRegistrationGrid"]["VectorGridData"], ours)
    mats = get_spatial_registrations(reg)
    m = np.asarray(mats[pair.current.frame_of_reference_uid][pair.prior.frame_of_reference_uid]).reshape(4, 4)
    assert np.allclose(m, reg_matrix(reg, pair.prior.frame_of_reference_uid))


def test_dsr_header(results, pair):
    dsr = results["dsr"]
    assert dsr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.3"
    assert dsr.FrameOfReferenceUID == pair.current.frame_of_reference_uid
    assert dsr.StudyInstanceUID == pair.current.study_uid and dsr.PatientID == "PAT1"
    assert dsr.SoftwareVersions == "9.9" and dsr.Manufacturer == "TotalRegistrator Node"
    item = dsr.DeformableRegistrationSequence[0]
    assert item.SourceFrameOfReferenceUID == pair.prior.frame_of_reference_uid
    assert item.RegistrationTypeCodeSequence[0].CodeValue == "125024"
    assert len(item.ReferencedImageSequence) == len(pair.prior_files)
    assert dsr.ReferencedSeriesSequence[0].SeriesInstanceUID == pair.current.series_uid
    other = dsr.StudiesContainingOtherReferencedInstancesSequence[0]
    assert other.StudyInstanceUID == pair.prior.study_uid
    assert other.ReferencedSeriesSequence[0].SeriesInstanceUID == pair.prior.series_uid
    grid = item.DeformableRegistrationGridSequence[0]
    assert [float(v) for v in grid.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert all(float(v) <= 3.0 + 1e-9 for v in grid.GridResolution)


def test_dsr_vectors_equal_field_at_grid_points(results):
    vec, grid = dsr_vectors(results["dsr"])
    expected = _field_at(results["field"], _grid_points(grid))
    err = np.abs(vec.reshape(-1, 3) - expected).max()
    assert err < 0.1, err
    assert np.abs(expected).max() > 5.0  # the field is not trivial


def _apply_dsr_as_read(dsr: pydicom.Dataset, prior: sitk.Image, ref: sitk.Image) -> sitk.Image:
    """Independent reader path: pydicomrt's grid, pre-matrix, trilinear grid interpolation, post-matrix."""
    r = get_deformable_registrations(dsr)[0]
    g = r["DeformableRegistrationGrid"]
    gimg = sitk.GetImageFromArray(g["VectorGridData"].astype(np.float64), isVector=True)
    gimg.SetOrigin([float(v) for v in g["ImagePositionPatient"]])
    gimg.SetSpacing([float(v) for v in g["GridResolution"]])
    iop = np.asarray(g["ImageOrientationPatient"], float)
    gimg.SetDirection(np.column_stack([iop[:3], iop[3:], np.cross(iop[:3], iop[3:])]).ravel().tolist())
    d_on_ref = sitk.GetArrayFromImage(sitk.Resample(gimg, ref, sitk.Transform(), sitk.sitkLinear, 0.0))
    size = ref.GetSize()
    idx = np.stack(np.meshgrid(np.arange(size[0]), np.arange(size[1]), np.arange(size[2]), indexing="ij"), -1)
    idx = np.transpose(idx, (2, 1, 0, 3))
    dmat = np.asarray(ref.GetDirection()).reshape(3, 3)
    x = np.asarray(ref.GetOrigin()) + (idx * np.asarray(ref.GetSpacing())) @ dmat.T
    pre = np.asarray(r["PreDeformationMatrixRegistration"]).reshape(4, 4)
    post = np.asarray(r["PostDeformationMatrixRegistration"]).reshape(4, 4)
    y = x @ pre[:3, :3].T + pre[:3, 3] + d_on_ref
    y = y @ post[:3, :3].T + post[:3, 3]
    total = sitk.GetImageFromArray(y - x, isVector=True)
    total.CopyInformation(ref)
    return _warp(prior, ref, total)


def test_dsr_round_trip_reproduces_registered_series(results, pair):
    folder = results["out"]
    series_files = [p for p in results["paths"] if p.name.startswith("CT_")][: len(results["series"])]
    ours = read_series(series_files)
    assert ours.image.GetSize() == pair.current.image.GetSize()
    assert np.allclose(ours.image.GetOrigin(), pair.current.image.GetOrigin())
    assert np.allclose(ours.image.GetDirection(), pair.current.image.GetDirection())
    theirs = _apply_dsr_as_read(pydicom.dcmread(results["paths"][0]), pair.prior.image, pair.current.image)
    mad = float(np.abs(sitk.GetArrayFromImage(theirs) - sitk.GetArrayFromImage(ours.image)).mean())
    assert mad < 1.0, mad
    assert folder.exists()


def test_registered_series_header(results, pair):
    s = results["series"]
    assert len(s) == pair.current.image.GetSize()[2]
    ds = s[0]
    assert ds.SeriesDescription == "PRIOR 2023-01-05 REGISTERED TO 2024-03-10"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert ds.DerivationCodeSequence[0].CodeValue == "113085"
    assert ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert ds.SourceImageSequence[0].SpatialLocationsPreserved == "NO"
    assert {i.ReferencedSOPInstanceUID for i in ds.SourceImageSequence} == set(pair.prior.sop_instance_uids)
    assert ds.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == results["dsr"].SOPInstanceUID
    assert ds.FrameOfReferenceUID == pair.current.frame_of_reference_uid
    assert ds.StudyInstanceUID == pair.current.study_uid
    assert ds.SeriesInstanceUID not in (pair.current.series_uid, pair.prior.series_uid)
    assert len({d.SOPInstanceUID for d in s}) == len(s)
    assert ds.LossyImageCompression == "00" and ds.RescaleSlope == 1 and ds.RescaleIntercept == 0
    assert float(ds.WindowCenter) == 50.0 and float(ds.WindowWidth) == 350.0  # the prior's preset
    for d, cur in zip(s, pair.current.datasets):
        assert [float(v) for v in d.ImagePositionPatient] == pytest.approx([float(v) for v in cur.ImagePositionPatient])
    arr = np.stack([d.pixel_array for d in s])
    assert arr.dtype == np.int16
    assert np.array_equal(arr, np.round(sitk.GetArrayFromImage(results["warped"])).astype(np.int16))
    assert (arr == -1024).any()  # outside the prior's field of view
    assert not any(e.tag.is_private for e in ds)


def test_subtraction_series(results, pair):
    arr = np.stack([d.pixel_array for d in results["sub"]]).astype(float)
    expected = sitk.GetArrayFromImage(pair.current.image) - sitk.GetArrayFromImage(results["warped"])
    assert np.abs(arr - np.round(expected)).max() <= 1.0
    assert results["sub"][0].DerivationCodeSequence[0].CodeValue == "113062"


def test_rigid_reg_matrix_direction(results, pair):
    reg, affine = results["reg"], results["affine"]
    assert reg.FrameOfReferenceUID == pair.current.frame_of_reference_uid
    ident = reg_matrix(reg, pair.current.frame_of_reference_uid)
    assert np.allclose(ident, np.eye(4))
    m = reg_matrix(reg, pair.prior.frame_of_reference_uid)
    item = reg.RegistrationSequence[1].MatrixRegistrationSequence[0]
    assert item.MatrixSequence[0].FrameOfReferenceTransformationMatrixType == "RIGID"
    inv = affine.GetInverse()
    rng = np.random.default_rng(0)
    for q in rng.uniform(-80, 80, size=(10, 3)):  # q: prior points
        mapped = (m @ np.append(q, 1.0))[:3]
        assert np.allclose(mapped, inv.TransformPoint(tuple(q)), atol=1e-3)
        assert np.allclose(affine.TransformPoint(tuple(mapped)), q, atol=1e-3)


def test_affine_matrix_type(pair):
    aff = sitk.AffineTransform(3)
    aff.SetMatrix((1.1, 0.05, 0, 0, 0.95, 0, 0, 0, 1.0))
    aff.SetCenter((5.0, 0.0, 0.0))
    reg = write_rigid_reg(pair.current, pair.prior, aff)
    assert reg.RegistrationSequence[1].MatrixRegistrationSequence[0].MatrixSequence[0] \
        .FrameOfReferenceTransformationMatrixType == "AFFINE"
    m = reg_matrix(reg, pair.prior.frame_of_reference_uid)
    q = np.array([10.0, -20.0, 30.0])
    assert np.allclose((m @ np.append(q, 1))[:3], aff.GetInverse().TransformPoint(tuple(q)), atol=1e-4)


@pytest.mark.parametrize("which", ["pair", "rotated_pair", "feet_first_pair"])
def test_translation_sign_end_to_end(request, which):
    """prior = current shifted by t (current p <-> prior p + t): DSR vectors = t, REG maps p + t -> p,
    the registered prior equals the current where the prior covers it."""
    pr = request.getfixturevalue(which)
    cur, prior, t = pr.current, pr.prior, pr.shift
    field = constant_field(cur.image, t)
    dsr = write_dsr(cur, prior, field)
    vec, grid = dsr_vectors(dsr)
    assert np.allclose(vec.reshape(-1, 3), t, atol=1e-4)
    d = np.asarray(cur.image.GetDirection()).reshape(3, 3)
    iop = [float(v) for v in dsr.DeformableRegistrationSequence[0].DeformableRegistrationGridSequence[0]
           .ImageOrientationPatient]
    assert np.allclose(iop, [*d[:, 0], *d[:, 1]], atol=1e-6)
    reg = write_rigid_reg(cur, prior, sitk.TranslationTransform(3, tuple(t)))
    m = reg_matrix(reg, prior.frame_of_reference_uid)
    p = np.array([3.0, -7.0, 2.5])
    assert np.allclose((m @ np.append(p + t, 1))[:3], p, atol=1e-6)
    warped = _warp(prior.image, cur.image, field)
    series = write_registered_series(cur, prior, warped, dsr)
    arr = np.stack([s.pixel_array for s in series]).astype(np.float32)
    cur_arr = sitk.GetArrayFromImage(cur.image)
    inside = arr != -1024
    assert inside.mean() > 0.3
    assert np.abs(arr[inside] - cur_arr[inside]).max() <= 1.0
    # round trip through pydicomrt's view of the DSR reproduces the series
    theirs = sitk.GetArrayFromImage(_apply_dsr_as_read(dsr, prior.image, cur.image))
    assert np.abs(theirs - arr).mean() < 1.0
    assert [float(v) for v in series[0].ImageOrientationPatient] == pytest.approx([*d[:, 0], *d[:, 1]])


def test_non_identity_direction_objects_validate(rotated_pair, tmp_path):
    cur, prior = rotated_pair.current, rotated_pair.prior
    field = smooth_field(cur.image, offset=rotated_pair.shift)
    dsr = write_dsr(cur, prior, field, grid_spacing_mm=2.0)
    vec, grid = dsr_vectors(dsr)
    assert np.abs(vec.reshape(-1, 3) - _field_at(field, _grid_points(grid))).max() < 0.1
    paths = save_objects([dsr, write_rigid_reg(cur, prior, sitk.TranslationTransform(3, (1.0, 2.0, 3.0)))], tmp_path)
    for p in paths:
        errors, out = dciodvfy(p)
        assert errors == [], out


def test_wrong_patient_refused(tmp_path):
    pr = make_pair(tmp_path, size=(12, 12, 4), prior_patient_id="OTHER")
    field = constant_field(pr.current.image, (0, 0, 0))
    with pytest.raises(DicomInputError, match="wrong-patient"):
        write_dsr(pr.current, pr.prior, field)
    with pytest.raises(DicomInputError, match="wrong-patient"):
        write_rigid_reg(pr.current, pr.prior, sitk.TranslationTransform(3))


def test_field_on_wrong_grid_refused(pair):
    other = sitk.Image([5, 5, 5], sitk.sitkVectorFloat64, 3)
    with pytest.raises(DicomInputError, match="not on the current series' grid"):
        write_dsr(pair.current, pair.prior, other)
    with pytest.raises(DicomInputError, match="not on the current series' grid"):
        write_registered_series(pair.current, pair.prior, sitk.Image([5, 5, 5], sitk.sitkFloat32), None)


def test_save_objects_atomic(pair, tmp_path):
    field = constant_field(pair.current.image, (1.0, 0, 0))
    dsr = write_dsr(pair.current, pair.prior, field)
    bad = pydicom.Dataset()  # no SOP UIDs: encoding fails part-way
    bad.Modality = "CT"
    bad.SOPInstanceUID = "1.2.3"
    with pytest.raises(Exception):
        save_objects([dsr, bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []
    paths = save_objects([dsr], tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [paths[0].name]
    assert pydicom.dcmread(paths[0]).SOPInstanceUID == dsr.SOPInstanceUID


def test_same_frame_of_reference_and_float32_field(pair):
    import dataclasses
    same = dataclasses.replace(pair.prior, frame_of_reference_uid=pair.current.frame_of_reference_uid)
    reg = write_rigid_reg(pair.current, same, sitk.TranslationTransform(3, (1.0, 2.0, 3.0)))
    assert len(reg.RegistrationSequence) == 1
    assert np.allclose(reg_matrix(reg, pair.current.frame_of_reference_uid)[:3, 3], [-1.0, -2.0, -3.0])
    field32 = sitk.Cast(constant_field(pair.current.image, (1.5, -2.0, 0.25)), sitk.sitkVectorFloat32)
    vec, _ = dsr_vectors(write_dsr(pair.current, pair.prior, field32))
    assert np.allclose(vec.reshape(-1, 3), (1.5, -2.0, 0.25))


def test_highdicom_required_attributes(results):
    validate = pytest.importorskip("dicom_io.writers.validate")
    try:
        for ds in (results["dsr"], results["reg"], results["series"][0], results["sub"][0]):
            assert validate.missing_required(ds) == []
    except ImportError:
        pytest.skip("highdicom module tables not available")
    broken = pydicom.Dataset(results["dsr"])
    del broken.ContentLabel
    assert any("deformable-spatial-registration" in m for m in validate.missing_required(broken))
