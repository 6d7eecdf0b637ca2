"""Training samples from real CTs under the longitudinal generator, HU-derived regions, and the ablation's start."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from registration_core.network import TotalRegNet, save_weights
from registration_core.synthetic import longitudinal_pair, make_phantom
from registration_core.training.data import (build_sample, hu_region_labels, longitudinal_sample,
                                             residual_to_mm)
from registration_core.training.loop import HEADS, TrainConfig, initial_network
from registration_core.training.regions import phantom_lut

SMALL_NET = {"n_regions": 4, "channels": [8, 8, 8, 8], "int_steps": 4}


def _chest_with_open_trachea() -> sitk.Image:
    """A 4 mm 'chest': soft-tissue body, two lungs joined by a trachea that leaves through the top slice, a bone
    rod; air outside."""
    z, y, x = np.mgrid[0:40, 0:48, 0:56].astype(np.float32)
    hu = np.full(z.shape, -1000.0, np.float32)
    body = ((x - 28) / 25) ** 2 + ((y - 24) / 20) ** 2 <= 1
    hu[body] = 40.0
    lungs = (((np.abs(x - 28) - 11) / 7) ** 2 + ((y - 24) / 10) ** 2 + ((z - 18) / 12) ** 2) <= 1
    hu[lungs] = -850.0
    trachea = ((x - 28) ** 2 + (y - 24) ** 2 <= 4) & (z >= 18)
    hu[trachea] = -1000.0
    hu[((x - 28) ** 2 + (y - 40) ** 2 <= 4) & body] = 700.0
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((4.0, 4.0, 4.0))
    return img


def test_hu_regions_find_lungs_that_the_trachea_opens_to_the_scan_edge():
    """Lungs (region 1) and bone (region 3) are found from HU alone, even though the trachea joins the lungs to
    the air outside through the scan's last slice (a 3D hole fill of the body would leave them out)."""
    img = _chest_with_open_trachea()
    hu = sitk.GetArrayFromImage(img)
    lab = sitk.GetArrayFromImage(hu_region_labels(img))
    lung_vox = (hu == -850.0)
    assert (lab[lung_vox] == 1).mean() > 0.95
    assert (lab[hu == 700.0] == 3).all()
    assert (lab[(hu == 40.0)] == 0).all()                  # soft tissue: not known
    outside = np.zeros_like(lung_vox)
    outside[:, :, :2] = True
    assert (lab[outside] == 0).all()                       # the air around the body is no lung


@pytest.fixture(scope="module")
def phantom_ct():
    img, lab, _ = make_phantom(spacing=8.0, fov_mm=(240.0, 240.0, 256.0), seed=5)
    return img, lab


def test_longitudinal_sample_target_is_exact_and_its_edges_are_not_air(phantom_ct):
    """A longitudinal-generator sample: its residual target maps the landmarks to their exact correspondents
    through the engine's affine, and where the prior's field of view ends inside the body the moving image carries
    its edge on (as the engine's working images do) instead of a -1024 HU air edge."""
    img, lab = phantom_ct
    s = longitudinal_sample(img, 7, lab, phantom_lut(), spacing=8.0, name="ph")
    assert s["kind"] == "longitudinal" and {"u", "valid", "rf", "rm", "lm_p"} <= set(s)
    q = residual_to_mm(s["u"].astype(np.float32), s, s["lm_p"])
    q0 = residual_to_mm(np.zeros((3,) + s["f"].shape, np.float32), s, s["lm_p"])
    err = np.linalg.norm(q - s["lm_q"], axis=1).mean()
    err_affine = np.linalg.norm(q0 - s["lm_q"], axis=1).mean()
    assert err < 1.0 < err_affine

    pair = longitudinal_pair(img, lab, seed=7)
    kw = dict(displacement=pair.displacement, rng=np.random.default_rng(0), spacing=8.0)
    edge = build_sample(pair.fixed, pair.moving, **kw)
    air = build_sample(pair.fixed, pair.moving, extrapolate=False, **kw)
    beyond = (air["body"] > 0) & (air["valid"] == 0) & (air["m"].astype(np.float32) < 0.01)
    assert beyond.sum() > 50                                # the -1024 fill leaves an air edge in the body ...
    assert (edge["m"].astype(np.float32)[beyond] > 0.2).mean() > 0.9   # ... the engine's working images do not


def test_ablation_arms_start_from_the_same_trunk_with_zero_heads(tmp_path):
    """``init_trunk`` copies every trunk tensor of the source weights and leaves both heads at zero, for K = 4
    and K = 1 alike; a whole-network init of another K is refused in one line."""
    torch.manual_seed(1)
    src = TotalRegNet(**SMALL_NET)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    path = save_weights(src, tmp_path / "src.safetensors")
    ref = src.state_dict()
    for k in (4, 1):
        net = initial_network(TrainConfig(network={**SMALL_NET, "n_regions": k}, init=str(path), init_trunk=True))
        for name, t in net.state_dict().items():
            if name.startswith(HEADS):
                assert not t.any(), name
            else:
                assert torch.equal(t, ref[name]), name
    with pytest.raises(ValueError, match="architecture"):
        initial_network(TrainConfig(network={**SMALL_NET, "n_regions": 1}, init=str(path)))
