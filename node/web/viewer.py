"""The job viewer's data: a finished job's volumes as NIfTI for the console's NiiVue viewer (node/static/viewer/).

Four volumes per registered job, derived from the job's own results and cached on disk in ``<result_dir>/viewer/``:

- ``current``: the current CT (HU, int16) read from the spool (the series the job registered to); when the spool
  no longer holds it, the sum of the registered prior and the subtraction series when the job wrote both;
- ``prior``: the registered prior (HU, int16) — the job's registered series (DICOM derivation code 113085), or the
  prior series from the spool warped with the DSR's field when the job wrote no registered series;
- ``displacement``: |d| in mm (float32) on the DSR's grid (the job's DSR object: vectors current point -> prior
  point, LPS mm, p -> p + d(p));
- ``jacobian``: the Jacobian determinant of p -> p + d(p) (float32, dimensionless) on the same grid; ``<= 0``
  means folding.

Headers carry geometry only (NIfTI qform/sform: ITK's LPS converted to RAS by SimpleITK); description, aux file,
intent name are empty — no patient data. Access needs a signed-in console user (any role, like the job page).
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy.orm import Session

from pydicom.uid import DeformableSpatialRegistrationStorage as DSR_SOP_CLASS  # dicom_io.writers.dsr's class
from node.store.db import Job
from node.store.queries import series_paths

from . import auth
from .deps import DbId, db, page_user

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

VOLUMES = ("current", "prior", "displacement", "jacobian")
CACHE_DIR = "viewer"
CACHE_VERSION = 2
CODE_RESAMPLED, CODE_SUBTRACTION = "113085", "113062"
#: the CT volumes are shown on a coarser grid (same extent, linear) beyond this many voxels: a browser holds each
#: one as a texture (a 512 x 512 x 1000 whole-body CT is 262 M voxels; 48 M int16 voxels are 96 MB)
MAX_VIEWER_VOXELS = 48_000_000
#: window/level presets (centre, width) in HU offered by the viewer
PRESETS = {"lung": (-600.0, 1500.0), "soft tissue": (40.0, 400.0), "bone": (400.0, 1800.0)}
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


class ViewerUnavailable(Exception):
    """The job has no volumes to show (the message says why, in plain words)."""


@dataclass
class JobSources:
    """Where a job's viewer volumes come from: result folder, spool paths of the current and prior series."""

    job_id: int
    result_dir: Path
    current_paths: list[Path]
    prior_paths: list[Path]


def job_sources(session: Session, job_id: int) -> JobSources:
    """The job's result folder and the spool paths of its current and prior series (ordered by InstanceNumber).
    Raises :class:`ViewerUnavailable` when the job is unknown, not registered or has no result folder."""
    job = session.get(Job, job_id)
    if job is None:
        raise ViewerUnavailable(f"there is no job {job_id}")
    if job.state != "done" or job.outcome != "registered" or not job.result_dir:
        raise ViewerUnavailable(f"job {job_id} has no registration results to view")

    def paths(series_uid: str | None) -> list[Path]:
        return series_paths(session, series_uid) if series_uid else []

    return JobSources(job_id, Path(job.result_dir), paths(job.current_series_uid), paths(job.prior_series_uid))


def _result_objects(dicom_dir: Path) -> tuple[Path | None, list[Path], list[Path]]:
    """(DSR file, registered-series files, subtraction-series files) among a job's result files."""
    from pydicom import dcmread

    dsr, registered, subtraction = None, [], []
    for f in sorted(dicom_dir.glob("*.dcm")):
        ds = dcmread(f, stop_before_pixels=True)
        if str(ds.get("SOPClassUID", "")) == DSR_SOP_CLASS:
            dsr = dsr or f
            continue
        codes = [str(c.get("CodeValue", "")) for c in ds.get("DerivationCodeSequence", [])]
        if CODE_RESAMPLED in codes:
            registered.append(f)
        elif CODE_SUBTRACTION in codes:
            subtraction.append(f)
    return dsr, registered, subtraction


def _fingerprint(files: list[Path]) -> list[list]:
    out = []
    for f in files:
        st = f.stat()
        out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


def field_from_dsr(path: Path):
    """The DSR's displacement field as a SimpleITK vector image (float64, mm along LPS, current point p -> prior
    point p + d(p)) on the DSR's own grid (origin, spacing, direction from the object)."""
    import SimpleITK as sitk
    from pydicom import dcmread

    from dicom_io.writers.dsr import dsr_vectors  # reason: highdicom + SimpleITK (~70 MB) only when a viewer opens

    vec, grid = dsr_vectors(dcmread(path))
    field = sitk.GetImageFromArray(np.asarray(vec, dtype=np.float64), isVector=True)
    field.CopyInformation(grid)
    return field


def _clean_scalar(arr: np.ndarray, like, dtype) -> object:
    """A fresh SimpleITK image (no metadata carried over) with ``like``'s geometry."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.astype(dtype)))
    img.SetOrigin(like.GetOrigin())
    img.SetSpacing(like.GetSpacing())
    img.SetDirection(like.GetDirection())
    return img


def _write_nifti(img, path: Path) -> None:
    import SimpleITK as sitk

    tmp = path.with_name(path.name + ".tmp.nii.gz")
    sitk.WriteImage(img, str(tmp), True)
    os.replace(tmp, path)


def viewer_grid(img):
    """``img`` itself when it has at most :data:`MAX_VIEWER_VOXELS` voxels, else an empty image over the same extent
    (same origin and direction, LPS mm) with every spacing multiplied by one factor so that it has at most that many."""
    import SimpleITK as sitk

    size = np.asarray(img.GetSize(), float)
    if size.prod() <= MAX_VIEWER_VOXELS:
        return img
    factor = (size.prod() / MAX_VIEWER_VOXELS) ** (1.0 / 3.0)
    new_size = np.maximum(1, np.floor((size - 1) / factor) + 1).astype(int)
    while new_size.prod() > MAX_VIEWER_VOXELS:
        factor *= 1.01
        new_size = np.maximum(1, np.floor((size - 1) / factor) + 1).astype(int)
    ref = sitk.Image([int(v) for v in new_size], sitk.sitkUInt8)
    ref.SetOrigin(img.GetOrigin())
    ref.SetDirection(img.GetDirection())
    ref.SetSpacing([float(sp * factor) for sp in img.GetSpacing()])
    return ref


def _hu(img) -> np.ndarray:
    import SimpleITK as sitk

    return np.clip(np.round(sitk.GetArrayFromImage(img)), -32768, 32767)


def build_volumes(src: JobSources) -> dict:
    """Write (or reuse) the job's viewer volumes under ``<result_dir>/viewer/``; returns the manifest (volume
    file names, statistics: |d| max/mean in mm, Jacobian min, folding % of the DSR grid, presets).
    Rebuilt when the result files change. Raises :class:`ViewerUnavailable` when nothing can be shown."""
    dicom_dir = src.result_dir / "dicom"
    if not dicom_dir.is_dir():
        raise ViewerUnavailable(f"job {src.job_id}'s result files are not on disk any more")
    out = src.result_dir / CACHE_DIR
    key = str(out)
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        dsr, registered, subtraction = _result_objects(dicom_dir)
        sources = {"dsr": _fingerprint([dsr] if dsr else []), "registered": _fingerprint(registered),
                   "subtraction": _fingerprint(subtraction), "current": len(src.current_paths),
                   "prior": len(src.prior_paths), "version": CACHE_VERSION}
        manifest_path = out / "manifest.json"
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
                if manifest.get("sources") == sources and all((out / f).is_file()
                                                             for f in manifest["files"].values()):
                    return manifest
            except (ValueError, KeyError, TypeError):
                pass
        manifest = _build(src, out, dsr, registered, subtraction)
        manifest["sources"] = sources
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, manifest_path)
        return manifest


def _build(src: JobSources, out: Path, dsr: Path | None, registered: list[Path], subtraction: list[Path]) -> dict:
    import SimpleITK as sitk

    from dicom_io import DicomInputError, read_series  # reason: SimpleITK (~85 MB) only when a viewer opens

    out.mkdir(parents=True, exist_ok=True)
    files, notes, stats = {}, [], {}

    def read(paths, what):
        try:
            return read_series(paths) if paths and all(p.is_file() for p in paths) else None
        except DicomInputError as exc:
            notes.append(f"{what} not readable: {exc}")
            return None

    cur = read(src.current_paths, "current series")
    reg = read(registered, "registered prior")
    field = field_from_dsr(dsr) if dsr else None
    current_img = cur.image if cur is not None else None
    if current_img is None and reg is not None and subtraction:
        sub = read(subtraction, "subtraction series")
        if sub is not None:  # subtraction = current - registered prior, on the current grid
            current_img = sitk.Cast(sub.image, sitk.sitkFloat32) + sitk.Cast(reg.image, sitk.sitkFloat32)
            notes.append("current scan rebuilt from the registered prior and the subtraction series")
    prior_img = reg.image if reg is not None else None
    if prior_img is None and field is not None and current_img is not None:
        prior = read(src.prior_paths, "prior series")
        if prior is not None:
            from registration_core.warp import warp_image  # reason: torch (~200 MB, 2 s), not in every console
            dense = sitk.Resample(field, current_img, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0,
                                  sitk.sitkVectorFloat64)
            prior_img = warp_image(prior.image, dense)
            notes.append("registered prior warped here with the DSR's field (the job wrote no registered series)")
    if current_img is None and prior_img is None:
        raise ViewerUnavailable(f"job {src.job_id}: neither the current scan nor the registered prior is available")
    base = current_img if current_img is not None else prior_img
    grid = viewer_grid(base)
    coarse = grid is not base
    if coarse:
        notes.append("shown on a coarser grid of " + " x ".join(f"{v:.2f}" for v in grid.GetSpacing())
                     + f" mm (the scan has more than {MAX_VIEWER_VOXELS // 1_000_000} M voxels)")
    for name, img in (("current", current_img), ("prior", prior_img)):
        if img is not None and coarse:
            img = sitk.Resample(img, grid, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, -1024.0,
                                sitk.sitkFloat32)
        if img is not None:
            files[name] = f"{name}.nii.gz"
            _write_nifti(_clean_scalar(_hu(img), img, np.int16), out / files[name])
    if field is not None:
        from registration_core.metrics import jacobian_determinant_array  # reason: scipy + SimpleITK on first use

        vec = sitk.GetArrayViewFromImage(field)
        mag = np.sqrt((np.asarray(vec, np.float64) ** 2).sum(-1))
        det = jacobian_determinant_array(field)
        files["displacement"] = "displacement.nii.gz"
        files["jacobian"] = "jacobian.nii.gz"
        _write_nifti(_clean_scalar(mag, field, np.float32), out / files["displacement"])
        _write_nifti(_clean_scalar(det, field, np.float32), out / files["jacobian"])
        stats = {"displacement_max_mm": round(float(mag.max()), 3), "displacement_mean_mm": round(float(mag.mean()), 3),
                 "jacobian_min": round(float(det.min()), 4), "jacobian_max": round(float(det.max()), 4),
                 "folding_percent": round(float(100.0 * (det <= 0).mean()), 4),
                 "grid_spacing_mm": [round(float(s), 3) for s in field.GetSpacing()]}
    else:
        notes.append("the job wrote no DSR: no displacement or Jacobian overlay")
    return {"files": files, "stats": stats, "notes": notes,
            "presets": {k: {"center": c, "width": w} for k, (c, w) in PRESETS.items()}}


def _manifest(request: Request, session: Session, job_id: int) -> tuple[Path, dict]:
    try:
        src = job_sources(session, job_id)
        session.rollback()  # the build may take seconds: do not hold the database transaction
        return src.result_dir / CACHE_DIR, build_volumes(src)
    except ViewerUnavailable as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/jobs/{job_id}/viewer.json")
def viewer_manifest(request: Request, job_id: DbId, user: auth.Principal = Depends(page_user),
                    session: Session = Depends(db)):
    """What the viewer can show for a job: volume URLs (NIfTI), statistics (|d| in mm, Jacobian, folding % on the
    DSR grid), window presets (HU) and notes. 404 with the reason when the job has nothing to view."""
    _, m = _manifest(request, session, job_id)
    urls = {name: (f"/jobs/{job_id}/viewer/{name}.nii.gz" if name in m["files"] else None) for name in VOLUMES}
    return JSONResponse({"job_id": job_id, "volumes": urls, "stats": m["stats"], "presets": m["presets"],
                         "notes": m["notes"]}, headers={"Cache-Control": "private, no-store"})


@router.get("/jobs/{job_id}/viewer/{name}.nii.gz")
def viewer_volume(request: Request, job_id: DbId, name: str, user: auth.Principal = Depends(page_user),
                  session: Session = Depends(db)):
    """One of the job's viewer volumes (``current``, ``prior``, ``displacement``, ``jacobian``) as gzipped NIfTI-1."""
    if name not in VOLUMES:
        raise HTTPException(404, f"no volume '{name}' (one of {', '.join(VOLUMES)})")
    folder, m = _manifest(request, session, job_id)
    if name not in m["files"]:
        raise HTTPException(404, f"job {job_id} has no {name} volume")
    path = folder / m["files"][name]
    if not path.is_file():
        raise HTTPException(404, f"job {job_id}'s {name} volume is missing on disk")
    return FileResponse(path, media_type="application/gzip", headers={"Cache-Control": "private, no-store"})
