"""Real CT (shared chest CT, 512x512x48): DICOM round trip with compression, results on real geometry."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEGLSLossless

from dicom_io import read_series
from dicom_io.synthetic_series import write_ct_series
from dicom_io.writers import dsr_vectors, save_objects, write_dsr, write_registered_series, write_rigid_reg
from tools import dciodvfy

from dicomio_helpers import constant_field


@pytest.fixture(scope="module")
def chest(shared_ct):
    return sitk.Cast(sitk.ReadImage(str(shared_ct / "chest_pyradiomics" / "lung1_image.nrrd")), sitk.sitkFloat32)


def test_real_ct_round_trip_and_results(chest, tmp_path):
    t = np.array([4.5, -3.0, 10.0])
    write_ct_series(chest, tmp_path / "cur", patient_id="LUNG1", study_date="20240310")
    prior_img = sitk.Image(chest)
    prior_img.SetOrigin(tuple(np.add(chest.GetOrigin(), t)))
    write_ct_series(prior_img, tmp_path / "pri", patient_id="LUNG1", study_date="20230105",
                    transfer_syntax=JPEGLSLossless)
    cur = read_series(tmp_path / "cur")
    prior = read_series(tmp_path / "pri")
    assert np.array_equal(sitk.GetArrayFromImage(cur.image), sitk.GetArrayFromImage(chest))
    assert np.array_equal(sitk.GetArrayFromImage(prior.image), sitk.GetArrayFromImage(chest))
    assert np.allclose(prior.image.GetOrigin(), np.add(chest.GetOrigin(), t), atol=1e-4)

    field = constant_field(cur.image, t)
    dsr = write_dsr(cur, prior, field, grid_spacing_mm=4.0)
    vec, grid = dsr_vectors(dsr)
    assert np.allclose(vec.reshape(-1, 3), t, atol=1e-4)
    warped = sitk.Resample(prior.image, cur.image, sitk.DisplacementFieldTransform(sitk.Image(field)),
                           sitk.sitkLinear, -1024.0)
    series = write_registered_series(cur, prior, warped, dsr)
    reg = write_rigid_reg(cur, prior, sitk.TranslationTransform(3, tuple(t)))
    paths = save_objects([dsr, reg, series[0], series[-1]], tmp_path / "out")
    for p in paths:
        errors, out = dciodvfy(p)
        assert errors == [], out
    # the registered prior equals the current scan wherever the prior covers it
    arr = np.stack([s.pixel_array for s in series]).astype(np.float32)
    inside = arr != -1024
    assert inside.mean() > 0.6
    assert np.abs(arr[inside] - sitk.GetArrayFromImage(cur.image)[inside]).max() <= 1.0
