"""One source of truth for regions: every user (network, phantom, training data, QC colours) draws from
registration_core.regions, and they agree."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import registration_core
from registration_core import regions as R
from registration_core.network import DEFAULT_WEIGHTS, TotalRegNet, load_network
from registration_core.synthetic import LABEL_NAMES, REGION_OF_LABEL, REGIONS, make_phantom, region_map
from registration_core.training.regions import load_classmap, phantom_lut

DATA = Path(__file__).resolve().parents[1] / "data" / "abdomen_totalseg"


def test_ids_names_and_channels_agree():
    assert R.REGION_IDS == (1, 2, 3, 4) and R.BACKGROUND == 0
    assert R.REGION_NAMES == ("thorax", "abdomen", "bones", "soft_tissue")
    assert [R.region(n).id for n in R.REGION_NAMES] == list(R.REGION_IDS)
    # network channel k <-> region id k + 1: the untrained default and the shipped model have K = N_REGIONS
    assert TotalRegNet().n_regions == R.N_REGIONS
    assert load_network(DEFAULT_WEIGHTS).n_regions == R.N_REGIONS
    # the phantom's region table is the same one
    assert REGIONS == {r.id: r.name for r in R.REGIONS}
    assert set(REGION_OF_LABEL.values()) == set(R.REGION_NAMES)
    with pytest.raises(KeyError):
        R.region(5)


def test_phantom_region_map_uses_the_region_ids():
    img, lab, names = make_phantom(spacing=8.0, fov_mm=(240.0, 240.0, 320.0), seed=3)
    reg = sitk.GetArrayFromImage(region_map(lab))
    labs = sitk.GetArrayFromImage(lab)
    assert set(np.unique(reg)) == {R.BACKGROUND, *R.REGION_IDS}
    assert np.array_equal(reg, phantom_lut()[labs])   # training's phantom table = the phantom's own map
    for lab_id, name in names.items():
        if lab_id and (labs == lab_id).any():
            assert set(np.unique(reg[labs == lab_id])) == {R.region(REGION_OF_LABEL[lab_id]).id}
    assert REGION_OF_LABEL[[k for k, v in LABEL_NAMES.items() if v == "ribs"][0]] == "bones"
    assert REGION_OF_LABEL[[k for k, v in LABEL_NAMES.items() if v == "lung_left"][0]] == "thorax"


def test_totalsegmentator_labels_per_region():
    cm = load_classmap(DATA / "classmap_total.json")
    by_region = {r.name: R.labels_of_region(cm, r.name) for r in R.REGIONS}
    ids = [i for v in by_region.values() for i in v]
    assert sorted(ids) == sorted(k for k in cm if k != 0)               # every structure in exactly one region
    name = {v: k for k, v in cm.items()}
    assert name["liver"] in by_region["abdomen"] and name["aorta"] in by_region["abdomen"]
    assert name["lung_upper_lobe_left"] in by_region["thorax"] and name["heart"] in by_region["thorax"]
    assert name["rib_left_3"] in by_region["bones"] and name["vertebrae_L1"] in by_region["bones"]
    assert name["gluteus_maximus_left"] in by_region["soft_tissue"]
    lut = R.lut_from_names(cm)
    assert lut[name["liver"]] == R.ABDOMEN.id and lut[0] == R.BACKGROUND


def test_colours_for_qc():
    table = R.colour_table()
    assert table.shape == (R.N_REGIONS + 1, 3) and tuple(table[0]) == R.BACKGROUND_COLOUR
    assert len({tuple(c) for c in table}) == R.N_REGIONS + 1                # distinct colours
    w = np.zeros((R.N_REGIONS, 2, 1))
    w[2, 0, 0] = 1.0                                                          # pure bones
    w[0, 1, 0] = w[1, 1, 0] = 0.5                                             # half thorax, half abdomen
    rgb = R.weights_to_rgb(w)
    assert rgb.shape == (2, 1, 3) and tuple(rgb[0, 0]) == R.BONES.colour
    assert tuple(rgb[1, 0]) == tuple(np.rint((np.array(R.THORAX.colour) + R.ABDOMEN.colour) / 2).astype(int))


def test_no_other_module_defines_region_names():
    """No module but regions.py holds a collection literal with two or more region names."""
    root = Path(registration_core.__file__).parent
    names = set(R.REGION_NAMES)
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "regions.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                elts = node.values if isinstance(node, ast.Dict) else node.elts
                hits = {e.value for e in elts if isinstance(e, ast.Constant) and e.value in names}
                if len(hits) >= 2:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
