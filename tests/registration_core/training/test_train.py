"""Tiny CPU training runs of TotalRegNet: loss decreases, checkpoints resume exactly, exported weights load."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from registration_core.errors import RegistrationInputError
from registration_core.network import TotalRegNet, load_network
from registration_core.synthetic import make_phantom, random_realistic_deformation
from registration_core.training.loop import (TrainConfig, evaluate_samples, export_weights, load_checkpoint,
                                             network_from_checkpoint, step_peak_memory, train)
from registration_core.training.data import build_sample, load_sample, residual_to_mm, save_sample
from registration_core.training.regions import phantom_lut, region_of_name

SMALL_NET = {"n_regions": 4, "channels": [8, 8, 8, 8], "int_steps": 4}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """One ~32^3 sample (8 mm phantom, random realistic deformation with exact field) as train and val."""
    img, lab, _ = make_phantom(spacing=8.0, fov_mm=(240.0, 240.0, 256.0), seed=3)
    pair = random_realistic_deformation(img, lab, seed=1, amplitude_mm=8.0, control_spacing_mm=80.0,
                                        max_shift_mm=8.0, max_rot_deg=3.0, n_landmarks=40)
    s = build_sample(pair.fixed, pair.moving, displacement=pair.displacement, fixed_labels=pair.fixed_labels,
                     moving_labels=pair.moving_labels, lut=phantom_lut(), landmarks=pair.landmarks,
                     rng=np.random.default_rng(0), spacing=8.0, kind="test")
    root = tmp_path_factory.mktemp("cache")
    save_sample(s, root / "train" / "a.npz")
    save_sample(s, root / "val" / "a.npz")
    return root


def _cfg(cache, out, steps, **kw):
    base = dict(cache=str(cache), out=str(out), steps=steps, crop=32, lr=3e-3, val_every=1000,
                checkpoint_every=2, progress=False, network=dict(SMALL_NET), threads=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("affine", ["engine", "truth"])
def test_sample_ground_truth_is_exact(tiny_cache, affine):
    """The residual target u reproduces the exact correspondence through the sample's affine, whether that affine
    is the engine's own affine stage (default: what the network meets at inference) or the perturbed
    least-squares one."""
    if affine == "engine":
        s = load_sample(tiny_cache / "train" / "a.npz")
    else:
        img, lab, _ = make_phantom(spacing=8.0, fov_mm=(240.0, 240.0, 256.0), seed=3)
        pair = random_realistic_deformation(img, lab, seed=1, amplitude_mm=8.0, control_spacing_mm=80.0,
                                            max_shift_mm=8.0, max_rot_deg=3.0, n_landmarks=40)
        s = build_sample(pair.fixed, pair.moving, displacement=pair.displacement, fixed_labels=pair.fixed_labels,
                         moving_labels=pair.moving_labels, lut=phantom_lut(), landmarks=pair.landmarks,
                         rng=np.random.default_rng(0), spacing=8.0, kind="test", affine="truth")
    assert s["f"].shape == s["m"].shape == s["u"].shape[1:] and s["f"].ndim == 3
    assert max(s["f"].shape) <= 40
    q_true = residual_to_mm(s["u"].astype(np.float32), s, s["lm_p"])
    q_aff = residual_to_mm(np.zeros((3,) + s["f"].shape, np.float32), s, s["lm_p"])
    tre_true = np.linalg.norm(q_true - s["lm_q"], axis=1).mean()
    tre_aff = np.linalg.norm(q_aff - s["lm_q"], axis=1).mean()
    assert tre_true < 2.5            # the residual target reproduces the exact correspondence (8 mm grid)
    assert tre_aff > 2 * tre_true     # and the affine alone does not
    assert set(np.unique(s["rf"])) <= {0, 1, 2, 3, 4} and (s["rf"] > 0).sum() > 100


@pytest.fixture(scope="module")
def trained_run(tiny_cache, tmp_path_factory):
    """6 steps on the tiny sample (validation at the end)."""
    out = tmp_path_factory.mktemp("run")
    return out, train(_cfg(tiny_cache, out, 6, measure_memory=False, val_every=6))


def test_loss_decreases_and_checkpoint_written(trained_run):
    out, res = trained_run
    rows = (out / "log.csv").read_text().splitlines()[1:]
    total = [float(r.split(",")[3]) for r in rows]
    epe = [float(r.split(",")[5]) for r in rows]
    assert len(total) == 6
    assert np.mean(total[-2:]) < total[0]
    assert np.mean(epe[-2:]) < epe[0]
    ck = load_checkpoint(res["last"])
    assert ck["step"] == 6 and ck["config"] == SMALL_NET and "optimizer" in ck and "rng" in ck
    assert res["best_val"]["tre_mm"] < res["best_val"]["tre_affine_mm"]   # validation TRE improved
    assert (out / "best.pt").is_file()


def test_resume_is_exact(tiny_cache, tmp_path):
    straight = train(_cfg(tiny_cache, tmp_path / "a", 4))
    # "interrupted" after 2 steps, then resumed from b/last.pt; b never runs the memory probe, so this also
    # checks that the probe (a's first step) leaves the training trajectory untouched
    train(_cfg(tiny_cache, tmp_path / "b", 2, measure_memory=False))
    resumed = train(_cfg(tiny_cache, tmp_path / "b", 4, measure_memory=False))
    assert resumed["step"] == 4
    a, b = load_checkpoint(straight["last"]), load_checkpoint(resumed["last"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert straight["peak_memory_bytes"] > 1_000_000            # measured once, with the profiler
    assert json.loads((tmp_path / "a" / "memory.json").read_text())["peak_step_tensor_bytes"] > 1_000_000


def test_export_and_load_same_architecture(tiny_cache, trained_run, tmp_path):
    from node.cli import main

    _, res = trained_run
    w, side = export_weights(res["last"], tmp_path / "w" / "net.safetensors", {"note": "test"})
    meta = json.loads(side.read_text())
    assert meta["architecture"]["channels"] == [8, 8, 8, 8] and meta["steps"] == 6 and meta["note"] == "test"
    net = load_network(w)
    ref = network_from_checkpoint(res["last"])
    x, y = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x, y)[0], ref(x, y)[0])
        assert net(x, y)[0].abs().max() > 0          # trained: no longer the zero-initialised output
    # fine-tuning from exported weights of the same architecture works; another architecture is refused
    res2 = train(_cfg(tiny_cache, tmp_path / "ft", 1, measure_memory=False, init=str(w)))
    assert res2["step"] == 1
    with pytest.raises(ValueError, match="architecture"):
        train(_cfg(tiny_cache, tmp_path / "ft2", 1, measure_memory=False, init=str(w),
                   network={"n_regions": 4, "channels": [8, 8, 8, 16], "int_steps": 4}))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RegistrationInputError):
        load_network(bad)
    # the CLI
    out = tmp_path / "cli.safetensors"
    assert main(["train", "export", "--checkpoint", res["last"], "--out", str(out)]) == 0
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert main(["train", "export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2


def test_untrained_network_is_affine_only(tiny_cache):
    net = TotalRegNet(**SMALL_NET)
    ev = evaluate_samples(net, [load_sample(tiny_cache / "val" / "a.npz")])
    assert ev["tre_mm"] == pytest.approx(ev["tre_affine_mm"])    # zero-initialised heads: affine only
    assert ev["dice"] == pytest.approx(ev["dice_affine"]) and 0 < ev["dice"] <= 1


def test_region_names_and_memory_probe():
    assert region_of_name("lung_upper_lobe_left") == 1
    assert region_of_name("liver") == 2
    assert region_of_name("vertebrae_L1") == 3 and region_of_name("rib_left_3") == 3
    assert region_of_name("gluteus_maximus_left") == 4

    def fn():
        a = torch.zeros(1000, 1000)
        b = a * 2
        del a
        c = b + 1
        return c

    assert step_peak_memory(fn, torch.device("cpu")) == pytest.approx(8_000_000, rel=0.01)


def test_learning_rate_warms_up_then_decays_to_two_percent():
    from registration_core.training.loop import learning_rate

    cfg = TrainConfig(lr=1e-3, steps=1000, warmup=100)
    lrs = [learning_rate(cfg, s) for s in range(1000)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[99] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))          # monotone decay after the warm-up
    assert learning_rate(cfg, 1000) == pytest.approx(2e-5)
    assert learning_rate(TrainConfig(lr=1e-3, schedule="constant"), 500) == 1e-3


def test_one_region_network_trains_and_reports_no_decomposition(tiny_cache, tmp_path):
    """K = 1 (`totalreg train run --regions 1`, the plain UNet of the K = 4 / K = 1 ablation): trains on the same
    cache (its one field supervised everywhere, no region cross-entropy), exports, loads, and the engine reports no
    region figures and no region picture for it instead of labelling its one field as the first region."""
    from registration_core import RegistrationConfig, register
    from registration_core.training.losses import LossWeights, training_loss

    one = {**SMALL_NET, "n_regions": 1}
    res = train(_cfg(tiny_cache, tmp_path / "k1", 2, measure_memory=False, network=dict(one)))
    assert load_checkpoint(res["last"])["config"]["n_regions"] == 1
    w, _ = export_weights(res["last"], tmp_path / "k1.safetensors", {})
    net = load_network(w)
    assert net.n_regions == 1
    s = load_sample(tiny_cache / "train" / "a.npz")
    batch = {"f": torch.from_numpy(s["f"])[None, None].float(), "m": torch.from_numpy(s["m"])[None, None].float(),
             "body": torch.ones(1, 1, *s["f"].shape), "valid": torch.ones(1, 1, *s["f"].shape),
             "u": torch.from_numpy(np.ascontiguousarray(s["u"]))[None].float(),
             "rf": torch.from_numpy(s["rf"].astype(np.int64))[None, None],
             "rm": torch.from_numpy(s["rm"].astype(np.int64))[None, None]}
    total, parts = training_loss(net(batch["f"], batch["m"]), batch, LossWeights(), 8.0)
    assert np.isfinite(float(total.detach())) and "region_ce" not in parts
    assert parts["sub_epe_mm"] > 0 and 0 < parts["dice"] <= 1
    img, _, _ = make_phantom(spacing=8.0, fov_mm=(240.0, 240.0, 256.0), seed=3)
    out = register(img, img, RegistrationConfig(weights=str(w), iterations=0, device="cpu"))
    assert out.report["regions"] is None and out.region_weights is None
    assert "1 field" in out.report["regions_note"] and out.report["weights"]["sha256"]
