"""baseline: the schema of every release before migrations (Base.metadata.create_all at 7f8eae7)

Revision ID: 0001_baseline
Revises:
Create Date: 2026-12-04 15:14:30.289246

Every schema change ships with its migration (docs/CONTRACTS.md). SQLite alters tables in batch mode (copy + rename)
with foreign keys off, so rows of child tables survive; keep operations valid on SQLite and PostgreSQL.
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0001_baseline'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    # exactly what Base.metadata.create_all made at release 7f8eae7 (checked by tests/node/test_migrations.py)
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('last_used_at', sa.DateTime(), nullable=True),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_table('console_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('csrf', sa.String(length=64), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_index('ix_console_sessions_expires_at', 'console_sessions', ['expires_at'], unique=False)
    op.create_index('ix_console_sessions_user_id', 'console_sessions', ['user_id'], unique=False)

    op.create_table('console_users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('username')
    )
    op.create_table('events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('level', sa.String(length=8), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('send_id', sa.Integer(), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_events_at', 'events', ['at'], unique=False)
    op.create_index('ix_events_job_id', 'events', ['job_id'], unique=False)
    op.create_index('ix_events_study_uid', 'events', ['study_uid'], unique=False)

    op.create_table('instances',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('series_uid', sa.String(length=64), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('transfer_syntax', sa.String(length=64), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=False),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.Column('versions', sa.Integer(), nullable=False),
    sa.Column('late', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_instances_series_uid', 'instances', ['series_uid'], unique=False)
    op.create_index('ix_instances_sop_instance_uid', 'instances', ['sop_instance_uid'], unique=True)
    op.create_index('ix_instances_study_uid', 'instances', ['study_uid'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('current_series_uid', sa.String(length=64), nullable=False),
    sa.Column('prior_series_uid', sa.String(length=64), nullable=False),
    sa.Column('prior_study_uid', sa.String(length=64), nullable=False),
    sa.Column('rule_name', sa.String(length=128), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('outcome_reason', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('not_before', sa.DateTime(), nullable=False),
    sa.Column('lease_owner', sa.String(length=128), nullable=False),
    sa.Column('lease_token', sa.String(length=64), nullable=False),
    sa.Column('lease_expires_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('timings', sa.JSON(), nullable=False),
    sa.Column('qc', sa.JSON(), nullable=False),
    sa.Column('suspicious', sa.Boolean(), nullable=False),
    sa.Column('result_dir', sa.Text(), nullable=False),
    sa.Column('qc_png', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('current_series_uid', 'prior_series_uid', 'rule_name', 'round', name='uq_jobs_dedupe')
    )
    op.create_index('ix_jobs_claim', 'jobs', ['state', 'not_before'], unique=False)
    op.create_index('ix_jobs_state', 'jobs', ['state'], unique=False)
    op.create_index('ix_jobs_study_uid', 'jobs', ['study_uid'], unique=False)

    op.create_table('rule_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('author', sa.String(length=64), nullable=False),
    sa.Column('comment', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('version')
    )
    op.create_table('studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.String(length=324), nullable=False),
    sa.Column('birth_date', sa.Date(), nullable=True),
    sa.Column('sex', sa.String(length=16), nullable=False),
    sa.Column('study_date', sa.Date(), nullable=True),
    sa.Column('study_time', sa.String(length=16), nullable=False),
    sa.Column('description', sa.String(length=128), nullable=False),
    sa.Column('accession_number', sa.String(length=64), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=False),
    sa.Column('origin', sa.String(length=16), nullable=False),
    sa.Column('n_instances', sa.Integer(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('first_received_at', sa.DateTime(), nullable=False),
    sa.Column('last_received_at', sa.DateTime(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('round_started_at', sa.DateTime(), nullable=False),
    sa.Column('routing_round', sa.Integer(), nullable=False),
    sa.Column('routed_at', sa.DateTime(), nullable=True),
    sa.Column('late_instances', sa.Integer(), nullable=False),
    sa.Column('follow_up_pending', sa.Boolean(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_studies_last_received_at', 'studies', ['last_received_at'], unique=False)
    op.create_index('ix_studies_patient_id', 'studies', ['patient_id'], unique=False)
    op.create_index('ix_studies_state', 'studies', ['state'], unique=False)
    op.create_index('ix_studies_study_uid', 'studies', ['study_uid'], unique=True)

    op.create_table('job_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=128), nullable=False),
    sa.Column('lease_token', sa.String(length=64), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('result', sa.String(length=16), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_job_runs_job_id', 'job_runs', ['job_id'], unique=False)

    op.create_table('sends',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('destination', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('not_before', sa.DateTime(), nullable=False),
    sa.Column('n_files', sa.Integer(), nullable=False),
    sa.Column('n_acknowledged', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('lease_owner', sa.String(length=128), nullable=False),
    sa.Column('lease_expires_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'destination', name='uq_sends_job_dest'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    )
    op.create_index('ix_sends_claim', 'sends', ['state', 'not_before'], unique=False)
    op.create_index('ix_sends_job_id', 'sends', ['job_id'], unique=False)
    op.create_index('ix_sends_state', 'sends', ['state'], unique=False)

    op.create_table('series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_uid', sa.String(length=64), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('description', sa.String(length=128), nullable=False),
    sa.Column('number', sa.Integer(), nullable=True),
    sa.Column('image_type', sa.String(length=128), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('frame_of_reference_uid', sa.String(length=64), nullable=False),
    sa.Column('slice_thickness_mm', sa.Float(), nullable=True),
    sa.Column('body_part', sa.String(length=64), nullable=False),
    sa.Column('n_instances', sa.Integer(), nullable=False),
    sa.Column('first_received_at', sa.DateTime(), nullable=False),
    sa.Column('last_received_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_series_series_uid', 'series', ['series_uid'], unique=True)
    op.create_index('ix_series_study_id', 'series', ['study_id'], unique=False)
    op.create_index('ix_series_study_uid', 'series', ['study_uid'], unique=False)



def downgrade() -> None:
    """Undo this revision (drops every table: all data is lost)."""
    for table in ('series', 'sends', 'job_runs', 'studies', 'rule_versions', 'jobs', 'instances', 'events',
                  'console_users', 'console_sessions', 'api_tokens'):
        op.drop_table(table)
