"""The periodic purge of ``totalreg serve`` and the status file the console's dashboard reads.

Every ``retention.tick_s`` seconds: one :func:`node.retention.purge.purge` (index queries + the results size cache,
no spool walk) with twice the largest growth between the last passes as headroom (so the usage stays under the high
mark until the next pass, even a late one), then a usage sample. ``<data_dir>/retention/status.json`` (written atomically) holds the latest
usage, the last samples (the trend), the time of the next purge and what the last purges did; the console reads it
with :func:`read_status`. Sizes are bytes, times ISO 8601 UTC.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import threading
import time
from pathlib import Path

from node.retention.purge import purge, roots
from node.retention.usage import ResultSizes, measure
from node.store.db import Database, utcnow

log = logging.getLogger(__name__)

MAX_SAMPLES = 60


def status_path(data_dir: str | Path) -> Path:
    """Where the retention status file of a node lives."""
    return Path(data_dir).resolve() / "retention" / "status.json"


def read_status(data_dir: str | Path) -> dict | None:
    """The retention status of a node (see the module docstring), or None before the first purge pass."""
    try:
        return json.loads(status_path(data_dir).read_text())
    except (OSError, ValueError):
        return None


class Retention:
    """The purge loop: ``run(stop)`` until ``stop`` is set; :meth:`tick` is one pass (also used by tests)."""

    def __init__(self, cfg, db: Database, tick_s: float | None = None):
        self.cfg, self.db = cfg, db
        self.tick_s = float(tick_s if tick_s is not None else cfg.retention.tick_s)
        self.sizes = ResultSizes()
        self.path = status_path(cfg.node.data_dir)
        old = read_status(cfg.node.data_dir) or {}
        self.samples: list = list(old.get("samples", []))[-MAX_SAMPLES:]
        self.purged_bytes = 0  # since this process started
        self.purges: list = list(old.get("purges", []))[-10:]
        self.peak_used = 0
        self.ticks = 0
        self.last_used: int | None = None  # the watermark metric after the last pass (bytes)
        self.growth: list[int] = []  # bytes that arrived between recent passes: the headroom kept below the high mark

    def tick(self) -> None:
        """One purge pass, then a usage sample and the status file."""
        headroom = 2 * max(self.growth) if self.growth else 0  # twice the largest recent growth: a late pass
        res = purge(self.db, self.cfg, sizes=self.sizes, headroom=headroom)
        now = utcnow()
        if res.plan.usage is not None and self.last_used is not None:  # bytes that arrived since the last pass
            self.growth = (self.growth + [max(0, res.plan.usage.used - self.last_used)])[-5:]
        if res.bytes or res.job_records or res.events:
            self.purged_bytes += res.bytes
            self.purges = (self.purges + [dict(at=now.isoformat(timespec="seconds"), bytes=res.bytes,
                                               summary=res.summary())])[-10:]
        with self.db.session() as s:
            usage = measure(s, self.cfg.retention, roots(self.cfg)[0], self.sizes)
        self.peak_used = max(self.peak_used, usage.used)
        self.last_used = usage.used
        self.samples = (self.samples + [[now.isoformat(timespec="seconds"), usage.node_bytes, usage.fs_used]]
                        )[-MAX_SAMPLES:]
        self.ticks += 1
        self._write(dict(updated_at=now.isoformat(timespec="seconds"), tick_s=self.tick_s,
                         next_purge_at=(now + _dt.timedelta(seconds=self.tick_s)).isoformat(timespec="seconds"),
                         usage=usage.as_dict(), samples=self.samples, purges=self.purges,
                         purged_bytes_since_start=self.purged_bytes, peak_used=self.peak_used,
                         headroom=headroom))

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)

    def run(self, stop: threading.Event) -> None:
        """Purge every ``tick_s`` seconds until ``stop`` is set (the first pass at once)."""
        log.info("retention: a purge pass every %.0f s", self.tick_s)
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the database may be briefly unavailable; next tick
                log.exception("retention: purge pass failed")
            stop.wait(max(0.0, self.tick_s - (time.monotonic() - t0)))


def dashboard_view(data_dir: str | Path, points: int = 12) -> dict | None:
    """What the console's dashboard shows about disk use and purging, from the status file (None before the first
    pass): the usage (bytes) and watermarks, a trend of up to ``points`` samples (an SVG polyline, 120 x 28 px, and
    bytes per hour over the samples), the next purge time and the last purge."""
    st = read_status(data_dir)
    if not st:
        return None
    u = st.get("usage", {})
    samples = st.get("samples", [])
    if len(samples) > points:
        step = (len(samples) - 1) / (points - 1)
        samples = [samples[round(i * step)] for i in range(points)]
    key = 1 if u.get("metric") == "node" else 2
    vals = [s[key] for s in samples]
    top = max(vals + [u.get("high_bytes", 0), 1])
    poly = " ".join(f"{i * 120 / max(1, len(vals) - 1):.0f},{28 - 26 * v / top:.1f}" for i, v in enumerate(vals))
    per_hour = None
    if len(samples) >= 2:
        t0 = _dt.datetime.fromisoformat(samples[0][0])
        t1 = _dt.datetime.fromisoformat(samples[-1][0])
        if t1 > t0:
            per_hour = (vals[-1] - vals[0]) / ((t1 - t0).total_seconds() / 3600)
    last = (st.get("purges") or [None])[-1]
    return dict(used=u.get("used", 0), node_bytes=u.get("node_bytes", 0), metric=u.get("metric", ""),
                high_bytes=u.get("high_bytes", 0), low_bytes=u.get("low_bytes", 0),
                fraction=min(1.0, u.get("used", 0) / max(1, u.get("high_bytes", 1))), trend=poly,
                high_y=f"{28 - 26 * u.get('high_bytes', 0) / top:.1f}", per_hour=per_hour, n_samples=len(vals),
                next_purge_at=st.get("next_purge_at", "").replace("T", " "), last_purge=last)
