"""The worker: claim a job, run its pipeline with a lease heartbeat, record the outcome exactly once.

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

import io
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydicom import dcmwrite
from sqlalchemy import select

from node.store import queue as jobs
from node.store.db import OUTCOME_NO_PRIOR, OUTCOME_REGISTERED, Database, Job, Send, add_event
from node.receive.index import expect_retrieved_study, series_paths, studies_for_patient, study_summary
from node.receive.spool import Spool
from node.store.study import PatientIdentity, StudySummary

log = logging.getLogger(__name__)


class JobError(Exception):
    """A job attempt failed; ``retryable`` says whether another attempt may help. The message is plain words."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@dataclass
class JobResult:
    """What a job kind returns: outcome, reason and extra Job columns; ``sends`` destination names."""

    outcome: str = OUTCOME_REGISTERED
    reason: str = ""
    fields: dict = field(default_factory=dict)
    sends: list[str] = field(default_factory=list)
    n_files: int = 0


@dataclass
class WorkerContext:
    """What a job function may use."""

    cfg: object
    db: Database
    spool: Spool
    claim: jobs.Claim
    timings: dict = field(default_factory=dict)

    def stage(self, name: str):
        """Context manager timing a stage into ``timings[name]`` (seconds)."""
        return _Stage(self, name)


class _Stage:
    def __init__(self, ctx: WorkerContext, name: str):
        self.ctx, self.name = ctx, name

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t0
        self.ctx.timings[self.name] = round(self.ctx.timings.get(self.name, 0.0) + dt, 3)
        try:
            from node.ops import metrics
            metrics.STAGE_DURATION.labels(stage=self.name).observe(dt)
        except Exception:  # noqa: BLE001
            pass
        return False


# ---------------------------------------------------------------------------------------------- job kinds

def sleep_job(ctx: WorkerContext) -> JobResult:
    """Test job: sleep ``params.seconds`` (default 0.1), append a line to ``params.log`` if given."""
    p = ctx.claim.params
    if p.get("log"):
        with open(p["log"], "a") as fh:
            fh.write(f"start {ctx.claim.job_id} {ctx.claim.worker} {ctx.claim.token}\n")
    with ctx.stage("sleep"):
        time.sleep(float(p.get("seconds", 0.1)))
    if p.get("fail"):
        raise JobError(str(p["fail"]), retryable=bool(p.get("retryable", True)))
    return JobResult(reason=f"slept {p.get('seconds', 0.1)} s")


class SpoolSink:
    """:class:`node.priors.choice.RetrieveSink` of the node: retrieved priors go into the spool and the index."""

    def __init__(self, cfg, db: Database, spool: Spool):
        self.cfg, self.db, self.spool = cfg, db, spool

    def expect(self, study_uid: str) -> None:
        """Mark the study as a retrieved prior (never routed)."""
        with self.db.session() as s:
            expect_retrieved_study(s, study_uid)

    def store(self, ds) -> None:
        """Store one C-GET instance durably (raises OSError when it cannot)."""
        from node.receive.receiver import STATUS_OK, ingest
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        status, msg = ingest(self.db, self.spool, buf.getvalue(), calling_ae="C-GET")
        if status != STATUS_OK:
            raise OSError(f"retrieved instance not stored: {msg}")

    def summary(self, study_uid: str) -> StudySummary | None:
        """The retrieved study as now held in the spool."""
        with self.db.session() as s:
            return study_summary(s, study_uid)


def _identity_of(ds) -> PatientIdentity:
    from node.receive.index import parse_da
    return PatientIdentity(patient_id=str(ds.get("PatientID", "") or ""),
                           issuer=str(ds.get("IssuerOfPatientID", "") or ""),
                           name=str(ds.get("PatientName", "") or ""), birth_date=parse_da(ds.get("PatientBirthDate")),
                           sex=str(ds.get("PatientSex", "") or ""))


def _check_identity(a: PatientIdentity, b: PatientIdentity, where: str) -> None:
    conflicts = a.conflicts_with(b)
    if conflicts:
        raise JobError(f"the current and the prior study belong to different patients ({where}: "
                       f"{', '.join(conflicts)} differ); nothing was registered", retryable=False)


def _series_error(which: str, uid: str, exc: Exception) -> str:
    """'prior series 1.2.3: slice missing between ...' (without repeating the UID dicom_io already names)."""
    msg = str(exc)
    prefix = f"series {uid}: "
    if msg.startswith(prefix):
        msg = msg[len(prefix):]
    return f"{which} series {uid}: {msg}"


def _software_version() -> str:
    try:
        from importlib.metadata import version
        return version("totalregistrator-node")
    except Exception:  # noqa: BLE001
        return "0.1.0"


def _qc(cfg, report: dict) -> tuple[dict, bool, list[str]]:
    """(QC dict = engine report + similarity_before/after + qc_problems, suspicious?, problems in words)."""
    from numbers import Number
    flat = {k: v for k, v in (report or {}).items()}
    sim = flat.get("similarity")
    if isinstance(sim, dict):  # the engine reports {"identity": .., "affine": .., "final": ..}
        flat.setdefault("similarity_before", sim.get("identity", sim.get("before")))
        flat.setdefault("similarity_after", sim.get("final", sim.get("after")))
    t = cfg.qc
    problems = []
    fold = flat.get("folding_percent")
    if isinstance(fold, Number) and fold > t.max_folding_percent:
        problems.append(f"folding {fold:.2f} % > {t.max_folding_percent} %")
    sd = flat.get("sdlogj")
    if isinstance(sd, Number) and sd > t.max_sdlogj:
        problems.append(f"sdlogj {sd:.3f} > {t.max_sdlogj}")
    before, after = flat.get("similarity_before"), flat.get("similarity_after")
    if isinstance(before, Number) and isinstance(after, Number) and after - before < t.min_similarity_gain:
        problems.append(f"similarity gain {after - before:.3f} < {t.min_similarity_gain}")
    qc = dict(flat)
    qc["qc_problems"] = problems
    return qc, bool(problems), problems


def register_job(ctx: WorkerContext) -> JobResult:
    """The product pipeline for one job (see the module docstring)."""
    cfg, db = ctx.cfg, ctx.db
    with ctx.stage("load"):
        with db.session() as s:
            job = s.get(Job, ctx.claim.job_id)
            from node.route.rules_store import effective_config
            rules_in_force = effective_config(s, cfg).rules
            rule = next((r for r in rules_in_force if r.name == job.rule_name), None)
            if rule is None:
                raise JobError(f"rule '{job.rule_name}' no longer exists in the configuration", retryable=False)
            current = study_summary(s, job.study_uid)
            if current is None:
                raise JobError(f"study {job.study_uid} is no longer in the spool", retryable=False)
            cur_paths = series_paths(s, job.current_series_uid)
            local = [st for st in studies_for_patient(s, current.patient.patient_id, current.patient.issuer)
                     if st.study_uid != current.study_uid]
            wanted_prior_study = (job.params or {}).get("prior_study_uid", "")
            current_series_uid = job.current_series_uid
    if not cur_paths:
        raise JobError(f"current series {current_series_uid}: no instances in the spool", retryable=False)

    with ctx.stage("prior"):
        from node.priors.choice import find_priors
        if wanted_prior_study:
            local = [st for st in local if st.study_uid == wanted_prior_study]
        decision = find_priors(cfg, rule, current, local, retrieve_into=SpoolSink(cfg, db, ctx.spool))
    if not decision.priors:
        outcome_reason = decision.reason
        if decision.flagged:
            raise JobError(f"prior refused: {decision.reason}", retryable=False)
        if decision.retryable:
            raise JobError(f"prior search: {decision.reason}", retryable=True)
        return JobResult(outcome=OUTCOME_NO_PRIOR, reason=outcome_reason)
    prior = decision.priors[0]
    prior_series_uid = decision.series.get(prior.study_uid, "")
    if len(decision.priors) > 1 and not wanted_prior_study:  # pick: all_within → one job per further prior
        with db.session() as s:
            for extra in decision.priors[1:]:
                jobs.enqueue(s, study_uid=current.study_uid, current_series_uid=current_series_uid,
                             prior_series_uid=decision.series.get(extra.study_uid, ""), rule_name=rule.name,
                             round=job.round, params={"prior_study_uid": extra.study_uid},
                             max_attempts=cfg.jobs.retry.max_attempts)
    _check_identity(current.patient, prior.patient, "index")
    with db.session() as s:
        prior_paths = series_paths(s, prior_series_uid)
    if not prior_paths:
        raise JobError(f"prior series {prior_series_uid} of study {prior.study_uid}: no instances in the spool",
                       retryable=True)

    with ctx.stage("read"):
        from dicom_io import DicomInputError, read_series
        try:
            cur_vol = read_series(cur_paths)
        except DicomInputError as exc:
            raise JobError(_series_error("current", current_series_uid, exc), retryable=False) from None
        try:
            prior_vol = read_series(prior_paths)
        except DicomInputError as exc:
            raise JobError(_series_error("prior", prior_series_uid, exc), retryable=False) from None
    _check_identity(_identity_of(cur_vol.datasets[0]), _identity_of(prior_vol.datasets[0]), "file headers")

    with ctx.stage("register"):
        try:
            from registration_core import RegistrationConfig, register
        except ImportError:  # until the package exports them (docs/CONTRACTS.md)
            from registration_core.config import RegistrationConfig
            from registration_core.engine import register
        from registration_core.errors import RegistrationInputError
        rc = RegistrationConfig(device=rule.registration.device, iterations=rule.registration.iterations,
                                weights=str(rule.registration.weights) if rule.registration.weights else None)
        try:
            res = register(fixed=cur_vol.image, moving=prior_vol.image, config=rc)
        except RegistrationInputError as exc:
            raise JobError(f"registration refused: {exc}", retryable=False) from None

    result_dir = Path(cfg.node.data_dir).resolve() / "results" / str(ctx.claim.job_id)
    with ctx.stage("write"):
        from dicom_io import writers as w
        version = _software_version()
        objs = []
        dsr = None
        if "dsr" in rule.outputs or "registered_series" in rule.outputs or "subtraction" in rule.outputs:
            dsr = w.write_dsr(cur_vol, prior_vol, res.displacement,
                              grid_spacing_mm=rule.registration.dsr_grid_spacing_mm, software_version=version)
        if "dsr" in rule.outputs:
            objs.append(dsr)
        if "rigid_reg" in rule.outputs:
            objs.append(w.write_rigid_reg(cur_vol, prior_vol, res.affine, software_version=version))
        ref = dsr if "dsr" in rule.outputs else None
        if "registered_series" in rule.outputs:
            objs.extend(w.write_registered_series(cur_vol, prior_vol, res.warped, ref, software_version=version))
        if "subtraction" in rule.outputs:
            objs.extend(w.write_subtraction_series(cur_vol, prior_vol, res.warped, ref, software_version=version))
        files = w.save_objects(objs, result_dir / "dicom")
        qc_png = ""
        try:
            from registration_core.qc import write_qc_png
            write_qc_png(cur_vol.image, prior_vol.image, res.warped, result_dir / "qc.png",
                         displacement=res.displacement)
            qc_png = str(result_dir / "qc.png")
        except Exception as exc:  # noqa: BLE001 - the picture is a convenience, not a result
            log.warning("job %d: QC picture not written: %s", ctx.claim.job_id, exc)
    qc, suspicious, problems = _qc(cfg, dict(getattr(res, "report", {}) or {}))
    reason = f"prior {prior.study_uid} series {prior_series_uid} registered; {len(files)} objects written"
    if problems:
        reason += "; QC suspicious: " + "; ".join(problems)
    return JobResult(outcome=OUTCOME_REGISTERED, reason=reason, sends=list(rule.send_to), n_files=len(files),
                     fields=dict(prior_series_uid=prior_series_uid, prior_study_uid=prior.study_uid, qc=qc,
                                 suspicious=suspicious, result_dir=str(result_dir), qc_png=qc_png))


PROCESSORS: dict[str, Callable[[WorkerContext], JobResult]] = {"register": register_job, "sleep": sleep_job}


# ------------------------------------------------------------------------------------------------ running

def result_files(job: Job) -> list[Path]:
    """The DICOM result files of a job (sorted)."""
    if not job.result_dir:
        return []
    return sorted((Path(job.result_dir) / "dicom").glob("*.dcm"))


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
    from node.ops.logging_setup import phi_allowed
    if phi_allowed():
        return text
    try:
        from node.store.db import Study
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
