"""One purge, consistent at every step, and the start-up repair of an interrupted one.

Order (so that no index row ever points at a deleted file that someone may still read, and a crash anywhere is
finished at the next start):

1. ONE transaction: the usage, the protected set and the plan are read (:func:`node.retention.policy.plan`) and the
   rows are **marked**: a study becomes ``state='purging'`` with ``n_instances = size_bytes = 0`` (every reader —
   routing, the prior finder, the worker — ignores studies without instances) and ``round_started_at`` = the mark
   time; a job's results are unhooked (``result_dir = qc_png = ''``). Each mark is a conditional update that
   re-checks the row (a late instance or a new send between plan and mark keeps it). Job records and old events
   are deleted here too (rows only). On PostgreSQL the jobs table is locked (SHARE ROW EXCLUSIVE) for this short
   transaction so no job is claimed or enqueued between reading the protected set and marking; on SQLite every
   transaction already holds the write lock.
2. The **files** go: a marked study's instance files (only those received before the mark), then its empty
   folders; a job's ``results/<id>/`` folder.
3. ONE transaction deletes the **rows** (instances, series, study) and writes the purge event(s). An instance that
   arrived after the mark keeps its row and file: the study is then ``receiving`` again with its counts recomputed.

:func:`repair` (called at start-up) finishes steps 2-3 for every study still ``purging`` and removes results
folders no job points at (finished jobs only), i.e. everything a crash between two steps can leave.
Sizes are bytes; times naive UTC.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from node import audit
from node.ops.backup import backup_running
from node.retention.policy import Plan, _undelivered, plan
from node.retention.usage import ResultSizes, measure
from node.receive.spool import safe_name
from node.store.db import (JOB_DEAD, JOB_DONE, JOB_FAILED, STUDY_COMPLETE, STUDY_RECEIVING, STUDY_ROUTE_FAILED,
                           Database, Instance, Job, JobRun, Send, Series, Study, add_event, utcnow)
from node.store.db import Event

log = logging.getLogger(__name__)

STUDY_PURGING = "purging"  # studies.state while a purge deletes the study's files (see module docstring)


def roots(cfg) -> tuple[Path, Path]:
    """(spool root, results root) of a configuration: ``<data_dir>/spool`` and ``<data_dir>/results``."""
    data = Path(cfg.node.data_dir).resolve()
    return data / "spool", data / "results"


@dataclass
class PurgeResult:
    """What one purge (or repair) did. ``plan`` is what was chosen; ``done`` counts what was deleted."""

    plan: Plan
    dry_run: bool = False
    studies: int = 0
    priors: int = 0
    instances: int = 0
    study_bytes: int = 0
    results: int = 0
    results_bytes: int = 0
    job_records: int = 0
    events: int = 0
    kept: list[str] = field(default_factory=list)  # items the mark re-check kept (changed since the plan)
    skipped: str = ""  # why nothing was done (a backup was running)

    @property
    def bytes(self) -> int:
        """Bytes of files deleted."""
        return self.study_bytes + self.results_bytes

    def summary(self) -> str:
        """One plain line with counts and bytes."""
        return (f"{self.studies} received studies, {self.priors} retrieved priors ({self.instances} instances, "
                f"{self.study_bytes} bytes), {self.results} job results ({self.results_bytes} bytes), "
                f"{self.job_records} job records, {self.events} events")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def _mark(s: Session, p: Plan, now: _dt.datetime, res: PurgeResult) -> tuple[list[tuple[int, str]], list]:
    """Step 1's marks (see module docstring); returns (marked studies (id, uid), unhooked results (job, dir))."""
    studies, results = [], []
    for item in p.items:
        if item.kind in ("study", "prior"):
            n = s.execute(update(Study).where(
                Study.id == item.row_id, Study.state.in_((STUDY_COMPLETE, STUDY_ROUTE_FAILED)),
                Study.follow_up_pending == False)  # noqa: E712
                .values(state=STUDY_PURGING, n_instances=0, size_bytes=0, round_started_at=now)
                .execution_options(synchronize_session=False)).rowcount
            if n:
                studies.append((item.row_id, item.key))
            else:
                res.kept.append(f"{item.kind} {item.key}")
        else:
            row = s.execute(select(Job.id, Job.result_dir).where(Job.id == item.row_id, Job.result_dir != "",
                                                                   ~_undelivered())).first()
            if row is None:
                res.kept.append(f"results {item.key}")
                continue
            s.execute(update(Job).where(Job.id == row[0]).values(result_dir="", qc_png="")
                      .execution_options(synchronize_session=False))
            results.append((row[0], row[1]))
    if p.job_records:
        ids = list(s.scalars(select(Job.id).where(
            Job.id.in_(p.job_records), Job.state.in_((JOB_DONE, JOB_FAILED, JOB_DEAD)), Job.result_dir == "",
            ~_undelivered())))
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            s.execute(delete(Send).where(Send.job_id.in_(chunk)).execution_options(synchronize_session=False))
            s.execute(delete(JobRun).where(JobRun.job_id.in_(chunk)).execution_options(synchronize_session=False))
            s.execute(delete(Job).where(Job.id.in_(chunk)).execution_options(synchronize_session=False))
        res.job_records = len(ids)
    if p.events_before is not None:
        res.events = s.execute(delete(Event).where(Event.at < p.events_before)
                               .execution_options(synchronize_session=False)).rowcount or 0
    return studies, results


def _delete_study_files(db: Database, spool_root: Path, study_id: int, study_uid: str) -> None:
    """Step 2 for one marked study: unlink its instance files received before the mark, then empty folders."""
    with db.session() as s:
        mark = s.scalar(select(Study.round_started_at).where(Study.id == study_id))
        paths = list(s.scalars(select(Instance.path).where(Instance.study_uid == study_uid,
                                                            Instance.received_at <= mark)))
    folders = {spool_root / safe_name(study_uid)}
    for raw in paths:
        path = Path(raw)
        if not _inside(path, spool_root):  # never follow an index path out of the spool
            log.warning("purge: %s is outside the spool; not deleted", path)
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        folders.add(path.parent)
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):  # series folders, then the study's
        try:
            folder.rmdir()
        except OSError:  # not empty (an instance that arrived after the mark) or already gone
            pass


def _delete_study_rows(s: Session, study_id: int, study_uid: str, now: _dt.datetime) -> tuple[int, int, str]:
    """Step 3 for one marked study: (instances deleted, their bytes, origin); the rows of files still on disk
    (arrived after the mark) stay and the study is receiving again."""
    st = s.get(Study, study_id)
    if st is None or st.state != STUDY_PURGING:
        return 0, 0, ""
    mark = st.round_started_at
    n, nbytes = s.execute(select(func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0))
                          .where(Instance.study_uid == study_uid, Instance.received_at <= mark)).one()
    s.execute(delete(Instance).where(Instance.study_uid == study_uid, Instance.received_at <= mark)
              .execution_options(synchronize_session=False))
    left = s.execute(select(Instance.series_uid, func.count(Instance.id), func.sum(Instance.size_bytes))
                     .where(Instance.study_uid == study_uid).group_by(Instance.series_uid)).all()
    origin = st.origin
    if not left:
        s.execute(delete(Series).where(Series.study_id == study_id).execution_options(synchronize_session=False))
        s.execute(delete(Study).where(Study.id == study_id).execution_options(synchronize_session=False))
        s.expunge(st)
    else:
        per = {r[0]: r[1] for r in left}
        for se in s.scalars(select(Series).where(Series.study_id == study_id)).all():
            if se.series_uid in per:
                se.n_instances = per[se.series_uid]
            else:
                s.delete(se)
        st.n_instances, st.size_bytes = sum(per.values()), int(sum(r[2] or 0 for r in left))
        st.state, st.round_started_at, st.last_received_at = STUDY_RECEIVING, now, now
        add_event(s, f"study kept: {st.n_instances} instances arrived while it was being purged",
                  kind="retention", study_uid=study_uid)
    return int(n), int(nbytes), origin


def _finish(db: Database, cfg, studies: list[tuple[int, str]], results: list[tuple[int, str]],
            res: PurgeResult, now: _dt.datetime, what: str, actor: tuple[str, str] = ("node", "node")) -> None:
    """Steps 2 and 3 for marked studies and unhooked results, then the purge event and its audit record
    (``actor``: (who, via) as :func:`node.audit.record` takes them)."""
    spool_root, results_root = roots(cfg)
    for study_id, uid in studies:
        _delete_study_files(db, spool_root, study_id, uid)
    for job_id, d in results:
        folder = Path(d) if d else results_root / str(job_id)
        if not _inside(folder, results_root):
            folder = results_root / str(job_id)
        shutil.rmtree(folder, ignore_errors=True)
    with db.session() as s:
        for study_id, uid in studies:
            n, nbytes, origin = _delete_study_rows(s, study_id, uid, now)
            if not origin:
                continue
            if origin == "retrieved":
                res.priors += 1
            else:
                res.studies += 1
            res.instances += n
            res.study_bytes += nbytes
            add_event(s, f"study purged ({'retrieved prior' if origin == 'retrieved' else 'received study'}, "
                      f"{n} instances, {nbytes} bytes)", kind="retention", study_uid=uid)
        sizes = {i.row_id: i.bytes for i in res.plan.items if i.kind == "results"}
        for job_id, _d in results:
            res.results += 1
            res.results_bytes += sizes.get(job_id, 0)
            add_event(s, f"results of job {job_id} purged ({sizes.get(job_id, 0)} bytes)", kind="retention",
                      job_id=job_id)
        if res.studies or res.priors or res.results or res.job_records or res.events:
            reasons = {}
            for i in res.plan.items:
                reasons[i.reason] = reasons.get(i.reason, 0) + 1
            u = res.plan.usage
            usage = (f"; {u.metric} usage {u.used} bytes (high {u.high_bytes}, low {u.low_bytes})" if u else "")
            message = (f"{what}: {res.summary()}; deleted {res.bytes} bytes"
                       f"{'; reasons ' + ', '.join(f'{k} {v}' for k, v in sorted(reasons.items())) if reasons else ''}"
                       f"{usage}")
            add_event(s, message, kind="retention")
            audit.record(s, "purge", actor=actor[0], via=actor[1], object_type="retention", object_id=what,
                         detail=message)


def purge(db: Database, cfg, *, dry_run: bool = False, sizes: ResultSizes | None = None,
          now: _dt.datetime | None = None, headroom: int = 0, actor: tuple[str, str] = ("node", "node")) -> PurgeResult:
    """Run one purge (or, with ``dry_run``, only plan it in the same way and roll back); see the module docstring.
    ``headroom``: bytes that may arrive before the next pass (the periodic purge passes its recent growth), so the
    usage stays under the high watermark between passes.

    The plan of a dry run and of a real run on the same state are the same list (same function, same transaction
    shape). ``actor``: (who, via) of the audit record a real purge leaves: ("node", "node") for the periodic purge,
    the operating-system user and "cli" for `totalreg purge`."""
    sizes = sizes if sizes is not None else ResultSizes()
    now = now or utcnow()
    spool_root, _ = roots(cfg)
    if not dry_run and backup_running(cfg.node.data_dir):  # `totalreg backup` is copying the files rows name
        log.info("purge skipped: a backup is running")
        return PurgeResult(plan=Plan(), skipped="a backup is running")
    with db.session() as s:  # plan and marks in one transaction (the dry run rolls it back)
        if db.is_postgres:
            s.execute(text("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE"))
        usage = measure(s, cfg.retention, spool_root, sizes)
        p = plan(s, cfg, usage, sizes, now, headroom)
        res = PurgeResult(plan=p, dry_run=dry_run)
        if dry_run:
            s.rollback()
            res.job_records, res.events = len(p.job_records), p.n_events
            return res
        studies, results = _mark(s, p, now, res)
    _finish(db, cfg, studies, results, res, now, "purge", actor)
    sizes.forget(j for j, _ in results)
    if res.bytes or res.job_records or res.events:
        log.info("purge: %s", res.summary())
    return res


def repair(db: Database, cfg) -> PurgeResult:
    """Start-up: finish purges a crash interrupted (studies still ``purging``: files, then rows) and remove results
    folders that no job points at (finished jobs, or jobs no longer in the index)."""
    now = utcnow()
    res = PurgeResult(plan=Plan())
    with db.session() as s:
        studies = [(r[0], r[1]) for r in s.execute(select(Study.id, Study.study_uid)
                                                   .where(Study.state == STUDY_PURGING)).all()]
    _finish(db, cfg, studies, [], res, now, "interrupted purge finished")
    _, results_root = roots(cfg)
    if results_root.is_dir():
        names = [e.name for e in os.scandir(results_root) if e.is_dir(follow_symlinks=False)]
        ids = [int(n) for n in names if n.isdigit()]
        with db.session() as s:
            jobs = {r[0]: r for r in s.execute(select(Job.id, Job.state, Job.result_dir)
                                               .where(Job.id.in_(ids))).all()} if ids else {}
        orphans = [j for j in ids if j not in jobs or (jobs[j][1] in (JOB_DONE, JOB_FAILED, JOB_DEAD)
                                                       and not jobs[j][2])]
        for j in orphans:
            shutil.rmtree(results_root / str(j), ignore_errors=True)
        if orphans:
            with db.session() as s:
                add_event(s, f"start-up: {len(orphans)} results folders no job pointed at removed (jobs "
                          f"{', '.join(map(str, orphans[:20]))}{' ...' if len(orphans) > 20 else ''})",
                          kind="retention", level="WARNING")
        res.results = len(orphans)
    if studies or res.results:
        log.warning("repaired an interrupted purge: %s", res.summary())
    return res
