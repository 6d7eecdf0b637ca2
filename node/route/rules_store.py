"""Routing rules as a versioned document in the database (table ``rule_versions``).

The console and the REST API edit the rules as YAML text (a list of rules, the ``rules:`` section of node.yaml).
Saving validates the text with :func:`node.config.parse_rules` plus the cross-checks of the whole configuration
(duplicate names, ``send_to`` naming a destination that exists) and appends a new version; nothing is written
when the text has a problem.  The rules' regular expressions must suit RE2 (:mod:`node.rule_patterns`: linear-time
matching, so a rule or a dry run can never stall the node); a pattern RE2 refuses (backreferences, lookaround) is a
problem that names the rule and why. The newest version is the one in force; when none was saved yet, the rules of
node.yaml are. Workers read them with :func:`current_rules`.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import datetime

import yaml
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from node.config import ConfigError, NodeConfig, Rule, parse_rules
from node.store.db import add_event

from node.store.console import RuleVersion

_LINE = re.compile(r"\bline (\d+)\b")
_PREFIX = re.compile(r"^rules line \d+:? ?")


@dataclass
class Problem:
    """One validation problem: 1-based line (None when unknown) and the full message (names line and key)."""

    line: int | None
    message: str

    @property
    def short(self) -> str:
        """The message without its leading 'rules line N' (for display next to a line link)."""
        return _PREFIX.sub("", self.message) if self.line else self.message


def problems_of(exc: ConfigError) -> list[Problem]:
    """Split a ConfigError's message into one :class:`Problem` per line, with the line number it names."""
    out = []
    for msg in str(exc).splitlines():
        m = _LINE.search(msg)
        out.append(Problem(int(m.group(1)) if m else None, msg))
    return out


def rules_to_text(rules: list[Rule]) -> str:
    """YAML text of a list of rules (defaults left out), as shown in the editor."""
    data = [r.model_dump(mode="json", exclude_defaults=True) for r in rules]
    for d, r in zip(data, rules):
        d.setdefault("name", r.name)
    return yaml.safe_dump(data, sort_keys=False)


def _node_at(root, loc):
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), node)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
    return node


def validate(text: str, cfg: NodeConfig) -> list[Rule]:
    """Parse and check rules text against ``cfg``'s destinations; raise ConfigError naming line and key."""
    rules = parse_rules(text, source="rules")
    problems = cfg.model_copy(update={"rules": rules}).reference_problems()
    problems = [(loc, msg) for loc, msg in problems if loc and loc[0] == "rules"]
    if problems:
        root = yaml.compose(text)
        lines = []
        for loc, msg in problems:
            node = _node_at(root, loc[1:])
            where = f"rules line {node.start_mark.line + 1}" if node is not None else "rules"
            key = "rules" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
            lines.append(f"{where} ({key}): {msg}")
        raise ConfigError("\n".join(lines))
    return rules


def latest(session: Session) -> RuleVersion | None:
    """The rules version in force (highest number), or None when the console never saved rules (or its table
    does not exist yet because the console never started on this database)."""
    try:
        with session.begin_nested():  # a savepoint: a missing table must not roll back the caller's transaction
            return session.scalars(select(RuleVersion).order_by(RuleVersion.version.desc()).limit(1)).first()
    except (OperationalError, ProgrammingError):
        return None


def current_text(session: Session, cfg: NodeConfig) -> str:
    """YAML text of the rules in force (the saved version, else node.yaml's rules)."""
    row = latest(session)
    return row.text if row is not None else rules_to_text(cfg.rules)


def current_rules(session: Session, cfg: NodeConfig) -> list[Rule]:
    """The rules in force, validated (node.yaml's when the console never saved any)."""
    row = latest(session)
    return parse_rules(row.text, source=f"rules v{row.version}") if row is not None else list(cfg.rules)


def effective_config(session: Session, cfg: NodeConfig) -> NodeConfig:
    """``cfg`` with its rules replaced by the rules in force (for the router and the workers)."""
    row = latest(session)
    return cfg if row is None else cfg.model_copy(update={"rules": current_rules(session, cfg)})


def save(session: Session, text: str, cfg: NodeConfig, *, author: str, comment: str = "") -> RuleVersion:
    """Validate ``text`` and store it as the next version (commits). ConfigError (nothing saved) on a problem."""
    validate(text, cfg)
    if not text.endswith("\n"):
        text += "\n"
    number = (session.scalar(select(func.max(RuleVersion.version))) or 0) + 1
    row = RuleVersion(version=number, text=text, author=author, comment=comment[:255])
    session.add(row)
    add_event(session, f"routing rules version {number} saved by {author}" + (f": {comment[:200]}" if comment else ""),
              kind="node")
    session.commit()
    return row


@dataclass
class HistoryEntry:
    """One saved version with the unified diff against the version before it (or node.yaml's rules)."""

    version: int
    author: str
    created_at: datetime
    comment: str
    diff: str


def history(session: Session, cfg: NodeConfig, limit: int = 50) -> list[HistoryEntry]:
    """Saved versions, newest first, each with its diff to the previous one."""
    rows = list(session.scalars(select(RuleVersion).order_by(RuleVersion.version.asc())))
    prev_text, prev_name = rules_to_text(cfg.rules), "node.yaml"
    out = []
    for row in rows:
        diff = "".join(difflib.unified_diff(prev_text.splitlines(True), row.text.splitlines(True),
                                            fromfile=prev_name, tofile=f"v{row.version}"))
        out.append(HistoryEntry(row.version, row.author, row.created_at, row.comment, diff))
        prev_text, prev_name = row.text, f"v{row.version}"
    return list(reversed(out))[:limit]
