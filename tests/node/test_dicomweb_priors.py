"""Priors over DICOMweb (``pacs[].kind: dicomweb``): QIDO-RS + WADO-RS against a real Orthanc (its DICOMweb plugin),
the node's spool sink (fsync + index, the C-STORE path), paging, auth messages, retries, and a scripted HTTP server
for answers Orthanc never gives (503s, a single application/dicom body, a cut multipart answer)."""
from __future__ import annotations

import json
import threading
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from orthanc_server import OrthancServer, orthanc, orthanc_available, small_ct_study  # noqa: F401 - fixture
from pydicom import dcmread
from sqlalchemy import select

from node.config import NodeConfig, PacsConfig, Rule, parse_config
from node.net.multipart import encode_related
from node.priors import dicomweb
from node.priors.choice import find_priors
from node.priors.pacs import FolderSink
from node.store.study import PatientIdentity, StudySummary

pytestmark = pytest.mark.skipif(not orthanc_available(), reason="Orthanc not installed")

PID = "DW-1"


def _current(issuer: str = "") -> StudySummary:
    return StudySummary(study_uid="1.2.3.999", patient=PatientIdentity(PID, issuer, "Web^Pat", date(1960, 1, 1), "O"),
                        study_date=date(2024, 3, 10))


@pytest.fixture(scope="module")
def pacs_studies(orthanc, tmp_path_factory):
    """Three studies of patient DW-1 in Orthanc (2021, 2022, 2023; 4 CT slices each) and one of another patient."""
    tmp = tmp_path_factory.mktemp("dwstudies")
    out = {}
    for i, day in enumerate(("20210101", "20220101", "20230101")):
        files = small_ct_study(tmp / day, patient_id=PID, patient_name="Web^Pat", study_date=day, seed=i)
        orthanc.upload(files)
        out[day] = files
    orthanc.upload(small_ct_study(tmp / "other", patient_id="DW-OTHER", study_date="20230101", seed=9))
    return out


def _pacs(orthanc, **kw) -> PacsConfig:
    return PacsConfig(name="cloud", kind="dicomweb", url=orthanc.dicomweb_url, **kw)


class _Counting:
    """Wraps a session and counts GETs (to see paging)."""

    def __init__(self, pacs):
        self.s = dicomweb.session_for(pacs)
        self.urls: list[str] = []
        orig = self.s.request

        def request(method, url, **kw):
            self.urls.append(url)
            return orig(method, url, **kw)
        self.s.request = request


def test_qido_pages_by_limit_and_offset(orthanc, pacs_studies):
    pacs = _pacs(orthanc, page_size=2)
    counting = _Counting(pacs)
    studies = dicomweb.query_studies(NodeConfig(), pacs, _current(), session=counting.s)
    assert sorted(s.study_date.isoformat() for s in studies) == ["2021-01-01", "2022-01-01", "2023-01-01"]
    assert all(s.patient.patient_id == PID and s.source == "cloud" for s in studies)
    assert len(counting.urls) == 2  # 2 + 1 answers: the short second page ends the search
    assert "limit=2" in counting.urls[0] and "offset=0" in counting.urls[0] and "offset=2" in counting.urls[1]
    series = dicomweb.query_series(NodeConfig(), pacs, studies[0])
    assert [(s.modality, s.n_instances) for s in series] == [("CT", 4)]


def test_find_priors_qido_then_wado_into_the_spool(orthanc, pacs_studies, tmp_path):
    """The choice picks the 2023 study; WADO-RS stores exactly its CT series through the C-STORE ingest (index rows,
    files under full UIDs, bytes equal to Orthanc's)."""
    from node.receive.spool import Spool
    from node.store.db import Database, Instance
    from node.work.steps import SpoolSink

    cfg = parse_config(f"node: {{data_dir: {tmp_path / 'var'}}}\n"
                       f"pacs: [{{name: cloud, kind: dicomweb, url: '{orthanc.dicomweb_url}', page_size: 1}}]")
    db = Database(cfg.node.database_url())
    spool = Spool(tmp_path / "var" / "spool", min_free_mb=1)
    try:
        decision = find_priors(cfg, Rule(name="r"), _current(), [], retrieve_into=SpoolSink(cfg, db, spool))
        assert decision.retrieved_from == "cloud", decision.notes
        (prior,) = decision.priors
        sent = {str(dcmread(f).SOPInstanceUID): f for f in pacs_studies["20230101"]}
        assert prior.study_date == date(2023, 1, 1)
        assert "retrieved 4 instances" in decision.notes[-1] and "by WADO-RS" in decision.notes[-1]
        with db.session() as s:
            rows = s.scalars(select(Instance).where(Instance.study_uid == prior.study_uid)).all()
            assert {r.sop_instance_uid for r in rows} == set(sent)
            assert {r.calling_ae for r in rows} == {"WADO-RS"}
            for r in rows:
                path = Path(r.path)
                assert path == spool.path_for(prior.study_uid, r.series_uid, r.sop_instance_uid)
                ds = dcmread(path)
                assert ds.PixelData == dcmread(sent[r.sop_instance_uid]).PixelData
    finally:
        db.dispose()


def test_401_gives_a_clear_job_message(tmp_path):
    """Orthanc with authentication: a wrong bearer token is 'QIDO-RS 401 from 'cloud': check the token'; the right
    user and password (basic) work; the prior decision carries the message and is not retryable."""
    if not orthanc_available():
        pytest.skip("Orthanc not installed")

    class AuthOrthanc(OrthancServer):
        def config(self):
            cfg = super().config()
            cfg.update({"AuthenticationEnabled": True, "RegisteredUsers": {"alice": "s3cret-pw"}})
            return cfg

        @property
        def http_url(self) -> str:  # start() polls /system: as alice
            return f"http://alice:s3cret-pw@127.0.0.1:{self.http_port}"

    with AuthOrthanc(tmp_path / "o") as o:
        url = f"http://127.0.0.1:{o.http_port}/dicom-web"
        bad = PacsConfig(name="cloud", kind="dicomweb", url=url, auth="bearer", token="expired-token")
        with pytest.raises(dicomweb.DicomwebError) as err:
            dicomweb.query_studies(NodeConfig(), bad, _current())
        assert str(err.value) == "QIDO-RS 401 from 'cloud': check the token"
        assert err.value.kind == "status" and err.value.http_status == 401
        cfg = NodeConfig(pacs=[bad])
        decision = find_priors(cfg, Rule(name="r"), _current(), [], retrieve_into=tmp_path / "sink")
        assert decision.priors == [] and not decision.retryable
        assert decision.reason == "QIDO-RS 401 from 'cloud': check the token"
        wrong_pw = bad.model_copy(update={"auth": "basic", "username": "alice", "password": "nope", "token": None})
        with pytest.raises(dicomweb.DicomwebError, match="^QIDO-RS 401 from 'cloud': check the user name and "):
            dicomweb.query_studies(NodeConfig(), wrong_pw, _current())
        good = wrong_pw.model_copy(update={"password": "s3cret-pw"})
        assert dicomweb.query_studies(NodeConfig(), good, _current()) == []  # authenticated: nothing stored


# ------------------------------------------------------------------------------------- scripted HTTP server

class _Script(BaseHTTPRequestHandler):
    """Answers GETs from ``server.script``: a list of (status, content type, body, cut) used in order."""

    def do_GET(self):
        self.server.seen.append((self.path, dict(self.headers)))
        status, ctype, body, cut = self.server.script.pop(0)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:cut] if cut else body)
        if cut:
            self.close_connection = True

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def scripted():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Script)
    srv.script, srv.seen = [], []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/dicom-web"


def _study_json(uid: str, day: str) -> dict:
    return {"0020000D": {"vr": "UI", "Value": [uid]}, "00100020": {"vr": "LO", "Value": [PID]},
            "00080020": {"vr": "DA", "Value": [day]}}


def test_retries_after_503_then_gives_up_with_a_transient_error(scripted):
    answer = json.dumps([_study_json("1.2.3.4", "20230101")]).encode()
    scripted.script = [(503, "text/plain", b"busy", 0), (200, "application/dicom+json", answer, 0)]
    pacs = PacsConfig(name="cloud", kind="dicomweb", url=_url(scripted), retries=2, retry_backoff_s=0.01)
    (st,) = dicomweb.query_studies(NodeConfig(), pacs, _current())
    assert st.study_uid == "1.2.3.4" and len(scripted.seen) == 2
    scripted.script = [(503, "text/plain", b"busy", 0)] * 3
    with pytest.raises(dicomweb.DicomwebError) as err:
        dicomweb.query_studies(NodeConfig(), pacs, _current())
    assert str(err.value).startswith("QIDO-RS 503 from 'cloud': the archive failed")
    assert "(after 3 attempts)" in str(err.value) and err.value.kind == "unreachable"


def test_issuer_is_a_key_and_dropped_when_the_archive_refuses_it(scripted):
    answer = json.dumps([_study_json("1.2.3.5", "20230101")]).encode()
    scripted.script = [(400, "text/plain", b"unsupported key", 0), (200, "application/dicom+json", answer, 0)]
    pacs = PacsConfig(name="cloud", kind="dicomweb", url=_url(scripted), page_size=5)
    (st,) = dicomweb.query_studies(NodeConfig(), pacs, _current(issuer="HOSP-A"))
    assert st.study_uid == "1.2.3.5"
    assert "IssuerOfPatientID=HOSP-A" in scripted.seen[0][0] and "IssuerOfPatientID=" not in scripted.seen[1][0]


def test_wado_single_application_dicom_and_cut_multipart(scripted, tmp_path):
    """A single application/dicom answer is one instance; a multipart answer cut mid-way is tried again; an
    instance of another series is refused."""
    files = small_ct_study(tmp_path / "s", patient_id=PID, study_date="20230101", size=(8, 8, 3))
    ds0 = dcmread(files[0])
    study, series = str(ds0.StudyInstanceUID), str(ds0.SeriesInstanceUID)
    raw = [f.read_bytes() for f in files]
    pacs = PacsConfig(name="cloud", kind="dicomweb", url=_url(scripted), retries=1, retry_backoff_s=0.01)
    scripted.script = [(200, "application/dicom", raw[0], 0)]
    sink = FolderSink(tmp_path / "sink1")
    res = dicomweb.retrieve_series(NodeConfig(), pacs, study, series, sink)
    assert res.completed == 1 and len(list((tmp_path / "sink1").rglob("*.dcm"))) == 1
    assert 'type="application/dicom"' in scripted.seen[0][1]["Accept"]
    assert scripted.seen[0][0] == f"/dicom-web/studies/{study}/series/{series}"

    body = encode_related(raw, "b0undary")
    ctype = 'multipart/related; type="application/dicom"; boundary=b0undary'
    scripted.script = [(200, ctype, body, len(raw[0]) + len(raw[1]) // 2), (200, ctype, body, 0)]
    stored = []

    class Sink(FolderSink):
        def store_part10(self, data):
            stored.append(dcmread(__import__("io").BytesIO(data)).SOPInstanceUID)
    res = dicomweb.retrieve_series(NodeConfig(), pacs, study, series, Sink(tmp_path / "sink2"))
    assert res.completed == 3 and len(scripted.seen) == 3
    assert set(stored) == {str(dcmread(f).SOPInstanceUID) for f in files}  # all three after the retry

    other = small_ct_study(tmp_path / "o", patient_id=PID, study_date="20230101", size=(8, 8, 1), seed=3)
    scripted.script = [(200, "application/dicom", other[0].read_bytes(), 0)]
    with pytest.raises(dicomweb.DicomwebError, match="not of the series asked for"):
        dicomweb.retrieve_series(NodeConfig(), pacs, study, series, FolderSink(tmp_path / "sink3"))


def test_config_needs_url_and_credentials():
    from node.config import ConfigError
    for text, msg in (("{name: c, kind: dicomweb}", "a dicomweb PACS needs url"),
                      ("{name: c, kind: dicomweb, url: 'http://x', auth: bearer}", "auth: bearer needs token"),
                      ("{name: c, kind: dicomweb, url: 'http://x', client_cert: a.pem}", "needs both client_cert"),
                      ("{name: c, ae_title: A, host: h}", "a dimse PACS needs port")):
        with pytest.raises(ConfigError, match=msg):
            parse_config(f"pacs: [{text}]")


# ------------------------------------------------------------------------------------------------------ mTLS

def _pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 (cert + key in one PEM, as Orthanc wants) and a client cert + key."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key_pem(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.NoEncryption())

    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn, serial, server):
        k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject).public_key(k.public_key())
             .serial_number(serial).not_valid_before(now - dt.timedelta(days=1))
             .not_valid_after(now + dt.timedelta(days=2)))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), key_pem(k)

    folder.mkdir(parents=True, exist_ok=True)
    out = {"ca": folder / "ca.pem", "server": folder / "server.pem", "client": folder / "client.pem",
           "client_key": folder / "client.key"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert, key = leaf("orthanc", 2, True)
    out["server"].write_bytes(cert + key)
    cert, key = leaf("totalreg-node", 3, False)
    out["client"].write_bytes(cert)
    out["client_key"].write_bytes(key)
    return out


def test_mtls_client_certificate_and_ca(tmp_path):
    """An https archive that asks for a client certificate signed by the test CA (Orthanc 1.10's TLS server
    crashes here, so a Python one): the node's client_cert + client_key and ca_file let QIDO-RS through; without
    the client certificate, or without the CA, the job message names TLS."""
    import ssl

    pki = _pki(tmp_path / "pki")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Script)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki["server"]))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(str(pki["ca"]))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    answer = json.dumps([_study_json("1.2.3.6", "20230101")]).encode()
    srv.script, srv.seen = [(200, "application/dicom+json", answer, 0)], []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{srv.server_address[1]}/dicom-web"
        good = PacsConfig(name="cloud", kind="dicomweb", url=url, client_cert=pki["client"],
                          client_key=pki["client_key"], ca_file=pki["ca"], retries=0)
        (st,) = dicomweb.query_studies(NodeConfig(), good, _current())
        assert st.study_uid == "1.2.3.6" and len(srv.seen) == 1
        with pytest.raises(dicomweb.DicomwebError) as err:  # the archive hangs up: no client certificate
            dicomweb.query_studies(NodeConfig(), good.model_copy(update={"client_cert": None, "client_key": None}),
                                   _current())
        assert str(err.value).startswith(("QIDO-RS to 'cloud': TLS failed", "'cloud' unreachable for QIDO-RS"))
        with pytest.raises(dicomweb.DicomwebError) as err:  # the system CAs do not know the archive's
            dicomweb.query_studies(NodeConfig(), good.model_copy(update={"ca_file": None}), _current())
        assert str(err.value).startswith("QIDO-RS to 'cloud': TLS failed ([SSL: CERTIFICATE_VERIFY_FAILED]")
        assert str(err.value).endswith("check ca_file, client_cert and client_key")
        assert len(srv.seen) == 1  # neither reached the archive
    finally:
        srv.shutdown()
        srv.server_close()
