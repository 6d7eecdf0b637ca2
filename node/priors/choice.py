"""Find the prior CT of the same patient: locally first, else on the configured PACS (C-FIND, then C-MOVE or C-GET).

Pairing rules (never pair two patients):

- same PatientID, and the same IssuerOfPatientID when both studies carry one;
- an earlier study: StudyDate before the current one's (same day only when both StudyTimes are known and earlier);
  age in days within ``[prior.min_age_days, prior.max_age_days]``;
- the prior must hold a CT series;
- a candidate whose PatientName, PatientBirthDate or PatientSex contradicts the current study's is REFUSED, and the
  decision is ``flagged`` for a person to check (nothing is paired for that rule);
- ``pick: most_recent`` takes the newest qualifying study, ``all_within`` every one at most ``within_days`` old.

Retrieval (only when no local prior qualifies and ``prior.search_pacs``): each PACS of ``cfg.pacs`` in order is asked
with a Study Root C-FIND by PatientID; the chosen study's CT series is found with a series-level C-FIND and
retrieved by C-MOVE to ``move_destination`` (default ``node.ae_title``; the PACS must know that AE) or by C-GET into
``retrieve_into``. Every outcome comes with a plain reason (no earlier study, PACS unreachable, 0xA801 unknown
destination, timeout, ...).
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

from node.config import NodeConfig, PacsConfig, Rule
from node.net import dimse
from node.priors.pacs import (FolderSink, RetrieveSink, dimse_reason, is_transient, query_pacs_series,
                              query_pacs_studies, retrieve_series)
from node.route.series import pick_series
from node.store.study import StudySummary

log = logging.getLogger(__name__)


@dataclass
class PriorDecision:
    """The priors chosen for one current study under one rule, and why (plain words).

    ``flagged`` is True when pairing was refused for a safety reason a person must look at (patient collision).
    ``series`` maps each prior's StudyInstanceUID to the CT series to register. ``notes`` lists what was tried."""

    priors: list[StudySummary]
    reason: str
    flagged: bool = False
    series: dict[str, str] = field(default_factory=dict)
    retrieved_from: str = ""  # PACS name when the prior was retrieved, '' when local
    notes: list[str] = field(default_factory=list)
    #: True when no prior was found only because a PACS could not be reached or timed out: the job should be
    #: retried later rather than closed as "no prior".
    retryable: bool = False


# --------------------------------------------------------------------------------------------------- eligibility

def _time(study: StudySummary) -> str:
    return str(getattr(study, "study_time", "") or "").strip()


def _has_ct(study: StudySummary) -> bool | None:
    """True/False when the study's modalities are known, None when unknown."""
    if study.series:
        return any(s.modality.upper() == "CT" for s in study.series)
    mods = getattr(study, "modalities_in_study", None)
    if mods:
        return any(m.upper() == "CT" for m in mods)
    return None


def _age_days(current: StudySummary, cand: StudySummary) -> int | None:
    if current.study_date is None or cand.study_date is None:
        return None
    return (current.study_date - cand.study_date).days


def ineligible_reason(rule: Rule, current: StudySummary, cand: StudySummary) -> str | None:
    """Why ``cand`` cannot be the prior of ``current`` under ``rule`` (patient identity aside); None when it can."""
    spec = rule.prior
    if cand.study_uid == current.study_uid:
        return "it is the current study"
    if cand.patient.patient_id != current.patient.patient_id:
        return "another PatientID"
    a, b = cand.patient.issuer, current.patient.issuer
    if a and b and a != b:
        return f"IssuerOfPatientID {a} differs from {b}"
    if cand.study_date is None:
        return "it has no StudyDate"
    age = _age_days(current, cand)
    assert age is not None
    if age < 0:
        return f"it is later ({cand.study_date.isoformat()})"
    if age == 0:
        t_cur, t_cand = _time(current), _time(cand)
        if not (t_cur and t_cand):
            return "it is from the same day and the StudyTimes are unknown"
        if t_cand >= t_cur:
            return "it is from the same day but not earlier"
    if age < spec.min_age_days:
        return f"it is {age} days old, less than min_age_days {spec.min_age_days}"
    if age > spec.max_age_days:
        return f"it is {age} days old, more than max_age_days {spec.max_age_days}"
    if _has_ct(cand) is False:
        return "it has no CT series"
    return None


def _identity_conflict(current: StudySummary, cand: StudySummary) -> list[str]:
    return [c for c in current.patient.conflicts_with(cand.patient) if c != "PatientID/IssuerOfPatientID"]


def _collision_reason(current: StudySummary, cand: StudySummary, conflicts: list[str], where: str) -> str:
    what = " and ".join(c.removeprefix("Patient") for c in conflicts)
    what = {"Name": "PatientName", "BirthDate": "PatientBirthDate", "Sex": "PatientSex"}.get(what, what)
    return (f"PatientID {current.patient.patient_id} matches {where} study {cand.study_uid} "
            f"({_date_text(cand)}) but {what} differs: refusing to pair")


def _date_text(st: StudySummary) -> str:
    return st.study_date.isoformat() if st.study_date else "no date"


def _sort_key(st: StudySummary):
    return (st.study_date or _dt.date.min, _time(st))


def choose(rule: Rule, current: StudySummary, candidates: list[StudySummary], where: str = "a local"
           ) -> tuple[list[StudySummary], str, bool]:
    """Apply the pairing rules to ``candidates``: (chosen priors newest first, plain reason, flagged)."""
    if current.study_date is None:
        return [], "the current study has no StudyDate, so no earlier study can be chosen", False
    eligible, skipped = [], []
    for cand in candidates:
        why = ineligible_reason(rule, current, cand)
        if why is None:
            eligible.append(cand)
        elif why not in ("it is the current study", "another PatientID"):
            skipped.append(f"{cand.study_uid} ({_date_text(cand)}): {why}")
    for cand in eligible:
        conflicts = _identity_conflict(current, cand)
        if conflicts:
            return [], _collision_reason(current, cand, conflicts, where), True
    if not eligible:
        if skipped:
            return [], f"no earlier CT study qualifies ({'; '.join(skipped[:3])})", False
        return [], "no earlier study of this patient", False
    eligible.sort(key=_sort_key, reverse=True)
    if rule.prior.pick == "all_within":
        within = rule.prior.within_days or rule.prior.max_age_days
        chosen = [c for c in eligible if (_age_days(current, c) or 0) <= within]
        if not chosen:
            return [], f"no earlier study within {within} days (newest is {_date_text(eligible[0])})", False
        return chosen, f"{len(chosen)} earlier studies within {within} days", False
    best = eligible[0]
    return [best], f"most recent earlier study {best.study_uid} ({_date_text(best)}, " \
                   f"{_age_days(current, best)} days before)", False


def prior_series(prior: StudySummary) -> tuple[str, str] | None:
    """The CT series of ``prior`` to register: (series uid, reason), or None when it holds no CT series."""
    ct = [s for s in prior.series if s.modality.upper() == "CT"]
    if not ct:
        return None
    uid, why = pick_series(ct)
    return (uid, why) if uid else None


def find_priors(cfg: NodeConfig, rule: Rule, current: StudySummary, local_studies: list[StudySummary], *,
                retrieve_into: RetrieveSink | str | Path | None, query_pacs: bool = True) -> PriorDecision:
    """Choose the prior(s) of ``current`` under ``rule``: locally held ones first, else from the configured PACS.

    ``local_studies``: studies already held (e.g. ``index.studies_for_patient``; the current one may be included).
    ``retrieve_into``: a :class:`RetrieveSink` (or a folder path, giving a :class:`FolderSink`) receiving a retrieved
    prior; None means query only (dry run: nothing is retrieved). ``query_pacs`` False keeps it offline.
    Never raises for network problems: the decision's ``reason`` says in plain words what happened."""
    priors, reason, flagged = choose(rule, current, local_studies, where="a local")
    if flagged:
        return PriorDecision([], reason, flagged=True)
    notes = [f"local: {reason}"]
    if priors:
        return _with_series(PriorDecision(priors, f"local {reason}", notes=notes))
    if not rule.prior.search_pacs:
        return PriorDecision([], f"{reason}; searching the PACS is off for rule '{rule.name}'", notes=notes)
    if not cfg.pacs:
        return PriorDecision([], f"{reason} received, and no PACS is configured to search", notes=notes)
    if not query_pacs:
        names = ", ".join(p.name for p in cfg.pacs)
        return PriorDecision([], f"{reason} received; would search PACS {names}", notes=notes)
    sink: RetrieveSink | None
    sink = FolderSink(retrieve_into) if isinstance(retrieve_into, (str, Path)) else retrieve_into
    local_uids = {s.study_uid for s in local_studies}
    transient = False  # a PACS was unreachable or timed out: "no prior" would be premature
    transient_failures: list = []
    for pacs in cfg.pacs:
        try:
            found = [s for s in query_pacs_studies(cfg, pacs, current) if s.study_uid not in local_uids]
        except dimse.DimseError as exc:
            notes.append(dimse_reason(pacs, exc, "C-FIND"))
            transient = transient or is_transient(exc)
            continue
        chosen, why, flagged = choose(rule, current, found, where=f"PACS '{pacs.name}'")
        if flagged:
            return PriorDecision([], why, flagged=True, notes=notes + [why])
        if not chosen:
            notes.append(f"PACS '{pacs.name}': {why}")
            continue
        decision = _retrieve_from(cfg, pacs, chosen, sink, notes, transient_failures)
        if decision is not None:
            return decision
        transient = transient or bool(transient_failures)
    return PriorDecision([], "; ".join(notes[1:]) if len(notes) > 1 else reason, notes=notes, retryable=transient)


def _retrieve_from(cfg: NodeConfig, pacs: PacsConfig, chosen: list[StudySummary], sink: RetrieveSink | None,
                   notes: list[str], transient_failures: list) -> PriorDecision | None:
    got: list[StudySummary] = []
    series_of: dict[str, str] = {}
    for st in chosen:
        try:
            series = [s for s in query_pacs_series(cfg, pacs, st) if s.modality.upper() == "CT"]
        except dimse.DimseError as exc:
            notes.append(dimse_reason(pacs, exc, "series C-FIND"))
            if is_transient(exc):
                transient_failures.append(exc)
            return None
        if not series:
            notes.append(f"PACS '{pacs.name}': study {st.study_uid} ({_date_text(st)}) has no CT series")
            continue
        st.series = series
        pick = prior_series(st)
        if pick is None:
            notes.append(f"PACS '{pacs.name}': study {st.study_uid} has no CT series fit for registration")
            continue
        series_uid = pick[0]
        if sink is None:
            notes.append(f"would retrieve series {series_uid} of study {st.study_uid} from PACS '{pacs.name}'")
            got.append(st)
            series_of[st.study_uid] = series_uid
            continue
        how = "WADO-RS" if pacs.kind == "dicomweb" else "C-GET" if pacs.retrieve == "get" else "C-MOVE"
        try:
            res = retrieve_series(cfg, pacs, st.study_uid, series_uid, sink)
        except dimse.DimseError as exc:
            notes.append(dimse_reason(pacs, exc, how, pacs.move_destination or cfg.node.ae_title))
            return PriorDecision([], notes[-1], notes=notes, retryable=is_transient(exc))
        held = sink.summary(st.study_uid)
        arrived = [s for s in (held.series if held else []) if s.series_uid == series_uid]
        if not arrived or not arrived[0].paths:
            notes.append(f"PACS '{pacs.name}' reported {how} success ({res.completed} completed) but no instance "
                         f"of series {series_uid} arrived at the node")
            return PriorDecision([], notes[-1], notes=notes)
        held.source = pacs.name
        held.series = arrived
        got.append(held)
        series_of[st.study_uid] = series_uid
        notes.append(f"retrieved {len(arrived[0].paths)} instances of study {st.study_uid} "
                      f"({_date_text(st)}) from PACS '{pacs.name}' by {how}")
    if not got:
        return None
    verb = "found" if sink is None else "retrieved"
    reason = f"prior {', '.join(f'{g.study_uid} ({_date_text(g)})' for g in got)} {verb} on PACS '{pacs.name}'"
    return PriorDecision(got, reason, series=series_of, retrieved_from=pacs.name, notes=notes)


def _with_series(decision: PriorDecision) -> PriorDecision:
    """Fill ``decision.series`` for local priors (their CT series); drop priors without a CT series."""
    kept = []
    for p in decision.priors:
        pick = prior_series(p)
        if pick is None:
            decision.notes.append(f"local study {p.study_uid} has no CT series fit for registration")
            continue
        decision.series[p.study_uid] = pick[0]
        kept.append(p)
    if not kept:
        decision.reason = "; ".join(decision.notes[1:]) or "no CT series in the local prior"
    decision.priors = kept
    return decision
