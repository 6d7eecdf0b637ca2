"""How much the node holds, from the index (no spool walk): bytes of received studies and of job results, and the
spool's file system usage; and the watermarks resolved to bytes.

Sizes are bytes. The spool total is ``SUM(studies.size_bytes)`` (the receiver adds every instance's size to its
study's row in the same transaction that indexes it). Job results are measured once per job (one walk of that job's
``results/<id>/`` folder) and cached by :class:`ResultSizes`.
"""
from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from node.store.db import Job, Study


def folder_bytes(path: str | Path) -> int:
    """Total size in bytes of the regular files below ``path`` (0 when it does not exist); symlinks not followed."""
    total = 0
    stack = [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


class ResultSizes:
    """Bytes of each job's results folder, measured once per job (thread-safe)."""

    def __init__(self):
        self._sizes: dict[int, int] = {}
        self._lock = threading.Lock()

    def refresh(self, session: Session) -> int:
        """Measure the results of jobs not seen yet, forget jobs whose results are gone; returns the total bytes."""
        rows = session.execute(select(Job.id, Job.result_dir).where(Job.result_dir != "")).all()
        live = {r[0] for r in rows}
        with self._lock:
            for jid in [j for j in self._sizes if j not in live]:
                del self._sizes[jid]
            todo = [(jid, d) for jid, d in rows if jid not in self._sizes]
        for jid, d in todo:
            size = folder_bytes(d)
            with self._lock:
                self._sizes[jid] = size
        return self.total()

    def get(self, job_id: int, result_dir: str) -> int:
        """Bytes of one job's results (measured now if not cached)."""
        with self._lock:
            if job_id in self._sizes:
                return self._sizes[job_id]
        size = folder_bytes(result_dir)
        with self._lock:
            self._sizes[job_id] = size
        return size

    def forget(self, job_ids) -> None:
        """Drop purged jobs from the cache."""
        with self._lock:
            for j in job_ids:
                self._sizes.pop(j, None)

    def total(self) -> int:
        """Sum of the cached sizes in bytes."""
        with self._lock:
            return sum(self._sizes.values())


@dataclass
class Usage:
    """The node's disk use (bytes) and the watermarks resolved to bytes of ``metric``.

    ``metric`` is ``'node'`` (spool + results as the index counts them; when ``max_bytes`` is set or a watermark is
    given in bytes) or ``'filesystem'`` (the spool file system's used bytes, as ``df`` counts them)."""

    spool_bytes: int
    results_bytes: int
    fs_used: int
    fs_total: int
    metric: str
    high_bytes: int
    low_bytes: int
    max_bytes: int | None

    @property
    def node_bytes(self) -> int:
        """Spool + results bytes."""
        return self.spool_bytes + self.results_bytes

    @property
    def used(self) -> int:
        """Bytes of the metric the watermarks apply to."""
        return self.node_bytes if self.metric == "node" else self.fs_used

    def to_free(self, headroom: int = 0) -> int:
        """Bytes to delete now: down to the low watermark once above the high one (or once ``headroom`` more bytes,
        what may arrive before the next pass, would take it above), else 0."""
        return self.used - self.low_bytes if self.used + max(0, headroom) > self.high_bytes else 0

    def as_dict(self) -> dict:
        """JSON-ready figures (bytes)."""
        return dict(spool_bytes=self.spool_bytes, results_bytes=self.results_bytes, node_bytes=self.node_bytes,
                    fs_used=self.fs_used, fs_total=self.fs_total, metric=self.metric, used=self.used,
                    high_bytes=self.high_bytes, low_bytes=self.low_bytes, max_bytes=self.max_bytes)


def spool_bytes(session: Session) -> int:
    """Bytes of the spool according to the index: the sum of every study's ``size_bytes``."""
    return int(session.scalar(select(func.coalesce(func.sum(Study.size_bytes), 0))) or 0)


def filesystem(path: str | Path) -> tuple[int, int]:
    """(used, total) bytes of the file system holding ``path`` as ``df`` counts them: used / (used + available)."""
    du = shutil.disk_usage(path)
    return du.used, du.used + du.free


def _threshold(value, base: int) -> int:
    if isinstance(value, str) and value.endswith("%"):
        return int(float(value[:-1]) / 100.0 * base)
    return int(value)


def measure(session: Session, settings, spool_root: str | Path, results: ResultSizes | None = None) -> Usage:
    """Current :class:`Usage` for ``settings`` (:class:`node.config.RetentionSettings`)."""
    sp = spool_bytes(session)
    rb = results.refresh(session) if results is not None else ResultSizes().refresh(session)
    root = Path(spool_root)
    used, total = filesystem(root if root.exists() else root.parent)
    hi, lo, mx = settings.high_watermark, settings.low_watermark, settings.max_bytes
    node_metric = mx is not None or not isinstance(hi, str) or not isinstance(lo, str)
    base = mx if mx is not None else total
    return Usage(spool_bytes=sp, results_bytes=rb, fs_used=used, fs_total=total,
                 metric="node" if node_metric else "filesystem", high_bytes=_threshold(hi, base),
                 low_bytes=_threshold(lo, base), max_bytes=mx)
