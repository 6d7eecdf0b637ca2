"""Index ↔ disk check: walks both the index (database) and ``<data_dir>/spool`` + ``<data_dir>/results`` and reports
every mismatch (``totalreg check``; the retention tests and the soak bench use :func:`check`).

Reported:

* ``missing_files``   instance rows whose spool file is gone, jobs whose ``result_dir`` / ``qc_png`` is gone;
* ``unknown_files``   ``.dcm`` files in the spool no instance row names; results folders no job points at;
* ``size_mismatch``   instance rows whose file has another size;
* ``count_mismatch``  studies whose ``n_instances`` / ``size_bytes`` differ from their instance rows;
* ``purging``         studies marked by a purge that did not finish (repaired at the next start);
* ``partials``        temporary ``.tmp-*.part`` files (a write in progress, or left by a crash: removed at start).

``ok`` is True when the first four lists are empty. Sizes are bytes. Run it on a quiet node (or a stopped one): a file
being received is on disk a moment before its row is committed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from node.retention.purge import STUDY_PURGING, roots
from node.store.db import JOB_QUEUED, JOB_RUNNING, Database, Instance, Job, Study


@dataclass
class CheckReport:
    """Result of :func:`check` (lists of plain strings naming paths, UIDs and job ids)."""

    instances: int = 0  # instance rows
    files: int = 0  # .dcm files in the spool
    index_bytes: int = 0  # SUM(studies.size_bytes)
    disk_bytes: int = 0  # bytes of the spool's .dcm files
    results_dirs: int = 0
    missing_files: list[str] = field(default_factory=list)
    unknown_files: list[str] = field(default_factory=list)
    size_mismatch: list[str] = field(default_factory=list)
    count_mismatch: list[str] = field(default_factory=list)
    purging: list[str] = field(default_factory=list)
    partials: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when index and disk agree."""
        return not (self.missing_files or self.unknown_files or self.size_mismatch or self.count_mismatch)

    def problems(self) -> int:
        """Number of mismatches."""
        return (len(self.missing_files) + len(self.unknown_files) + len(self.size_mismatch)
                + len(self.count_mismatch))

    def text(self, limit: int = 20) -> str:
        """A plain report: the counts, then up to ``limit`` lines per kind of mismatch."""
        lines = [f"index: {self.instances} instances, {self.index_bytes} bytes; spool: {self.files} files, "
                 f"{self.disk_bytes} bytes; {self.results_dirs} results folders",
                 "OK: index and disk agree" if self.ok else f"MISMATCH: {self.problems()} problems"]
        for name in ("missing_files", "unknown_files", "size_mismatch", "count_mismatch", "purging", "partials"):
            items = getattr(self, name)
            if items:
                lines.append(f"{name.replace('_', ' ')}: {len(items)}")
                lines += [f"  {x}" for x in items[:limit]]
                if len(items) > limit:
                    lines.append(f"  ... {len(items) - limit} more")
        return "\n".join(lines)


def check(db: Database, cfg) -> CheckReport:
    """Walk the index and the disk of ``cfg``'s node and report mismatches (see the module docstring)."""
    spool_root, results_root = roots(cfg)
    rep = CheckReport()
    disk: dict[str, int] = {}
    if spool_root.is_dir():
        for dirpath, _dirs, files in os.walk(spool_root):
            for name in files:
                p = os.path.join(dirpath, name)
                if name.startswith(".tmp-") and name.endswith(".part"):
                    rep.partials.append(p)
                elif name.endswith(".dcm"):
                    try:
                        disk[p] = os.stat(p, follow_symlinks=False).st_size
                    except FileNotFoundError:
                        pass
    rep.files, rep.disk_bytes = len(disk), sum(disk.values())
    seen: set[str] = set()
    with db.session() as s:
        rep.index_bytes = int(s.scalar(select(func.coalesce(func.sum(Study.size_bytes), 0))) or 0)
        purging = {r[0] for r in s.execute(select(Study.study_uid).where(Study.state == STUDY_PURGING))}
        rep.purging = sorted(purging)
        last = 0
        while True:
            rows = s.execute(select(Instance.id, Instance.path, Instance.size_bytes, Instance.study_uid)
                             .where(Instance.id > last).order_by(Instance.id).limit(5000)).all()
            if not rows:
                break
            last = rows[-1][0]
            for _id, path, size, study_uid in rows:
                rep.instances += 1
                key = str(Path(path))
                seen.add(key)
                if key not in disk:
                    if study_uid not in purging:
                        rep.missing_files.append(f"instance file {key} (study {study_uid})")
                elif disk[key] != size:
                    rep.size_mismatch.append(f"{key}: index {size} bytes, disk {disk[key]}")
        counts = s.execute(select(Instance.study_uid, func.count(Instance.id), func.sum(Instance.size_bytes))
                           .group_by(Instance.study_uid)).all()
        by_study = {r[0]: (int(r[1]), int(r[2] or 0)) for r in counts}
        for uid, n, size in s.execute(select(Study.study_uid, Study.n_instances, Study.size_bytes)
                                      .where(Study.state != STUDY_PURGING)).all():
            got = by_study.get(uid, (0, 0))
            if (n, size) != got:
                rep.count_mismatch.append(f"study {uid}: row says {n} instances / {size} bytes, "
                                          f"instance rows {got[0]} / {got[1]}")
        jobs = s.execute(select(Job.id, Job.result_dir, Job.qc_png, Job.state)).all()
    for p in disk:
        if p not in seen:
            rep.unknown_files.append(f"spool file {p}")
    pointed = {str(results_root / str(r[0])) for r in jobs if r[3] in (JOB_QUEUED, JOB_RUNNING)}  # being written
    for jid, rdir, qc, _state in jobs:
        if rdir:
            pointed.add(str(Path(rdir)))
            if not os.path.isdir(rdir):
                rep.missing_files.append(f"results folder {rdir} (job {jid})")
            elif qc and not os.path.isfile(qc):
                rep.missing_files.append(f"QC picture {qc} (job {jid})")
    if results_root.is_dir():
        for e in os.scandir(results_root):
            if e.is_dir(follow_symlinks=False):
                rep.results_dirs += 1
                if str(Path(e.path)) not in pointed:
                    rep.unknown_files.append(f"results folder {e.path}")
    return rep
