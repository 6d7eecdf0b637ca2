"""The node's one DICOM header parser: header values (pydicom ``Dataset`` or a C-FIND identifier) → Python values
and :mod:`node.store.study` records. The index, the prior finder, the worker and the CLI read headers through it.

Text values come back stripped, multi-values joined with ``\\``; DA → ``datetime.date``; IS → ``int``; DS →
``float`` (:mod:`dicom_io.values`, the one DA/TM/DS/IS parser the writers share; ``dicom_io/__init__`` loads its
reader lazily, so this adds no SimpleITK to the receiver processes); anything empty or unparsable → None (never an
exception: a header value is data, not a contract).
"""
from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_io.values import parse_da, parse_ds, parse_is
from node.store.study import PatientIdentity, SeriesSummary, StudySummary

__all__ = ["parse_da", "parse_ds", "parse_is", "patient_identity", "series_summary_of", "study_summary_of",
           "summary_from_files", "text"]


def text(ds: Dataset, key: str) -> str:
    """The value of ``key`` as stripped text ('' when absent or empty); a multi-value is joined with ``\\``."""
    v = ds.get(key, "")
    if v is None:
        return ""
    if isinstance(v, (list, tuple)) or v.__class__.__name__ == "MultiValue":
        v = "\\".join(str(x) for x in v)
    return str(v).strip()


def patient_identity(ds: Dataset) -> PatientIdentity:
    """Who the header says the patient is (PatientID, IssuerOfPatientID, PatientName, PatientBirthDate, PatientSex)."""
    return PatientIdentity(patient_id=text(ds, "PatientID"), issuer=text(ds, "IssuerOfPatientID"),
                           name=text(ds, "PatientName"), birth_date=parse_da(ds.get("PatientBirthDate")),
                           sex=text(ds, "PatientSex"))


def study_summary_of(ds: Dataset, source: str) -> StudySummary:
    """A :class:`StudySummary` without series from one header or study-level C-FIND identifier; ``source`` is
    'local' or the PACS' name. ``modalities_in_study`` holds ModalitiesInStudy (C-FIND) as a list."""
    st = StudySummary(study_uid=text(ds, "StudyInstanceUID"), patient=patient_identity(ds),
                      study_date=parse_da(ds.get("StudyDate")), study_time=text(ds, "StudyTime"),
                      study_description=text(ds, "StudyDescription"), accession_number=text(ds, "AccessionNumber"),
                      source=source)
    mods = ds.get("ModalitiesInStudy", None)
    st.modalities_in_study = ([str(mods)] if isinstance(mods, str) else  # type: ignore[attr-defined]
                              [str(m) for m in mods]) if mods else []
    return st


def series_summary_of(ds: Dataset, n_instances: int = 0) -> SeriesSummary:
    """A :class:`SeriesSummary` (no paths) from one instance header or series-level C-FIND identifier."""
    return SeriesSummary(
        series_uid=text(ds, "SeriesInstanceUID"), modality=text(ds, "Modality"),
        description=text(ds, "SeriesDescription"), number=parse_is(ds.get("SeriesNumber")),
        image_type=tuple(p for p in text(ds, "ImageType").split("\\") if p), sop_class_uid=text(ds, "SOPClassUID"),
        frame_of_reference_uid=text(ds, "FrameOfReferenceUID"),
        slice_thickness_mm=parse_ds(ds.get("SliceThickness")), body_part=text(ds, "BodyPartExamined"),
        n_instances=n_instances)


def summary_from_files(files: list[Path]) -> StudySummary:
    """A StudySummary built from the DICOM files of ONE study (headers only; series in order of first appearance,
    each with its files as ``paths``)."""
    series: dict[str, SeriesSummary] = {}
    first: Dataset | None = None
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        first = first or ds
        uid = text(ds, "SeriesInstanceUID")
        s = series.get(uid)
        if s is None:
            s = series[uid] = series_summary_of(ds)
        s.n_instances += 1
        s.paths.append(Path(f))
    if first is None:
        raise ValueError("no DICOM files given")
    st = study_summary_of(first, source="local")
    st.series = list(series.values())
    return st
