"""``node.net.tls``: SSL contexts from ``node.tls`` settings, checked with real pynetdicom associations over TLS."""
from __future__ import annotations

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from node.config import TlsSettings
from node.net.tls import TlsConfigError, client_context, server_context

from .certs import CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = CA(d / "ca", "Node CA")
    rogue = CA(d / "rogue", "Rogue CA")
    return {"ca": ca, "server": ca.issue("server", "node", server=True),
            "modality": ca.issue("modality", "MODALITY1", server=False),
            "rogue_modality": rogue.issue("rogue-mod", "MODALITY1", server=False), "rogue": rogue, "dir": d}


def _serve(ctx):
    from tools import free_port
    ae = AE(ae_title="TOTALREG")
    ae.add_supported_context(Verification)
    port = free_port()
    return ae.start_server(("127.0.0.1", port), block=False, ssl_context=ctx), port


def _echo(port, ctx, host="localhost") -> bool:
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="TOTALREG", tls_args=(ctx, host))
    except Exception:  # noqa: BLE001 - SSL failure at connect
        return False
    if not assoc.is_established:
        return False
    try:
        st = assoc.send_c_echo()
        return bool(st) and "Status" in st and st.Status == 0
    finally:
        if assoc.is_established:
            assoc.release()


def _tls(pki, **kw) -> TlsSettings:
    base = dict(cert_file=pki["server"].cert, key_file=pki["server"].key, ca_file=pki["ca"].pair.cert,
                require_client_cert=True)
    return TlsSettings(**{**base, **kw})


def test_required_client_cert_good_and_rogue(pki):
    server, port = _serve(server_context(_tls(pki)))
    try:
        mod = TlsSettings(cert_file=pki["modality"].cert, key_file=pki["modality"].key, ca_file=pki["ca"].pair.cert)
        assert _echo(port, client_context(mod))
        rogue = TlsSettings(cert_file=pki["rogue_modality"].cert, key_file=pki["rogue_modality"].key,
                            ca_file=pki["ca"].pair.cert)
        assert not _echo(port, client_context(rogue))
        assert not _echo(port, client_context(ca_file=pki["ca"].pair.cert))  # no client certificate
        assert not _echo(port, client_context(mod, ca_file=pki["rogue"].pair.cert))  # node not trusted
        assert not _echo(port, client_context(mod), host="pacs.example.org")  # wrong host name
        assert _echo(port, client_context(mod))  # still serving
    finally:
        server.shutdown()


def test_optional_client_cert_verifies_what_is_presented(pki):
    server, port = _serve(server_context(_tls(pki, require_client_cert=False)))
    try:
        assert _echo(port, client_context(ca_file=pki["ca"].pair.cert))  # none presented: fine
        rogue = TlsSettings(cert_file=pki["rogue_modality"].cert, key_file=pki["rogue_modality"].key,
                            ca_file=pki["ca"].pair.cert)
        assert not _echo(port, client_context(rogue))  # presented but untrusted: refused
    finally:
        server.shutdown()


@pytest.mark.parametrize("case, words", [
    ("missing_cert", "node.tls.cert_file"),
    ("key_of_other_cert", "cannot be used together"),
    ("garbage_ca", "node.tls.ca_file"),
    ("required_without_ca", "needs node.tls.ca_file"),
])
def test_bad_tls_files_give_one_line_errors(pki, case, words):
    d = pki["dir"]
    if case == "missing_cert":
        tls = _tls(pki, cert_file=d / "nope.crt")
    elif case == "key_of_other_cert":
        tls = _tls(pki, key_file=pki["modality"].key)
    elif case == "garbage_ca":
        (d / "garbage.pem").write_text("not a certificate\n")
        tls = _tls(pki, ca_file=d / "garbage.pem")
    else:
        tls = _tls(pki, ca_file=None)
    with pytest.raises(TlsConfigError) as ei:
        server_context(tls)
    assert words in str(ei.value) and "\n" not in str(ei.value)


def test_node_listener_verifies_a_presented_client_cert_without_require(pki, tmp_path):
    """The node's own listener (node.receive.receiver) uses server_context: with ca_file but without
    require_client_cert a peer may come without a certificate, but one it presents must be signed by the CA."""
    from tools import free_port

    from node.config import NodeConfig
    from node.receive.receiver import Receiver
    from node.receive.spool import Spool
    from node.store.db import Database

    tls = {"cert_file": str(pki["server"].cert), "key_file": str(pki["server"].key),
           "ca_file": str(pki["ca"].pair.cert), "require_client_cert": False}
    cfg = NodeConfig.model_validate({"node": {"port": free_port(), "host": "127.0.0.1", "data_dir": str(tmp_path),
                                              "tls": tls}})
    db = Database(cfg.node.database_url())
    rcv = Receiver(cfg, db, Spool(tmp_path / "spool", min_free_mb=0))
    rcv.start()
    try:
        mod = TlsSettings(cert_file=pki["modality"].cert, key_file=pki["modality"].key, ca_file=pki["ca"].pair.cert)
        rogue = TlsSettings(cert_file=pki["rogue_modality"].cert, key_file=pki["rogue_modality"].key,
                            ca_file=pki["ca"].pair.cert)
        assert _echo(cfg.node.port, client_context(ca_file=pki["ca"].pair.cert))  # none presented: fine
        assert not _echo(cfg.node.port, client_context(rogue))  # presented but untrusted: refused
        assert _echo(cfg.node.port, client_context(mod))
    finally:
        rcv.stop()
        db.dispose()


def test_outgoing_dicom_destination_over_tls(pki):
    """A dicom destination with tls: true associates over TLS (its certificate checked, the node's presented)."""
    from node import destinations
    from node.config import DestinationConfig

    server, port = _serve(server_context(_tls(pki)))  # the destination requires a client certificate
    try:
        def check(**opts):
            dest = DestinationConfig(name="pacs", kind="dicom", ae_title="TOTALREG", host="127.0.0.1", port=port,
                                     **opts)
            return destinations.get("dicom").check(dest, calling_ae="NODE", timeout_s=5)

        node_cert = dict(cert_file=pki["modality"].cert, key_file=pki["modality"].key)
        assert check(tls=True, ca_file=pki["ca"].pair.cert, **node_cert)[0]
        assert not check(tls=True, ca_file=pki["rogue"].pair.cert, **node_cert)[0]  # destination not trusted
        assert not check(tls=True, ca_file=pki["ca"].pair.cert)[0]  # no certificate to present
        assert not check()[0]  # plain TCP to a TLS listener
    finally:
        server.shutdown()
