"""Helpers of the robustness suites: DICOM senders that record what was acknowledged, a recording Storage SCP
(a slow destination), RSS sampling of the node process, inventory of the node's spool and database, and the
figures written for ``bench/faults/RESULTS.md``.

Sizes are in instances and bytes; RSS in MiB (from ``/proc/<pid>/status`` VmRSS); times in seconds (monotonic).
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage, Verification

CT_TS = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]  # explicit / implicit VR little endian


# ------------------------------------------------------------------------------------------------------ sizes

def full_run(request) -> bool:
    """True when the test was selected with ``-m slow`` semantics (it carries the slow marker)."""
    return request.node.get_closest_marker("slow") is not None


def figures_dir() -> Path | None:
    """``$TOTALREG_FAULTS_OUT`` as a folder (created), or None when figures are not collected."""
    out = os.environ.get("TOTALREG_FAULTS_OUT")
    if not out:
        return None
    p = Path(out)
    p.mkdir(parents=True, exist_ok=True)
    return p


def write_figures(name: str, figures: dict) -> None:
    """Write ``figures`` as ``<name>.json`` into :func:`figures_dir` (no-op when unset)."""
    d = figures_dir()
    if d is not None:
        (d / f"{name}.json").write_text(json.dumps(figures, indent=1, sort_keys=True, default=str))


# -------------------------------------------------------------------------------------------------------- RSS

def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (VmRSS); 0.0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class RssSampler:
    """Samples the RSS of ``pid`` every ``period_s`` seconds in a thread: ``with RssSampler(pid) as s: ...``."""

    def __init__(self, pid: int, period_s: float = 0.5):
        self.pid, self.period_s = pid, period_s
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MiB)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            v = rss_mib(self.pid)
            if v:
                self.samples.append((round(time.monotonic() - self._t0, 2), round(v, 1)))
            self._stop.wait(self.period_s)

    def __enter__(self) -> "RssSampler":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(timeout=5)

    @property
    def peak(self) -> float:
        """Largest sample (MiB)."""
        return max((v for _, v in self.samples), default=0.0)

    @property
    def first(self) -> float:
        return self.samples[0][1] if self.samples else 0.0

    @property
    def last(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0


# -------------------------------------------------------------------------------------------------- senders

def wait_for(pred, timeout_s: float, what: str, node=None, poll_s: float = 0.2):
    """Poll ``pred()`` until truthy (returned) or raise AssertionError naming ``what`` (with the node's log tail)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(poll_s)
    tail = f"\n--- node log ---\n{node.log()[-4000:]}" if node is not None else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{tail}")


def scu_ae(calling: str = "ROBUST", timeout_s: float = 20.0, contexts=None) -> AE:
    """A pynetdicom SCU AE requesting CT storage (explicit + implicit LE) and Verification (or ``contexts``)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    if contexts is None:
        ae.add_requested_context(CTImageStorage, CT_TS)
        ae.add_requested_context(Verification)
    else:
        for c in contexts:
            ae.add_requested_context(c, CT_TS)
    return ae


@dataclass
class StreamSender:
    """Sends ``files`` over one association in a thread, recording the SOP UIDs answered 0x0000 (``acked``).

    Stops at the first failure status, when the association dies (the node was killed) or on ``stop()``.
    ``pause_s`` spaces the instances so a kill lands mid-stream."""

    port: int
    files: list[Path]
    calling: str = "MODALITY"
    pause_s: float = 0.0
    timeout_s: float = 20.0  # ACSE/DIMSE/network timeouts of the sender (modalities often use 30-60 s)
    repeat: bool = False  # after the last file start again (re-sends are idempotent) until stop() or a failure
    acked: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds from C-STORE request to response
    failures: list[tuple[str, int]] = field(default_factory=list)
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name=f"sender-{self.calling}")

    def start(self) -> "StreamSender":
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._t.join(timeout)

    @property
    def running(self) -> bool:
        return self._t.is_alive() and not self.done.is_set()

    def _files(self):
        while True:
            yield from self.files
            if not self.repeat:
                return

    def _run(self) -> None:
        try:
            ae = scu_ae(self.calling, timeout_s=self.timeout_s)
            assoc = ae.associate("127.0.0.1", self.port, ae_title="TOTALREG")
            if not assoc.is_established:
                self.error = "association not established"
                return
            try:
                for f in self._files():
                    if self._stop.is_set():
                        break
                    ds = dcmread(f)
                    t0 = time.monotonic()
                    st = assoc.send_c_store(ds)
                    self.latencies.append(time.monotonic() - t0)
                    if not st or "Status" not in st:
                        self.error = "no answer (association lost)"
                        break
                    code = int(st.Status)
                    if code != 0:
                        self.failures.append((str(ds.SOPInstanceUID), code))
                        break
                    self.acked.append(str(ds.SOPInstanceUID))
                    if self.pause_s:
                        time.sleep(self.pause_s)
            finally:
                if assoc.is_established:
                    assoc.release() if not self._stop.is_set() else assoc.abort()
        except Exception as exc:  # noqa: BLE001 - the node died under us: that is the point
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()


def send_all(port: int, files: list[Path], calling: str = "MODALITY") -> list[int]:
    """C-STORE every file on one association; the statuses (-1: no answer)."""
    ae = scu_ae(calling)
    assoc = ae.associate("127.0.0.1", port, ae_title="TOTALREG")
    assert assoc.is_established, f"association to 127.0.0.1:{port} as {calling} not established"
    out = []
    try:
        for f in files:
            st = assoc.send_c_store(dcmread(f))
            out.append(int(st.Status) if st and "Status" in st else -1)
    finally:
        if assoc.is_established:
            assoc.release()
    return out


# ---------------------------------------------------------------------------------------------- recording SCP

class RecordingSCP:
    """A Storage SCP (any storage class) on a free loopback port that records the SOP UIDs it acknowledged.

    ``delay_s`` slows every C-STORE (a slow PACS, so a node can be killed mid-send).  ``with RecordingSCP(...)``."""

    def __init__(self, ae_title: str = "DESTSCP", delay_s: float = 0.0, port: int | None = None):
        from tools import free_port
        self.ae_title, self.delay_s = ae_title, delay_s
        self.port = port or free_port()
        self.received: list[str] = []
        self._lock = threading.Lock()
        self.server = None

    def _store(self, event) -> int:
        if self.delay_s:
            time.sleep(self.delay_s)
        ds = event.dataset
        with self._lock:
            self.received.append(str(ds.SOPInstanceUID))
        return 0x0000

    def start(self) -> "RecordingSCP":
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, CT_TS)
        ae.add_supported_context(Verification)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def __enter__(self) -> "RecordingSCP":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def unique(self) -> set[str]:
        with self._lock:
            return set(self.received)


# ------------------------------------------------------------------------------------------ node inventory

def db_of(cfg):
    """A :class:`node.store.db.Database` on the node's database (the caller disposes it)."""
    from node.store.db import Database
    return Database(cfg.node.database_url())


def held_instances(db) -> dict[str, str]:
    """SOPInstanceUID -> spool path of every indexed instance."""
    from sqlalchemy import select
    from node.store.db import Instance
    with db.session() as s:
        return {uid: path for uid, path in s.execute(select(Instance.sop_instance_uid, Instance.path))}


def assert_acked_held(db, acked: list[str], originals: dict[str, Path], spool_root: Path) -> None:
    """Every acknowledged SOP UID is indexed, its spool file exists, parses, and carries the original pixels."""
    held = held_instances(db)
    lost = [u for u in acked if u not in held]
    assert not lost, f"{len(lost)} acknowledged instances lost, e.g. {lost[:3]}"
    for uid in acked:
        p = Path(held[uid])
        assert p.is_file(), f"acknowledged instance {uid}: spool file {p} missing"
        got = dcmread(p)
        assert str(got.SOPInstanceUID) == uid
        if uid in originals:
            assert got.PixelData == dcmread(originals[uid]).PixelData, f"{uid}: pixel data differs"
    assert not list(spool_root.rglob("*.part")), "half-written spool files left behind"


def node_log_tail(node, n: int = 3000) -> str:
    """The last ``n`` characters of a node's log (for assertion messages)."""
    return node.log()[-n:] if node is not None else ""


def make_result_files(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` small DICOM files standing in for a job's results (a tiny CT series of ``n`` slices)."""
    from totalreg_node_test_fixtures import make_series
    return make_series(folder, patient_id=f"RES{seed:04d}", n_slices=n, size=8, seed=seed)


def ct_dataset(folder: Path, **kw) -> Dataset:
    """One valid tiny CT slice as a Dataset (with file meta)."""
    from totalreg_node_test_fixtures import make_series
    return dcmread(make_series(folder, n_slices=1, **kw)[0])
