"""Errors raised by dicom_io."""
from __future__ import annotations


class DicomInputError(ValueError):
    """Bad DICOM input: a one-line, plain-words message that names the problem (series, slice, attribute)."""
