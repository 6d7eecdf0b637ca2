"""DICOM in and out for TotalRegistrator Node (no torch, no network).

Public API: read_series / SeriesVolume (reader), select_series / SeriesChoice (selection), DicomInputError;
writers in dicom_io.writers; DICOM value parsing/formatting (DA, TM, DT, DS, IS) in dicom_io.values;
test helper dicom_io.synthetic_series.write_ct_series (production code never imports it).
"""
from .errors import DicomInputError
from .reader import SeriesVolume, read_series
from .selection import SeriesChoice, select_series

__all__ = ["DicomInputError", "SeriesVolume", "read_series", "select_series", "SeriesChoice"]
