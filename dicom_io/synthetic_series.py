"""Write a SimpleITK image as a valid single-frame CT Image Storage series (test helper for every package).

Geometry: ImagePositionPatient of slice k = origin + k * spacing_z * direction[:, 2] (LPS, mm);
ImageOrientationPatient = direction columns 0 and 1; PixelSpacing = (spacing_y, spacing_x).  Any orthonormal
direction works (rotated, feet-first, left-handed).  Pixel data: signed int16 stored values,
HU = stored * RescaleSlope + RescaleIntercept.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from .geometry import iop_of, pixel_spacing_of, slice_positions
from .values import format_ds, format_ds_list

DEFAULT_WINDOWS: tuple[tuple[float, float, str], ...] = ((40.0, 400.0, "SOFT TISSUE"), (-600.0, 1500.0, "LUNG"))


def _ct_slice_dataset(
    *,
    patient_id: str,
    patient_name: str,
    birth_date: str,
    patient_sex: str,
    study_uid: str,
    study_date: str,
    study_time: str,
    study_id: str,
    accession_number: str,
    series_uid: str,
    series_number: int,
    series_description: str,
    frame_of_reference_uid: str,
    body_part: str,
    image_type: Sequence[str],
    manufacturer: str,
    slice_thickness: float,
    windows: Sequence[tuple[float, float, str]],
    rescale_slope: float,
    rescale_intercept: float,
    rows: int,
    columns: int,
    pixel_spacing: Sequence[float],
    iop: Sequence[float],
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(image_type)
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.AcquisitionDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = study_time
    ds.SeriesTime = study_time
    ds.AcquisitionTime = study_time
    ds.ContentTime = study_time
    ds.AccessionNumber = accession_number
    ds.Modality = "CT"
    if body_part:
        ds.BodyPartExamined = body_part
    else:
        ds.Laterality = ""  # dciodvfy: Type 2C, needed when the body part is unknown
    ds.Manufacturer = manufacturer
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = patient_sex
    ds.SliceThickness = format_ds(slice_thickness)
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study_id
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = format_ds_list(iop)
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = format_ds_list(pixel_spacing)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if windows:
        ds.WindowCenter = format_ds_list([w[0] for w in windows])
        ds.WindowWidth = format_ds_list([w[1] for w in windows])
        ds.WindowCenterWidthExplanation = [w[2] for w in windows]
    ds.RescaleIntercept = format_ds(rescale_intercept)
    ds.RescaleSlope = format_ds(rescale_slope)
    ds.RescaleType = "HU"
    return ds


def write_ct_series(
    image: sitk.Image,
    folder: str | Path,
    patient_id: str = "SYN0001",
    patient_name: str = "Synthetic^Patient",
    birth_date: str = "19600101",
    study_uid: str | None = None,
    study_date: str = "20240310",
    series_description: str = "CT 1.0 mm",
    frame_of_reference_uid: str | None = None,
    accession_number: str = "ACC0001",
    transfer_syntax: str = ExplicitVRLittleEndian,
    *,
    series_uid: str | None = None,
    series_number: int = 2,
    study_time: str = "101500",
    study_id: str = "1",
    patient_sex: str = "O",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    manufacturer: str = "Synthetic",
    slice_thickness: float | None = None,
    windows: Sequence[tuple[float, float, str]] = DEFAULT_WINDOWS,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    file_prefix: str = "CT",
    body_part: str = "CHEST",
) -> list[Path]:
    """Write `image` (3D, HU, LPS geometry) as one CT Image Storage file per slice into `folder`.

    HU values are rounded and stored as signed int16 = round((HU - intercept) / slope), clipped to int16.
    `study_uid`, `frame_of_reference_uid` and `series_uid` are generated when None.  `transfer_syntax` may be a
    compressed one (RLE, JPEG-LS lossless, JPEG 2000 lossless, JPEG lossless SV1): each slice is then compressed
    with pydicom's `Dataset.compress` (JPEG 2000 needs at least 32 pixels per side).  `body_part` fills
    BodyPartExamined ("" leaves it out and writes an empty Laterality instead).  Dates are DICOM DA strings (YYYYMMDD).  Returns the file paths in slice
    order (k = 0 .. Nz-1).  The output passes dciodvfy without errors.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"write_ct_series needs a 3D image, got {image.GetDimension()}D")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    hu = sitk.GetArrayFromImage(image).astype(np.float64)  # (z, y, x)
    stored = np.clip(np.round((hu - rescale_intercept) / rescale_slope), -32768, 32767).astype(np.int16)
    positions = slice_positions(image)
    iop = iop_of(image)
    thickness = float(image.GetSpacing()[2]) if slice_thickness is None else float(slice_thickness)
    base = _ct_slice_dataset(
        patient_id=patient_id, patient_name=patient_name, birth_date=birth_date, patient_sex=patient_sex,
        study_uid=study_uid, study_date=study_date, study_time=study_time, study_id=study_id,
        accession_number=accession_number, series_uid=series_uid, series_number=series_number,
        series_description=series_description, frame_of_reference_uid=frame_of_reference_uid,
        body_part=body_part, image_type=image_type, manufacturer=manufacturer, slice_thickness=thickness, windows=windows,
        rescale_slope=rescale_slope, rescale_intercept=rescale_intercept, rows=image.GetSize()[1],
        columns=image.GetSize()[0], pixel_spacing=pixel_spacing_of(image), iop=iop,
    )
    paths: list[Path] = []
    for k, pos in enumerate(positions):
        ds = Dataset()
        ds.update(base)
        sop_uid = generate_uid()
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = format_ds_list(pos)
        ds.SliceLocation = format_ds(float(np.dot(pos, _normal(iop))))
        ds.PixelData = stored[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        if transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax, stored[k], generate_instance_uid=False)
        path = folder / f"{file_prefix}{k + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _normal(iop) -> np.ndarray:
    r = np.asarray(iop[:3], float)
    c = np.asarray(iop[3:], float)
    return np.cross(r, c)


def make_test_volume(size=(32, 28, 12), spacing=(1.5, 1.25, 2.5), origin=(-24.0, -20.0, -15.0),
                     direction=None, seed: int = 0) -> sitk.Image:
    """A small asymmetric float32 HU test volume (air background, body ellipse, bright off-centre marker).

    `size` is (x, y, z); `spacing` mm; `origin` LPS mm; `direction` 9 numbers (row-major 3x3) or None = identity.
    """
    nx, ny, nz = size
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    arr = np.full((nz, ny, nx), -1000.0, dtype=np.float32)
    body = ((x - nx / 2) / (0.42 * nx)) ** 2 + ((y - ny / 2) / (0.40 * ny)) ** 2 < 1.0
    arr[body] = 40.0
    rng = np.random.default_rng(seed)
    arr[body] += rng.normal(0, 10, size=int(body.sum())).astype(np.float32)
    # asymmetric markers: bone block towards +x, +y; a gradient in z
    arr[:, int(0.55 * ny):int(0.75 * ny), int(0.6 * nx):int(0.8 * nx)] = 700.0
    arr[: max(1, nz // 3), int(0.2 * ny):int(0.35 * ny), int(0.25 * nx):int(0.4 * nx)] = -500.0
    arr += (z * 5.0).astype(np.float32) * body
    img = sitk.GetImageFromArray(np.round(arr).astype(np.float32))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        img.SetDirection(tuple(float(d) for d in direction))
    return img

