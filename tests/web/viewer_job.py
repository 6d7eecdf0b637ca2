"""A finished job with real result files for the viewer tests: a small synthetic CT pair in the spool (indexed as
Instances), a known displacement field written as the job's DSR and the prior warped with it as its registered
series. The field (LPS mm, current point p -> prior point p + d(p)) is an affine part plus a Gaussian bump that
folds space around ``BUMP_CENTER``:

    d(p) = A (p - C) + e_x * (-FOLD) (x - bx) exp(-|p - b|^2 / (2 SIGMA^2))

so far from the bump the Jacobian determinant is det(I + A) and at its centre it is (1 + A_xx - FOLD)(1 + A_yy)
(1 + A_zz) < 0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom import dcmread
from pydicom.uid import generate_uid

A = np.diag([0.04, -0.03, 0.02])
C = np.array([0.0, 0.0, 0.0])
BUMP_CENTER = np.array([40.0, 10.0, 30.0])
SIGMA = 14.0
FOLD = 1.8
DSR_GRID_MM = 6.0


def field_at(points: np.ndarray) -> np.ndarray:
    """The analytic displacement (mm, LPS) at LPS points (..., 3)."""
    d = (points - C) @ A.T
    r2 = ((points - BUMP_CENTER) ** 2).sum(-1)
    d[..., 0] += -FOLD * (points[..., 0] - BUMP_CENTER[0]) * np.exp(-r2 / (2 * SIGMA ** 2))
    return d


def physical_points(img: sitk.Image) -> np.ndarray:
    """LPS mm of every voxel centre of ``img`` as an array (z, y, x, 3)."""
    size = img.GetSize()
    k, j, i = np.meshgrid(np.arange(size[2]), np.arange(size[1]), np.arange(size[0]), indexing="ij")
    idx = np.stack([i, j, k], -1).astype(float)
    D = np.asarray(img.GetDirection(), float).reshape(3, 3)
    return np.asarray(img.GetOrigin()) + (idx * np.asarray(img.GetSpacing())) @ D.T


def make_viewer_job(db, job_id: int, root: Path, *, spacing_mm: float = 4.0, registered_series: bool = True) -> dict:
    """Write the pair and the results for ``job_id`` (a done/registered job of the web fixtures) under ``root``
    and point the job at them. Returns paths and the images used: current, prior, field, warped."""
    from dicom_io import read_series
    from dicom_io.writers import save_objects, write_dsr, write_registered_series
    from node.store.db import Instance, Job
    from registration_core.synthetic import make_phantom
    from registration_core.warp import warp_image

    current, _, _ = make_phantom(spacing=spacing_mm, seed=5, fov_mm=(280.0, 220.0, 240.0))
    t = sitk.TranslationTransform(3, (5.0, -3.0, 8.0))
    prior = sitk.Resample(current, current, t, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    pts = physical_points(current)
    field = sitk.GetImageFromArray(field_at(pts), isVector=True)
    field.CopyInformation(current)
    warped = warp_image(prior, field)

    with db.session() as s:
        job = s.get(Job, job_id)
        study_uid, prior_study_uid = job.study_uid, job.prior_study_uid or generate_uid()
    common = {"patient_id": "VIEWER-PAT-77", "patient_name": "Viewer^Secret^Name", "birth_date": "19570203"}
    from dicom_io.synthetic_series import write_ct_series
    cur_uid, prior_uid = generate_uid(), generate_uid()
    cur_files = write_ct_series(current, root / "spool" / "current", study_uid=study_uid, series_uid=cur_uid,
                                study_date="20240310", **common)
    prior_files = write_ct_series(prior, root / "spool" / "prior", study_uid=prior_study_uid, series_uid=prior_uid,
                                  study_date="20230105", **common)
    cur_vol, prior_vol = read_series(cur_files), read_series(prior_files)
    dsr = write_dsr(cur_vol, prior_vol, field, grid_spacing_mm=DSR_GRID_MM)
    objs = [dsr] + (write_registered_series(cur_vol, prior_vol, warped, dsr) if registered_series else [])
    result_dir = root / "results" / str(job_id)
    save_objects(objs, result_dir / "dicom")
    with db.session() as s:
        for uid, study, files in ((cur_uid, study_uid, cur_files), (prior_uid, prior_study_uid, prior_files)):
            for f in files:
                ds = dcmread(f, stop_before_pixels=True)
                s.add(Instance(sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                               series_uid=uid, study_uid=study, instance_number=int(ds.InstanceNumber),
                               path=str(f), size_bytes=f.stat().st_size))
        job = s.get(Job, job_id)
        job.current_series_uid, job.prior_series_uid = cur_uid, prior_uid
        job.result_dir = str(result_dir)
    return {"current": cur_vol.image, "prior": prior_vol.image, "field": field, "warped": warped,
            "result_dir": result_dir, "patient": common}
