"""The registered prior series (and an optional subtraction series) as single-frame CT Image Storage.

Geometry: exactly the current scan's grid and Frame of Reference (IPP of slice k = current origin + k * dz * normal,
IOP and PixelSpacing from the current image, LPS mm).  Pixels: signed int16 HU, slope 1, intercept 0; values
outside the prior's field of view are expected to be -1024 in `warped` already (registration_core does that).
"""
from __future__ import annotations

import datetime as _dt

import numpy as np
import SimpleITK as sitk
from highdicom import UID
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ..errors import DicomInputError
from ..geometry import iop_of, pixel_spacing_of, slice_positions
from ..reader import CT_IMAGE, SeriesVolume
from ..values import da_to_iso, format_ds, format_ds_list, now_da_tm
from .common import Equipment, body_part_and_laterality, check_same_patient, code_item, copy_patient_study, file_meta_for

REGISTERED_PREFIX = "PRIOR"


def registered_description(prior: SeriesVolume, current: SeriesVolume) -> str:
    """'PRIOR 2023-01-05 REGISTERED TO 2024-03-10' (ISO dates from StudyDate; max 64 characters)."""
    return f"PRIOR {da_to_iso(prior.study_date)} REGISTERED TO {da_to_iso(current.study_date)}"[:64]


def _check_grid(img: sitk.Image, current: SeriesVolume, what: str) -> None:
    ref = current.image
    if not (img.GetSize() == ref.GetSize() and np.allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-4)
            and np.allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-3)
            and np.allclose(img.GetDirection(), ref.GetDirection(), atol=1e-5)):
        raise DicomInputError(f"{what} is not on the current series' grid (size/spacing/origin/direction differ)")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise DicomInputError(f"{what} must be a scalar image")


def _ct_series(
    current: SeriesVolume,
    image: sitk.Image,
    *,
    description: str,
    derivation_description: str,
    derivation_code: Dataset,
    sources: list[tuple[str, str]],
    source_purpose: Dataset,
    referenced_instances: list[tuple[str, str, Dataset]],
    windows: list[tuple[float, float, str]],
    equipment: Equipment,
    series_number: int,
    now: _dt.datetime | None,
    clip: tuple[int, int] = (-32768, 32767),
) -> list[Dataset]:
    da, tm = now_da_tm(now)
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    if not np.isfinite(arr).all():
        raise DicomInputError(f"{description}: image contains NaN or infinite values")
    stored = np.clip(np.round(arr), clip[0], clip[1]).astype(np.int16)
    series_uid = UID()
    iop = iop_of(current.image)
    spacing = pixel_spacing_of(current.image)
    positions = slice_positions(current.image)
    normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    first = current.datasets[0]
    base = Dataset()
    copy_patient_study(base, current)
    base.SOPClassUID = CT_IMAGE
    base.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    base.InstanceCreationDate, base.InstanceCreationTime = da, tm
    base.Modality = "CT"
    base.SeriesInstanceUID = series_uid
    base.SeriesNumber = series_number
    base.SeriesDescription = description
    base.SeriesDate, base.SeriesTime = da, tm
    base.ContentDate, base.ContentTime = da, tm
    body_part_and_laterality(base, current)
    if first.get("PatientPosition"):
        base.PatientPosition = first.PatientPosition
    base.FrameOfReferenceUID = current.frame_of_reference_uid
    base.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "") or ""
    equipment.apply(base)
    base.DerivationDescription = derivation_description[:1024]
    base.DerivationCodeSequence = Sequence([derivation_code])
    src_items = []
    for cls, uid in sources:
        it = Dataset()
        it.ReferencedSOPClassUID = cls
        it.ReferencedSOPInstanceUID = uid
        it.PurposeOfReferenceCodeSequence = Sequence([source_purpose])
        it.SpatialLocationsPreserved = "NO"
        src_items.append(it)
    base.SourceImageSequence = Sequence(src_items)
    if referenced_instances:
        refs = []
        for cls, uid, purpose in referenced_instances:
            it = Dataset()
            it.ReferencedSOPClassUID = cls
            it.ReferencedSOPInstanceUID = uid
            it.PurposeOfReferenceCodeSequence = Sequence([purpose])
            refs.append(it)
        base.ReferencedInstanceSequence = Sequence(refs)
    base.LossyImageCompression = "00"
    base.ImageOrientationPatient = format_ds_list(iop)
    base.PixelSpacing = format_ds_list(spacing)
    base.SliceThickness = format_ds(current.image.GetSpacing()[2])
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows = image.GetSize()[1]
    base.Columns = image.GetSize()[0]
    base.BitsAllocated = 16
    base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 1
    base.RescaleIntercept = "0"
    base.RescaleSlope = "1"
    base.RescaleType = "HU"
    base.KVP = ""
    base.AcquisitionNumber = ""
    base.BurnedInAnnotation = "NO"
    if windows:
        base.WindowCenter = format_ds_list([w[0] for w in windows])
        base.WindowWidth = format_ds_list([w[1] for w in windows])
        if any(w[2] for w in windows):
            base.WindowCenterWidthExplanation = [w[2] or f"WINDOW {i + 1}" for i, w in enumerate(windows)]
    out = []
    for k, pos in enumerate(positions):
        ds = Dataset()
        ds.update(base)
        ds.SOPInstanceUID = UID()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = format_ds_list(pos)
        ds.SliceLocation = format_ds(float(np.dot(pos, normal)))
        ds.PixelData = stored[k].tobytes()
        ds["PixelData"].VR = "OW"
        file_meta_for(ds)
        out.append(ds)
    return out


def write_registered_series(
    current: SeriesVolume,
    prior: SeriesVolume,
    warped: sitk.Image,
    dsr: Dataset | None,
    *,
    software_version: str = "0.1.0",
    equipment: Equipment | None = None,
    series_number: int = 903,
    description: str | None = None,
    now: _dt.datetime | None = None,
) -> list[Dataset]:
    """Build the prior-resampled-onto-current series (one CT Image Storage Dataset per current slice, in memory).

    `warped`: float HU image on the current grid (LPS mm), -1024 outside the prior's field of view.  References:
    Source Image Sequence -> every prior image (DCM 121322, Spatial Locations Preserved NO); Referenced Instance
    Sequence -> the DSR (DCM 125028 "Source Deformable Spatial Registration") when given.  Window presets are the
    prior's.  SeriesDescription defaults to registered_description(prior, current).
    """
    check_same_patient(current, prior)
    _check_grid(warped, current, "warped prior image")
    equipment = equipment or Equipment(software_version=software_version)
    refs = []
    if dsr is not None:
        refs.append((str(dsr.SOPClassUID), str(dsr.SOPInstanceUID),
                     code_item("125028", "DCM", "Source Deformable Spatial Registration")))
    return _ct_series(
        current, warped,
        description=description or registered_description(prior, current),
        derivation_description=(f"Prior CT series {prior.series_uid} of {da_to_iso(prior.study_date)} "
                                "deformably registered and resampled onto the current CT (TotalRegistrator)"),
        derivation_code=code_item("113085", "DCM", "Spatial resampling"),
        sources=[(c, u) for c, u in prior.referenced_instances],
        source_purpose=code_item("121322", "DCM", "Source image for image processing operation"),
        referenced_instances=refs,
        windows=list(prior.windows),
        equipment=equipment,
        series_number=series_number,
        now=now,
    )


def write_subtraction_series(
    current: SeriesVolume,
    prior: SeriesVolume,
    warped: sitk.Image,
    dsr: Dataset | None = None,
    *,
    software_version: str = "0.1.0",
    equipment: Equipment | None = None,
    series_number: int = 904,
    now: _dt.datetime | None = None,
) -> list[Dataset]:
    """Build a subtraction series: current HU minus registered prior HU, int16 on the current grid.

    Window preset: centre 0, width 400 HU ("SUBTRACTION").  Sources: the current and the prior images
    (DCM 121322), derivation code DCM 113062 "Pixel by pixel subtraction".
    """
    check_same_patient(current, prior)
    _check_grid(warped, current, "warped prior image")
    equipment = equipment or Equipment(software_version=software_version)
    diff = sitk.Cast(current.image, sitk.sitkFloat32) - sitk.Cast(warped, sitk.sitkFloat32)
    refs = []
    if dsr is not None:
        refs.append((str(dsr.SOPClassUID), str(dsr.SOPInstanceUID),
                     code_item("125028", "DCM", "Source Deformable Spatial Registration")))
    return _ct_series(
        current, diff,
        description=f"SUBTRACTION CURRENT MINUS PRIOR {da_to_iso(prior.study_date)}"[:64],
        derivation_description="Current CT minus the deformably registered prior CT (HU difference)",
        derivation_code=code_item("113062", "DCM", "Pixel by pixel subtraction"),
        sources=list(current.referenced_instances) + list(prior.referenced_instances),
        source_purpose=code_item("121322", "DCM", "Source image for image processing operation"),
        referenced_instances=refs,
        windows=[(0.0, 400.0, "SUBTRACTION")],
        equipment=equipment,
        series_number=series_number,
        now=now,
    )
