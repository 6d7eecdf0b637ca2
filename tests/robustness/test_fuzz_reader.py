"""Bad input to ``dicom_io.read_series``: hypothesis-mutated CT series and the classic broken cases.

Contract (docs/CONTRACTS.md): bad input gives ``DicomInputError`` with a clear one-line message that names the
problem — never another exception type, never a multi-line or empty message.  A mutation the reader can tolerate
may also give a valid volume (then it must be a 3D float32 image with the slices it was given).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import generate_uid

from .conftest import nodefx
from .mutations import byte_mutation, dataset_mutation, encode_body, part10
from .support import write_figures

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CI_EXAMPLES, FULL_EXAMPLES = 50, 2000
N_SLICES = 3


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A valid 3-slice CT series: (folder, list of datasets)."""
    d = tmp_path_factory.mktemp("reader-fuzz")
    files = nodefx.make_series(d / "src", n_slices=N_SLICES, size=8)
    return d, [dcmread(f) for f in files]


def _read(paths):
    from dicom_io import DicomInputError, read_series
    try:
        return read_series(paths), None
    except DicomInputError as exc:
        return None, exc


def _assert_clear(exc, what: str) -> str:
    msg = str(exc)
    assert msg.strip(), f"{what}: empty DicomInputError message"
    assert "\n" not in msg, f"{what}: message is not one line: {msg!r}"
    assert len(msg) < 600, f"{what}: message of {len(msg)} characters"
    return msg


def _fuzz_reader(series, n: int, derandomize: bool) -> dict:
    """Run ``n`` examples; every failure is recorded (not raised) so one run shows all kinds of problems.

    Returns figures: examples, outcomes, failures {kind: first example}."""
    folder, datasets = series
    figures = {"examples": 0, "volumes": 0, "dicom_input_errors": 0, "failures": {}}

    @settings(max_examples=n, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def run(data):
        k = data.draw(st.integers(0, N_SLICES - 1), label="slice")
        work = folder / generate_uid()
        work.mkdir()
        paths, names = [], []
        for i, ds0 in enumerate(datasets):
            p = work / f"s{i}.dcm"
            if i != k:
                ds0.save_as(p, enforce_file_format=True)
            else:
                ds = copy.deepcopy(ds0)
                if data.draw(st.booleans(), label="dataset mutation"):
                    name, f = data.draw(dataset_mutation(), label="dataset")
                    f(ds)
                    names.append(name)
                try:
                    body = encode_body(ds)
                except Exception:  # noqa: BLE001 - not even encodable: nothing to read
                    return
                if not names or data.draw(st.booleans(), label="byte mutation"):
                    name, g = data.draw(byte_mutation(len(body)), label="bytes")
                    body = g(body)
                    names.append(name)
                p.write_bytes(part10(ds.file_meta, body))
            paths.append(p)
        what = " + ".join(names)
        figures["examples"] += 1
        try:
            vol, exc = _read(paths)
            if exc is not None:
                figures["dicom_input_errors"] += 1
                _assert_clear(exc, what)
            else:
                figures["volumes"] += 1
                arr = vol.image
                assert arr.GetDimension() == 3 and arr.GetSize()[2] >= 2, what
                assert np.isfinite(sitk.GetArrayViewFromImage(arr)).all(), f"{what}: non-finite voxels"
        except Exception as other:  # noqa: BLE001 - the point of the test: record, go on
            kind = f"{type(other).__name__} on {what.split(' ')[0]}"
            figures["failures"].setdefault(kind, f"{what}: {type(other).__name__}: {str(other)[:200]}")
        finally:
            for p in paths:
                p.unlink(missing_ok=True)
            work.rmdir()
    run()
    return figures


def _assert_no_failures(figures: dict) -> None:
    fails = figures["failures"]
    assert not fails, (f"read_series broke its contract (DicomInputError, one line) on {len(fails)} kinds of "
                       "input:\n" + "\n".join(f"  {v}" for v in fails.values()))


def test_reader_fuzz_ci(series):
    figures = _fuzz_reader(series, CI_EXAMPLES, derandomize=True)  # the same examples on every CI run
    write_figures("fuzz_reader_ci", figures)
    _assert_no_failures(figures)


@pytest.mark.slow
def test_reader_fuzz_full(series):
    figures = _fuzz_reader(series, FULL_EXAMPLES, derandomize=False)
    write_figures("fuzz_reader_full", figures)
    _assert_no_failures(figures)


# ------------------------------------------------------------------------------------------ classic cases

def _write(folder: Path, datasets) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, ds in enumerate(datasets):
        p = folder / f"x{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


def _copies(series):
    _, datasets = series
    out = []
    for ds0 in datasets:
        ds = copy.deepcopy(ds0)
        out.append(ds)
    return out


@pytest.mark.parametrize("case, expect", [
    ("mixed_patients", "patient"),
    ("two_frames_of_reference", "Frame of Reference"),
    ("non_image_sop_class", "not a CT image"),
    ("absurd_rows", None),
    ("truncated", "truncated"),
    ("huge_declared_length", None),
    ("wrong_vr_rows", "Rows"),
    ("missing_rows", "Rows"),
    ("two_studies", "StudyInstanceUID"),
])
def test_reader_names_the_problem(series, tmp_path, case, expect):
    dss = _copies(series)
    if case == "mixed_patients":
        dss[1].PatientID = "SOMEONE-ELSE"
    elif case == "two_frames_of_reference":
        dss[2].FrameOfReferenceUID = generate_uid()
    elif case == "non_image_sop_class":
        dss[0].SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"  # RT Plan
        dss[0].file_meta.MediaStorageSOPClassUID = dss[0].SOPClassUID
    elif case == "absurd_rows":
        dss[1].Rows = 65535
    elif case == "missing_rows":
        del dss[1].Rows
    elif case == "two_studies":
        dss[1].StudyInstanceUID = generate_uid()
    paths = _write(tmp_path / case, dss)
    if case == "truncated":
        b = paths[1].read_bytes()
        paths[1].write_bytes(b[: len(b) // 2])
    elif case == "huge_declared_length":
        b = bytearray(paths[1].read_bytes())
        i = b.find(b"\xe0\x7f\x10\x00OW\x00\x00")  # PixelData, explicit VR: 32-bit length follows
        assert i > 0
        b[i + 8:i + 12] = (0x7FFFFFF0).to_bytes(4, "little")
        paths[1].write_bytes(bytes(b))
    elif case == "wrong_vr_rows":
        b = bytearray(paths[1].read_bytes())
        i = b.find(b"\x28\x00\x10\x00US")  # Rows
        b[i + 4:i + 6] = b"DA"
        paths[1].write_bytes(bytes(b))
    try:
        vol, exc = _read(paths)
    except Exception as other:  # noqa: BLE001
        raise AssertionError(f"{case}: read_series raised {type(other).__name__}: {other} (expected "
                             "DicomInputError naming the problem)") from other
    if case == "huge_declared_length" and exc is None:
        # tolerated: the value is read up to the end of the file, which holds exactly the original pixels
        ref, _ = _read(_write(tmp_path / "ref", _copies(series)))
        assert np.array_equal(sitk.GetArrayFromImage(vol.image), sitk.GetArrayFromImage(ref.image))
        return
    assert exc is not None, f"{case}: read_series accepted it"
    msg = _assert_clear(exc, case)
    if expect:
        assert expect in msg, msg
