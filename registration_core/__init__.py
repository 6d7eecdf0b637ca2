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
4. Instance optimisation (instance_opt.py): Adam on a dense field u (control grid at 2x the level spacing,
   box-smoothed, trilinearly upsampled) coarse to fine over 4x, 2x, 1x the working spacing (default
   max(2.5 mm, finest fixed spacing), raised so the body box stays under 3 M voxels on CPU), LNCC (7-voxel
   window, separable box filters, fixed-image statistics computed once) and a diffusion penalty (weight 0.2).
   Window and weight were 5 voxels and 0.1 (chosen on the real lung pair without a network: 1.0 -> 3.2 mm TRE,
   0.3 -> 2.8 mm, 0.1 -> 2.55 mm, 0.05 folds 0.4 %); with the network's start, 7 voxels and 0.2 are better on the
   validation phantoms 900 / 901 (2.48 / 3.22 -> 2.21 / 2.98 mm) and the lung pair (2.40 -> 2.24 mm). The loss
   is scaled to a per-control-point sum and Adam's eps set to 1e-2, so that flat regions (where the similarity
   gradient is noise) take small steps instead of Adam-normalised full ones (lung 2.55 -> 2.44 mm, 10-degree
   phantom rotation 2.4 -> 1.9 mm). A folding penalty, mean(relu(0.2 - det J)^2) on the control grid (weight
   10), keeps the local volume change positive where the similarity pulls the field into folds (sliding lung
   wall, weight change): whole-body pair 0.77 % -> 0.02 % folded voxels, lung TRE unchanged (2.47 mm). Window
   sums are shifted-view additions with their adjoint as a custom backward (~4x faster than grouped conv3d on
   CPU). The similarity weight excludes, at every level, voxels whose LNCC window reaches past the moving
   scan's field of view: its edge is no anatomy, and matching it had stretched the field by 10-20 mm over the
   last 50 mm of scans whose ends the other scan does not cover (synthetic whole-body pair: TRE 2.16 -> 1.39 mm,
   p90 6.2 -> 2.4 mm; lung pair 2.47 -> 2.43 mm). Starts from the network output or zero. Fixed p -> moving
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
from .config import RegistrationConfig
from .engine import RegistrationResult, register
from .errors import RegistrationInputError

__all__ = ["register", "RegistrationResult", "RegistrationConfig", "RegistrationInputError"]
