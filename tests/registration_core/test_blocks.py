"""Named building blocks: SpatialTransformer, VecInt, RegionFieldComposer; the shipped network is composed of
them with unchanged checkpoint keys and outputs."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from registration_core.blocks import RegionFieldComposer, SpatialTransformer, VecInt
from registration_core.network import DEFAULT_WEIGHTS, load_network
from registration_core.regions import N_REGIONS


def test_spatial_transformer_shifts_by_whole_voxels():
    src = torch.arange(6 * 7 * 8, dtype=torch.float64).reshape(1, 1, 6, 7, 8)
    disp = torch.zeros(1, 3, 6, 7, 8, dtype=torch.float64)
    disp[:, 0] = 1.0                                    # +1 voxel along x (W)
    out = SpatialTransformer()(src, disp)
    assert torch.allclose(out[..., :-1], src[..., 1:])  # voxel v takes src at v + 1
    assert torch.allclose(out[..., -1], src[..., -1])   # border replicated


def test_vecint_of_constant_velocity_is_that_translation():
    v = torch.zeros(1, 3, 8, 8, 8, dtype=torch.float64)
    v[:, 2] = 1.5                                       # 1.5 voxels along z
    assert torch.allclose(VecInt(7)(v), v, atol=1e-9)
    assert VecInt(0)(v) is v


def test_composer_picks_the_region_with_all_the_weight():
    k, shape = N_REGIONS, (6, 6, 6)
    g = torch.Generator().manual_seed(1)
    sub = torch.randn(1, k, 3, *shape, generator=g, dtype=torch.float64) * 0.3
    logits = torch.full((1, k, *shape), -50.0, dtype=torch.float64)
    logits[:, 2] = 50.0                                 # all weight on channel 2 = region id 3 (bones)
    disp, w = RegionFieldComposer(5)(sub, logits)
    assert torch.allclose(w.sum(1), torch.ones(1, *shape, dtype=torch.float64))
    assert torch.allclose(disp, VecInt(5)(sub[:, 2]), atol=1e-12)
    uniform, w_u = RegionFieldComposer(5)(sub, torch.zeros(1, k, *shape, dtype=torch.float64))
    assert torch.allclose(w_u, torch.full_like(w_u, 1.0 / k))
    assert torch.allclose(uniform, VecInt(5)(sub.mean(1)), atol=1e-12)


def test_shipped_weights_keys_and_output_unchanged():
    net = load_network(DEFAULT_WEIGHTS)
    with safe_open(str(DEFAULT_WEIGHTS), framework="pt") as fh:
        assert sorted(fh.keys()) == sorted(net.state_dict().keys())
    assert isinstance(net.compose, RegionFieldComposer) and not list(net.compose.parameters())
    g = torch.Generator().manual_seed(0)
    f = torch.rand(1, 1, 37, 45, 51, generator=g)
    m = torch.roll(f, 2, -1) * 0.7 + torch.rand(1, 1, 37, 45, 51, generator=g) * 0.3
    with torch.no_grad():
        d, w, s = net(f, m)
    # fingerprints of the shipped weights' output (the 2026-12-05 weights, sha256 8febf7a4...; exact on this
    # machine, a tolerance for other CPUs): a change of the blocks or of the file shows here
    assert float(d.double().abs().sum()) == pytest.approx(134641.5588977494, rel=1e-4)
    assert float(d.double().sum()) == pytest.approx(-53297.38369386609, rel=1e-3)
    assert float((w.double() ** 2).sum()) == pytest.approx(47213.229797537424, rel=1e-4)
    assert float(s.double().abs().sum()) == pytest.approx(514711.21199575835, rel=1e-4)
