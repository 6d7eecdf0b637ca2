"""Routing rules on StudySummary records: every match criterion, series choice, route_study and dry_run."""
from __future__ import annotations

from datetime import date

import pytest

from node.config import ConfigError, NodeConfig, Rule, parse_config, parse_rules
from node.priors.dryrun import dry_run
from node.route.rules import explain_no_route, match_rule, route_study
from node.route.series import pick_series
from node.store.study import PatientIdentity, SeriesSummary, StudySummary

CT = "1.2.840.10008.5.1.4.1.1.2"


def series(uid, modality="CT", desc="Thorax 1.0", n=120, thick=1.0, body="CHEST", itype=("ORIGINAL", "PRIMARY",
                                                                                              "AXIAL")):
    return SeriesSummary(series_uid=uid, modality=modality, description=desc, n_instances=n, slice_thickness_mm=thick,
                         body_part=body, image_type=itype, sop_class_uid=CT if modality == "CT" else "")


def study(uid="1.2.3", *, series_list=None, desc="CT THORAX", ae="CT01", pid="P1", when=date(2024, 3, 10),
          name="Doe^Jane", birth=date(1960, 1, 1)):
    return StudySummary(study_uid=uid, patient=PatientIdentity(pid, "", name, birth), study_date=when,
                        study_description=desc, calling_ae=ae,
                        series=series_list if series_list is not None else [series("1.2.3.1")])


def rule(**match):
    return Rule(name="r", match=match)


def test_default_rule_takes_a_ct_study_and_not_an_mr_study():
    ok, why = match_rule(rule(), study())
    assert ok and "matches" in why
    ok, why = match_rule(rule(), study(series_list=[series("9", modality="MR")]))
    assert not ok and "Modality is MR, not CT" in why


@pytest.mark.parametrize("match,expect_ok,fragment", [
    ({"BodyPartExamined": ["abdomen", "chest"]}, True, "matches"),
    ({"BodyPartExamined": "HEAD"}, False, "BodyPartExamined is CHEST, not one of HEAD"),
    ({"StudyDescription": "thorax"}, True, "matches"),
    ({"StudyDescription": "^abdo"}, False, "StudyDescription 'CT THORAX' does not match /^abdo/"),
    ({"SeriesDescription": r"1\.0$"}, True, "matches"),
    ({"SeriesDescription": "lung"}, False, "does not match /lung/"),
    ({"calling_ae": ["ct01", "CT02"]}, True, "matches"),
    ({"calling_ae": "MR01"}, False, "sent by AE CT01, not one of MR01"),
    ({"slice_thickness_mm": {"max": 1.5}}, True, "matches"),
    ({"slice_thickness_mm": {"min": 2.0}}, False, "1 mm thick, thinner than 2 mm"),
    ({"slice_thickness_mm": {"max": 0.5}}, False, "thicker than 0.5 mm"),
    ({"min_slices": 100}, True, "matches"),
    ({"min_slices": 200}, False, "120 slices, fewer than 200"),
])
def test_each_criterion(match, expect_ok, fragment):
    ok, why = match_rule(rule(**match), study())
    assert ok is expect_ok
    assert fragment in why


def test_series_criteria_must_hold_on_one_series():
    # thin series is a localizer-ish 2-slice one; the 120-slice one is 5 mm: no single series satisfies both
    st = study(series_list=[series("a", n=2, thick=1.0), series("b", n=120, thick=5.0)])
    ok, why = match_rule(rule(slice_thickness_mm={"max": 1.5}, min_slices=50), st)
    assert not ok and "no series qualifies" in why
    ok, _ = match_rule(rule(slice_thickness_mm={"max": 5.0}, min_slices=50), st)
    assert ok


def test_disabled_rule_and_empty_study():
    assert match_rule(Rule(name="off", enabled=False), study()) == (False, "rule 'off' is disabled")
    ok, why = match_rule(rule(), study(series_list=[]))
    assert not ok and "no series" in why


def test_pick_series_prefers_original_large_thin_ct():
    cands = [series("loc", n=2, itype=("ORIGINAL", "PRIMARY", "LOCALIZER")),
             series("thick", n=60, thick=5.0),
             series("thin", n=300, thick=0.625),
             series("mpr", n=400, itype=("DERIVED", "SECONDARY", "MPR"))]
    uid, why = pick_series(cands)
    assert uid == "thin" and "300 slices" in why


def test_route_study_all_matching_rules_fire_with_series_and_reason():
    cfg = NodeConfig(rules=[Rule(name="chest", match={"BodyPartExamined": "CHEST"}, send_to=["local"]),
                            Rule(name="head", match={"BodyPartExamined": "HEAD"}, send_to=["local"]),
                            Rule(name="any-ct", send_to=["local"])])
    st = study(series_list=[series("s1", n=10), series("s2", n=200), series("mr", modality="MR")])
    decisions = route_study(cfg, st)
    assert [d.rule.name for d in decisions] == ["chest", "any-ct"]
    assert all(d.series_uid == "s2" for d in decisions)
    assert "200 slices" in decisions[0].reason
    assert route_study(cfg, study(series_list=[series("mr", modality="MR")])) == []
    assert "Modality is MR" in explain_no_route(cfg, study(series_list=[series("mr", modality="MR")]))


def test_dry_run_names_rule_series_and_local_prior_without_network():
    cfg = parse_config("""
pacs:
  - {name: main, ae_title: PACS, host: 127.0.0.1, port: 1}
rules:
  - name: ct-followup
    match: {Modality: CT}
    prior: {max_age_days: 1000}
    send_to: [local]
""")
    cur = study("cur")
    old = study("old", when=date(2023, 1, 5), series_list=[series("old.1")])
    result = dry_run(cfg, cur, [cur, old])
    r = result.rules[0]
    assert r.matched and r.series_uid == "1.2.3.1" and r.prior_study_uids == ["old"]
    assert "MATCH" in result.text() and "old" in result.text()
    # nothing local: says which PACS would be asked, and never connects (port 1 would fail)
    r2 = dry_run(cfg, cur, [cur]).rules[0]
    assert r2.prior_study_uids == [] and "would search PACS main" in r2.prior_reason
    assert result.as_dict()["rules"][0]["rule"] == "ct-followup"


def test_rule_yaml_errors_name_line_and_key():
    with pytest.raises(ConfigError, match=r"line 3 .*SeriesDescription.*regular expression"):
        parse_rules("- name: x\n  match:\n    SeriesDescription: '(['\n")
    with pytest.raises(ConfigError, match=r"unknown key"):
        parse_rules("- name: x\n  match:\n    SliceThickness: 1\n")


def test_cli_rules_check_and_dry_run(tmp_path, capsys):
    from node.cli import main
    from orthanc_server import small_ct_study

    good = tmp_path / "rules.yaml"
    good.write_text("- name: chest\n  match: {BodyPartExamined: CHEST}\n- name: spare\n  enabled: false\n")
    assert main(["rules", "check", str(good)]) == 0
    assert "OK, 2 rule(s); enabled: chest" in capsys.readouterr().out
    bad = tmp_path / "node.yaml"
    bad.write_text("rules:\n  - name: x\n    send_to: [nowhere]\n")
    assert main(["rules", "check", str(bad)]) == 2
    assert "line 3" in capsys.readouterr().err
    small_ct_study(tmp_path / "cur", patient_id="CLI1")
    small_ct_study(tmp_path / "old", patient_id="CLI1", study_date="20220202", seed=2)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"node: {{data_dir: {tmp_path / 'var'}}}\n")
    assert main(["rules", "dry-run", "--config", str(cfg), "--study", str(tmp_path / "cur"),
                 "--prior", str(tmp_path / "old")]) == 0
    out = capsys.readouterr().out
    assert "[MATCH] rule 'ct-followup'" in out and "2022-02-02" in out
    assert main(["rules", "dry-run", "--config", str(cfg), "--study", "1.2.3"]) == 2
    assert "no node database" in capsys.readouterr().err
