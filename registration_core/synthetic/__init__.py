"""Synthetic ground truth: whole-body CT phantom and longitudinal pairs with exact displacement fields.

- :func:`make_phantom` -- random whole-body (thorax-abdomen-pelvis) CT phantom: HU image, labels, label names.
- :data:`REGION_OF_LABEL`, :data:`REGIONS`, :func:`region_map` -- the four engine regions per label.
- :func:`make_longitudinal_pair` -- current/prior scans of one synthetic patient with the exact field.
- :func:`random_realistic_deformation` -- self-supervised pair from any single CT with the exact field.
- :func:`longitudinal_pair` -- a real CT as prior and current scan months apart (motion, breathing, FOV, slices,
  contrast, noise) with the exact field: the accuracy benchmark's evaluation cases.
"""
from .anatomy import Anatomy
from .deformations import PairSample, make_longitudinal_pair, random_realistic_deformation
from .longitudinal import longitudinal_pair
from .phantom import LABEL_NAMES, REGION_OF_LABEL, REGIONS, make_phantom, region_map

__all__ = ["make_phantom", "LABEL_NAMES", "REGION_OF_LABEL", "REGIONS", "region_map", "Anatomy", "PairSample",
           "make_longitudinal_pair", "random_realistic_deformation",
           "longitudinal_pair"]
