"""Senders against a real Orthanc (DICOM C-STORE, DICOMweb STOW-RS, REST), a folder, and failing peers."""
from __future__ import annotations


import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from node.config import DestinationConfig
from node.dispatch.senders import SendError, send
from orthanc_server import orthanc, small_ct_study  # noqa: F401 - fixture
from tools import free_port

pytestmark = pytest.mark.orthanc


def _study_count(orthanc, study_uid: str) -> int:
    return sum(len(s["Instances"]) for s in orthanc.study_series(study_uid))


@pytest.mark.parametrize("kind", ["dicom", "dicomweb", "orthanc"])
def test_send_to_orthanc_every_kind(orthanc, tmp_path, kind):
    files = small_ct_study(tmp_path / "s", patient_id=f"SEND-{kind}")
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    dest = {
        "dicom": DestinationConfig(name="pacs", kind="dicom", ae_title=orthanc.aet, host="127.0.0.1",
                                   port=orthanc.dicom_port),
        "dicomweb": DestinationConfig(name="web", kind="dicomweb", url=orthanc.dicomweb_url),
        "orthanc": DestinationConfig(name="rest", kind="orthanc", url=orthanc.http_url),
    }[kind]
    report = send(dest, files, calling_ae="TOTALREG")
    assert (report.n_sent, report.n_acked) == (len(files), len(files))
    assert _study_count(orthanc, study_uid) == len(files)
    # sending again is harmless (Orthanc answers AlreadyStored / success) and still fully acknowledged
    assert send(dest, files, calling_ae="TOTALREG").n_acked == len(files)
    assert _study_count(orthanc, study_uid) == len(files)


def test_send_folder_is_atomic_and_byte_identical(tmp_path):
    files = small_ct_study(tmp_path / "s")
    dest = DestinationConfig(name="local", kind="folder", path=tmp_path / "out")
    report = send(dest, files, calling_ae="TOTALREG")
    assert report.n_acked == len(files)
    written = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(written) == len(files)
    assert not list((tmp_path / "out").rglob(".part-*"))
    ds = dcmread(files[0])
    target = tmp_path / "out" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert target.read_bytes() == files[0].read_bytes()


def test_send_unreachable_peers_raise_plain_errors(tmp_path):
    files = small_ct_study(tmp_path / "s")
    port = free_port()  # nothing listens here
    with pytest.raises(SendError, match=r"destination 'down'.*cannot reach"):
        send(DestinationConfig(name="down", kind="dicom", ae_title="PACS", host="127.0.0.1", port=port), files,
             calling_ae="TOTALREG", timeout_s=5)
    with pytest.raises(SendError, match=r"destination 'web'.*unreachable"):
        send(DestinationConfig(name="web", kind="dicomweb", url=f"http://127.0.0.1:{port}/dicom-web"), files,
             calling_ae="TOTALREG", timeout_s=5)
    with pytest.raises(SendError, match=r"missing"):
        send(DestinationConfig(name="local", kind="folder", path=tmp_path / "o"), [tmp_path / "nope.dcm"],
             calling_ae="TOTALREG")


def test_send_dicom_refused_instance_is_a_failure(tmp_path):
    """An SCP that refuses the 2nd instance (0xA700): the attempt fails and says how many were acknowledged."""
    files = small_ct_study(tmp_path / "s")
    seen: list[str] = []

    def handle(event):
        seen.append(event.request.AffectedSOPInstanceUID)
        return 0xA700 if len(seen) == 2 else 0x0000

    ae = AE(ae_title="PICKY")
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    try:
        dest = DestinationConfig(name="picky", kind="dicom", ae_title="PICKY", host="127.0.0.1", port=port)
        with pytest.raises(SendError, match=r"0xA700.*1 acknowledged before"):
            send(dest, files, calling_ae="TOTALREG")
        assert len(seen) == 2  # stopped at the refusal, did not keep going
    finally:
        server.shutdown()


def test_send_dicom_rejected_association(tmp_path):
    files = small_ct_study(tmp_path / "s")
    ae = AE(ae_title="STRICT")
    ae.add_supported_context(CTImageStorage)
    ae.require_calling_aet = ["SOMEONE"]
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        dest = DestinationConfig(name="strict", kind="dicom", ae_title="STRICT", host="127.0.0.1", port=port)
        with pytest.raises(SendError, match=r"rejected the association"):
            send(dest, files, calling_ae="TOTALREG")
    finally:
        server.shutdown()
