"""The job kinds and the steps of the ``register`` job, each a named function (see :mod:`node.work.worker` for
how a claimed job is run and recorded).

``register_job`` = :func:`load_job` → :func:`find_prior` → :func:`read_pair` → :func:`register_pair` →
:func:`write_outputs` → QC (:func:`node.work.qc.assess`); each step is timed in seconds into ``jobs.timings``
under its stage name (load, prior, read, register, write). A step raises :class:`JobError` with a plain
message; ``retryable`` says whether another attempt may help.
"""
from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pydicom import dcmwrite

import node
from node.config import NodeConfig, Rule
from node.ops import metrics
from node.priors.choice import PriorDecision, find_priors
from node.receive.index import expect_retrieved_study
from node.receive.ingest import STATUS_OK, ingest
from node.receive.part10_in import ingest_part10
from node.receive.spool import Spool
from node.route.rules_store import effective_config
from node.store import queue as jobs
from node.store.db import OUTCOME_NO_PRIOR, OUTCOME_REGISTERED, Database, Job
from node.store.header import patient_identity
from node.store.queries import series_paths, studies_for_patient, study_summary
from node.store.study import PatientIdentity, StudySummary
from node.work import qc as qc_check
from node.work.outputs import dicom_outputs, save_dicom

if TYPE_CHECKING:
    from dicom_io import SeriesVolume

log = logging.getLogger("node.work.worker")


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

    cfg: NodeConfig
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
        metrics.STAGE_DURATION.labels(stage=self.name).observe(dt)
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
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        status, msg = ingest(self.db, self.spool, buf.getvalue(), calling_ae="C-GET")
        if status != STATUS_OK:
            raise OSError(f"retrieved instance not stored: {msg}")

    def store_part10(self, data: bytes) -> None:
        """Store one WADO-RS instance (Part 10 bytes as sent) by the C-STORE path (raises OSError when it cannot)."""
        res = ingest_part10(self.db, self.spool, self.cfg, data, calling_ae="WADO-RS")
        if not res.ok:
            raise OSError(f"retrieved instance not stored: {res.message}")

    def summary(self, study_uid: str) -> StudySummary | None:
        """The retrieved study as now held in the spool."""
        with self.db.session() as s:
            return study_summary(s, study_uid)


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


@dataclass
class LoadedJob:
    """What :func:`load_job` reads from the database for one ``register`` job."""

    job_id: int
    rule: Rule
    round: int
    current: StudySummary
    current_series_uid: str
    current_paths: list[Path]
    local: list[StudySummary]  # the patient's other locally held studies
    wanted_prior_study: str  # '' or the prior study this job is for (pick: all_within)


def load_job(ctx: WorkerContext) -> LoadedJob:
    """Stage ``load``: the job, its rule (in force now), the current study and series files, the patient's other
    local studies; JobError when the rule or the study is gone."""
    with ctx.stage("load"):
        with ctx.db.session() as s:
            job = s.get(Job, ctx.claim.job_id)
            rules_in_force = effective_config(s, ctx.cfg).rules
            rule = next((r for r in rules_in_force if r.name == job.rule_name), None)
            if rule is None:
                raise JobError(f"rule '{job.rule_name}' no longer exists in the configuration", retryable=False)
            current = study_summary(s, job.study_uid)
            if current is None:
                raise JobError(f"study {job.study_uid} is no longer in the spool", retryable=False)
            loaded = LoadedJob(
                job_id=job.id, rule=rule, round=job.round, current=current,
                current_series_uid=job.current_series_uid,
                current_paths=series_paths(s, job.current_series_uid),
                local=[st for st in studies_for_patient(s, current.patient.patient_id, current.patient.issuer)
                       if st.study_uid != current.study_uid],
                wanted_prior_study=(job.params or {}).get("prior_study_uid", ""))
    if not loaded.current_paths:
        raise JobError(f"current series {loaded.current_series_uid}: no instances in the spool", retryable=False)
    return loaded


def find_prior(ctx: WorkerContext, job: LoadedJob) -> PriorDecision:
    """Stage ``prior``: the prior decision (local first, else the PACS, retrieved into the spool). Further priors
    of ``pick: all_within`` are enqueued as jobs of their own."""
    with ctx.stage("prior"):
        local = job.local
        if job.wanted_prior_study:
            local = [st for st in local if st.study_uid == job.wanted_prior_study]
        decision = find_priors(ctx.cfg, job.rule, job.current, local,
                               retrieve_into=SpoolSink(ctx.cfg, ctx.db, ctx.spool))
    if len(decision.priors) > 1 and not job.wanted_prior_study:  # pick: all_within → one job per further prior
        with ctx.db.session() as s:
            for extra in decision.priors[1:]:
                jobs.enqueue(s, study_uid=job.current.study_uid, current_series_uid=job.current_series_uid,
                             prior_series_uid=decision.series.get(extra.study_uid, ""), rule_name=job.rule.name,
                             round=job.round, params={"prior_study_uid": extra.study_uid},
                             max_attempts=ctx.cfg.jobs.retry.max_attempts)
    return decision


def read_pair(ctx: WorkerContext, job: LoadedJob, prior_series_uid: str,
              prior_paths: list[Path]) -> tuple[SeriesVolume, SeriesVolume]:
    """Stage ``read``: both series with dicom_io (current, prior); JobError naming the series on a bad input, and
    when the files' own headers name two patients."""
    # reason: dicom_io's reader loads SimpleITK (~85 MB); only a process that runs a job pays for it
    from dicom_io import DicomInputError, read_series
    with ctx.stage("read"):
        try:
            cur_vol = read_series(job.current_paths)
        except DicomInputError as exc:
            raise JobError(_series_error("current", job.current_series_uid, exc), retryable=False) from None
        try:
            prior_vol = read_series(prior_paths)
        except DicomInputError as exc:
            raise JobError(_series_error("prior", prior_series_uid, exc), retryable=False) from None
    _check_identity(patient_identity(cur_vol.datasets[0]), patient_identity(prior_vol.datasets[0]), "file headers")
    return cur_vol, prior_vol


def weights_choice(cfg: NodeConfig, rule: Rule) -> tuple[str | None, str]:
    """(network weights path for the engine or None = the shipped file, where the choice comes from: "rule
    '<name>'", "node.yaml" or "shipped"). Only a rule's ``registration.weights`` or node.yaml's
    ``registration.weights`` select other weights than the shipped ones; nothing else does."""
    if rule.registration.weights:
        return str(rule.registration.weights), f"rule '{rule.name}'"
    if cfg.registration.weights:
        return str(cfg.registration.weights), "node.yaml"
    return None, "shipped"


def register_pair(ctx: WorkerContext, rule: Rule, current: SeriesVolume, prior: SeriesVolume):
    """Stage ``register``: registration_core.register(fixed=current, moving=prior) with the rule's settings and
    the weights of :func:`weights_choice`; the report's ``weights`` entry (name, sha256) gains ``source``."""
    # reason: torch loads in ~2 s; only a worker that registers pays for it (the receiver and console never do)
    from registration_core import RegistrationConfig, RegistrationInputError, register
    with ctx.stage("register"):
        reg = rule.registration
        weights, source = weights_choice(ctx.cfg, rule)
        rc = RegistrationConfig(device=reg.device, iterations=reg.iterations, weights=weights)
        try:
            res = register(fixed=current.image, moving=prior.image, config=rc)
        except RegistrationInputError as exc:
            raise JobError(f"registration refused: {exc}", retryable=False) from None
        if isinstance(res.report.get("weights"), dict):
            res.report["weights"]["source"] = source
        return res


def write_outputs(ctx: WorkerContext, rule: Rule, current: SeriesVolume, prior: SeriesVolume,
                  result) -> tuple[Path, list[Path], str]:
    """Stage ``write``: the rule's outputs into ``<data_dir>/results/<job id>/dicom`` (all or nothing) and the QC
    picture; (result folder, files, QC picture path or '')."""
    result_dir = Path(ctx.cfg.node.data_dir).resolve() / "results" / str(ctx.claim.job_id)
    with ctx.stage("write"):
        objs = dicom_outputs(current, prior, result, rule.outputs, software_version=node.__version__,
                             grid_spacing_mm=rule.registration.dsr_grid_spacing_mm)
        files = save_dicom(objs, result_dir / "dicom")
        qc_png = ""
        try:
            # reason: registration_core.qc imports torch and matplotlib; loaded with the engine, never by others
            from registration_core.qc import write_qc_png
            write_qc_png(current.image, prior.image, result.warped, result_dir / "qc.png",
                         displacement=result.displacement, region_weights=result.region_weights)
            qc_png = str(result_dir / "qc.png")
        except Exception as exc:  # noqa: BLE001 - the picture is a convenience, not a result
            log.warning("job %d: QC picture not written: %s", ctx.claim.job_id, exc)
    return result_dir, files, qc_png


def register_job(ctx: WorkerContext) -> JobResult:
    """The product pipeline for one job: load, prior, identity check, read, register, write, QC."""
    job = load_job(ctx)
    decision = find_prior(ctx, job)
    if not decision.priors:
        if decision.flagged:
            raise JobError(f"prior refused: {decision.reason}", retryable=False)
        if decision.retryable:
            raise JobError(f"prior search: {decision.reason}", retryable=True)
        return JobResult(outcome=OUTCOME_NO_PRIOR, reason=decision.reason)
    prior = decision.priors[0]
    prior_series_uid = decision.series.get(prior.study_uid, "")
    _check_identity(job.current.patient, prior.patient, "index")
    with ctx.db.session() as s:
        prior_paths = series_paths(s, prior_series_uid)
    if not prior_paths:
        raise JobError(f"prior series {prior_series_uid} of study {prior.study_uid}: no instances in the spool",
                       retryable=True)
    cur_vol, prior_vol = read_pair(ctx, job, prior_series_uid, prior_paths)
    res = register_pair(ctx, job.rule, cur_vol, prior_vol)
    result_dir, files, qc_png = write_outputs(ctx, job.rule, cur_vol, prior_vol, res)
    qc, suspicious, problems = qc_check.assess(res.report, ctx.cfg.qc)
    reason = f"prior {prior.study_uid} series {prior_series_uid} registered; {len(files)} objects written"
    if problems:
        reason += "; QC suspicious: " + "; ".join(problems)
    return JobResult(outcome=OUTCOME_REGISTERED, reason=reason, sends=list(job.rule.send_to), n_files=len(files),
                     fields=dict(prior_series_uid=prior_series_uid, prior_study_uid=prior.study_uid, qc=qc,
                                 suspicious=suspicious, result_dir=str(result_dir), qc_png=qc_png))


PROCESSORS: dict[str, Callable[[WorkerContext], JobResult]] = {"register": register_job, "sleep": sleep_job}
