"""Series choice: which series of a study (the current one, or a prior's) is registered.

With the spool paths known, ``dicom_io.select_series`` decides on the headers; without them the index's summaries
are ranked (CT image storage, ORIGINAL/PRIMARY, most slices, thinnest slices).
"""
from __future__ import annotations

import logging

from pydicom import dcmread

from node.store.study import SeriesSummary

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
_NON_VOLUME_TYPES = {"LOCALIZER", "SCOUT", "SECONDARY", "DERIVED", "PROJECTION IMAGE", "MIP", "MPR", "DOSE_INFO",
                     "SCREEN_SAVE"}



def describe_series(s: SeriesSummary) -> str:
    """One line naming a series for people: modality, number, description, slices, thickness (mm)."""
    bits = [s.modality or "?"]
    if s.number is not None:
        bits.append(f"#{s.number}")
    if s.description:
        bits.append(repr(s.description))
    bits.append(f"{s.n_instances} slices")
    if s.slice_thickness_mm is not None:
        bits.append(f"{s.slice_thickness_mm:g} mm")
    return " ".join(bits)



def _summary_rank(s: SeriesSummary) -> tuple:
    types = {t.upper() for t in s.image_type}
    volume_class = s.sop_class_uid in ("", CT_IMAGE_STORAGE, ENHANCED_CT_STORAGE)
    original = not (types & _NON_VOLUME_TYPES)
    thickness = s.slice_thickness_mm if s.slice_thickness_mm is not None else 99.0
    return (volume_class, original, s.n_instances >= 3, s.n_instances, -thickness, s.series_uid)


def pick_series(candidates: list[SeriesSummary], *, min_slices: int = 3) -> tuple[str | None, str]:
    """Choose the series to register among ``candidates``: (series uid or None, reason).

    With the spool paths known, ``dicom_io.select_series`` decides on the headers (it rejects localizers,
    non-axial and derived series, our own outputs; None when nothing fits). Without paths the
    summaries are ranked: CT image storage, ORIGINAL/PRIMARY, most slices, thinnest slices.
    """
    if not candidates:
        return None, "no candidate series"
    choice = _select_with_dicom_io(candidates, min_slices)
    if choice is not None:
        return choice
    if len(candidates) == 1:
        return candidates[0].series_uid, f"the only qualifying series ({describe_series(candidates[0])})"
    best = max(candidates, key=_summary_rank)
    return best.series_uid, f"largest original CT series ({describe_series(best)}) of {len(candidates)} qualifying"


def _select_with_dicom_io(candidates: list[SeriesSummary], min_slices: int) -> tuple[str | None, str] | None:
    if not all(s.paths for s in candidates):
        return None
    # reason: dicom_io.selection imports the reader (SimpleITK, ~85 MB); a node process pays only once it routes a study
    from dicom_io.selection import select_series
    try:
        headers = {s.series_uid: [dcmread(p, stop_before_pixels=True) for p in s.paths] for s in candidates}
        choice = select_series(headers, min_slices=min_slices)
    except Exception as exc:  # noqa: BLE001 - fall back to the summary ranking, but say so in the log
        log.warning("dicom_io.select_series failed (%s); ranking series from the index instead", exc)
        return None
    if not choice.series_uid:
        why = "; ".join(f"{uid}: {r}" for uid, r in list(choice.rejected.items())[:3])
        return None, f"no series fit for registration ({why or choice.reason})"
    uid = str(choice.series_uid)
    desc = next((describe_series(s) for s in candidates if s.series_uid == uid), uid)
    return uid, f"{desc}: {choice.reason}"
