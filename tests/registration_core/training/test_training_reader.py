"""The training data reader knows no DICOM: series folders are read through the caller's ``read_volume``."""
from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk

from registration_core.synthetic import make_phantom
from registration_core.training.data import folder_pair_samples


def _pair_folder(root: Path) -> Path:
    sub = root / "p1"
    (sub / "fixed").mkdir(parents=True)          # a "series folder" the caller's reader understands
    img, _, _ = make_phantom(spacing=8.0, fov_mm=(240.0, 240.0, 256.0), seed=3)
    sitk.WriteImage(img, str(sub / "moving.nii.gz"))
    return root


def test_folder_source_needs_a_reader(tmp_path):
    root = _pair_folder(tmp_path)
    with pytest.raises(ValueError, match="no series reader"):
        folder_pair_samples(root, spacing=8.0)


def test_folder_source_read_through_the_callable(tmp_path):
    root = _pair_folder(tmp_path)
    img, _, _ = make_phantom(spacing=8.0, fov_mm=(240.0, 240.0, 256.0), seed=3)
    calls = []

    def reader(path: Path) -> sitk.Image:
        calls.append(Path(path).name)
        return img

    samples = folder_pair_samples(root, spacing=8.0, read_volume=reader)
    assert calls == ["fixed"]
    assert len(samples) == 1 and samples[0]["f"].shape == samples[0]["m"].shape
