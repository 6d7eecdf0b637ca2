"""`totalreg train`: build a training cache, train TotalRegNet (resumable), export weights, evaluate.

    totalreg train cache  [--out var/train_cache] [--synthetic 16] [--ct CT.nii.gz ...] [--pairs DIR]
                          [--longitudinal CT.nii.gz@N ...]
    totalreg train run    [--cache var/train_cache] [--out var/train_run] [--steps N] [--max-minutes M]
    totalreg train export [--checkpoint var/train_run/best.pt] [--out registration_core/weights/...]
    totalreg train eval   --weights W.safetensors   (lung pair + held-out synthetic pair, network vs affine)
    totalreg train --archive DIR [--out W.safetensors] [--steps N] [--resume]
                          (site adaptation: fine-tune the shipped model on the site's own CT series)

See :mod:`registration_core.training.loop` for the data, loss and checkpoint design.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from dicom_io import DicomInputError, read_series
from registration_core.network import DEFAULT_WEIGHTS
from registration_core.regions import N_REGIONS
from registration_core.training.archive import ArchiveTuning, finetune_on_archive
from registration_core.training.data import CacheSpec, build_cache
from registration_core.training.evaluate import evaluate_weights
from registration_core.training.loop import (TrainConfig, default_cache_spec, export_weights,
                                             measure_training_memory, train)


def add_parser(subparsers) -> None:
    """Register `totalreg train` and its actions."""
    p = subparsers.add_parser("train", help="train the registration network (cache / run / export / eval), or "
                                            "fine-tune it on the site's own CT archive (--archive DIR)")
    a = p.add_argument_group("site adaptation (no ACTION)")
    a.add_argument("--archive", metavar="DIR", default=None,
                   help="fine-tune the shipped model on this folder of CT series (DICOM series folders and/or "
                        "NIfTI/MHA/NRRD files) with self-supervised pairs")
    a.add_argument("--out", dest="archive_out", metavar="W", default="var/site_weights.safetensors",
                   help="new weights file (default var/site_weights.safetensors; never the shipped file); "
                        "checkpoints and cache in OUT.work/")
    a.add_argument("--steps", dest="archive_steps", metavar="N", type=int, default=500, help="total steps (default 500)")
    a.add_argument("--resume", dest="archive_resume", action="store_true",
                   help="continue from the latest checkpoint (OUT.work/run/last.pt)")
    a.add_argument("--checkpoint-every", dest="archive_checkpoint_every", type=int, default=25, metavar="K",
                   help="write a checkpoint every K steps (default 25)")
    a.add_argument("--variants", metavar="N", type=int, default=4, help="self-supervised pairs per volume (default 4)")
    a.add_argument("--val-variants", metavar="N", type=int, default=1,
                   help="held-out pairs of the first two volumes for validation (default 1; 0 for none)")
    a.add_argument("--device", dest="archive_device", metavar="DEV", default="cpu", help="cpu or cuda (default cpu)")
    a.add_argument("--threads", dest="archive_threads", metavar="N", type=int, default=0, help="torch CPU threads")
    a.add_argument("--crop", dest="archive_crop", metavar="VOX", type=int, default=64, help="crop edge in 4 mm voxels")
    sub = p.add_subparsers(dest="train_action", metavar="ACTION")

    c = sub.add_parser("cache", help="pre-generate 4 mm training samples (.npz) from synthetic and real CTs")
    c.add_argument("--out", default="var/train_cache", help="cache folder (default var/train_cache)")
    c.add_argument("--synthetic", type=int, default=None,
                   help="number of synthetic phantom training pairs (default 16; 0 for none)")
    c.add_argument("--ct", action="append", default=[], metavar="PATH[:LABELS[:CLASSMAP]][@N]",
                   help="single CT (file or DICOM folder) for self-supervised pairs, N variants (default 4); "
                        "optional multi-label map and classmap JSON; repeatable. Without --ct and --pairs the "
                        "project's shared CTs are used")
    c.add_argument("--longitudinal", action="append", default=[], metavar="PATH[:LABELS[:CLASSMAP]][@N]",
                   help="single CT (file or DICOM folder) as prior and current scan months apart: N draws "
                        "(default 4) of the realistic longitudinal generator (motion, breathing, field of view, "
                        "slices, contrast, noise; exact field); without labels, lungs and bones from HU; repeatable")
    c.add_argument("--pairs", default=None, help="folder of real pairs (sub-folders with fixed/moving[/labels])")
    c.add_argument("--spacing", type=float, default=4.0, help="working grid spacing in mm (default 4)")
    c.set_defaults(func=_plain_errors(run_cache))

    r = sub.add_parser("run", help="train (resumes from OUT/last.pt when present)")
    r.add_argument("--cache", default="var/train_cache")
    r.add_argument("--out", default="var/train_run")
    r.add_argument("--steps", type=int, default=5000, help="total steps; the cosine schedule decays to them")
    r.add_argument("--crop", type=int, default=64, help="crop edge in voxels (default 64 = 256 mm at 4 mm)")
    r.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (default 1e-3)")
    r.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                   help="cosine: linear warm-up, then cosine decay to 2%% of --lr at --steps (default)")
    r.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    r.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="bf16 autocast: auto = on CUDA only (default)")
    r.add_argument("--val-every", type=int, default=100)
    r.add_argument("--checkpoint-every", type=int, default=25)
    r.add_argument("--max-minutes", type=float, default=0.0, help="stop (after saving) after this wall time")
    r.add_argument("--fresh", action="store_true", help="ignore OUT/last.pt and start from scratch")
    r.add_argument("--init", default=None, help="start from these safetensors weights (fine-tuning)")
    r.add_argument("--init-trunk", action="store_true",
                   help="with --init: take only the UNet trunk, both heads start at zero (e.g. another --regions)")
    r.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--cost-radius", type=int, nargs=2, default=[1, 2], metavar=("FULL", "HALF"),
                   help="correlation (cost volume) radius in voxels at the input and at half resolution; "
                        "0 0 = plain UNet (default 1 2)")
    r.add_argument("--regions", type=int, choices=[1, N_REGIONS], default=N_REGIONS, metavar="K",
                   help=f"region sub-fields: {N_REGIONS} (default) or 1, a plain UNet of the same size (the ablation)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_plain_errors(run_train))

    e = sub.add_parser("export", help="write a checkpoint as safetensors + JSON sidecar")
    e.add_argument("--checkpoint", default="var/train_run/best.pt")
    e.add_argument("--out", default=None, help="default: registration_core/weights/totalreg_v1.safetensors")
    e.add_argument("--notes", default=None, help="JSON file whose keys are added to the sidecar")
    e.set_defaults(func=_plain_errors(run_export))

    v = sub.add_parser("eval", help="evaluate weights: network alone vs affine on the lung pair and synthetic pairs")
    v.add_argument("--weights", default=None, help="safetensors or .pt checkpoint (default: the shipped weights)")
    v.add_argument("--synthetic", type=int, nargs="*", default=[900, 901], help="held-out phantom seeds")
    v.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    v.set_defaults(func=_plain_errors(run_eval))
    mm = sub.add_parser("memory", help="measure one training step's peak tensor memory at a crop size")
    mm.add_argument("--cache", default="var/train_cache")
    mm.add_argument("--crop", type=int, default=96)
    mm.add_argument("--device", default="cpu")
    mm.add_argument("--json", default=None, help="also write the result to this JSON file")
    mm.set_defaults(func=_plain_errors(run_memory))
    p.set_defaults(func=lambda args: _plain_errors(run_archive)(args) if args.archive else (p.print_help(), 2)[1])


def _plain_errors(fn):
    """Turn the user-fixable ValueError/FileNotFoundError of an action into one plain line and exit code 2."""
    def wrapped(args):
        try:
            return fn(args)
        except (ValueError, FileNotFoundError) as exc:
            print(f"totalreg train: error: {exc}", file=sys.stderr)
            return 2
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _parse_ct(spec: str):
    n = 4
    if "@" in spec:
        spec, n = spec.rsplit("@", 1)
        n = int(n)
    parts = spec.split(":")
    path = parts[0]
    labels = parts[1] if len(parts) > 1 and parts[1] else None
    cmap = parts[2] if len(parts) > 2 and parts[2] else None
    if not Path(path).exists():
        raise ValueError(f"CT not found: {path}")
    return (path, labels, cmap, n)


def run_archive(args) -> int:
    """Site adaptation: self-supervised fine-tuning on the archive (DICOM series read here with dicom_io);
    progress lines on stderr, the sidecar as JSON on stdout."""
    def read_volume(folder):
        try:
            return read_series(folder).image
        except DicomInputError as exc:
            raise ValueError(f"series folder {folder}: {exc}") from None

    t = ArchiveTuning(archive=args.archive, out=args.archive_out, steps=args.archive_steps,
                      resume=args.archive_resume, checkpoint_every=args.archive_checkpoint_every,
                      variants=args.variants, val_variants=args.val_variants, device=args.archive_device,
                      threads=args.archive_threads, crop=args.archive_crop)
    side = finetune_on_archive(t, read_volume=read_volume, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps({"weights": str(args.archive_out), "sha256": side["sha256"],
                      **side["fine_tuned_on_archive"]}, indent=1))
    return 0


def run_cache(args) -> int:
    """Build the cache (resumes: existing samples are kept)."""
    if not args.ct and not args.pairs and not args.longitudinal:
        spec = default_cache_spec()
        if args.synthetic is not None:
            spec.synthetic = tuple(range(args.synthetic))
    else:
        spec = CacheSpec(synthetic=tuple(range(args.synthetic if args.synthetic is not None else 16)),
                         single_ct=tuple(_parse_ct(s) for s in args.ct), pairs=args.pairs,
                         longitudinal=tuple(_parse_ct(s) for s in args.longitudinal))
    spec.spacing = float(args.spacing)
    man = build_cache(spec, args.out, log=lambda s: print(s, flush=True),
                      read_volume=lambda folder: read_series(folder).image)  # DICOM series folders
    print(f"cache ready: {len(man['samples'])} samples in {args.out}")
    return 0


def run_train(args) -> int:
    """Train; prints the result as JSON."""
    cfg = TrainConfig(cache=args.cache, out=args.out, steps=args.steps, crop=args.crop, lr=args.lr,
                      schedule=args.schedule,
                      network={**TrainConfig().network, "cost_radius": list(args.cost_radius),
                               "n_regions": int(args.regions)},
                      device=args.device, amp=args.amp, val_every=args.val_every,
                      checkpoint_every=args.checkpoint_every, max_minutes=args.max_minutes,
                      resume=not args.fresh, init=args.init, init_trunk=args.init_trunk, threads=args.threads,
                      seed=args.seed,
                      progress=not args.no_progress)
    res = train(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps(res, indent=1, default=str))
    return 0


def run_export(args) -> int:
    """Export a checkpoint to safetensors + sidecar."""
    if not Path(args.checkpoint).is_file():
        print(f"totalreg: error: checkpoint not found: {args.checkpoint}", file=sys.stderr)
        return 2
    notes = json.loads(Path(args.notes).read_text()) if args.notes else None
    w, s = export_weights(args.checkpoint, args.out or DEFAULT_WEIGHTS, notes)
    print(f"wrote {w} ({w.stat().st_size / 1e6:.1f} MB) and {s}")
    return 0


def run_eval(args) -> int:
    """Network alone vs affine-only (and the engine's full pipeline is in bench/steps)."""
    res = evaluate_weights(args.weights, synthetic_seeds=args.synthetic, log=lambda s: print(s, flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "details"}, indent=1))
    return 0


def run_memory(args) -> int:
    """Peak tensor memory of one training step."""
    res = measure_training_memory(args.cache, args.crop, device=args.device)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0
