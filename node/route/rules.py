"""Routing rules: which received studies a rule takes, which series of the study is registered, and a dry run.

A rule (``node.config.Rule``) matches a study when every criterion in ``rule.match`` holds:

- study-level: ``StudyDescription`` (regular expression, searched, case-insensitive; RE2 syntax, matched in linear
  time by :mod:`node.route.rule_patterns` so no pattern can stall the node) and ``calling_ae`` (the AE title
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
from dataclasses import dataclass, field
from typing import Any

from node.config import NodeConfig, Rule
from node.route.rule_patterns import search as pattern_search
from node.store.study import SeriesSummary, StudySummary

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
_NON_VOLUME_TYPES = {"LOCALIZER", "SCOUT", "SECONDARY", "DERIVED", "PROJECTION IMAGE", "MIP", "MPR", "DOSE_INFO",
                     "SCREEN_SAVE"}


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


def _describe_series(s: SeriesSummary) -> str:
    bits = [s.modality or "?"]
    if s.number is not None:
        bits.append(f"#{s.number}")
    if s.description:
        bits.append(repr(s.description))
    bits.append(f"{s.n_instances} slices")
    if s.slice_thickness_mm is not None:
        bits.append(f"{s.slice_thickness_mm:g} mm")
    return " ".join(bits)


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
        reasons = "; ".join(f"{_describe_series(s)}: {rejected[s.series_uid]}" for s in study.series[:4])
        more = f" (and {len(study.series) - 4} more)" if len(study.series) > 4 else ""
        return False, f"rule '{rule.name}' does not match: no series qualifies ({reasons}{more})"
    return True, f"rule '{rule.name}' matches: {len(ok)} of {len(study.series)} series qualify"


# ------------------------------------------------------------------------------------------- series selection

def _summary_rank(s: SeriesSummary) -> tuple:
    types = {t.upper() for t in s.image_type}
    volume_class = s.sop_class_uid in ("", CT_IMAGE_STORAGE, ENHANCED_CT_STORAGE)
    original = not (types & _NON_VOLUME_TYPES)
    thickness = s.slice_thickness_mm if s.slice_thickness_mm is not None else 99.0
    return (volume_class, original, s.n_instances >= 3, s.n_instances, -thickness, s.series_uid)


def pick_series(candidates: list[SeriesSummary], *, min_slices: int = 3) -> tuple[str | None, str]:
    """Choose the series to register among ``candidates``: (series uid or None, reason).

    With the spool paths known, ``dicom_io.select_series`` decides on the headers (it rejects localizers,
    non-axial and derived series, our own outputs; None when nothing fits). Without paths (or without dicom_io) the
    summaries are ranked: CT image storage, ORIGINAL/PRIMARY, most slices, thinnest slices.
    """
    if not candidates:
        return None, "no candidate series"
    choice = _select_with_dicom_io(candidates, min_slices)
    if choice is not None:
        return choice
    if len(candidates) == 1:
        return candidates[0].series_uid, f"the only qualifying series ({_describe_series(candidates[0])})"
    best = max(candidates, key=_summary_rank)
    return best.series_uid, f"largest original CT series ({_describe_series(best)}) of {len(candidates)} qualifying"


def _select_function():
    try:
        from dicom_io import select_series  # type: ignore[attr-defined]
    except ImportError:
        try:
            from dicom_io.selection import select_series  # type: ignore[no-redef]
        except ImportError:
            return None
    return select_series


def _select_with_dicom_io(candidates: list[SeriesSummary], min_slices: int) -> tuple[str | None, str] | None:
    select_series = _select_function()
    if select_series is None or not all(s.paths for s in candidates):
        return None
    try:
        from pydicom import dcmread

        headers = {s.series_uid: [dcmread(p, stop_before_pixels=True) for p in s.paths] for s in candidates}
        choice = select_series(headers, min_slices=min_slices)
    except Exception as exc:  # noqa: BLE001 - fall back to the summary ranking, but say so in the log
        log.warning("dicom_io.select_series failed (%s); ranking series from the index instead", exc)
        return None
    if not getattr(choice, "series_uid", None):
        rejected = getattr(choice, "rejected", {}) or {}
        why = "; ".join(f"{uid}: {r}" for uid, r in list(rejected.items())[:3])
        return None, f"no series fit for registration ({why or getattr(choice, 'reason', '')})"
    uid = str(choice.series_uid)
    desc = next((_describe_series(s) for s in candidates if s.series_uid == uid), uid)
    return uid, f"{desc}: {getattr(choice, 'reason', 'chosen by dicom_io.select_series')}"


def route_study(cfg: NodeConfig, study: StudySummary) -> list[RouteDecision]:
    """Every enabled rule of ``cfg`` that takes ``study``, with the series to register and why.

    An empty list means no rule takes the study (see :func:`explain_no_route` for the reasons)."""
    out = []
    for rule in cfg.rules:
        matched, reason = _match_and_pick(rule, study)
        if matched is None:
            continue
        out.append(RouteDecision(rule=rule, series_uid=matched, reason=reason))
    return out


def _match_and_pick(rule: Rule, study: StudySummary) -> tuple[str | None, str]:
    """(series uid to register or None, plain reason) for one rule."""
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
    return "; ".join(_match_and_pick(rule, study)[1] for rule in cfg.rules)


# ----------------------------------------------------------------------------------------------------- dry run

@dataclass
class DryRunRule:
    """One rule's verdict in a dry run."""

    rule: str
    matched: bool
    reason: str
    series_uid: str = ""
    prior_study_uids: list[str] = field(default_factory=list)
    prior_reason: str = ""
    flagged: bool = False
    send_to: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


@dataclass
class DryRun:
    """Which rule and which prior a study would get; ``text()`` for people, ``as_dict()`` for the console/API."""

    study_uid: str
    rules: list[DryRunRule]

    def as_dict(self) -> dict:
        """JSON-serialisable form."""
        return {"study_uid": self.study_uid, "rules": [r.__dict__ for r in self.rules]}

    def text(self) -> str:
        """Plain-text report, one block per rule."""
        lines = [f"Study {self.study_uid}:"]
        if not any(r.matched for r in self.rules):
            lines.append("  no rule takes this study; nothing would be processed")
        for r in self.rules:
            mark = "MATCH" if r.matched else "skip "
            lines.append(f"  [{mark}] {r.reason}")
            if r.matched:
                lines.append(f"          series: {r.series_uid}")
                prior = ", ".join(r.prior_study_uids) or "none"
                flag = " [FLAGGED]" if r.flagged else ""
                lines.append(f"          prior:  {prior}{flag} - {r.prior_reason}")
                lines.append(f"          outputs {', '.join(r.outputs)} -> {', '.join(r.send_to) or '(nowhere)'}")
        return "\n".join(lines)


def dry_run(cfg: NodeConfig, study: StudySummary, candidates: list[StudySummary], *,
            query_pacs: bool = False) -> DryRun:
    """What would happen to ``study``: every rule's verdict, the series chosen and the prior it would pair with.

    ``candidates`` are locally held studies (e.g. ``index.studies_for_patient``). With ``query_pacs`` False (the
    default) no network is used: when no local prior qualifies the prior reason says which PACS would be asked.
    Nothing is retrieved in any case."""
    from node.priors.choice import find_priors

    out = []
    for rule in cfg.rules:
        series_uid, reason = _match_and_pick(rule, study)
        item = DryRunRule(rule=rule.name, matched=series_uid is not None, reason=reason, series_uid=series_uid or "",
                          send_to=list(rule.send_to), outputs=list(rule.outputs))
        if series_uid is not None:
            decision = find_priors(cfg, rule, study, candidates, retrieve_into=None, query_pacs=query_pacs)
            item.prior_study_uids = [p.study_uid for p in decision.priors]
            item.prior_reason = decision.reason
            item.flagged = decision.flagged
        out.append(item)
    return DryRun(study_uid=study.study_uid, rules=out)
