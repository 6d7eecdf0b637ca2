"""End to end over DICOMweb only (issue 19): Orthanc as the archive with its DICOM server switched OFF, so nothing
can go over DIMSE; a real `totalreg serve` node with ``pacs[].kind: dicomweb`` and a STOW-RS destination.

The current study is pushed to the node by STOW-RS with dicomweb-client (a sender token); the node finds the prior
by QIDO-RS, retrieves its CT series by WADO-RS, registers (CPU, few iterations) and STOWs the DSR, the rigid REG and
the registered series into the current study in Orthanc; dciodvfy passes on what Orthanc returns.
Also: an archive answering 401 ends the job with "QIDO-RS 401 from 'cloud': check the token".
"""
from __future__ import annotations

import time

import httpx
import pytest
from orthanc_server import OrthancServer, orthanc_available
from pydicom import dcmread
from test_e2e_orthanc import REG, _write_pair, registered_and_delivered

from node.commands.demo import wait_for_delivery

pytestmark = [pytest.mark.orthanc,
              pytest.mark.skipif(not orthanc_available(), reason="Orthanc not installed")]


class WebOnlyOrthanc(OrthancServer):
    """Orthanc that speaks DICOMweb and REST only (no DICOM listener); optional basic-auth users."""

    def __init__(self, *a, users: dict[str, str] | None = None, **kw):
        super().__init__(*a, **kw)
        self.users = users or {}

    def config(self) -> dict:
        cfg = super().config()
        cfg["DicomServerEnabled"] = False
        if self.users:
            cfg.update({"AuthenticationEnabled": True, "RegisteredUsers": self.users})
        return cfg

    @property
    def http_url(self) -> str:  # the test's own REST calls sign in as the first user
        if self.users:
            user, pw = next(iter(self.users.items()))
            return f"http://{user}:{pw}@127.0.0.1:{self.http_port}"
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root without credentials (the node brings its own)."""
        return f"http://127.0.0.1:{self.http_port}/dicom-web"


def _sections(archive: WebOnlyOrthanc, web_port: int, pacs_extra: dict | None = None) -> dict:
    return {
        "pacs": [{"name": "cloud", "kind": "dicomweb", "url": archive.dicomweb_url, "timeout_s": 120,
                  "retries": 1, "retry_backoff_s": 0.5, **(pacs_extra or {})}],
        "destinations": [{"name": "cloud-stow", "kind": "dicomweb", "url": archive.dicomweb_url}],
        "rules": [{"name": "ct-followup", "send_to": ["cloud-stow"], "registration": REG}],
        "completion": {"quiet_seconds": 2.0, "max_wait_seconds": 120},
        "web": {"enabled": True, "host": "127.0.0.1", "port": web_port, "admin_password": "e2e-admin-pw"},
    }


def _sender_token(cfg) -> str:
    """A sender API token made in the node's database before it starts (as an admin would in the console)."""
    from node.store import console
    from node.store.db import Database
    from node.web.auth import create_token

    db = Database(cfg.node.database_url())
    try:
        with db.session() as s:
            console.create_tables(s.get_bind())
        with db.session() as s:
            return create_token(s, "ct-scanner", "sender", created_by="e2e")[1]
    finally:
        db.dispose()


def _stow(cfg, token: str, files) -> None:
    """Push ``files`` to the node with dicomweb-client (STOW-RS), waiting for its web port first."""
    from dicomweb_client.api import DICOMwebClient

    base = f"http://127.0.0.1:{cfg.web.port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code in (200, 503):
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the node's web port did not open"
        time.sleep(0.3)
    client = DICOMwebClient(url=f"{base}/dicom-web", headers={"Authorization": f"Bearer {token}"})
    answer = client.store_instances([dcmread(f) for f in files])
    assert "FailedSOPSequence" not in answer, answer
    assert len(answer.ReferencedSOPSequence) == len(files)


def test_e2e_dicomweb_only_stow_in_qido_wado_prior_stow_out(node_config, node_proc, tmp_path, capsys):
    from tools import free_port

    with WebOnlyOrthanc(tmp_path / "archive") as archive:
        data = _write_pair(tmp_path, "DW-E2E-1", "Web^Wanda", seed=21)
        archive.upload(data["prior"])  # the archive holds the prior; the node has never seen it
        cfg, path = node_config(**_sections(archive, free_port()))
        token = _sender_token(cfg)
        node = node_proc(path)
        _stow(cfg, token, data["current"])
        result = registered_and_delivered(archive, cfg, node, data, "DW-E2E-1", tmp_path)
        # only the prior's chosen series was retrieved, and it is indexed as retrieved by WADO-RS
        from sqlalchemy import select

        from node.store.db import Database, Instance
        db = Database(cfg.node.database_url(), create=False)
        try:
            with db.session() as s:
                prior_rows = s.scalars(select(Instance).where(Instance.study_uid == data["prior_uid"])).all()
                current_rows = s.scalars(select(Instance).where(Instance.study_uid == data["current_uid"])).all()
                assert len(prior_rows) == len(data["prior"]) and {r.calling_ae for r in prior_rows} == {"WADO-RS"}
                assert len(current_rows) == len(data["current"])
                assert {r.calling_ae for r in current_rows} == {"ct-scanner"}
        finally:
            db.dispose()
        with capsys.disabled():
            print(f"\n[e2e dicomweb] job stages {result['timings']}")


def test_e2e_dicomweb_401_gives_the_clear_job_message(node_config, node_proc, tmp_path):
    from tools import free_port

    with WebOnlyOrthanc(tmp_path / "archive", users={"alice": "s3cret-pw"}) as archive:
        data = _write_pair(tmp_path, "DW-E2E-2", "Web^Walt", seed=22, realistic=False)
        archive.upload(data["prior"])
        cfg, path = node_config(**_sections(archive, free_port(), {"auth": "bearer", "token": "expired"}))
        token = _sender_token(cfg)
        node = node_proc(path)
        _stow(cfg, token, data["current"])
        result = wait_for_delivery(cfg.node.database_url(), data["current_uid"], 120, proc=node.proc,
                                   log_path=node.log_path)
        assert (result["state"], result["outcome"]) == ("done", "no_prior"), (result, node.log()[-3000:])
        assert result["reason"] == "QIDO-RS 401 from 'cloud': check the token"
        assert result["sends"] == []
