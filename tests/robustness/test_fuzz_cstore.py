"""Fuzzing the C-STORE path of a running `totalreg serve` with hypothesis.

Each example damages a valid CT slice (dataset-level and/or byte-level, see ``mutations``) and sends the bytes as
they are (pynetdicom chunked send: only the file meta is parsed by the sender).  Per example:

* the node answers (no hang, no dropped association without a status);
* a refusal is a failure status (0xA9xx / 0xCxxx / 0x01xx), never 'out of resources' (0xA7xx: the disk is fine,
  a sender would retry bad input forever), and leaves nothing behind (no index row, no spool file);
* an acceptance (0x0000) adds at most one instance;
* the node keeps serving: C-ECHO on a fresh association succeeds.
Across the run the node's RSS stays bounded.  CI: ~50 examples; slow: thousands.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import func, select

from .conftest import nodefx
from .mutations import NON_IMAGE_CLASSES, byte_mutation, dataset_mutation, encode_body, part10
from .support import db_of, rss_mib, write_figures

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the values we damage

CI_EXAMPLES, FULL_EXAMPLES = 50, 1500
RSS_GROWTH_LIMIT_MIB = 150.0


class FuzzTarget:
    """A node subprocess + its database, and counters of what the fuzzer saw."""

    def __init__(self, tmp: Path):
        self.cfg, self.path = nodefx.write_node_config(tmp, completion={"quiet_seconds": 3600,
                                                                        "max_wait_seconds": 36000})
        self.node = nodefx.start_node(self.path)
        self.db = db_of(self.cfg)
        self.template = dcmread(nodefx.make_series(tmp / "tpl", n_slices=1, size=8)[0])
        self.work = tmp / "fuzz"
        self.work.mkdir()
        self.rss_before = rss_mib(self.node.proc.pid)
        self.statuses: dict[str, int] = {}
        self.examples = 0
        self.failures: dict[str, str] = {}  # kind -> first example

    def count(self) -> int:
        from node.store.db import Instance
        with self.db.session() as s:
            return s.scalar(select(func.count()).select_from(Instance))

    def spool_files(self) -> int:
        return sum(1 for _ in (Path(self.cfg.node.data_dir) / "spool").rglob("*.dcm"))

    def close(self):
        self.node.kill()
        self.db.dispose()


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    t = FuzzTarget(tmp_path_factory.mktemp("fuzz-cstore"))
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the (damaged) bytes exactly as they are
    yield t
    _config.STORE_SEND_CHUNKED_DATASET = old
    t.close()


def _send_bytes(target: FuzzTarget, data: bytes) -> tuple[int | None, str]:
    """Send one Part 10 byte string; (status or None, note)."""
    f = target.work / f"{generate_uid()}.dcm"
    f.write_bytes(data)
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for cls in [CTImageStorage, *NON_IMAGE_CLASSES]:  # the bytes are explicit VR LE: no conversion possible
        ae.add_requested_context(cls, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", target.node.port, ae_title="TOTALREG")
    assert assoc.is_established, "the node refused a plain association"
    try:
        st_ = assoc.send_c_store(f)
        if not st_ or "Status" not in st_:
            return None, "aborted" if assoc.is_aborted else "no answer"
        return int(st_.Status), ""
    finally:
        if assoc.is_established:
            assoc.release()
        f.unlink()


def _echo(port: int) -> bool:
    ae = AE(ae_title="FUZZECHO")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="TOTALREG")
    if not assoc.is_established:
        return False
    try:
        r = assoc.send_c_echo()
        return bool(r) and r.Status == 0
    finally:
        assoc.release()


def _check_one(target: FuzzTarget, data: bytes, what: str) -> None:
    before, files_before = target.count(), target.spool_files()
    status, note = _send_bytes(target, data)
    target.examples += 1
    key = "none" if status is None else f"0x{status:04X}"
    target.statuses[key] = target.statuses.get(key, 0) + 1
    assert status is not None, f"{what}: the node gave no C-STORE status ({note})\n{target.node.log()[-2000:]}"
    after, files_after = target.count(), target.spool_files()
    if status == 0:
        assert after - before in (0, 1), f"{what}: one C-STORE added {after - before} instances"
    else:
        assert not 0xA700 <= status <= 0xA7FF, f"{what}: bad input answered 'out of resources' 0x{status:04X}"
        assert status >= 0x0100 and status not in (0xB000, 0xB006, 0xB007), f"{what}: 0x{status:04X}"
        assert after == before and files_after == files_before, f"{what}: refused (0x{status:04X}) but stored"
    assert target.node.proc.poll() is None, f"{what}: the node died\n{target.node.log()[-3000:]}"
    assert _echo(target.node.port), f"{what}: the node no longer answers C-ECHO"


def _fuzz(target: FuzzTarget, n: int, derandomize: bool):
    @settings(max_examples=n, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                     HealthCheck.data_too_large])
    @given(data=st.data())
    def run(data):
        ds = copy.deepcopy(target.template)
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        names = []
        if data.draw(st.booleans(), label="dataset mutation"):
            name, f = data.draw(dataset_mutation(), label="dataset")
            f(ds)
            names.append(name)
        try:
            body = encode_body(ds)
        except Exception:  # noqa: BLE001 - pydicom cannot even encode it: nothing to send
            return
        if not names or data.draw(st.booleans(), label="byte mutation"):
            name, g = data.draw(byte_mutation(len(body)), label="bytes")
            body = g(body)
            names.append(name)
        what = " + ".join(names)
        try:
            _check_one(target, part10(ds.file_meta, body), what)
        except AssertionError as exc:  # record every kind of failure, go on while the node lives
            target.failures.setdefault(what.split(" ")[0] + " " + str(exc).split(":")[-1][:60], str(exc)[:300])
            if target.node.proc.poll() is not None:
                raise
    run()


def _memory_check(target: FuzzTarget, figures_name: str, t0: float) -> None:
    after = rss_mib(target.node.proc.pid)
    figures = {"examples": target.examples, "statuses": target.statuses, "rss_before_mib": target.rss_before,
               "failures": target.failures,
               "rss_after_mib": after, "instances_accepted": target.count(), "wall_s": round(time.monotonic() - t0, 1)}
    write_figures(figures_name, figures)
    assert not target.failures, "C-STORE path broke its contract:\n" + "\n".join(target.failures.values())
    assert after - target.rss_before < RSS_GROWTH_LIMIT_MIB, figures


def test_fuzz_cstore_ci(target):
    t0 = time.monotonic()
    _fuzz(target, CI_EXAMPLES, derandomize=True)  # the same examples on every CI run
    _memory_check(target, "fuzz_cstore_ci", t0)


@pytest.mark.slow
def test_fuzz_cstore_full(target):
    t0 = time.monotonic()
    _fuzz(target, FULL_EXAMPLES, derandomize=False)
    _memory_check(target, "fuzz_cstore_full", t0)
