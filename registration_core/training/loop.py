"""Training of the TotalRegistrator network (:class:`registration_core.network.TotalRegNet`).

Public API::

    from registration_core.training.loop import TrainConfig, train, export_weights, default_cache_spec
    from registration_core.training.data import build_cache          # samples -> var/train_cache/*.npz
    result = train(TrainConfig(cache="var/train_cache", out="var/train_run", steps=2000))
    export_weights("var/train_run/best.pt", "registration_core/weights/totalreg_v1.safetensors")

Design
------
Data (all at the engine's network resolution, 4 mm isotropic, axis-aligned LPS; see
:mod:`registration_core.training.data`). Every sample is exactly what the engine feeds the network: the fixed
(current) CT on a grid over its body box and the moving (prior) CT resampled onto it through an affine, both
normalised to [0, 1] (HU -1000..1000). Three sources:

1. synthetic whole-body longitudinal pairs (``make_longitudinal_pair``: breathing with sliding, organ shifts,
   weight change, table shift/rotation, different fields of view and slice spacings) with the EXACT field and
   phantom labels;
2. self-supervised pairs from any single real CT (``random_realistic_deformation``: rigid + smooth B-spline with
   exact field, plus a random intensity change) -- the way a hospital adapts the model to its own unpaired
   archive (``totalreg train cache --ct ...``); optional TotalSegmentator label maps travel along;
3. a folder of real pairs (NIfTI/MHA/NRRD files or DICOM series folders) with optional multi-label maps: no
   field target, trained through similarity, region Dice and smoothness (affine from the engine's affine stage).

Every sample's affine ``A`` is the engine's own affine stage (``optimise_affine`` with the engine's default
settings), so the network trains on exactly the residual it meets at inference; for pairs with a ground truth the
target is ``u = A^-1(x + d(x)) - x`` -- the non-linear part plus whatever the affine stage left. (An earlier
candidate trained on the least-squares affine of the true correspondences plus a random error learned to undo
errors the engine's affine does not make, and hurt on held-out pairs; ``build_sample(affine="truth")`` still
offers that mode.)

Loss (:mod:`registration_core.training.losses`), per random crop (default 64^3 voxels = 256 mm):

- image similarity: 1 - LNCC (5^3-voxel window = 20 mm) between fixed and warped moving inside the body;
- supervised field: mean end-point error (mm) against the exact residual where it is defined (both FOVs);
- region sub-fields: each region's own velocity field ``v_k`` is supervised by the exact field inside region k
  (from the label map; first-order ``exp(v) ~ v``, integrating K fields separately is too slow on CPU) -- so
  sub-field k learns region k's motion (lungs sliding, bones rigid, ...) and the soft weights only pick it;
- region weights: cross-entropy of the K=4 softmax weights against the label-derived region map (phantom labels
  or TotalSegmentator names mapped by :mod:`registration_core.training.regions`);
- region Dice: soft Dice of the warped moving region maps against the fixed region maps;
- smoothness: diffusion (squared spatial gradient) of the displacement.

Regions default to K=4 (lungs/thorax, abdominal organs, bones, other soft tissue), matching the network.

Mechanics: Adam with linear warm-up and cosine decay (:func:`learning_rate`); batch 1 (instance norm); bf16 autocast on CUDA (``amp="auto"``; on CPU it was measured no faster
here, so off); a checkpoint (model + optimizer + step + all RNG states + best metric) every
``checkpoint_every`` steps and on SIGTERM/SIGINT/time budget; ``resume=True`` continues exactly (bit-identical
weights to an uninterrupted run on the same machine); tqdm progress; CSV log of every step's losses and each
validation's TRE/Dice/EPE on held-out pairs; the training step's peak tensor memory is measured once
(``torch.profiler`` on CPU, ``max_memory_allocated`` on CUDA) and logged. The best checkpoint (lowest mean
validation TRE) is kept as ``best.pt``; :func:`export_weights` turns a checkpoint into the shipped safetensors
file + JSON sidecar.
"""
from __future__ import annotations

import csv
import json
import math
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..network import TotalRegNet, load_network, save_weights
from ..regions import N_REGIONS, REGION_IDS
from ..torchutil import tune_allocator
from .data import CacheSpec, load_sample, residual_to_mm
from .losses import LossWeights, training_loss, warp_voxels

SHARED_CT = Path("/work/shared/data/ct")
#: the network's output heads (state_dict key prefixes); everything else is the UNet trunk
HEADS = ("velocity.", "logits.")


def default_cache_spec(shared: Path = SHARED_CT) -> CacheSpec:
    """The cache the shipped model is trained on: the project's real CTs each under many draws of the realistic
    longitudinal generator (``longitudinal_sample``: the accuracy benchmark's generator, with deformation seeds
    disjoint from its validation and test seeds), 16 synthetic phantom pairs, and a few self-supervised variants
    (rigid + B-spline, as ``totalreg train --archive`` makes them). The lung pair's two images are used ONE AT A
    TIME -- their correspondence is held out for evaluation. Validation: 2 held-out phantoms + one held-out
    longitudinal draw of each of four real CTs."""
    d = Path(shared)
    abd, abd_sm = str(d / "abdomen_totalseg/example_ct.nii.gz"), str(d / "abdomen_totalseg/example_ct_sm.nii.gz")
    seg, cmap = str(d / "abdomen_totalseg/example_seg.nii.gz"), str(d / "abdomen_totalseg/classmap_total.json")
    chest = str(d / "chest_pyradiomics/lung1_image.nrrd")
    base, follow = (str(d / "lung_pair_elastix/baseline_small.mha"),
                    str(d / "lung_pair_elastix/followup_reconstructed.nii.gz"))
    return CacheSpec(
        synthetic=tuple(range(16)), val_synthetic=(900, 901),
        single_ct=((abd, None, None, 2), (chest, None, None, 2), (abd_sm, seg, cmap, 2)),
        longitudinal=((abd, None, None, 20), (abd_sm, seg, cmap, 24), (chest, None, None, 20),
                      (base, None, None, 10), (follow, None, None, 10)),
        val_longitudinal=((abd, None, None, 1), (abd_sm, seg, cmap, 1), (chest, None, None, 1),
                          (base, None, None, 1)))


@dataclass
class TrainConfig:
    """Settings of :func:`train` (lengths in voxels of the 4 mm training grid unless stated).

    cache: folder made by ``build_cache`` (``train/*.npz``, ``val/*.npz``); out: run folder (checkpoints, CSV,
    log); steps: total optimisation steps; crop: cubic crop edge (voxels); lr: Adam learning rate;
    amp: "auto" (bf16 on CUDA only), "bf16" or "off"; val_every / checkpoint_every: steps; max_minutes: wall
    budget, the run saves and stops when it is spent (0 = none); schedule: "cosine" (linear warm-up over ``warmup``
    steps, then cosine decay to 2 % of ``lr`` at ``steps``) or "constant"; init: safetensors weights to start from
    (fine-tuning); init_trunk: take only the UNet trunk from ``init`` (every tensor but the ``velocity`` and
    ``logits`` heads, which stay zero), so networks with another K start from the same features; network:
    TotalRegNet keyword arguments (architecture); threads: torch CPU threads (0 = keep);
    log_every: also log a progress line every this many steps (step/total, loss, elapsed, ETA; 0 = none).
    """

    cache: str = "var/train_cache"
    out: str = "var/train_run"
    steps: int = 5000
    crop: int = 64
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup: int = 100
    seed: int = 0
    device: str = "cpu"
    amp: str = "auto"
    val_every: int = 100
    checkpoint_every: int = 25
    max_minutes: float = 0.0
    resume: bool = True
    init: str | None = None
    init_trunk: bool = False
    threads: int = 0
    progress: bool = True
    log_every: int = 0
    measure_memory: bool = True
    network: dict = field(default_factory=lambda: {"n_regions": N_REGIONS, "channels": [16, 32, 64, 64],
                                                   "int_steps": 7, "cost_radius": [1, 2]})
    loss: LossWeights = field(default_factory=LossWeights)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loss"] = self.loss.to_dict()
        return d


# ---------------------------------------------------------------------------------------------------------
# data feeding
# ---------------------------------------------------------------------------------------------------------
def _load_split(cache: Path, split: str) -> list[dict]:
    files = sorted((cache / split).glob("*.npz"))
    return [dict(load_sample(p), _file=p.name) for p in files if not p.name.endswith(".tmp.npz")]


def _crop_box(sample: dict, crop: int, rng: np.random.Generator):
    shape = np.asarray(sample["f"].shape)
    size = np.minimum(shape, crop)
    body = np.argwhere(sample["body"][::2, ::2, ::2]) * 2
    centre = body[rng.integers(len(body))] if len(body) else shape // 2
    lo = np.clip(centre - size // 2, 0, shape - size)
    return tuple(slice(int(a), int(a + s)) for a, s in zip(lo, size))


def sample_batch(sample: dict, box, device) -> dict:
    """Tensors [1, C, D, H, W] of a sample restricted to ``box`` (tuple of slices z, y, x)."""
    def t(a, dtype=torch.float32):
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dtype)[None]

    b = {"f": t(sample["f"][box])[None], "m": t(sample["m"][box])[None], "body": t(sample["body"][box])[None]}
    if "u" in sample:
        b["u"] = t(sample["u"][(slice(None),) + box])
        b["valid"] = t(sample["valid"][box])[None]
    if "rf" in sample:
        b["rf"] = t(sample["rf"][box], torch.long)[None]
        if "rm" in sample:
            b["rm"] = t(sample["rm"][box], torch.long)[None]
    return b


# ---------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_sample(net: TotalRegNet, sample: dict, device="cpu") -> np.ndarray:
    """Network residual field [3, z, y, x] (voxels, x/y/z channels) for a whole sample."""
    b = sample_batch(sample, (slice(None),) * 3, device)
    disp, _, _ = net(b["f"], b["m"])
    return disp[0].float().cpu().numpy()


def evaluate_samples(net: TotalRegNet, samples: list[dict], device="cpu") -> dict:
    """Mean TRE (mm; network and affine-only), region Dice (network and affine-only) and EPE (mm) over samples."""
    net.eval()
    rows = []
    for s in samples:
        u = predict_sample(net, s, device)
        r = {"name": s.get("_file", str(s.get("name", "")))}
        if "lm_p" in s:
            q = residual_to_mm(u, s, s["lm_p"])
            q0 = residual_to_mm(np.zeros_like(u), s, s["lm_p"])
            r["tre_mm"] = float(np.linalg.norm(q - s["lm_q"], axis=1).mean())
            r["tre_affine_mm"] = float(np.linalg.norm(q0 - s["lm_q"], axis=1).mean())
        if "u" in s:
            msk = (s["valid"] * s["body"]) > 0
            e = np.linalg.norm((u - s["u"].astype(np.float32)) * float(s["spacing"]), axis=0)
            r["epe_mm"] = float(e[msk].mean())
        if "rf" in s and "rm" in s:
            rm = torch.as_tensor(s["rm"]).float()[None, None]
            warped = warp_voxels(rm, torch.as_tensor(u)[None], mode="nearest")[0, 0].numpy().astype(np.uint8)
            r["dice"] = _region_dice(warped, s["rf"], s["body"])
            r["dice_affine"] = _region_dice(s["rm"], s["rf"], s["body"])
        rows.append(r)
    net.train()
    out = {"per_sample": rows}
    for key in ("tre_mm", "tre_affine_mm", "epe_mm", "dice", "dice_affine"):
        vals = [r[key] for r in rows if key in r and not math.isnan(r[key])]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    return out


def _region_dice(a: np.ndarray, b: np.ndarray, body: np.ndarray) -> float:
    vals = []
    for r in REGION_IDS:
        x, y = (a == r) & (body > 0), (b == r) & (body > 0)
        if x.sum() > 20 and y.sum() > 20:
            vals.append(2.0 * (x & y).sum() / (x.sum() + y.sum()))
    return float(np.mean(vals)) if vals else float("nan")


# ---------------------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------------------
def step_peak_memory(fn, device: torch.device) -> int:
    """Peak tensor memory (bytes) allocated while running ``fn()`` once: CUDA max_memory_allocated, or on CPU
    the running sum of the allocations/frees recorded by ``torch.profiler.profile(profile_memory=True)``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    cur = peak = 0
    for _, nb in events:
        cur += nb
        peak = max(peak, cur)
    return int(peak)


def measure_training_memory(cache: str | Path, crop: int = 96, network: dict | None = None, device: str = "cpu",
                            amp: str = "auto", loss: LossWeights | None = None) -> dict:
    """Peak tensor memory (bytes) of ONE training step (forward, loss, backward, Adam) at a ``crop``^3 crop of the
    largest cached training sample; see :func:`step_peak_memory` for the method."""
    dev = torch.device(device)
    files = sorted((Path(cache) / "train").glob("*.npz"))
    if not files:
        raise ValueError(f"no training samples in {Path(cache) / 'train'}")
    sample = max((load_sample(p) for p in files[:8]), key=lambda s: s["f"].size)
    net = TotalRegNet(**(network or TrainConfig().network)).to(dev).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    box = _crop_box(sample, crop, np.random.default_rng(0))
    batch = sample_batch(sample, box, dev)
    use_amp = amp == "bf16" or (amp == "auto" and dev.type == "cuda")
    lw = loss or LossWeights()

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            outp = net(batch["f"], batch["m"])
        total, _ = training_loss(outp, batch, lw, float(sample["spacing"]), net.int_steps)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    t = time.perf_counter()
    peak = step_peak_memory(step, dev)
    return {"crop_voxels": list(batch["f"].shape[-3:]), "peak_step_tensor_bytes": peak,
            "peak_step_tensor_gib": peak / 2 ** 30, "device": str(dev), "amp_bf16": use_amp,
            "step_time_s_with_profiler": round(time.perf_counter() - t, 2), "network": net.config}


# ---------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------
def _rng_state(data_rng: np.random.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "numpy_data": data_rng.bit_generator.state,
            "numpy_global": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict, data_rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_rng.bit_generator.state = state["numpy_data"]
    np.random.set_state(state["numpy_global"])
    random.setstate(state["python"])


def save_checkpoint(path: Path, net, opt, step: int, data_rng, extra: dict) -> None:
    """Write model + optimizer + step + RNG states (+ ``extra``) atomically with torch.save."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": net.state_dict(), "config": net.config, "optimizer": opt.state_dict(), "step": step,
                "rng": _rng_state(data_rng), **extra}, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a training checkpoint written by :func:`save_checkpoint` (our own files: full unpickling)."""
    return torch.load(str(path), map_location="cpu", weights_only=False)


def network_from_checkpoint(path: str | Path, device="cpu") -> TotalRegNet:
    """TotalRegNet from a ``.pt`` training checkpoint or a ``.safetensors`` weights file."""
    if str(path).endswith(".safetensors"):
        return load_network(path, device)
    ck = load_checkpoint(path)
    net = TotalRegNet(**ck["config"])
    net.load_state_dict(ck["model"])
    return net.to(device).eval()


def export_weights(checkpoint: str | Path, out: str | Path, notes: dict | None = None) -> tuple[Path, Path]:
    """Write ``checkpoint``'s network as safetensors (architecture in its metadata) and a JSON sidecar next to it
    (same stem, ``.json``: architecture, training data, steps, times, validation metrics, date, ``notes``)."""
    ck = load_checkpoint(checkpoint) if not str(checkpoint).endswith(".safetensors") else None
    net = network_from_checkpoint(checkpoint)
    out = Path(out)
    save_weights(net, out)
    side = {"format": "totalreg-net-v1 (safetensors tensors; architecture JSON in metadata 'config')",
            "architecture": {"class": "registration_core.network.TotalRegNet", **net.config},
            "parameters": int(sum(p.numel() for p in net.parameters())),
            "exported_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "source_checkpoint": str(checkpoint)}
    if ck is not None:
        side.update({"steps": int(ck["step"]), "train_config": ck.get("train_config"),
                     "data": ck.get("data"), "train_time_s": ck.get("elapsed_s"),
                     "best_validation": ck.get("best_val"), "peak_step_memory_bytes": ck.get("peak_memory"),
                     "device": ck.get("device")})
    side.update(notes or {})
    sidecar = out.with_suffix(".json")
    sidecar.write_text(json.dumps(side, indent=1, default=str))
    return out, sidecar


# ---------------------------------------------------------------------------------------------------------
# training loop
# ---------------------------------------------------------------------------------------------------------
CSV_FIELDS = ["step", "time_s", "lr", "total", "sim", "epe_mm", "sub_epe_mm", "smooth", "dice", "region_ce",
              "sample", "val_tre_mm", "val_tre_affine_mm", "val_epe_mm", "val_dice", "val_dice_affine"]


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Adam learning rate for optimisation step ``step`` (0-based): a pure function of the step, so a resumed run
    follows the same schedule."""
    if cfg.schedule == "constant":
        return cfg.lr
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def initial_network(cfg: TrainConfig) -> TotalRegNet:
    """The network a run starts from: ``TotalRegNet(**cfg.network)`` with zero heads, then ``cfg.init``'s weights
    (all of them, same architecture required) or with ``cfg.init_trunk`` its UNet trunk only (every tensor but
    :data:`HEADS`; the trunk's shapes must match, K may differ). ValueError (one line) on a mismatch."""
    net = TotalRegNet(**cfg.network)
    if cfg.init:
        src = load_network(cfg.init)
        if cfg.init_trunk:
            # the UNet trunk only: both heads stay zero-initialised, so K = 4 and K = 1 (the ablation) start alike
            trunk = {k: v for k, v in src.state_dict().items() if not k.startswith(HEADS)}
            mine = {k: v.shape for k, v in net.state_dict().items() if not k.startswith(HEADS)}
            if {k: v.shape for k, v in trunk.items()} != mine:
                raise ValueError(f"--init weights {cfg.init} have another trunk ({src.config}), not {net.config}")
            net.load_state_dict(trunk, strict=False)
        elif src.config != net.config:
            raise ValueError(f"--init weights {cfg.init} have architecture {src.config}, not {net.config}")
        else:
            net.load_state_dict(src.state_dict())
    return net


def train(cfg: TrainConfig, log=print) -> dict:
    """Train (or resume) TotalRegNet on a cache; returns {"step", "best_val", "last", "best", "csv", ...}.

    Writes ``out/last.pt`` (every ``checkpoint_every`` steps and on stop), ``out/best.pt`` (lowest validation
    TRE, else EPE), ``out/log.csv`` and ``out/memory.json``. Stops after ``steps`` or ``max_minutes``, or on
    SIGTERM/SIGINT (saving first)."""
    out = Path(cfg.out)
    device = torch.device(cfg.device)
    tune_allocator()  # CPU: keep freed tensor memory (see torchutil.tune_allocator)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    cache = Path(cfg.cache)
    train_set = _load_split(cache, "train")
    val_set = _load_split(cache, "val")
    if not train_set:
        raise ValueError(f"no training samples in {cache / 'train'}; build the cache first (totalreg train cache)")
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((cache / "manifest.json").read_text()) if (cache / "manifest.json").is_file() else {}
    spacing = float(train_set[0]["spacing"])
    use_amp = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    data_rng = np.random.default_rng(cfg.seed)
    net = initial_network(cfg)
    net = net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    step, best, elapsed0, peak = 0, float("inf"), 0.0, None
    best_val = None
    last = out / "last.pt"
    if cfg.resume and last.is_file():
        ck = load_checkpoint(last)
        if ck["config"] != net.config:
            raise ValueError(f"checkpoint {last} has architecture {ck['config']}, not {net.config}")
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, best, elapsed0 = int(ck["step"]), float(ck.get("best", float("inf"))), float(ck.get("elapsed_s", 0))
        best_val, peak = ck.get("best_val"), ck.get("peak_memory")
        _set_rng_state(ck["rng"], data_rng)
        log(f"resumed from {last} at step {step}")

    csv_path = out / "log.csv"
    new_csv = not csv_path.is_file() or step == 0
    fh = open(csv_path, "w" if new_csv else "a", newline="")
    writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
    if new_csv:
        writer.writeheader()

    stop = {"flag": False}
    old_handlers = {}

    def _stop(signum, frame):
        stop["flag"] = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            old_handlers[sig] = signal.signal(sig, _stop)
        except ValueError:  # not in the main thread
            pass

    data_info = {"cache": str(cache), "train_samples": [s["_file"] for s in train_set],
                 "val_samples": [s["_file"] for s in val_set], "spacing_mm": spacing, "manifest": manifest}

    def extra():
        return {"best": best, "best_val": best_val, "elapsed_s": elapsed0 + time.perf_counter() - t0,
                "train_config": cfg.to_dict(), "data": data_info, "peak_memory": peak,
                "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device)}

    def one_step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            outp = net(batch["f"], batch["m"])
        loss, parts = training_loss(outp, batch, cfg.loss, spacing, net.int_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        return parts

    t0 = time.perf_counter()
    step0, last_parts = step, {}
    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    try:
        while step < cfg.steps and not stop["flag"]:
            if cfg.max_minutes and (time.perf_counter() - t0) > 60 * cfg.max_minutes:
                log(f"time budget of {cfg.max_minutes} min spent at step {step}")
                break
            sample = train_set[int(data_rng.integers(len(train_set)))]
            box = _crop_box(sample, cfg.crop, data_rng)
            batch = sample_batch(sample, box, device)
            if not peak and cfg.measure_memory:
                # measure on a snapshot so the measured step does not change the training trajectory
                snap_m, snap_o = {k: v.clone() for k, v in net.state_dict().items()}, opt.state_dict()
                snap_o = {"state": {k: {n: (t.clone() if torch.is_tensor(t) else t) for n, t in v.items()}
                                    for k, v in snap_o["state"].items()}, "param_groups": snap_o["param_groups"]}
                rng_t = torch.get_rng_state()
                peak = step_peak_memory(lambda: one_step(batch), device)
                net.load_state_dict(snap_m)
                opt.load_state_dict(snap_o)
                torch.set_rng_state(rng_t)
                mem = {"peak_step_tensor_bytes": peak, "peak_step_tensor_gib": peak / 2 ** 30,
                       "crop_voxels": list(batch["f"].shape[-3:]), "device": str(device), "amp_bf16": use_amp,
                       "method": "torch.cuda.max_memory_allocated" if device.type == "cuda"
                       else "torch.profiler.profile(profile_memory=True), running sum of [memory] events"}
                (out / "memory.json").write_text(json.dumps(mem, indent=1))
                log(f"training step peak tensor memory: {peak / 2 ** 20:.0f} MiB at crop "
                    f"{tuple(batch['f'].shape[-3:])} ({mem['method']})")
            lr = learning_rate(cfg, step)
            for group in opt.param_groups:
                group["lr"] = lr
            parts = one_step(batch)
            step += 1
            last_parts = parts
            if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
                log(progress_line(step, cfg.steps, parts["total"], elapsed0 + time.perf_counter() - t0,
                                  (time.perf_counter() - t0) / (step - step0)))
            row = {"step": step, "time_s": round(elapsed0 + time.perf_counter() - t0, 2), "lr": round(lr, 7),
                   "sample": sample["_file"], **{k: round(v, 5) for k, v in parts.items()}}
            if step % cfg.val_every == 0:  # pick up samples a still-running cache build has added
                known = {s["_file"] for s in train_set}
                train_set += [s for s in _load_split(cache, "train") if s["_file"] not in known]
                if len(val_set) < len([p for p in (cache / "val").glob("*.npz") if ".tmp" not in p.name]):
                    val_set = _load_split(cache, "val")
                data_info["train_samples"] = [s["_file"] for s in train_set]
                data_info["val_samples"] = [s["_file"] for s in val_set]
            if val_set and (step % cfg.val_every == 0 or step == cfg.steps):
                ev = evaluate_samples(net, val_set, device)
                row.update({"val_tre_mm": round(ev["tre_mm"], 4), "val_tre_affine_mm": round(ev["tre_affine_mm"], 4),
                            "val_epe_mm": round(ev["epe_mm"], 4), "val_dice": round(ev["dice"], 4),
                            "val_dice_affine": round(ev["dice_affine"], 4)})
                score = ev["tre_mm"] if not math.isnan(ev["tre_mm"]) else ev["epe_mm"]
                log(f"step {step}: val TRE {ev['tre_mm']:.2f} mm (affine only {ev['tre_affine_mm']:.2f}), "
                    f"EPE {ev['epe_mm']:.2f} mm, region Dice {ev['dice']:.3f} (affine {ev['dice_affine']:.3f})")
                if score < best:
                    best = score
                    best_val = {k: v for k, v in ev.items()}
                    best_val["step"] = step
                    save_checkpoint(out / "best.pt", net, opt, step, data_rng, extra())
            writer.writerow(row)
            fh.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{parts['total']:.3f}", epe=f"{parts.get('epe_mm', float('nan')):.2f}")
            if step % cfg.checkpoint_every == 0:
                save_checkpoint(last, net, opt, step, data_rng, extra())
    finally:
        save_checkpoint(last, net, opt, step, data_rng, extra())
        if bar is not None:
            bar.close()
        fh.close()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
    return {"step": step, "best": best, "best_val": best_val, "last": str(last),
            "best_checkpoint": str(out / "best.pt") if (out / "best.pt").is_file() else None,
            "csv": str(csv_path), "peak_memory_bytes": peak,
            "last_loss": float(last_parts["total"]) if last_parts else None,
            "elapsed_s": round(elapsed0 + time.perf_counter() - t0, 2)}


def progress_line(step: int, total: int, loss: float, elapsed_s: float, s_per_step: float) -> str:
    """'step 12/200  loss 0.4312  elapsed 0:01:05  ETA 0:17:02' (ETA = remaining steps x seconds per step of
    this session)."""
    def hms(t):
        t = int(round(max(0.0, t)))
        return f"{t // 3600}:{t // 60 % 60:02d}:{t % 60:02d}"

    return (f"step {step}/{total}  loss {loss:.4f}  elapsed {hms(elapsed_s)}  "
            f"ETA {hms((total - step) * s_per_step)}")
