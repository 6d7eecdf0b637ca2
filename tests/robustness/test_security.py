"""Security checks of the node: DICOM TLS, the calling-AE allow-list, no patient identifiers in logs at INFO, and
private spool files.

TLS uses certificates made at test time (``certs``): the node's listener requires client certificates signed by
its CA; a client certificate from another CA, no client certificate, a client that does not trust the node, and
plain TCP to the TLS port are all refused, and the listener keeps serving good clients.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import func, select

from .certs import CA, client_context
from .conftest import nodefx
from .support import db_of, wait_for, write_figures

PATIENT_NAME = "Zyxwvut^Quillanne"
PATIENT_ID = "PHI-7731-XYZ"


# ----------------------------------------------------------------------------------------------------- TLS

@pytest.fixture
def tls_node(tmp_path):
    """An in-process receiver configured from node.yaml with TLS + required client certificates."""
    from node.receive.receiver import Receiver
    from node.service import make_spool
    ca = CA(tmp_path / "pki", "Node CA")
    server = ca.issue("server", "totalreg-node", server=True)
    good = ca.issue("client-good", "MODALITY1", server=False)
    rogue_ca = CA(tmp_path / "pki-rogue", "Rogue CA")
    rogue = rogue_ca.issue("client-rogue", "MODALITY1", server=False)
    cfg, _ = nodefx.write_node_config(tmp_path, node={"tls": {"cert_file": str(server.cert),
                                                              "key_file": str(server.key),
                                                              "ca_file": str(ca.pair.cert),
                                                              "require_client_cert": True}})
    db = db_of(cfg)
    rcv = Receiver(cfg, db, make_spool(cfg))
    rcv.start()
    yield {"cfg": cfg, "db": db, "ca": ca, "good": good, "rogue": rogue, "rogue_ca": rogue_ca}
    rcv.stop()
    db.dispose()


def _tls_assoc(port: int, ctx):
    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    tls = (ctx, "localhost") if ctx is not None else None
    return ae.associate("127.0.0.1", port, ae_title="TOTALREG", tls_args=tls)


def _instances(db) -> int:
    from node.store.db import Instance
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Instance))


def test_tls_good_client_is_served(tls_node, tmp_path):
    t = tls_node
    ds = dcmread(nodefx.make_series(tmp_path / "in", n_slices=1)[0])
    assoc = _tls_assoc(t["cfg"].node.port, client_context(t["ca"].pair.cert, t["good"]))
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()
    assert _instances(t["db"]) == 1


@pytest.mark.parametrize("case", ["rogue_client_cert", "no_client_cert", "client_distrusts_node", "plain_tcp"])
def test_tls_bad_peers_are_refused_and_node_goes_on(tls_node, case):
    t = tls_node
    port = t["cfg"].node.port
    ctx = {"rogue_client_cert": lambda: client_context(t["ca"].pair.cert, t["rogue"]),
           "no_client_cert": lambda: client_context(t["ca"].pair.cert, None),
           "client_distrusts_node": lambda: client_context(t["rogue_ca"].pair.cert, t["good"]),
           "plain_tcp": lambda: None}[case]()
    try:
        assoc = _tls_assoc(port, ctx)
        established = assoc.is_established
        if established:  # TLS 1.3 reports a client-certificate refusal only at the first read
            try:
                st = assoc.send_c_echo()
                established = bool(st) and "Status" in st and st.Status == 0
            finally:
                if assoc.is_established:
                    assoc.abort()
    except Exception:  # noqa: BLE001 - an SSL error raised at connect is a refusal too
        established = False
    assert not established, f"{case}: the TLS listener served an untrusted peer"
    assert _instances(t["db"]) == 0
    good = _tls_assoc(port, client_context(t["ca"].pair.cert, t["good"]))  # still serving
    assert good.is_established
    assert good.send_c_echo().Status == 0
    good.release()


# ------------------------------------------------------------------- allow-list, logs, spool permissions

def _modes(root: Path) -> tuple[list[str], list[str]]:
    """(files not 0600, folders not 0700) under ``root`` (root included)."""
    bad_files, bad_dirs = [], []
    for p in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(os.lstat(p).st_mode)
        if p.is_dir() and mode != 0o700:
            bad_dirs.append(f"{p} {oct(mode)}")
        elif p.is_file() and mode != 0o600:
            bad_files.append(f"{p} {oct(mode)}")
    return bad_files, bad_dirs


@pytest.fixture(scope="module")
def full_job(tmp_path_factory):
    """One `totalreg serve` with an allow-list and default logging; rejected callers are tried, then a prior and a
    current study of one patient go through a full job (registered, delivered to the folder destination)."""
    from node.store.db import Event, Job, Send
    tmp = tmp_path_factory.mktemp("security-job")
    cfg, path = nodefx.write_node_config(
        tmp, node={"allowed_callers": ["MODALITY1", "ECHOSCU"]},  # ECHOSCU: start_node's readiness probe
        rules=[{"name": "ct-followup", "send_to": ["local"], "registration": {"device": "cpu", "iterations": 1}}])
    assert cfg.logging.level == "INFO" and not cfg.logging.phi_in_logs  # the defaults
    kw = dict(patient_id=PATIENT_ID, patient_name=PATIENT_NAME, n_slices=8, size=16)
    prior = nodefx.make_series(tmp / "prior", study_date="20230105", seed=1, **kw)
    cur = nodefx.make_series(tmp / "cur", study_date="20240310", seed=2, **kw)
    cur_uid = str(dcmread(cur[0]).StudyInstanceUID)
    db = db_of(cfg)
    node = nodefx.start_node(path)
    out = {"cfg": cfg, "n_files": len(prior) + len(cur), "rejected": {}}
    try:
        for caller in ("INTRUDER", "modality1", "MODALITY"):
            r = nodefx.storescu(node.port, cur[:2], calling=caller)
            ae = AE(ae_title=caller)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", node.port, ae_title="TOTALREG")
            out["rejected"][caller] = (r.returncode != 0, assoc.is_rejected)
            if assoc.is_established:
                assoc.release()
        out["instances_after_rejected"] = _instances(db)
        for files in (prior, cur):
            r = nodefx.storescu(node.port, files, calling="MODALITY1")
            assert r.returncode == 0, r.stderr[-1000:]

        def delivered():
            with db.session() as s:
                job = s.scalar(select(Job).where(Job.study_uid == cur_uid, Job.state == "done"))
                if job is None:
                    return None
                sends = s.scalars(select(Send).where(Send.job_id == job.id)).all()
                return job if sends and all(x.state == "done" for x in sends) else None
        out["job"] = wait_for(delivered, 600, "the job to be registered and delivered", node)
        with db.session() as s:
            out["events"] = " ".join(e.message for e in s.scalars(select(Event)))
        out["stop_rc"] = node.stop()
        out["log"] = node.log()
        yield out
    finally:
        node.kill()
        db.dispose()


def test_allow_list_rejects_unknown_callers(full_job):
    for caller, (storescu_failed, rejected) in full_job["rejected"].items():
        assert storescu_failed and rejected, f"calling AE {caller!r} was not rejected"
    assert full_job["instances_after_rejected"] == 0


def test_full_job_ran_and_stopped_gracefully(full_job):
    assert full_job["job"].outcome == "registered", (full_job["job"].outcome, full_job["job"].outcome_reason)
    assert full_job["stop_rc"] == 0


def test_no_patient_name_or_id_in_logs_or_events_at_info(full_job):
    log, events = full_job["log"], full_job["events"]
    assert "job" in log and len(log) > 200  # the log did record the work
    for needle in [PATIENT_ID, *PATIENT_NAME.split("^")]:
        assert needle.lower() not in log.lower(), f"patient identifier {needle!r} in the node's log at INFO"
        assert needle.lower() not in events.lower(), f"patient identifier {needle!r} in the audit events"


def test_spool_files_0600_folders_0700(full_job):
    spool = Path(full_job["cfg"].node.data_dir) / "spool"
    bad_files, bad_dirs = _modes(spool)
    assert not bad_files, f"spool files readable by others: {bad_files[:3]}"
    assert not bad_dirs, f"spool folders open to others: {bad_dirs[:3]}"
    assert sum(1 for _ in spool.rglob("*.dcm")) == full_job["n_files"]


def test_database_and_results_not_world_readable(full_job):
    """The database (patient names, IDs) and the result objects (full DICOM headers) hold patient data too."""
    data_dir = Path(full_job["cfg"].node.data_dir)
    world = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*")
                   if p.is_file() and stat.S_IMODE(os.lstat(p).st_mode) & 0o004)
    write_figures("security_full_job", {"log_bytes": len(full_job["log"]), "world_readable_under_data_dir": world})
    assert not world, f"{len(world)} files with patient data are world-readable under node.data_dir: {world[:4]}"
