"""Destination kinds as a registry (node.destinations): the four kinds of the node, and a new kind defined in this
one file used end to end — node.yaml validation, the console's peer list and check, and the dispatcher's send."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from conftest import make_series
from node import destinations
from node.config import ConfigError, parse_config
from node.destinations import DestinationKind, Options, SendError
from node.dispatch.dispatcher import attempt, claim_send
from node.store.db import SEND_DONE, SEND_QUEUED, Database, Job, Send
from node.web.system import check_peer, peers


class MemoryOptions(Options):
    bucket: str | None = None
    refuse: bool = False


class Memory(DestinationKind):
    """A destination kind that keeps the SOP Instance UIDs it was sent, per bucket."""

    name = "memory"
    label = "Memory (test)"
    check_action = "Ping"
    options = MemoryOptions
    required = ("bucket",)
    store: dict[str, list[str]] = {}

    def address(self, dest) -> str:
        return f"bucket {dest.bucket}"

    def send(self, dest, files: list[Path], *, calling_ae: str, timeout_s: float) -> int:
        if dest.refuse:
            raise SendError(f"destination '{dest.name}': bucket {dest.bucket} refused")
        got = self.store.setdefault(dest.bucket, [])
        got.extend(str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files)
        return len(files)

    def check(self, dest, *, calling_ae: str, timeout_s: float) -> tuple[bool, str]:
        return dest.bucket in self.store, f"bucket {dest.bucket} {'exists' if dest.bucket in self.store else 'is new'}"


@pytest.fixture
def memory_kind():
    kind = destinations.register(Memory())
    Memory.store.clear()
    yield kind
    destinations._KINDS.pop("memory", None)


def _cfg(tmp_path: Path, dest: str):
    return parse_config(f"""
node: {{ae_title: NODE, data_dir: '{tmp_path}'}}
destinations:
  - {dest}
rules:
  - {{name: r, send_to: [mem]}}
""")


def test_the_node_kinds_are_modules_with_label_and_check():
    assert {"dicom", "dicomweb", "orthanc", "folder"} <= set(destinations.names())
    assert destinations.get("dicom").check_action == "Echo"
    assert [destinations.get(k).check_action for k in ("dicomweb", "orthanc", "folder")] == ["Check"] * 3
    assert all(destinations.get(k).label for k in ("dicom", "dicomweb", "orthanc", "folder"))


def test_config_validation_consults_the_kind(tmp_path, memory_kind):
    cfg = _cfg(tmp_path, "{name: mem, kind: memory, bucket: b1}")
    dest = cfg.destination("mem")
    assert (dest.kind, dest.bucket, dest.refuse) == ("memory", "b1", False)
    with pytest.raises(ConfigError, match="a memory destination needs bucket"):
        _cfg(tmp_path, "{name: mem, kind: memory}")
    with pytest.raises(ConfigError, match="unknown key 'buckett'"):
        _cfg(tmp_path, "{name: mem, kind: memory, bucket: b1, buckett: b2}")
    with pytest.raises(ConfigError, match="unknown destination kind 'memroy'.*memory"):
        _cfg(tmp_path, "{name: mem, kind: memroy, bucket: b1}")
    with pytest.raises(ConfigError, match="a dicom destination needs host, port"):
        _cfg(tmp_path, "{name: mem, kind: dicom, ae_title: PACS}")


def test_console_lists_and_checks_a_new_kind(tmp_path, memory_kind):
    cfg = _cfg(tmp_path, "{name: mem, kind: memory, bucket: b1}")
    assert ("destination", "mem", "memory: bucket b1", "Ping") in peers(cfg)
    assert check_peer(cfg, "destination", "mem").message == "bucket b1 is new"


@pytest.mark.parametrize("refuse", [False, True])
def test_dispatcher_sends_through_a_new_kind(tmp_path, memory_kind, refuse):
    cfg = _cfg(tmp_path, f"{{name: mem, kind: memory, bucket: b1, refuse: {str(refuse).lower()}}}")
    files = make_series(tmp_path / "res" / "dicom", n_slices=3)
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    with db.session() as s:
        job = Job(study_uid="1.2.3", current_series_uid="1.2.3.1", rule_name="r", state="done",
                  result_dir=str(tmp_path / "res"))
        job.sends = [Send(destination="mem", n_files=3, max_attempts=3)]
        s.add(job)
    with db.session() as s:
        sid = claim_send(s, "test")
    state = attempt(cfg, db, sid)
    with db.session() as s:
        snd = s.get(Send, sid)
        if refuse:
            assert (state, snd.state, Memory.store) == (SEND_QUEUED, SEND_QUEUED, {})
            assert snd.error == "destination 'mem': bucket b1 refused"
        else:
            assert (state, snd.state, snd.n_acknowledged) == (SEND_DONE, SEND_DONE, 3)
            assert sorted(Memory.store["b1"]) == sorted(str(dcmread(f).SOPInstanceUID) for f in files)
    db.dispose()
