"""QC picture: the optional region-weight map is drawn in the colours of registration_core.regions."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from PIL import Image

from registration_core import regions as R
from registration_core.qc import write_qc_png


def _ct(size=(24, 20, 16)):
    arr = np.full(size[::-1], -1000.0, np.float32)
    arr[4:12, 5:15, 6:18] = 40.0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 3.0))
    return img


def _count(png, colour) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB"))
    return int(np.all(rgb == np.asarray(colour, np.uint8), -1).sum())


def test_region_weight_column_in_region_colours(tmp_path):
    ct = _ct()
    w = np.zeros(ct.GetSize()[::-1] + (R.N_REGIONS,), np.float32)
    w[..., R.BONES.id - 1] = 1.0                        # every voxel: all weight on bones
    weights = sitk.GetImageFromArray(w, isVector=True)
    weights.CopyInformation(ct)
    plain = write_qc_png(ct, ct, ct, tmp_path / "plain.png")
    with_regions = write_qc_png(ct, ct, ct, tmp_path / "regions.png", region_weights=weights)
    assert Image.open(with_regions).size[0] > Image.open(plain).size[0]   # one more column
    assert _count(plain, R.BONES.colour) == 0
    assert _count(with_regions, R.BONES.colour) > 200                     # the bones colour fills the panel
