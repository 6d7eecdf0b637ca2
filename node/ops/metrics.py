"""Prometheus metrics of the node: one registry, the metric objects the stages update, and the text exposition.

Other stages import the objects and update them::

    from node.ops import metrics
    metrics.INSTANCES_RECEIVED.inc()                                   # one stored C-STORE instance
    metrics.STAGE_DURATION.labels(stage="register").observe(seconds)   # wall time of one job stage, seconds
    metrics.SEND_FAILURES.labels(destination="pacs").inc()             # one failed send attempt
    metrics.QUEUE_LENGTH.set(n)                                        # jobs waiting for a worker

Jobs by state are not pushed by anyone: :class:`JobStateCollector` counts them in the database at scrape time
(``totalreg_jobs{state="..."}``), so the number is right even with several worker processes. The web console also
refreshes ``totalreg_queue_length`` from the database at each scrape when it knows the database.

All series carry the ``totalreg_`` prefix. Durations are in seconds.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: the node's registry (not prometheus_client's global default one, so tests and embedding stay clean)
REGISTRY = CollectorRegistry(auto_describe=True)

#: instances stored by THIS process's receiver; exported (below) together with the node's other receiver processes
INSTANCES_RECEIVED = Counter(
    "totalreg_instances_received", "DICOM instances received and stored (C-STORE success)", registry=None)
_other_receivers: Callable[[], float] | None = None


def count_other_receivers(total: Callable[[], float] | None) -> None:
    """Set where the instances stored by the node's other receiver processes are counted (their shared load
    table, :class:`node.receive.shared_listener.ReceiverLoad`); None: this process is the only receiver."""
    global _other_receivers
    _other_receivers = total


class _ReceivedCollector(Collector):
    """``totalreg_instances_received_total``: this process's receiver plus the node's receiver children."""

    def collect(self):
        total = INSTANCES_RECEIVED._value.get()
        if _other_receivers is not None:
            try:
                total += float(_other_receivers())
            except Exception:  # noqa: BLE001 - a scrape never fails for it
                pass
        fam = CounterMetricFamily("totalreg_instances_received",
                                  "DICOM instances received and stored (C-STORE success), all receiver processes")
        fam.add_metric([], total)
        yield fam

    def describe(self):
        return []


REGISTRY.register(_ReceivedCollector())
SEND_FAILURES = Counter(
    "totalreg_send_failures", "Failed attempts to send results, by destination name", ["destination"],
    registry=REGISTRY)
STAGE_DURATION = Histogram(
    "totalreg_stage_duration_seconds", "Wall time of one job stage in seconds, by stage", ["stage"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600), registry=REGISTRY)
QUEUE_LENGTH = Gauge(
    "totalreg_queue_length", "Jobs waiting for a worker (state queued)", registry=REGISTRY)

#: every job state the console knows; states found in the database but not listed here are exported too
KNOWN_JOB_STATES = ("queued", "running", "done", "failed", "dead")  # node.store.db.JOB_STATES


class JobStateCollector(Collector):
    """Collects ``totalreg_jobs{state}`` by calling ``count_by_state()`` (state -> number of jobs) at scrape time."""

    def __init__(self, count_by_state: Callable[[], Mapping[str, int]]):
        self._count = count_by_state

    def collect(self) -> Iterable[GaugeMetricFamily]:
        fam = GaugeMetricFamily("totalreg_jobs", "Jobs in the database by state", labels=["state"])
        try:
            counts = dict(self._count())
        except Exception:  # an unreachable database must not break the whole scrape; /healthz reports it
            counts = {}
        for state in sorted(set(KNOWN_JOB_STATES) | set(counts)):
            fam.add_metric([state], float(counts.get(state, 0)))
        yield fam

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


def render(extra: Collector | None = None) -> bytes:
    """The Prometheus text exposition of the node registry plus an optional per-app collector (e.g. job states)."""
    out = generate_latest(REGISTRY)
    if extra is not None:
        reg = CollectorRegistry(auto_describe=False)
        reg.register(extra)
        out += generate_latest(reg)
    return out
