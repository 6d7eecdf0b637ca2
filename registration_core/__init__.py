"""TotalRegistrator registration engine: images in, transform out (no DICOM).

Public API (docs/CONTRACTS.md)::

    from registration_core import register, RegistrationResult, RegistrationConfig
    res = register(fixed, moving, RegistrationConfig(device="auto"), progress=False)
    res.displacement  # vector float64 on FIXED's exact grid, mm LPS: fixed p -> moving p + d(p) (total field)
    res.affine        # sitk.AffineTransform, fixed point -> moving point
    res.warped        # moving resampled onto the fixed grid (float32 HU, -1024 outside)
    res.report        # JSON dict: stage times (s), device, peak memory (bytes), NCC before/after, folding, SDlogJ

Method (the TotalRegistrator pipeline) and why:

1. Preprocessing (preprocess.py, geometry.py). Both scans are handled in axis-aligned LPS working grids built from
   their physical bounding boxes, so any direction cosines, FOV, slice spacing or table position is fine. A body
   mask (HU > -500, opened to cut the table, largest component, axial holes filled) gives a body box: air and
   table do not dominate and the working grids stay small. HU are windowed to [-1000, 1000] -> [0, 1].
2. Affine pre-alignment (affine.py), torch on any device: starts from the body centroids, top/bottom body alignment
   and the best table shifts found by correlating per-slice body profiles (area, gas, bone, mean HU) along z. Each
   start is probed with rotations of 0, +-7.5 and +-15 deg about the body axis (+-15 deg about x/y for the best) by a
   few Adam steps at 8 mm, ranked by LNCC over the overlap of the two fields of view. The two best are refined at
   8 mm, the better one at 4 mm (per-parameter learning rates: mm for the translation, ~1e-3 for matrix entries).
   A penalty 0.3 ||M^T M - I||^2 keeps the matrix near a rotation unless the images demand otherwise (a free affine
   had sheared a prior with a shorter field of view and 8 mm slices: held-out phantom 950, 10.5 -> 3.0 mm). Scans whose bodies do not overlap, whose 8 mm similarity stays below min_similarity, or that need implausible
   scaling are refused with a plain message.
3. Network (network.py, optional): a small 3D UNet (0.71 M parameters, with local correlation volumes as extra
   inputs; weights shipped, see MODEL_CARD.md) takes fixed and affinely aligned moving at 4 mm and predicts K=4 region sub-fields (lungs/thorax, abdominal organs, bones, soft tissue) as stationary
   velocity fields plus softmax region weights; the weighted velocity is integrated by scaling and squaring
   (diffeomorphic, sliding interfaces possible). Without a weights file it is skipped.
4. Deformable stage (deformable.py, features.py, convex.py; the default ``deformable="mind"``): MIND-SSC
   self-similarity descriptors of both images on the working grid (default 1.5 mm, floored at 2/3 of the finer
   input's spacing, raised so the body box stays under 3 M voxels on CPU): they describe structure, not
   intensity, so another contrast phase or noise level does not pull the field (ConvexAdam's strength). Then a
   discrete search around the network's start: a cost volume over +-3 coarse voxels at 8 mm (coarser when the
   body is large) regularised by coupled convex optimisation, kept where it lowers the MIND cost (large motion
   such as breathing is found before any gradient step). Then Adam on a dense field, coarse to fine at 10, 5 and
   2.5 mm (control grid at 2x the level spacing, box-smoothed, trilinearly upsampled), loss = masked mean squared
   MIND difference + diffusion (0.3) and bending-energy (100 mm^2) penalties + a folding penalty, mean(relu(0.2 - det J)^2) on the control grid
   (weight 10), which keeps the local volume change positive where the data term pulls the field into folds
   (sliding lung wall, weight change) - ConvexAdam's weakness (1.3-2.4 % folded voxels). Loss scaled to a
   per-control-point sum with Adam eps 1e-2 (flat regions take small steps). The similarity weight excludes
   voxels near the edge of the moving scan's field of view at every level (its edge is no anatomy). The earlier
   LNCC instance optimisation (instance_opt.py) stays available as ``deformable="lncc"``. Fixed p -> moving
   A(p + u(p)).
5. Full resolution (warp.py): the total field is evaluated in z-slabs on FIXED's exact grid (vector float64 mm
   LPS) and the moving image is sampled through it in the same pass (ITK's linear-interpolation rules), so
   whole-body volumes need no full-size temporaries beyond the outputs. Everything affine in the voxel index
   (index -> world -> working grid / moving grid, and the affine part of the field) is folded into one matrix
   per output, so per voxel only u is interpolated and the moving image sampled.

On CPU, :func:`torchutil.tune_allocator` makes glibc keep freed tensor memory (by default every temporary over
32 MB is a fresh mmap, page-faulted and zeroed again): together with the window sums above this halved the
whole-body registration (~512x512x500 fixed, 2 cores: 135 s -> 75 s end to end, ``bench/accuracy/wholebody.py``).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import RegistrationConfig
    from .engine import RegistrationResult, register
    from .errors import RegistrationInputError

#: public name -> the submodule defining it; loaded on first use (PEP 562), so that ``registration_core.metrics``
#: or ``registration_core.synthetic`` do not load torch through the engine
_HOME = {"register": "engine", "RegistrationResult": "engine", "RegistrationConfig": "config",
         "RegistrationInputError": "errors"}

__all__ = ["register", "RegistrationResult", "RegistrationConfig", "RegistrationInputError"]


def __getattr__(name: str):
    """Load the submodule that defines a public name on first use."""
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
