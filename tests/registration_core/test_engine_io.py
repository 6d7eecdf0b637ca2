"""registration_core.io: formats round-trip with LPS geometry; clear one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from registration_core.errors import RegistrationInputError
from registration_core.io import read_image, write_image


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd", ".mhd"])
def test_round_trip_keeps_geometry(tmp_path, suffix):
    img = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((-10.0, 20.0, -300.0))
    img.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    p = write_image(img, tmp_path / f"a{suffix}")
    back = read_image(p)
    assert back.GetSize() == (6, 5, 4)
    assert np.allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetDirection(), img.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    assert not list(tmp_path.glob(".tmp*"))


def test_errors_are_one_line(tmp_path):
    with pytest.raises(RegistrationInputError, match="not found") as e:
        read_image(tmp_path / "nope.nii.gz", what="fixed image")
    assert "\n" not in str(e.value) and "fixed image" in str(e.value)
    (tmp_path / "x.nii.gz").write_text("garbage")
    with pytest.raises(RegistrationInputError, match="cannot read"):
        read_image(tmp_path / "x.nii.gz")
    sitk.WriteImage(sitk.Image([8, 8], sitk.sitkFloat32), str(tmp_path / "flat.mha"))
    with pytest.raises(RegistrationInputError, match="2D"):
        read_image(tmp_path / "flat.mha")
    sitk.WriteImage(sitk.Image([8, 8, 3], sitk.sitkVectorFloat32, 3), str(tmp_path / "vec.mha"))
    with pytest.raises(RegistrationInputError, match="values per voxel"):
        read_image(tmp_path / "vec.mha")
    assert read_image(tmp_path / "vec.mha", allow_vector=True).GetNumberOfComponentsPerPixel() == 3
    with pytest.raises(RegistrationInputError, match="folder"):
        read_image(tmp_path)


def test_nii_gz_writer_round_trip_and_failures_leave_nothing(tmp_path, monkeypatch):
    """.nii.gz goes through a pipe to the threaded compressor: the round trip is exact (vector field, oblique
    geometry); a failing ITK writer or compressor gives a one-line error, no hang, and no file left behind."""
    import isal.igzip_threaded

    import registration_core.io as rio

    rng = np.random.default_rng(0)
    img = sitk.GetImageFromArray(rng.random((20, 30, 40, 3)).astype(np.float32), isVector=True)
    img.SetSpacing((0.8, 0.9, 1.1))
    img.SetOrigin((1.0, 2.0, 3.0))
    img.SetDirection(sitk.VersorTransform((0, 1, 0), 0.2).GetMatrix())
    out = rio.write_image(img, tmp_path / "ok" / "field.nii.gz")
    back = rio.read_image(out, allow_vector=True)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    assert np.allclose(back.GetDirection(), img.GetDirection()) and np.allclose(back.GetOrigin(), img.GetOrigin())
    assert sorted(p.name for p in out.parent.iterdir()) == ["field.nii.gz"]

    def itk_fails(*_a, **_k):
        raise RuntimeError("ITK ERROR: cannot write\nthe disk said no")
    with monkeypatch.context() as m:
        m.setattr(rio.sitk, "WriteImage", itk_fails)
        with pytest.raises(RegistrationInputError, match="the disk said no"):
            rio.write_image(img, tmp_path / "itk" / "field.nii.gz")
    assert list((tmp_path / "itk").iterdir()) == []

    def no_space(*_a, **_k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(isal.igzip_threaded, "open", no_space)
    with pytest.raises(RegistrationInputError, match="No space left"):
        rio.write_image(img, tmp_path / "gz" / "field.nii.gz")
    assert list((tmp_path / "gz").iterdir()) == []
