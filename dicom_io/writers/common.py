"""Shared builders for result objects: patient/study copy, equipment, codes, references, file meta.

All result objects go into the CURRENT study: patient and study attributes are copied verbatim from the current
series' headers (SeriesVolume.patient / .study).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from ..errors import DicomInputError
from ..reader import SeriesVolume

MANUFACTURER = "TotalRegistrator Node"


@dataclass(frozen=True)
class Equipment:
    """Enhanced General Equipment values (all must be non-empty; DICOM Type 1 for REG objects)."""

    manufacturer: str = MANUFACTURER
    model_name: str = "TotalRegistrator Node"
    serial_number: str = "TRN-0001"
    software_version: str = "0.1.0"

    def apply(self, ds: Dataset) -> None:
        for name, value in (("manufacturer", self.manufacturer), ("model_name", self.model_name),
                            ("serial_number", self.serial_number), ("software_version", self.software_version)):
            if not str(value).strip():
                raise ValueError(f"equipment {name} must not be empty")
        ds.Manufacturer = self.manufacturer
        ds.ManufacturerModelName = self.model_name
        ds.DeviceSerialNumber = self.serial_number
        ds.SoftwareVersions = self.software_version


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """One code sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def copy_patient_study(ds: Dataset, current: SeriesVolume) -> None:
    """Copy patient- and study-level attributes of the current series verbatim; add empty Type 2 ones if absent."""
    first = current.datasets[0]
    if "SpecificCharacterSet" in first:
        ds.SpecificCharacterSet = first.SpecificCharacterSet
    for kw, value in {**current.patient, **current.study}.items():
        setattr(ds, kw, copy.deepcopy(value))
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        if kw not in ds:
            setattr(ds, kw, "")


def file_meta_for(ds: Dataset) -> None:
    """Attach a File Meta Information header (Explicit VR Little Endian) matching the dataset's SOP."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta


def referenced_image_sequence(vol: SeriesVolume) -> Sequence:
    """Referenced Image Sequence items (SOP class + instance UIDs) for every instance of a series."""
    items = []
    for cls, uid in vol.referenced_instances:
        it = Dataset()
        it.ReferencedSOPClassUID = cls
        it.ReferencedSOPInstanceUID = uid
        items.append(it)
    return Sequence(items)


def _series_item(vol: SeriesVolume) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = vol.series_uid
    refs = []
    for cls, uid in vol.referenced_instances:
        r = Dataset()
        r.ReferencedSOPClassUID = cls
        r.ReferencedSOPInstanceUID = uid
        refs.append(r)
    item.ReferencedInstanceSequence = Sequence(refs)
    return item


def common_instance_reference(ds: Dataset, current: SeriesVolume, others: list[SeriesVolume]) -> None:
    """Common Instance Reference module: the current series under Referenced Series Sequence; series of other
    studies under Studies Containing Other Referenced Instances Sequence (same-study ones go to the first list)."""
    same = [current] + [o for o in others if o.study_uid == current.study_uid and o.series_uid != current.series_uid]
    ds.ReferencedSeriesSequence = Sequence([_series_item(v) for v in same])
    other_studies: dict[str, list[SeriesVolume]] = {}
    for o in others:
        if o.study_uid != current.study_uid:
            other_studies.setdefault(o.study_uid, []).append(o)
    if other_studies:
        items = []
        for study_uid, vols in other_studies.items():
            it = Dataset()
            it.StudyInstanceUID = study_uid
            it.ReferencedSeriesSequence = Sequence([_series_item(v) for v in vols])
            items.append(it)
        ds.StudiesContainingOtherReferencedInstancesSequence = Sequence(items)


def check_same_patient(current: SeriesVolume, prior: SeriesVolume) -> None:
    """Refuse to build results across patients: PatientID must match, and PatientBirthDate when both have one."""
    if current.patient_id != prior.patient_id:
        raise DicomInputError(f"prior series {prior.series_uid} belongs to patient {prior.patient_id!r}, the current "
                              f"series to {current.patient_id!r}: refusing a wrong-patient result")
    b_cur = str(current.patient.get("PatientBirthDate", "") or "")
    b_pri = str(prior.patient.get("PatientBirthDate", "") or "")
    if b_cur and b_pri and b_cur != b_pri:
        raise DicomInputError(f"prior series {prior.series_uid} has birth date {b_pri}, the current series {b_cur} "
                              f"for the same PatientID {current.patient_id!r}: refusing a wrong-patient result")


def content_label(text: str) -> str:
    """A valid CS Content Label: upper case, [A-Z0-9_ ], at most 16 characters."""
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in text.upper())
    return out[:16] or "REGISTRATION"


def body_part_and_laterality(ds: Dataset, current: SeriesVolume) -> None:
    """General Series BodyPartExamined / Laterality (Type 2C): copy the current series' body part when known (then
    Laterality only if the current series has one); otherwise Laterality present and empty, as dciodvfy asks."""
    first = current.datasets[0]
    body = str(first.get("BodyPartExamined", "") or "")
    if body:
        ds.BodyPartExamined = body
        if first.get("Laterality"):
            ds.Laterality = first.Laterality
    else:
        ds.Laterality = ""


def new_registration_dataset(current: SeriesVolume, sop_class_uid: str, *, equipment: Equipment, da: str, tm: str,
                             series_number: int, series_description: str, instance_number: int,
                             label: str) -> Dataset:
    """The parts every registration object (rigid REG, DSR) shares: patient/study of the CURRENT study copied
    exactly, new SOP Instance and Series UIDs, Modality REG, the current Frame of Reference, equipment, instance
    number, content date/time and label. ``da``/``tm`` are DICOM DA/TM strings."""
    from highdicom import UID

    ds = Dataset()
    copy_patient_study(ds, current)
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = UID()
    ds.InstanceCreationDate, ds.InstanceCreationTime = da, tm
    ds.Modality = "REG"
    ds.SeriesInstanceUID = UID()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate, ds.SeriesTime = da, tm
    body_part_and_laterality(ds, current)
    ds.FrameOfReferenceUID = current.frame_of_reference_uid
    ds.PositionReferenceIndicator = current.datasets[0].get("PositionReferenceIndicator", "") or ""
    equipment.apply(ds)
    ds.InstanceNumber = instance_number
    ds.ContentDate, ds.ContentTime = da, tm
    ds.ContentLabel = content_label(label)
    return ds
