"""The network's region decomposition made visible: per-region figures in the report, the region weights kept
for the QC picture, and the weights' provenance (name, sha256) recorded."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image
from test_engine_phantom import make

from registration_core import RegistrationConfig, register
from registration_core import regions as R
from registration_core.engine import region_figures, region_maps
from registration_core.network import DEFAULT_WEIGHTS
from registration_core.qc import write_qc_png

FAST = dict(device="cpu", working_spacing=5.0, iterations=10)


@pytest.fixture(scope="module")
def run():
    fixed, _ = make()
    t = np.array([0.0, 5.0, 0.0])
    moving, _ = make(transform_inv=lambda q: q - t)  # fixed p <-> moving p + t
    return fixed, moving, register(fixed, moving, RegistrationConfig(**FAST))


def test_report_has_per_region_figures_in_range(run):
    _, _, res = run
    regs = res.report["regions"]
    assert list(regs) == list(R.REGION_NAMES)
    for name, r in regs.items():
        assert r["id"] == R.region(name).id and r["title"] == R.region(name).title
        assert 0.0 <= r["share_of_body"] <= 1.0
        if r["voxels"]:
            assert 0.0 <= r["mean_mm"] <= r["p95_mm"] < 50.0
            assert 0.0 <= r["deformable_mean_mm"] <= r["deformable_p95_mm"] < 50.0
            assert 0.0 <= r["folding_percent"] <= 100.0
    assert sum(r["share_of_body"] for r in regs.values()) == pytest.approx(1.0, abs=2e-3)
    assert sum(r["voxels"] for r in regs.values()) > 1000
    # the 5 mm shift is the total field's magnitude in every region that holds a fair share of the body
    big = [r for r in regs.values() if r["voxels"] > 2000]
    assert big and all(3.0 < r["mean_mm"] < 7.0 for r in big)


def test_report_names_the_weights_by_sha256(run):
    w = run[2].report["weights"]
    assert w == {"name": DEFAULT_WEIGHTS.name, "path": str(DEFAULT_WEIGHTS),
                 "sha256": hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest(), "shipped": True}


def test_region_weights_image_and_qc_column(run, tmp_path):
    fixed, moving, res = run
    w = res.region_weights
    assert w.GetNumberOfComponentsPerPixel() == R.N_REGIONS
    arr = sitk.GetArrayFromImage(w)
    assert np.allclose(arr.sum(-1), 1.0, atol=1e-4) and arr.min() >= 0
    # the weights' grid is the fixed body box (the body plus a 15 mm margin), not some other place
    lo = np.asarray(w.GetOrigin())
    hi = lo + np.asarray(w.GetSpacing()) * (np.asarray(w.GetSize()) - 1)
    f_lo = np.asarray(fixed.GetOrigin())
    f_hi = f_lo + np.asarray(fixed.GetSpacing()) * (np.asarray(fixed.GetSize()) - 1)
    assert np.all(lo >= f_lo - 20) and np.all(hi <= f_hi + 20) and np.all(hi - lo > 100)
    plain = write_qc_png(fixed, moving, res.warped, tmp_path / "plain.png", displacement=res.displacement)
    with_w = write_qc_png(fixed, moving, res.warped, tmp_path / "regions.png", displacement=res.displacement,
                          region_weights=w)
    w0, w1 = Image.open(plain).size[0], Image.open(with_w).size[0]
    assert w1 > w0 * 1.1   # one more column


def test_without_network_no_regions_and_no_weights():
    fixed, _ = make(size=(40, 32, 36), spacing=(6.0, 6.0, 6.0))
    res = register(fixed, fixed, RegistrationConfig(device="cpu", working_spacing=6.0, iterations=0, weights="none"))
    assert res.region_weights is None
    assert res.report["regions"] is None and res.report["weights"] is None
    assert "no network" in res.report["regions_note"]


def test_region_figures_on_a_known_field():
    """Region 1 (thorax) moves 3 mm along x, region 3 (bones) 1 mm along z, the rest stays: per-region means,
    p95 and shares come out exactly; a folded voxel is counted in its own region only."""
    shape = (10, 12, 14)
    labels = np.zeros(shape, np.uint8)
    labels[:, :, :5] = R.THORAX.id
    labels[:, :, 5:9] = R.BONES.id
    labels[:, :, 9:13] = R.SOFT_TISSUE.id          # last column: outside the body (0)
    total = np.zeros(shape + (3,))
    total[labels == R.THORAX.id, 0] = 3.0
    total[labels == R.BONES.id, 2] = -1.0
    jac = np.ones(shape)
    jac[0, 0, 6] = -0.5                              # one folded voxel in bones
    shares = [0.4, 0.0, 0.3, 0.3]
    out = region_figures(total, total * 0.5, jac, labels, shares)
    assert out["thorax"]["mean_mm"] == 3.0 and out["thorax"]["p95_mm"] == 3.0
    assert out["thorax"]["deformable_mean_mm"] == 1.5
    assert out["bones"]["mean_mm"] == 1.0 and out["soft_tissue"]["mean_mm"] == 0.0
    assert out["bones"]["folding_percent"] == pytest.approx(100.0 / (10 * 12 * 4), abs=1e-4)
    assert out["thorax"]["folding_percent"] == 0.0
    assert out["abdomen"]["voxels"] == 0 and out["abdomen"]["mean_mm"] is None
    assert [out[n]["share_of_body"] for n in R.REGION_NAMES] == shares
    assert out["thorax"]["colour"] == "#{:02x}{:02x}{:02x}".format(*R.THORAX.colour)


def test_region_maps_shares_and_argmax():
    """Weights on a coarse grid over the same box: shares are body means of the (resized) weights and the map is
    the argmax inside the body, 0 outside."""
    w = torch.zeros(1, 4, 4, 4, 4)
    w[:, 0, :, :, :2] = 1.0       # x < half: thorax
    w[:, 2, :, :, 2:] = 1.0       # x >= half: bones
    body = torch.zeros(1, 1, 4, 4, 4)
    body[..., 1:3, :, :] = 1.0    # two z slices
    labels, shares = region_maps(w, body)
    assert shares == pytest.approx([0.5, 0.0, 0.5, 0.0])
    assert (labels[0] == 0).all() and (labels[1, :, :2] == R.THORAX.id).all()
    assert (labels[2, :, 2:] == R.BONES.id).all()


def test_lungs_cut_by_the_field_of_view_count_as_anatomy():
    """A lung (-850 HU) that touches the scan's edge is no axial hole, so the body mask leaves it out; the region
    figures still count it, but not the outside air (-1000 HU) nor beyond the scan (-1024 HU)."""
    from types import SimpleNamespace

    from registration_core.engine import anatomy_mask
    from registration_core.preprocess import normalise

    hu = np.full((6, 8, 10), -1000.0, np.float32)
    hu[:, :, 6:] = -850.0                           # lung at the edge
    hu[:, :, 3:6] = 40.0                            # tissue
    hu[:, :, :1] = -1024.0                          # beyond the scan
    body = np.zeros(hu.shape, np.float32)
    body[:, :, 3:6] = 1.0
    work = SimpleNamespace(f=torch.as_tensor(normalise(hu, (-1000.0, 1000.0)))[None, None],
                           body=torch.as_tensor(body)[None, None])
    m = anatomy_mask(work, (-1000.0, 1000.0))[0, 0].numpy()
    assert (m[:, :, 3:] == 1).all() and (m[:, :, :3] == 0).all()


def test_similarity_weight_covers_lungs_cut_by_the_field_of_view():
    """The deformable stage's data weight must reach a lung that the scan's edge cuts (no axial hole, so outside
    the body mask): before, the real lung pair's 51 landmarks all lay outside the body mask and 38 had no data
    term. Outside air (-1000 HU, with noise) stays out."""
    from registration_core import RegistrationConfig
    from registration_core.engine import affine_stage, prepare_pair, resample_stage

    rng = np.random.default_rng(0)
    hu = rng.normal(-1000.0, 15.0, (40, 60, 60)).astype(np.float32)     # z, y, x at 4 mm: outside air + noise
    hu[:, 10:50, 8:48] = 40.0                                             # body (tissue)
    hu[:, 15:45, 25:60] = -850.0                                          # a lung running out of the right edge
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((4.0, 4.0, 4.0))
    cfg = RegistrationConfig(affine_iterations=(1, 1), rotation_starts_deg=0.0)
    fp, mp = prepare_pair(img, img, cfg)
    work = resample_stage(img, img, fp, mp, affine_stage(fp, mp, cfg, torch.device("cpu")), cfg,
                          torch.device("cpu"))
    g = work.grid
    w = work.weight[0, 0].numpy()
    body = work.body[0, 0].numpy()

    def at(x, y, z):  # image voxel index (x, y, z) -> working-grid voxel index (x, y, z)
        return np.round((np.array([x, y, z]) * 4.0 - np.asarray(g.origin)) / np.asarray(g.spacing)).astype(int)

    lung = at(44, 30, 20)                                                 # inside the body's box
    assert all(0 <= v < n for v, n in zip(lung[::-1], w.shape))
    assert body[lung[2], lung[1], lung[0]] == 0 and w[lung[2], lung[1], lung[0]] > 0
    assert w[w.shape[0] // 2, 0, 0] == 0                                  # box corner: air, >= 15 mm from the body


def test_field_of_view_edges_are_not_anatomy_edges():
    """Where a scan's field of view ends inside the body, the working images carry the edge slice on (nearest
    extrapolation) instead of -1024 HU: an air edge there is no anatomy, and its MIND features pulled the field
    (validation abdominal crops: 1.12 -> 0.94 mm mean TRE). Beyond the moving scan's end there is no data term, and
    none outside the fixed scan either (the working box reaches a little past it)."""
    from registration_core import RegistrationConfig
    from registration_core.engine import affine_stage, prepare_pair, resample_stage

    hu = np.full((40, 50, 50), -1000.0, np.float32)                      # z, y, x at 4 mm
    hu[:, 10:40, 10:40] = 40.0                                            # a body cut by both ends of the scan
    hu[:, 20:30, 15:25] = 300.0                                           # a bone-like column along z
    fixed = sitk.GetImageFromArray(hu)
    fixed.SetSpacing((4.0, 4.0, 4.0))
    moving = fixed[:, :, 12:32]                                           # the prior covers slices 12..31 only
    cfg = RegistrationConfig(affine_iterations=(1, 1), rotation_starts_deg=0.0)
    assert cfg.extrapolate_edges
    fp, mp = prepare_pair(fixed, moving, cfg)
    work = resample_stage(fixed, moving, fp, mp, affine_stage(fp, mp, cfg, torch.device("cpu")), cfg,
                          torch.device("cpu"))
    g = work.grid
    z_mm = np.asarray(g.origin)[2] + g.spacing * np.arange(g.size[2])
    y, x = (np.round((np.array([25.0, 35.0]) * 4.0 - np.asarray(g.origin)[[1, 0]]) / g.spacing)).astype(int)
    m, f = work.m[0, 0, :, y, x].numpy(), work.f[0, 0, :, y, x].numpy()
    valid, w = work.valid[0, 0, :, y, x].numpy(), work.weight[0, 0, :, y, x].numpy()
    tissue = (40.0 + 1000.0) / 2000.0
    in_fixed = (z_mm > 2.0) & (z_mm < 39 * 4.0 - 2.0)
    beyond_prior = in_fixed & (valid == 0)                                # the prior ends, the body goes on
    assert beyond_prior.sum() >= 0.4 * in_fixed.sum()
    assert np.allclose(m[beyond_prior], tissue, atol=0.02)               # the edge slice carried on, not air
    assert (w[beyond_prior] == 0).all()                                   # and no data term there
    assert (valid[in_fixed] == 1).sum() >= 0.4 * in_fixed.sum()
    assert (w[in_fixed & (valid == 1)] > 0).all()                         # data term where both scans have it
    outside_fixed = (z_mm < -2.0) | (z_mm > 39 * 4.0 + 2.0)
    assert outside_fixed.any() and (w[outside_fixed] == 0).all()
    assert np.allclose(f[outside_fixed], tissue, atol=0.02)
