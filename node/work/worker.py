"""The worker: claim a job, run its steps (:mod:`node.work.steps`) with a lease heartbeat, record the outcome
exactly once.

Job kinds: ``register`` (the product) and ``sleep`` (a cheap job for queue/scale-out tests: ``params.seconds``).

The ``register`` pipeline (each stage timed in seconds into ``jobs.timings``):

1. ``load``       the job, its rule, the current study summary and series files from the index;
2. ``prior``      :func:`node.priors.choice.find_priors` — local studies of the same patient first, else the PACS
   (C-MOVE to this node / C-GET into the spool); none → job done with outcome ``no_prior`` and the plain reason;
3. identity check: current and prior must be the same patient (index values, then the files' own headers);
   a conflict fails the job (never retried) naming the attributes;
4. ``read``       ``dicom_io.read_series`` of both series (a problem fails the job with e.g.
   "prior series 1.2.3: slice missing between ...");
5. ``register``   ``registration_core.register(fixed=current, moving=prior)`` with the rule's engine settings;
6. ``write``      the rule's outputs (dsr, rigid_reg, registered_series, subtraction) with dicom_io writers into
   ``<data_dir>/results/<job id>/`` (all-or-nothing), plus ``qc.png``;
7. in ONE transaction: the job done (QC report in ``jobs.qc``, ``suspicious`` when beyond ``qc`` thresholds) and a
   ``sends`` row per destination of the rule — committed only if the worker still holds the lease.

Errors: input problems (DicomInputError, RegistrationInputError, patient conflict, rule gone) fail the job at once
with the message; anything else is retried with back-off (``jobs.retry``) and is 'dead' after max_attempts.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback

from sqlalchemy import select

from node.ops.logging_setup import phi_allowed
from node.receive.spool import Spool
from node.store import queue as jobs
from node.store.db import Database, Job, Send, Study, add_event
from node.work.steps import PROCESSORS, JobError, JobResult, WorkerContext

log = logging.getLogger(__name__)


def _finish(db: Database, cfg, claim: jobs.Claim, result: JobResult, timings: dict) -> None:
    with db.session() as s:
        fields = dict(result.fields)
        job = s.get(Job, claim.job_id)
        # the dedupe key may already hold this prior (another job of pick: all_within): keep it in params then
        if fields.get("prior_series_uid") and job.prior_series_uid != fields["prior_series_uid"]:
            clash = s.scalar(select(Job.id).where(
                Job.current_series_uid == job.current_series_uid, Job.rule_name == job.rule_name,
                Job.round == job.round, Job.prior_series_uid == fields["prior_series_uid"], Job.id != job.id))
            if clash is not None or job.prior_series_uid:
                fields.pop("prior_series_uid")
        job = jobs.complete(s, claim, outcome=result.outcome, reason=result.reason, timings=timings, **fields)
        for dest in result.sends:
            s.add(Send(job_id=job.id, destination=dest, n_files=result.n_files,
                       max_attempts=cfg.send_retry.max_attempts))
            add_event(s, f"results of job {job.id} queued for '{dest}'", kind="send", study_uid=job.study_uid,
                      job_id=job.id)


class Heartbeat:
    """Renews a claim's lease every ``lease_s / 3`` seconds in a background thread."""

    def __init__(self, db: Database, claim: jobs.Claim, lease_s: float):
        self.db, self.claim, self.lease_s = db, claim, lease_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name=f"heartbeat-{claim.job_id}", daemon=True)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=10)
        return False

    def _run(self):
        while not self._stop.wait(max(0.05, self.lease_s / 3)):
            try:
                with self.db.session() as s:
                    if not jobs.heartbeat(s, self.claim, self.lease_s):
                        self.lost.set()
                        log.warning("job %d: lease lost", self.claim.job_id)
                        return
            except Exception as exc:  # noqa: BLE001 - database briefly unavailable; try again
                log.warning("job %d: heartbeat failed: %s", self.claim.job_id, exc)


def run_claimed(cfg, db: Database, spool: Spool, claim: jobs.Claim) -> str:
    """Run one claimed job to its recorded end; returns the job's state afterwards ('lost' if the lease was lost)."""
    ctx = WorkerContext(cfg=cfg, db=db, spool=spool, claim=claim)
    fn = PROCESSORS.get(claim.kind)
    t0 = time.perf_counter()
    try:
        with Heartbeat(db, claim, cfg.jobs.lease_s):
            if fn is None:
                raise JobError(f"unknown job kind '{claim.kind}'", retryable=False)
            result = fn(ctx)
        ctx.timings["total"] = round(time.perf_counter() - t0, 3)
        _finish(db, cfg, claim, result, ctx.timings)
        log.info("job %d done: %s", claim.job_id, result.outcome)
        return "done"
    except jobs.LeaseLost as exc:
        log.warning("%s", exc)
        return "lost"
    except Exception as exc:  # noqa: BLE001 - every failure becomes a plain job error
        ctx.timings["total"] = round(time.perf_counter() - t0, 3)
        if isinstance(exc, JobError):
            msg, retryable = str(exc), exc.retryable
        elif isinstance(exc, MemoryError):
            msg, retryable = "out of memory while processing", True
        else:
            first = str(exc).splitlines()[0] if str(exc) else ""
            msg, retryable = f"{type(exc).__name__}: {first}"[:1000], True
            log.error("job %d failed unexpectedly:\n%s", claim.job_id, traceback.format_exc())
        try:
            with db.session() as s:
                job = jobs.fail(s, claim, msg, retryable=retryable, backoff=cfg.jobs.retry, timings=ctx.timings)
                state = job.state
        except jobs.LeaseLost as lost:
            log.warning("%s", lost)
            return "lost"
        log.warning("job %d attempt %d failed (%s): %s", claim.job_id, claim.attempt, state,
                    _scrub(db, claim.job_id, msg))
        return state


def _scrub(db: Database, job_id: int, text: str) -> str:
    """``text`` with the job's PatientID and PatientName replaced, for logs (the job row keeps the full text)."""
    if phi_allowed():
        return text
    try:
        with db.session() as s:
            job = s.get(Job, job_id)
            st = s.scalar(select(Study).where(Study.study_uid == job.study_uid)) if job else None
            secrets = [v for v in ((st.patient_id, st.patient_name) if st else ()) if v and len(v) >= 2]
    except Exception:  # noqa: BLE001
        return "(reason recorded in the job)"
    for v in secrets:
        text = text.replace(v, "<patient>")
    return text


class Worker:
    """A worker loop: re-queue expired leases, claim a job, run it; ``run(stop)`` until ``stop`` is set."""

    def __init__(self, cfg, db: Database, spool: Spool, name: str | None = None, poll_s: float = 1.0,
                 kinds: list[str] | None = None):
        self.cfg, self.db, self.spool = cfg, db, spool
        self.name = name or jobs.worker_name()
        self.poll_s = poll_s
        self.kinds = kinds

    def run_once(self) -> str | None:
        """Claim and run at most one job; returns its end state or None when nothing was runnable."""
        with self.db.session() as s:
            jobs.requeue_expired(s)
        with self.db.session() as s:
            claim = jobs.claim(s, self.name, self.cfg.jobs.lease_s, kinds=self.kinds)
        if claim is None:
            return None
        return run_claimed(self.cfg, self.db, self.spool, claim)

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set (a running job finishes first)."""
        log.info("worker %s started", self.name)
        while not stop.is_set():
            try:
                if self.run_once() is None:
                    stop.wait(self.poll_s)
            except Exception:  # noqa: BLE001 - the database may be briefly unavailable
                log.exception("worker %s: queue pass failed", self.name)
                stop.wait(self.poll_s)
        log.info("worker %s stopped", self.name)
