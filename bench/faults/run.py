"""Full fault / fuzz / security / load runs of the node and their figures in ``bench/faults/RESULTS.md``.

    python3 bench/faults/run.py                 # the full (slow) suites: -m slow tests/robustness
    python3 bench/faults/run.py --ci            # the CI subset instead (default marker selection)
    python3 bench/faults/run.py --render-only   # re-write RESULTS.md from the last figures
    python3 bench/faults/run.py --section "Hostile peers" -- tests/robustness/test_hostile_peers.py \
        -m "slow or not slow"                   # run only those tests; replace only that section of RESULTS.md
    python3 bench/faults/run.py --section "Hostile UIDs and rules" -- tests/robustness/test_hostile_uids.py \
        -m "slow or not slow"
    python3 bench/faults/run.py --section "Hostile console clients" -- tests/robustness/test_hostile_console.py \
        -m "slow or not slow"

Each suite writes its figures as JSON into ``--out`` (``$TOTALREG_FAULTS_OUT``, default ``bench/out/faults``);
pytest's JUnit XML gives every test's outcome and wall time.  RESULTS.md gets the command, the date, the
machine's load, per-test outcomes/times and the figures (cycles, instances, losses, RSS peaks, times).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def run_pytest(out: Path, ci: bool, extra: list[str], paths: list[str] | None = None) -> tuple[int, float, str]:
    """Run the robustness suites (or ``paths``); (exit code, wall seconds, command line)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.json"), *out.glob("junit*.xml")]:
        old.unlink()
    cmd = [sys.executable, "-m", "pytest", *(paths or ["tests/robustness"]), "-q", "-p", "no:cacheprovider",
           f"--junitxml={out / 'junit.xml'}", *([] if ci or "-m" in extra else ["-m", "slow"]), *extra]
    env = dict(os.environ, TOTALREG_FAULTS_OUT=str(out))
    t0 = time.monotonic()
    with open(out / "pytest.log", "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    shown = " ".join(["TOTALREG_FAULTS_OUT=" + os.path.relpath(out, ROOT), "python3", shlex.join(cmd[1:])])
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


SECTION_MARK = "<!-- section written by bench/faults/run.py --section; kept by full runs -->"


def _sections(text: str) -> dict[str, str]:
    """The ``--section`` parts of a RESULTS.md text: name -> Markdown (from its mark to the next mark or end)."""
    out = {}
    for part in text.split(SECTION_MARK)[1:]:
        body = SECTION_MARK + part.rstrip("\n") + "\n"
        name = next((ln[3:].strip() for ln in part.splitlines() if ln.startswith("## ")), "")
        if name:
            out[name] = body
    return out


def _section_summary(out: Path) -> list[str]:
    """Summary lines of the issue-15 figures (hostile peers, UIDs and rules, console; whichever exist)."""
    def load(name):
        p = out / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None
    lines = []
    f = load("hostile_lockout_ci")
    if f:
        lines.append(f"- **lock-out**: {f['stranger_connections']} half-open + idle connections from a stranger "
                     f"(max_associations {f['max_associations']}, {f['per_address_limit']} per address): "
                     f"{f['stranger_closed_at_once']} refused at accept, the allowed caller's C-ECHO succeeded after "
                     f"{f['echo_ok_after_s']} s (bound: acse_timeout_s {f['acse_timeout_s']:g} + 5 s).")
    f = load("hostile_artim_ci")
    if f:
        lines.append(f"- **ARTIM alone** (stranger on the caller's address, no per-address help): {f['half_open_and_idle']} "
                     f"half-open and idle connections all closed within {f['all_closed_within_s']} s (acse_timeout_s "
                     f"{f['acse_timeout_s']:g}); C-ECHO succeeded after {f['echo_ok_after_s']} s.")
    f = load("hostile_idle200_full")
    if f:
        lines.append(f"- **200 idle connections re-opened for 30 s** ({f['stranger_connections_opened']} opened): "
                     f"{f['echoes_ok']}/{f['echoes']} C-ECHOs succeeded, slowest {f['echo_max_s']} s.")
    for name in ("hostile_deflate_bomb_ci",):
        f = load(name)
        if f:
            lines.append(f"- **deflate bomb** {f['wire_bytes'] / 1e6:.2f} MB -> "
                         f"{f['inflated_bytes'] / 2**20:.0f} MiB: answered {f['status']}, receiver RSS "
                         f"{f['rss_before_mib']} -> peak {f['rss_peak_mib']} MiB "
                         f"(+{f['rss_rise_mib']} MiB).")
    f = load("hostile_pdu_2gib_ci")
    if f:
        lines.append(f"- **PDU announcing 2^31 bytes** (before and after association, "
                     f"{f['pushed_bytes'] / 2**20:.0f} MiB pushed): refused from the header, receiver RSS "
                     f"+{f['rss_rise_mib']} MiB.")
    f = load("hostile_memory_full")
    if f:
        b, p = f["bomb"], f["pdu"]
        lines.append(f"- **full memory cases**: bomb {b['wire_bytes'] / 1e6:.2f} MB -> "
                     f"{b['inflated_bytes'] / 2**20:.0f} MiB answered {b['status']} (RSS +{b['rss_rise_mib']} "
                     f"MiB); 2^31-byte PDU with "
                     f"{p['pushed_bytes'] / 2**20:.0f} MiB pushed: RSS +{p['rss_rise_mib']} MiB.")
    f = load("hostile_sigterm_ci")
    if f:
        lines.append(f"- **SIGTERM** (2 receiver processes; idle + half-open + stalled-PDU + 2 streaming "
                     f"associations): exit after {f['exit_s']} s (code {f['exit_code']}), last 0x0000 at "
                     f"{f['last_0x0000_after_sigterm_s']} s, new connections refused {f['new_connections_refused']}/4, "
                     f"{f['acked_before_exit']} acknowledged instances all indexed after restart.")
    f = load("hostile_regex_route_ci")
    if f:
        sizes = sorted(int(k.split("_")[2]) for k in f if k.startswith("route_s_"))
        micros = [f"{f['route_s_%d_chars' % n] * 1e6:.0f}" for n in sizes]
        lines.append(f"- **rule pattern `(a+)+$`** (RE2) against sender descriptions of "
                     f"{' / '.join(map(str, sizes))} characters: routed in {' / '.join(micros)} us (bound 1 s; "
                     "Python's `re` took ~20 s at 28 characters).")
    f = load("hostile_regex_healthz_ci")
    if f:
        lines.append(f"- **dry runs of `{f['pattern']}`** through the REST API ({f['dry_runs']}, "
                     f"{f['description_chars']}-character description, {f['dry_runs_s']} s): `/healthz` polled "
                     f"{f['healthz_polls']} times, longest wait {f['healthz_max_wait_s'] * 1000:.0f} ms (bound 1 s).")
    f = load("hostile_console_lockout_ci")
    if f:
        lines.append(f"- **console lock-out**: a stranger's {f['stranger_wrong_passwords']} wrong admin passwords "
                     f"({f['stranger_401_before_429']} answered 401, then 429, the right one too: "
                     f"{f['stranger_right_password_status']}); the admin from their own address: "
                     f"{f['admin_sign_in_status']} (signed in); one address, many user names: "
                     f"{f['one_address_many_names_401_before_429']} tries before 429.")
    f = load("hostile_console_memory_ci")
    if f:
        lines.append(f"- **console memory**: {f['sign_ins']} sign-ins with {f['user_name_bytes'] / 1e6:.1f} MB user "
                     f"names: answered {'/'.join(map(str, f['statuses']))}, console RSS {f['rss_before_mib']} MiB "
                     f"+{f['rss_growth_mib']} MiB (bound 4 MiB; issue 15 measured +68 MB, kept for good).")
    f = load("hostile_console_throttle_table_ci")
    if f:
        lines.append(f"- **throttle table**: {f['failures_recorded']} failed sign-ins (10,000 address/name pairs) "
                     f"keep {f['entries_kept']} entries, user names cut to {f['user_name_chars_kept_max']} "
                     "characters.")
    f = load("hostile_console_sign_out_ci")
    if f:
        lines.append(f"- **sign-out**: a copied session cookie after sign-out: page "
                     f"{f['copied_cookie_after_sign_out_page']}, API {f['copied_cookie_after_sign_out_api']}.")
    f = load("hostile_console_admin_password_ci")
    if f:
        lines.append(f"- **generated admin password**: shown on the terminal {f['shown_on_terminal']}, in the "
                     f"service log {f['in_service_log']}, shown again at the next start "
                     f"{f['shown_at_second_start']}, files holding it in plain text "
                     f"{f['files_with_it_in_plain_text']}, kept as {f['kept_as']} hash.")
    f = load("hostile_console_ids_ci")
    if f:
        lines.append(f"- **out-of-range ids**: {f['out_of_range_requests']} requests (ids 0, -1, 2^63, 10^20 in "
                     f"job/token URLs, offsets, pages) all {f['status']} (`/api/jobs/99999999999999999999`: "
                     f"{f['api_jobs_99999999999999999999']}, was 500); an absent id in range "
                     f"{f['absent_in_range_status']}.")
    return lines or ["(no figures)"]


def render_section(name: str, out: Path, header: dict) -> str:
    """The Markdown of one ``--section`` run (its own command, summary, tests and figures)."""
    lines = [SECTION_MARK, f"## {name}", ""]
    for k, v in header.items():
        lines.append(f"- **{k}**: {v}")
    lines += ["", "### Summary", ""] + _section_summary(out)
    lines += ["", "### Tests", "", "| test | outcome | wall s | note |", "|---|---|---:|---|"]
    for test, outcome, secs, why in _tests(out):
        lines.append(f"| `{test}` | {outcome} | {secs:.1f} | {why.replace('|', '/')} |")
    lines += ["", "### Figures", ""]
    for f in sorted(p for p in out.glob("*.json") if p.name != "header.json"):
        data = json.loads(f.read_text())
        lines += [f"#### {f.stem}", "", "| figure | value |", "|---|---|"]
        for k, v in sorted(data.items()):
            lines.append(f"| {k} | {_fmt(v)} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ci", action="store_true", help="run the CI subset instead of the full (slow) suites")
    ap.add_argument("--out", default=os.environ.get("TOTALREG_FAULTS_OUT", str(ROOT / "bench/out/faults")))
    ap.add_argument("--render-only", action="store_true", help="only re-write RESULTS.md from --out")
    ap.add_argument("--results", default=str(RESULTS), help="where to write the Markdown")
    ap.add_argument("--section", default=None,
                    help="run only the tests named in pytest_args and replace only the section of this name")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    header = {"date (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
              "machine": f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end "
                         "(shared with other work)"}
    rc = 0
    results = Path(a.results)
    old = results.read_text() if results.exists() else ""
    if a.section:
        out = out / a.section.lower().replace(" ", "_")
        paths = [x for x in a.pytest_args if not x.startswith("-") and Path(x).exists()]
        extra = [x for x in a.pytest_args if x not in paths]
        if not a.render_only:
            rc, wall, cmd = run_pytest(out, a.ci, extra, paths=paths or None)
            header = {"command": f"`{cmd}`", "exit code": rc, "wall time": f"{wall / 60:.1f} min", **header}
            (out / "header.json").write_text(json.dumps(header))
        elif (out / "header.json").exists():
            header = json.loads((out / "header.json").read_text())
        sections = _sections(old)
        main_part = old.split(SECTION_MARK)[0].rstrip("\n") + "\n" if old else ""
        sections[a.section] = render_section(a.section, out, header)
        results.write_text(main_part + "".join("\n" + v for v in sections.values()))
        print(f"wrote section '{a.section}' of {a.results} (pytest exit code {rc}; log {out / 'pytest.log'})")
        return rc
    saved = out / "header.json"
    if not a.render_only:
        rc, wall, cmd = run_pytest(out, a.ci, a.pytest_args)
        header = {"command": f"`{cmd}`", "exit code": rc, "wall time": f"{wall / 60:.1f} min", **header}
        saved.write_text(json.dumps(header))
    elif saved.exists():  # keep what the run recorded
        header = json.loads(saved.read_text())
    kept = _sections(old)  # sections written by --section runs stay
    results.write_text(render(out, header) + "".join("\n" + v for v in kept.values()))
    print(f"wrote {a.results} (pytest exit code {rc}; log {out / 'pytest.log'})")
    return rc


if __name__ == "__main__":
    sys.exit(main())
