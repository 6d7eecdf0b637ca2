"""Read-only views of the node database for the console and the API (no writes here).

Times are naive UTC (the node.db convention). QC numbers and problems come from ``Job.qc`` through
:mod:`node.work.qc` (the one place that reads them and applies the thresholds).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from node.config import QcThresholds
from node.store.db import JOB_QUEUED, JOB_STATES, Event, Job, JobRun, Send, Study, utcnow
from node.work.qc import qc_numbers, qc_problems

@dataclass
class JobFilter:
    """Job list filters (all optional). patient matches PatientID exactly or a part of PatientName."""

    patient: str = ""
    state: str = ""
    rule: str = ""
    date_from: dt.date | None = None  # on the job's creation date (UTC)
    date_to: dt.date | None = None
    suspicious: bool = False

    def active(self) -> bool:
        """True when any filter is set."""
        return any([self.patient, self.state, self.rule, self.date_from, self.date_to, self.suspicious])


@dataclass
class JobRow:
    """One job as the console shows it."""

    id: int
    state: str
    outcome: str
    outcome_reason: str
    rule: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    attempts: int
    max_attempts: int
    error: str
    patient_id: str
    patient_name: str
    study_date: dt.date | None
    study_description: str
    accession: str
    study_uid: str
    prior_study_uid: str
    suspicious: bool
    qc: dict[str, float | None]
    qc_problems: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    has_qc_png: bool = False
    result_dir: str = ""
    sends: list[dict[str, Any]] = field(default_factory=list)
    regions: list[dict[str, Any]] = field(default_factory=list)  # the engine's per-region figures (job page)
    weights: dict[str, Any] = field(default_factory=dict)  # the network weights used: name, sha256, source

    def api(self, detail: bool = False) -> dict[str, Any]:
        """JSON-ready dict (dates ISO 8601 UTC)."""
        d = {
            "id": self.id, "state": self.state, "outcome": self.outcome, "outcome_reason": self.outcome_reason,
            "rule": self.rule, "created_at": _iso(self.created_at), "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at), "attempts": self.attempts, "max_attempts": self.max_attempts,
            "error": self.error, "study_uid": self.study_uid, "prior_study_uid": self.prior_study_uid,
            "suspicious": self.suspicious, "qc": self.qc, "qc_problems": self.qc_problems,
        }
        if detail:
            d.update(timings=self.timings, sends=self.sends, has_qc_png=self.has_qc_png, regions=self.regions,
                     weights=self.weights,
                     patient={"id": self.patient_id, "name": self.patient_name},
                     study={"date": self.study_date.isoformat() if self.study_date else None,
                            "description": self.study_description, "accession": self.accession})
        return d


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() + "Z" if t else None


def _row(job: Job, study: Study | None, t: QcThresholds, detail: bool = False) -> JobRow:
    numbers = qc_numbers(job.qc)
    problems = qc_problems(numbers, t) if job.qc else []
    if not problems and job.suspicious:  # flagged by the worker under its own thresholds
        problems = [str(p) for p in (job.qc or {}).get("qc_problems", [])]
    row = JobRow(
        id=job.id, state=job.state, outcome=job.outcome or "", outcome_reason=job.outcome_reason or "",
        rule=job.rule_name or "", created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, attempts=job.attempts or 0, max_attempts=job.max_attempts or 0,
        error=job.error or "", patient_id=study.patient_id if study else "",
        patient_name=study.patient_name if study else "", study_date=study.study_date if study else None,
        study_description=study.description if study else "", accession=study.accession_number if study else "",
        study_uid=job.study_uid or "", prior_study_uid=job.prior_study_uid or "",
        suspicious=bool(job.suspicious) or bool(problems), qc=numbers, qc_problems=problems,
        has_qc_png=bool(job.qc_png),
    )
    if detail:
        row.timings = {k: float(v) for k, v in (job.timings or {}).items() if isinstance(v, (int, float))}
        row.result_dir = job.result_dir or ""
        row.regions, row.weights = _regions_and_weights(job.qc)
        row.sends = [{"destination": s.destination, "state": s.state, "attempts": s.attempts,
                      "max_attempts": s.max_attempts, "n_files": s.n_files, "n_acknowledged": s.n_acknowledged,
                      "error": s.error, "finished_at": _iso(s.finished_at)} for s in job.sends]
    return row


def _regions_and_weights(qc: dict | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """From a job's recorded engine report: the per-region figures as rows in region order (``name`` added;
    registration_core.regions' names, shares 0..1, displacements in mm, folding %) and the weights entry
    (name, sha256, shipped, source); empty where the report has none."""
    qc = qc if isinstance(qc, dict) else {}
    regions = qc.get("regions") if isinstance(qc.get("regions"), dict) else {}
    rows = [dict(v, name=k) for k, v in regions.items() if isinstance(v, dict)]
    rows.sort(key=lambda r: r.get("id") or 0)
    weights = qc.get("weights") if isinstance(qc.get("weights"), dict) else {}
    return rows, weights


def list_jobs(session: Session, f: JobFilter, t: QcThresholds, *, limit: int = 50,
              offset: int = 0) -> tuple[list[JobRow], int]:
    """Jobs matching ``f``, newest first, and the total number matching."""
    q = select(Job, Study).outerjoin(Study, Study.study_uid == Job.study_uid)
    if f.patient:
        q = q.where(or_(Study.patient_id == f.patient.strip(),
                        Study.patient_name.ilike(f"%{f.patient.strip().replace(' ', '%')}%")))
    if f.state:
        q = q.where(Job.state == f.state)
    if f.rule:
        q = q.where(Job.rule_name == f.rule)
    if f.date_from:
        q = q.where(Job.created_at >= dt.datetime.combine(f.date_from, dt.time()))
    if f.date_to:
        q = q.where(Job.created_at < dt.datetime.combine(f.date_to + dt.timedelta(days=1), dt.time()))
    if f.suspicious:
        q = q.where(Job.suspicious.is_(True))
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.execute(q.order_by(Job.id.desc()).limit(limit).offset(offset)).all()
    return [_row(j, s, t) for j, s in rows], total


def get_job(session: Session, job_id: int, t: QcThresholds) -> JobRow | None:
    """One job with stage times and sends, or None."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    study = session.scalar(select(Study).where(Study.study_uid == job.study_uid)) if job.study_uid else None
    return _row(job, study, t, detail=True)


def job_qc_png(session: Session, job_id: int) -> tuple[str, str] | None:
    """(qc_png path, result_dir) of a job, or None when the job is unknown."""
    job = session.get(Job, job_id)
    return (job.qc_png or "", job.result_dir or "") if job is not None else None


@dataclass
class LogLine:
    """One line of a job's log: time (UTC), level, text."""

    at: dt.datetime
    level: str
    text: str


def job_log(session: Session, job_id: int) -> list[LogLine]:
    """The job's audit events and worker runs, oldest first."""
    out = [LogLine(e.at, e.level, e.message)
           for e in session.scalars(select(Event).where(Event.job_id == job_id))]
    for r in session.scalars(select(JobRun).where(JobRun.job_id == job_id)):
        out.append(LogLine(r.started_at, "INFO", f"attempt {r.attempt} started on worker {r.worker or '?'}"))
        if r.ended_at:
            level = "INFO" if r.result in ("done", "") else "WARNING"
            msg = f"attempt {r.attempt} ended: {r.result or 'ended'}" + (f" — {r.message}" if r.message else "")
            out.append(LogLine(r.ended_at, level, msg))
    out.sort(key=lambda line: line.at)
    return out


@dataclass
class Overview:
    """Dashboard numbers: counts, jobs by state, throughput (jobs/hour over the last 24 h), queue length."""

    studies: int
    studies_24h: int
    instances: int
    jobs_by_state: dict[str, int]
    done_24h: int
    throughput_per_hour: float
    queue_length: int
    suspicious: int
    sends_dead: int
    recent_events: list[LogLine]


def jobs_by_state(session: Session) -> dict[str, int]:
    """Number of jobs in each state (every known state present, 0 when none)."""
    counts = dict.fromkeys(JOB_STATES, 0)
    for state, n in session.execute(select(Job.state, func.count()).group_by(Job.state)):
        counts[state] = n
    return counts


def queue_length(session: Session) -> int:
    """Jobs waiting for a worker (state queued)."""
    return session.scalar(select(func.count()).select_from(Job).where(Job.state == JOB_QUEUED)) or 0


def overview(session: Session, now: dt.datetime | None = None) -> Overview:
    """All dashboard numbers in one read."""
    now = now or utcnow()
    day = now - dt.timedelta(hours=24)
    by_state = jobs_by_state(session)
    done_24h = session.scalar(select(func.count()).select_from(Job).where(
        Job.state == "done", Job.finished_at >= day)) or 0
    events = [LogLine(e.at, e.level, e.message) for e in session.scalars(
        select(Event).where(Event.level != "DEBUG").order_by(Event.at.desc(), Event.id.desc()).limit(8))]
    return Overview(
        studies=session.scalar(select(func.count()).select_from(Study)) or 0,
        studies_24h=session.scalar(select(func.count()).select_from(Study).where(Study.first_received_at >= day)) or 0,
        instances=session.scalar(select(func.coalesce(func.sum(Study.n_instances), 0))) or 0,
        jobs_by_state=by_state, done_24h=done_24h, throughput_per_hour=done_24h / 24.0,
        queue_length=by_state.get(JOB_QUEUED, 0),
        suspicious=session.scalar(select(func.count()).select_from(Job).where(Job.suspicious.is_(True))) or 0,
        sends_dead=session.scalar(select(func.count()).select_from(Send).where(Send.state == "dead")) or 0,
        recent_events=events,
    )


def recent_studies(session: Session, limit: int = 30) -> list[Study]:
    """Most recently received studies (for the dry-run picker)."""
    return list(session.scalars(select(Study).order_by(Study.last_received_at.desc()).limit(limit)))


def rule_names(session: Session) -> list[str]:
    """Rule names that appear on jobs (for the filter drop-down)."""
    return sorted(n for (n,) in session.execute(select(Job.rule_name).distinct()) if n)
