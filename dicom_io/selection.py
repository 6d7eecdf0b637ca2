"""Pick the series of a CT study to register, from headers only (no pixel data needed).

Rules (each rejection is recorded in plain words):
- only CT image SOP classes with Modality CT (dose reports, secondary captures, REG/SR objects are rejected);
- never a localizer/scout: ImageType containing LOCALIZER, fewer than `min_slices` images, or non-axial
  orientation (judged from ImageOrientationPatient: slice normal within ~25 degrees of the patient S axis,
  not from SeriesDescription);
- never our own outputs or other derived resamplings: Manufacturer "TotalRegistrator Node", Derivation Code
  DCM 113085 (spatial resampling), or a SeriesDescription "PRIOR ... REGISTERED TO ..." / "SUBTRACTION ...";
- series with slice thickness > `max_thickness_mm` (5 mm) are rejected when a thinner candidate exists.
Ranking of the rest: ORIGINAL before DERIVED, then coverage along the slice normal (in 2 cm bins), then slice
thickness inside 1-3 mm, then closeness to 2 mm, then more slices.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from pydicom.dataset import Dataset

from .errors import DicomInputError
from .reader import CT_SOP_CLASSES, _frames_of

OUR_MANUFACTURER = "TotalRegistrator Node"
_OUR_DESCRIPTION = re.compile(r"^(PRIOR .* REGISTERED TO|SUBTRACTION )", re.IGNORECASE)


@dataclass
class SeriesChoice:
    """Outcome of select_series: the chosen SeriesInstanceUID (None if nothing fits), why, and why not the others."""

    series_uid: str | None
    reason: str
    rejected: dict[str, str] = field(default_factory=dict)
    candidates: dict[str, dict] = field(default_factory=dict)


def _group(headers) -> "OrderedDict[str, list[Dataset]]":
    if isinstance(headers, Mapping):
        return OrderedDict((str(k), list(v)) for k, v in headers.items())
    groups: OrderedDict[str, list[Dataset]] = OrderedDict()
    for ds in headers:
        if isinstance(ds, (list, tuple)):
            for d in ds:
                groups.setdefault(str(d.get("SeriesInstanceUID", "")), []).append(d)
        else:
            groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    return groups


def _has_code(ds: Dataset, value: str) -> bool:
    for item in ds.get("DerivationCodeSequence", []) or []:
        if str(item.get("CodeValue", "")) == value:
            return True
    for item in ds.get("SharedFunctionalGroupsSequence", []) or []:
        for der in item.get("DerivationImageSequence", []) or []:
            if _has_code(der, value):
                return True
    return False


def _describe(uid: str, dss: list[Dataset], min_slices: int) -> tuple[dict | None, str | None]:
    ds = dss[0]
    modality = str(ds.get("Modality", ""))
    sop_class = str(ds.get("SOPClassUID", ""))
    desc = str(ds.get("SeriesDescription", "") or "")
    if modality != "CT":
        return None, f"modality {modality or 'missing'}, not CT"
    if sop_class not in CT_SOP_CLASSES:
        kind = "secondary capture" if sop_class.startswith("1.2.840.10008.5.1.4.1.1.7") else \
            "structured report (e.g. dose report)" if sop_class.startswith("1.2.840.10008.5.1.4.1.1.88") else \
            f"SOP class {sop_class}"
        return None, f"{kind}, not a CT image series"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or ds.get("FrameType") or [])]
    if "LOCALIZER" in image_type:
        return None, "localizer/scout (ImageType LOCALIZER)"
    if str(ds.get("Manufacturer", "")) == OUR_MANUFACTURER or _has_code(ds, "113085") or _OUR_DESCRIPTION.match(desc):
        return None, "derived series produced by a registration node (resampled prior or subtraction)"
    try:
        frames = [fr for i, d in enumerate(dss) for fr in _frames_of(d, i, str(d.get("SOPInstanceUID", "")))]
    except DicomInputError as exc:
        return None, f"no usable geometry ({exc})"
    n = len(frames)
    if n < min_slices:
        return None, f"only {n} image(s), fewer than {min_slices} (localizer or partial series)"
    iop = frames[0].iop
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    if abs(normal[2]) < 0.9:
        plane = "sagittal" if abs(normal[0]) > abs(normal[1]) else "coronal"
        return None, f"not axial ({plane} orientation from ImageOrientationPatient)"
    pos = np.array(sorted(float(np.dot(fr.ipp, normal)) for fr in frames))
    spacing = float(np.median(np.diff(pos))) if n > 1 else 0.0
    thick = ds.get("SliceThickness")
    if thick in (None, ""):
        shared = ds.get("SharedFunctionalGroupsSequence")
        try:
            thick = shared[0].PixelMeasuresSequence[0].get("SliceThickness")
        except (TypeError, AttributeError, IndexError, KeyError):
            thick = None
    thickness = float(thick) if thick not in (None, "") else spacing
    coverage = float(pos[-1] - pos[0] + spacing)
    return {
        "original": bool(image_type) and image_type[0] == "ORIGINAL",
        "thickness_mm": thickness,
        "coverage_mm": coverage,
        "slices": n,
        "description": desc,
    }, None


def select_series(headers: Iterable[Dataset] | Mapping[str, Sequence[Dataset]], *, min_slices: int = 10,
                  max_thickness_mm: float = 5.0, raise_if_none: bool = False) -> SeriesChoice:
    """Choose the CT series of one study to register.

    `headers`: pydicom Datasets of all instances of the study (any order, pixel data not needed) or a mapping
    SeriesInstanceUID -> datasets.  Thickness and coverage are in mm (coverage along the slice normal).
    Returns SeriesChoice(series_uid, reason, rejected={uid: why}); series_uid is None when no series fits
    (or DicomInputError is raised with every reason when `raise_if_none`).
    """
    groups = _group(headers)
    rejected: dict[str, str] = {}
    cand: dict[str, dict] = {}
    for uid, dss in groups.items():
        info, why = _describe(uid, dss, min_slices)
        if why:
            rejected[uid] = why
        else:
            cand[uid] = info
    thin = {u: c for u, c in cand.items() if c["thickness_mm"] <= max_thickness_mm}
    if thin:
        for u, c in cand.items():
            if u not in thin:
                rejected[u] = (f"slice thickness {c['thickness_mm']:g} mm > {max_thickness_mm:g} mm while a thinner "
                               "series exists")
        cand_use = thin
    else:
        cand_use = cand
    if not cand_use:
        reason = "no CT series suitable for registration: " + "; ".join(f"{u}: {w}" for u, w in rejected.items())
        if raise_if_none:
            raise DicomInputError(reason)
        return SeriesChoice(None, reason, rejected, cand)

    def key(u):
        c = cand_use[u]
        t = c["thickness_mm"]
        return (c["original"], round(c["coverage_mm"] / 20.0), 1.0 <= t <= 3.0, -abs(t - 2.0), c["slices"])

    ranked = sorted(cand_use, key=key, reverse=True)
    best = ranked[0]
    c = cand_use[best]
    reason = (f"axial {'ORIGINAL' if c['original'] else 'DERIVED'} CT, {c['slices']} slices, "
              f"{c['thickness_mm']:g} mm thick, {c['coverage_mm']:.0f} mm coverage"
              + (f" ('{c['description']}')" if c["description"] else ""))
    for u in ranked[1:]:
        o = cand_use[u]
        rejected[u] = (f"ranked below {best}: {'ORIGINAL' if o['original'] else 'DERIVED'}, {o['thickness_mm']:g} mm, "
                       f"{o['coverage_mm']:.0f} mm coverage")
    return SeriesChoice(best, reason, rejected, cand)
