"""Synthetic whole-body (thorax-abdomen-pelvis) CT phantom with organ labels.

``make_phantom`` renders an :class:`~registration_core.synthetic.anatomy.Anatomy` (random per seed) onto an
axis-aligned grid in LPS patient space: HU image (float32) + label map (uint8) + label names. Shapes are smooth
implicit functions evaluated inside per-organ bounding boxes, so a 2 mm whole-body phantom takes a few seconds.
Texture (smoothed noise, per-tissue amplitude) is part of the anatomy; scanner noise is added per scan by
``deformations.py``.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..regions import REGIONS as _REGIONS
from ..regions import apply_lut, lut_from_names, region, region_of_name
from .anatomy import Anatomy, _smoothstep

# ---- labels ------------------------------------------------------------------------------------------------
LABEL_NAMES: dict[int, str] = {
    0: "background",
    1: "soft_tissue_other",
    2: "subcutaneous_fat",
    3: "muscle",
    4: "lung_left",
    5: "lung_right",
    6: "airway",
    7: "lung_vessels",
    8: "heart",
    9: "aorta",
    10: "inferior_vena_cava",
    11: "liver",
    12: "spleen",
    13: "kidney_left",
    14: "kidney_right",
    15: "stomach",
    16: "bowel",
    17: "urinary_bladder",
    18: "gallbladder",
    19: "vertebrae",
    20: "ribs",
    21: "sternum",
    22: "hip",
    23: "femur",
}
L = {v: k for k, v in LABEL_NAMES.items()}

#: the anatomical regions of the engine's sub-field decomposition, {region id: name} (from :mod:`..regions`)
REGIONS: dict[int, str] = {r.id: r.name for r in _REGIONS}
#: label id -> region name (background 0 has no region), by the phantom's structure names (:mod:`..regions`)
REGION_OF_LABEL: dict[int, str] = {lab: region(region_of_name(name)).name
                                   for lab, name in LABEL_NAMES.items() if lab != 0}

# texture amplitude (HU, std of smoothed noise) per label
_TEXTURE = {0: 0.0, 1: 10.0, 2: 12.0, 3: 12.0, 4: 35.0, 5: 35.0, 6: 5.0, 7: 15.0, 8: 10.0, 9: 8.0, 10: 8.0,
            11: 9.0, 12: 9.0, 13: 12.0, 14: 12.0, 15: 15.0, 16: 40.0, 17: 5.0, 18: 5.0, 19: 90.0, 20: 90.0,
            21: 90.0, 22: 90.0, 23: 90.0}

DEFAULT_FOV_MM = (480.0, 360.0, 680.0)


def region_map(labels: sitk.Image) -> sitk.Image:
    """Map a phantom label image to region ids (uint8, :mod:`registration_core.regions`): 0 background,
    1 thorax, 2 abdomen, 3 bones, 4 soft tissue; same grid."""
    arr = apply_lut(sitk.GetArrayViewFromImage(labels), lut_from_names(LABEL_NAMES))
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(labels)
    return out


class _Canvas:
    """HU + label arrays (z, y, x) on an axis-aligned grid with painting helpers working in bounding boxes."""

    def __init__(self, size, spacing, origin):
        self.size = tuple(int(s) for s in size)
        self.spacing = tuple(float(s) for s in spacing)
        self.origin = tuple(float(o) for o in origin)
        nx, ny, nz = self.size
        self.xs = (self.origin[0] + self.spacing[0] * np.arange(nx)).astype(np.float32)
        self.ys = (self.origin[1] + self.spacing[1] * np.arange(ny)).astype(np.float32)
        self.zs = (self.origin[2] + self.spacing[2] * np.arange(nz)).astype(np.float32)
        self.hu = np.full((nz, ny, nx), -1000.0, np.float32)
        self.lab = np.zeros((nz, ny, nx), np.uint8)

    def box(self, lo, hi):
        """Slices + broadcast coordinate arrays (z, y, x) for the physical box [lo, hi] (x, y, z mm)."""
        sl = []
        for ax_i, (coords, a, b) in enumerate(zip((self.xs, self.ys, self.zs), lo, hi)):
            i0 = int(np.searchsorted(coords, a, "left"))
            i1 = int(np.searchsorted(coords, b, "right"))
            sl.append(slice(max(i0, 0), min(i1, len(coords))))
        sx, sy, sz = sl
        if sx.start >= sx.stop or sy.start >= sy.stop or sz.start >= sz.stop:
            return None
        x = self.xs[sx][None, None, :]
        y = self.ys[sy][None, :, None]
        z = self.zs[sz][:, None, None]
        return (sz, sy, sx), x, y, z

    def paint(self, sl, mask, label, hu, where=None):
        """Set label/HU inside mask (optionally only where current label is in ``where``)."""
        if where is not None:
            mask = mask & np.isin(self.lab[sl], list(where))
        self.lab[sl][mask] = label
        hv = self.hu[sl]
        if np.ndim(hu) == 0:
            hv[mask] = hu
        else:
            hv[mask] = np.broadcast_to(hu, mask.shape)[mask]


def _ellipsoid_value(x, y, z, c, ax, rot_z=0.0, rot_y=0.0):
    """Normalised ellipsoid radius (< 1 inside) with rotation about z then y (radians)."""
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    cz, sz = np.cos(rot_z), np.sin(rot_z)
    dx, dy = cz * dx + sz * dy, -sz * dx + cz * dy
    cy, sy = np.cos(rot_y), np.sin(rot_y)
    dx, dz = cy * dx - sy * dz, sy * dx + cy * dz
    return np.sqrt((dx / ax[0]) ** 2 + (dy / ax[1]) ** 2 + (dz / ax[2]) ** 2)


def _capsule(cv: _Canvas, a, b, r, label, hu, where=None, r_inner=None, hu_inner=None, label_inner=None):
    """Paint a capsule (segment a->b, radius r mm); optional lumen of radius r_inner."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    lo = np.minimum(a, b) - r - 1
    hi = np.maximum(a, b) + r + 1
    bx = cv.box(lo, hi)
    if bx is None:
        return
    sl, x, y, z = bx
    ab = b - a
    L2 = max(float(ab @ ab), 1e-9)
    t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / L2, 0, 1)
    d2 = (x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2
    cv.paint(sl, d2 <= r * r, label, hu, where)
    if r_inner is not None:
        cv.paint(sl, d2 <= r_inner * r_inner, label if label_inner is None else label_inner, hu_inner, where)


def _polyline(cv, pts, r, label, hu, **kw):
    rs = np.broadcast_to(np.asarray(r, float), (len(pts),))
    for i in range(len(pts) - 1):
        _capsule(cv, pts[i], pts[i + 1], float(max(rs[i], rs[i + 1])), label, hu, **kw)


# ---- painting steps ----------------------------------------------------------------------------------------
def _paint_body(cv: _Canvas, an: Anatomy):
    x = cv.xs[None, None, :]
    y = cv.ys[None, :, None]
    z = cv.zs[:, None, None]
    r_skin = an.rho_skin(x, y, z)
    r_mus = an.rho_muscle(x, y, z)
    r_cav = an.rho_cavity(x, y, z)
    body = r_skin <= 1.0
    cv.lab[body] = L["subcutaneous_fat"]
    cv.hu[body] = -100.0
    m = body & (r_mus <= 1.0)
    cv.lab[m] = L["muscle"]
    cv.hu[m] = 50.0
    cav = body & (r_cav <= 1.0)
    cv.lab[cav] = L["soft_tissue_other"]
    # cavity filling: mediastinal/visceral fat-tissue mixture
    cv.hu[cav] = np.broadcast_to(np.where(z > an.dome_z(x, y), -60.0, -80.0), cav.shape)[cav]
    # skin: thin soft-tissue rim
    skin = body & (r_skin > 0.985)
    cv.lab[skin] = L["soft_tissue_other"]
    cv.hu[skin] = 30.0
    # paraspinal muscles
    for side in (-1, 1):
        bx = cv.box((side * 70 - 40, 40, cv.zs[0]), (side * 70 + 40, 160, cv.zs[-1]))
        if bx is None:
            continue
        sl, xx, yy, zz = bx
        sy = an.spine_y(zz)
        v = ((xx - side * 38) / 26.0) ** 2 + ((yy - sy - 45) / 22.0) ** 2
        cv.paint(sl, (v <= 1.0) & (an.rho_skin(xx, yy, zz) < 0.97), L["muscle"], 50.0)


def _paint_lungs(cv: _Canvas, an: Anatomy):
    for side, name in ((1, "lung_left"), (-1, "lung_right")):
        bx = cv.box((min(0, side * 200), -200, an.z_dia_l - 120), (max(0, side * 200), 200, an.z_apex + 5))
        if bx is None:
            continue
        sl, x, y, z = bx
        v = an.lung_value(x, y, z, side)
        cv.paint(sl, v < 0, L[name], -850.0)
    # airways: trachea and main/lobar bronchi, air lumen with a soft-tissue wall
    zc = an.z_apex - 110.0
    tr = [(0, -8, cv.zs[-1] + 10), (0, -2, zc + 40), (0, 2, zc)]
    _polyline(cv, tr, 10.0, L["airway"], 40.0, r_inner=8.0, hu_inner=-1000.0,
              where=(L["soft_tissue_other"], L["lung_left"], L["lung_right"], L["muscle"],
                     L["subcutaneous_fat"]))
    for side in (-1, 1):
        pts = [(0, 2, zc), (side * 38, 12, zc - 22), (side * 62, 18, zc - 45)]
        _polyline(cv, pts, 7.0, L["airway"], 40.0, r_inner=5.0, hu_inner=-1000.0,
                  where=(L["soft_tissue_other"], L["lung_left"], L["lung_right"]))
    # pulmonary vessel trees (recursive branching, clipped to the lungs)
    rng = np.random.default_rng(an.vessel_seed)
    segs = []

    def grow(p, d, length, r, depth):
        q = p + d * length
        segs.append((p, q, r))
        if depth == 0 or r < 1.3:
            return
        for _ in range(2):
            axis = rng.normal(size=3)
            axis -= axis @ d * d
            axis /= np.linalg.norm(axis) + 1e-9
            ang = np.deg2rad(rng.uniform(20, 45))
            nd = d * np.cos(ang) + axis * np.sin(ang)
            grow(q, nd / np.linalg.norm(nd), length * rng.uniform(0.65, 0.85), r * 0.72, depth - 1)

    for side in (-1, 1):
        hil = np.array([side * 55.0, 10.0, zc - 30.0])
        for d in ([side * 0.4, 0.0, 0.9], [side * 0.8, -0.3, -0.2], [side * 0.5, 0.3, -0.8],
                  [side * 0.6, -0.6, 0.3], [side * 0.6, 0.6, 0.0], [side * 0.5, -0.5, -0.6],
                  [side * 0.3, 0.7, 0.6], [side * 0.9, 0.0, 0.4]):
            d = np.array(d) + rng.normal(0, 0.15, 3)
            d = d / np.linalg.norm(d)
            grow(hil, d, rng.uniform(35, 50), 5.5, 6)
    for a, b, r in segs:
        _capsule(cv, a, b, r, L["lung_vessels"], 110.0, where=(L["lung_left"], L["lung_right"]))


def _paint_heart_vessels(cv: _Canvas, an: Anatomy):
    c, ax = an.heart_c, an.heart_ax
    bx = cv.box(c - ax.max() - 5, c + ax.max() + 5)
    if bx is not None:
        sl, x, y, z = bx
        v = _ellipsoid_value(x, y, z, c, ax, an.heart_rot, np.deg2rad(-20)) + 0.05 * an.noise["heart"](x, y, z)
        cv.paint(sl, v < 1.0, L["heart"], 70.0)
        inner = _ellipsoid_value(x, y, z, c + [5, 0, 5], ax * 0.7, an.heart_rot, np.deg2rad(-20))
        cv.paint(sl, (inner < 1.0) & (v < 1.0), L["heart"], 200.0)
    zb = -140.0 * an.height
    # aorta: ascending, arch, descending along the spine, iliac arteries
    zs = np.linspace(zb, an.heart_c[2] + 60, 12)
    desc = [(22.0 - 0.03 * (zz - zb), an.spine_y(zz) - 32.0, zz) for zz in zs[::-1]]
    top = an.heart_c[2] + 70
    arch = [(an.heart_c[0] - 15, an.heart_c[1] + 10, an.heart_c[2] + 20), (10, -20, top), (20, 10, top + 5),
            (22, an.spine_y(top) - 32, top - 10)]
    _polyline(cv, arch + desc, [14.0] * 4 + list(np.linspace(13, 10, len(desc))), L["aorta"], 220.0)
    for side in (-1, 1):
        _polyline(cv, [desc[-1], (side * 45, an.spine_y(zb) - 45, zb - 60), (side * 75, -5, zb - 130)],
                  6.5, L["aorta"], 220.0)
    # IVC: pelvis -> liver -> right atrium
    ivc = [(-24.0, an.spine_y(zz) - 30.0, zz) for zz in np.linspace(zb, an.heart_c[2] - 40, 10)]
    ivc += [(an.heart_c[0] - 35, an.heart_c[1] + 15, an.heart_c[2] - 25)]
    _polyline(cv, ivc, 11.0, L["inferior_vena_cava"], 140.0,
              where=(L["soft_tissue_other"], L["heart"], L["liver"], L["bowel"]))


def _paint_abdomen(cv: _Canvas, an: Anatomy):
    below = lambda x, y, z, m=6.0: z < an.dome_z(x, y) - m  # noqa: E731
    in_cav = lambda x, y, z, r=0.97: an.rho_cavity(x, y, z) < r  # noqa: E731
    # bowel: colon frame + small-bowel random walk (fluid/stool with gas pockets)
    rng = np.random.default_rng(an.bowel_seed)
    h = an.height
    colon = [(0, 50, -280 * h), (0, 40, -220 * h), (40, -10, -190 * h), (95, 10, -150 * h), (100, 20, -40 * h),
             (95, 0, 30 * h), (40, -70, 20 * h), (-40, -75, 25 * h), (-95, 0, 20 * h), (-100, 10, -60 * h),
             (-90, -10, -150 * h)]
    where_cav = (L["soft_tissue_other"],)
    for i in range(len(colon) - 1):
        gas = rng.random() < 0.55
        _capsule(cv, colon[i], colon[i + 1], 19.0, L["bowel"], 45.0, where=where_cav + (L["bowel"],),
                 r_inner=16.0, hu_inner=-1000.0 if gas else -150.0)
    p = np.array([0.0, -40.0, -60.0 * h])
    d = np.array([1.0, 0.0, 0.0])
    for _ in range(45):
        d = d + rng.normal(0, 0.6, 3)
        d /= np.linalg.norm(d)
        q = p + d * 28.0
        q = np.clip(q, [-80, -95, -230 * h], [80, 30, 0])
        gas = rng.random() < 0.25
        _capsule(cv, p, q, 12.0, L["bowel"], 40.0, where=where_cav + (L["bowel"],), r_inner=9.5,
                 hu_inner=-1000.0 if gas else 20.0)
        p = q
    # stomach with an air-fluid level (patient supine: gas anterior, i.e. small y)
    c, ax = an.stom_c, an.stom_ax
    bx = cv.box(c - ax.max() - 5, c + ax.max() + 5)
    if bx is not None:
        sl, x, y, z = bx
        v = _ellipsoid_value(x, y, z, c, ax, np.deg2rad(-30)) + 0.08 * an.noise["stomach"](x, y, z)
        ok = below(x, y, z) & in_cav(x, y, z)
        cv.paint(sl, (v < 1.0) & ok, L["stomach"], 50.0)
        lumen = (v < 0.88) & ok
        cv.paint(sl, lumen, L["stomach"], np.where(y < c[1] - 10, -1000.0, 15.0))
    # liver (right lobe + left lobe), gallbladder
    c, ax = an.liver_c, an.liver_ax
    bx = cv.box(c - ax.max() - 70, c + ax.max() + 70)
    if bx is not None:
        sl, x, y, z = bx
        nz = 0.06 * an.noise["liver"](x, y, z)
        v1 = _ellipsoid_value(x, y, z, c, ax, np.deg2rad(15)) + nz
        v2 = _ellipsoid_value(x, y, z, c + [75, -35, 25], [60, 40, 35]) + nz
        ok = below(x, y, z, 5.0) & in_cav(x, y, z)
        cv.paint(sl, (np.minimum(v1, v2) < 1.0) & ok, L["liver"], 105.0)
    gc = an.gall_c
    bx = cv.box(gc - 35, gc + 35)
    if bx is not None:
        sl, x, y, z = bx
        cv.paint(sl, _ellipsoid_value(x, y, z, gc, [16, 16, 30], 0, np.deg2rad(25)) < 1, L["gallbladder"], 5.0)
    # spleen
    c, ax = an.spleen_c, an.spleen_ax
    bx = cv.box(c - ax.max() - 5, c + ax.max() + 5)
    if bx is not None:
        sl, x, y, z = bx
        v = _ellipsoid_value(x, y, z, c, ax, np.deg2rad(-35)) + 0.06 * an.noise["spleen"](x, y, z)
        cv.paint(sl, (v < 1.0) & below(x, y, z) & in_cav(x, y, z), L["spleen"], 115.0)
    # kidneys: enhancing cortex, medulla, hilum fat
    for c, name, side in ((an.kid_l_c, "kidney_left", 1), (an.kid_r_c, "kidney_right", -1)):
        ax = an.kid_ax
        bx = cv.box(c - ax.max() - 5, c + ax.max() + 5)
        if bx is None:
            continue
        sl, x, y, z = bx
        v = _ellipsoid_value(x, y, z, c, ax, side * np.deg2rad(30), side * np.deg2rad(10)) \
            + 0.05 * an.noise["kidney"](x, y, z)
        cv.paint(sl, v < 1.0, L[name], 180.0)
        cv.paint(sl, v < 0.65, L[name], 110.0)
        hil = _ellipsoid_value(x, y, z, c - [side * 22, 5, 0], [10, 8, 18])
        cv.paint(sl, (hil < 1.0) & (v < 1.0), L["soft_tissue_other"], -80.0)
    # bladder
    c, ax = an.bladder_c, an.bladder_ax
    bx = cv.box(c - ax.max() - 5, c + ax.max() + 5)
    if bx is not None:
        sl, x, y, z = bx
        v = _ellipsoid_value(x, y, z, c, ax) + 0.05 * an.noise["bladder"](x, y, z)
        cv.paint(sl, v < 1.0, L["urinary_bladder"], 40.0)
        cv.paint(sl, v < 0.88, L["urinary_bladder"], 8.0)
    # psoas muscles
    for side in (-1, 1):
        pts = [(side * 32, an.spine_y(0) - 5, 20 * h), (side * 45, an.spine_y(-100) - 15, -100 * h),
               (side * 65, 10, -230 * h)]
        _polyline(cv, pts, [10, 20, 22], L["muscle"], 50.0, where=(L["soft_tissue_other"], L["bowel"]))


def _bone(cv, sl, outer, inner, label):
    cv.paint(sl, outer, label, 850.0)
    cv.paint(sl, inner & outer, label, 230.0)


def _paint_bones(cv: _Canvas, an: Anatomy):
    h = an.height
    # vertebrae from the sacrum up: lumbar 5, thoracic 12, cervical
    z = -195.0 * h
    heights = [36] * 5 + [27] * 12 + [19] * 7
    centres = []
    for k, ht in enumerate(heights):
        ht = ht * h
        centres.append((z + ht / 2, ht, k))
        z += ht
    for zc, ht, k in centres:
        if zc - ht > cv.zs[-1] or zc + ht < cv.zs[0]:
            continue
        lumbar = k < 5
        rx, ry = (25.0, 19.0) if lumbar else (18.0 + 0.3 * (16 - k), 15.0)
        yc = float(an.spine_y(zc))
        bx = cv.box((-70, yc - ry - 5, zc - ht / 2), (70, yc + 75, zc + ht / 2))
        if bx is None:
            continue
        sl, x, y, zz = bx
        body_h = np.abs(zz - zc) <= (ht - 7.0) / 2
        v = ((x / rx) ** 2 + ((y - yc) / ry) ** 2)
        _bone(cv, sl, (v <= 1.0) & body_h, (v <= 0.72) & body_h, L["vertebrae"])
        disc = (v <= 1.0) & ~body_h
        cv.paint(sl, disc, L["soft_tissue_other"], 80.0)
        # posterior arch around the canal, spinous and transverse processes
        cy = yc + ry + 10.0
        rc = np.sqrt(x ** 2 + (y - cy) ** 2)
        arch_h = np.abs(zz - zc) <= ht * 0.32
        arch = (rc <= 17.0) & (rc > 9.0) & (y > cy - 6) & arch_h
        spin = (np.abs(x) <= 4.5) & (y > cy) & (y < cy + (48 if lumbar else 40)) & arch_h
        trans = (np.abs(x) > 12) & (np.abs(x) < (48 if lumbar else 38)) & (np.abs(y - cy) < 6.0) \
            & (np.abs(zz - zc) <= 6.0)
        cv.paint(sl, arch | spin | trans, L["vertebrae"], 700.0)
        cv.paint(sl, (rc <= 9.0) & (np.abs(zz - zc) <= ht / 2), L["soft_tissue_other"], 35.0)  # spinal canal
        # ribs (thoracic vertebrae k = 5..16 -> ribs 12..1)
        if not lumbar and k <= 16:
            rib_no = 17 - k                                             # 1 (top) .. 12
            _paint_rib(cv, an, zc, rib_no, cy)
    _paint_sternum(cv, an)
    _paint_pelvis(cv, an)


def _paint_rib(cv: _Canvas, an: Anatomy, z0: float, rib_no: int, y0: float):
    phi_end = {1: 2.6, 2: 2.75, 3: 2.85, 4: 2.9, 5: 2.9, 6: 2.85, 7: 2.8, 8: 2.6, 9: 2.4, 10: 2.2, 11: 1.7,
               12: 1.3}[rib_no]
    drop = 55.0 + 4.0 * min(rib_no, 8)
    bx = cv.box((-230, -200, z0 - drop - 15), (230, 200, z0 + 12))
    if bx is None:
        return
    sl, x, y, z = bx
    phi = np.arctan2(np.abs(x) / 100.0, y / 80.0)          # 0 posterior, pi/2 lateral, pi anterior
    zr = z0 - drop * _smoothstep(phi / np.pi * 1.2) + 3.0
    rc = an.rho_cavity(x, y, z)
    cax, cay = an.cavity_axes(z)
    scale = 0.5 * (cax + cay)
    dr = (rc - 1.04) * scale
    dz = z - zr
    in_range = (phi >= 0.3) & (phi <= phi_end)
    outer = (dr / 6.5) ** 2 + (dz / 6.0) ** 2 <= 1.0
    inner = (dr / 3.5) ** 2 + (dz / 3.0) ** 2 <= 1.0
    _bone(cv, sl, outer & in_range, inner & in_range, L["ribs"])
    # costovertebral neck joining the vertebra
    near = (phi < 0.35) & (np.abs(dz) < 5.5) & (np.abs(y - (y0 - 4)) < 6) & (np.abs(x) > 10) & (np.abs(x) < 60)
    cv.paint(sl, near, L["ribs"], 600.0)


def _paint_sternum(cv: _Canvas, an: Anatomy):
    z_lo, z_hi = an.z_dia_r + 25.0, an.z_apex - 10.0
    bx = cv.box((-40, -200, z_lo), (40, 0, z_hi))
    if bx is None:
        return
    sl, x, y, z = bx
    cax, cay = an.cavity_axes(z)
    yf = -cay - 3.0
    half_w = 14.0 + 10.0 * _smoothstep((z - (z_hi - 50)) / 40.0)
    outer = (np.abs(x) <= half_w) & (np.abs(y - yf) <= 6.0)
    inner = (np.abs(x) <= half_w - 2.5) & (np.abs(y - yf) <= 3.5)
    _bone(cv, sl, outer, inner, L["sternum"])


def _paint_pelvis(cv: _Canvas, an: Anatomy):
    h = an.height
    # iliac wings: curved plates inside the cavity, posterolateral
    bx = cv.box((-200, -150, -260 * h), (200, 150, -110 * h))
    if bx is not None:
        sl, x, y, z = bx
        rc = an.rho_cavity(x, y, z)
        phi = np.arctan2(np.abs(x) / 100.0, y / 80.0)
        t = (z - (-260 * h)) / (150 * h)
        shell = np.abs(rc - (0.86 - 0.12 * (1 - t))) * 90.0
        mask = (phi > 0.5) & (phi < 1.9 - 0.3 * (1 - t)) & (t > 0) & (t < 1)
        _bone(cv, sl, (shell < 5.5) & mask, (shell < 3.0) & mask, L["hip"])
    # sacrum: posterior plate tilted
    bx = cv.box((-60, 0, -300 * h), (60, 160, -185 * h))
    if bx is not None:
        sl, x, y, z = bx
        ys = an.spine_y(-190 * h) + 10 + 0.5 * (-190 * h - z)
        half_w = 50.0 - 0.3 * (-190 * h - z)
        plate = (np.abs(y - ys) < 12) & (np.abs(x) < half_w)
        _bone(cv, sl, plate, (np.abs(y - ys) < 8) & (np.abs(x) < half_w - 3), L["hip"])
    # acetabula, pubic rami, femoral heads, necks and shafts
    for side in (-1, 1):
        head = np.array([side * 92.0, 5.0, -285.0 * h])
        bx = cv.box(head - 34, head + 34)
        if bx is not None:
            sl, x, y, z = bx
            r = np.sqrt((x - head[0]) ** 2 + (y - head[1]) ** 2 + (z - head[2]) ** 2)
            cup = (r > 26) & (r < 33) & (side * (x - head[0]) < 8)
            _bone(cv, sl, cup, (r > 28) & (r < 31) & (side * (x - head[0]) < 8), L["hip"])
            _bone(cv, sl, r < 24, r < 21, L["femur"])
        _capsule(cv, head + [side * -25, -20, -5], (side * 20, -85, -300 * h), 8.0, L["hip"], 800.0,
                 r_inner=5.0, hu_inner=250.0)
        _capsule(cv, head, head + [side * 35, 5, -35], 15.0, L["femur"], 800.0, r_inner=11.0, hu_inner=250.0)
        _capsule(cv, head + [side * 35, 5, -35], (side * 110, 10.0, -700.0), 15.0, L["femur"], 850.0,
                 r_inner=9.0, hu_inner=60.0)


def _add_texture(cv: _Canvas, seed: int):
    """Per-tissue smoothed-noise texture (part of the anatomy, so it deforms with it)."""
    rng = np.random.default_rng(seed + 7919)
    noise = rng.standard_normal(cv.hu.shape, dtype=np.float32)
    img = sitk.GetImageFromArray(noise)
    img.SetSpacing(cv.spacing)
    sig = 1.2
    sm = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(img, sig))
    # smoothing reduces the std; renormalise to unit std
    sm /= max(float(sm[::4, ::4, ::4].std()), 1e-6)
    amp = np.zeros(256, np.float32)
    for k, v in _TEXTURE.items():
        amp[k] = v
    cv.hu += amp[cv.lab] * sm


def render(anatomy: Anatomy, size, spacing, origin, texture: bool = True):
    """Render an anatomy on an axis-aligned grid: returns (hu float32 array, labels uint8 array), (z, y, x)."""
    cv = _Canvas(size, spacing, origin)
    _paint_body(cv, anatomy)
    _paint_lungs(cv, anatomy)
    _paint_heart_vessels(cv, anatomy)
    _paint_abdomen(cv, anatomy)
    _paint_bones(cv, anatomy)
    if texture:
        _add_texture(cv, anatomy.seed)
    return cv.hu, cv.lab


def make_phantom(size=None, spacing=2.0, fov_mm=DEFAULT_FOV_MM, origin=None, seed: int = 0,
                 texture: bool = True):
    """Render a random whole-body (thorax-abdomen-pelvis) CT phantom.

    Parameters
    ----------
    size : (nx, ny, nz) voxels, optional; default ``ceil(fov_mm / spacing)``.
    spacing : float or (sx, sy, sz) in mm.
    fov_mm : (x, y, z) extent in mm when ``size`` is not given (default 480 x 360 x 680 mm).
    origin : LPS mm of voxel (0, 0, 0); default centres the grid on x = y = 0 and z = 0 (see ``anatomy.py``).
    seed : anatomical variation (sizes, positions, fat, diaphragm, shape noise, bowel gas); deterministic.
    texture : add per-tissue smoothed-noise texture.

    Returns ``(image, labels, label_names)``: image is a float32 SimpleITK image in HU (air -1000, lung ~-850,
    fat -100, soft tissue 30-60, enhanced vessels/organs 100-220, bone 230 trabecular / 850 cortical),
    labels a uint8 image on the same grid (identity direction, LPS), label_names ``{id: name}``.
    Use :data:`REGION_OF_LABEL` / :func:`region_map` for the four engine regions.
    """
    sp = np.broadcast_to(np.asarray(spacing, float), (3,)).copy()
    if np.any(sp <= 0):
        raise ValueError(f"spacing must be positive, got {spacing}")
    if size is None:
        size = np.ceil(np.asarray(fov_mm, float) / sp).astype(int)
    size = np.asarray(size, int)
    if size.shape != (3,) or np.any(size < 2):
        raise ValueError(f"size must be three integers >= 2, got {size}")
    if origin is None:
        origin = -0.5 * (size - 1) * sp
    an = Anatomy(seed)
    hu, lab = render(an, size, sp, origin, texture=texture)
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing(tuple(sp))
    img.SetOrigin(tuple(float(o) for o in origin))
    labels = sitk.GetImageFromArray(lab)
    labels.CopyInformation(img)
    return img, labels, dict(LABEL_NAMES)
