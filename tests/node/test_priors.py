"""Prior finding: pairing rules on local studies, and C-FIND + C-MOVE / C-GET against a real Orthanc."""
from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt

from node.config import NodeConfig, PacsConfig, Rule
from node.priors.choice import choose, find_priors
from node.priors.pacs import FolderSink
from node.store.header import summary_from_files
from node.store.study import PatientIdentity, SeriesSummary, StudySummary
from orthanc_server import orthanc, small_ct_study  # noqa: F401 - fixture
from tools import free_port


def st(uid, when, *, pid="P1", name="Doe^Jane", birth=date(1960, 1, 1), issuer="", modality="CT", time=""):
    s = StudySummary(study_uid=uid, patient=PatientIdentity(pid, issuer, name, birth), study_date=when,
                     series=[SeriesSummary(series_uid=f"{uid}.1", modality=modality, n_instances=50)])
    if time:
        s.study_time = time
    return s


CUR = st("cur", date(2024, 3, 10), time="101500")
RULE = Rule(name="r", prior={"max_age_days": 3650})


def test_most_recent_earlier_study_is_chosen():
    cands = [CUR, st("a", date(2020, 1, 1)), st("b", date(2023, 6, 1)), st("later", date(2024, 5, 1))]
    chosen, why, flagged = choose(RULE, CUR, cands)
    assert [c.study_uid for c in chosen] == ["b"] and not flagged
    assert "2023-06-01" in why and "283 days before" in why


def test_all_within_and_age_limits():
    cands = [st("a", date(2024, 1, 10)), st("b", date(2023, 12, 1)), st("c", date(2022, 1, 1))]
    rule = Rule(name="r", prior={"pick": "all_within", "within_days": 120})
    chosen, _, _ = choose(rule, CUR, cands)
    assert [c.study_uid for c in chosen] == ["a", "b"]
    too_old = Rule(name="r", prior={"max_age_days": 30})
    chosen, why, _ = choose(too_old, CUR, cands)
    assert chosen == [] and "more than max_age_days 30" in why
    too_new = Rule(name="r", prior={"min_age_days": 90})
    assert [c.study_uid for c in choose(too_new, CUR, cands)[0]] == ["b"]


def test_same_day_needs_earlier_study_time_and_non_ct_is_skipped():
    same_day_earlier = st("early", date(2024, 3, 10), time="080000")
    same_day_later = st("late", date(2024, 3, 10), time="120000")
    same_day_unknown = st("unk", date(2024, 3, 10))
    mr = st("mr", date(2023, 1, 1), modality="MR")
    chosen, why, _ = choose(RULE, CUR, [same_day_later, same_day_unknown, mr])
    assert chosen == []
    assert "not earlier" in why and "StudyTimes are unknown" in why and "no CT series" in why
    assert [c.study_uid for c in choose(RULE, CUR, [same_day_earlier])[0]] == ["early"]


def test_patient_collision_is_refused_and_flagged():
    other = st("x", date(2023, 1, 1), name="Smith^John")
    chosen, why, flagged = choose(RULE, CUR, [other, st("ok", date(2022, 1, 1))])
    assert chosen == [] and flagged
    assert why.startswith("PatientID P1 matches") and "PatientName differs: refusing to pair" in why
    born = st("y", date(2023, 1, 1), birth=date(1970, 2, 2))
    chosen, why, flagged = choose(RULE, CUR, [born])
    assert flagged and "PatientBirthDate differs" in why
    # another issuer is another patient: not paired, not a collision
    chosen, why, flagged = choose(RULE, st("c2", date(2024, 3, 10), issuer="HOSP_A"),
                                  [st("z", date(2023, 1, 1), issuer="HOSP_B", name="Smith^John")])
    assert chosen == [] and not flagged and "IssuerOfPatientID HOSP_B differs" in why


def test_no_prior_reasons_without_pacs():
    cfg = NodeConfig()
    d = find_priors(cfg, RULE, CUR, [CUR], retrieve_into=None)
    assert d.priors == [] and not d.flagged
    assert d.reason == "no earlier study of this patient received, and no PACS is configured to search"
    off = Rule(name="r", prior={"search_pacs": False})
    d = find_priors(NodeConfig(pacs=[PacsConfig(name="p", ae_title="P", host="127.0.0.1", port=1)]), off, CUR, [],
                    retrieve_into=None)
    assert "searching the PACS is off for rule 'r'" in d.reason


def test_local_prior_comes_with_its_ct_series():
    prior = st("p", date(2023, 3, 1))
    prior.series.insert(0, SeriesSummary(series_uid="p.sr", modality="SR"))
    d = find_priors(NodeConfig(), RULE, CUR, [CUR, prior], retrieve_into=None)
    assert [p.study_uid for p in d.priors] == ["p"] and d.series == {"p": "p.1"} and d.retrieved_from == ""


# ------------------------------------------------------------------------------------------------ with Orthanc

@pytest.fixture(scope="module")
def pacs_prior(orthanc, tmp_path_factory):
    """A prior CT (2023-01-05, patient PRI-1) stored in Orthanc over REST; returns its files."""
    files = small_ct_study(tmp_path_factory.mktemp("prior"), patient_id="PRI-1", patient_name="Prior^Pat",
                           study_date="20230105", seed=3)
    orthanc.upload(files)
    return files


@pytest.fixture
def node_scp(tmp_path):
    """A tiny storage SCP standing in for the node's listener (AE TOTALREG): writes into a FolderSink."""
    sink = FolderSink(tmp_path / "received")
    port = free_port()
    ae = AE(ae_title="TOTALREG")
    ae.supported_contexts = AllStoragePresentationContexts

    def handle(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        sink.store(ds)
        return 0x0000

    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    yield sink, port
    server.shutdown()


def _current(patient_id="PRI-1", name="Prior^Pat"):
    return StudySummary(study_uid="9.9.9", patient=PatientIdentity(patient_id, "", name, date(1960, 1, 1)),
                        study_date=date(2024, 3, 10),
                        series=[SeriesSummary(series_uid="9.9.9.1", modality="CT", n_instances=4)])


def _cfg(orthanc, retrieve="move", port=None, move_destination=None):
    return NodeConfig(pacs=[PacsConfig(name="orthanc", ae_title=orthanc.aet, host="127.0.0.1",
                                       port=port or orthanc.dicom_port, retrieve=retrieve,
                                       move_destination=move_destination, timeout_s=30)])


@pytest.mark.orthanc
def test_cfind_cmove_prior_from_orthanc(orthanc, pacs_prior, node_scp):
    sink, port = node_scp
    orthanc.add_modality("node", "TOTALREG", "127.0.0.1", port)
    d = find_priors(_cfg(orthanc), RULE, _current(), [], retrieve_into=sink)
    prior_uid = str(dcmread(pacs_prior[0], stop_before_pixels=True).StudyInstanceUID)
    assert [p.study_uid for p in d.priors] == [prior_uid], d.reason
    assert d.retrieved_from == "orthanc" and "C-MOVE" in d.notes[-1]
    held = d.priors[0]
    assert held.source == "orthanc" and len(held.series[0].paths) == len(pacs_prior)
    assert held.study_date == date(2023, 1, 5)
    assert summary_from_files(held.series[0].paths).series[0].n_instances == len(pacs_prior)


@pytest.mark.orthanc
def test_cget_prior_from_orthanc(orthanc, pacs_prior, tmp_path):
    d = find_priors(_cfg(orthanc, retrieve="get"), RULE, _current(), [], retrieve_into=tmp_path / "got")
    assert len(d.priors) == 1, d.reason
    files = d.priors[0].series[0].paths
    assert len(files) == len(pacs_prior) and "C-GET" in d.notes[-1]
    assert dcmread(files[0]).pixel_array.shape == (14, 16)


@pytest.mark.orthanc
def test_unknown_move_destination_is_explained(orthanc, pacs_prior, tmp_path):
    # Orthanc 1.10 answers 0xC000 (not 0xA801) for an unknown destination: the reason still points at the cause
    d = find_priors(_cfg(orthanc, move_destination="NOBODY"), RULE, _current(), [], retrieve_into=tmp_path)
    assert d.priors == [] and not d.flagged
    assert "0xC000" in d.reason and "do not know the move destination 'NOBODY'" in d.reason


def test_move_destination_unknown_0xA801_from_a_strict_pacs(tmp_path):
    """A Q/R SCP (pynetdicom) that knows no destination answers 0xA801; the reason says what to configure."""
    from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind as F,
                                      StudyRootQueryRetrieveInformationModelMove as M)
    from pydicom.dataset import Dataset

    def on_find(event):
        ds = Dataset()
        ds.QueryRetrieveLevel = event.identifier.QueryRetrieveLevel
        ds.PatientID, ds.PatientName, ds.StudyDate = "PRI-1", "Prior^Pat", "20230105"
        ds.StudyInstanceUID, ds.ModalitiesInStudy = "1.2.826.0.1.1", "CT"
        if ds.QueryRetrieveLevel == "SERIES":
            ds.SeriesInstanceUID, ds.Modality, ds.NumberOfSeriesRelatedInstances = "1.2.826.0.1.1.1", "CT", "4"
        yield 0xFF00, ds

    def on_move(event):
        yield None, None  # destination unknown -> pynetdicom answers 0xA801

    ae = AE(ae_title="STRICTQR")
    ae.add_supported_context(F)
    ae.add_supported_context(M)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_C_MOVE, on_move)])
    try:
        cfg = NodeConfig(pacs=[PacsConfig(name="strict", ae_title="STRICTQR", host="127.0.0.1", port=port,
                                          timeout_s=10)])
        d = find_priors(cfg, RULE, _current(), [], retrieve_into=tmp_path)
    finally:
        server.shutdown()
    assert d.priors == []
    assert "does not know the move destination 'TOTALREG' (0xA801)" in d.reason


@pytest.mark.orthanc
def test_unreachable_pacs_and_no_earlier_study_and_collision(orthanc, pacs_prior, tmp_path):
    d = find_priors(_cfg(orthanc, port=free_port()), RULE, _current(), [], retrieve_into=tmp_path)
    assert d.priors == [] and "PACS 'orthanc' unreachable for C-FIND" in d.reason
    d = find_priors(_cfg(orthanc), RULE, _current(patient_id="NOBODY-HERE"), [], retrieve_into=tmp_path)
    assert d.priors == [] and d.reason == "PACS 'orthanc': no earlier study of this patient"
    d = find_priors(_cfg(orthanc), RULE, _current(name="Someone^Else"), [], retrieve_into=tmp_path)
    assert d.flagged and d.priors == []
    assert "PatientID PRI-1 matches PACS 'orthanc' study" in d.reason and "PatientName differs" in d.reason
    assert not any(Path(tmp_path).rglob("*.dcm"))  # nothing retrieved for a refused pairing
