"""Benchmark cases: real lung pair (landmarks), real CTs under known deformations, synthetic whole-body pairs.

Each case is a :class:`Case` with fixed/moving SimpleITK images (HU, LPS mm) and whatever ground truth it has:
landmarks (fixed points, moving points; LPS mm), label maps on both grids (Dice after warping the moving labels
with the estimated field), and a fixed-grid mask where the moving image is defined.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from registration_core.synthetic import longitudinal_pair, make_longitudinal_pair, random_realistic_deformation

ROOT = Path(__file__).resolve().parents[2]
SHARED_CT = Path(os.environ.get("TOTALREG_SHARED_CT", ROOT.parent / "shared" / "data" / "ct"))
TEST_DATA = ROOT / "tests" / "data"


@dataclass
class Case:
    name: str
    fixed: sitk.Image
    moving: sitk.Image
    landmarks: tuple[np.ndarray, np.ndarray] | None = None
    fixed_labels: sitk.Image | None = None
    moving_labels: sitk.Image | None = None
    dice_labels: list[int] | None = None          # labels scored (default: all non-zero in fixed_labels)
    mask: sitk.Image | None = None                # fixed-grid region where Dice is scored
    gt_displacement: sitk.Image | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def _find(*rels: str) -> Path:
    for rel in rels:
        for base in (SHARED_CT, TEST_DATA):
            if (base / rel).exists():
                return base / rel
    raise FileNotFoundError(f"none of {rels} found under {SHARED_CT} or {TEST_DATA}")


def _nn(img: sitk.Image, ref: sitk.Image) -> sitk.Image:
    return sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def lung_pair() -> Case:
    """Real lung CT pair (elastix test data), 51 landmark pairs; Dice on the lung masks."""
    fixed = sitk.Cast(sitk.ReadImage(str(_find("lung_pair_elastix/baseline_small.mha"))), sitk.sitkFloat32)
    mov_path = _find("lung_pair_elastix/followup_reconstructed.nii.gz",
                     "lung_pair_elastix/followup_reconstructed_small.nii.gz")
    moving = sitk.Cast(sitk.ReadImage(str(mov_path)), sitk.sitkFloat32)
    csv = _find("lung_pair_elastix/landmarks/landmarks_51.csv", "lung_pair_elastix/landmarks_51.csv")
    pts = np.loadtxt(csv, delimiter=",", skiprows=1)
    fl = _nn(sitk.ReadImage(str(_find("lung_pair_elastix/baseline_mask.mha"))), fixed)
    ml = _nn(sitk.ReadImage(str(_find("lung_pair_elastix/followup_mask.mha"))), moving)
    fl = sitk.Cast(fl > 0, sitk.sitkUInt8)
    ml = sitk.Cast(ml > 0, sitk.sitkUInt8)
    return Case("lung pair (real, 51 landmarks)", fixed, moving, (pts[:, :3], pts[:, 3:]), fl, ml, [1],
                note=f"fixed baseline_small (2.73x2.73x5 mm), moving {mov_path.name}; Dice = lung mask")


def _from_deformation(name, image, labels, seed, note, dice_labels=None, **kw) -> Case:
    s = random_realistic_deformation(image, labels, seed=seed, **kw)
    return Case(name, s.fixed, s.moving, s.landmarks, s.fixed_labels, s.moving_labels, dice_labels,
                s.fixed_overlap, s.displacement, note, {"generator": s.info})


def abdomen_seg() -> Case:
    """TotalSegmentator example crop (30 slices, 3 mm) + its 117-class labels under a known random deformation."""
    img = sitk.ReadImage(str(_find("abdomen_totalseg/example_ct_sm.nii.gz")))
    lab = sitk.ReadImage(str(_find("abdomen_totalseg/example_seg.nii.gz")))
    return _from_deformation("abdomen TotalSeg crop (real + known deformation)", img, lab, 11,
                             "example_ct_sm + example_seg; Dice = mean over the classes present in the fixed crop",
                             amplitude_mm=6.0, max_shift_mm=15.0, max_rot_deg=6.0)


def _threshold_labels(img: sitk.Image) -> sitk.Image:
    """Body (largest component of HU > -300, holes filled) split into 1 soft tissue, 2 fat, 3 bone, 4 gas."""
    body = sitk.BinaryThreshold(img, -300, 5000, 1, 0)
    body = sitk.RelabelComponent(sitk.ConnectedComponent(body), sortByObjectSize=True) == 1
    body = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(body, [3, 3, 3]))
    a = sitk.GetArrayFromImage(img)
    b = sitk.GetArrayFromImage(body).astype(bool)
    lab = np.zeros(a.shape, np.uint8)
    lab[b] = 1
    lab[b & (a > -190) & (a < -30)] = 2
    lab[b & (a >= 250)] = 3
    lab[b & (a < -400)] = 4
    out = sitk.GetImageFromArray(lab)
    out.CopyInformation(img)
    return out


def abdomen_full() -> Case:
    img = sitk.ReadImage(str(_find("abdomen_totalseg/example_ct.nii.gz")))
    return _from_deformation("abdomen CT (real + known deformation)", img, _threshold_labels(img), 12,
                             "example_ct 3 mm; labels by threshold: soft tissue, fat, bone, gas (Dice mean of 4)",
                             amplitude_mm=8.0, max_shift_mm=20.0, max_rot_deg=8.0)


def chest_tumour() -> Case:
    img = sitk.ReadImage(str(_find("chest_pyradiomics/lung1_image.nrrd")))
    lab = sitk.ReadImage(str(_find("chest_pyradiomics/lung1_label.nrrd")))
    small = sitk.BinShrink(sitk.Cast(img, sitk.sitkFloat32), [2, 2, 1])       # 1.14 x 1.14 x 5 mm
    lab_s = _nn(lab, small)
    lab_s = sitk.Cast(lab_s > 0, sitk.sitkUInt8)
    return _from_deformation("chest CT tumour (real + known deformation)", small, lab_s, 13,
                             "pyradiomics lung1, 2x in-plane bin-shrunk; Dice = tumour label", dice_labels=[1],
                             amplitude_mm=8.0, max_shift_mm=20.0, max_rot_deg=8.0)


def synthetic(seed: int, spacing: float = 4.0) -> Case:
    s = make_longitudinal_pair(seed, spacing=spacing)
    return Case(f"synthetic whole-body #{seed} ({spacing:g} mm)", s.fixed, s.moving, s.landmarks, s.fixed_labels,
                s.moving_labels, None, s.fixed_overlap, s.displacement,
                "phantom pair: breathing/sliding, organ shift, weight change, table shift+rotation; "
                "Dice = mean over the 23 phantom labels", {"generator": json.loads(json.dumps(s.info))})


# ------------------------------------------------------------------------------------------------------------
# the realistic evaluation set: each real CT (the lung pair excepted) as prior and current scan months apart
# (registration_core.synthetic.longitudinal_pair: rigid motion, breathing, smooth change, another field of view
# and slice spacing, contrast change, noise), under fixed seeds. VALIDATION seeds choose settings; TEST seeds are
# never tuned on. Seeds 3 and 4 joined the validation split for the field-of-view edge choice (two seeds per source
# were too few to choose it: bench/accuracy/RESULTS.md).
VALIDATION_SEEDS = (1, 2, 3, 4)
TEST_SEEDS = (101, 102, 103)


def _source_abdomen():
    img = sitk.ReadImage(str(_find("abdomen_totalseg/example_ct.nii.gz")))
    return img, _threshold_labels(img), None, "abdomen/lower-thorax CT example_ct (3 mm); labels by threshold: " \
        "soft tissue, fat, bone, gas (Dice mean of 4)"


def _source_abdomen_organs():
    img = sitk.ReadImage(str(_find("abdomen_totalseg/example_ct_sm.nii.gz")))
    lab = sitk.ReadImage(str(_find("abdomen_totalseg/example_seg.nii.gz")))
    return img, lab, None, "abdomen crop example_ct_sm (30 slices, 3 mm) + TotalSegmentator labels (Dice mean " \
        "over the organ classes present)"


def _source_chest():
    img = sitk.ReadImage(str(_find("chest_pyradiomics/lung1_image.nrrd")))
    lab = sitk.ReadImage(str(_find("chest_pyradiomics/lung1_label.nrrd")))
    small = sitk.BinShrink(sitk.Cast(img, sitk.sitkFloat32), [2, 2, 1])       # 1.14 x 1.14 x 5 mm
    lab_s = _threshold_labels(small)
    tum = sitk.GetArrayFromImage(_nn(lab, small)) > 0
    arr = sitk.GetArrayFromImage(lab_s)
    arr[tum] = 5
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(small)
    return small, out, None, "chest CT pyradiomics lung1 (1.14 x 1.14 x 5 mm, 2x in-plane bin-shrunk); labels: " \
        "threshold classes + tumour (5) (Dice mean of 5)"


SOURCES = {"abd": _source_abdomen, "abdorg": _source_abdomen_organs, "chest": _source_chest}
_SOURCE_CACHE: dict = {}


def longitudinal_case(source: str, seed: int) -> Case:
    """One case of the realistic evaluation set: ``SOURCES[source]`` under ``longitudinal_pair`` seed ``seed``."""
    if source not in _SOURCE_CACHE:
        _SOURCE_CACHE[source] = SOURCES[source]()
    img, lab, dice_labels, note = _SOURCE_CACHE[source]
    s = longitudinal_pair(img, lab, seed=seed)
    split = "test" if seed in TEST_SEEDS else "validation" if seed in VALIDATION_SEEDS else "other"
    return Case(f"{split} {source} #{seed}", s.fixed, s.moving, s.landmarks, s.fixed_labels, s.moving_labels,
                dice_labels, s.fixed_overlap, s.displacement, note + f"; {split} split",
                {"generator": json.loads(json.dumps(s.info, default=float)), "split": split})


def _longitudinal_factory(source, seed):
    return lambda: longitudinal_case(source, seed)


LONGITUDINAL = {f"{split}_{src}_{seed}": _longitudinal_factory(src, seed)
                for split, seeds in (("test", TEST_SEEDS), ("val", VALIDATION_SEEDS))
                for src in SOURCES for seed in seeds}

CASES = {
    "lung": lung_pair,
    "abdomen_seg": abdomen_seg,
    "abdomen": abdomen_full,
    "chest": chest_tumour,
    "synth0": lambda sp=4.0: synthetic(0, sp),
    "synth1": lambda sp=4.0: synthetic(1, sp),
    "synth2": lambda sp=4.0: synthetic(2, sp),
    **LONGITUDINAL,
}
