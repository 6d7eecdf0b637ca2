"""`totalreg demo`: the README's "run the main job" command, end to end (embedded node, synthetic patient)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from node.commands.demo import ORTHANC_BIN, node_yaml, write_demo_studies


def test_demo_inputs_and_config_are_consistent(tmp_path):
    """Fast check of the demo's pieces: one patient, prior earlier than current, config valid and routable."""
    from pydicom import dcmread

    from node.config import parse_config
    from node.store.header import summary_from_files
    from node.route.rules import route_study

    studies = write_demo_studies(tmp_path / "in", spacing_mm=16.0, realistic=False)
    prior = summary_from_files(studies.prior_files)
    current = summary_from_files(studies.current_files)
    assert prior.patient == current.patient and prior.study_date < current.study_date
    assert dcmread(studies.current_files[0]).StudyInstanceUID == studies.current_study_uid
    cfg = parse_config(node_yaml(tmp_path, node_port=11112, orthanc=None, iterations=5, device="cpu"))
    assert [d.name for d in cfg.destinations] == ["folder"] and cfg.pacs == []
    (decision,) = route_study(cfg, current)
    assert decision.series_uid == current.series[0].series_uid


@pytest.mark.slow  # registers on CPU: a few minutes on a shared 2-core machine
def test_demo_runs_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "node.cli", "demo", "--workdir", str(tmp_path / "demo"),
                           "--spacing", "8", "--iterations", "10", "--timeout", "900"],
                          capture_output=True, text=True, timeout=1200)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "registered" in out and "QC picture:" in out and "finished in" in out
    assert "REG" in out  # DSR / rigid REG listed
    if ORTHANC_BIN.exists():
        assert "in Orthanc, current study: REG" in out
