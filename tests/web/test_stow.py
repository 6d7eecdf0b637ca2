"""STOW-RS into the node (node.web.stow): a real STOW client (dicomweb-client) against the console app served by
uvicorn; sender tokens; per-instance failures; size limits; the same refusals and index as C-STORE."""
from __future__ import annotations

import copy
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest
import requests
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select
from tools import free_port

from node.net.multipart import encode_related

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def served(node_cfg, node_db, tmp_path):
    """The console app on a real port, a sender token and a viewer token; yields (base url, tokens, db, cfg)."""
    from node.web.app import create_app, serve_in_thread
    from node.web.auth import create_token

    cfg = node_cfg.model_copy(deep=True)
    cfg.web.stow.max_part_bytes = 1024 * 1024
    cfg.web.stow.max_request_bytes = 3 * 1024 * 1024
    app = create_app(cfg, node_db[0], data_dir=tmp_path / "var", receiver_alive=lambda: True)
    with node_db[0].session() as s:
        tokens = {role: create_token(s, f"{role}-modality", role, created_by="test")[1]
                  for role in ("sender", "viewer")}
    port = free_port()
    server, thread = serve_in_thread(app, "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}", tokens, node_db[0], cfg
    server.should_exit = True
    thread.join(10)


def _datasets(tmp_path: Path, n: int = 4, patient_id: str = "STOW-1"):
    from dicom_io.synthetic_series import make_test_volume, write_ct_series

    img = make_test_volume(size=(12, 12, n), spacing=(2.0, 2.0, 2.0), seed=1)
    files = write_ct_series(img, tmp_path / "stow-in", patient_id=patient_id, patient_name="Stow^Sam",
                            study_date="20240310")
    return [dcmread(f) for f in files]


def _client(base: str, token: str):
    from dicomweb_client.api import DICOMwebClient
    return DICOMwebClient(url=f"{base}/dicom-web", headers={"Authorization": f"Bearer {token}"})


def test_stow_stores_indexes_and_lists_the_bad_part(served, tmp_path):
    """Four good CT instances and one without pixel data (refused by the C-STORE rule, 0xC210): 202, the bad one in
    FailedSOPSequence, the four in ReferencedSOPSequence, on disk under full UIDs and indexed with the token's name
    as calling AE; the study waits for its quiet period like a C-STORE'd one."""
    from node.store.db import Instance, Study

    base, tokens, db, _ = served
    good = _datasets(tmp_path)
    bad = copy.deepcopy(good[0])
    bad.SOPInstanceUID = bad.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    del bad.PixelData
    client = _client(base, tokens["sender"])
    with pytest.raises(requests.HTTPError, match="409"):  # nothing stored
        client.store_instances([bad])
    answer = client.store_instances(good + [bad])
    failed = answer.FailedSOPSequence
    assert [(f.ReferencedSOPInstanceUID, f.FailureReason) for f in failed] == [(bad.SOPInstanceUID, 0xC210)]
    assert sorted(r.ReferencedSOPInstanceUID for r in answer.ReferencedSOPSequence) == \
        sorted(str(d.SOPInstanceUID) for d in good)
    study = str(good[0].StudyInstanceUID)
    assert "RetrieveURL" not in answer  # the node does not serve WADO-RS
    with db.session() as s:
        rows = s.scalars(select(Instance).where(Instance.study_uid == study)).all()
        assert sorted(r.sop_instance_uid for r in rows) == sorted(str(d.SOPInstanceUID) for d in good)
        assert {r.calling_ae for r in rows} == {"sender-modality"}
        for r in rows:
            assert Path(r.path).name == f"{r.sop_instance_uid}.dcm" and Path(r.path).parent.name == r.series_uid
            on_disk = dcmread(r.path)
            assert on_disk.file_meta.SourceApplicationEntityTitle == "sender-modality"
            assert on_disk.PixelData == next(d for d in good if d.SOPInstanceUID == r.sop_instance_uid).PixelData
        st = s.scalar(select(Study).where(Study.study_uid == study))
        assert st.state == "receiving" and st.n_instances == 4
    # re-sending the same instances is fine (stored again as the same bytes), as for C-STORE
    assert len(client.store_instances(good[:2]).ReferencedSOPSequence) == 2


def test_sender_tokens_only_stow_and_stow_needs_a_sender(served, tmp_path):
    base, tokens, _, _ = served
    body = encode_related([b"x"], "bb")
    ctype = 'multipart/related; type="application/dicom"; boundary=bb'
    sender = {"Authorization": f"Bearer {tokens['sender']}"}
    assert httpx.get(f"{base}/api/jobs", headers=sender).status_code == 403
    assert "only store instances" in httpx.get(f"{base}/api/status", headers=sender).json()["detail"]
    assert httpx.post(f"{base}/dicom-web/studies", content=body, headers={"Content-Type": ctype}).status_code == 401
    viewer = {"Authorization": f"Bearer {tokens['viewer']}", "Content-Type": ctype}
    assert httpx.post(f"{base}/dicom-web/studies", content=body, headers=viewer).status_code == 403
    r = httpx.post(f"{base}/dicom-web/studies", content=body, headers={**sender, "Content-Type": ctype})
    assert r.status_code == 409  # nothing stored: one part that is not DICOM
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC210]
    r = httpx.post(f"{base}/dicom-web/studies", content=b"{}", headers={**sender, "Content-Type": "application/json"})
    assert r.status_code == 415


def _part10(ds) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_size_limits_per_part_and_per_request(served, tmp_path):
    """A part over web.stow.max_part_bytes (1 MiB) fails with 0xA700 and its UIDs while the others are stored; a body
    over max_request_bytes (3 MiB) is refused 413, by its Content-Length or while a chunked body streams in."""
    base, tokens, _, _ = served
    good = _datasets(tmp_path, n=2, patient_id="STOW-2")
    big = copy.deepcopy(good[0])
    big.SOPInstanceUID = big.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    big.Rows, big.Columns = 1024, 768
    big.PixelData = np.zeros((1024, 768), np.int16).tobytes()  # 1.5 MiB
    ctype = 'multipart/related; type="application/dicom"; boundary=LIMIT'
    headers = {"Authorization": f"Bearer {tokens['sender']}", "Content-Type": ctype}
    body = encode_related([_part10(good[0]), _part10(big), _part10(good[1])], "LIMIT")
    r = httpx.post(f"{base}/dicom-web/studies", content=body, headers=headers, timeout=30)
    assert r.status_code == 202, r.text
    (failed,) = r.json()["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [str(big.SOPInstanceUID)] and failed["00081197"]["Value"] == [0xA700]
    assert len(r.json()["00081199"]["Value"]) == 2

    huge = encode_related([_part10(big)] * 3, "LIMIT")  # 4.5 MiB
    r = httpx.post(f"{base}/dicom-web/studies", content=huge, headers=headers, timeout=30)
    assert r.status_code == 413 and "max_request_bytes" in r.json()["detail"]

    def chunks():
        for i in range(0, len(huge), 256 * 1024):
            yield huge[i:i + 256 * 1024]
    r = httpx.post(f"{base}/dicom-web/studies", content=chunks(), headers=headers, timeout=30)
    assert r.status_code == 413 and "was cut" in r.json()["detail"]


def test_study_url_refuses_instances_of_another_study(served, tmp_path):
    base, tokens, _, _ = served
    good = _datasets(tmp_path, n=2, patient_id="STOW-3")
    other = _datasets(tmp_path / "o", n=1, patient_id="STOW-3")[0]
    study = str(good[0].StudyInstanceUID)
    client = _client(base, tokens["sender"])
    answer = client.store_instances(good + [other], study_instance_uid=study)
    (failed,) = answer.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == other.SOPInstanceUID and failed.FailureReason == 0xA900
    assert len(answer.ReferencedSOPSequence) == 2


def test_a_large_request_is_parsed_as_it_streams(served, tmp_path):
    """24 MiB of STOW-RS body (48 instances of 0.5 MiB, sent in 256 KiB chunks, a 3 MiB request limit raised for
    this): every instance stored, and the process's peak of new Python memory stays a few parts' worth, far below
    the body (tracemalloc; the body itself was built before measuring)."""
    import tracemalloc

    base, tokens, _, cfg = served
    cfg.web.stow.max_request_bytes = 64 * 1024 * 1024  # the app holds this very object
    template = _datasets(tmp_path, n=1, patient_id="STOW-4")[0]
    template.Rows, template.Columns = 512, 512
    parts = []
    for _ in range(48):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PixelData = np.random.default_rng(len(parts)).integers(0, 1000, (512, 512), np.int16).tobytes()
        parts.append(_part10(ds))
    body = encode_related(parts, "BIG")
    del parts
    headers = {"Authorization": f"Bearer {tokens['sender']}",
               "Content-Type": 'multipart/related; type="application/dicom"; boundary=BIG'}

    def chunks():
        for i in range(0, len(body), 256 * 1024):
            yield body[i:i + 256 * 1024]
    tracemalloc.start()
    try:
        r = httpx.post(f"{base}/dicom-web/studies", content=chunks(), headers=headers, timeout=120)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.status_code == 200, r.text
    assert len(r.json()["00081199"]["Value"]) == 48
    assert len(body) > 24 * 1024 * 1024 and peak < 12 * 1024 * 1024, (len(body), peak)
