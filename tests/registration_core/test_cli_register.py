"""`totalreg register` end to end on small phantom files (subprocess: exit codes, stderr, outputs)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from test_engine_phantom import make


def _totalreg(*args, timeout=600):
    exe = shutil.which("totalreg")
    cmd = [exe] if exe else [sys.executable, "-m", "node.cli"]
    return subprocess.run(cmd + ["register", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _assert_one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    t = np.array([0.0, 10.0, 0.0])
    direction = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float)  # fixed stored coronal-style
    fixed, _ = make(size=(60, 56, 46), direction=direction)
    moving, _ = make(size=(62, 48, 54), transform_inv=lambda q: q - t)
    sitk.WriteImage(sitk.Cast(fixed, sitk.sitkInt16), str(d / "fixed.nii.gz"))
    sitk.WriteImage(sitk.Cast(moving, sitk.sitkInt16), str(d / "moving.mha"))
    return d, fixed, t


def test_cli_writes_outputs_on_fixed_grid(pair):
    d, fixed, t = pair
    out = d / "out"
    proc = _totalreg(d / "fixed.nii.gz", d / "moving.mha", "-o", out, "--device", "cpu", "--iterations", "20")
    assert proc.returncode == 0, proc.stderr
    disp = sitk.ReadImage(str(out / "displacement.nii.gz"))
    warped = sitk.ReadImage(str(out / "warped.nii.gz"))
    fixed_disk = sitk.ReadImage(str(d / "fixed.nii.gz"))
    for img in (disp, warped):
        assert img.GetSize() == fixed_disk.GetSize()
        assert np.allclose(img.GetOrigin(), fixed_disk.GetOrigin(), atol=1e-4)
        assert np.allclose(img.GetSpacing(), fixed_disk.GetSpacing(), atol=1e-6)
        assert np.allclose(img.GetDirection(), fixed_disk.GetDirection(), atol=1e-6)
    assert disp.GetNumberOfComponentsPerPixel() == 3
    # the field says fixed p <-> moving p + (0, 10, 0) mm inside the body
    arr = sitk.GetArrayFromImage(disp)
    body = sitk.GetArrayFromImage(fixed_disk) > -500
    assert np.allclose(np.median(arr[body], 0), t, atol=1.0)
    report = json.loads((out / "report.json").read_text())
    assert report["similarity"]["final"] > report["similarity"]["identity"]
    assert {"read", "write", "command_total", "affine"} <= set(report["times_s"])
    png = (out / "qc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000
    assert not list(out.glob(".tmp*"))


def test_cli_unreadable_file(tmp_path, pair):
    d, _, _ = pair
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not an image")
    proc = _totalreg(bad, d / "moving.mha", "-o", tmp_path / "o")
    _assert_one_line_error(proc, "cannot read", "broken.nii.gz")
    assert not (tmp_path / "o").exists()
    proc = _totalreg(tmp_path / "missing.mha", d / "moving.mha", "-o", tmp_path / "o")
    _assert_one_line_error(proc, "not found", "missing.mha")


def test_cli_2d_image(tmp_path, pair):
    d, _, _ = pair
    img = sitk.Image([32, 32], sitk.sitkInt16)
    sitk.WriteImage(img, str(tmp_path / "slice.mha"))
    proc = _totalreg(d / "fixed.nii.gz", tmp_path / "slice.mha", "-o", tmp_path / "o")
    _assert_one_line_error(proc, "2D", "slice.mha")
    one = sitk.Image([32, 32, 1], sitk.sitkInt16)
    sitk.WriteImage(one, str(tmp_path / "one.nii.gz"))
    proc = _totalreg(tmp_path / "one.nii.gz", d / "fixed.nii.gz", "-o", tmp_path / "o")
    _assert_one_line_error(proc, "single slice", "one.nii.gz")


def test_cli_non_overlapping_scans(tmp_path, pair):
    d, _, _ = pair
    head = sitk.Image([40, 40, 40], sitk.sitkInt16) - 1000
    head.SetSpacing([6.0] * 3)
    arr = sitk.GetArrayFromImage(head)
    zz, yy, xx = np.indices(arr.shape) - 19.5
    r = np.sqrt(xx ** 2 + yy ** 2 + (zz * 0.8) ** 2)
    arr[r < 13] = 1000
    arr[r < 11.5] = 35
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(head)
    sitk.WriteImage(img, str(tmp_path / "head.nrrd"))
    proc = _totalreg(d / "fixed.nii.gz", tmp_path / "head.nrrd", "-o", tmp_path / "o", "--device", "cpu")
    _assert_one_line_error(proc, "do not overlap")
