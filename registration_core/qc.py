"""Quality-control picture: fixed, moving, registered and a checkerboard in three planes (matplotlib Agg).

Planes are the FIXED image's own index planes through its centre (axial = constant k, coronal = constant j,
sagittal = constant i for a standard axial CT); the moving image is resampled onto those planes through
``affine`` (fixed -> moving) when given, else by world coordinates (identity), so only three slices are ever
resampled, even for 512x512x500 volumes.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .regions import REGIONS, weights_to_rgb


def _plane_ref(fixed: sitk.Image, axis: int) -> sitk.Image:
    """A one-voxel-thick reference image: the fixed grid's central plane normal to index ``axis``."""
    size = list(fixed.GetSize())
    index = [0, 0, 0]
    index[axis] = size[axis] // 2
    size[axis] = 1
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetSpacing(fixed.GetSpacing())
    ref.SetDirection(fixed.GetDirection())
    ref.SetOrigin(fixed.TransformIndexToPhysicalPoint(index))
    return ref


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection()))


def _index_plane(img: sitk.Image, axis: int) -> np.ndarray:
    """The central plane normal to index ``axis`` of ``img``'s own array (a view: no resampling, no copy of the
    volume - a vector field's plane through sitk.Resample costs ~2 s on a whole-body field)."""
    arr = sitk.GetArrayViewFromImage(img)  # [z, y, x(, c)]
    k = img.GetSize()[axis] // 2
    return np.array(arr[(slice(None),) * (2 - axis) + (k,)])


def _slice(img: sitk.Image, ref: sitk.Image, transform=None) -> np.ndarray:
    out = sitk.Resample(img, ref, transform or sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    return np.squeeze(sitk.GetArrayFromImage(out))


def _region_plane(region_weights: sitk.Image, ref: sitk.Image) -> np.ndarray:
    """RGB uint8 plane [rows, cols, 3] of soft region weights (vector image, component k = region id k + 1, any
    grid in LPS mm; 0 outside it) resampled linearly onto the plane ``ref``, in the regions' colours."""
    w = sitk.Resample(region_weights, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat32)
    arr = np.squeeze(sitk.GetArrayFromImage(w))  # [rows, cols, K]
    return weights_to_rgb(np.moveaxis(arr, -1, 0))


def write_qc_png(fixed: sitk.Image, moving: sitk.Image, warped: sitk.Image, path, displacement=None,
                 affine: sitk.Transform | None = None, window=(-1000.0, 600.0), title: str | None = None,
                 region_weights: sitk.Image | None = None) -> Path:
    """Write a PNG: rows axial/coronal/sagittal; columns fixed, moving (affine or raw on the fixed planes),
    registered (``warped``, on the fixed grid), checkerboard fixed/registered and, with ``displacement``, its
    magnitude (mm; minus the affine part when ``affine`` is given), and with ``region_weights`` (a vector image of
    the network's K soft region weights, component k = region id k + 1 of :mod:`registration_core.regions`, on any
    LPS grid) a map of them in the regions' colours. Returns the path (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sp = fixed.GetSpacing()
    cols = ["fixed (current)", "moving (prior, affine)" if affine is not None else "moving (prior, raw)",
            "registered prior", "checkerboard"] + (
        [("|non-affine displacement| mm" if affine is not None else "|displacement| mm")]
        if displacement is not None else []) + (["region weights"] if region_weights is not None else [])
    kinds = ["grey"] * 4 + (["magnitude"] if displacement is not None else []) + (
        ["rgb"] if region_weights is not None else [])
    fig, axes = plt.subplots(3, len(cols), figsize=(3.2 * len(cols), 9.6), squeeze=False)
    for row, (axis, name) in enumerate(((2, "axial"), (1, "coronal"), (0, "sagittal"))):
        ref = _plane_ref(fixed, axis)
        f = _slice(fixed, ref)
        mv = _slice(moving, ref, affine)
        wp = _slice(warped, ref)
        # in-plane pixel aspect: rows run along the remaining higher index axis
        keep = [a for a in range(3) if a != axis]
        aspect = sp[keep[1]] / sp[keep[0]]
        n = 8
        yy, xx = np.indices(f.shape)
        cb = np.where(((yy * n // f.shape[0]) + (xx * n // f.shape[1])) % 2 == 0, f, wp)
        panels = [f, mv, wp, cb]
        if displacement is not None:
            if _same_grid(displacement, fixed):
                vec = _index_plane(displacement, axis).astype(np.float64)
            else:
                d = sitk.Resample(displacement, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
                vec = np.squeeze(sitk.GetArrayFromImage(d))
            if affine is not None:  # show the deformable part: total minus the affine's own displacement
                a = sitk.TransformToDisplacementField(affine, sitk.sitkVectorFloat64, ref.GetSize(), ref.GetOrigin(),
                                                      ref.GetSpacing(), ref.GetDirection())
                vec = vec - np.squeeze(sitk.GetArrayFromImage(a))
            panels.append(np.linalg.norm(vec, axis=-1))
        if region_weights is not None:
            panels.append(_region_plane(region_weights, ref))
        for c, img in enumerate(panels):
            ax = axes[row, c]
            origin = "upper" if axis == 2 else "lower"
            if kinds[c] == "magnitude":
                im = ax.imshow(img, cmap="magma", aspect=aspect, origin=origin)
                fig.colorbar(im, ax=ax, fraction=0.046)
            elif kinds[c] == "rgb":
                ax.imshow(img, aspect=aspect, origin=origin, interpolation="nearest")
                if row == 0:
                    from matplotlib.patches import Patch  # matplotlib is imported only when a picture is drawn

                    ax.legend(handles=[Patch(color=np.asarray(r.colour) / 255.0, label=r.title) for r in REGIONS],
                              fontsize=6, loc="lower right")
            else:
                ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, origin=origin)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(cols[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(name)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".tmp-{os.getpid()}-{p.name}")
    fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    os.replace(tmp, p)
    return p
