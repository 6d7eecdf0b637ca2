"""Label maps -> the network's regions for training (0 = background/unknown, 1..K = network channel + 1).

Regions, their ids and which structure names belong to each are defined once in :mod:`registration_core.regions`;
this module adds the training data's two sources of labels: the synthetic phantom's label ids and
TotalSegmentator-style classmap files (``{id: name}``), so any TotalSegmentator task or version works as long as
its names are given.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..regions import apply_lut, lut_from_names, region_of_name
from ..synthetic.phantom import LABEL_NAMES

__all__ = ["apply_lut", "load_classmap", "lut_from_names", "phantom_lut", "region_of_name"]


def phantom_lut() -> np.ndarray:
    """Lookup table (uint8, 65536 entries) label id -> region id for the synthetic phantom's labels."""
    return lut_from_names(LABEL_NAMES)


def load_classmap(path: str | Path) -> dict:
    """Read a classmap JSON ``{"1": "spleen", ...}`` (TotalSegmentator's ``classmap_total.json`` format)."""
    with open(path) as fh:
        data = json.load(fh)
    return {int(k): str(v) for k, v in data.items()}
