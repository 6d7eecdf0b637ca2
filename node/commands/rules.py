"""`totalreg rules check FILE` and `totalreg rules dry-run --config X --study UID|FOLDER`.

``check`` validates routing rules: FILE is either a whole ``node.yaml`` or a YAML list of rules (as edited in the
console). Errors name the line and key; exit status 2.

``dry-run`` says which rule and which prior a study would get, without processing or retrieving anything. The study
is a StudyInstanceUID held by the node (its database from ``--config``) or a folder of DICOM files. By default no
PACS is contacted; ``--query-pacs`` adds a C-FIND (still no retrieval).
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from node.config import ConfigError, load_config, parse_config, parse_rules
from node.priors.dryrun import dry_run
from node.store import queries
from node.store.db import open_database
from node.store.header import summary_from_files


def add_parser(subparsers) -> None:
    """Register `totalreg rules` with its `check` and `dry-run` sub-commands."""
    p = subparsers.add_parser("rules", help="check routing rules, or dry-run them on a study")
    sub = p.add_subparsers(dest="rules_command", metavar="ACTION")
    c = sub.add_parser("check", help="validate a node.yaml or a YAML list of rules")
    c.add_argument("file", type=Path)
    c.set_defaults(func=run)
    d = sub.add_parser("dry-run", help="which rule and which prior would this study get?")
    d.add_argument("--config", type=Path, default=None, help="node.yaml (default: embedded defaults)")
    d.add_argument("--study", required=True, help="StudyInstanceUID held by the node, or a folder of DICOM files")
    d.add_argument("--prior", type=Path, action="append", default=[],
                   help="folder of a candidate prior study (repeatable; added to the node's own studies)")
    d.add_argument("--query-pacs", action="store_true", help="also C-FIND the configured PACS (nothing is retrieved)")
    d.add_argument("--json", action="store_true", help="print JSON instead of text")
    d.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run(args) -> int:
    """Run `rules check` or `rules dry-run`; returns the exit status."""
    if args.rules_command == "check":
        return _check(args.file)
    return _dry_run(args)


def _check(path: Path) -> int:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        top = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        top = None  # let the parser report the line
    if isinstance(top, list):
        rules = parse_rules(text, source=path.name)
    else:
        rules = parse_config(text, source=path.name).rules
    enabled = [r.name for r in rules if r.enabled]
    print(f"{path.name}: OK, {len(rules)} rule(s)"
          + (f"; enabled: {', '.join(enabled)}" if enabled else "; none enabled"))
    return 0


def _folder_summary(folder: Path):
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    if not files:
        raise ConfigError(f"no DICOM files in {folder}")
    try:
        return summary_from_files(files)
    except Exception as exc:  # noqa: BLE001 - unreadable input is a plain error
        raise ConfigError(f"cannot read the DICOM files in {folder}: {exc}") from None


def _dry_run(args) -> int:
    cfg = load_config(args.config)
    candidates = [_folder_summary(p) for p in args.prior]
    study_arg = Path(args.study)
    if study_arg.is_dir():
        study = _folder_summary(study_arg)
        candidates.extend(_db_candidates(cfg, study, must_exist=False))
    else:
        study = _db_study(cfg, args.study)
        candidates.extend(_db_candidates(cfg, study, must_exist=True))
    result = dry_run(cfg, study, candidates, query_pacs=args.query_pacs)
    print(json.dumps(result.as_dict(), indent=1) if args.json else result.text())
    return 0


def _db_study(cfg, uid: str):
    if not cfg.node.database and not (cfg.node.data_dir / "node.db").exists():
        raise ConfigError(f"no node database at {cfg.node.data_dir / 'node.db'}: give --config of the running node, "
                          f"or a folder of DICOM files as --study")
    db = open_database(cfg)
    try:
        with db.session() as s:
            study = queries.study_summary(s, uid, with_paths=True)
    finally:
        db.dispose()
    if study is None:
        raise ConfigError(f"study {uid} is not held by the node (database {cfg.node.database_url()})")
    return study


def _db_candidates(cfg, study, must_exist: bool):
    if not must_exist and not (cfg.node.database or (cfg.node.data_dir / "node.db").exists()):
        return []
    db = open_database(cfg)
    try:
        with db.session() as s:
            return queries.studies_for_patient(s, study.patient.patient_id, study.patient.issuer, with_paths=True)
    finally:
        db.dispose()
