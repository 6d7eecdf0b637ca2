"""The job viewer's data endpoints (node/web/viewer.py) on a job with real result files (tests/web/viewer_job.py):
the four NIfTI volumes match the spool's current scan, the registered series, and |d| / the Jacobian determinant of
the known field; headers carry no patient data; signed-in users of any role may read, nobody else."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient
from viewer_job import BUMP_CENTER, FOLD, A, field_at, make_viewer_job, physical_points


@pytest.fixture
def real_job(node_db, tmp_path):
    db, ids = node_db
    return ids["done"], make_viewer_job(db, ids["done"], tmp_path / "viewerjob")


def _nifti(client, url, tmp_path, name):
    r = client.get(url)
    assert r.status_code == 200, r.text[:300]
    path = tmp_path / name
    path.write_bytes(r.content)
    return path, sitk.ReadImage(str(path))


def test_volumes_match_the_job_results(admin, real_job, tmp_path):
    job_id, made = real_job
    meta = admin.get(f"/jobs/{job_id}/viewer.json").json()
    assert meta["volumes"] == {n: f"/jobs/{job_id}/viewer/{n}.nii.gz"
                               for n in ("current", "prior", "displacement", "jacobian")}
    assert meta["notes"] == []
    assert meta["presets"]["lung"] == {"center": -600.0, "width": 1500.0}

    _, cur = _nifti(admin, meta["volumes"]["current"], tmp_path, "c.nii.gz")
    want = np.round(sitk.GetArrayFromImage(made["current"]))
    assert cur.GetPixelID() == sitk.sitkInt16
    assert np.array_equal(sitk.GetArrayFromImage(cur), want)
    assert np.allclose(cur.GetOrigin(), made["current"].GetOrigin(), atol=1e-4)  # LPS back through NIfTI's RAS
    assert np.allclose(cur.GetSpacing(), made["current"].GetSpacing())

    _, prior = _nifti(admin, meta["volumes"]["prior"], tmp_path, "p.nii.gz")
    warped = np.clip(np.round(sitk.GetArrayFromImage(made["warped"])), -32768, 32767)
    assert np.abs(sitk.GetArrayFromImage(prior) - warped).max() <= 1  # the registered series, int16 HU

    _, mag = _nifti(admin, meta["volumes"]["displacement"], tmp_path, "d.nii.gz")
    _, jac = _nifti(admin, meta["volumes"]["jacobian"], tmp_path, "j.nii.gz")
    assert mag.GetSize() == jac.GetSize() and mag.GetSize() != cur.GetSize()  # the DSR's coarser grid
    pts = physical_points(mag)
    exact = np.linalg.norm(field_at(pts), axis=-1)
    far = np.linalg.norm(pts - BUMP_CENTER, axis=-1) > 70.0  # where the field is affine: interpolation is exact
    m = sitk.GetArrayFromImage(mag)
    assert np.abs(m[far] - exact[far]).max() < 1e-3
    assert np.abs(m - exact).max() < 1.5  # near the bump, linear sampling of the dense field onto the grid
    j = sitk.GetArrayFromImage(jac)
    assert np.abs(j[far] - np.linalg.det(np.eye(3) + A)).max() < 1e-3
    centre = np.unravel_index(np.argmin(np.linalg.norm(pts - BUMP_CENTER, axis=-1)), j.shape)
    assert j[centre] < 0 and j.min() < 0  # the fold at the bump, in theory (1 + 0.04 - 1.8)(0.97)(1.02) = -0.75
    assert meta["stats"]["jacobian_min"] == pytest.approx(float(j.min()), abs=1e-3)
    assert meta["stats"]["folding_percent"] == pytest.approx(100 * float((j <= 0).mean()), abs=1e-3)
    assert 0 < meta["stats"]["folding_percent"] < 5
    assert meta["stats"]["displacement_max_mm"] == pytest.approx(float(m.max()), abs=1e-3)
    assert FOLD > 1  # the fixture folds by construction


def test_headers_carry_no_patient_data(admin, real_job, tmp_path):
    job_id, made = real_job
    for name in ("current", "prior", "displacement", "jacobian"):
        r = admin.get(f"/jobs/{job_id}/viewer/{name}.nii.gz")
        raw = gzip.decompress(r.content)
        header = raw[:352]
        assert int.from_bytes(header[:4], "little") == 348
        descrip, aux, intent = header[148:228], header[228:252], header[328:344]
        assert descrip.strip(b"\0 ") == b"" and aux.strip(b"\0 ") == b"" and intent.strip(b"\0 ") == b""
        for secret in (made["patient"]["patient_id"], "Viewer", "Secret", made["patient"]["birth_date"]):
            assert secret.encode() not in raw


def test_cache_is_reused_and_rebuilt_when_results_change(admin, real_job):
    job_id, made = real_job
    assert admin.get(f"/jobs/{job_id}/viewer.json").status_code == 200
    cached = made["result_dir"] / "viewer" / "jacobian.nii.gz"
    first = cached.stat().st_mtime_ns
    assert admin.get(f"/jobs/{job_id}/viewer.json").status_code == 200
    assert cached.stat().st_mtime_ns == first
    for f in (made["result_dir"] / "dicom").glob("*.dcm"):  # the registered series gone: prior warped here
        from pydicom import dcmread
        if str(dcmread(f, stop_before_pixels=True).SOPClassUID) != "1.2.840.10008.5.1.4.1.1.66.3":
            f.unlink()
    meta = admin.get(f"/jobs/{job_id}/viewer.json").json()
    assert any("warped here" in n for n in meta["notes"])
    r = admin.get(f"/jobs/{job_id}/viewer/prior.nii.gz")
    assert r.status_code == 200


def test_access_needs_a_signed_in_user(app, viewer, real_job, node_db):
    job_id, _ = real_job
    assert viewer.get(f"/jobs/{job_id}/viewer/jacobian.nii.gz").status_code == 200  # the viewer role may read
    with TestClient(app) as anon:
        for url in (f"/jobs/{job_id}/viewer.json", f"/jobs/{job_id}/viewer/current.nii.gz"):
            r = anon.get(url, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/login"
    ids = node_db[1]
    r = viewer.get(f"/jobs/{ids['failed']}/viewer.json", headers={"Accept": "application/json"})
    assert r.status_code == 404 and "no registration results" in r.json()["detail"]
    assert viewer.get(f"/jobs/{job_id}/viewer/secrets.nii.gz").status_code == 404
    page = viewer.get(f"/jobs/{job_id}").text
    assert 'src="/static/viewer/viewer.js"' in page and 'id="nv-current"' in page
    assert "viewer.js" not in viewer.get(f"/jobs/{ids['failed']}").text  # only on a registered job's page
    assert "viewer.js" not in viewer.get("/jobs").text


def test_large_scans_are_shown_on_a_coarser_grid(admin, real_job, tmp_path, monkeypatch):
    from node.web import viewer as v

    job_id, made = real_job
    monkeypatch.setattr(v, "MAX_VIEWER_VOXELS", 20_000)
    meta = admin.get(f"/jobs/{job_id}/viewer.json").json()
    assert any("coarser grid" in n for n in meta["notes"])
    _, cur = _nifti(admin, meta["volumes"]["current"], tmp_path, "c.nii.gz")
    _, prior = _nifti(admin, meta["volumes"]["prior"], tmp_path, "p.nii.gz")
    n = np.prod(cur.GetSize())
    assert 15_000 < n <= 20_000 and cur.GetSize() == prior.GetSize()
    full = made["current"]
    extent = lambda im: (np.asarray(im.GetSize()) - 1) * np.asarray(im.GetSpacing())  # noqa: E731
    assert np.allclose(cur.GetOrigin(), full.GetOrigin(), atol=1e-4)
    assert np.all(extent(cur) <= extent(full) + 1e-3) and np.all(extent(cur) > extent(full) - cur.GetSpacing())
    # the coarse volume samples the same anatomy: its voxels equal the full scan resampled there (linear)
    ref = sitk.Resample(full, cur, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, -1024.0)
    assert np.abs(sitk.GetArrayFromImage(cur) - np.round(sitk.GetArrayFromImage(ref))).max() <= 1
