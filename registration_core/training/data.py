"""Training samples at the network's working resolution, and the on-disk cache of them.

A *sample* is what the engine feeds the network (see ``engine.register`` step 3-4), plus targets:

- ``f``: fixed (current) CT on an axis-aligned isotropic grid over the fixed body box (``spacing`` mm, default
  4), normalised to [0, 1] (HU window -1000..1000), float16 [z, y, x];
- ``m``: moving (prior) CT resampled onto the same grid through an affine ``A`` (fixed point -> moving point,
  ``y = M x + b``), normalised likewise. ``A`` is the engine's own affine stage (:func:`engine_affine`), so the
  network learns exactly the residual it meets at inference; ``build_sample(affine="truth")`` uses instead the
  least-squares affine of the true correspondences inside the body, perturbed by a small random rigid error;
- ``u`` (optional): ground-truth residual field in VOXELS, channels (x, y, z), [3, z, y, x] float16, defined by
  ``A(x + u(x)) = x + d(x)`` with ``d`` the exact total field (so fixed voxel v <-> ``m`` at v + u(v), the network's
  output convention); ``valid`` (uint8) marks where it is defined (inside both fields of view);
- ``body`` (uint8): fixed body mask; ``rf`` / ``rm`` (optional, uint8): region maps (0 unknown, 1..4, see
  :mod:`.regions`) of the fixed image and of the moving image resampled through ``A`` (nearest neighbour);
- ``lm_p`` / ``lm_q`` (optional): landmarks (fixed / moving, LPS mm) and ``M``, ``b``, ``origin``, ``spacing``
  to map a prediction back to millimetres for TRE.

Samples are saved as uncompressed ``.npz`` (a few MB each) in a cache folder (``var/train_cache/`` by default,
git-ignored) so the training loop never touches DICOM/NIfTI or the phantom renderer. Series folders (DICOM) are read
through a ``read_volume`` callable the caller passes (the node's ``totalreg train cache`` passes its DICOM reader).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..config import RegistrationConfig
from ..engine import affine_stage, prepare_pair
from ..geometry import WorkGrid, inside_image, physical_bounds, shrink_for
from ..io import read_image
from ..preprocess import Prepared, body_mask, normalise
from ..regions import apply_lut, lut_from_names
from ..synthetic import longitudinal_pair, make_longitudinal_pair, random_realistic_deformation
from .regions import load_classmap, phantom_lut

WINDOW = (-1000.0, 1000.0)
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


# ---------------------------------------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------------------------------------
def _rot(angles_deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def fit_affine(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares affine ``q ~ M p + b`` of corresponding points [N, 3] (mm); returns (M 3x3, b 3)."""
    X = np.concatenate([p, np.ones((len(p), 1))], 1)
    sol, *_ = np.linalg.lstsq(X, q, rcond=None)
    return sol[:3].T.copy(), sol[3].copy()


def _sitk_affine(M: np.ndarray, b: np.ndarray) -> sitk.AffineTransform:
    t = sitk.AffineTransform(3)
    t.SetMatrix([float(v) for v in M.ravel()])
    t.SetTranslation([float(v) for v in b])
    return t


def grid_points(grid: WorkGrid) -> np.ndarray:
    """World points (LPS mm) of a WorkGrid's voxel centres, [z, y, x, 3] (x, y, z)."""
    nx, ny, nz = grid.size
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    return np.asarray(grid.origin) + grid.spacing * np.stack([i, j, k], -1).astype(np.float64)


def _resample_field(field: sitk.Image, grid: WorkGrid) -> tuple[np.ndarray, np.ndarray]:
    """Vector field sampled (linear) at the grid's voxel centres: ([z,y,x,3] mm, inside-domain bool [z,y,x])."""
    ref = sitk.Image([int(v) for v in grid.size], sitk.sitkUInt8)
    ref.SetOrigin(grid.origin)
    ref.SetSpacing([grid.spacing] * 3)
    out = sitk.Resample(sitk.Cast(field, sitk.sitkVectorFloat64), ref, sitk.Transform(), sitk.sitkLinear, 0.0,
                        sitk.sitkVectorFloat64)
    ones = sitk.Image(field.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(field)
    inside = sitk.Resample(ones, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(inside) > 0


def _region_on_grid(labels: sitk.Image, lut: np.ndarray, grid: WorkGrid, transform=None) -> np.ndarray:
    reg = sitk.GetImageFromArray(apply_lut(sitk.GetArrayViewFromImage(labels), lut))
    reg.CopyInformation(labels)
    return grid.resample(reg, transform=transform, default=0, interpolator=sitk.sitkNearestNeighbor).astype(np.uint8)


def intensity_change(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random CT intensity change (HU): global gain 0.92..1.08 and offset +-30 HU on tissue, lung density shift
    +-40 HU, so self-supervised pairs are not identical in intensity (scanner/contrast/breathing differences)."""
    out = hu.astype(np.float32, copy=True)
    tissue = out > -900
    lung = (out > -950) & (out < -500)
    out[tissue] = out[tissue] * rng.uniform(0.92, 1.08) + rng.uniform(-30, 30)
    out[lung] += rng.uniform(-40, 40)
    return out


# ---------------------------------------------------------------------------------------------------------
# one sample
# ---------------------------------------------------------------------------------------------------------
def build_sample(fixed: sitk.Image, moving: sitk.Image, *, displacement: sitk.Image | None = None,
                 fixed_labels: sitk.Image | None = None, moving_labels: sitk.Image | None = None,
                 lut: np.ndarray | None = None, landmarks=None, rng: np.random.Generator | None = None,
                 spacing: float = 4.0, affine_error=(2.0, 4.0), fixed_intensity_change: bool = False,
                 kind: str = "pair", name: str = "", affine: str = "engine",
                 extrapolate: bool = RegistrationConfig.extrapolate_edges) -> dict:
    """Make one training sample (see the module docstring) from a fixed/moving CT pair (HU, any grids, LPS mm).

    ``displacement``: exact total field (fixed grid, mm, fixed p <-> moving p + d(p)) or None (no field target).
    ``affine``: "engine" (default) runs the engine's own affine stage
    (:func:`registration_core.engine.affine_stage` with :class:`RegistrationConfig` defaults), so the network
    trains on exactly the residual it meets at inference; "truth" uses the least-squares affine of the exact
    correspondences plus a random error of up to ``affine_error`` = (max rotation deg, max shift mm). Pairs
    without a field always use the engine's affine. ``lut``: label id -> region id table for both label maps.
    ``extrapolate``: fill outside each scan's field of view with its nearest edge voxel (the engine's default
    working images) instead of -1024 HU; ``body`` is computed from the fixed image as resampled.
    """
    rng = rng or np.random.default_rng(0)
    fp = Prepared(fixed, "fixed (current) image", spacing, -500.0, 15.0)
    grid = fp.grid(spacing)
    X = grid_points(grid)
    if displacement is None or affine == "engine":
        M, b = engine_affine(fixed, moving)
    if displacement is not None:
        d, ok = _resample_field(displacement, grid)
        if affine != "engine":
            sel = fp.mask_on(grid) & ok
            if sel.sum() < 100:
                sel = ok
            step = max(1, int(sel.sum() // 20000))
            pts = X[sel][::step]
            M, b = fit_affine(pts, pts + d[sel][::step])
            rot_deg, shift_mm = affine_error
            if rot_deg or shift_mm:
                c = pts.mean(0)
                E = _rot(rng.uniform(-1, 1, 3) * rot_deg)
                e = rng.uniform(-1, 1, 3) * shift_mm
                # A'(x) = A(E (x - c) + c + e): an affine stage that is slightly off
                b = M @ (c + e - E @ c) + b
                M = M @ E
        Minv = np.linalg.inv(M)
        u_mm = (X + d - b) @ Minv.T - X
        valid = ok & inside_image(moving, X + d)
    else:
        u_mm, valid = None, None
    A = _sitk_affine(M, b)
    # as the engine's working images (resample_stage, ``extrapolate_edges``): each scan's edge voxels carried on
    # past its field of view, not a -1024 HU air edge the network would meet nowhere at inference
    f_hu = grid.resample(shrink_for(fixed, spacing), default=-1024.0, extrapolate=extrapolate)
    if fixed_intensity_change:
        f_hu = intensity_change(f_hu, rng)
    m_hu = grid.resample(shrink_for(moving, spacing), transform=A, default=-1024.0, extrapolate=extrapolate)
    out = {"f": normalise(f_hu, WINDOW).astype(np.float16), "m": normalise(m_hu, WINDOW).astype(np.float16),
           "body": body_mask(f_hu, spacing).astype(np.uint8), "origin": np.asarray(grid.origin, float),
           "spacing": np.float64(grid.spacing), "M": M, "b": b, "kind": np.str_(kind), "name": np.str_(name)}
    if u_mm is not None:
        out["u"] = np.ascontiguousarray((u_mm / grid.spacing).transpose(3, 0, 1, 2)).astype(np.float16)
        out["valid"] = valid.astype(np.uint8)
    if lut is not None and fixed_labels is not None:
        out["rf"] = _region_on_grid(fixed_labels, lut, grid)
    if lut is not None and moving_labels is not None:
        out["rm"] = _region_on_grid(moving_labels, lut, grid, transform=A)
    if landmarks is not None and len(landmarks[0]):
        out["lm_p"] = np.asarray(landmarks[0], float)
        out["lm_q"] = np.asarray(landmarks[1], float)
    return out


def engine_affine(fixed: sitk.Image, moving: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The engine's affine stage with default settings (CPU): fixed point x (LPS mm) -> moving point M x + b."""
    cfg = RegistrationConfig()
    aff = affine_stage(*prepare_pair(fixed, moving, cfg), cfg, torch.device("cpu"))
    return aff.matrix, aff.center + aff.translation - aff.matrix @ aff.center


def residual_to_mm(u_vox_xyz: np.ndarray, sample: dict, points_mm: np.ndarray) -> np.ndarray:
    """Map fixed points (LPS mm, [N, 3]) to moving points through ``A(p + u(p))``; ``u`` [3, z, y, x] voxels
    (x, y, z channels) on the sample's grid, sampled trilinearly (edge-clamped)."""
    sp = float(sample["spacing"])
    idx = (points_mm - sample["origin"]) / sp           # x, y, z continuous index
    coords = idx[:, ::-1].T                              # z, y, x
    u = np.stack([ndimage.map_coordinates(u_vox_xyz[c].astype(np.float64), coords, order=1, mode="nearest")
                  for c in range(3)], 1) * sp
    return (points_mm + u) @ np.asarray(sample["M"]).T + np.asarray(sample["b"])


# ---------------------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------------------
def _isotropic(image: sitk.Image, spacing: float) -> sitk.Image:
    """Axis-aligned isotropic copy (LPS) over the image's bounds (linear, -1024 outside)."""
    lo, hi = physical_bounds(image)
    g = WorkGrid.covering(lo, hi, spacing)
    img = sitk.GetImageFromArray(g.resample(shrink_for(image, spacing), default=-1024.0))
    img.SetOrigin(g.origin)
    img.SetSpacing([spacing] * 3)
    return img


def _isotropic_labels(labels: sitk.Image, like: sitk.Image) -> sitk.Image:
    return sitk.Resample(labels, like, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)


def synthetic_sample(phantom_seed: int, seed: int, spacing: float = 4.0, rng=None) -> dict:
    """Sample from a synthetic longitudinal pair (``make_longitudinal_pair``) with its exact field."""
    s = make_longitudinal_pair(phantom_seed, seed, spacing=spacing, n_landmarks=100)
    return build_sample(s.fixed, s.moving, displacement=s.displacement, fixed_labels=s.fixed_labels,
                        moving_labels=s.moving_labels, lut=phantom_lut(), landmarks=s.landmarks,
                        rng=rng or np.random.default_rng(seed), spacing=spacing, kind="synthetic",
                        name=f"phantom{phantom_seed}_seed{seed}")


def self_supervised_sample(image: sitk.Image, seed: int, labels: sitk.Image | None = None,
                           lut: np.ndarray | None = None, spacing: float = 4.0, name: str = "") -> dict:
    """Sample from ONE CT: random realistic deformation (rigid + B-spline, exact field) + intensity change."""
    rng = np.random.default_rng(seed)
    img = _isotropic(image, 3.0)
    lab = _isotropic_labels(labels, img) if labels is not None else None
    s = random_realistic_deformation(img, lab, seed, amplitude_mm=float(rng.uniform(4.0, 12.0)),
                                     control_spacing_mm=float(rng.uniform(40.0, 80.0)), max_shift_mm=15.0,
                                     max_rot_deg=6.0, n_landmarks=60)
    return build_sample(s.fixed, s.moving, displacement=s.displacement, fixed_labels=s.fixed_labels,
                        moving_labels=s.moving_labels, lut=lut if lab is not None else None, landmarks=s.landmarks,
                        rng=rng, spacing=spacing, fixed_intensity_change=True, kind="self_supervised",
                        name=f"{name}_seed{seed}")


#: structure names of the label ids :func:`hu_region_labels` writes (mapped to regions by ``regions.py``)
HU_REGION_NAMES = {1: "lung", 3: "bone"}
#: HU from which a voxel inside the body counts as bone in :func:`hu_region_labels`
BONE_HU = 250.0


def body_and_lungs_hu(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(body, lungs) boolean arrays [z, y, x] of a CT (HU): body = largest component of HU > -300 with its holes
    filled slice by slice (so the lungs count as inside even where the trachea opens them to the scan's edge);
    lungs = air (HU < -400) inside the body in components of at least 50 ml."""
    hu = sitk.GetArrayViewFromImage(image)
    lab, n = ndimage.label(hu > -300)
    if n == 0:
        z = np.zeros(hu.shape, bool)
        return z, z
    body = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    body = np.stack([ndimage.binary_fill_holes(sl) for sl in body])
    lab, n = ndimage.label((hu < -400) & body)
    vox_ml = float(np.prod(image.GetSpacing())) / 1000.0
    sizes = np.bincount(lab.ravel())
    keep = np.flatnonzero(sizes * vox_ml >= 50.0)
    lungs = np.isin(lab, keep[keep > 0])
    return body, lungs


def hu_region_labels(image: sitk.Image) -> sitk.Image:
    """Partial label map (uint8, on ``image``'s grid) from HU alone, for real CTs without a segmentation:
    1 = lungs (the thorax region; :func:`body_and_lungs_hu`), 3 = bone (HU >= 250 inside the body), 0 = not known
    (every other voxel: the region terms of the loss skip it). Names in :data:`HU_REGION_NAMES`
    (``lut_from_names(HU_REGION_NAMES)`` maps them to region ids)."""
    body, lungs = body_and_lungs_hu(image)
    hu = sitk.GetArrayViewFromImage(image)
    arr = np.zeros(hu.shape, np.uint8)
    arr[lungs] = 1
    arr[body & (hu >= BONE_HU)] = 3
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out


def longitudinal_sample(image: sitk.Image, seed: int, labels: sitk.Image | None = None,
                        lut: np.ndarray | None = None, spacing: float = 4.0, name: str = "") -> dict:
    """Sample from ONE real CT as prior and current scan months apart (:func:`longitudinal_pair`: rigid motion,
    breathing, smooth change, another field of view and slice spacing, contrast change, noise; exact field).
    ``labels``: a label map on the image's grid with ``lut`` (label id -> region id); without it the region
    labels come from HU (:func:`hu_region_labels`: lungs and bones). An in-plane spacing s of 0.75 mm or less is
    bin-shrunk first by floor(1.5 / s) (the network works at ``spacing`` = 4 mm; it only saves generator time)."""
    shrink = [max(1, int(1.5 // s)) for s in image.GetSpacing()[:2]] + [1]
    if max(shrink) > 1:
        image = sitk.BinShrink(sitk.Cast(image, sitk.sitkFloat32), shrink)
        if labels is not None:
            labels = sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    if labels is None:
        labels, lut = hu_region_labels(image), lut_from_names(HU_REGION_NAMES)
    s = longitudinal_pair(image, labels, seed=seed, n_landmarks=60)
    return build_sample(s.fixed, s.moving, displacement=s.displacement, fixed_labels=s.fixed_labels,
                        moving_labels=s.moving_labels, lut=lut, landmarks=s.landmarks,
                        rng=np.random.default_rng(seed), spacing=spacing, kind="longitudinal",
                        name=f"{name}_seed{seed}")


#: reads a series folder (e.g. DICOM) into a HU image; the caller supplies it (this package knows no DICOM)
VolumeReader = Callable[[Path], sitk.Image]


def _read_any(path: Path, what: str, read_volume: VolumeReader | None = None) -> sitk.Image:
    """Image file (NIfTI/MHA/NRRD, :func:`registration_core.io.read_image`) or a series folder read by
    ``read_volume`` (path -> ``sitk.Image`` in HU, LPS mm; e.g. the node passes its DICOM series reader)."""
    if path.is_dir():
        if read_volume is None:
            raise ValueError(f"{what} {path} is a folder but no series reader was given (pass read_volume)")
        return read_volume(path)
    return read_image(path, what)


def _find(folder: Path, stem: str) -> Path | None:
    for p in sorted(folder.iterdir()):
        n = p.name.lower()
        if n == stem or any(n == stem + s for s in IMAGE_SUFFIXES):
            return p
    return None


def folder_pair_samples(folder: str | Path, spacing: float = 4.0, seed: int = 0,
                        read_volume: VolumeReader | None = None) -> list[dict]:
    """Samples from a folder of pairs: each sub-folder holds ``fixed`` and ``moving`` (an image file or a series
    folder read by ``read_volume``), optionally ``fixed_labels`` / ``moving_labels`` (multi-label maps) and
    ``classmap.json`` (``{id: name}``; TotalSegmentator names; without it, labels are taken as the phantom's ids).
    ``spacing``: working grid in mm. No field target: these pairs train through similarity, region Dice and
    smoothness only."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"pairs folder not found: {root}")
    out = []
    for i, sub in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        fx, mv = _find(sub, "fixed"), _find(sub, "moving")
        if fx is None or mv is None:
            raise ValueError(f"pair folder {sub} needs 'fixed' and 'moving' (image file or DICOM folder)")
        fl, ml = _find(sub, "fixed_labels"), _find(sub, "moving_labels")
        cm = sub / "classmap.json" if (sub / "classmap.json").is_file() else root / "classmap.json"
        lut = lut_from_names(load_classmap(cm)) if cm.is_file() else phantom_lut()
        out.append(build_sample(_read_any(fx, "fixed image", read_volume),
                                _read_any(mv, "moving image", read_volume),
                                fixed_labels=_read_any(fl, "fixed labels", read_volume) if fl else None,
                                moving_labels=_read_any(ml, "moving labels", read_volume) if ml else None,
                                lut=lut if (fl or ml) else None, rng=np.random.default_rng(seed + i),
                                spacing=spacing, kind="pair", name=sub.name))
    return out


# ---------------------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------------------
@dataclass
class CacheSpec:
    """What goes into a training cache.

    synthetic: phantom seeds for training pairs; val_synthetic: held-out phantom seeds (validation);
    single_ct: (path, labels path or None, classmap path or None, n variants) self-supervised sources;
    val_single_ct: same, validation variants (seeds disjoint from training); longitudinal / val_longitudinal:
    (path, labels path or None, classmap path or None, n draws) real CTs under :func:`longitudinal_sample`
    (deformation seeds 20000 + 17 v + 1 for training, 29000 + 17 v + 1 for validation: disjoint from each other
    and from the accuracy benchmark's validation seeds 1-4 and test seeds 101-103); pairs: folder of pairs or None.
    """

    synthetic: tuple = tuple(range(16))
    val_synthetic: tuple = (900, 901)
    single_ct: tuple = ()
    val_single_ct: tuple = ()
    longitudinal: tuple = ()
    val_longitudinal: tuple = ()
    pairs: str | None = None
    spacing: float = 4.0


def save_sample(sample: dict, path: Path) -> None:
    """Write a sample as an uncompressed .npz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **sample)
    tmp.replace(path)


def load_sample(path: Path) -> dict:
    """Read a sample written by :func:`save_sample` (arrays in memory)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def build_cache(spec: CacheSpec, out: str | Path, log=print, read_volume: VolumeReader | None = None) -> dict:
    """Generate every sample of ``spec`` into ``out/train/*.npz`` and ``out/val/*.npz`` (existing files kept,
    so an interrupted build resumes). Returns the manifest (also written to ``out/manifest.json``).

    ``read_volume`` reads a source given as a folder (path -> ``sitk.Image`` in HU, LPS mm), e.g. a DICOM series
    read by the node; files (NIfTI/MHA/NRRD) need none."""
    out = Path(out)
    jobs = []
    for s in spec.synthetic:
        jobs.append(("train", f"syn_{s:04d}", lambda s=s: synthetic_sample(s, s + 1000, spec.spacing)))
    for s in spec.val_synthetic:
        jobs.append(("val", f"syn_{s:04d}", lambda s=s: synthetic_sample(s, s + 1000, spec.spacing)))
    # deformation seeds: base + 17 v + 1 (self-supervised: training base 5000, validation 9000; longitudinal:
    # 20000 and 29000 -- all disjoint, and from the accuracy benchmark's seeds 1-4 and 101-103)
    for split, prefix, make, sources, base in (
            ("train", "ss", self_supervised_sample, spec.single_ct, 5000),
            ("val", "ss", self_supervised_sample, spec.val_single_ct, 9000),
            ("train", "lg", longitudinal_sample, spec.longitudinal, 20000),
            ("val", "lg", longitudinal_sample, spec.val_longitudinal, 29000)):
        for path, lab_path, cmap, n in sources:
            stem = Path(path).name.split(".")[0]
            for v in range(int(n)):
                def job(path=path, lab_path=lab_path, cmap=cmap, v=v, stem=stem, base=base, make=make):
                    img = _read_any(Path(path), "CT", read_volume)
                    lab = _read_any(Path(lab_path), "labels", read_volume) if lab_path else None
                    lut = lut_from_names(load_classmap(cmap)) if cmap else (phantom_lut() if lab else None)
                    return make(img, base + 17 * v + 1, lab, lut, spec.spacing, stem)
                jobs.append((split, f"{prefix}_{stem}_{v:03d}", job))
    done = []
    for split, name, job in jobs:
        p = out / split / f"{name}.npz"
        if not p.is_file():
            t = time.perf_counter()
            save_sample(job(), p)
            log(f"cache: {split}/{name} ({time.perf_counter() - t:.1f} s)")
        done.append(f"{split}/{name}.npz")
    if spec.pairs:
        for i, smp in enumerate(folder_pair_samples(spec.pairs, spec.spacing, read_volume=read_volume)):
            p = out / "train" / f"pair_{i:03d}.npz"
            save_sample(smp, p)
            done.append(f"train/{p.name}")
    manifest = {"samples": done, "spacing_mm": spec.spacing, "synthetic_seeds": list(spec.synthetic),
                "val_synthetic_seeds": list(spec.val_synthetic),
                "single_ct": [[str(a), str(b) if b else None, str(c) if c else None, int(n)]
                              for a, b, c, n in spec.single_ct],
                **{key: [[str(a), str(b) if b else None, str(c) if c else None, int(n)] for a, b, c, n in val]
                   for key, val in (("val_single_ct", spec.val_single_ct), ("longitudinal", spec.longitudinal),
                                    ("val_longitudinal", spec.val_longitudinal))},
                "pairs": spec.pairs}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
