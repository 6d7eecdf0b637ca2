"""Study assembly: quiet period, forced completion, restart in the middle, late instances (follow-up / ignore)."""
from __future__ import annotations

import datetime as dt

import pytest

from sqlalchemy import select

from conftest import make_series
from node.route.assembly import Assembler, reroute
from node.store.db import STUDY_COMPLETE, STUDY_RECEIVING, Database, Event, Job, Study, utcnow
from node.receive.index import expect_retrieved_study
from node.store.queries import series_paths, studies_for_patient, study_summary
from node.receive.ingest import STATUS_OK, ingest
from node.service import make_spool


def _ingest(cfg, db, files, calling="MODALITY"):
    spool = make_spool(cfg)
    for f in files:
        status, msg = ingest(db, spool, f.read_bytes(), calling_ae=calling,
                             late_policy=cfg.completion.late_instances)
        assert status == STATUS_OK, msg


def _later(seconds):
    return utcnow() + dt.timedelta(seconds=seconds)


def test_quiet_period_then_one_job(node_config, tmp_path):
    cfg, _ = node_config(completion={"quiet_seconds": 30, "max_wait_seconds": 600})
    db = Database(cfg.node.database_url())
    files = make_series(tmp_path / "cur", n_slices=4)
    _ingest(cfg, db, files)
    asm = Assembler(cfg, db)
    assert asm.tick(now=_later(10)) == []  # not quiet yet
    with db.session() as s:
        assert s.scalar(select(Study.state)) == STUDY_RECEIVING
    ids = asm.tick(now=_later(31))
    assert len(ids) == 1
    assert asm.tick(now=_later(100)) == []  # routed once
    with db.session() as s:
        st = s.scalar(select(Study))
        job = s.get(Job, ids[0])
        assert st.state == STUDY_COMPLETE and st.routing_round == 1 and st.calling_ae == "MODALITY"
        assert job.state == "queued" and job.rule_name == "ct-followup" and job.round == 0
        assert job.current_series_uid == s.scalar(select(Study)).series[0].series_uid
        summary = study_summary(s, st.study_uid)
        assert summary.patient.patient_id == "NODE0001" and summary.series[0].n_instances == 4
        assert len(series_paths(s, job.current_series_uid)) == 4
        assert [x.study_uid for x in studies_for_patient(s, "NODE0001")] == [st.study_uid]
        assert any("jobs" in e.message for e in s.scalars(select(Event).where(Event.kind == "assembly")))
    db.dispose()


def test_forced_completion_at_max_wait(node_config, tmp_path):
    cfg, _ = node_config(completion={"quiet_seconds": 60, "max_wait_seconds": 120})
    db = Database(cfg.node.database_url())
    _ingest(cfg, db, make_series(tmp_path / "cur", n_slices=3))
    with db.session() as s:  # instances kept arriving: last one 'now', round began 200 s ago
        st = s.scalar(select(Study))
        st.round_started_at = utcnow() - dt.timedelta(seconds=200)
    assert len(Assembler(cfg, db).tick()) == 1
    db.dispose()


def test_restart_in_the_middle_of_a_study(node_config, tmp_path):
    cfg, _ = node_config(completion={"quiet_seconds": 30})
    files = make_series(tmp_path / "cur", n_slices=6)
    db = Database(cfg.node.database_url())
    _ingest(cfg, db, files[:3])
    assert Assembler(cfg, db).tick(now=_later(5)) == []
    db.dispose()  # the node stops
    db = Database(cfg.node.database_url())  # ... and starts again: the timers are in the database
    _ingest(cfg, db, files[3:])
    asm = Assembler(cfg, db)
    assert asm.tick(now=_later(5)) == []
    ids = asm.tick(now=_later(31))
    assert len(ids) == 1
    with db.session() as s:
        assert s.scalar(select(Study.n_instances)) == 6
        assert len(series_paths(s, s.get(Job, ids[0]).current_series_uid)) == 6
    db.dispose()


def test_late_instances_follow_up(node_config, tmp_path):
    cfg, _ = node_config(completion={"quiet_seconds": 10, "late_instances": "follow_up"})
    db = Database(cfg.node.database_url())
    files = make_series(tmp_path / "cur", n_slices=4)
    _ingest(cfg, db, files[:3])
    asm = Assembler(cfg, db)
    first = asm.tick(now=_later(11))
    assert len(first) == 1
    _ingest(cfg, db, files[3:])  # arrives after routing
    with db.session() as s:
        st = s.scalar(select(Study))
        assert st.state == STUDY_RECEIVING and st.follow_up_pending and st.late_instances == 1
    assert asm.tick(now=_later(5)) == []
    follow = asm.tick(now=_later(11))
    assert len(follow) == 1 and follow != first
    with db.session() as s:
        job = s.get(Job, follow[0])
        assert job.round == 1 and s.scalar(select(Study.routing_round)) == 2
        assert s.scalar(select(Study.n_instances)) == 4
    # a re-sent identical instance is not 'late' and triggers nothing
    _ingest(cfg, db, files[3:])
    assert asm.tick(now=_later(30)) == []
    db.dispose()


def test_late_instances_ignored(node_config, tmp_path):
    cfg, _ = node_config(completion={"quiet_seconds": 10, "late_instances": "ignore"})
    db = Database(cfg.node.database_url())
    files = make_series(tmp_path / "cur", n_slices=4)
    _ingest(cfg, db, files[:3])
    asm = Assembler(cfg, db)
    assert len(asm.tick(now=_later(11))) == 1
    _ingest(cfg, db, files[2:])
    assert asm.tick(now=_later(60)) == []
    with db.session() as s:
        st = s.scalar(select(Study))
        assert st.state == STUDY_COMPLETE and st.late_instances == 1 and st.n_instances == 4
        assert len(s.scalars(select(Job)).all()) == 1
        assert any("ignored" in e.message for e in s.scalars(select(Event)))
    db.dispose()


def test_no_rule_and_retrieved_priors_make_no_job(node_config, tmp_path):
    cfg, _ = node_config(rules=[{"name": "chest-only", "match": {"StudyDescription": "^THORAX"},
                                 "send_to": ["local"]}])
    db = Database(cfg.node.database_url())
    _ingest(cfg, db, make_series(tmp_path / "cur", n_slices=3))
    prior_uid = "1.2.826.0.1.3680043.99.1"
    with db.session() as s:
        expect_retrieved_study(s, prior_uid)
    _ingest(cfg, db, make_series(tmp_path / "prior", n_slices=2, study_uid=prior_uid, study_date="20230101"),
            calling="PACS")
    asm = Assembler(cfg, db)
    assert asm.tick(now=_later(5)) == []
    with db.session() as s:
        msgs = [e.message for e in s.scalars(select(Event).where(Event.kind == "assembly"))]
        assert any("no rule takes it" in m and "THORAX" in m for m in msgs)
        prior = s.scalar(select(Study).where(Study.study_uid == prior_uid))
        assert prior.origin == "retrieved" and prior.n_instances == 2 and prior.patient_id == "NODE0001"
        assert prior.late_instances == 0 and not s.scalars(select(Job)).all()
        cur_uid = s.scalar(select(Study.study_uid).where(Study.origin == "received"))
    # the admin fixes the rule and routes the study again: a job of round 1
    cfg.rules[0].match.StudyDescription = None
    with db.session() as s:
        reroute(s, cur_uid, by="tester")
    ids = asm.tick()
    assert len(ids) == 1
    with db.session() as s:
        assert s.get(Job, ids[0]).round == 1 and s.get(Job, ids[0]).study_uid == cur_uid
    db.dispose()


@pytest.mark.postgres
def test_concurrent_associations_on_postgres_count_every_instance(node_config, tmp_path, pg_schema_url):
    """Six threads store instances of the same two studies at once: no lost counter update, one row per UID."""
    import threading
    cfg, _ = node_config(node={"database": pg_schema_url}, completion={"quiet_seconds": 10})
    db = Database(pg_schema_url)
    a = make_series(tmp_path / "a", study_uid="1.2.826.0.1.3680043.55.1", n_slices=12, size=8)
    b = make_series(tmp_path / "b", study_uid="1.2.826.0.1.3680043.55.2", n_slices=12, size=8,
                    patient_id="NODE0002")
    chunks = [a[0::3], a[1::3], a[2::3], b[0::3], b[1::3], b[2::3]]
    errors = []

    def run(files):
        try:
            _ingest(cfg, db, files)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    with db.session() as s:
        counts = {st.study_uid: (st.n_instances, [x.n_instances for x in st.series]) for st in s.scalars(select(Study))}
    assert counts == {"1.2.826.0.1.3680043.55.1": (12, [12]), "1.2.826.0.1.3680043.55.2": (12, [12])}
    assert len(Assembler(cfg, db).tick(now=_later(11))) == 2
    db.dispose()
