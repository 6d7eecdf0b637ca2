"""The dry run: which rule, which series and which prior a study would get, without retrieving or registering
anything (the console's rules page, ``totalreg rules dry-run``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from node.config import NodeConfig
from node.priors.choice import find_priors
from node.route.rules import match_and_pick
from node.store.study import StudySummary


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
    out = []
    for rule in cfg.rules:
        series_uid, reason = match_and_pick(rule, study)
        item = DryRunRule(rule=rule.name, matched=series_uid is not None, reason=reason, series_uid=series_uid or "",
                          send_to=list(rule.send_to), outputs=list(rule.outputs))
        if series_uid is not None:
            decision = find_priors(cfg, rule, study, candidates, retrieve_into=None, query_pacs=query_pacs)
            item.prior_study_uids = [p.study_uid for p in decision.priors]
            item.prior_reason = decision.reason
            item.flagged = decision.flagged
        out.append(item)
    return DryRun(study_uid=study.study_uid, rules=out)
