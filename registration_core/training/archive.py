"""Site adaptation: fine-tune the shipped network on a hospital's own unpaired CT archive (``totalreg train
--archive DIR``).

Every volume of the archive (an image file, NIfTI/MHA/NRRD, or a series folder that the caller's ``read_volume``
reads, e.g. a DICOM series read by the node) gives self-supervised pairs with an exact ground truth:
:func:`registration_core.training.data.self_supervised_sample` warps it by a random realistic deformation (rigid
+ smooth B-spline, :func:`registration_core.synthetic.random_realistic_deformation`) plus an intensity change,
and the engine's own affine stage aligns the pair, exactly as at inference. Those samples go into a cache under
the work folder; the network starts from the base (shipped) weights and trains with the loop of
:mod:`registration_core.training.loop` (checkpoint ``WORK/run/last.pt`` every ``checkpoint_every`` steps and on
stop; ``resume=True`` continues from it, step count included). The result is written to ``out`` (safetensors)
with a JSON sidecar (``out`` with suffix ``.json``): source folder, volumes, steps, the base weights' sha256, the
final loss and the new file's sha256.

``out`` is never the shipped weights file nor inside the shipped weights folder: new weights are used only where
node.yaml or a rule names them (see the node's ``registration.weights``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..network import DEFAULT_WEIGHTS, load_network
from .data import IMAGE_SUFFIXES, CacheSpec, VolumeReader, build_cache
from .loop import TrainConfig, export_weights, train


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_volumes(folder: str | Path) -> list[Path]:
    """The archive's volumes, sorted by name: image files (NIfTI/MHA/NRRD) directly in ``folder`` and its
    sub-folders (each a series folder, e.g. one DICOM series, read later by the caller's reader). Hidden entries
    are skipped. ValueError when the folder is missing or holds none."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"archive folder not found: {root}")
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() or any(p.name.lower().endswith(s) for s in IMAGE_SUFFIXES):
            out.append(p)
    if not out:
        raise ValueError(f"archive folder {root} holds no CT: expected series folders (e.g. one DICOM series "
                         f"each) or NIfTI/MHA/NRRD files")
    return out


def check_out_path(out: str | Path, shipped: Path = DEFAULT_WEIGHTS) -> Path:
    """``out`` as a Path, or ValueError when it is the shipped weights file or lies in the shipped weights folder
    (fine-tuned weights never replace the shipped ones)."""
    p = Path(out).expanduser().resolve()
    folder = shipped.resolve().parent
    if p == shipped.resolve() or folder == p.parent or folder in p.parents:
        raise ValueError(f"--out {out} would replace the shipped weights ({shipped}); write the fine-tuned "
                         f"weights elsewhere and name them in node.yaml (registration: weights: PATH) or a rule")
    return Path(out)


@dataclass
class ArchiveTuning:
    """Settings of :func:`finetune_on_archive`.

    archive: folder of the site's CT series; out: weights file to write (safetensors); work: folder for the cache
    and checkpoints (default: ``out`` + ``.work``); steps: total optimisation steps (a resumed run continues to
    it); resume: continue from ``work/run/last.pt``; variants: self-supervised pairs per volume; val_variants:
    held-out pairs (other deformation seeds) of the first two volumes; base: weights to start from (default the
    shipped file); lr: Adam learning rate (constant; fine-tuning); crop: training crop edge (voxels of 4 mm);
    checkpoint_every / log_every: steps; device: "cpu" or "cuda"; threads: torch CPU threads (0 = keep)."""

    archive: str
    out: str
    work: str | None = None
    steps: int = 500
    resume: bool = False
    variants: int = 4
    val_variants: int = 1
    base: str | None = None
    lr: float = 2e-4
    crop: int = 64
    checkpoint_every: int = 25
    log_every: int = 0
    device: str = "cpu"
    threads: int = 0
    seed: int = 0


def finetune_on_archive(t: ArchiveTuning, read_volume: VolumeReader | None = None, log=print) -> dict:
    """Build the archive's self-supervised cache (kept: a rerun reuses it), fine-tune from the base weights (or
    resume), export to ``t.out`` with the sidecar; returns the sidecar's content. ``read_volume`` reads a series
    folder (path -> ``sitk.Image`` in HU, LPS mm); files need none. Raises ValueError for a bad ``out`` or an
    empty archive."""
    out = check_out_path(t.out)
    base = Path(t.base) if t.base else DEFAULT_WEIGHTS
    if not base.is_file():
        raise ValueError(f"base weights not found: {base}")
    volumes = find_volumes(t.archive)
    work = Path(t.work) if t.work else out.with_name(out.name + ".work")
    last = work / "run" / "last.pt"
    if not t.resume and last.is_file():
        log(f"starting afresh: the checkpoint {last} is not continued (--resume continues it)")
    log(f"archive {t.archive}: {len(volumes)} volumes; self-supervised pairs: {t.variants} per volume")
    spec = CacheSpec(synthetic=(), val_synthetic=(),
                     single_ct=tuple((str(v), None, None, int(t.variants)) for v in volumes),
                     val_single_ct=tuple((str(v), None, None, int(t.val_variants)) for v in volumes[:2])
                     if t.val_variants else ())
    build_cache(spec, work / "cache", log=log, read_volume=_last_volume_memo(read_volume))
    base_net = load_network(base)
    cfg = TrainConfig(cache=str(work / "cache"), out=str(work / "run"), steps=int(t.steps), crop=int(t.crop),
                      lr=float(t.lr), schedule="constant", device=t.device, checkpoint_every=int(t.checkpoint_every),
                      val_every=max(1, int(t.steps)), resume=bool(t.resume), init=str(base), threads=int(t.threads),
                      seed=int(t.seed), progress=False, log_every=int(t.log_every) or max(1, int(t.steps) // 100),
                      measure_memory=False, network=dict(base_net.config))
    del base_net
    res = train(cfg, log=log)
    base_sha = sha256_file(base)
    notes = {"fine_tuned_on_archive": {
        "source_folder": str(Path(t.archive).resolve()), "volumes": len(volumes),
        "volume_names": [v.name for v in volumes], "variants_per_volume": int(t.variants),
        "steps": int(res["step"]), "final_loss": res["last_loss"], "lr": float(t.lr),
        "base_weights": {"name": base.name, "sha256": base_sha}, "work": str(work)}}
    w, side = export_weights(last, out, notes)
    sidecar = json.loads(side.read_text())
    sidecar["sha256"] = sha256_file(w)
    side.write_text(json.dumps(sidecar, indent=1, default=str))
    log(f"wrote {w} (sha256 {sidecar['sha256'][:16]}...) and {side}; name it in node.yaml "
        f"(registration: weights: {w}) or in a rule to use it")
    return sidecar


def _last_volume_memo(read_volume: VolumeReader | None) -> VolumeReader | None:
    """``read_volume`` remembering its last volume (the cache asks for each volume once per variant, in a row)."""
    if read_volume is None:
        return None
    memo: dict = {}

    def read(path: Path):
        if memo.get("path") != str(path):
            memo.clear()
            memo.update(path=str(path), image=read_volume(path))
        return memo["image"]

    return read
