"""Deformable Spatial Registration (SOP class 1.2.840.10008.5.1.4.1.1.66.3) builder.

Direction (PS3.3 C.20.3): the DSR's Frame of Reference is the registered space = the CURRENT scan.  For a grid
point x (LPS mm, current frame) the source (prior) point is  M_post . (M_pre . x + D(x)).  We store M_pre = M_post
= identity and D = the total displacement field d (current point p <-> prior point p + d(p)), i.e. exactly the
SimpleITK resampling-transform direction; nothing is inverted.

Grid: axis-aligned with the current image (row/column cosines of the current image, slice axis = row x column,
right-handed, as DICOM readers assume), covering every voxel centre of the current volume, with resolution at most
`grid_spacing_mm` (the extent along each axis is divided evenly, so the first and last grid planes lie on the
volume's boundary voxel centres).  Vectors: float32 little-endian, mm along LPS, x fastest (numpy (z, y, x, 3)).
Note: SlicerRT only reads axis-aligned grids (orientation 1\\0\\0\\0\\1\\0); a current series with another
orientation still gets a correct grid in its own orientation, which such readers may misplace.
"""
from __future__ import annotations

import datetime as _dt

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ..errors import DicomInputError
from ..geometry import direction_tuple
from ..reader import SeriesVolume
from ..values import format_ds_list, now_da_tm
from .common import (Equipment, check_same_patient, code_item, common_instance_reference, file_meta_for,
                     new_registration_dataset, referenced_image_sequence)

DSR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.3"
IDENTITY16 = [1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0]


def grid_geometry(image: sitk.Image, grid_spacing_mm: float = 3.0) -> sitk.Image:
    """An empty 3D image describing the DSR grid over `image` (origin, spacing, direction, size; LPS mm).

    Direction = (row, column, row x column) of `image`; spacing per axis <= grid_spacing_mm; covers the bounding box
    of `image`'s voxel centres expressed in that frame.
    """
    if grid_spacing_mm <= 0:
        raise ValueError("grid_spacing_mm must be positive")
    d = np.asarray(image.GetDirection(), float).reshape(3, 3)
    r, c = d[:, 0], d[:, 1]
    n = np.cross(r, c)
    axes = np.column_stack([r, c, n])
    size = np.asarray(image.GetSize())
    corners_idx = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)],
                           float)
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(ci)) for ci in corners_idx])
    local = corners @ axes  # coordinates along r, c, n
    lo, hi = local.min(0), local.max(0)
    extent = hi - lo
    dims = np.maximum(np.ceil(extent / grid_spacing_mm - 1e-6).astype(int) + 1, 2)
    spacing = np.where(extent > 0, extent / (dims - 1), grid_spacing_mm)
    origin = axes @ lo
    grid = sitk.Image([int(v) for v in dims], sitk.sitkUInt8)
    grid.SetSpacing([float(v) for v in spacing])
    grid.SetOrigin([float(v) for v in origin])
    grid.SetDirection(direction_tuple(axes))
    return grid


def sample_field(displacement: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """Displacement vectors (mm, LPS) at the grid points by linear interpolation: float32 array (z, y, x, 3)."""
    field = sitk.Cast(displacement, sitk.sitkVectorFloat64) \
        if displacement.GetPixelID() != sitk.sitkVectorFloat64 else displacement
    res = sitk.Resample(field, grid, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0,
                        sitk.sitkVectorFloat64)
    return sitk.GetArrayFromImage(res).astype("<f4")


def _matrix_item(matrix16, matrix_type: str = "RIGID") -> Dataset:
    item = Dataset()
    item.FrameOfReferenceTransformationMatrix = format_ds_list(matrix16)
    item.FrameOfReferenceTransformationMatrixType = matrix_type
    return item


def _check_field(displacement: sitk.Image, current: SeriesVolume) -> None:
    if displacement.GetDimension() != 3 or displacement.GetNumberOfComponentsPerPixel() != 3:
        raise DicomInputError("displacement field must be a 3D image with 3 components per voxel")
    img = current.image
    same = (displacement.GetSize() == img.GetSize()
            and np.allclose(displacement.GetSpacing(), img.GetSpacing(), atol=1e-4)
            and np.allclose(displacement.GetOrigin(), img.GetOrigin(), atol=1e-3)
            and np.allclose(displacement.GetDirection(), img.GetDirection(), atol=1e-5))
    if not same:
        raise DicomInputError("displacement field is not on the current series' grid (size/spacing/origin/direction "
                              "differ); it must be defined on the fixed (current) image")
    arr = sitk.GetArrayViewFromImage(displacement)
    if not np.isfinite(arr).all():
        raise DicomInputError("displacement field contains NaN or infinite values")


def write_dsr(
    current: SeriesVolume,
    prior: SeriesVolume,
    displacement: sitk.Image,
    grid_spacing_mm: float = 3.0,
    software_version: str = "0.1.0",
    *,
    equipment: Equipment | None = None,
    series_number: int = 901,
    instance_number: int = 1,
    series_description: str = "TotalRegistrator deformable registration",
    content_creator: str = "",
    now: _dt.datetime | None = None,
) -> Dataset:
    """Build the DSR object (in memory) registering the prior series to the current series.

    `displacement`: SimpleITK vector image on the current grid, mm, LPS, current point p <-> prior point p + d(p)
    (total field).  The grid vectors equal d sampled (linearly) at the grid points; see the module docstring for
    grid geometry and direction.  Returns a pydicom Dataset with file_meta, to be saved with
    `save_as(..., enforce_file_format=True)` or `save_objects`.
    """
    check_same_patient(current, prior)
    _check_field(displacement, current)
    equipment = equipment or Equipment(software_version=software_version)
    grid = grid_geometry(current.image, grid_spacing_mm)
    vectors = sample_field(displacement, grid)
    da, tm = now_da_tm(now)

    ds = new_registration_dataset(current, DSR_SOP_CLASS, equipment=equipment, da=da, tm=tm,
                                  series_number=series_number, series_description=series_description,
                                  instance_number=instance_number, label="DEFORMABLE_REG")
    ds.ContentDescription = (f"Deformable registration of prior {prior.study_date} to current {current.study_date}"
                             )[:64]
    ds.ContentCreatorName = content_creator

    item = Dataset()
    item.SourceFrameOfReferenceUID = prior.frame_of_reference_uid
    item.ReferencedImageSequence = referenced_image_sequence(prior)
    item.FrameOfReferenceTransformationComment = (
        "Vectors: current point to prior point, LPS mm")
    item.RegistrationTypeCodeSequence = Sequence([code_item("125024", "DCM", "Image Content-based Alignment")])
    item.PreDeformationMatrixRegistrationSequence = Sequence([_matrix_item(IDENTITY16)])
    item.PostDeformationMatrixRegistrationSequence = Sequence([_matrix_item(IDENTITY16)])
    g = Dataset()
    gd = np.asarray(grid.GetDirection(), float).reshape(3, 3)
    g.ImageOrientationPatient = format_ds_list([*gd[:, 0], *gd[:, 1]])
    g.ImagePositionPatient = format_ds_list(grid.GetOrigin())
    g.GridDimensions = [int(v) for v in grid.GetSize()]
    g.GridResolution = [float(v) for v in grid.GetSpacing()]
    g.VectorGridData = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    item.DeformableRegistrationGridSequence = Sequence([g])
    ds.DeformableRegistrationSequence = Sequence([item])

    common_instance_reference(ds, current, [prior])
    file_meta_for(ds)
    return ds


def dsr_vectors(ds: Dataset) -> tuple[np.ndarray, sitk.Image]:
    """Read back the first grid of a DSR: (vectors float32 (z, y, x, 3) mm LPS, empty grid image with geometry)."""
    g = ds.DeformableRegistrationSequence[0].DeformableRegistrationGridSequence[0]
    dims = [int(v) for v in g.GridDimensions]
    vec = np.frombuffer(g.VectorGridData, dtype="<f4").reshape(dims[2], dims[1], dims[0], 3)
    iop = np.asarray(g.ImageOrientationPatient, float)
    axes = np.column_stack([iop[:3], iop[3:], np.cross(iop[:3], iop[3:])])
    grid = sitk.Image(dims, sitk.sitkUInt8)
    grid.SetSpacing([float(v) for v in g.GridResolution])
    grid.SetOrigin([float(v) for v in g.ImagePositionPatient])
    grid.SetDirection(direction_tuple(axes))
    return vec, grid


__all__ = ["write_dsr", "grid_geometry", "sample_field", "dsr_vectors", "DSR_SOP_CLASS"]
