"""A real Orthanc server for tests (and `totalreg demo`): generated JSON config, free loopback ports, tmp storage.

Usage::

    with OrthancServer(tmp_path, modalities={"node": ("TOTALREG", "127.0.0.1", 11112)}) as orthanc:
        orthanc.dicom_port, orthanc.http_url, orthanc.dicomweb_url, orthanc.aet
        orthanc.upload(paths)             # REST upload of DICOM files
        orthanc.client()                  # pyorthanc.Orthanc on the REST API

The DICOMweb plugin is loaded (``/dicom-web``); every listed modality may C-ECHO/C-FIND/C-MOVE/C-GET/C-STORE; unknown
callers may C-FIND and C-GET too (tests call from ad-hoc AE titles). ``dicom_tls`` makes its DICOM port TLS-only.
``stop()`` sends SIGTERM and waits.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tools import free_port, require

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_available() -> bool:
    """True when the Orthanc binary is installed."""
    return ORTHANC_BIN.exists()


class OrthancServer:
    """One Orthanc process on free loopback ports with storage under ``workdir``."""

    def __init__(self, workdir: str | Path, *, aet: str = "ORTHANC",
                 modalities: dict[str, tuple[str, str, int]] | None = None, dicomweb: bool = True,
                 dicom_tls: dict | None = None) -> None:
        self.workdir = Path(workdir)
        # DICOM TLS on Orthanc's SCP (then TLS only): {"cert", "key", "trusted" (PEM paths), "require_client_cert"}
        self.dicom_tls = dicom_tls
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.dicomweb = dicomweb and DICOMWEB_PLUGIN.exists()
        self.dicom_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.dicom_port:
            self.http_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "orthanc.log"

    # ------------------------------------------------------------------ urls
    @property
    def http_url(self) -> str:
        """Base URL of the REST API (no trailing slash)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Base URL of the DICOMweb plugin (QIDO/WADO/STOW root, no trailing slash)."""
        return f"{self.http_url}/dicom-web"

    # ------------------------------------------------------------------ lifecycle
    def config(self) -> dict:
        """The Orthanc JSON configuration this server runs with."""
        storage = self.workdir / "storage"
        cfg = {
            "Name": "totalreg-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomScuTimeout": 10,
            "DicomModalities": {
                name: {"AET": ae, "Host": host, "Port": port, "AllowEcho": True, "AllowFind": True,
                       "AllowMove": True, "AllowGet": True, "AllowStore": True}
                for name, (ae, host, port) in self.modalities.items()
            },
            "Plugins": [str(DICOMWEB_PLUGIN)] if self.dicomweb else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
            "StableAge": 2,
            "SaveJobs": False,
            "ConcurrentJobs": 2,
            "HttpThreadsCount": 8,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "UnknownSopClassAccepted": True,
        }
        if self.dicom_tls:
            cfg.update({"DicomTlsEnabled": True, "DicomTlsCertificate": str(self.dicom_tls["cert"]),
                        "DicomTlsPrivateKey": str(self.dicom_tls["key"]),
                        "DicomTlsTrustedCertificates": str(self.dicom_tls["trusted"]),
                        "DicomTlsRemoteCertificateRequired": bool(self.dicom_tls.get("require_client_cert"))})
        return cfg

    def start(self, timeout_s: float = 30.0) -> "OrthancServer":
        """Write the config, start Orthanc, and wait until its REST API answers (RuntimeError otherwise)."""
        if not orthanc_available():
            raise RuntimeError(f"Orthanc not installed at {ORTHANC_BIN}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.workdir / "orthanc.json"
        cfg_path.write_text(json.dumps(self.config(), indent=1))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(ORTHANC_BIN), str(cfg_path)], stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                r = httpx.get(f"{self.http_url}/system", timeout=1.0)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.http_url} within {timeout_s:.0f} s: {self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM Orthanc and wait for it to exit (SIGKILL after ``timeout_s``)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def log_tail(self, n: int = 2000) -> str:
        """The last ``n`` characters of Orthanc's log."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    def client(self):
        """A pyorthanc client on the REST API."""
        from pyorthanc import Orthanc

        return Orthanc(self.http_url)

    def upload(self, paths) -> list[str]:
        """Upload DICOM files over REST (POST /instances); return the Orthanc instance ids."""
        ids = []
        with httpx.Client(timeout=60.0) as http:
            for p in paths:
                r = http.post(f"{self.http_url}/instances", content=Path(p).read_bytes())
                r.raise_for_status()
                ids.append(r.json()["ID"])
        return ids

    def get(self, path: str):
        """GET a REST path (e.g. '/studies') and return its JSON."""
        r = httpx.get(f"{self.http_url}{path}", timeout=30.0)
        r.raise_for_status()
        return r.json()

    def study_series(self, study_uid: str) -> list[dict]:
        """Series (Orthanc JSON, with MainDicomTags and Instances) of the study with this StudyInstanceUID."""
        r = httpx.post(f"{self.http_url}/tools/lookup", content=study_uid, timeout=30.0)
        r.raise_for_status()
        hits = [h for h in r.json() if h["Type"] == "Study"]
        if not hits:
            return []
        return self.get(f"/studies/{hits[0]['ID']}/series")

    def add_modality(self, name: str, ae: str, host: str, port: int, *, tls: bool = False) -> None:
        """Declare (or change) a DICOM modality at run time over REST (``tls``: Orthanc's associations to it run
        over DICOM TLS, with its ``dicom_tls`` certificate)."""
        r = httpx.put(f"{self.http_url}/modalities/{name}",
                      json={"AET": ae, "Host": host, "Port": port, "AllowEcho": True, "AllowFind": True,
                            "AllowMove": True, "AllowGet": True, "AllowStore": True, "UseDicomTls": tls},
                      timeout=30.0)
        r.raise_for_status()


# ---------------------------------------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A running Orthanc for one test module (skips when Orthanc is not installed)."""
    if not orthanc_available():
        require("Orthanc not installed (/usr/sbin/Orthanc)")
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


def small_ct_study(folder, *, patient_id="PAT1", patient_name="Test^Patient", birth_date="19600101",
                   study_uid=None, study_date="20240310", size=(16, 14, 4), seed=0,
                   series_description="CT 2.5 mm") -> list[Path]:
    """A tiny synthetic CT series (one study) written with dicom_io.synthetic_series; returns its files."""
    from dicom_io.synthetic_series import make_test_volume, write_ct_series

    img = make_test_volume(size=size, seed=seed)
    return write_ct_series(img, folder, patient_id=patient_id, patient_name=patient_name, birth_date=birth_date,
                           study_uid=study_uid, study_date=study_date, series_description=series_description)
