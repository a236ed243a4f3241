"""SQLAlchemy ORM models: the schema of datasets, jobs, metrics and checkpoints.

Rows never leave the store: `server.store` turns them into domain records first. Every constraint
is named by the naming convention so migrations can refer to it. A server default is the one the
migration that added the column gave it (existing databases keep it, and a row inserted by an older
server relies on it): declared here too, or autogenerate would propose dropping it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    literal_column,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class DatasetRow(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        # ListDatasets: a project's datasets newest first (scanned backward).
        Index("ix_datasets_project_created_at_id", "project", "created_at", "id"),
        # UploadDataset's idempotency key, per project as CreateJob's: another project's ids
        # must not show.
        UniqueConstraint("project", "request_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The project of the API key that uploaded it ("default" when the server runs without keys).
    project: Mapped[str] = mapped_column(String(64), server_default="default")
    display_name: Mapped[str] = mapped_column(String(256), default="")
    task: Mapped[str] = mapped_column(String(32))
    num_classes: Mapped[int] = mapped_column(Integer, default=0)
    num_examples: Mapped[int] = mapped_column(BigInteger)
    feature_dtype: Mapped[str] = mapped_column(String(16))
    feature_shape: Mapped[list[int]] = mapped_column(JSON)
    target_dtype: Mapped[str] = mapped_column(String(16))
    target_shape: Mapped[list[int]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    feature_names: Mapped[list[str]] = mapped_column(JSON, default=list)
    class_names: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request_id: Mapped[str | None] = mapped_column(String(128))


class DatasetBlobRow(Base):
    """A piece of the arrays of a dataset (safetensors bytes), apart so listing datasets never
    reads them. A value is stored as rows of 1 MiB pieces (`Store._write_blob`), not one bytea:
    pg_dump writes a value as text, a bytea as hex of twice its size, and PostgreSQL builds no
    text over 1 GB, so one value over 512 MiB failed the whole dump (migration 0016)."""

    __tablename__ = "dataset_blobs"

    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    # The piece's place in the value, from 0 (0 for a value stored before migration 0016).
    piece: Mapped[int] = mapped_column(
        Integer, primary_key=True, autoincrement=False, server_default="0"
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # ListJobs: a project's jobs newest first (scanned backward), of one state or all.
        Index("ix_jobs_project_created_at_id", "project", "created_at", "id"),
        Index("ix_jobs_project_state_created_at_id", "project", "state", "created_at", "id"),
        # ListJobs of a dataset, newest first; the foreign key's SET NULL and DeleteDataset's
        # look for unfinished jobs read it by dataset_id alone (migration 0013).
        Index("ix_jobs_dataset_id_created_at_id", "dataset_id", "created_at", "id"),
        # The rescue query: running jobs whose lease ran out. Queue depth (the server's metrics,
        # every 5 s, and `trainwire status`) counts the jobs by state and queue from this index
        # alone (migration 0012). Not an index of (state, queue): SQLite, without statistics,
        # then read ix_jobs_queued past every other queue's jobs for a claim of several queues.
        Index("ix_jobs_lease", "state", "lease_expires_at", "queue"),
        # CreateJob's idempotency key, per project: another project's ids must not show.
        UniqueConstraint("project", "request_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), server_default="default")
    display_name: Mapped[str] = mapped_column(String(256), default="")
    # NULL once the dataset is deleted; a finished job keeps its model and `target`.
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    # What predictions need to know of the dataset: task, class count and names, feature count.
    target: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    model_spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    training: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    queue: Mapped[str] = mapped_column(String(64), default="default")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    request_id: Mapped[str | None] = mapped_column(String(128))
    # Latest progress and metric values, for GetJob without reading the metric table.
    progress: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    error: Mapped[str] = mapped_column(Text, default="")
    # The lease of a running job: the claiming worker, a fencing token fresh per claim, and when
    # the lease runs out unless renewed.
    worker_id: Mapped[str | None] = mapped_column(String(128))
    lease_token: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# The jobs a claim chooses from, its value written in the SQL, and the claim says exactly this
# too: PostgreSQL's generic plan of a prepared statement (psycopg prepares one run 5 times) takes
# no partial index for a parameter's sake.
QUEUED_ONLY = JobRow.state == literal_column("'QUEUED'")
# The claim: QUEUED jobs, highest priority first, then oldest (`_claim_statement`'s ORDER BY,
# exactly), of any queue or of the queues a worker takes. Declared here, past the columns whose
# order they give: a DESC column is compared with the database only as a column's expression.
Index(
    "ix_jobs_queued",
    JobRow.priority.desc(),
    JobRow.created_at,
    JobRow.id,
    postgresql_where=QUEUED_ONLY,
    sqlite_where=QUEUED_ONLY,
)
Index(
    "ix_jobs_queued_by_queue",
    JobRow.queue,
    JobRow.priority.desc(),
    JobRow.created_at,
    JobRow.id,
    postgresql_where=QUEUED_ONLY,
    sqlite_where=QUEUED_ONLY,
)


# `trainwire status`'s newest failures, in order (migration 0012); the value is written in the
# SQL, as QUEUED_ONLY's is, so that PostgreSQL's generic plans take the partial index too.
FAILED_ONLY = JobRow.state == literal_column("'FAILED'")
Index("ix_jobs_failed", JobRow.ended_at, postgresql_where=FAILED_ONLY, sqlite_where=FAILED_ONLY)


class JobLabelRow(Base):
    """One label of a job: what ListJobs' label filter reads (migration 0015), written with the
    job and deleted with it. The job's project and creation time are copied in (neither ever
    changes), so a label's jobs are read from ix_job_labels_listing in the listing's order,
    from a page token's position: the filter once decoded every job's JSON labels, newest first,
    and a label few jobs hold read the whole project. A job whose labels' JSON text holds a NUL
    (stored before labels were checked) has no rows, as it matches no filter."""

    __tablename__ = "job_labels"
    __table_args__ = (
        Index("ix_job_labels_listing", "project", "key", "value", "created_at", "job_id"),
    )

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
    project: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobEventRow(Base):
    """What happened to a job, numbered per job: the log `WatchJob` replays from any point."""

    __tablename__ = "job_events"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    progress: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MetricRow(Base):
    """One value of one metric; (job, name, step) is the key, so a replayed write is harmless."""

    __tablename__ = "job_metrics"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Double)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WorkerRow(Base):
    """A worker process, as it last reported itself (for `trainwire status` and metrics)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(256))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    current_job_id: Mapped[str | None] = mapped_column(String(32))
    jobs_done: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKeyRow(Base):
    """An API key: only a salted hash of its secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    project: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(256), default="")
    salt: Mapped[bytes] = mapped_column(LargeBinary(16))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (
        Index("ix_checkpoints_job_id_epoch", "job_id", "epoch"),
        # A job's checkpoints in order: its listing, and its newest (a resume, "latest").
        Index("ix_checkpoints_job_id_id", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    is_final: Mapped[bool] = mapped_column(default=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Written partway through an epoch (a stop or cancel): `epoch` and `metrics` are the last
    # whole epoch's, the weights are further on. Never "best", never "epoch/N"; a resume's start.
    is_partial: Mapped[bool] = mapped_column(default=False, server_default=false())


class CheckpointBlobRow(Base):
    """The bytes of a checkpoint, apart so listing checkpoints never reads them.

    In one SQLite row a large value spills onto a chain of overflow pages, and reading any column
    stored after it walks that whole chain: kept in `checkpoints`, the bytes were read in full by
    every listing (and predictions list a served job's checkpoints about once a second).
    """

    __tablename__ = "checkpoint_blobs"

    checkpoint_id: Mapped[int] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="CASCADE"), primary_key=True
    )
    # As `DatasetBlobRow.piece`: the value is stored in 1 MiB pieces, for pg_dump's sake.
    piece: Mapped[int] = mapped_column(
        Integer, primary_key=True, autoincrement=False, server_default="0"
    )
    # safetensors bytes of the full training state (weights, optimizer, generator, position).
    data: Mapped[bytes] = mapped_column(LargeBinary)
