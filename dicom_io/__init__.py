"""DICOM in and out for TotalRegistrator Node (no torch, no network).

Public API: read_series / SeriesVolume (reader), select_series / SeriesChoice (selection), DicomInputError;
writers in dicom_io.writers; test helper dicom_io.synthetic_series.write_ct_series.
"""
from .errors import DicomInputError
from .reader import SeriesVolume, read_series

__all__ = ["DicomInputError", "SeriesVolume", "read_series", "select_series", "SeriesChoice"]


def __getattr__(name):  # lazy: selection imports reader helpers
    if name in ("select_series", "SeriesChoice"):
        from . import selection
        return getattr(selection, name)
    raise AttributeError(name)
