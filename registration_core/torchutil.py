"""Torch helpers: device choice, peak memory, grid coordinates (see geometry.py for conventions)."""
from __future__ import annotations

import resource

import numpy as np
import torch

from .errors import RegistrationInputError
from .geometry import WorkGrid


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_allocator_tuned = False


def tune_allocator(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Keep freed tensor memory in the process (glibc ``mallopt``) instead of returning it to the kernel.

    By default glibc serves every allocation above 32 MB with a fresh ``mmap`` and unmaps it on free, so each
    temporary tensor of a CPU registration (37-110 MB on a 3 M-voxel grid) is page-faulted and zeroed anew:
    that made element-wise ops 3-7x slower and cost ~50 s of system time per whole-body registration. With
    allocations up to ``mmap_threshold`` bytes from the heap and up to ``trim_threshold`` bytes of free heap
    kept, they are reused. Process-wide and idempotent; a no-op (False) where glibc is not present."""
    global _allocator_tuned
    if _allocator_tuned:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
    except (OSError, AttributeError):
        return False
    _allocator_tuned = ok
    return ok


def release_free_memory() -> None:
    """Hand the free heap kept by :func:`tune_allocator` back to the kernel (glibc ``malloc_trim``): called
    when a registration's temporaries are gone, so the outputs' own allocations do not stack on top of them."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def pick_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA when available else CPU; "cuda" without a GPU raises RegistrationInputError."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RegistrationInputError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise RegistrationInputError(f"unknown device {name!r}; use auto, cpu or cuda")


def peak_memory_bytes(device: torch.device) -> dict:
    """Peak process RSS (bytes, Linux ru_maxrss) and, on CUDA, torch.cuda.max_memory_allocated (bytes)."""
    out = {"peak_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}
    if device.type == "cuda":
        out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def world_points(grid: WorkGrid, device, dtype=torch.float32) -> torch.Tensor:
    """World coordinates (mm, x/y/z) of every voxel of ``grid``: tensor [D, H, W, 3]."""
    axes = [torch.arange(n, device=device, dtype=dtype) * grid.spacing + o
            for n, o in zip(grid.size, grid.origin)]
    z, y, x = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return torch.stack([x, y, z], -1)


def world_to_norm(points: torch.Tensor, grid: WorkGrid) -> torch.Tensor:
    """World points (mm, [..., 3] x/y/z) -> grid_sample coordinates of ``grid`` (align_corners=True)."""
    o = torch.as_tensor(grid.origin, device=points.device, dtype=points.dtype)
    e = torch.as_tensor(np.maximum(grid.extent, 1e-6), device=points.device, dtype=points.dtype)
    return (points - o) / e * 2 - 1


def mm_to_norm_scale(grid: WorkGrid, device, dtype=torch.float32) -> torch.Tensor:
    """Factor turning a displacement in mm (x/y/z) into grid_sample units of ``grid``: shape [3]."""
    return torch.as_tensor(2.0 / np.maximum(grid.extent, 1e-6), device=device, dtype=dtype)


def to_tensor(arr: np.ndarray, device) -> torch.Tensor:
    """[z,y,x] numpy array -> float32 tensor [1, 1, D, H, W] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None].to(device)
