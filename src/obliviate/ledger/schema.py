"""The ledger's tables (SQLAlchemy 2 declarative). Alembic's ``0001_initial`` creates exactly these; a test
compares the two so they cannot drift.

The ledger keeps evidence, not data: a request stores the sha256 and count of the example ids it resolved
to; the ids themselves (``pending_ids``) are kept only until the request is closed, then purged.
"""
from __future__ import annotations

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Deployment(Base):
    """One served model: its task and unlearning method, and the version being served."""

    __tablename__ = "deployments"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    task: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(64))
    guarantee: Mapped[str] = mapped_column(String(16))
    config: Mapped[str] = mapped_column(Text)  # canonical JSON of the DeploymentConfig
    model_dir: Mapped[str] = mapped_column(Text)
    serving_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    approx_since_exact: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[str] = mapped_column(String(40))


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    deployment: Mapped[str] = mapped_column(ForeignKey("deployments.name"))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    parent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    method: Mapped[str] = mapped_column(String(64))
    guarantee: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # candidate | serving | retired | rejected
    n_deleted: Mapped[int] = mapped_column(Integer)  # training examples deleted so far (cumulative)
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[str] = mapped_column(String(40))


class DeletionRequest(Base):
    __tablename__ = "deletion_requests"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    deployment: Mapped[str] = mapped_column(ForeignKey("deployments.name"))
    subject_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    spec: Mapped[str | None] = mapped_column(Text, nullable=True)
    ids_sha256: Mapped[str] = mapped_column(String(64))
    n_ids: Mapped[int] = mapped_column(Integer)
    pending_ids: Mapped[str | None] = mapped_column(Text, nullable=True)  # purged when the request closes
    body_sha256: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # queued | running | applied | verified | failed
    method: Mapped[str | None] = mapped_column(String(64), nullable=True)
    guarantee: Mapped[str | None] = mapped_column(String(16), nullable=True)
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    version_before: Mapped[str | None] = mapped_column(String(64), nullable=True)
    version_after: Mapped[str | None] = mapped_column(String(64), nullable=True)
    report_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    report_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[str] = mapped_column(String(40))
    finished_at: Mapped[str | None] = mapped_column(String(40), nullable=True)

    __table_args__ = (Index("ix_deletion_requests_status_seq", "status", "seq"),
                      Index("ix_deletion_requests_subject", "subject_sha256"),
                      UniqueConstraint("deployment", "idempotency_key", name="uq_deletion_requests_key"))


class Event(Base):
    """Append-only, hash-chained: ``hash = sha256(canonical JSON of the entry + prev_hash)``."""

    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(40))
    request_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class ChainHead(Base):
    """One row: the last event's seq and hash. Appends lock it, so the chain is serialised; a truncated log
    (last entries deleted) no longer matches it."""

    __tablename__ = "chain_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
