"""`totalreg register` with DICOM series folders: reads via dicom_io and writes DSR, REG and registered series."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from test_engine_phantom import make

pytest.importorskip("dicom_io.writers")


def test_cli_dicom_folders_write_dicom_outputs(tmp_path):
    from dicom_io.synthetic_series import write_ct_series

    t = np.array([0.0, 0.0, 10.0])
    fixed, _ = make(size=(50, 40, 44))
    moving, _ = make(size=(50, 40, 44), transform_inv=lambda q: q - t)
    write_ct_series(fixed, tmp_path / "cur", study_date="20240310")
    write_ct_series(moving, tmp_path / "pri", study_date="20230105", accession_number="ACC0000")
    exe = shutil.which("totalreg")
    cmd = ([exe] if exe else [sys.executable, "-m", "node.cli"]) + [
        "register", str(tmp_path / "cur"), str(tmp_path / "pri"), "-o", str(tmp_path / "out"), "--device", "cpu",
        "--iterations", "10", "--no-qc"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "out" / "dicom"
    dsr = pydicom.dcmread(folder / "dsr.dcm")
    reg = pydicom.dcmread(folder / "rigid_reg.dcm")
    series = sorted(folder.glob("registered_*.dcm"))
    assert dsr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.3"
    assert reg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.1"
    assert len(series) == 44
    cur = pydicom.dcmread(sorted((tmp_path / "cur").iterdir())[0])
    for ds in (dsr, reg, pydicom.dcmread(series[0])):
        assert ds.StudyInstanceUID == cur.StudyInstanceUID and ds.PatientID == cur.PatientID
