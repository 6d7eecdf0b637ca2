"""Site adaptation and weights provenance: `totalreg train --archive DIR` fine-tunes the shipped network on a
folder of DICOM series (subprocess, CPU, a few steps), checkpoints and resumes, never writes over the shipped
weights; the node uses other weights only where node.yaml or a rule names them, and every job report records the
weights' name and sha256."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, make_series
from PIL import Image

from dicom_io import read_series
from node.config import parse_config
from node.work.steps import WorkerContext, register_pair, weights_choice, write_outputs
from registration_core.network import DEFAULT_WEIGHTS, load_network
from registration_core.qc import write_qc_png
from registration_core.training.archive import check_out_path


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _totalreg(*args, timeout=300):
    exe = shutil.which("totalreg")
    cmd = [exe] if exe else [sys.executable, "-m", "node.cli"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _parse(data: dict):
    return parse_config(yaml.safe_dump(data))


def _config(**registration):
    return _parse({"registration": registration} if registration else {})


def test_archive_finetune_checkpoints_resumes_and_is_used_only_when_named(tmp_path):
    archive = tmp_path / "archive"
    for i in range(2):   # two tiny CT series (88 x 88 x 56 mm, 2 mm voxels)
        make_series(archive / f"series{i}", size=44, n_slices=28, seed=i, patient_id="SITE0001")
    out = tmp_path / "site" / "weights.safetensors"
    shipped_sha = _sha(DEFAULT_WEIGHTS)

    first = _totalreg("train", "--archive", archive, "--out", out, "--steps", 2, "--variants", 1,
                      "--val-variants", 0, "--checkpoint-every", 1)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "archive" in first.stderr and "2 volumes" in first.stderr
    assert "step 2/2" in first.stderr and "loss" in first.stderr and "ETA" in first.stderr
    last = Path(str(out) + ".work") / "run" / "last.pt"
    assert torch.load(last, map_location="cpu", weights_only=False)["step"] == 2
    side = json.loads(out.with_suffix(".json").read_text())
    info = side["fine_tuned_on_archive"]
    assert info["source_folder"] == str(archive.resolve()) and info["volumes"] == 2 and info["steps"] == 2
    assert info["base_weights"] == {"name": DEFAULT_WEIGHTS.name, "sha256": shipped_sha}
    assert math.isfinite(info["final_loss"]) and info["final_loss"] > 0
    assert side["sha256"] == _sha(out) != shipped_sha

    again = _totalreg("train", "--archive", archive, "--out", out, "--steps", 4, "--resume", "--variants", 1,
                      "--val-variants", 0)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr and "at step 2" in again.stderr
    assert "step 3/4" in again.stderr and "step 4/4" in again.stderr
    assert "cache: train/" not in again.stderr                  # the archive's samples are reused
    with open(last.parent / "log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4]
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["fine_tuned_on_archive"]["steps"] == 4 and side["sha256"] == _sha(out)
    assert _sha(DEFAULT_WEIGHTS) == shipped_sha                 # the shipped weights were never touched
    net = load_network(out)
    assert net.config == load_network(DEFAULT_WEIGHTS).config

    # the node: shipped weights unless node.yaml (or a rule) names others; the job report says which, by sha256
    cur, prior = read_series(archive / "series0"), read_series(archive / "series1")
    for cfg, want_sha, source in ((_config(), shipped_sha, "shipped"),
                                  (_config(weights=str(out)), _sha(out), "node.yaml")):
        rule = cfg.rules[0].model_copy(update={"registration": cfg.rules[0].registration.model_copy(
            update={"iterations": 0, "device": "cpu"})})
        ctx = WorkerContext(cfg=cfg, db=None, spool=None, claim=None)
        res = register_pair(ctx, rule, cur, prior)
        w = res.report["weights"]
        assert w["sha256"] == want_sha and w["source"] == source, w
        assert w["shipped"] is (source == "shipped") and w["name"] == Path(w["path"]).name
        assert set(res.report["regions"]) == {"thorax", "abdomen", "bones", "soft_tissue"}

    # the worker's QC picture has the region-weight column (wider than the picture without it)
    cfg = cfg.model_copy(update={"node": cfg.node.model_copy(update={"data_dir": tmp_path / "var"})})
    ctx = WorkerContext(cfg=cfg, db=None, spool=None, claim=SimpleNamespace(job_id=7))
    _, files, qc_png = write_outputs(ctx, rule, cur, prior, res)
    plain = write_qc_png(cur.image, prior.image, res.warped, tmp_path / "plain.png", displacement=res.displacement)
    assert files and Image.open(qc_png).size[0] > Image.open(plain).size[0] * 1.1


def test_archive_refuses_to_write_over_the_shipped_weights(tmp_path):
    before = _sha(DEFAULT_WEIGHTS)
    (tmp_path / "a").mkdir()
    proc = _totalreg("train", "--archive", tmp_path / "a", "--out", DEFAULT_WEIGHTS, "--steps", 1)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "shipped weights" in lines[0] and "Traceback" not in proc.stderr
    assert _sha(DEFAULT_WEIGHTS) == before
    for bad in (DEFAULT_WEIGHTS.parent / "site.safetensors", DEFAULT_WEIGHTS.parent / ".." / "weights" /
                DEFAULT_WEIGHTS.name):
        with pytest.raises(ValueError, match="shipped weights"):
            check_out_path(bad)
    assert check_out_path(tmp_path / "w.safetensors") == tmp_path / "w.safetensors"
    # an empty archive is one plain line too
    proc = _totalreg("train", "--archive", tmp_path / "a", "--out", tmp_path / "w.safetensors", "--steps", 1)
    assert proc.returncode == 2 and "holds no CT" in proc.stderr and "Traceback" not in proc.stderr


def test_weights_are_chosen_only_by_a_rule_or_node_yaml(tmp_path):
    cfg = _config()
    assert weights_choice(cfg, cfg.rules[0]) == (None, "shipped")
    cfg = _config(weights=str(tmp_path / "site.safetensors"))
    assert weights_choice(cfg, cfg.rules[0]) == (str(tmp_path / "site.safetensors"), "node.yaml")
    cfg = _parse({"registration": {"weights": str(tmp_path / "site.safetensors")},
                        "rules": [{"name": "lungs", "registration": {"weights": str(tmp_path / "lung.safetensors")}}]})
    assert weights_choice(cfg, cfg.rules[0]) == (str(tmp_path / "lung.safetensors"), "rule 'lungs'")
    with pytest.raises(Exception, match="device"):      # node-wide registration: only the weights
        _parse({"registration": {"device": "cuda"}})


def test_train_cache_builds_longitudinal_samples_with_organ_regions(tmp_path):
    """`totalreg train cache --longitudinal CT:LABELS:CLASSMAP@1` writes one sample of the realistic longitudinal
    generator (exact residual target, fixed and moving region maps from the TotalSegmentator names) and records the
    source in the manifest."""
    d = ROOT / "tests" / "data" / "abdomen_totalseg"
    src = f"{d / 'example_ct_sm.nii.gz'}:{d / 'example_seg.nii.gz'}:{d / 'classmap_total.json'}@1"
    r = _totalreg("train", "cache", "--out", tmp_path / "cache", "--synthetic", "0", "--longitudinal", src)
    assert r.returncode == 0, r.stderr
    man = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert [x for x in man["samples"] if x.startswith("train/")] == ["train/lg_example_ct_sm_000.npz"]
    assert man["longitudinal"][0][3] == 1 and man["longitudinal"][0][0].endswith("example_ct_sm.nii.gz")
    with np.load(tmp_path / "cache" / "train" / "lg_example_ct_sm_000.npz") as z:
        assert str(z["kind"]) == "longitudinal" and z["u"].shape[1:] == z["f"].shape
        assert {2, 3} <= set(np.unique(z["rf"]).tolist())    # abdominal organs and bones
        assert 0.5 < z["valid"].mean() < 1.0                   # the two scans' fields of view differ
