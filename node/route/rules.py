"""Routing rules: which received studies a rule takes and which series of the study is registered.

A rule (``node.config.Rule``) matches a study when every criterion in ``rule.match`` holds:

- study-level: ``StudyDescription`` (regular expression, searched, case-insensitive; RE2 syntax, matched in linear
  time by :mod:`node.rule_patterns` so no pattern can stall the node) and ``calling_ae`` (the AE title
  that sent the study, one of a list, case-insensitive);
- series-level, all on the SAME series: ``Modality``, ``BodyPartExamined`` (one of a list), ``SeriesDescription``
  (regular expression), ``slice_thickness_mm`` (min/max, mm) and ``min_slices`` (instances in the series).

The series to register is picked among the series that satisfy the series-level criteria, with
``dicom_io.select_series`` on their headers when the spool files are at hand, else by the same preferences on the
index's summary (original/primary axial CT image storage, most slices, thinnest slices). Every rule that matches
gives one :class:`RouteDecision` (several rules may fire for one study; each becomes its own job).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from node.config import NodeConfig, Rule
from node.rule_patterns import search as pattern_search
from node.route.series import describe_series, pick_series
from node.store.study import SeriesSummary, StudySummary

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RouteDecision:
    """A rule that takes the study, the series it registers, and why (plain words)."""

    rule: Rule
    series_uid: str
    reason: str


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


def series_mismatch(rule: Rule, s: SeriesSummary) -> str | None:
    """Why series ``s`` fails the rule's series-level criteria (None when it satisfies all of them)."""
    m = rule.match
    if m.Modality and s.modality.upper() != m.Modality.upper():
        return f"Modality is {s.modality or 'empty'}, not {m.Modality}"
    parts = [p.upper() for p in _as_list(m.BodyPartExamined)]
    if parts and s.body_part.upper() not in parts:
        return f"BodyPartExamined is {s.body_part or 'empty'}, not one of {', '.join(parts)}"
    if m.SeriesDescription and not pattern_search(m.SeriesDescription, s.description or ""):
        return f"SeriesDescription {s.description!r} does not match /{m.SeriesDescription}/"
    rng = m.slice_thickness_mm
    if rng is not None and (rng.min is not None or rng.max is not None):
        t = s.slice_thickness_mm
        if t is None:
            return "SliceThickness unknown"
        if rng.min is not None and t < rng.min - 1e-6:
            return f"slices {t:g} mm thick, thinner than {rng.min:g} mm"
        if rng.max is not None and t > rng.max + 1e-6:
            return f"slices {t:g} mm thick, thicker than {rng.max:g} mm"
    if m.min_slices is not None and s.n_instances < m.min_slices:
        return f"{s.n_instances} slices, fewer than {m.min_slices}"
    return None


def _study_mismatch(rule: Rule, study: StudySummary) -> str | None:
    m = rule.match
    if m.StudyDescription and not pattern_search(m.StudyDescription, study.study_description or ""):
        return f"StudyDescription {study.study_description!r} does not match /{m.StudyDescription}/"
    callers = [c.upper() for c in _as_list(m.calling_ae)]
    if callers and (study.calling_ae or "").strip().upper() not in callers:
        return f"sent by AE {study.calling_ae or '(unknown)'}, not one of {', '.join(callers)}"
    return None


def candidate_series(rule: Rule, study: StudySummary) -> tuple[list[SeriesSummary], dict[str, str]]:
    """(series satisfying the rule's series-level criteria, {rejected series uid: why})."""
    ok, rejected = [], {}
    for s in study.series:
        why = series_mismatch(rule, s)
        if why is None:
            ok.append(s)
        else:
            rejected[s.series_uid] = why
    return ok, rejected


def match_rule(rule: Rule, study: StudySummary) -> tuple[bool, str]:
    """Does ``rule`` take ``study``? Returns (matched, plain reason naming the first failed criterion)."""
    if not rule.enabled:
        return False, f"rule '{rule.name}' is disabled"
    why = _study_mismatch(rule, study)
    if why:
        return False, f"rule '{rule.name}' does not match: {why}"
    if not study.series:
        return False, f"rule '{rule.name}' does not match: the study has no series"
    ok, rejected = candidate_series(rule, study)
    if not ok:
        reasons = "; ".join(f"{describe_series(s)}: {rejected[s.series_uid]}" for s in study.series[:4])
        more = f" (and {len(study.series) - 4} more)" if len(study.series) > 4 else ""
        return False, f"rule '{rule.name}' does not match: no series qualifies ({reasons}{more})"
    return True, f"rule '{rule.name}' matches: {len(ok)} of {len(study.series)} series qualify"


def route_study(cfg: NodeConfig, study: StudySummary) -> list[RouteDecision]:
    """Every enabled rule of ``cfg`` that takes ``study``, with the series to register and why.

    An empty list means no rule takes the study (see :func:`explain_no_route` for the reasons)."""
    out = []
    for rule in cfg.rules:
        matched, reason = match_and_pick(rule, study)
        if matched is None:
            continue
        out.append(RouteDecision(rule=rule, series_uid=matched, reason=reason))
    return out


def match_and_pick(rule: Rule, study: StudySummary) -> tuple[str | None, str]:
    """(series uid to register or None, plain reason) for one rule (the matching and the series choice)."""
    ok, reason = match_rule(rule, study)
    if not ok:
        return None, reason
    cands, _ = candidate_series(rule, study)
    series_uid, why = pick_series(cands, min_slices=rule.match.min_slices or 3)
    if series_uid is None:
        return None, f"rule '{rule.name}' does not match: {why}"
    return series_uid, f"{reason}; registering {why}"


def explain_no_route(cfg: NodeConfig, study: StudySummary) -> str:
    """One plain line per rule saying why it does not take ``study``."""
    if not cfg.rules:
        return "no routing rules are configured"
    return "; ".join(match_and_pick(rule, study)[1] for rule in cfg.rules)
