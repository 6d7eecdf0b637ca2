"""select_series: picks the axial ORIGINAL CT with useful thickness and most coverage; records why not others."""
from __future__ import annotations

import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from dicom_io import DicomInputError, select_series
from dicom_io.synthetic_series import make_test_volume, write_ct_series
from dicom_io.writers import write_dsr, write_registered_series

from dicomio_helpers import constant_field, make_pair

CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0)  # rows along x, columns along -z: coronal slices


def _headers(folder, nz, spacing_z, **kw) -> list[Dataset]:
    img = make_test_volume(size=(8, 8, nz), spacing=(1.0, 1.0, spacing_z), direction=kw.pop("direction", None))
    files = write_ct_series(img, folder, **kw)
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    s = {}
    s["best"] = _headers(root / "best", 30, 2.0, series_description="SCOUT (misnamed)")  # 60 mm, 2 mm
    s["thick"] = _headers(root / "thick", 14, 6.0, series_description="CT 6mm")  # 84 mm but 6 mm
    s["partial"] = _headers(root / "partial", 10, 2.0, series_description="CT 2mm partial")  # 20 mm
    s["thin"] = _headers(root / "thin", 60, 0.5, series_description="CT 0.5mm")  # 30 mm
    s["mpr"] = _headers(root / "mpr", 40, 2.0, series_description="AX MPR",
                        image_type=("DERIVED", "SECONDARY", "AXIAL"))  # 80 mm but derived
    s["localizer"] = _headers(root / "loc", 12, 2.0, series_description="CT 1mm axial",
                              image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    s["few"] = _headers(root / "few", 3, 2.0, series_description="CT")
    s["coronal"] = _headers(root / "cor", 20, 2.0, series_description="AX 2mm", direction=CORONAL)
    sc = [Dataset()]
    sc[0].SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    sc[0].Modality = "CT"
    sc[0].SeriesInstanceUID = "1.2.3.4.7"
    s["sc"] = sc
    sr = [Dataset()]
    sr[0].SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    sr[0].Modality = "SR"
    sr[0].SeriesInstanceUID = "1.2.3.4.88"
    s["dose"] = sr
    pr = make_pair(root / "pair", size=(10, 10, 12))
    dsr = write_dsr(pr.current, pr.prior, constant_field(pr.current.image, (0, 0, 0)))
    s["ours"] = write_registered_series(pr.current, pr.prior, sitk.Image(pr.current.image), dsr)
    return s


def test_choice_and_reasons(study):
    headers = [ds for series in study.values() for ds in series]
    uid = {k: v[0].SeriesInstanceUID for k, v in study.items()}
    choice = select_series(headers)
    assert choice.series_uid == uid["best"], choice
    assert "30 slices" in choice.reason and "2 mm" in choice.reason
    r = choice.rejected
    assert "slice thickness 6 mm > 5 mm" in r[uid["thick"]]
    assert "LOCALIZER" in r[uid["localizer"]]
    assert "only 3 image(s)" in r[uid["few"]]
    assert "not axial (coronal" in r[uid["coronal"]]
    assert "secondary capture" in r[uid["sc"]]
    assert "modality SR" in r[uid["dose"]]
    assert "derived series produced by a registration node" in r[uid["ours"]]
    assert "ranked below" in r[uid["mpr"]] and "DERIVED" in r[uid["mpr"]]
    assert "ranked below" in r[uid["partial"]] and "ranked below" in r[uid["thin"]]
    assert set(r) | {choice.series_uid} == set(uid.values())


def test_coverage_beats_thickness_preference(study):
    # without 'best': partial (2 mm, 20 mm) vs thin (0.5 mm, 30 mm): the larger coverage wins
    choice = select_series({k: v for k, v in ((s[0].SeriesInstanceUID, s) for key, s in study.items()
                                              if key in ("partial", "thin"))})
    assert choice.series_uid == study["thin"][0].SeriesInstanceUID


def test_thick_series_accepted_when_alone(study):
    choice = select_series(study["thick"] + study["localizer"])
    assert choice.series_uid == study["thick"][0].SeriesInstanceUID


def test_nothing_suitable(study):
    headers = study["localizer"] + study["dose"]
    choice = select_series(headers)
    assert choice.series_uid is None and "no CT series suitable" in choice.reason
    with pytest.raises(DicomInputError, match="LOCALIZER"):
        select_series(headers, raise_if_none=True)
