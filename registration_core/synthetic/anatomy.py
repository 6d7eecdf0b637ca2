"""Random whole-body anatomy (thorax-abdomen-pelvis) described by smooth implicit shapes in patient space.

Coordinates are LPS mm: +x = patient left, +y = posterior, +z = superior. The body axis is the z axis
through x = y = 0; z = 0 is roughly the level of the kidneys, the pelvic floor is near z = -330 and the lung
apices near z = +300. :class:`Anatomy` holds the per-seed random parameters (sizes, positions, fat thickness,
diaphragm height, organ shape noise) and vectorised functions of (x, y, z) arrays used both to render the
phantom (``phantom.py``) and to build anatomically sensible deformations (``deformations.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# ---- body outline control points (z mm, half-width x mm, half-depth y mm) ---------------------------------
_BODY_Z = np.array([-520.0, -340.0, -250.0, -150.0, -60.0, 40.0, 120.0, 220.0, 300.0, 340.0, 420.0])
_BODY_AX = np.array([170.0, 175.0, 175.0, 165.0, 160.0, 158.0, 162.0, 165.0, 168.0, 185.0, 190.0])
_BODY_AY = np.array([112.0, 115.0, 118.0, 118.0, 118.0, 116.0, 112.0, 112.0, 108.0, 100.0, 95.0])


class SmoothNoise:
    """Sum of random plane waves: a smooth, zero-mean, ~unit-variance field evaluable at any point (mm)."""

    def __init__(self, rng: np.random.Generator, n: int = 10, wavelength=(60.0, 180.0)):
        lam = rng.uniform(*wavelength, n)
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        self.k = (2 * np.pi / lam)[:, None] * dirs
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.amp = np.sqrt(2.0 / n)

    def __call__(self, x, y, z):
        out = 0.0
        for (kx, ky, kz), ph in zip(self.k.tolist(), self.phase.tolist()):
            out = out + np.cos(kx * x + ky * y + (kz * z + ph))
        return float(self.amp) * out


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


@dataclass
class Anatomy:
    """Per-seed random anatomy; all lengths mm (LPS patient space, see module docstring)."""

    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self):
        rng = self.rng = np.random.default_rng(self.seed)
        u = rng.uniform
        self.width = u(0.88, 1.10)          # body half-width factor
        self.depth = u(0.88, 1.12)          # body half-depth factor
        self.height = u(0.94, 1.06)         # craniocaudal scale of organ positions
        self.fat = u(10.0, 35.0)            # subcutaneous fat thickness (mm)
        self.muscle = u(9.0, 15.0)          # abdominal/chest wall muscle thickness (mm)
        self.z_dia_r = 125.0 * self.height + u(-12, 12)   # right diaphragm dome (mm)
        self.z_dia_l = self.z_dia_r - u(5, 20)             # left dome is lower
        self.z_apex = 300.0 * self.height + u(-10, 10)
        j = lambda s=8.0: rng.normal(0.0, s, 3)            # noqa: E731  position jitter
        sc = lambda: u(0.85, 1.15)                          # noqa: E731  size factor
        h = self.height
        self.heart_c = np.array([22.0, -28.0, 185.0 * h]) + j()
        self.heart_ax = np.array([60.0, 48.0, 58.0]) * sc()
        self.heart_rot = np.deg2rad(u(20, 40))
        self.liver_c = np.array([-65.0, -5.0, 60.0 * h]) + j()
        self.liver_ax = np.array([95.0, 92.0, 85.0]) * sc()
        self.spleen_c = np.array([85.0, 45.0, 80.0 * h]) + j()
        self.spleen_ax = np.array([28.0, 50.0, 55.0]) * sc()
        self.kid_l_c = np.array([70.0, 52.0, 12.0 * h]) + j(6)
        self.kid_r_c = np.array([-70.0, 52.0, -8.0 * h]) + j(6)
        self.kid_ax = np.array([28.0, 24.0, 55.0]) * sc()
        self.stom_c = np.array([55.0, -28.0, 95.0 * h]) + j()
        self.stom_ax = np.array([50.0, 40.0, 55.0]) * sc()
        self.gall_c = np.array([-55.0, -55.0, 30.0 * h]) + j(5)
        self.bladder_c = np.array([0.0, -45.0, -265.0 * h]) + j(6)
        self.bladder_ax = np.array([45.0, 38.0, 35.0]) * u(0.6, 1.2)
        self.noise = {k: SmoothNoise(rng) for k in
                      ("liver", "spleen", "kidney", "stomach", "heart", "bladder", "lung", "body")}
        self.bowel_seed = int(rng.integers(1 << 31))
        self.vessel_seed = int(rng.integers(1 << 31))

    # ---- outline and layers --------------------------------------------------------------------------------
    def body_axes(self, z):
        """Half-width (x) and half-depth (y) of the skin outline at height z (mm)."""
        zz = z / self.height
        ax = np.interp(zz, _BODY_Z, _BODY_AX) * self.width
        ay = np.interp(zz, _BODY_Z, _BODY_AY) * self.depth
        if isinstance(z, np.ndarray) and z.dtype == np.float32:
            ax, ay = ax.astype(np.float32), ay.astype(np.float32)
        return ax, ay

    @staticmethod
    def _rho(x, y, ax, ay):
        """Normalised elliptic radius; the posterior half (y > 0) is a flatter super-ellipse (patient lies on it)."""
        ux = np.abs(x) / ax
        uy = np.abs(y) / ay
        post = (ux ** 2.6 + (np.where(y > 0, uy, 0.0)) ** 2.6) ** (1.0 / 2.6)
        ant = np.sqrt(ux * ux + np.where(y > 0, 0.0, uy) ** 2)
        return np.where(y > 0, post, ant)

    def rho_skin(self, x, y, z):
        ax, ay = self.body_axes(z)
        return self._rho(x, y, ax, ay)

    def rho_muscle(self, x, y, z):
        """Normalised radius of the fat/muscle interface (< 1 inside the muscle layer)."""
        ax, ay = self.body_axes(z)
        return self._rho(x, y, ax - self.fat, ay - 0.8 * self.fat)

    def rho_cavity(self, x, y, z):
        """Normalised radius of the inner body cavity (pleural + abdominal; < 1 inside)."""
        ax, ay = self.body_axes(z)
        return self._rho(x, y, ax - self.fat - self.muscle, ay - 0.8 * self.fat - self.muscle)

    def cavity_axes(self, z):
        ax, ay = self.body_axes(z)
        return ax - self.fat - self.muscle, ay - 0.8 * self.fat - self.muscle

    # ---- diaphragm / lungs -----------------------------------------------------------------------------------
    def dome_z(self, x, y):
        """Height of the diaphragm surface (mm) at (x, y): two domes, lower laterally and posteriorly."""
        zr = self.z_dia_r - 0.0045 * (x + 70.0) ** 2 - 0.003 * (y + 10.0) ** 2 - 0.25 * np.maximum(y, 0)
        zl = self.z_dia_l - 0.0045 * (x - 70.0) ** 2 - 0.003 * (y + 10.0) ** 2 - 0.25 * np.maximum(y, 0)
        return np.where(x < 0, zr, zl)

    def spine_y(self, z):
        """y (mm) of the vertebral body centre at height z (lordosis/kyphosis as a gentle curve)."""
        _, ay = self.body_axes(z)
        return 0.52 * ay + 6.0 * np.sin((z + 100.0) / 300.0 * np.pi)

    def lung_value(self, x, y, z, side: int):
        """Implicit lung function (< 0 inside) for side +1 (left, x > 0) or -1 (right)."""
        cax, cay = self.cavity_axes(z)
        # apical taper above z_apex - 90
        zt = self.z_apex - 90.0
        taper = np.sqrt(np.clip(1.0 - ((np.maximum(z - zt, 0)) / (self.z_apex - zt)) ** 2, 1e-4, 1.0))
        r = self._rho(x, y - 5.0, cax * 0.97 * taper, cay * 0.97 * taper)
        med = 22.0 + 10.0 * _smoothstep((self.z_apex - z) / 150.0)          # mediastinum half-width
        inner = med - side * x                                              # > 0 inside the mediastinum
        spine = 30.0 - np.abs(x) + 0.0 * y
        v = np.maximum(r - 1.0, inner / 40.0)
        v = np.maximum(v, (self.dome_z(x, y) + 3.0 - z) / 40.0)
        v = np.maximum(v, np.where(y > self.spine_y(z) - 25.0, spine / 40.0, -1.0))
        v = np.maximum(v, (z - self.z_apex) / 40.0)
        return v + 0.04 * self.noise["lung"](x, y, z)
