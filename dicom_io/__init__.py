"""DICOM in and out for TotalRegistrator Node (no torch, no network).

Public API: read_series / SeriesVolume (reader), select_series / SeriesChoice (selection), DicomInputError;
writers in dicom_io.writers; DICOM value parsing/formatting (DA, TM, DT, DS, IS) in dicom_io.values;
test helper dicom_io.synthetic_series.write_ct_series (production code never imports it).

The names below load on first use (PEP 562 ``__getattr__``): ``import dicom_io.values`` or ``dicom_io.errors``
does not load the reader and SimpleITK (the node's receiver processes parse header values without them).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .errors import DicomInputError
    from .reader import SeriesVolume, read_series
    from .selection import SeriesChoice, select_series

#: public name -> the submodule defining it
_HOME = {"DicomInputError": "errors", "SeriesVolume": "reader", "read_series": "reader",
         "select_series": "selection", "SeriesChoice": "selection"}

__all__ = ["DicomInputError", "SeriesVolume", "read_series", "select_series", "SeriesChoice"]


def __getattr__(name: str):
    """Load the submodule that defines a public name on first use."""
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
