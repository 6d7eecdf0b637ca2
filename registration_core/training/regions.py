"""Label maps -> the network's K=4 anatomical regions (0 = background/unknown, 1..4 = network region index + 1).

Region ids follow :data:`registration_core.network.REGION_NAMES` (1 lungs/thorax, 2 abdominal organs, 3 bones,
4 remaining soft tissue) and the synthetic phantom's :data:`registration_core.synthetic.REGIONS` (same order).
TotalSegmentator-style multi-label maps are mapped by structure NAME (a classmap ``{id: name}``), so any
TotalSegmentator task or version works as long as its names are given.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: keywords of structure names, checked in this order (first hit wins)
_BONE = ("vertebra", "rib_", "sternum", "sacrum", "hip_", "femur", "humerus", "scapula", "clavicula", "skull",
         "costal_cartilage", "patella", "tibia", "fibula", "radius", "ulna", "bone")
_THORAX = ("lung", "trachea", "bronch", "heart", "atrial", "pulmonary", "esophagus", "thyroid", "superior_vena",
           "brachiocephalic", "subclavian", "carotid", "airway", "mediastin")
_ABDOMEN = ("liver", "spleen", "kidney", "stomach", "pancrea", "gallbladder", "bowel", "duodenum", "colon",
            "bladder", "prostate", "adrenal", "aorta", "inferior_vena", "portal", "iliac", "rectum", "uterus")


def region_of_name(name: str) -> int:
    """Region id (1 thorax, 2 abdomen, 3 bones, 4 soft tissue) of a structure name (TotalSegmentator style)."""
    n = name.lower()
    for rid, keys in ((3, _BONE), (1, _THORAX), (2, _ABDOMEN)):
        if any(k in n for k in keys):
            return rid
    return 4


def lut_from_names(names: dict) -> np.ndarray:
    """Lookup table label id -> region id (uint8, 65536 entries) from ``{label id: structure name}``."""
    lut = np.zeros(65536, np.uint8)
    for k, v in names.items():
        if int(k) != 0:
            lut[int(k)] = region_of_name(str(v))
    return lut


def phantom_lut() -> np.ndarray:
    """Lookup table for the synthetic phantom's labels (``REGION_OF_LABEL``)."""
    from ..synthetic import REGION_OF_LABEL, REGIONS

    rid = {v: k for k, v in REGIONS.items()}
    lut = np.zeros(65536, np.uint8)
    for lab, reg in REGION_OF_LABEL.items():
        lut[int(lab)] = rid[reg]
    return lut


def load_classmap(path: str | Path) -> dict:
    """Read a classmap JSON ``{"1": "spleen", ...}`` (TotalSegmentator's ``classmap_total.json`` format)."""
    with open(path) as fh:
        data = json.load(fh)
    return {int(k): str(v) for k, v in data.items()}


def apply_lut(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Region map (uint8) of an integer label array through ``lut``; labels outside 0..65535 become 0."""
    lab = np.asarray(labels).astype(np.int64)
    lab[(lab < 0) | (lab >= len(lut))] = 0
    return lut[lab]
