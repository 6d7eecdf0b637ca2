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
    working_spacing: finest isotropic working grid spacing (mm) of the dense field; raised automatically to the
        fixed image's finest voxel spacing, and when the body box would exceed ``max_working_voxels`` (CPU) so
        that large scans stay fast.
    affine_spacings: grid spacings (mm), coarse to fine, of the affine pre-alignment; affine_rigidity: weight of
        the penalty ||M^T M - I||^2 on the affine matrix M against LNCC (0: a free affine).
    smoothness: diffusion penalty weight; lncc_radius_vox: LNCC window radius in voxels at every level (None:
        lncc_radius_mm); level_factors: instance-optimisation levels as multiples of the working spacing;
        adam_eps: Adam epsilon on a per-control-point-sum loss (None: plain mean loss, eps 1e-8).
    threads: CPU threads for torch during the call (None: torch's setting, but 1 when the machine is
        oversubscribed - OpenMP barriers then cost far more than a second thread gains).
    """

    device: str = "auto"
    iterations: int | None = None
    weights: str | None = None
    working_spacing: float = 2.5
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
    smoothness: float = 0.2
    folding_weight: float = 10.0
    folding_floor: float = 0.2
    field_smoothing_passes: int = 1
    learning_rate_mm: float = 0.5
    min_overlap: float = 0.5
    min_similarity: float = 0.15
    network_spacing: float = 4.0
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
