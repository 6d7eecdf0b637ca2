"""Study assembly: decide when a received study is complete, then route it and enqueue its jobs.

A study (state ``receiving``) is complete when no instance arrived for ``completion.quiet_seconds`` (measured from
``studies.last_received_at``), or at the latest ``completion.max_wait_seconds`` after the round began
(``studies.round_started_at``) even if instances keep coming.  Both timers are database timestamps, so a restarted
node simply re-evaluates them.  On completion, in ONE transaction: the study is claimed with a conditional update
(only one assembler wins, even with several processes), :func:`node.route.rules.route_study` picks rules and series, and
one job per decision is enqueued (de-duplicated, so a crash and re-run cannot double them).

Late instances (arriving after routing) are handled by :func:`node.receive.index.record_instance` according to
``completion.late_instances``: ``follow_up`` puts the study back to ``receiving`` and the next completion enqueues
jobs of the next ``round``; ``ignore`` only counts them.  Retrieved priors (``origin='retrieved'``) are never routed.
"""
from __future__ import annotations

import datetime as _dt
import logging
import threading

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from node.route import rules
from node.route.rules_store import effective_config
from node.store.db import STUDY_COMPLETE, STUDY_RECEIVING, STUDY_ROUTE_FAILED, Database, Study, add_event, utcnow
from node.store.queries import study_summary
from node.store.queue import enqueue

log = logging.getLogger(__name__)


def _route(cfg, summary, session: Session | None = None):
    """Routing decisions for a study summary: ``node.route.rules.route_study`` (list of RouteDecision) + a no-route text.

    With a session, the rules in force are the latest version saved in the console (else node.yaml's).
    """
    if session is not None:
        cfg = effective_config(session, cfg)
    decisions = rules.route_study(cfg, summary)
    why = "" if decisions else rules.explain_no_route(cfg, summary)
    return decisions, why


def due_studies(session: Session, cfg, now: _dt.datetime) -> list[tuple[int, _dt.datetime]]:
    """(study id, last_received_at) of studies whose quiet period or maximum wait has passed."""
    quiet = now - _dt.timedelta(seconds=cfg.completion.quiet_seconds)
    forced = now - _dt.timedelta(seconds=cfg.completion.max_wait_seconds)
    q = (select(Study.id, Study.last_received_at)
         .where(Study.state == STUDY_RECEIVING, Study.origin != "retrieved", Study.n_instances > 0,
                or_(Study.last_received_at <= quiet, Study.round_started_at <= forced))
         .order_by(Study.last_received_at))
    return [(r[0], r[1]) for r in session.execute(q).all()]


def complete_study(session: Session, cfg, study_id: int, seen_last: _dt.datetime,
                   now: _dt.datetime | None = None) -> list[int] | None:
    """Claim, route and enqueue one study in the caller's transaction; the created/found job ids.

    None when another assembler claimed it first or new instances arrived meanwhile."""
    now = now or utcnow()
    res = session.execute(update(Study).where(Study.id == study_id, Study.state == STUDY_RECEIVING,
                                              Study.last_received_at == seen_last)
                          .values(state=STUDY_COMPLETE, routed_at=now, follow_up_pending=False, error="")
                          .execution_options(synchronize_session=False))
    if res.rowcount != 1:
        return None
    st = session.get(Study, study_id, populate_existing=True)
    rnd = st.routing_round
    st.routing_round = rnd + 1
    summary = study_summary(session, st.study_uid, with_paths=True)
    what = "follow-up round %d" % rnd if rnd else "study"
    try:
        decisions, why = _route(cfg, summary, session)
    except Exception as exc:  # noqa: BLE001 - the router must never lose a study: record why and go on
        st.state, st.error = STUDY_ROUTE_FAILED, f"routing failed: {exc}"
        add_event(session, f"{what} complete but routing failed: {exc}", kind="assembly", level="ERROR",
                  study_uid=st.study_uid)
        log.exception("routing of study %s failed", st.study_uid)
        return []
    if not decisions:
        add_event(session, f"{what} complete ({st.n_instances} instances); no rule takes it: {why}",
                  kind="assembly", study_uid=st.study_uid)
        log.info("study %s complete; no rule takes it", st.study_uid)
        return []
    ids = []
    for d in decisions:
        job, created = enqueue(session, study_uid=st.study_uid, current_series_uid=d.series_uid,
                               rule_name=d.rule.name, round=rnd, kind="register",
                               params={"reason": d.reason}, max_attempts=cfg.jobs.retry.max_attempts)
        ids.append(job.id)
    add_event(session, f"{what} complete ({st.n_instances} instances); jobs {', '.join(map(str, ids))} queued",
              kind="assembly", study_uid=st.study_uid)
    log.info("study %s complete (round %d): jobs %s", st.study_uid, rnd, ids)
    return ids


def reroute(session: Session, study_uid: str, *, by: str = "admin") -> None:
    """Route a study again (console action; e.g. after a rule change or a routing failure): it becomes due at once
    and its jobs get the next ``round``.  Runs in the caller's transaction (the caller commits)."""
    st = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if st is None or st.n_instances == 0:
        raise KeyError(f"study {study_uid} was not received")
    if st.origin == "retrieved":
        raise ValueError(f"study {study_uid} is a prior the node retrieved; it is not routed")
    old = utcnow() - _dt.timedelta(days=3650)
    st.state, st.error, st.last_received_at, st.round_started_at = STUDY_RECEIVING, "", old, old
    add_event(session, f"study routed again on request of {by}", kind="assembly", study_uid=study_uid)


class Assembler:
    """Polls the database for complete studies; ``tick()`` does one pass, ``run(stop)`` loops until stopped."""

    def __init__(self, cfg, db: Database, poll_s: float | None = None):
        self.cfg = cfg
        self.db = db
        q = cfg.completion.quiet_seconds
        self.poll_s = poll_s if poll_s is not None else max(0.2, min(5.0, q / 4 if q else 0.5))

    def tick(self, now: _dt.datetime | None = None) -> list[int]:
        """Complete every due study once; returns the job ids enqueued (or found) in this pass."""
        now = now or utcnow()
        with self.db.session() as s:
            due = due_studies(s, self.cfg, now)
        out: list[int] = []
        for study_id, seen in due:
            try:
                with self.db.session() as s:
                    ids = complete_study(s, self.cfg, study_id, seen, now)
                if ids:
                    out.extend(ids)
            except Exception:  # noqa: BLE001 - keep assembling the other studies
                log.exception("assembly of study row %d failed; will retry", study_id)
        return out

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the database may be briefly unavailable
                log.exception("assembly pass failed")
            stop.wait(self.poll_s)
