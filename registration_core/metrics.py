"""Registration accuracy and regularity metrics, all in physical units (mm, LPS).

Conventions (docs/CONTRACTS.md): a displacement field is a ``SimpleITK`` vector image (3 components, float64)
on the FIXED grid, in mm along the LPS axes, such that fixed point ``p`` corresponds to moving point
``p + d(p)``.

Functions
---------
- :func:`dice` -- per-label Dice overlap (+ ``"mean"``).
- :func:`hd95` -- per-label symmetric 95th-percentile Hausdorff distance in mm.
- :func:`tre` -- target registration error per landmark pair, mm.
- :func:`jacobian_determinant` -- det of the Jacobian of ``x -> x + d(x)`` in physical space.
- :func:`folding_percent` -- % of voxels with ``J <= 0``.
- :func:`sdlogj` -- standard deviation of the log Jacobian determinant, exactly as Learn2Reg computes it.

No torch; numpy, scipy and SimpleITK only.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import RegistrationInputError

__all__ = [
    "dice",
    "hd95",
    "tre",
    "jacobian_determinant",
    "jacobian_determinant_array",
    "folding_percent",
    "sdlogj",
]


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def _label_array(img) -> np.ndarray:
    """Label map as an integer numpy array (sitk image -> array in z, y, x order)."""
    if isinstance(img, sitk.Image):
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise RegistrationInputError("label image must be scalar, got a vector image")
        return sitk.GetArrayViewFromImage(img)
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise RegistrationInputError("label array must hold integer values")
        arr = arr.astype(np.int64)
    return arr


def _check_same_grid(a, b, what: str = "label images") -> None:
    if isinstance(a, sitk.Image) and isinstance(b, sitk.Image):
        if a.GetSize() != b.GetSize():
            raise RegistrationInputError(f"{what} differ in size: {a.GetSize()} vs {b.GetSize()}")
        if not (np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-4, atol=1e-5)
                and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
                and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)):
            raise RegistrationInputError(f"{what} are not on the same grid (spacing/origin/direction differ)")


def _labels_to_use(a: np.ndarray, b: np.ndarray, labels: Iterable[int] | None) -> list[int]:
    if labels is None:
        present = np.union1d(np.unique(a), np.unique(b))
        return [int(v) for v in present if v != 0]
    return [int(v) for v in labels]


def _displacement_array(displacement: sitk.Image) -> np.ndarray:
    """Field as float64 array of shape (z, y, x, 3); components are LPS mm (x, y, z)."""
    _displacement_array_check(displacement)
    return sitk.GetArrayFromImage(displacement).astype(np.float64, copy=False)


def _displacement_view(displacement: sitk.Image) -> np.ndarray:
    """Like :func:`_displacement_array` but a read-only view on the image's buffer (no copy, any float type)."""
    _displacement_array_check(displacement)
    return sitk.GetArrayViewFromImage(displacement)


def _displacement_array_check(displacement) -> None:
    if not isinstance(displacement, sitk.Image):
        raise RegistrationInputError("displacement must be a SimpleITK vector image")
    if displacement.GetDimension() != 3 or displacement.GetNumberOfComponentsPerPixel() != 3:
        raise RegistrationInputError(
            "displacement must be a 3D image with 3 components per voxel, got "
            f"{displacement.GetDimension()}D with {displacement.GetNumberOfComponentsPerPixel()} components")


# ----------------------------------------------------------------------------------------------------------
# overlap
# ----------------------------------------------------------------------------------------------------------
def dice(a, b, labels: Sequence[int] | None = None) -> dict:
    """Dice overlap ``2|A∩B| / (|A|+|B|)`` per label, plus the unweighted mean over labels.

    ``a`` and ``b`` are label maps on the same grid (SimpleITK images or numpy arrays of identical shape).
    ``labels``: labels to evaluate (default: every non-zero label present in either map).
    Returns ``{label: dice, ..., "mean": mean}``; a requested label absent from both maps gets ``nan`` and is
    left out of the mean (mean is ``nan`` when no label is scored).
    """
    _check_same_grid(a, b)
    aa, bb = _label_array(a), _label_array(b)
    if aa.shape != bb.shape:
        raise RegistrationInputError(f"label maps differ in shape: {aa.shape} vs {bb.shape}")
    out: dict = {}
    for lab in _labels_to_use(aa, bb, labels):
        ma, mb = aa == lab, bb == lab
        denom = int(ma.sum()) + int(mb.sum())
        out[lab] = float("nan") if denom == 0 else 2.0 * int(np.logical_and(ma, mb).sum()) / denom
    vals = [v for v in out.values() if not np.isnan(v)]
    out["mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


# ----------------------------------------------------------------------------------------------------------
# surface distance
# ----------------------------------------------------------------------------------------------------------
def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a binary mask (mask minus its 6-connected erosion; image border counts as outside)."""
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    return mask & ~eroded


def hd95(a, b, spacing: Sequence[float] | None = None, labels: Sequence[int] | None = None,
         percentile: float = 95.0) -> dict:
    """Symmetric robust Hausdorff distance (mm) per label, plus ``"mean"``.

    For each label, the surface voxels of A and B are found (voxels of the mask with a 6-neighbour outside it),
    the Euclidean distance (mm, using ``spacing``) from every surface voxel of A to the nearest surface voxel of B
    and vice versa is computed with an exact distance transform, and the result is
    ``max(P95(A->B), P95(B->A))`` (the definition used by the ``surface-distance`` package that Learn2Reg
    scores with, without surfel-area weighting).

    ``spacing`` is (x, y, z) mm as SimpleITK reports it; taken from ``a`` when it is a SimpleITK image.
    Labels empty in one map but not the other get ``inf``; labels absent from both get ``nan``; both are left
    out of the mean. Direction cosines do not matter (distances are invariant under rotation).
    """
    _check_same_grid(a, b)
    if spacing is None:
        if not isinstance(a, sitk.Image):
            raise RegistrationInputError("hd95 needs spacing (x, y, z mm) when given numpy arrays")
        spacing = a.GetSpacing()
    sp_zyx = tuple(float(s) for s in reversed(tuple(spacing)))
    if len(sp_zyx) != 3 or min(sp_zyx) <= 0:
        raise RegistrationInputError(f"spacing must be three positive numbers in mm, got {spacing}")
    aa, bb = _label_array(a), _label_array(b)
    if aa.shape != bb.shape:
        raise RegistrationInputError(f"label maps differ in shape: {aa.shape} vs {bb.shape}")
    out: dict = {}
    for lab in _labels_to_use(aa, bb, labels):
        ma, mb = aa == lab, bb == lab
        na, nb = bool(ma.any()), bool(mb.any())
        if not na and not nb:
            out[lab] = float("nan")
            continue
        if not (na and nb):
            out[lab] = float("inf")
            continue
        # crop to the joint bounding box (+1 voxel margin) for speed
        idx = np.argwhere(ma | mb)
        lo = np.maximum(idx.min(0) - 1, 0)
        hi = np.minimum(idx.max(0) + 2, ma.shape)
        sl = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
        sa, sb = _surface(ma[sl]), _surface(mb[sl])
        dist_to_b = ndimage.distance_transform_edt(~sb, sampling=sp_zyx)
        dist_to_a = ndimage.distance_transform_edt(~sa, sampling=sp_zyx)
        d_ab = dist_to_b[sa]
        d_ba = dist_to_a[sb]
        out[lab] = float(max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile)))
    vals = [v for v in out.values() if np.isfinite(v)]
    out["mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


# ----------------------------------------------------------------------------------------------------------
# landmarks
# ----------------------------------------------------------------------------------------------------------
def tre(displacement: sitk.Image | None, fixed_points_mm, moving_points_mm) -> np.ndarray:
    """Target registration error per landmark pair, mm: ``|p + d(p) - q|``.

    ``fixed_points_mm`` (N, 3) and ``moving_points_mm`` (N, 3): corresponding physical points, LPS mm
    (p in the fixed/current image, q in the moving/prior image). ``d(p)`` is sampled from the displacement
    field (fixed grid, LPS mm) by trilinear interpolation at the physical point p; outside the field's
    domain the displacement is taken as 0 (SimpleITK ``DisplacementFieldTransform`` behaviour).
    ``displacement=None`` means the identity (TRE before registration).
    Returns an (N,) float64 array.
    """
    p = np.asarray(fixed_points_mm, dtype=np.float64).reshape(-1, 3)
    q = np.asarray(moving_points_mm, dtype=np.float64).reshape(-1, 3)
    if p.shape != q.shape:
        raise RegistrationInputError(f"fixed and moving landmark lists differ in length: {len(p)} vs {len(q)}")
    if displacement is None:
        mapped = p
    else:
        _displacement_array(displacement)  # validates type/shape
        field = sitk.Cast(displacement, sitk.sitkVectorFloat64)
        tx = sitk.DisplacementFieldTransform(sitk.Image(field))  # copy: the transform takes ownership
        tx.SetInterpolator(sitk.sitkLinear)
        mapped = np.array([tx.TransformPoint(tuple(map(float, pt))) for pt in p]).reshape(-1, 3)
    return np.linalg.norm(mapped - q, axis=1)


# ----------------------------------------------------------------------------------------------------------
# Jacobian
# ----------------------------------------------------------------------------------------------------------
_JAC_SLAB_VOXELS = 4_000_000  # voxels per slab of the Jacobian computation


def jacobian_determinant_array(displacement: sitk.Image) -> np.ndarray:
    """Jacobian determinant of ``x -> x + d(x)`` as a float64 array in (z, y, x) order.

    Derivatives are taken with respect to physical position (mm), so direction cosines and anisotropic
    spacing are handled: with ``g[c, a] = d d_c / d index_a`` (central differences, one-sided at the border;
    index axes a = i, j, k), ``J = I + g @ inv(D @ S)`` where D is the direction matrix and S = diag(spacing).
    The determinant is invariant to the choice of coordinates, so it equals Learn2Reg's voxel-unit value in
    the interior.

    The determinant is computed in z-slabs (one slice of halo each side), so a whole-body field (131 M voxels)
    needs only the float64 result beside it, not nine full-size derivative arrays.
    """
    arr = _displacement_view(displacement)             # (z, y, x, 3), components LPS x, y, z
    if min(arr.shape[:3]) < 2:
        raise RegistrationInputError(f"displacement field too small for derivatives: size {displacement.GetSize()}")
    D = np.array(displacement.GetDirection(), dtype=np.float64).reshape(3, 3)
    S = np.diag(np.array(displacement.GetSpacing(), dtype=np.float64))
    M = np.linalg.inv(D @ S)                           # d index / d x_phys, rows = index axes (i, j, k)
    nz = arr.shape[0]
    det = np.empty(arr.shape[:3], dtype=np.float64)
    step = max(1, _JAC_SLAB_VOXELS // max(1, arr.shape[1] * arr.shape[2]))
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        lo, hi = max(0, z0 - 1), min(nz, z1 + 1)
        block = np.asarray(arr[lo:hi], dtype=np.float64)
        det[z0:z1] = _det_block(block, M)[z0 - lo:z0 - lo + (z1 - z0)]
    return det


def _det_block(arr: np.ndarray, M: np.ndarray) -> np.ndarray:
    """det(I + grad d) of a (z, y, x, 3) block (see :func:`jacobian_determinant_array`); the block's first and
    last z slices only serve as neighbours unless they are the field's own border."""
    grads = [[None] * 3 for _ in range(3)]
    for c in range(3):
        if arr.shape[0] > 1:
            gz, gy, gx = np.gradient(arr[..., c], axis=(0, 1, 2))
        else:
            gy, gx = np.gradient(arr[..., c], axis=(1, 2))
            gz = np.zeros_like(gx)
        grads[c][0], grads[c][1], grads[c][2] = gx, gy, gz
    J = np.empty((3, 3) + arr.shape[:3], dtype=np.float64)
    for c in range(3):
        for b in range(3):
            J[c, b] = grads[c][0] * M[0, b] + grads[c][1] * M[1, b] + grads[c][2] * M[2, b]
            if c == b:
                J[c, b] += 1.0
    del grads
    return (J[0, 0] * (J[1, 1] * J[2, 2] - J[1, 2] * J[2, 1])
            - J[0, 1] * (J[1, 0] * J[2, 2] - J[1, 2] * J[2, 0])
            + J[0, 2] * (J[1, 0] * J[2, 1] - J[1, 1] * J[2, 0]))


def jacobian_determinant(displacement: sitk.Image) -> sitk.Image:
    """Jacobian determinant of ``x -> x + d(x)`` (physical units) as a float32 SimpleITK image.

    Same grid (size, spacing, origin, direction) as the displacement field. J = 1 means volume preserved,
    J > 1 local expansion of the fixed->moving mapping, J <= 0 folding. See
    :func:`jacobian_determinant_array` for the discretisation.
    """
    det = jacobian_determinant_array(displacement)
    img = sitk.GetImageFromArray(det.astype(np.float32))
    img.CopyInformation(displacement)
    return img


def _mask_array(mask, shape) -> np.ndarray | None:
    if mask is None:
        return None
    m = _label_array(mask) != 0
    if m.shape != tuple(shape):
        raise RegistrationInputError(f"mask shape {m.shape[::-1]} (x,y,z) does not match the field {tuple(shape)[::-1]}")
    return m


def folding_percent(displacement_or_jacobian, mask=None) -> float:
    """Percentage (0-100) of voxels whose Jacobian determinant is ``<= 0`` (folded).

    Accepts a displacement field (vector image, see :func:`jacobian_determinant`) or an already computed
    Jacobian determinant (scalar sitk image or numpy array). ``mask`` (same grid, non-zero = inside)
    restricts the count to a region, e.g. the body. Returns ``nan`` for an empty mask.
    """
    x = displacement_or_jacobian
    if isinstance(x, sitk.Image) and x.GetNumberOfComponentsPerPixel() == 3:
        jac = jacobian_determinant_array(x)
    elif isinstance(x, sitk.Image):
        jac = sitk.GetArrayViewFromImage(x)
    else:
        jac = np.asarray(x)
    m = _mask_array(mask, jac.shape)
    vals = jac if m is None else jac[m]
    if vals.size == 0:
        return float("nan")
    return float(100.0 * np.count_nonzero(vals <= 0) / vals.size)


def sdlogj(displacement: sitk.Image, mask=None) -> float:
    """Standard deviation of the log Jacobian determinant, computed exactly as the Learn2Reg evaluation does.

    Learn2Reg (``evaluation/evaluation.py`` + ``utils.jacobian_determinant``): central differences with the
    kernel ``[-0.5, 0, 0.5]`` on the voxel-unit field, ``J = grad(d) + I``, crop 2 voxels from every face
    (``[2:-2, 2:-2, 2:-2]``), then ``std(log(clip(J + 3, 1e-9, 1e9)))`` (population std, ``ddof=0``) --
    the ``+ 3`` offset is Learn2Reg's, kept for comparability (it makes the value smaller than a plain
    ``std(log J)``). With ``mask`` (fixed grid, non-zero = inside) the std is taken over cropped voxels inside
    the mask, as Learn2Reg does with ``np.ma.MaskedArray(log_jac_det, 1 - mask[2:-2, 2:-2, 2:-2])``.
    Our field is in mm; the determinant is invariant to the unit/axes change, so the value matches
    Learn2Reg's on the same deformation. Fields smaller than 5 voxels along an axis give ``nan``.
    """
    jac = jacobian_determinant_array(displacement)
    if min(jac.shape) < 5:
        return float("nan")
    crop = (slice(2, -2),) * 3
    logj = np.log(np.clip(jac[crop] + 3.0, 1e-9, 1e9))
    m = _mask_array(mask, jac.shape)
    if m is not None:
        logj = logj[m[crop]]
        if logj.size == 0:
            return float("nan")
    return float(np.std(logj))
