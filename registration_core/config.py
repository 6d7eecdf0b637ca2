"""Registration settings (all lengths in mm, intensities in HU)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class RegistrationConfig:
    """Settings of :func:`registration_core.register`.

    device: "auto" (CUDA when available, else CPU), "cpu" or "cuda".
    iterations: Adam iterations at the finest instance-optimisation level (None: default; coarser levels scale
        with it). 0 skips instance optimisation (affine + network only).
    weights: safetensors checkpoint of :class:`registration_core.network.TotalRegNet`; None uses the packaged
        default if present, "" or "none" disables the network.
    working_spacing: finest isotropic working grid spacing (mm) of the dense field; raised automatically to 2/3 of
        the finer input's finest voxel spacing, and when the body box would exceed ``max_working_voxels`` (CPU) so
        that large scans stay fast.
    affine_spacings: grid spacings (mm), coarse to fine, of the affine pre-alignment; affine_rigidity: weight of
        the penalty ||M^T M - I||^2 on the affine matrix M against LNCC (0: a free affine).
    smoothness / bending: the MIND stage's regulariser, smoothness x diffusion (mean squared gradient) + bending x
        thin-plate bending energy (mean squared second derivatives, 1/mm^2; weight in mm^2), against 10 x the mean
        squared MIND difference. Diffusion alone (1.2, the earlier default) penalises every slope of the field, so
        where the data term ends - a scan's first and last slices, which cut through the breathing motion that grows
        towards the diaphragm - it flattened the field (validation crop abdorg #3: landmarks within 5 mm of the
        current scan's edge 1.90 mm TRE, now 1.24; the rest 0.84 -> 0.72). Bending energy costs nothing for a steady
        slope. 0.3 / 100 was chosen on the validation split (mean TRE over its 12 cases 0.797 -> 0.666 mm, all 12
        better; bench/accuracy/RESULTS.md) and checked on the real lung pair (1.374 -> 1.432 mm: real breathing slides
        at the pleura, and more bending costs it more: 300 gave validation 0.591 but lung 1.475; 50 gave 0.722 and
        1.401). lncc_smoothness: the diffusion weight of the LNCC optimiser (deformable="lncc").
    network_spacing: grid (mm) the network sees; network_passes: how many times the network runs, each pass on the
        prior warped by the field so far (:func:`registration_core.engine.cascade`). 2 was chosen on the validation
        split with the 2026-12-05 weights (network alone, mean TRE over its 12 cases 4.27 -> 3.97 mm, 8 of 12
        better; 3 passes 4.27); the second pass costs one more network forward (about 1-3 s on CPU at 4 mm).
    lncc_radius_vox: LNCC window radius in voxels at every level (None: lncc_radius_mm); level_factors:
        instance-optimisation levels as multiples of the working spacing;
        adam_eps: Adam epsilon on a per-control-point-sum loss (None: plain mean loss, eps 1e-8).
    deformable: "mind" (default: MIND-SSC features, coupled-convex search, Adam refinement; see
        registration_core/deformable.py) or "lncc" (the earlier LNCC instance optimisation, level_factors).
    mind_radius / mind_dilation: MIND-SSC patch radius and neighbour distance (voxels of the working grid).
    mind_var_floor: noise floor of MIND's local variance, as a share of its image mean
        (:func:`registration_core.features.mind_ssc`): flat tissue no longer turns its noise into full-scale
        descriptors that pull the field. 0.1 was chosen on the validation split (12 cases, default network start,
        N = 60): mean TRE 0.664 -> 0.610 mm (10 of 12 better), mean field error 0.868 -> 0.704 mm (11 of 12),
        Dice 0.935 -> 0.938; 0.03 gave 0.631 / 0.796, 0.15 0.623 / 0.708, 0.3 0.654 / 0.733. Real lung pair
        unchanged (1.433 -> 1.432 mm). A weaker data term beside it (x0.7) gave validation 0.581 mm but cost the
        lung pair 0.014 mm, and was left out. Before: 0.001 (MIND's usual clamp).
    search_spacing / search_half / max_search_voxels: discrete search grid (mm, raised so it holds at most
        max_search_voxels) and its range in coarse voxels each way (0 disables the search).
    search_min_gain: with a start field (the network's, or one given to ``register``), the search's result
        replaces it only where it lowers the MIND cost by at least this share (from the affine alone, any decrease
        does). The search works in whole voxels of an 8 mm grid: around a start that already holds the large
        motion it finds a few per cent lower cost by fitting noise, and that cost the network's start its lead
        (validation phantom 904: 0.779 -> 0.727 mm at N = 30 without it). Where the start missed a large motion
        the search gains far more (validation abdomen #1: 30 %) and is kept.
    max_refine_voxels: on CPU, the refinement levels are floored at the spacing where the working grid's box holds
        at most this many voxels (None: no floor): a whole body refines at 3.6 mm instead of 2.6 mm (deformable
        stage ~2x faster, TRE 1.26 -> 1.27 mm), an abdomen on a 2.2 mm grid at 3.0 instead of 2.5 mm; lung, chest
        and abdominal-crop grids stay under the cap (untouched).
    schedules_mm: refinement level spacings (mm, coarse to fine, floored at the working spacing); with several
        schedules (all ending in the same last level) the field of lowest final energy is kept.
    lncc_weight: weight of an LNCC term beside the MIND data term (0: MIND alone, robust to contrast change).
    extrapolate_edges: on the working grid, carry each scan's edge voxels on past its field of view (nearest
        extrapolation) instead of filling -1024 HU, and give the fixed scan's outside no data term. Where a scan
        ends inside the body, the air of the fill is no anatomy, but its MIND features pulled the field near the
        prior's first and last slices (validation abdominal crops: errors of 5 mm within 5 mm of the prior's end).
        Validation split (12 cases, bench/accuracy/RESULTS.md): mean TRE 0.93 -> 0.80 mm, 11 of 12 better; the
        real lung pair unchanged (1.375 -> 1.374 mm). False: the earlier -1024 HU fill.
    finest_follows_fixed: floor the working spacing at the fixed scan's finest spacing (the earlier rule) instead
        of 2/3 of the finer input's finest spacing.
    threads: CPU threads for torch during the call (None: torch's setting, but 1 when the machine is
        oversubscribed - OpenMP barriers then cost far more than a second thread gains).
    """

    device: str = "auto"
    iterations: int | None = None
    weights: str | None = None
    working_spacing: float = 1.5
    max_working_voxels: int = 3_000_000
    max_working_voxels_cuda: int = 40_000_000
    affine_spacings: tuple[float, ...] = (8.0, 4.0)
    affine_iterations: tuple[int, ...] = (50, 30)
    rotation_starts_deg: float = 15.0
    affine_rigidity: float = 0.3
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    body_threshold_hu: float = -500.0
    body_margin_mm: float = 15.0
    level_factors: tuple[float, ...] = (4.0, 2.0, 1.0)
    coarse_iteration_factor: float = 1.5
    control_factor: float = 2.0
    lncc_radius_mm: float = 5.0
    lncc_radius_vox: int | None = 3
    adam_eps: float | None = 1e-2
    smoothness: float = 0.3
    bending: float = 100.0
    lncc_smoothness: float = 0.2
    folding_weight: float = 10.0
    folding_floor: float = 0.2
    field_smoothing_passes: int = 1
    learning_rate_mm: float = 0.5
    min_overlap: float = 0.5
    min_similarity: float = 0.15
    network_spacing: float = 4.0
    network_passes: int = 2
    deformable: str = "mind"
    mind_radius: int = 1
    mind_dilation: int = 2
    mind_var_floor: float = 0.1
    search_spacing: float = 8.0
    search_half: int = 3
    max_search_voxels: int = 150_000
    search_min_gain: float = 0.1
    max_refine_voxels: int | None = 1_200_000
    lncc_weight: float = 0.0
    extrapolate_edges: bool = True
    schedules_mm: tuple[tuple[float, ...], ...] = ((10.0, 5.0, 2.5),)
    finest_follows_fixed: bool = False
    threads: int | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serialisable copy of the settings."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d
