"""Helpers for dicom_io tests: small synthetic current/prior CT studies written as real DICOM files.

(A uniquely named module, so test files never import another folder's conftest by accident.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dicom_io import SeriesVolume, read_series
from dicom_io.synthetic_series import make_test_volume, write_ct_series

ROT_Z20 = (math.cos(0.35), -math.sin(0.35), 0.0, math.sin(0.35), math.cos(0.35), 0.0, 0.0, 0.0, 1.0)
FEET_FIRST = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # feet-first supine: rows run to patient right, slices head-ward


@dataclass
class Pair:
    current: SeriesVolume
    prior: SeriesVolume
    current_files: list[Path]
    prior_files: list[Path]
    shift: np.ndarray  # current point p shows the same anatomy as prior point p + shift (LPS mm)


def constant_field(ref: sitk.Image, vec) -> sitk.Image:
    """A displacement field (vector float64) on ref's grid, equal to vec everywhere."""
    arr = np.zeros((*sitk.GetArrayViewFromImage(ref).shape, 3))
    arr[...] = np.asarray(vec, float)
    f = sitk.GetImageFromArray(arr, isVector=True)
    f.CopyInformation(ref)
    return f


def smooth_field(ref: sitk.Image, amplitude: float = 4.0, wavelength: float = 120.0, offset=(0.0, 0.0, 0.0)):
    """A smooth non-linear displacement field on ref's grid (mm): sinusoids of the LPS coordinates plus offset."""
    size = ref.GetSize()
    idx = np.stack(np.meshgrid(np.arange(size[0]), np.arange(size[1]), np.arange(size[2]), indexing="ij"), -1)
    d = np.asarray(ref.GetDirection()).reshape(3, 3)
    pts = np.asarray(ref.GetOrigin()) + (idx * np.asarray(ref.GetSpacing())) @ d.T  # (x, y, z, 3)
    k = 2 * np.pi / wavelength
    disp = np.stack([
        amplitude * np.sin(k * pts[..., 1]) + offset[0],
        amplitude * np.cos(k * pts[..., 2]) * 0.5 + offset[1],
        amplitude * np.sin(k * pts[..., 0] + 0.3) * 0.75 + offset[2],
    ], -1)
    f = sitk.GetImageFromArray(np.transpose(disp, (2, 1, 0, 3)), isVector=True)
    f.CopyInformation(ref)
    return f


def make_pair(folder: Path, direction=None, shift=(6.0, -4.5, 5.0), size=(34, 30, 12), patient_id="PAT1",
              prior_patient_id=None) -> Pair:
    """Write a current study and a prior study (prior = current translated by `shift`) and read both back."""
    img = make_test_volume(size=size, direction=direction)
    cur_files = write_ct_series(img, folder / "current", patient_id=patient_id, study_date="20240310",
                                series_description="CT current")
    prior = sitk.Image(img)
    prior.SetOrigin(tuple(np.asarray(img.GetOrigin()) + np.asarray(shift)))  # prior(q) = current(q - shift)
    pri_files = write_ct_series(prior, folder / "prior", patient_id=prior_patient_id or patient_id,
                                study_date="20230105", series_description="CT prior",
                                windows=((50.0, 350.0, "MEDIASTINUM"),))
    return Pair(read_series(folder / "current"), read_series(folder / "prior"), cur_files, pri_files,
                np.asarray(shift, float))
