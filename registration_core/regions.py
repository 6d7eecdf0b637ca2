"""The anatomical regions of the network's field decomposition: the one source of truth.

Every user reads regions from here: the network (:mod:`.network`, one velocity sub-field and one weight channel
per region), the synthetic phantom (:mod:`.synthetic.phantom`, which region each phantom label belongs to), the
training data (:mod:`.training.regions`, label maps -> region maps) and the QC picture / report (names, colours).

Conventions:

- region ids are 1..K (:data:`REGION_IDS`); 0 (:data:`BACKGROUND`) is background / unknown. The network's
  channel ``k`` (0-based, in ``weights[:, k]`` and ``subfields[:, k]``) is region id ``k + 1``.
- a TotalSegmentator-style label map is a multi-label integer map with a classmap ``{label id: structure name}``
  (TotalSegmentator's ``classmap_total.json``, e.g. ``tests/data/abdomen_totalseg``). A structure belongs to the
  first region, in :data:`MATCH_ORDER`, one of whose ``keywords`` is a substring of its lower-cased name; names
  that match none belong to :data:`CATCH_ALL` (remaining soft tissue: muscles, fat, skin, brain, ...).
- colours are 8-bit RGB (0..255), chosen to stay apart on a grey CT.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Region:
    """One region: ``id`` (1..K, network channel ``id - 1``), ``name`` (identifier used in reports and label
    tables), ``title`` (for people), ``colour`` (RGB 0..255) and ``keywords`` (substrings of TotalSegmentator
    structure names, lower case; empty for the catch-all region)."""

    id: int
    name: str
    title: str
    colour: tuple[int, int, int]
    keywords: tuple[str, ...]


THORAX = Region(1, "thorax", "lungs / thorax", (70, 150, 255),
                ("lung", "trachea", "bronch", "heart", "atrial", "pulmonary", "esophagus", "thyroid",
                 "superior_vena", "brachiocephalic", "subclavian", "carotid", "airway", "mediastin"))
ABDOMEN = Region(2, "abdomen", "abdominal organs", (255, 150, 40),
                 ("liver", "spleen", "kidney", "stomach", "pancrea", "gallbladder", "bowel", "duodenum", "colon",
                  "bladder", "prostate", "adrenal", "aorta", "inferior_vena", "portal", "iliac", "rectum",
                  "uterus"))
BONES = Region(3, "bones", "bones", (245, 235, 120),
               ("vertebra", "rib_", "ribs", "sternum", "sacrum", "hip", "femur", "humerus", "scapula",
                "clavicula", "skull", "costal_cartilage", "patella", "tibia", "fibula", "radius", "ulna", "bone"))
SOFT_TISSUE = Region(4, "soft_tissue", "remaining soft tissue", (90, 200, 110), ())

#: all regions in id order (index k = network channel k = region id k + 1)
REGIONS: tuple[Region, ...] = (THORAX, ABDOMEN, BONES, SOFT_TISSUE)
#: background / unknown region id (no region)
BACKGROUND = 0
REGION_IDS: tuple[int, ...] = tuple(r.id for r in REGIONS)
REGION_NAMES: tuple[str, ...] = tuple(r.name for r in REGIONS)
#: number of regions = the network's number of sub-fields K
N_REGIONS = len(REGIONS)
#: keyword matching order (first hit wins): bones before thorax before abdomen, e.g. "rib" before "lung"
MATCH_ORDER: tuple[Region, ...] = (BONES, THORAX, ABDOMEN)
#: region of every structure no keyword matches
CATCH_ALL = SOFT_TISSUE
#: RGB of background (id 0) in colour tables
BACKGROUND_COLOUR = (0, 0, 0)


def region(key: int | str) -> Region:
    """The :class:`Region` with this id (1..K) or name (e.g. ``"bones"``); KeyError otherwise."""
    for r in REGIONS:
        if key == r.id or key == r.name:
            return r
    raise KeyError(f"no region {key!r} (ids {REGION_IDS}, names {REGION_NAMES})")


def region_of_name(name: str) -> int:
    """Region id (1 thorax, 2 abdomen, 3 bones, 4 soft tissue) of a structure name (TotalSegmentator style,
    case-insensitive substring match in :data:`MATCH_ORDER`; no match -> :data:`CATCH_ALL`)."""
    n = name.lower()
    for r in MATCH_ORDER:
        if any(k in n for k in r.keywords):
            return r.id
    return CATCH_ALL.id


def labels_of_region(classmap: dict, key: int | str) -> list[int]:
    """Label ids of ``classmap`` (``{label id: structure name}``; label 0 is background and never listed) that
    belong to region ``key`` (id or name), ascending."""
    rid = region(key).id
    return sorted(int(k) for k, v in classmap.items() if int(k) != 0 and region_of_name(str(v)) == rid)


def lut_from_names(names: dict) -> np.ndarray:
    """Lookup table label id -> region id (uint8, 65536 entries) from ``{label id: structure name}``; label 0
    and labels not in ``names`` map to :data:`BACKGROUND`."""
    lut = np.zeros(65536, np.uint8)
    for k, v in names.items():
        if int(k) != 0:
            lut[int(k)] = region_of_name(str(v))
    return lut


def apply_lut(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Region map (uint8) of an integer label array through ``lut``; labels outside 0..65535 become 0."""
    lab = np.asarray(labels).astype(np.int64)
    lab[(lab < 0) | (lab >= len(lut))] = 0
    return lut[lab]


def colour_table() -> np.ndarray:
    """RGB colours (uint8, [K + 1, 3]) indexed by region id; row 0 is :data:`BACKGROUND_COLOUR`."""
    return np.array([BACKGROUND_COLOUR] + [r.colour for r in REGIONS], np.uint8)


def weights_to_rgb(weights: np.ndarray) -> np.ndarray:
    """Colour picture of soft region weights: ``weights`` [K, ...] (channel k = region id k + 1, each voxel's
    weights summing to about 1) -> uint8 RGB [..., 3], the weight-blended region colours (a voxel with weight 1
    on one region shows that region's colour)."""
    w = np.asarray(weights, np.float64)
    if w.shape[0] != N_REGIONS:
        raise ValueError(f"expected {N_REGIONS} region weight channels, got {w.shape[0]}")
    rgb = np.tensordot(np.moveaxis(w, 0, -1), colour_table()[1:].astype(np.float64), axes=([-1], [0]))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
