"""Full fault / fuzz / security / load runs of the node and their figures in ``bench/faults/RESULTS.md``.

    python3 bench/faults/run.py                 # the full (slow) suites: -m slow tests/robustness
    python3 bench/faults/run.py --ci            # the CI subset instead (default marker selection)
    python3 bench/faults/run.py --render-only   # re-write RESULTS.md from the last figures

Each suite writes its figures as JSON into ``--out`` (``$TOTALREG_FAULTS_OUT``, default ``bench/out/faults``);
pytest's JUnit XML gives every test's outcome and wall time.  RESULTS.md gets the command, the date, the
machine's load, per-test outcomes/times and the figures (cycles, instances, losses, RSS peaks, times).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def run_pytest(out: Path, ci: bool, extra: list[str]) -> tuple[int, float, str]:
    """Run the robustness suites; (exit code, wall seconds, command line)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.json"), *out.glob("junit*.xml")]:
        old.unlink()
    cmd = [sys.executable, "-m", "pytest", "tests/robustness", "-q", "-p", "no:cacheprovider",
           f"--junitxml={out / 'junit.xml'}", *([] if ci else ["-m", "slow"]), *extra]
    env = dict(os.environ, TOTALREG_FAULTS_OUT=str(out))
    t0 = time.monotonic()
    with open(out / "pytest.log", "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    shown = " ".join(["TOTALREG_FAULTS_OUT=" + os.path.relpath(out, ROOT), "python3", *cmd[1:]])
    return rc, time.monotonic() - t0, shown


def _tests(out: Path) -> list[tuple[str, str, float, str]]:
    """(test, outcome, seconds, first line of the failure) from the JUnit XML."""
    rows: dict[str, tuple] = {}
    for path in sorted(out.glob("junit*.xml"), key=lambda p: p.stat().st_mtime):  # re-runs override
        for row in _junit_rows(path):
            rows[row[0]] = row
    return list(rows.values())


def _junit_rows(path: Path) -> list[tuple[str, str, float, str]]:
    rows = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        outcome, why = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
                why = (el.get("message") or "").splitlines()[0][:220] if el.get("message") else ""
        rows.append((f"{tc.get('classname', '').split('.')[-1]}::{tc.get('name')}", outcome,
                     float(tc.get("time", 0)), why))
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, sort_keys=True)[:400] + "`"
    return str(v)


def _summary(out: Path) -> list[str]:
    """One line per suite with its key numbers (from whichever figures exist)."""
    def load(name):
        p = out / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None
    lines = []
    for name in ("kill_cycles_full", "kill_cycles_ci"):
        k = load(name)
        if k:
            lines.append(f"- **kill -9 ({name.split('_')[-1]})**: {k['cycles']} cycles (receive + job + send "
                         f"under way at each kill, {k['registrations_killed']} real registrations killed), "
                         f"{k['acknowledged_before_kill']} instances acknowledged before the kills, "
                         f"**{k['lost']} lost**; {k['job_runs_done']} jobs run, each completed by exactly one run "
                         f"({k['job_runs_lost']} killed runs re-done); {k['sends']} sends "
                         f"delivered once each in {k['send_attempts']} attempts; {k['wall_s']} s.")
    d = load("disk_full")
    if d:
        lines.append(f"- **spool disk full** ({'tmpfs ' + str(d['tmpfs_kb']) + ' KiB' if d['mounted_tmpfs'] else 'threshold'}):"
                     f" {d['accepted_while_filling']} of {d['sent']} accepted, {d['refused']} answered "
                     f"{', '.join(d['refusal_statuses'])}; after space returned {d['accepted_after_space_returned']}"
                     f"/{d['sent']} accepted.")
    p = load("pacs_down_send")
    if p:
        lines.append(f"- **PACS down during send**: {p['failed_attempts_while_down']} failed attempts "
                     f"(\"{p['first_error'][:90]}...\"), delivered {p['recovery_s']} s after Orthanc came back.")
    for name in ("fuzz_cstore_full", "fuzz_cstore_ci", "fuzz_reader_full", "fuzz_reader_ci"):
        f = load(name)
        if f:
            extra = (f", node RSS {f['rss_before_mib']:.0f} -> {f['rss_after_mib']:.0f} MiB, statuses "
                     f"{f['statuses']}" if "rss_before_mib" in f else "")
            lines.append(f"- **{name}**: {f['examples']} examples, {len(f['failures'])} kinds of contract "
                         f"violation{extra}.")
    for name in ("load_full", "load_ci"):
        f = load(name)
        if f:
            lines.append(f"- **{name}**: {f['senders']} senders x {f['per_sender']} instances while "
                         f"{f['jobs']} ran: {f['acknowledged']} acknowledged, **{f['lost']} lost**, "
                         f"{f['instances_per_s']} instances/s, node RSS idle {f['rss_idle_mib']} MiB, peak "
                         f"{f['rss_peak_mib']} MiB" + (f", C-STORE answer max {f['cstore_latency_max_s']} s"
                                                       if f.get("cstore_latency_max_s") is not None else "") + ".")
    return lines or ["(no figures)"]


def render(out: Path, header: dict) -> str:
    """RESULTS.md text from the figures in ``out``."""
    lines = ["# Faults, fuzzing, security and load: results", "",
             "Written by `bench/faults/run.py` (do not edit by hand; re-run it).  Tests: `tests/robustness/`.",
             ""]
    for k, v in header.items():
        lines.append(f"- **{k}**: {v}")
    lines += ["", "## Summary", ""] + _summary(out)
    lines += ["", "## Tests", "", "| test | outcome | wall s | note |", "|---|---|---:|---|"]
    for name, outcome, secs, why in _tests(out):
        lines.append(f"| `{name}` | {outcome} | {secs:.1f} | {why.replace('|', '/')} |")
    lines += ["", "## Figures", ""]
    for f in sorted(out.glob("*.json")):
        data = json.loads(f.read_text())
        lines += [f"### {f.stem}", "", "| figure | value |", "|---|---|"]
        per_cycle = data.pop("per_cycle", None)
        failures = data.pop("failures", None)
        for k, v in sorted(data.items()):
            lines.append(f"| {k} | {_fmt(v)} |")
        if failures is not None:
            lines.append(f"| failures (kinds) | {len(failures)} |")
            if failures:
                lines += ["", "Contract violations found (first example of each kind):", ""]
                for v in failures.values():
                    lines.append("- `" + v.splitlines()[0][:300].replace("`", "'") + "`")
        if per_cycle:
            keys = list(per_cycle[0].keys())
            lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            for row in per_cycle:
                lines.append("| " + " | ".join(_fmt(row.get(k)) for k in keys) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ci", action="store_true", help="run the CI subset instead of the full (slow) suites")
    ap.add_argument("--out", default=os.environ.get("TOTALREG_FAULTS_OUT", str(ROOT / "bench/out/faults")))
    ap.add_argument("--render-only", action="store_true", help="only re-write RESULTS.md from --out")
    ap.add_argument("--results", default=str(RESULTS), help="where to write the Markdown")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    header = {"date (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
              "machine": f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end "
                         "(shared with other work)"}
    rc = 0
    saved = out / "header.json"
    if not a.render_only:
        rc, wall, cmd = run_pytest(out, a.ci, a.pytest_args)
        header = {"command": f"`{cmd}`", "exit code": rc, "wall time": f"{wall / 60:.1f} min", **header}
        saved.write_text(json.dumps(header))
    elif saved.exists():  # keep what the run recorded
        header = json.loads(saved.read_text())
    Path(a.results).write_text(render(out, header))
    print(f"wrote {a.results} (pytest exit code {rc}; log {out / 'pytest.log'})")
    return rc


if __name__ == "__main__":
    sys.exit(main())
