"""Dry run of (possibly unsaved) routing rules against a received study: which rule, which series, which prior.

Uses ``node.priors.dryrun.dry_run`` with the study and the patient's other local studies (``node.store.queries``); no network
(the PACS is not queried) and nothing is retrieved or queued.
"""
from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from node.config import NodeConfig, Rule
from node.priors.dryrun import dry_run
from node.store import queries

log = logging.getLogger(__name__)


def run_dry(cfg: NodeConfig, rules: list[Rule], session: Session, study_uid: str):
    """(DryRun, '') for ``study_uid`` under ``rules``, or (None, plain-words reason) when it cannot run."""
    if not study_uid:
        return None, "Choose a received study for the dry run."
    study = queries.study_summary(session, study_uid, with_paths=True)
    if study is None:
        return None, "No received study has that Study Instance UID."
    candidates = [s for s in queries.studies_for_patient(session, study.patient.patient_id, study.patient.issuer,
                                                       with_paths=False) if s.study_uid != study_uid]
    try:
        return dry_run(cfg.model_copy(update={"rules": rules}), study, candidates, query_pacs=False), ""
    except Exception as exc:  # a dry run must explain, never crash the page
        log.exception("dry run failed")
        return None, f"The dry run failed: {exc}"
