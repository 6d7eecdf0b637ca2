"""End to end with a real Orthanc as the hospital PACS and a real `totalreg serve` node.

The node C-FINDs / C-MOVEs the prior from Orthanc, registers it to the current study (small synthetic whole-body CTs,
CPU, few iterations) and C-STOREs the DSR, the rigid REG and the registered series into the current study in Orthanc;
the results are checked through Orthanc's REST API and with dciodvfy on what Orthanc returns.
Also: a prior already received with no PACS, two patients interleaved over concurrent associations, no prior,
a PatientID collision, and a destination that is down (dead, nothing lost, re-sent later).
"""
from __future__ import annotations

import datetime as _dt
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.net import dimse
from node.commands.demo import synthetic_pair, wait_for_delivery
from orthanc_server import OrthancServer, orthanc, orthanc_available  # noqa: F401 - fixture
from tools import dciodvfy, dcmtk, free_port

pytestmark = [pytest.mark.orthanc,
              pytest.mark.skipif(not orthanc_available(), reason="Orthanc not installed")]

SPACING_MM = 5.0  # small volumes: 64 x 48 x 48 voxels
FOV_MM = (320.0, 240.0, 240.0)  # lower chest and upper abdomen
REG = {"device": "cpu", "iterations": 10}
JOB_TIMEOUT_S = 900  # registration on a shared 2-core CPU


# ---------------------------------------------------------------------------------------------------- helpers

def _write_pair(folder: Path, patient_id: str, patient_name: str, seed: int, *, prior_date="20230105",
                current_date="20240310", prior_name: str | None = None, realistic: bool = True) -> dict:
    """Prior and current synthetic whole-body CT studies of one patient; files and UIDs."""
    from dicom_io.synthetic_series import write_ct_series

    current, prior = synthetic_pair(SPACING_MM, seed, realistic=realistic, fov_mm=FOV_MM)
    out = {"prior_uid": generate_uid(), "current_uid": generate_uid()}
    out["prior"] = write_ct_series(prior, folder / f"{patient_id}-prior", patient_id=patient_id,
                                   patient_name=prior_name or patient_name, study_uid=out["prior_uid"],
                                   study_date=prior_date, series_description="CT WB prior", study_time="090000")
    out["current"] = write_ct_series(current, folder / f"{patient_id}-current", patient_id=patient_id,
                                     patient_name=patient_name, study_uid=out["current_uid"],
                                     study_date=current_date, series_description="CT WB current",
                                     study_time="100000")
    return out


def _storescu(port: int, files: list[Path], calling: str = "STORESCU") -> None:
    proc = subprocess.run([dcmtk("storescu"), "-aet", calling, "-aec", "TOTALREG", "-ta", "10", "-td", "30",
                           "127.0.0.1", str(port), *map(str, files)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _db(cfg):
    from node.store.db import Database

    return Database(cfg.node.database_url(), create=False)


def _jobs(cfg, study_uid: str):
    from node.store.db import Job, Send

    db = _db(cfg)
    try:
        with db.session() as s:
            jobs = s.scalars(select(Job).where(Job.study_uid == study_uid)).all()
            sends = s.scalars(select(Send).where(Send.job_id.in_([j.id for j in jobs]))).all() if jobs else []
            s.expunge_all()
            return jobs, sends
    finally:
        db.dispose()


def _orthanc_series(orthanc: OrthancServer, study_uid: str) -> dict[str, list[dict]]:
    """Modality -> series JSON of a study in Orthanc."""
    out: dict[str, list[dict]] = {}
    for s in orthanc.study_series(study_uid):
        out.setdefault(s["MainDicomTags"].get("Modality", ""), []).append(s)
    return out


def _check_results_in_orthanc(orthanc: OrthancServer, study_uid: str, patient_id: str, prior_study_uid: str,
                              tmp: Path) -> None:
    """DSR + rigid REG + registered CT series are in the current study; dciodvfy passes on what Orthanc returns."""
    by_mod = _orthanc_series(orthanc, study_uid)
    regs = by_mod.get("REG", [])
    reg_instances = [i for s in regs for i in s["Instances"]]
    assert len(reg_instances) == 2, by_mod.keys()
    sop_classes = set()
    for iid in reg_instances:
        path = tmp / f"{iid}.dcm"
        path.write_bytes(httpx.get(f"{orthanc.http_url}/instances/{iid}/file", timeout=30).content)
        ds = dcmread(path)
        sop_classes.add(ds.SOPClassUID)
        assert ds.StudyInstanceUID == study_uid and ds.PatientID == patient_id
        refs = [str(item.StudyInstanceUID) for item in ds.get("StudiesContainingOtherReferencedInstancesSequence", [])]
        assert prior_study_uid in refs
        errors, out = dciodvfy(path)
        assert not errors, out[-3000:]
    assert sop_classes == {"1.2.840.10008.5.1.4.1.1.66.3", "1.2.840.10008.5.1.4.1.1.66.1"}
    registered = [s for s in by_mod.get("CT", []) if "REGISTERED" in s["MainDicomTags"].get("SeriesDescription", "")]
    assert len(registered) == 1
    iid = registered[0]["Instances"][0]
    path = tmp / f"{iid}.dcm"
    path.write_bytes(httpx.get(f"{orthanc.http_url}/instances/{iid}/file", timeout=30).content)
    ds = dcmread(path)
    assert ds.StudyInstanceUID == study_uid and ds.PatientID == patient_id
    errors, out = dciodvfy(path)
    assert not errors, out[-3000:]


def registered_and_delivered(orthanc: OrthancServer, cfg, node, data: dict, patient_id: str, tmp: Path) -> dict:
    """Wait for the current study's job: registered with the expected prior, sent, and the results in the current
    study in Orthanc passing dciodvfy (:func:`_check_results_in_orthanc`); returns wait_for_delivery's dict."""
    result = wait_for_delivery(cfg.node.database_url(), data["current_uid"], JOB_TIMEOUT_S, proc=node.proc,
                               log_path=node.log_path)
    assert (result["state"], result["outcome"]) == ("done", "registered"), (result, node.log()[-3000:])
    assert [s["state"] for s in result["sends"]] == ["done"], result["sends"]
    jobs, _ = _jobs(cfg, data["current_uid"])
    assert jobs[0].prior_study_uid == data["prior_uid"]
    _check_results_in_orthanc(orthanc, data["current_uid"], patient_id, data["prior_uid"], tmp)
    return result


def _quiet_to_results_s(cfg, study_uid: str) -> float:
    """Seconds from the end of the study's quiet period to the last acknowledged send (from the node database)."""
    from node.store.db import Study

    jobs, sends = _jobs(cfg, study_uid)
    db = _db(cfg)
    try:
        with db.session() as s:
            st = s.scalar(select(Study).where(Study.study_uid == study_uid))
            quiet_end = st.last_received_at + _dt.timedelta(seconds=cfg.completion.quiet_seconds)
    finally:
        db.dispose()
    done = max(x.finished_at for x in sends)
    return (done - quiet_end).total_seconds()


def _node_yaml_sections(orthanc: OrthancServer, *, pacs: bool = True, dest: dict | None = None) -> dict:
    dest = dest or {"name": "pacs", "kind": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1",
                    "port": orthanc.dicom_port}
    return {
        "pacs": [{"name": "orthanc", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
                  "retrieve": "move", "timeout_s": 60}] if pacs else [],
        "destinations": [dest],
        "rules": [{"name": "ct-followup", "send_to": [dest["name"]], "registration": REG}],
        "completion": {"quiet_seconds": 2.0, "max_wait_seconds": 120},
    }


# ------------------------------------------------------------------------------------------------------ tests

def test_e2e_prior_moved_from_orthanc_results_in_current_study(orthanc, node_config, node_proc, tmp_path, capsys):
    data = _write_pair(tmp_path, "E2E-1", "Alpha^Ann", seed=11)
    orthanc.upload(data["prior"])  # the PACS holds the prior; the node has never seen it
    cfg, path = node_config(**_node_yaml_sections(orthanc))
    orthanc.add_modality("totalreg", cfg.node.ae_title, "127.0.0.1", cfg.node.port)
    node = node_proc(path)
    _storescu(node.port, data["current"])
    result = registered_and_delivered(orthanc, cfg, node, data, "E2E-1", tmp_path)
    seconds = _quiet_to_results_s(cfg, data["current_uid"])
    with capsys.disabled():
        print(f"\n[e2e] end of quiet period -> results in Orthanc: {seconds:.1f} s "
              f"(job stages {result['timings']})")
    assert seconds > 0


@pytest.mark.slow  # registers on CPU (minutes on a shared 2-core machine)
def test_e2e_local_prior_no_pacs_destination_down_then_resent(orthanc, node_config, node_proc, tmp_path):
    """Prior already received, no PACS configured; the destination is down: retries, dead, files kept; an admin
    re-send after the destination came up delivers everything."""
    from node.store.db import SEND_DEAD
    from node.dispatch.dispatcher import resend

    data = _write_pair(tmp_path, "E2E-2", "Beta^Bob", seed=12)
    down_port = free_port()
    dest = {"name": "later", "kind": "dicom", "ae_title": "LATER", "host": "127.0.0.1", "port": down_port}
    sections = _node_yaml_sections(orthanc, pacs=False, dest=dest)
    sections["send_retry"] = {"max_attempts": 2, "backoff_s": 0.2}
    cfg, path = node_config(**sections)
    node = node_proc(path)
    _storescu(node.port, data["prior"])
    _storescu(node.port, data["current"])
    result = wait_for_delivery(cfg.node.database_url(), data["current_uid"], JOB_TIMEOUT_S, proc=node.proc,
                               log_path=node.log_path)
    assert (result["state"], result["outcome"]) == ("done", "registered"), (result, node.log()[-3000:])
    (snd,) = result["sends"]
    assert snd["state"] == SEND_DEAD and "cannot reach" in snd["error"]
    files = sorted((Path(result["result_dir"]) / "dicom").glob("*.dcm"))
    assert len(files) >= 3  # nothing lost: DSR + REG + registered slices still on disk

    later = OrthancServer(tmp_path / "orthanc-later", aet="LATER")
    later.dicom_port = down_port
    with later:
        db = _db(cfg)
        try:
            with db.session() as s:
                assert resend(s, result["job_id"])
        finally:
            db.dispose()
        result = wait_for_delivery(cfg.node.database_url(), data["current_uid"], 120, proc=node.proc,
                                   log_path=node.log_path)
        assert result["sends"][0]["state"] == "done" and result["sends"][0]["acked"] == len(files)
        _check_results_in_orthanc(later, data["current_uid"], "E2E-2", data["prior_uid"], tmp_path)


@pytest.mark.slow  # registers on CPU (minutes on a shared 2-core machine)
def test_e2e_two_patients_interleaved_over_concurrent_associations(orthanc, node_config, node_proc, tmp_path):
    a = _write_pair(tmp_path, "E2E-3A", "Gamma^Gus", seed=13)
    b = _write_pair(tmp_path, "E2E-3B", "Delta^Dee", seed=14, prior_date="20220707", current_date="20240311")
    cfg, path = node_config(**_node_yaml_sections(orthanc, pacs=False))
    node = node_proc(path)
    peer = dimse.Peer(cfg.node.ae_title, "127.0.0.1", cfg.node.port)
    errors: list[Exception] = []

    def send(files, calling):
        try:
            dimse.store(peer, calling, files)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    # four associations at once; the two patients' series are cut in halves sent by different associations
    halves = lambda fs: (fs[0::2], fs[1::2])  # noqa: E731
    batches = [*halves(a["prior"] + b["current"]), *halves(b["prior"] + a["current"])]
    threads = [threading.Thread(target=send, args=(fs, f"MOD{i}")) for i, fs in enumerate(batches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    for d, pid in ((a, "E2E-3A"), (b, "E2E-3B")):
        result = wait_for_delivery(cfg.node.database_url(), d["current_uid"], JOB_TIMEOUT_S, proc=node.proc,
                                   log_path=node.log_path)
        assert (result["state"], result["outcome"]) == ("done", "registered"), (result, node.log()[-3000:])
        jobs, _ = _jobs(cfg, d["current_uid"])
        assert jobs[0].prior_study_uid == d["prior_uid"]
        _check_results_in_orthanc(orthanc, d["current_uid"], pid, d["prior_uid"], tmp_path)


def test_e2e_no_prior_nothing_sent(orthanc, node_config, node_proc, tmp_path):
    data = _write_pair(tmp_path, "E2E-4", "Eps^Eve", seed=15, realistic=False)
    cfg, path = node_config(**_node_yaml_sections(orthanc))
    orthanc.add_modality("totalreg", cfg.node.ae_title, "127.0.0.1", cfg.node.port)
    node = node_proc(path)
    _storescu(node.port, data["current"])
    result = wait_for_delivery(cfg.node.database_url(), data["current_uid"], 120, proc=node.proc,
                               log_path=node.log_path)
    assert (result["state"], result["outcome"]) == ("done", "no_prior"), result
    assert result["reason"] == "PACS 'orthanc': no earlier study of this patient"
    assert result["sends"] == []
    assert orthanc.study_series(data["current_uid"]) == []


def test_e2e_patient_id_collision_refused_and_flagged(orthanc, node_config, node_proc, tmp_path):
    """Orthanc holds a prior under the same PatientID but for another person: refused, nothing sent."""
    data = _write_pair(tmp_path, "E2E-5", "Zeta^Zoe", seed=16, prior_name="Other^Person", realistic=False)
    orthanc.upload(data["prior"])
    cfg, path = node_config(**_node_yaml_sections(orthanc))
    orthanc.add_modality("totalreg", cfg.node.ae_title, "127.0.0.1", cfg.node.port)
    node = node_proc(path)
    _storescu(node.port, data["current"])
    result = wait_for_delivery(cfg.node.database_url(), data["current_uid"], 120, proc=node.proc,
                               log_path=node.log_path)
    assert result["state"] == "failed", result
    assert "PatientID E2E-5 matches PACS 'orthanc' study" in result["reason"]
    assert "PatientName differs: refusing to pair" in result["reason"]
    assert result["sends"] == []
    assert orthanc.study_series(data["current_uid"]) == []
    # the prior was not even retrieved
    assert not list((Path(cfg.node.data_dir) / "spool").glob(f"{data['prior_uid']}*"))
