"""Plain records that describe received (or PACS-listed) studies, shared by the node's stages.

The index (node.db / node.receive.index) builds them from the database; the router, the prior finder and the console read
them. They hold DICOM header values only (no pixel data, no paths to pixel data except ``SeriesSummary.paths``).
Dates are ``datetime.date`` (from DICOM DA); sizes in mm.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path


@dataclass(frozen=True)
class PatientIdentity:
    """Who a study belongs to. Two studies pair only when ID and issuer match and name/birth date do not conflict."""

    patient_id: str
    issuer: str = ""  # IssuerOfPatientID ('' when absent)
    name: str = ""  # PatientName as received (DICOM PN, '^'-separated)
    birth_date: date | None = None
    sex: str = ""

    def conflicts_with(self, other: "PatientIdentity") -> list[str]:
        """Attributes that contradict each other (empty values never conflict); names compare case-insensitively,
        ignoring trailing empty PN components."""
        out = []
        if self.patient_id != other.patient_id or (self.issuer and other.issuer and self.issuer != other.issuer):
            out.append("PatientID/IssuerOfPatientID")
        a, b = _norm_pn(self.name), _norm_pn(other.name)
        if a and b and a != b:
            out.append("PatientName")
        if self.birth_date and other.birth_date and self.birth_date != other.birth_date:
            out.append("PatientBirthDate")
        if self.sex and other.sex and self.sex != other.sex and "O" not in (self.sex, other.sex):
            out.append("PatientSex")
        return out


def _norm_pn(pn: str) -> str:
    return "^".join(p.strip().upper() for p in pn.split("=")[0].split("^")).rstrip("^")


@dataclass
class SeriesSummary:
    """One series as the index knows it."""

    series_uid: str
    modality: str = ""
    description: str = ""
    number: int | None = None
    image_type: tuple[str, ...] = ()
    sop_class_uid: str = ""
    frame_of_reference_uid: str = ""
    slice_thickness_mm: float | None = None
    n_instances: int = 0
    body_part: str = ""
    paths: list[Path] = field(default_factory=list)  # spool files, when received locally


@dataclass
class StudySummary:
    """One study: its patient, its date, and its series."""

    study_uid: str
    patient: PatientIdentity
    study_date: date | None = None
    study_time: str = ""  # DICOM TM as received (HHMMSS.FFFFFF), for ordering same-day studies
    study_description: str = ""
    accession_number: str = ""
    calling_ae: str = ""  # AE title that sent it (received studies)
    series: list[SeriesSummary] = field(default_factory=list)
    source: str = "local"  # 'local' (received) or the name of the PACS it was found on

    @property
    def modalities(self) -> set[str]:
        """Modalities present in the study's series."""
        return {s.modality for s in self.series if s.modality}
