"""Quality control of a registration, in ONE place: the numbers read from the engine's report and the thresholds
(``qc`` in node.yaml, :class:`node.config.QcThresholds`) beyond which a job is flagged 'suspicious'. The worker
records them with the job; the console shows them.

Numbers: ``similarity_before`` / ``similarity_after`` (unitless, higher is better: the engine's
``report["similarity"]["identity"]`` and ``["final"]``), ``folding_percent`` (% of voxels with Jacobian
determinant <= 0) and ``sdlogj`` (standard deviation of the log Jacobian determinant).
"""
from __future__ import annotations

from numbers import Number
from typing import Any

from node.config import QcThresholds

QC_NUMBERS = ("similarity_before", "similarity_after", "folding_percent", "sdlogj")


def _num(v) -> float | None:
    return float(v) if isinstance(v, Number) and not isinstance(v, bool) else None


def qc_numbers(report: dict[str, Any] | None) -> dict[str, float | None]:
    """The four QC numbers from an engine report or a job's recorded QC dict; None where absent."""
    report = report or {}
    sim = report.get("similarity")
    sim = sim if isinstance(sim, dict) else {}
    before = _num(report.get("similarity_before"))
    after = _num(report.get("similarity_after"))
    return {"similarity_before": before if before is not None else _num(sim.get("identity")),
            "similarity_after": after if after is not None else _num(sim.get("final")),
            "folding_percent": _num(report.get("folding_percent")), "sdlogj": _num(report.get("sdlogj"))}


def qc_problems(numbers: dict[str, float | None], t: QcThresholds) -> list[str]:
    """Plain-words reasons why QC numbers are suspicious under thresholds ``t`` (empty list: looks fine)."""
    out = []
    f, s = numbers.get("folding_percent"), numbers.get("sdlogj")
    b, a = numbers.get("similarity_before"), numbers.get("similarity_after")
    if f is not None and f > t.max_folding_percent:
        out.append(f"folding {f:.3g} % is above the limit of {t.max_folding_percent:g} %")
    if s is not None and s > t.max_sdlogj:
        out.append(f"SDlogJ {s:.3g} is above the limit of {t.max_sdlogj:g}")
    if a is not None and b is not None and (a - b) < t.min_similarity_gain:
        out.append(f"similarity changed by {a - b:+.3g} (before {b:.3g}, after {a:.3g}); "
                   f"at least {t.min_similarity_gain:+g} expected")
    return out


def assess(report: dict[str, Any] | None, t: QcThresholds) -> tuple[dict, bool, list[str]]:
    """(QC dict to record = the engine report + similarity_before/after + qc_problems, suspicious?, problems)."""
    qc = dict(report or {})
    numbers = qc_numbers(qc)
    qc.setdefault("similarity_before", numbers["similarity_before"])
    qc.setdefault("similarity_after", numbers["similarity_after"])
    problems = qc_problems(numbers, t)
    qc["qc_problems"] = problems
    return qc, bool(problems), problems
