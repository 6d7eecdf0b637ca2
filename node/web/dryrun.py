"""Dry run of (possibly unsaved) routing rules against a received study: which rule, which series, which prior.

Uses ``node.route.rules.dry_run`` with the study and the patient's other local studies from ``node.receive.index``; no network
(the PACS is not queried) and nothing is retrieved or queued.
"""
from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from node.config import NodeConfig, Rule

log = logging.getLogger(__name__)


def run_dry(cfg: NodeConfig, rules: list[Rule], session: Session, study_uid: str):
    """(DryRun, '') for ``study_uid`` under ``rules``, or (None, plain-words reason) when it cannot run."""
    if not study_uid:
        return None, "Choose a received study for the dry run."
    try:
        from node.receive import index
        from node.route.rules import dry_run
    except ImportError as exc:
        return None, f"Dry run is not available in this installation ({exc.name} is missing)."
    study = index.study_summary(session, study_uid, with_paths=True)
    if study is None:
        return None, "No received study has that Study Instance UID."
    candidates = [s for s in index.studies_for_patient(session, study.patient.patient_id, study.patient.issuer,
                                                       with_paths=False) if s.study_uid != study_uid]
    try:
        return dry_run(cfg.model_copy(update={"rules": rules}), study, candidates, query_pacs=False), ""
    except ImportError as exc:
        return None, f"Dry run is not available in this installation ({exc.name} is missing)."
    except Exception as exc:  # a dry run must explain, never crash the page
        log.exception("dry run failed")
        return None, f"The dry run failed: {exc}"
