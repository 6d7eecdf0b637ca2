"""The PACS side of the prior search: Study Root C-FIND of a patient's studies and of a study's series, retrieval
of one series by C-MOVE (to ``move_destination``, default the node's AE title) or C-GET (into a
:class:`RetrieveSink`), and plain-words reasons for DIMSE failures."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydicom.dataset import Dataset

from node.config import NodeConfig, PacsConfig, TlsSettings
from node.net import dimse
from node.net.tls import TlsConfigError, client_context
from node.priors import dicomweb
from node.store.header import parse_is, series_summary_of, study_summary_of, summary_from_files
from node.store.study import SeriesSummary, StudySummary


@runtime_checkable
class RetrieveSink(Protocol):
    """Where retrieved priors go. The node's implementation indexes into the spool; tests use :class:`FolderSink`.

    ``expect(study_uid)`` is called before a retrieve (the index must not route the incoming prior);
    ``store(ds)`` receives each C-GET instance (``ds.file_meta`` set) and must persist it before returning;
    ``summary(study_uid)`` returns the retrieved study as it is now held locally (series with paths), or None."""

    def expect(self, study_uid: str) -> None: ...

    def store(self, ds: Dataset) -> None: ...

    def summary(self, study_uid: str) -> StudySummary | None: ...


class FolderSink:
    """A :class:`RetrieveSink` on a plain folder: ``root/StudyUID/SeriesUID/SOPInstanceUID.dcm`` (atomic writes).

    For C-MOVE the node's own listener must write into the same folder layout."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def expect(self, study_uid: str) -> None:
        """Nothing to prepare for a folder."""

    def store(self, ds: Dataset) -> None:
        """Write one instance atomically."""
        target = self.root / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".part-", dir=target.parent)
        os.close(fd)
        try:
            ds.save_as(tmp, enforce_file_format=True)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def summary(self, study_uid: str) -> StudySummary | None:
        """The study as found in the folder (headers read back), or None when nothing is there."""
        folder = self.root / study_uid
        files = sorted(folder.rglob("*.dcm")) if folder.is_dir() else []
        return summary_from_files(files) if files else None


def pacs_peer(pacs: PacsConfig) -> dimse.Peer:
    """The DIMSE peer of a ``kind: dimse`` PACS; with ``tls: true`` its associations run over TLS (TLS >= 1.2),
    the PACS's certificate checked against ``host`` and ``ca_file`` (else the system's CAs), the node's
    ``client_cert``/``client_key`` presented when it asks for one."""
    ctx = None
    if pacs.tls:
        mine = TlsSettings(cert_file=pacs.client_cert, key_file=pacs.client_key) if pacs.client_cert else None
        try:
            ctx = client_context(mine, ca_file=pacs.ca_file)
        except TlsConfigError as exc:  # a settings problem, not a network one: not retried
            raise dimse.DimseError(f"the TLS files of PACS '{pacs.name}' cannot be used: {exc}") from None
    return dimse.Peer(pacs.ae_title, pacs.host, pacs.port, name=pacs.name, tls=ctx)


def query_pacs_studies(cfg: NodeConfig, pacs: PacsConfig, current: StudySummary) -> list[StudySummary]:
    """Study Root C-FIND (STUDY level) on ``pacs`` for the current patient's studies (QIDO-RS for
    ``kind: dicomweb``, :mod:`node.priors.dicomweb`); raises DimseError."""
    if pacs.kind == "dicomweb":
        return dicomweb.query_studies(cfg, pacs, current)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.PatientID = current.patient.patient_id
    q.IssuerOfPatientID = current.patient.issuer or ""
    q.PatientName = ""
    q.PatientBirthDate = ""
    q.PatientSex = ""
    q.StudyInstanceUID = ""
    q.StudyDate = ""
    q.StudyTime = ""
    q.StudyDescription = ""
    q.AccessionNumber = ""
    q.ModalitiesInStudy = ""
    answers = dimse.find(pacs_peer(pacs), cfg.node.ae_title, q, timeout_s=min(pacs.timeout_s, 120.0))
    out = []
    for ident in answers:
        st = study_summary_of(ident, source=pacs.name)
        # a PACS may ignore the PatientID key (or match it loosely): keep exact matches only
        if st.study_uid and st.patient.patient_id == current.patient.patient_id:
            out.append(st)
    return out


def query_pacs_series(cfg: NodeConfig, pacs: PacsConfig, study: StudySummary) -> list[SeriesSummary]:
    """Series-level C-FIND of one study on ``pacs`` (QIDO-RS for ``kind: dicomweb``); raises DimseError."""
    if pacs.kind == "dicomweb":
        return dicomweb.query_series(cfg, pacs, study)
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = study.study_uid
    q.SeriesInstanceUID = ""
    q.Modality = ""
    q.SeriesDescription = ""
    q.SeriesNumber = ""
    q.BodyPartExamined = ""
    q.NumberOfSeriesRelatedInstances = ""
    answers = dimse.find(pacs_peer(pacs), cfg.node.ae_title, q, timeout_s=min(pacs.timeout_s, 120.0))
    return [series_summary_of(a, n_instances=parse_is(a.get("NumberOfSeriesRelatedInstances")) or 0)
            for a in answers if a.get("SeriesInstanceUID")]


def retrieve_series(cfg: NodeConfig, pacs: PacsConfig, study_uid: str, series_uid: str,
                    sink: RetrieveSink) -> dimse.RetrieveResult:
    """Retrieve one series from ``pacs`` (C-MOVE to the node, or C-GET into ``sink``; WADO-RS into ``sink`` for
    ``kind: dicomweb``); raises DimseError."""
    if pacs.kind == "dicomweb":
        return dicomweb.retrieve_series(cfg, pacs, study_uid, series_uid, sink)
    sink.expect(study_uid)
    peer = pacs_peer(pacs)
    if pacs.retrieve == "get":
        return dimse.get(peer, cfg.node.ae_title, study_uid, series_uid, sink.store, timeout_s=pacs.timeout_s)
    dest = pacs.move_destination or cfg.node.ae_title
    return dimse.move(peer, cfg.node.ae_title, dest, study_uid, series_uid, timeout_s=pacs.timeout_s)


def dimse_reason(pacs: PacsConfig, exc: dimse.DimseError, step: str, move_dest: str = "") -> str:
    """The job's plain words for a failed ``step``; a DICOMweb failure's own message names the service and PACS."""
    if pacs.kind == "dicomweb":
        return str(exc)
    if exc.kind in ("unreachable", "rejected"):
        return f"PACS '{pacs.name}' unreachable for {step}: {exc}"
    if exc.kind == "timeout":
        return f"PACS '{pacs.name}' timed out during {step}: {exc}"
    if exc.status == 0xA801:
        return (f"PACS '{pacs.name}' does not know the move destination "
                f"'{move_dest or pacs.move_destination}' (0xA801): add the node's AE title, host and port "
                f"to the PACS, or use retrieve: get")
    if step == "C-MOVE" and exc.status is not None and 0xC000 <= exc.status <= 0xCFFF:
        return (f"PACS '{pacs.name}' failed during {step}: {exc} (Orthanc and others answer this when they do not "
                f"know the move destination '{move_dest or pacs.move_destination}': check that the PACS lists the "
                f"node's AE title, host and port)")
    return f"PACS '{pacs.name}' failed during {step}: {exc}"


def is_transient(exc: "dimse.DimseError") -> bool:
    """A network condition that may pass (PACS down, timeout), as opposed to a refusal or a data problem."""
    return exc.kind in ("unreachable", "timeout")
