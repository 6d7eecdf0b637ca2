"""Synthetic phantom and ground-truth pair generators (registration_core.synthetic).

Small grids (5-6 mm) keep this file to a few seconds; the checks are on numbers: HU per tissue, exact landmark
correspondence, label agreement after warping with the ground-truth field, sliding at the chest wall.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from registration_core.metrics import dice, folding_percent, jacobian_determinant_array, tre
from registration_core.synthetic import (LABEL_NAMES, REGION_OF_LABEL, PairSample, make_longitudinal_pair,
                                         make_phantom, random_realistic_deformation, region_map)

HERE = Path(__file__).resolve().parent
TEST_DATA = HERE.parent / "data"
SHARED_CT = Path(os.environ.get("TOTALREG_SHARED_CT", HERE.parents[2] / "shared" / "data" / "ct"))


def real_data(rel: str) -> Path:
    """A real CT file: tests/data/<rel> if present, else ../shared/data/ct/<rel>; skip when neither exists."""
    for base in (TEST_DATA, SHARED_CT):
        for cand in (base / rel, base / rel.replace("landmarks_51.csv", "landmarks/landmarks_51.csv")):
            if cand.exists():
                return cand
    pytest.skip(f"real data file {rel} not found in {TEST_DATA} or {SHARED_CT}")


SMALL = dict(spacing=5.0, fov_mm=(360.0, 280.0, 420.0), moving_spacing=(3.0, 3.0, 3.5), canonical_spacing=2.5,
             n_landmarks=60)


@pytest.fixture(scope="module")
def phantom6():
    return make_phantom(spacing=6.0, seed=0)


@pytest.fixture(scope="module")
def pair():
    return make_longitudinal_pair(3, seed=11, **SMALL)


def _arr(img):
    return sitk.GetArrayFromImage(img)


# ---------------------------------------------------------------------------------------------------------- phantom
def test_phantom_geometry_and_types(phantom6):
    img, lab, names = phantom6
    assert img.GetPixelID() == sitk.sitkFloat32 and lab.GetPixelID() == sitk.sitkUInt8
    assert img.GetSize() == lab.GetSize() == (80, 60, 114)
    assert img.GetSpacing() == (6.0, 6.0, 6.0) and lab.GetOrigin() == img.GetOrigin()
    assert names == LABEL_NAMES
    present = set(np.unique(_arr(lab)).tolist())
    assert len(present - {0}) >= 21, f"labels missing at 6 mm: {set(names) - present}"


def test_phantom_hu_is_ct_like(phantom6):
    img, lab, _ = phantom6
    a, l = _arr(img), _arr(lab)
    med = {n: float(np.median(a[l == k])) for k, n in LABEL_NAMES.items() if (l == k).any()}
    assert med["background"] == -1000.0
    assert -900 < med["lung_left"] < -780 and -900 < med["lung_right"] < -780
    assert -130 < med["subcutaneous_fat"] < -70
    assert 30 < med["muscle"] < 70
    assert 80 < med["liver"] < 130 and 90 < med["spleen"] < 140
    assert 150 < med["aorta"] < 260
    assert float(a[l == 19].max()) > 700 and 150 < med["vertebrae"] < 900
    # texture: soft tissue is not flat
    assert 3 < float(a[l == 11].std()) < 40


def test_phantom_deterministic_and_varies_with_seed(phantom6):
    img, lab, _ = phantom6
    img2, lab2, _ = make_phantom(spacing=6.0, seed=0)
    assert np.array_equal(_arr(img), _arr(img2)) and np.array_equal(_arr(lab), _arr(lab2))
    _, lab3, _ = make_phantom(spacing=6.0, seed=5)
    v0 = [(_arr(lab) == k).sum() for k in (11, 4, 12)]
    v5 = [(_arr(lab3) == k).sum() for k in (11, 4, 12)]
    assert any(abs(a - b) / a > 0.05 for a, b in zip(v0, v5))


def test_regions_cover_all_labels(phantom6):
    assert set(REGION_OF_LABEL) == set(LABEL_NAMES) - {0}
    assert set(REGION_OF_LABEL.values()) == {"thorax", "abdomen", "bones", "soft_tissue"}
    _, lab, _ = phantom6
    reg = _arr(region_map(lab))
    l = _arr(lab)
    assert set(np.unique(reg).tolist()) == {0, 1, 2, 3, 4}
    assert np.all(reg[l == 4] == 1) and np.all(reg[l == 11] == 2) and np.all(reg[l == 19] == 3)
    assert np.all((reg == 0) == (l == 0))


def test_phantom_rejects_bad_spacing():
    with pytest.raises(ValueError, match="spacing"):
        make_phantom(spacing=0.0)


# ---------------------------------------------------------------------------------------------------------- pairs
def test_pair_ground_truth_geometry(pair: PairSample):
    d = pair.displacement
    assert d.GetPixelID() == sitk.sitkVectorFloat64 and d.GetNumberOfComponentsPerPixel() == 3
    for a, b in ((d, pair.fixed), (pair.fixed_labels, pair.fixed), (pair.fixed_overlap, pair.fixed)):
        assert a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
    assert pair.moving.GetSpacing() != pair.fixed.GetSpacing()
    assert pair.moving_labels.GetSize() == pair.moving.GetSize()
    assert folding_percent(d) == 0.0
    assert jacobian_determinant_array(d).min() > 0.3


def test_pair_landmarks_are_exact(pair: PairSample):
    p, q = pair.landmarks
    assert p.shape == q.shape and len(p) >= 50
    assert np.max(tre(pair.displacement, p, q)) < 1e-6
    # table shift/rotation + breathing: the identity is far off
    assert np.mean(tre(None, p, q)) > 10.0


def test_warping_moving_labels_with_gt_reproduces_fixed_labels(pair: PairSample):
    tx = sitk.DisplacementFieldTransform(sitk.Image(pair.displacement))
    warped = sitk.Resample(pair.moving_labels, pair.fixed_labels, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    ov = _arr(pair.fixed_overlap).astype(bool)
    fl = np.where(ov, _arr(pair.fixed_labels), 0)
    wl = np.where(ov, _arr(warped), 0)
    big = [4, 5, 8, 11, 12, 13, 14]          # lungs, heart, liver, spleen, kidneys
    inter = sum(int(((fl == k) & (wl == k)).sum()) for k in big)
    total = sum(int((fl == k).sum() + (wl == k).sum()) for k in big)
    assert total > 5000
    assert 2 * inter / total > 0.95
    # the identity (no registration) is much worse: the field matters
    ident = sitk.Resample(pair.moving_labels, pair.fixed_labels, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    assert dice(fl, np.where(ov, _arr(ident), 0), labels=big)["mean"] < 0.6
    # image agreement: moving warped by GT vs fixed (noise and lung density change aside)
    wi = _arr(sitk.Resample(pair.moving, pair.fixed, tx, sitk.sitkLinear, -1024.0))
    fi = _arr(pair.fixed)
    body = ov & (fl > 0)
    assert np.corrcoef(wi[body], fi[body])[0, 1] > 0.9


def test_breathing_slides_along_static_chest_wall():
    s = make_longitudinal_pair(2, seed=5, breathing_mm=20.0, organ_shift_mm=0.0, weight_factor=1.0,
                               max_shift_mm=0.0, max_rot_deg=0.0, noise_hu=0.0, n_landmarks=10, **{
                                   k: v for k, v in SMALL.items() if k != "n_landmarks"})
    d = _arr(s.displacement)
    l = _arr(s.fixed_labels)
    dz_lung = np.abs(d[..., 2][(l == 4) | (l == 5)])
    dz_rib = np.abs(d[..., 2][l == 20])
    dz_spine = np.abs(d[..., 2][l == 19])
    assert np.median(dz_lung) > 5.0 and dz_lung.max() > 15.0
    assert np.median(dz_rib) < 0.5 and np.median(dz_spine) < 0.5
    assert s.info["breathing_mm"] == 20.0
    # the sample is reproducible
    s2 = make_longitudinal_pair(2, seed=5, breathing_mm=20.0, organ_shift_mm=0.0, weight_factor=1.0,
                                max_shift_mm=0.0, max_rot_deg=0.0, noise_hu=0.0, n_landmarks=10, **{
                                    k: v for k, v in SMALL.items() if k != "n_landmarks"})
    assert np.array_equal(_arr(s2.displacement), d) and np.array_equal(_arr(s2.moving), _arr(s.moving))


# ---------------------------------------------------------------------------------------------- real-image pairs
def test_random_realistic_deformation_on_real_ct():
    img = sitk.ReadImage(str(real_data("lung_pair_elastix/baseline_small.mha")))
    lab = sitk.Cast(sitk.BinaryThreshold(img, -1100, -400, 1, 0) * sitk.BinaryThreshold(
        sitk.SmoothingRecursiveGaussian(sitk.Cast(img, sitk.sitkFloat32), 8.0), -700, 5000, 1, 0), sitk.sitkUInt8)
    s = random_realistic_deformation(img, lab, seed=4, amplitude_mm=6.0, n_landmarks=40, noise_hu=0.0)
    assert s.moving.GetSize() == img.GetSize() and s.fixed.GetSize() == img.GetSize()
    assert np.array_equal(_arr(s.moving), np.clip(_arr(img), -1024, 3071).astype(np.float32))  # input, no noise
    d = _arr(s.displacement)
    assert 2.0 < np.linalg.norm(d, axis=-1).mean() < 60.0
    assert folding_percent(s.displacement) == 0.0
    p, q = s.landmarks
    assert len(p) == 40 and np.max(tre(s.displacement, p, q)) < 1e-6
    # GT convention: fixed(p) == moving(p + d(p)) (trilinear), checked at landmarks independently of sitk.Resample
    fixed_at_p = np.array([s.fixed.EvaluateAtPhysicalPoint(tuple(pt), sitk.sitkNearestNeighbor) for pt in p])
    moving_at_q = np.array([s.moving.EvaluateAtPhysicalPoint(tuple(pt), sitk.sitkLinear) for pt in q])
    assert np.allclose(fixed_at_p, moving_at_q, atol=1e-2)
    # same seed -> same sample; another seed -> another field
    s2 = random_realistic_deformation(img, lab, seed=4, amplitude_mm=6.0, n_landmarks=40, noise_hu=0.0)
    assert np.array_equal(_arr(s2.displacement), d)
    s3 = random_realistic_deformation(img, None, seed=5, amplitude_mm=6.0, n_landmarks=40)
    assert not np.allclose(_arr(s3.displacement), d) and s3.fixed_labels is None and len(s3.landmarks[0]) == 40
