"""Priors from a PACS that speaks DICOM TLS only (a real Orthanc with DicomTlsEnabled, mutual TLS).

``pacs: [{kind: dimse, tls: true, ca_file, client_cert, client_key}]``: the node's C-FIND and C-GET run over TLS,
the PACS's certificate checked against ca_file and host, the node's certificate presented. Without TLS, with an
untrusted PACS certificate, or without the node's certificate, the prior search fails with a reason that says so,
and the console's check of the PACS (C-ECHO) tells the same.
"""
from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from node.config import NodeConfig, PacsConfig, Rule
from node.priors.choice import find_priors
from node.store.study import PatientIdentity, SeriesSummary, StudySummary
from node.web.system import check_peer, peers
from orthanc_server import OrthancServer, orthanc_available, small_ct_study

from .certs import CA
from .conftest import nodefx
from .support import db_of, held_instances

pytestmark = [pytest.mark.orthanc, pytest.mark.skipif(not orthanc_available(), reason="Orthanc not installed")]

RULE = Rule(name="r", prior={"max_age_days": 3650})


@pytest.fixture(scope="module")
def tls_pacs(tmp_path_factory):
    """An Orthanc whose DICOM port is TLS-only and requires a client certificate signed by the site CA."""
    d = tmp_path_factory.mktemp("tlspacs")
    ca, rogue = CA(d / "ca", "Site CA"), CA(d / "rogue", "Rogue CA")
    server = ca.issue("orthanc", "ORTHANC", server=True, client_too=True)  # SCP, and SCU for C-MOVE
    node = ca.issue("node", "TOTALREG", server=False)
    stranger = rogue.issue("stranger", "TOTALREG", server=False)
    orthanc = OrthancServer(d / "orthanc", dicom_tls={"cert": server.cert, "key": server.key,
                                                     "trusted": ca.pair.cert, "require_client_cert": True})
    orthanc.start()
    files = small_ct_study(d / "prior", patient_id="TLS-1", patient_name="Tls^Pat", study_date="20230105", seed=4)
    orthanc.upload(files)
    yield {"orthanc": orthanc, "ca": ca, "rogue": rogue, "node": node, "stranger": stranger, "files": files,
           "node_server": ca.issue("node-server", "TOTALREG", server=True), "dir": d}
    orthanc.stop()


def _current() -> StudySummary:
    return StudySummary(study_uid="9.9.8", patient=PatientIdentity("TLS-1", "", "Tls^Pat", date(1960, 1, 1)),
                        study_date=date(2024, 3, 10),
                        series=[SeriesSummary(series_uid="9.9.8.1", modality="CT", n_instances=4)])


def _cfg(p, **over) -> NodeConfig:
    o = p["orthanc"]
    kw = dict(name="tls-pacs", ae_title=o.aet, host="127.0.0.1", port=o.dicom_port, retrieve="get", timeout_s=30,
              tls=True, ca_file=p["ca"].pair.cert, client_cert=p["node"].cert, client_key=p["node"].key)
    kw.update(over)
    return NodeConfig(pacs=[PacsConfig(**{k: v for k, v in kw.items() if v is not None})])


def test_prior_found_and_retrieved_over_mutual_tls(tls_pacs, tmp_path):
    d = find_priors(_cfg(tls_pacs), RULE, _current(), [], retrieve_into=tmp_path / "got")
    assert len(d.priors) == 1, d.reason
    assert len(d.priors[0].series[0].paths) == len(tls_pacs["files"]) and "C-GET" in d.notes[-1]
    check = check_peer(_cfg(tls_pacs), "pacs", "tls-pacs")
    assert check.ok and "success" in check.message
    o = tls_pacs["orthanc"]  # the console's peers table says how the PACS is reached
    assert peers(_cfg(tls_pacs))[0] == ("pacs", "tls-pacs", f"{o.aet}@127.0.0.1:{o.dicom_port} over TLS", "Echo")
    assert peers(_cfg(tls_pacs, tls=False, ca_file=None, client_cert=None, client_key=None))[0][2] == \
        f"{o.aet}@127.0.0.1:{o.dicom_port}"


def test_cmove_comes_back_over_tls_into_the_node_listener(tls_pacs, tmp_path):
    """retrieve: move with a TLS-only node listener that requires client certificates: Orthanc opens the C-MOVE's
    association to the node over TLS with its own certificate, the node stores and indexes every instance."""
    from node.receive.receiver import Receiver
    from node.service import make_spool
    from node.work.steps import SpoolSink

    p, ns = tls_pacs, tls_pacs["node_server"]
    o = p["orthanc"]
    pacs = dict(name="tls-pacs", ae_title=o.aet, host="127.0.0.1", port=o.dicom_port, retrieve="move",
                timeout_s=30, tls=True, ca_file=str(p["ca"].pair.cert), client_cert=str(p["node"].cert),
                client_key=str(p["node"].key))
    cfg, _ = nodefx.write_node_config(tmp_path, pacs=[pacs], node={"tls": {
        "cert_file": str(ns.cert), "key_file": str(ns.key), "ca_file": str(p["ca"].pair.cert),
        "require_client_cert": True}})
    o.add_modality("node", "TOTALREG", "127.0.0.1", cfg.node.port, tls=True)
    db = db_of(cfg)
    spool = make_spool(cfg)
    rcv = Receiver(cfg, db, spool)
    rcv.start()
    try:
        d = find_priors(cfg, RULE, _current(), [], retrieve_into=SpoolSink(cfg, db, spool))
        assert len(d.priors) == 1, d.reason
        assert "C-MOVE" in d.notes[-1]
        paths = d.priors[0].series[0].paths
        assert len(paths) == len(p["files"]) and all(Path(x).is_file() for x in paths)
        assert len(held_instances(db)) == len(p["files"])
    finally:
        rcv.stop()
        db.dispose()


@pytest.mark.parametrize("case", ["plain", "untrusted_pacs", "no_client_cert", "rogue_client_cert"])
def test_tls_failures_are_named(tls_pacs, tmp_path, case):
    over = {"plain": dict(tls=False, ca_file=None, client_cert=None, client_key=None),
            "untrusted_pacs": dict(ca_file=tls_pacs["rogue"].pair.cert),
            "no_client_cert": dict(client_cert=None, client_key=None),
            "rogue_client_cert": dict(client_cert=tls_pacs["stranger"].cert, client_key=tls_pacs["stranger"].key),
            }[case]
    cfg = _cfg(tls_pacs, **over)
    d = find_priors(cfg, RULE, _current(), [], retrieve_into=tmp_path / "got")
    assert d.priors == []
    assert "PACS 'tls-pacs' unreachable for C-FIND" in d.reason, d.reason
    if case != "plain":
        assert "over TLS" in d.reason and "ca_file" in d.reason
    assert not check_peer(cfg, "pacs", "tls-pacs").ok


def test_tls_settings_are_checked():
    with pytest.raises(ValueError, match="need tls: true"):
        PacsConfig(name="p", ae_title="A", host="h", port=104, ca_file="/x.pem")
    with pytest.raises(ValueError, match="https:// url"):
        PacsConfig(name="p", kind="dicomweb", url="https://pacs/dicom-web", tls=True)
    with pytest.raises(ValueError, match="both client_cert and client_key"):
        PacsConfig(name="p", ae_title="A", host="h", port=104, tls=True, client_cert="/c.pem")


def test_unreadable_tls_file_is_a_settings_failure(tmp_path):
    cfg = NodeConfig(pacs=[PacsConfig(name="tls-pacs", ae_title="A", host="127.0.0.1", port=104, tls=True,
                                      ca_file=tmp_path / "missing.pem")])
    d = find_priors(cfg, RULE, _current(), [], retrieve_into=tmp_path / "got")
    assert d.priors == [] and "TLS files of PACS 'tls-pacs' cannot be used" in d.reason, d.reason
    assert "missing.pem" in d.reason
    check = check_peer(cfg, "pacs", "tls-pacs")  # the console's check answers in words, it does not raise
    assert not check.ok and "TLS files of PACS 'tls-pacs' cannot be used" in check.message
