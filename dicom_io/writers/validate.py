"""Presence check of Type 1/2 attributes of every mandatory module of a dataset's IOD (via highdicom).

Uses highdicom's module tables (`highdicom._standard_utils`, an internal API of highdicom >= 0.23): a necessary,
not sufficient, check; dciodvfy remains the reference validator.
"""
from __future__ import annotations

from pydicom.dataset import Dataset


def missing_required(ds: Dataset) -> list[str]:
    """One message per mandatory module of ds's IOD whose required (Type 1/2) attributes are not all present.

    Raises ImportError when the installed highdicom lacks its module tables, KeyError for an unknown SOP class.
    """
    from highdicom import _standard_utils as su

    iod = su.get_sop_class_iod_map()[str(ds.SOPClassUID)]
    problems = []
    for module in su.get_iod_module_map()[iod]:
        if module["usage"] != "M":
            continue
        try:
            su.check_required_attributes(ds, module["key"])
        except AttributeError as exc:
            problems.append(f"{module['key']}: {exc}")
    return problems
