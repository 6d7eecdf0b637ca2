"""Read queries on the node database: a received study as a :class:`node.store.study.StudySummary`, a patient's
studies, a series' spool files, a job's result files. Used by routing, the prior finder, the worker and the console.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.store.db import Instance, Job, Series, Study
from node.store.study import PatientIdentity, SeriesSummary, StudySummary


def _series_summary(s: Series, paths: list[Path] | None = None) -> SeriesSummary:
    return SeriesSummary(
        series_uid=s.series_uid, modality=s.modality, description=s.description, number=s.number,
        image_type=tuple(p for p in s.image_type.split("\\") if p), sop_class_uid=s.sop_class_uid,
        frame_of_reference_uid=s.frame_of_reference_uid, slice_thickness_mm=s.slice_thickness_mm,
        n_instances=s.n_instances, body_part=s.body_part, paths=paths or [])


def _study_summary(session: Session, st: Study, with_paths: bool = True) -> StudySummary:
    series = session.scalars(select(Series).where(Series.study_id == st.id).order_by(Series.number,
                                                                                      Series.id)).all()
    return StudySummary(
        study_uid=st.study_uid,
        patient=PatientIdentity(patient_id=st.patient_id, issuer=st.issuer, name=st.patient_name,
                                birth_date=st.birth_date, sex=st.sex),
        study_date=st.study_date, study_time=st.study_time or "", study_description=st.description, accession_number=st.accession_number,
        calling_ae=st.calling_ae,
        series=[_series_summary(s, series_paths(session, s.series_uid, st.study_uid) if with_paths else None)
                for s in series],
        source="local")


def study_summary(session: Session, study_uid: str, with_paths: bool = True) -> StudySummary | None:
    """The received study ``study_uid`` as a :class:`StudySummary` (series with spool paths), or None."""
    st = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if st is None or st.n_instances == 0:
        return None
    return _study_summary(session, st, with_paths)


def studies_for_patient(session: Session, patient_id: str, issuer: str = "",
                        with_paths: bool = True) -> list[StudySummary]:
    """Locally held studies of a patient (same PatientID; same issuer when both are given), newest first."""
    q = select(Study).where(Study.patient_id == patient_id, Study.n_instances > 0)
    rows = [st for st in session.scalars(q).all() if not (issuer and st.issuer and st.issuer != issuer)]
    rows.sort(key=lambda st: (st.study_date or _dt.date.min, st.study_time), reverse=True)
    return [_study_summary(session, st, with_paths) for st in rows]


def series_paths(session: Session, series_uid: str, study_uid: str | None = None) -> list[Path]:
    """Spool paths of a series' instances, ordered by InstanceNumber (then SOP UID); with ``study_uid`` only
    those indexed under that study (the index refuses a Series UID under a second study, so this is a guard)."""
    q = select(Instance.path, Instance.instance_number, Instance.sop_instance_uid).where(
        Instance.series_uid == series_uid)
    if study_uid is not None:
        q = q.where(Instance.study_uid == study_uid)
    rows = session.execute(q).all()
    rows = sorted(rows, key=lambda r: (r[1] if r[1] is not None else 1 << 30, r[2]))
    return [Path(r[0]) for r in rows]


def result_files(job: Job) -> list[Path]:
    """The DICOM result files of a job (``<result_dir>/dicom/*.dcm``, sorted); [] before it wrote any."""
    if not job.result_dir:
        return []
    return sorted((Path(job.result_dir) / "dicom").glob("*.dcm"))
