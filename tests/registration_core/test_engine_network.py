"""TotalRegNet: output contract, zero-initialised heads, diffeomorphic combination, checkpoint round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from registration_core.blocks import cost_volume, integrate_velocity
from registration_core.errors import RegistrationInputError
from registration_core.network import TotalRegNet, load_network, save_weights


@pytest.mark.parametrize("cost_radius", [(0, 0), (1, 2)])
def test_forward_shapes_and_untrained_identity(cost_radius):
    net = TotalRegNet(cost_radius=cost_radius).eval()
    f, m = torch.rand(1, 1, 19, 22, 25), torch.rand(1, 1, 19, 22, 25)
    with torch.no_grad():
        disp, w, sub = net(f, m)
    assert disp.shape == (1, 3, 19, 22, 25)
    assert w.shape == (1, 4, 19, 22, 25) and sub.shape == (1, 4, 3, 19, 22, 25)
    assert torch.allclose(w.sum(1), torch.ones(1, 19, 22, 25))
    assert disp.abs().max() == 0  # zero-initialised heads: an untrained net never moves anything
    n_bytes = sum(p.numel() for p in net.parameters()) * 4
    assert n_bytes < 30e6


def test_scaling_and_squaring_of_constant_velocity_is_translation():
    v = torch.zeros(1, 3, 12, 12, 12)
    v[:, 0] = 1.5  # 1.5 voxels along x (W axis)
    d = integrate_velocity(v, 7)
    assert torch.allclose(d[:, 0, 3:-3, 3:-3, 3:-3], torch.full((6, 6, 6), 1.5), atol=1e-4)
    assert d[:, 1:].abs().max() < 1e-5


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    net = TotalRegNet(n_regions=3, channels=(8, 16, 16), int_steps=5)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.01)
    path = save_weights(net, tmp_path / "w.safetensors")
    again = load_network(path)
    assert again.config == net.config
    f, m = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        a, b = net.eval()(f, m)[0], again(f, m)[0]
    assert torch.allclose(a, b) and a.abs().max() > 0
    # same file name, other architecture -> one-line error
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(RegistrationInputError, match="do not match"):
        load_network(tmp_path / "bad.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(RegistrationInputError, match="cannot read"):
        load_network(tmp_path / "junk.safetensors")


def test_cost_volume_peaks_at_the_known_shift():
    """Channel order z slowest, x fastest; channel (dz, dy, dx) compares f(v) with m(v + (dx, dy, dz)) -- the
    network's displacement convention (fixed voxel v <-> moving voxel v + disp(v))."""
    torch.manual_seed(1)
    f = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 24, 24, 24), 3, 1, 1)
    shift_zyx = (2, 0, -1)                                  # m(v + s) = f(v)
    m = torch.roll(f, shifts=shift_zyx, dims=(2, 3, 4))
    cv = cost_volume(f, m, 2)
    assert cv.shape == (1, 125, 24, 24, 24)
    score = cv[0, :, 6:18, 6:18, 6:18].mean((1, 2, 3))
    best = int(score.argmax())
    dz, dy, dx = best // 25 - 2, (best // 5) % 5 - 2, best % 5 - 2
    assert (dz, dy, dx) == shift_zyx
    assert score[best] > score.sort().values[-2] + 0.1       # a clear peak, not a tie


def test_cost_volume_network_round_trip(tmp_path):
    torch.manual_seed(0)
    net = TotalRegNet(channels=(8, 8, 16, 16), int_steps=4, cost_radius=(1, 1))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.01)
    again = load_network(save_weights(net, tmp_path / "cv.safetensors"))
    assert again.config["cost_radius"] == [1, 1]
    f, m = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.eval()(f, m)[0], again(f, m)[0])


def test_tiny_inputs_are_padded_so_instance_norm_works():
    """A 16x16x8-voxel scan (64 mm at 4 mm) once made the bottleneck 1x1x1 and instance norm raised."""
    torch.manual_seed(0)
    net = TotalRegNet(cost_radius=(1, 2)).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.01)
    with torch.no_grad():
        disp, w, sub = net(torch.rand(1, 1, 8, 16, 16), torch.rand(1, 1, 8, 16, 16))
    assert disp.shape == (1, 3, 8, 16, 16) and torch.isfinite(disp).all()


class _TwoCallNet(torch.nn.Module):
    """Stub network: first call returns a ramp field u_x = 0.1 x (voxels), later calls a 1-voxel x shift; region
    weights mark the call."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, f, m):
        self.calls += 1
        d, h, w = f.shape[-3:]
        disp = torch.zeros(1, 3, d, h, w)
        if self.calls == 1:
            disp[:, 0] = 0.1 * torch.arange(w, dtype=torch.float32)
        else:
            disp[:, 0] = 1.0
        return disp, torch.full((1, 4, d, h, w), float(self.calls)), None


def test_cascade_composes_each_pass_after_the_field_so_far():
    """Two passes give r + u o (id + r) -- the second pass's residual first, then the first field at the moved
    point -- not u + r; one pass is the network alone; the region weights are the first pass's."""
    from registration_core.engine import cascade

    f = torch.zeros(1, 1, 6, 7, 12)
    disp, weights = cascade(_TwoCallNet(), f, f, passes=2)
    x = torch.arange(12, dtype=torch.float32)
    inner = slice(0, 10)                     # x + 1 stays inside the grid
    assert torch.allclose(disp[0, 0, 3, 3, inner], 1.0 + 0.1 * (x[inner] + 1.0), atol=1e-5)
    assert float(disp[:, 1:].abs().max()) == 0.0
    assert float(weights.max()) == 1.0
    one, _ = cascade(_TwoCallNet(), f, f, passes=1)
    assert torch.allclose(one[0, 0, 3, 3], 0.1 * x, atol=1e-6)
