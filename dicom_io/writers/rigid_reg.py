"""Spatial Registration (SOP class 1.2.840.10008.5.1.4.1.1.66.1) builder for the rigid/affine part.

Direction (PS3.3 C.20.2): each Registration Sequence item's matrix maps coordinates of ITS Frame of Reference
(here: the prior's) into the registered Frame of Reference of the object (the current's).  Our affine comes as a
SimpleITK transform in the resampling direction (current point -> prior point), so the stored 4x4 matrix is its
inverse, with the rotation centre folded into the translation:  x_current = M . x_prior  (homogeneous, LPS mm).
An identity item for the current Frame of Reference comes first (as MIM and pydicomrt do), unless the prior
shares the current Frame of Reference (then only the matrix item is written).
Matrix type: RIGID (orthonormal, det +1), RIGID_SCALE (orthogonal axes with scaling) or AFFINE.
"""
from __future__ import annotations

import datetime as _dt

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ..errors import DicomInputError
from ..reader import SeriesVolume
from ..values import format_ds_list, now_da_tm
from .common import (Equipment, check_same_patient, code_item, common_instance_reference, file_meta_for,
                     new_registration_dataset, referenced_image_sequence)

REG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.1"


def homogeneous(transform: sitk.Transform) -> np.ndarray:
    """4x4 homogeneous matrix of a linear SimpleITK 3D transform (centre folded into the translation).

    y = A (x - c) + c + t  ->  [[A, c + t - A c], [0, 0, 0, 1]], same direction as the transform.
    """
    if transform.GetDimension() != 3:
        raise DicomInputError("the affine transform must be 3D")
    tx = transform.Downcast() if type(transform) is sitk.Transform else transform
    if isinstance(tx, sitk.TranslationTransform):
        A, t, c = np.eye(3), np.asarray(tx.GetOffset(), float), np.zeros(3)
    elif hasattr(tx, "GetMatrix") and hasattr(tx, "GetCenter"):
        A = np.asarray(tx.GetMatrix(), float).reshape(3, 3)
        t = np.asarray(tx.GetTranslation(), float)
        c = np.asarray(tx.GetCenter(), float)
    else:
        raise DicomInputError(f"the rigid/affine transform must be linear, got {transform.GetName()}")
    m = np.eye(4)
    m[:3, :3] = A
    m[:3, 3] = c + t - A @ c
    return m


def matrix_type(m: np.ndarray, tol: float = 1e-4) -> str:
    """DICOM Frame of Reference Transformation Matrix Type for a 4x4 matrix: RIGID, RIGID_SCALE or AFFINE."""
    A = m[:3, :3]
    gram = A.T @ A
    if np.allclose(gram, np.eye(3), atol=tol) and np.linalg.det(A) > 0:
        return "RIGID"
    if np.allclose(gram, np.diag(np.diag(gram)), atol=tol) and np.linalg.det(A) > 0:
        return "RIGID_SCALE"
    return "AFFINE"


def prior_to_current_matrix(affine: sitk.Transform) -> np.ndarray:
    """The REG matrix (prior -> current, 4x4) for a resampling affine (current point -> prior point)."""
    m = homogeneous(affine)
    if abs(np.linalg.det(m[:3, :3])) < 1e-9:
        raise DicomInputError("the affine transform is singular and cannot be inverted")
    inv = np.linalg.inv(m)
    inv[3] = [0.0, 0.0, 0.0, 1.0]
    return inv


def _matrix_registration(matrix: np.ndarray, mtype: str, code: Dataset, comment: str) -> Sequence:
    mi = Dataset()
    mi.FrameOfReferenceTransformationMatrix = format_ds_list(matrix.ravel())
    mi.FrameOfReferenceTransformationMatrixType = mtype
    reg = Dataset()
    reg.FrameOfReferenceTransformationComment = comment
    reg.RegistrationTypeCodeSequence = Sequence([code])
    reg.MatrixSequence = Sequence([mi])
    return Sequence([reg])


def write_rigid_reg(
    current: SeriesVolume,
    prior: SeriesVolume,
    affine: sitk.Transform,
    *,
    software_version: str = "0.1.0",
    equipment: Equipment | None = None,
    series_number: int = 902,
    instance_number: int = 1,
    series_description: str = "TotalRegistrator rigid registration",
    content_creator: str = "",
    now: _dt.datetime | None = None,
) -> Dataset:
    """Build the Spatial Registration object for the affine part (in memory).

    `affine`: SimpleITK linear transform, current (fixed) point -> prior (moving) point, LPS mm.  The stored matrix
    is its inverse (prior -> current), see the module docstring.  Returns a pydicom Dataset with file_meta.
    """
    check_same_patient(current, prior)
    m = prior_to_current_matrix(affine)
    mtype = matrix_type(m)
    equipment = equipment or Equipment(software_version=software_version)
    da, tm = now_da_tm(now)

    ds = new_registration_dataset(current, REG_SOP_CLASS, equipment=equipment, da=da, tm=tm,
                                  series_number=series_number, series_description=series_description,
                                  instance_number=instance_number, label="RIGID_REG")
    ds.ContentDescription = f"{mtype} registration of prior {prior.study_date} to current {current.study_date}"[:64]
    ds.ContentCreatorName = content_creator

    ident = Dataset()
    ident.FrameOfReferenceUID = current.frame_of_reference_uid
    ident.ReferencedImageSequence = referenced_image_sequence(current)
    ident.MatrixRegistrationSequence = _matrix_registration(
        np.eye(4), "RIGID", code_item("125021", "DCM", "Frame of Reference Identity"), "Identity (current scan)")
    moving = Dataset()
    moving.FrameOfReferenceUID = prior.frame_of_reference_uid
    moving.ReferencedImageSequence = referenced_image_sequence(prior)
    moving.MatrixRegistrationSequence = _matrix_registration(
        m, mtype, code_item("125024", "DCM", "Image Content-based Alignment"),
        "Maps prior coordinates to current coordinates, mm")
    same_for = prior.frame_of_reference_uid == current.frame_of_reference_uid
    # one Frame of Reference cannot be both identity and moved: then only the matrix item is written
    ds.RegistrationSequence = Sequence([moving] if same_for else [ident, moving])

    common_instance_reference(ds, current, [prior])
    file_meta_for(ds)
    return ds


def reg_matrix(ds: Dataset, frame_of_reference_uid: str) -> np.ndarray:
    """The 4x4 matrix (its FoR -> the object's FoR) stored for `frame_of_reference_uid` in a Spatial Registration."""
    for item in ds.RegistrationSequence:
        if str(item.get("FrameOfReferenceUID", "")) == frame_of_reference_uid:
            m = np.eye(4)
            for mi in item.MatrixRegistrationSequence[0].MatrixSequence:
                m = np.asarray(mi.FrameOfReferenceTransformationMatrix, float).reshape(4, 4) @ m
            return m
    raise KeyError(frame_of_reference_uid)
