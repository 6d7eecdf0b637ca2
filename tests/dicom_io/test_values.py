"""dicom_io.values: DICOM DA/TM/DT/DS/IS parsing (lenient, never raising) and formatting (valid for the VR)."""
from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pytest
from pydicom.valuerep import DSfloat, IS

import dicom_io
from dicom_io.values import (da_to_iso, format_da, format_ds, format_ds_list, format_dt, format_is, format_tm,
                             now_da_tm, parse_da, parse_ds, parse_dt, parse_is, parse_tm)


def test_da():
    assert parse_da("20240131") == dt.date(2024, 1, 31)
    assert parse_da(" 20240131 ") == dt.date(2024, 1, 31)
    assert parse_da("20240131120000") == dt.date(2024, 1, 31)     # a DT value: its date
    assert parse_da(b"20240131") == dt.date(2024, 1, 31)
    for bad in ("", None, "2024-01-31", "20241331", "garbage"):
        assert parse_da(bad) is None
    assert format_da(dt.date(2024, 1, 31)) == "20240131"
    assert da_to_iso("20240131") == "2024-01-31" and da_to_iso("unknown") == "unknown" and da_to_iso(None) is None


def test_tm():
    assert parse_tm("07") == dt.time(7, 0)
    assert parse_tm("0705") == dt.time(7, 5)
    assert parse_tm("070509.25") == dt.time(7, 5, 9, 250000)
    assert parse_tm("07:05:09") == dt.time(7, 5, 9)
    assert parse_tm("235960") == dt.time(23, 59, 59)                # leap second
    for bad in ("", None, "7", "250000", "0760", "12345", "120000.1234567", "ab"):
        assert parse_tm(bad) is None, bad
    assert format_tm(dt.time(7, 5, 9, 250000)) == "070509"
    assert format_tm(dt.time(7, 5, 9, 250000), fraction=True) == "070509.250000"


def test_dt():
    assert parse_dt("2024") == dt.datetime(2024, 1, 1)
    assert parse_dt("20240131070509.5") == dt.datetime(2024, 1, 31, 7, 5, 9, 500000)
    aware = parse_dt("20240131070509+0130")
    assert aware.utcoffset() == dt.timedelta(hours=1, minutes=30)
    assert parse_dt("20240131070509-0500").utcoffset() == -dt.timedelta(hours=5)
    for bad in ("", None, "202", "20241301", "20240131+01", "2024013107.5"):
        assert parse_dt(bad) is None, bad
    assert format_dt(dt.datetime(2024, 1, 31, 7, 5, 9)) == "20240131070509"
    assert format_dt(aware) == "20240131070509+0130"
    assert parse_dt(format_dt(aware, fraction=True)) == aware


def test_ds_and_is():
    assert parse_ds("  -1.5e2 ") == -150.0 and parse_ds(DSfloat("0.7")) == 0.7 and parse_ds(3) == 3.0
    for bad in ("", None, "1,5", "nan", "inf"):
        assert parse_ds(bad) is None, bad
    assert parse_is(" +12 ") == 12 and parse_is(IS("7")) == 7 and parse_is(5) == 5
    for bad in ("", None, "5.0", "x"):
        assert parse_is(bad) is None, bad
    assert format_ds(-0.0) == "0.0" and len(format_ds(-9.999999999999991)) <= 16
    assert format_ds_list([1, 0.5]) == ["1.0", "0.5"]
    assert format_is(-12) == "-12"
    with pytest.raises(ValueError):
        format_is(2 ** 31)


def test_now_da_tm():
    assert now_da_tm(dt.datetime(2024, 1, 31, 7, 5, 9, 123)) == ("20240131", "070509")
    da, tm = now_da_tm()
    assert parse_da(da) is not None and parse_tm(tm) is not None


def test_production_modules_do_not_import_the_test_helper():
    """dicom_io.synthetic_series is a test helper: no other module of dicom_io imports it."""
    root = Path(dicom_io.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "synthetic_series.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.endswith("synthetic_series"):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []
