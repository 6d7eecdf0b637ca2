"""Read one CT series (single-frame or enhanced multi-frame, any transfer syntax) into a SimpleITK volume.

Geometry comes from ImagePositionPatient / ImageOrientationPatient (LPS, mm): the output image has direction
columns (row cosines, column cosines, slice normal = row x column), origin = IPP of the first slice along the
normal, spacing (column spacing, row spacing, slice spacing).  Pixel values are HU (Modality LUT / rescale slope
and intercept applied), float32.

Policies (keyword arguments of `read_series`):
- missing slices (a gap > 1.5 x the median spacing): ``missing_slices="error"`` (default) raises a
  DicomInputError naming the gap; ``"resample"`` interpolates linearly across it.
- non-uniform spacing: ``nonuniform="auto"`` (default) resamples to the median spacing when the largest deviation
  is at most ``max_spacing_deviation`` (fraction of the median, default 0.25) and refuses otherwise;
  ``"resample"`` always resamples, ``"refuse"`` refuses any deviation above 1 %.
- gantry tilt (slice positions not along the slice normal): ``tilt="resample"`` (default) shifts every slice
  in-plane onto an orthogonal grid anchored at the first slice (linear, -1024 HU where a slice does not reach);
  ``"error"`` refuses.
Duplicate files (same SOPInstanceUID) are dropped; two different instances at one position raise an error unless
their pixel data are identical.

Damaged input (see dicom_io.validate): every element of every file is decoded when the file is read (a wrong or
unknown VR names the file and the element); Rows/Columns must be integers in 1..8192, BitsAllocated 8/16/32/64,
one sample per pixel, uncompressed pixel data as long as Rows x Columns x frames x BitsAllocated/8 (checked before
decoding, so a huge declared size allocates nothing) and compressed pixel data with a fragment per frame;
ImagePositionPatient 3 numbers, ImageOrientationPatient 6 (two orthogonal unit vectors), PixelSpacing 2 positive,
RescaleSlope/Intercept numbers.  `read_series` raises only DicomInputError for bad input (one line, values shown
cut to 64 characters); an unforeseen exception is logged with its traceback and converted.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale

from .errors import DicomInputError
from .geometry import direction_tuple
from .ie_attributes import PATIENT_KEYWORDS, STUDY_KEYWORDS
from .validate import (MAX_POSITION_MM, MAX_RESCALE, MAX_SPACING_MM, decode_all, image_header, integer, numbers,
                       one_line, orientation, short)

log = logging.getLogger(__name__)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"
CT_SOP_CLASSES = {CT_IMAGE, ENHANCED_CT, LEGACY_ENHANCED_CT}

OUTSIDE_HU = -1024.0
# never turned into DicomInputError (everything else is: decoders written in Rust raise pyo3 PanicException,
# a BaseException, on damaged compressed frames)
_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)


@dataclass
class SeriesVolume:
    """A CT series read from DICOM.

    image: sitk.Image float32 HU, LPS mm geometry.  datasets: pydicom headers sorted along the slice normal
    (PixelData removed; one dataset per file, so one for an enhanced multi-frame series).
    sop_instance_uids: per output slice, the SOPInstanceUID of the source slice (for multi-frame: the file's UID).
    patient / study: the patient- and study-level attributes (DataElements keyed by keyword) to copy verbatim.
    windows: (center, width, explanation) presets from the series.  notes: corrections applied while reading.
    """

    image: sitk.Image
    datasets: list[Dataset]
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: list[str]
    patient: dict[str, Any]
    study: dict[str, Any]
    study_date: str
    study_time: str
    series_description: str
    series_number: int | None
    modality: str
    windows: list[tuple[float, float, str]]
    slice_positions_mm: list[float]
    notes: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    @property
    def referenced_instances(self) -> list[tuple[str, str]]:
        """(SOPClassUID, SOPInstanceUID) of every source instance, in slice order, without repeats."""
        seen: dict[str, str] = {}
        for ds in self.datasets:
            seen.setdefault(str(ds.SOPInstanceUID), str(ds.SOPClassUID))
        return [(c, u) for u, c in seen.items()]

    @property
    def patient_id(self) -> str:
        return str(self.patient.get("PatientID", ""))


@dataclass
class _Frame:
    ipp: np.ndarray
    iop: np.ndarray
    spacing: tuple[float, float]  # (row spacing, column spacing)
    slope: float
    intercept: float
    sop_uid: str
    source: str  # file name, for messages
    dataset_index: int
    frame_index: int | None
    pixels: np.ndarray | None = None  # HU float32 (rows, cols)


def _collect_paths(paths_or_folder) -> list[Path]:
    if isinstance(paths_or_folder, (str, os.PathLike)):
        p = Path(paths_or_folder)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and f.name.upper() != "DICOMDIR")
            if not files:
                raise DicomInputError(f"folder {p} contains no files")
            return files
        if p.is_file():
            return [p]
        raise DicomInputError(f"{p} does not exist")
    files = [Path(x) for x in paths_or_folder]
    if not files:
        raise DicomInputError("no files given")
    for f in files:
        if not f.is_file():
            raise DicomInputError(f"{f} does not exist or is not a file")
    return files


def _read_file(path: Path) -> Dataset:
    """Read one file and decode every element (sequences included), so that a damaged value (wrong or unknown
    VR, bad length) raises DicomInputError here, naming the file and the element, rather than later."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise DicomInputError(f"{path.name} is not a DICOM file ({short(exc)})") from None
    except Exception as exc:  # truncated / corrupt encodings raise many kinds of errors
        raise DicomInputError(f"{path.name} cannot be read, it is probably truncated or corrupt "
                              f"({type(exc).__name__}: {short(exc)})") from None
    decode_all(ds, path.name)
    return ds


def _is_native(ds: Dataset) -> bool:
    """True when the pixel data are not encapsulated (uncompressed transfer syntax)."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        return ts is None or not pydicom.uid.UID(str(ts)).is_compressed
    except Exception:  # noqa: BLE001 - unknown transfer syntax: treat as encapsulated, the decoder will tell
        return False


def _shared_or_frame(ds: Dataset, frame_item: Dataset | None, seq_kw: str) -> Dataset | None:
    shared = ds.get("SharedFunctionalGroupsSequence") or [None]
    for src in (frame_item, shared[0]):
        if isinstance(src, Dataset) and seq_kw in src and src[seq_kw].value and len(src[seq_kw].value) > 0:
            return src[seq_kw].value[0]
    return None


def _frames_of(ds: Dataset, idx: int, source: str) -> list[_Frame]:
    sop = str(ds.get("SOPInstanceUID", ""))
    n = integer(ds, "NumberOfFrames", source, required=False, default=1, low=1)
    if "PerFrameFunctionalGroupsSequence" in ds or n > 1:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
        if len(per_frame) != n:
            raise DicomInputError(f"{source}: multi-frame object has {n} frames but {len(per_frame)} "
                                  "per-frame functional group items")
        frames = []
        for f in range(n):
            item = per_frame[f]
            pos = _shared_or_frame(ds, item, "PlanePositionSequence")
            ori = _shared_or_frame(ds, item, "PlaneOrientationSequence")
            meas = _shared_or_frame(ds, item, "PixelMeasuresSequence")
            pvt = _shared_or_frame(ds, item, "PixelValueTransformationSequence")
            if pos is None or ori is None or meas is None or "ImagePositionPatient" not in pos \
                    or "ImageOrientationPatient" not in ori or "PixelSpacing" not in meas:
                raise DicomInputError(f"{source}: frame {f + 1} lacks plane position, orientation or pixel "
                                      "spacing in its functional groups")
            where = f"{source} frame {f + 1}"
            slope, inter = _rescale(pvt, where)
            ipp = numbers(pos, "ImagePositionPatient", 3, where, limit=MAX_POSITION_MM)
            spacing = numbers(meas, "PixelSpacing", 2, where, positive=True, limit=MAX_SPACING_MM)
            frames.append(_Frame(np.asarray(ipp), np.asarray(orientation(ori, where)), spacing, slope, inter, sop,
                                 source, idx, f))
        return frames
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if kw not in ds or ds[kw].value in (None, ""):
            raise DicomInputError(f"{source}: image has no {kw}, it cannot be placed in 3D")
    slope, inter = _rescale(ds, source)
    ipp = numbers(ds, "ImagePositionPatient", 3, source, limit=MAX_POSITION_MM)
    spacing = numbers(ds, "PixelSpacing", 2, source, positive=True, limit=MAX_SPACING_MM)
    return [_Frame(np.asarray(ipp), np.asarray(orientation(ds, source)), spacing, slope, inter, sop, source, idx, None)]


def _rescale(container: Dataset | None, source: str) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of a dataset or functional group item; (1, 0) where absent."""
    if container is None:
        return 1.0, 0.0
    slope = numbers(container, "RescaleSlope", 1, source, required=False, limit=MAX_RESCALE)
    inter = numbers(container, "RescaleIntercept", 1, source, required=False, limit=MAX_RESCALE)
    slope = 1.0 if slope is None else slope[0]
    if slope == 0:
        raise DicomInputError(f"{source}: RescaleSlope is 0, the pixel values cannot be converted to HU")
    return slope, 0.0 if inter is None else inter[0]


def _decode(ds: Dataset, source: str) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except _FATAL:
        raise
    except BaseException as exc:  # noqa: BLE001 - Rust decoders (pylibjpeg-rle) raise pyo3 PanicException
        raise DicomInputError(f"{source}: pixel data cannot be decoded, the file is probably truncated or uses an "
                              f"unsupported compression ({type(exc).__name__}: {short(exc)})") from None
    return arr


def _hu(arr: np.ndarray, slope: float, intercept: float, ds: Dataset) -> np.ndarray:
    if "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        return apply_rescale(arr, ds).astype(np.float32)
    return (arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


def _check_same(values: Iterable[Any], what: str, series: str, fmt=str) -> None:
    vals = list(dict.fromkeys(values))
    if len(vals) > 1:
        shown = ", ".join(short(fmt(v)) or "(empty)" for v in vals[:4])
        raise DicomInputError(f"series {series}: more than one {what} in one series ({shown})")


def read_series(
    paths_or_folder: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    missing_slices: str = "error",
    nonuniform: str = "auto",
    max_spacing_deviation: float = 0.25,
    tilt: str = "resample",
    orientation_tolerance: float = 1e-4,
) -> SeriesVolume:
    """Read the files of ONE CT series (any order, any supported transfer syntax) into a SeriesVolume.

    The image is float32 HU in LPS mm (see module docstring for geometry and the policies `missing_slices`,
    `nonuniform`, `max_spacing_deviation`, `tilt`).  Raises DicomInputError with a one-line message naming the
    problem: not DICOM / truncated, not CT, several series / patients / Frames of Reference / orientations / pixel
    spacings, 2D object, missing slice, conflicting duplicates, irregular spacing, gantry tilt (when refused).
    """
    if missing_slices not in ("error", "resample"):
        raise ValueError("missing_slices must be 'error' or 'resample'")
    if nonuniform not in ("auto", "resample", "refuse"):
        raise ValueError("nonuniform must be 'auto', 'resample' or 'refuse'")
    if tilt not in ("resample", "error"):
        raise ValueError("tilt must be 'resample' or 'error'")
    try:
        return _read_series(paths_or_folder, missing_slices, nonuniform, max_spacing_deviation, tilt,
                            orientation_tolerance)
    except DicomInputError as exc:
        msg = str(exc)
        if one_line(msg) == msg:
            raise
        raise DicomInputError(one_line(msg)) from None
    except _FATAL:
        raise
    except BaseException as exc:  # noqa: BLE001 - contract: damaged input gives DicomInputError only
        log.warning("read_series: unexpected %s on damaged input", type(exc).__name__, exc_info=True)
        raise DicomInputError(one_line(f"the series cannot be read, a file is damaged or inconsistent "
                                       f"({type(exc).__name__}: {short(exc)})")) from None


def _read_series(paths_or_folder, missing_slices: str, nonuniform: str, max_spacing_deviation: float, tilt: str,
                 orientation_tolerance: float) -> SeriesVolume:
    """The reading steps of :func:`read_series` (arguments validated there), one function per step."""
    datasets, kept_paths = _read_files(_collect_paths(paths_or_folder))
    series, for_uid = _check_objects(datasets, kept_paths)
    sname = short(series)  # for messages
    frames, (row, col, normal) = _frames_and_axes(datasets, kept_paths, sname, orientation_tolerance)
    notes: list[str] = []
    frames, dist = _sort_decode_dedupe(frames, datasets, normal, sname, notes)
    offsets, tilted = _gantry_tilt(frames, dist, row, col, tilt, sname, notes)
    uniform, targets, spacing_z = _slice_spacing(frames, dist, normal, missing_slices, nonuniform,
                                                 max_spacing_deviation, sname, notes)
    image = _volume(frames, dist, offsets, tilted, uniform, targets, spacing_z, (row, col, normal))
    return _series_volume(image, frames, datasets, kept_paths, series, for_uid, dist, targets, notes)


def _read_files(paths: list[Path]) -> tuple[list[Dataset], list[Path]]:
    """Read and fully decode every file; exact duplicates (same SOPInstanceUID) are dropped. Returns the datasets
    and their paths, in the given order."""
    datasets: list[Dataset] = []
    kept_paths: list[Path] = []
    seen_sops: set[str] = set()
    for p in paths:
        ds = _read_file(p)
        sop = str(ds.get("SOPInstanceUID", ""))
        if sop and sop in seen_sops:
            continue  # exact duplicate file (same instance) - drop
        seen_sops.add(sop)
        datasets.append(ds)
        kept_paths.append(p)
    return datasets, kept_paths


def _check_objects(datasets: list[Dataset], kept_paths: list[Path]) -> tuple[str, str]:
    """Object type checks: every file a CT image with pixel data and a sound image header, all of ONE series,
    patient, study, Frame of Reference and image size. Returns (SeriesInstanceUID, FrameOfReferenceUID)."""
    for ds, p in zip(datasets, kept_paths):
        sop_class = str(ds.get("SOPClassUID", ""))
        modality = str(ds.get("Modality", ""))
        if not sop_class or "Modality" not in ds:
            raise DicomInputError(f"{p.name} lacks SOPClassUID or Modality: an incomplete DICOM object (truncated "
                                  "file?) or not an image")
        if sop_class not in CT_SOP_CLASSES or modality != "CT":
            name = getattr(pydicom.uid.UID(sop_class), "name", sop_class) if sop_class else "unknown"
            raise DicomInputError(f"{p.name} is not a CT image (SOP class {short(name)}, modality "
                                  f"{short(modality) or 'none'})")
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            raise DicomInputError(f"{p.name}: CT object has no pixel data (truncated file?)")
        image_header(ds, p.name, _is_native(ds))
    series_uids = [str(ds.get("SeriesInstanceUID", "")) for ds in datasets]
    distinct = list(dict.fromkeys(series_uids))
    if len(distinct) > 1:
        raise DicomInputError(f"files belong to {len(distinct)} different series "
                              f"({', '.join(short(u) for u in distinct[:3])}"
                              f"{', ...' if len(distinct) > 3 else ''}); several series given, read one at a time")
    series = series_uids[0]
    sname = short(series)  # for messages
    _check_same((str(ds.get("PatientID", "")) for ds in datasets), "patient (PatientID)", sname)
    _check_same((str(ds.get("PatientName", "")) for ds in datasets), "patient (PatientName)", sname)
    _check_same((str(ds.get("StudyInstanceUID", "")) for ds in datasets), "StudyInstanceUID", sname)
    for_uids = [str(ds.get("FrameOfReferenceUID", "")) for ds in datasets]
    if any(not u for u in for_uids):
        raise DicomInputError(f"series {sname}: image without FrameOfReferenceUID")
    _check_same(for_uids, "Frame of Reference", sname)
    _check_same(((integer(ds, "Rows", ""), integer(ds, "Columns", "")) for ds in datasets),
                "image size (Rows x Columns)", sname, lambda v: f"{v[0]}x{v[1]}")
    return series, for_uids[0]


def _frames_and_axes(datasets: list[Dataset], kept_paths: list[Path], sname: str, orientation_tolerance: float
                     ) -> tuple[list[_Frame], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every frame of every file (at least 2), all with one orientation and pixel spacing. Returns the frames and
    the unit LPS axes (row direction, column direction, slice normal = row x column)."""
    frames: list[_Frame] = []
    for i, (ds, p) in enumerate(zip(datasets, kept_paths)):
        frames.extend(_frames_of(ds, i, p.name))
    if len(frames) < 2:
        raise DicomInputError(f"series {sname} has only {len(frames)} image; a 3D CT volume needs at least 2 slices "
                              "(2D object or localizer)")
    iop0 = frames[0].iop
    for fr in frames:
        if np.max(np.abs(fr.iop - iop0)) > orientation_tolerance:
            raise DicomInputError(f"series {sname}: more than one image orientation "
                                  f"({_fmt(iop0)} and {_fmt(fr.iop)} in {fr.source})")
        if abs(fr.spacing[0] - frames[0].spacing[0]) > 1e-4 or abs(fr.spacing[1] - frames[0].spacing[1]) > 1e-4:
            raise DicomInputError(f"series {sname}: more than one pixel spacing ({frames[0].spacing} and "
                                  f"{fr.spacing} in {fr.source})")
    row = iop0[:3] / np.linalg.norm(iop0[:3])
    col = iop0[3:] / np.linalg.norm(iop0[3:])
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    return frames, (row, col, normal)


def _sort_decode_dedupe(frames: list[_Frame], datasets: list[Dataset], normal: np.ndarray, sname: str,
                        notes: list[str]) -> tuple[list[_Frame], np.ndarray]:
    """Sort the frames along the normal, decode their pixels to HU (raw pixel data then dropped from the
    headers) and drop duplicate slices (same position, identical pixels; different pixels raise). Returns the
    frames and their positions along the normal (mm)."""
    frames.sort(key=lambda f: float(np.dot(f.ipp, normal)))
    # decode pixels now (per dataset once)
    decoded: dict[int, np.ndarray] = {}
    for fr in frames:
        ds = datasets[fr.dataset_index]
        if fr.dataset_index in decoded:
            arr = decoded[fr.dataset_index]
        else:
            arr = _decode(ds, fr.source)
            for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
                if kw in ds:  # the raw bytes are no longer needed: keep headers only
                    del ds[kw]
            if fr.frame_index is not None:
                decoded[fr.dataset_index] = arr  # multi-frame: other frames follow
        raw = arr[fr.frame_index] if fr.frame_index is not None and arr.ndim == 3 else arr
        if raw.ndim != 2:
            raise DicomInputError(f"{fr.source}: expected a 2D greyscale frame, got pixel array of shape {raw.shape}")
        fr.pixels = _hu(raw, fr.slope, fr.intercept, datasets[fr.dataset_index])
    decoded.clear()
    dist = np.array([float(np.dot(f.ipp, normal)) for f in frames])
    keep = [0]
    for k in range(1, len(frames)):
        if abs(dist[k] - dist[keep[-1]]) < 1e-3:
            a, b = frames[keep[-1]], frames[k]
            if np.array_equal(a.pixels, b.pixels):
                notes.append(f"dropped duplicate slice at {dist[k]:.2f} mm ({b.source})")
                continue
            raise DicomInputError(f"series {sname}: two different slices at the same position {dist[k]:.2f} mm "
                                  f"along the normal ({a.source}, {b.source})")
        keep.append(k)
    frames = [frames[k] for k in keep]
    dist = dist[keep]
    if len(frames) < 2:
        raise DicomInputError(f"series {sname}: all images lie at one position; a 3D CT volume needs at least 2 slices")
    return frames, dist


def _gantry_tilt(frames: list[_Frame], dist: np.ndarray, row: np.ndarray, col: np.ndarray, tilt: str, sname: str,
                 notes: list[str]) -> tuple[np.ndarray, bool]:
    """In-plane offsets (mm, along row and column direction) of every slice from the first one, and whether the
    series is tilted (an offset over 0.01 mm); ``tilt="error"`` refuses a tilted series."""
    ipp0 = frames[0].ipp
    offsets = np.array([[np.dot(f.ipp - ipp0, row), np.dot(f.ipp - ipp0, col)] for f in frames])  # mm in plane
    stack_len = dist[-1] - dist[0]
    tilt_deg = float(np.degrees(np.arctan2(np.linalg.norm(offsets[-1]), stack_len)))
    tilted = bool(np.max(np.abs(offsets)) > 0.01)
    if tilted:
        if tilt == "error":
            raise DicomInputError(f"series {sname}: gantry tilt of {tilt_deg:.1f} degrees (slice positions are not "
                                  "along the slice normal); tilted series are refused by configuration")
        notes.append(f"gantry tilt {tilt_deg:.2f} degrees corrected by in-plane resampling onto an orthogonal grid")
    return offsets, tilted


def _slice_spacing(frames: list[_Frame], dist: np.ndarray, normal: np.ndarray, missing_slices: str,
                   nonuniform: str, max_spacing_deviation: float, sname: str, notes: list[str]
                   ) -> tuple[bool, np.ndarray, float]:
    """The output slice grid under the missing-slice and non-uniform policies. Returns (uniform: the slices are
    used as they are, target positions along the normal relative to the first slice (mm), slice spacing (mm))."""
    diffs = np.diff(dist)
    med = float(np.median(diffs))
    gaps = [k for k in range(len(diffs)) if diffs[k] > 1.5 * med]
    if gaps and missing_slices == "error":
        k = gaps[0]
        more = f" and {len(gaps) - 1} more gap(s)" if len(gaps) > 1 else ""
        raise DicomInputError(f"series {sname}: slice missing between z={_z(frames[k], dist[k], normal)} and "
                              f"z={_z(frames[k + 1], dist[k + 1], normal)} mm (spacing {med:g} mm){more}")
    normal_diffs = np.delete(diffs, gaps) if gaps else diffs
    deviation = float(np.max(np.abs(normal_diffs - med)) / med) if len(normal_diffs) else 0.0
    uniform = deviation <= 0.01 and not gaps
    if not uniform and not gaps:
        if nonuniform == "refuse" or (nonuniform == "auto" and deviation > max_spacing_deviation):
            raise DicomInputError(f"series {sname}: slice spacing varies from {diffs.min():g} to {diffs.max():g} mm "
                                  f"({deviation * 100:.0f}% from the median {med:g} mm); irregular series refused")
        notes.append(f"irregular slice spacing ({diffs.min():g}-{diffs.max():g} mm) resampled to {med:g} mm")
    if gaps:
        notes.append(f"{len(gaps)} gap(s) of missing slices filled by linear interpolation")
    stack_len = dist[-1] - dist[0]
    if uniform:
        spacing_z = float(stack_len / (len(frames) - 1))
        targets = dist - dist[0]
    else:
        n_out = int(round(stack_len / med)) + 1
        spacing_z = float(stack_len / (n_out - 1))
        targets = np.arange(n_out) * spacing_z
    return uniform, targets, spacing_z


def _volume(frames: list[_Frame], dist: np.ndarray, offsets: np.ndarray, tilted: bool, uniform: bool,
            targets: np.ndarray, spacing_z: float, axes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> sitk.Image:
    """The float32 HU volume: tilted slices shifted in-plane onto the first slice's grid, non-uniform stacks
    interpolated linearly to ``targets``; LPS geometry (origin = first slice's IPP, direction = axes)."""
    row, col, normal = axes
    rows, cols = frames[0].pixels.shape
    sp_row, sp_col = frames[0].spacing
    stack = [_shift(f.pixels, -off, (sp_col, sp_row)) if tilted else f.pixels for f, off in zip(frames, offsets)]
    if uniform:
        volume = np.stack(stack)
    else:
        rel = dist - dist[0]
        volume = np.empty((len(targets), rows, cols), dtype=np.float32)
        for j, t in enumerate(targets):
            k = int(np.clip(np.searchsorted(rel, t, side="right") - 1, 0, len(rel) - 2))
            w = float(np.clip((t - rel[k]) / (rel[k + 1] - rel[k]), 0.0, 1.0))
            volume[j] = (1 - w) * stack[k] + w * stack[k + 1]
    image = sitk.GetImageFromArray(volume.astype(np.float32, copy=False))
    image.SetSpacing((sp_col, sp_row, spacing_z))
    image.SetOrigin(tuple(float(v) for v in frames[0].ipp))
    image.SetDirection(direction_tuple(np.column_stack([row, col, normal])))
    return image


def _series_volume(image: sitk.Image, frames: list[_Frame], datasets: list[Dataset], kept_paths: list[Path],
                   series: str, for_uid: str, dist: np.ndarray, targets: np.ndarray, notes: list[str]
                   ) -> SeriesVolume:
    """The :class:`SeriesVolume`: headers (pixel data dropped) of the files in slice order, the source instance of
    every output slice (the nearest one), patient/study attributes of the first header."""
    order = list(dict.fromkeys(f.dataset_index for f in frames))
    headers = []
    for i in order:
        ds = datasets[i]
        for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if kw in ds:
                del ds[kw]
        headers.append(ds)
    first = headers[0]
    return SeriesVolume(
        image=image,
        datasets=headers,
        series_uid=series,
        study_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=for_uid,
        sop_class_uid=str(first.SOPClassUID),
        sop_instance_uids=[frames[int(np.argmin(np.abs(dist - dist[0] - t)))].sop_uid for t in targets],
        patient={kw: first[kw].value for kw in PATIENT_KEYWORDS if kw in first},
        study={kw: first[kw].value for kw in STUDY_KEYWORDS if kw in first},
        study_date=str(first.get("StudyDate", "") or ""),
        study_time=str(first.get("StudyTime", "") or ""),
        series_description=str(first.get("SeriesDescription", "") or ""),
        series_number=integer(first, "SeriesNumber", "", required=False) if _int_ok(first, "SeriesNumber") else None,
        modality=str(first.get("Modality", "")),
        windows=window_presets(first),
        slice_positions_mm=[float(v) for v in (dist[0] + targets)],
        notes=notes,
        paths=[kept_paths[i] for i in order],
    )


def window_presets(ds: Dataset) -> list[tuple[float, float, str]]:
    """(center, width, explanation) window presets of a CT header (HU); empty when none is given."""
    def _multi(v):
        if v is None or v == "":
            return []
        return list(v) if isinstance(v, (list, tuple, pydicom.multival.MultiValue)) else [v]
    src = ds
    if "WindowCenter" not in ds and "SharedFunctionalGroupsSequence" in ds:
        voi = _shared_or_frame(ds, None, "FrameVOILUTSequence")
        if voi is not None:
            src = voi
    centers = _multi(src.get("WindowCenter"))
    widths = _multi(src.get("WindowWidth"))
    expl = _multi(src.get("WindowCenterWidthExplanation"))
    out = []
    for i, (c, w) in enumerate(zip(centers, widths)):
        try:
            c, w = float(c), float(w)
        except (TypeError, ValueError):
            continue  # a damaged preset is skipped, it is only a display hint
        if np.isfinite(c) and np.isfinite(w) and w > 0:
            out.append((c, w, str(expl[i]) if i < len(expl) else ""))
    return out


def _int_ok(ds: Dataset, kw: str) -> bool:
    try:
        integer(ds, kw, "", required=True)
        return True
    except DicomInputError:
        return False


def _shift(img2d: np.ndarray, offset_mm: np.ndarray, spacing_xy: tuple[float, float]) -> np.ndarray:
    """Resample a slice so that output point p samples input point p + offset (offset in mm, (row dir, col dir))."""
    im = sitk.GetImageFromArray(img2d)
    im.SetSpacing(spacing_xy)
    tx = sitk.TranslationTransform(2, (float(offset_mm[0]), float(offset_mm[1])))
    out = sitk.Resample(im, im, tx, sitk.sitkLinear, OUTSIDE_HU, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _z(frame: _Frame, d: float, normal: np.ndarray) -> str:
    # report the patient z (S) coordinate for axial series, else the distance along the normal
    if abs(abs(normal[2]) - 1.0) < 1e-3:
        return f"{frame.ipp[2]:.1f}"
    return f"{d:.1f}"


def _fmt(v) -> str:
    return "\\".join(f"{x:.3g}" for x in v)
