"""initial ledger: deployments, model versions, deletion requests, hash-chained events

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("guarantee", sa.String(16), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("model_dir", sa.Text(), nullable=False),
        sa.Column("serving_version", sa.String(64), nullable=True),
        sa.Column("approx_since_exact", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False, unique=True),
        sa.Column("deployment", sa.String(64), sa.ForeignKey("deployments.name"), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("parent", sa.String(64), nullable=True),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("guarantee", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("n_deleted", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.String(40), nullable=False),
    )
    op.create_table(
        "deletion_requests",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        sa.Column("deployment", sa.String(64), sa.ForeignKey("deployments.name"), nullable=False),
        sa.Column("subject_sha256", sa.String(64), nullable=True),
        sa.Column("spec", sa.Text(), nullable=True),
        sa.Column("ids_sha256", sa.String(64), nullable=False),
        sa.Column("n_ids", sa.Integer(), nullable=False),
        sa.Column("pending_ids", sa.Text(), nullable=True),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("method", sa.String(64), nullable=True),
        sa.Column("guarantee", sa.String(16), nullable=True),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("version_before", sa.String(64), nullable=True),
        sa.Column("version_after", sa.String(64), nullable=True),
        sa.Column("report_path", sa.Text(), nullable=True),
        sa.Column("report_sha256", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("updated_at", sa.String(40), nullable=False),
        sa.Column("finished_at", sa.String(40), nullable=True),
        sa.UniqueConstraint("deployment", "idempotency_key", name="uq_deletion_requests_key"),
    )
    op.create_index("ix_deletion_requests_status_seq", "deletion_requests", ["status", "seq"])
    op.create_index("ix_deletion_requests_subject", "deletion_requests", ["subject_sha256"])
    op.create_table(
        "events",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("ts", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("request_id", sa.String(40), nullable=True),
        sa.Column("version_id", sa.String(64), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_events_request_id", "events", ["request_id"])
    head = op.create_table(
        "chain_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    # the genesis head exists before the first append, so two first writers cannot both insert it
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": "0" * 64}])


def downgrade() -> None:
    for name in ("chain_head", "events", "deletion_requests", "model_versions", "deployments"):
        op.drop_table(name)
