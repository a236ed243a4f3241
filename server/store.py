"""The persistence layer: every read and write of datasets, jobs, metrics and checkpoints.

One method is one unit of work (one transaction). ORM rows become `server.records` before they
leave. Writes made for a claimed job carry the claim's fencing token and change nothing once the
lease has passed to another worker (`LeaseLost`).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import Database
from .errors import InvalidArgument, NotFound
from .models import CheckpointRow, DatasetBlobRow, DatasetRow, JobRow, MetricRow
from .records import (
    Checkpoint,
    Claim,
    Dataset,
    Job,
    JobState,
    MetricValue,
    NewJob,
    TaskKind,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class LeaseLost(Exception):
    """The job is no longer held by this claim (rescued, cancelled away, or deleted)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def _aware(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; everything stored is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _dataset(row: DatasetRow) -> Dataset:
    return Dataset(
        id=row.id,
        display_name=row.display_name,
        task=TaskKind(row.task),
        num_classes=row.num_classes,
        num_examples=row.num_examples,
        feature_dtype=row.feature_dtype,
        feature_shape=tuple(row.feature_shape),
        target_dtype=row.target_dtype,
        target_shape=tuple(row.target_shape),
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        labels=dict(row.labels or {}),
        feature_names=list(row.feature_names or []),
        class_names=list(row.class_names or []),
        created_at=_aware(row.created_at),  # type: ignore[arg-type]
    )


def _job(row: JobRow) -> Job:
    return Job(
        id=row.id,
        display_name=row.display_name,
        dataset_id=row.dataset_id,
        model_spec=dict(row.model_spec),
        training=dict(row.training),
        state=JobState(row.state),
        queue=row.queue,
        priority=row.priority,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        labels=dict(row.labels or {}),
        request_id=row.request_id,
        progress=dict(row.progress or {}),
        metrics=dict(row.metrics or {}),
        error=row.error,
        created_at=_aware(row.created_at),  # type: ignore[arg-type]
        started_at=_aware(row.started_at),
        ended_at=_aware(row.ended_at),
    )


def _checkpoint(row: CheckpointRow) -> Checkpoint:
    return Checkpoint(
        id=row.id,
        job_id=row.job_id,
        epoch=row.epoch,
        step=row.step,
        metrics=dict(row.metrics or {}),
        is_final=row.is_final,
        size_bytes=row.size_bytes,
        created_at=_aware(row.created_at),  # type: ignore[arg-type]
    )


def encode_page_token(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_page_token(token: str) -> tuple[datetime, str]:
    try:
        created, row_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return datetime.fromisoformat(created), str(row_id)
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise InvalidArgument.field(
            "page_token", "is not a token returned by a previous List call"
        ) from None


def page_size_of(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument.field("page_size", f"must not be negative. Received: {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class Store:
    """All database access of the server and the workers."""

    def __init__(self, database: Database) -> None:
        self.db = database

    # --- datasets -----------------------------------------------------------------------------

    def create_dataset(self, dataset: Dataset, data: bytes) -> Dataset:
        with self.db.write() as session:
            row = DatasetRow(
                id=dataset.id,
                display_name=dataset.display_name,
                task=dataset.task.value,
                num_classes=dataset.num_classes,
                num_examples=dataset.num_examples,
                feature_dtype=dataset.feature_dtype,
                feature_shape=list(dataset.feature_shape),
                target_dtype=dataset.target_dtype,
                target_shape=list(dataset.target_shape),
                size_bytes=dataset.size_bytes,
                sha256=dataset.sha256,
                labels=dataset.labels,
                feature_names=dataset.feature_names,
                class_names=dataset.class_names,
                created_at=dataset.created_at,
            )
            session.add(row)
            session.flush()  # the blob's foreign key needs the dataset row first
            session.add(DatasetBlobRow(dataset_id=dataset.id, data=data))
            session.flush()
            return _dataset(row)

    def get_dataset(self, dataset_id: str) -> Dataset:
        with self.db.read() as session:
            return _dataset(self._dataset_row(session, dataset_id))

    def dataset_data(self, dataset_id: str) -> bytes:
        with self.db.read() as session:
            data = session.scalar(
                select(DatasetBlobRow.data).where(DatasetBlobRow.dataset_id == dataset_id)
            )
        if data is None:
            raise NotFound(f"datasets/{dataset_id} does not exist")
        return bytes(data)

    def list_datasets(self, page_size: int, page_token: str) -> tuple[list[Dataset], str]:
        query = select(DatasetRow)
        with self.db.read() as session:
            rows = self._page(session, query, DatasetRow, page_size, page_token)
            items = [_dataset(row) for row in rows]
        return self._with_next_token(items, page_size_of(page_size))

    @staticmethod
    def _dataset_row(session: Session, dataset_id: str) -> DatasetRow:
        row = session.get(DatasetRow, dataset_id)
        if row is None:
            raise NotFound(f"datasets/{dataset_id} does not exist")
        return row

    # --- jobs ---------------------------------------------------------------------------------

    def create_job(self, new: NewJob) -> Job:
        """Inserts a QUEUED job; with a known `request_id` returns the job it created before."""
        if new.request_id:
            existing = self._job_by_request_id(new.request_id)
            if existing is not None:
                return existing
        now = utcnow()
        try:
            with self.db.write() as session:
                self._dataset_row(session, new.dataset_id)
                row = JobRow(
                    id=new_id(),
                    display_name=new.display_name,
                    dataset_id=new.dataset_id,
                    model_spec=new.model_spec,
                    training=new.training,
                    state=JobState.QUEUED.value,
                    queue=new.queue,
                    priority=new.priority,
                    attempt=0,
                    max_attempts=new.max_attempts,
                    labels=new.labels,
                    request_id=new.request_id,
                    progress={},
                    metrics={},
                    error="",
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
                session.flush()
                return _job(row)
        except IntegrityError:
            # Two concurrent creates with one request_id: the other one won; return its job.
            if new.request_id:
                existing = self._job_by_request_id(new.request_id)
                if existing is not None:
                    return existing
            raise

    def _job_by_request_id(self, request_id: str) -> Job | None:
        with self.db.read() as session:
            row = session.scalar(select(JobRow).where(JobRow.request_id == request_id))
            return None if row is None else _job(row)

    def get_job(self, job_id: str) -> Job:
        with self.db.read() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"jobs/{job_id} does not exist")
            return _job(row)

    def list_jobs(
        self,
        page_size: int,
        page_token: str,
        state: JobState | None = None,
        dataset_id: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> tuple[list[Job], str]:
        query = select(JobRow)
        if state is not None:
            query = query.where(JobRow.state == state.value)
        if dataset_id:
            query = query.where(JobRow.dataset_id == dataset_id)
        size = page_size_of(page_size)
        items: list[Job] = []
        token = page_token
        with self.db.read() as session:
            # Label filters are checked in Python (JSON columns differ across databases), so a
            # page is refilled until it is full or the table is exhausted.
            while True:
                rows = self._page(session, query, JobRow, size, token)
                for row in rows:
                    if not labels or all(row.labels.get(k) == v for k, v in labels.items()):
                        items.append(_job(row))
                if len(rows) <= size or len(items) > size:
                    break
                token = encode_page_token(_aware(rows[size - 1].created_at), rows[size - 1].id)  # type: ignore[arg-type]
        return self._with_next_token(items, size)

    @staticmethod
    def _page(
        session: Session, query: Select[Any], model: Any, page_size: int, page_token: str
    ) -> Sequence[Any]:
        """Newest first, keyset-paginated on (created_at, id); fetches one extra row."""
        size = page_size_of(page_size)
        if page_token:
            created, row_id = decode_page_token(page_token)
            query = query.where(
                or_(
                    model.created_at < created,
                    (model.created_at == created) & (model.id < row_id),
                )
            )
        query = query.order_by(model.created_at.desc(), model.id.desc()).limit(size + 1)
        return session.scalars(query).all()

    @staticmethod
    def _with_next_token(items: list[Any], size: int) -> tuple[list[Any], str]:
        if len(items) <= size:
            return items, ""
        last = items[size - 1]
        return items[:size], encode_page_token(last.created_at, last.id)

    # --- the queue ----------------------------------------------------------------------------

    def claim_job(
        self, worker_id: str, queues: Sequence[str] | None = None, lease_s: float = 60.0
    ) -> Claim | None:
        """Takes the best runnable job in one statement, or returns None.

        PostgreSQL locks the candidate row with FOR UPDATE SKIP LOCKED, so concurrent workers
        never wait on or take the same job; SQLite serialises writers with BEGIN IMMEDIATE.
        """
        now = utcnow()
        token = secrets.token_hex(16)
        candidate = select(JobRow.id).where(JobRow.state == JobState.QUEUED.value)
        if queues:
            candidate = candidate.where(JobRow.queue.in_(list(queues)))
        candidate = (
            candidate.order_by(JobRow.priority.desc(), JobRow.created_at, JobRow.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        statement = (
            update(JobRow)
            .where(JobRow.id == candidate.scalar_subquery())
            .where(JobRow.state == JobState.QUEUED.value)
            .values(
                state=JobState.RUNNING.value,
                attempt=JobRow.attempt + 1,
                worker_id=worker_id,
                lease_token=token,
                lease_expires_at=now + timedelta(seconds=lease_s),
                started_at=func.coalesce(JobRow.started_at, now),
                updated_at=now,
            )
            .returning(JobRow.id)
        )
        with self.db.write() as session:
            job_id = session.scalar(statement)
            if job_id is None:
                return None
            row = session.get(JobRow, job_id, populate_existing=True)
            assert row is not None
            return Claim(job=_job(row), token=token)

    def _held_row(self, session: Session, claim: Claim) -> JobRow:
        row = session.get(JobRow, claim.job.id, with_for_update=True)
        if row is None or row.lease_token != claim.token:
            raise LeaseLost(f"jobs/{claim.job.id} is no longer held by this worker")
        return row

    def record_epoch(
        self,
        claim: Claim,
        progress: dict[str, float],
        latest: dict[str, float],
        values: Sequence[MetricValue],
        lease_s: float = 60.0,
    ) -> JobState:
        """Writes an epoch's metrics in one statement, updates progress, renews the lease.

        Returns the job's state, so the worker notices a cancel request.
        """
        now = utcnow()
        with self.db.write() as session:
            row = self._held_row(session, claim)
            row.progress = progress
            row.metrics = {**row.metrics, **latest}
            row.lease_expires_at = now + timedelta(seconds=lease_s)
            row.updated_at = now
            if values:
                session.execute(self._upsert_metrics(session, claim.job.id, values, now))
            return JobState(row.state)

    def _upsert_metrics(
        self, session: Session, job_id: str, values: Sequence[MetricValue], now: datetime
    ) -> Any:
        rows = [
            {
                "job_id": job_id,
                "name": v.name,
                "step": v.step,
                "epoch": v.epoch,
                "value": v.value,
                "created_at": now,
            }
            for v in values
        ]
        dialect_insert = sqlite.insert if self.db.is_sqlite else postgresql.insert
        statement = dialect_insert(MetricRow).values(rows)
        return statement.on_conflict_do_update(
            index_elements=["job_id", "name", "step"],
            set_={"value": statement.excluded.value, "epoch": statement.excluded.epoch},
        )

    def save_checkpoint(
        self,
        claim: Claim,
        epoch: int,
        step: int,
        metrics: dict[str, float],
        data: bytes,
        is_final: bool = False,
    ) -> Checkpoint:
        with self.db.write() as session:
            self._held_row(session, claim)
            row = CheckpointRow(
                job_id=claim.job.id,
                epoch=epoch,
                step=step,
                metrics=metrics,
                is_final=is_final,
                size_bytes=len(data),
                data=data,
                created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            return _checkpoint(row)

    def finish_job(
        self,
        claim: Claim,
        state: JobState,
        error: str = "",
        progress: dict[str, float] | None = None,
    ) -> Job:
        """Moves a claimed job to a final state and drops its lease."""
        now = utcnow()
        with self.db.write() as session:
            row = self._held_row(session, claim)
            row.state = state.value
            row.error = error
            if progress is not None:
                row.progress = progress
            row.lease_token = None
            row.lease_expires_at = None
            row.ended_at = now
            row.updated_at = now
            session.flush()
            return _job(row)

    def release_job(self, claim: Claim) -> None:
        """Hands a running job back to the queue (worker shutting down); not a failed attempt."""
        now = utcnow()
        with self.db.write() as session:
            row = self._held_row(session, claim)
            row.state = JobState.QUEUED.value
            row.attempt = max(0, row.attempt - 1)
            row.worker_id = None
            row.lease_token = None
            row.lease_expires_at = None
            row.updated_at = now

    # --- checkpoints --------------------------------------------------------------------------

    def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        with self.db.read() as session:
            rows = session.scalars(
                select(CheckpointRow)
                .where(CheckpointRow.job_id == job_id)
                .order_by(CheckpointRow.id)
            ).all()
            return [_checkpoint(row) for row in rows]

    def latest_checkpoint(self, job_id: str) -> Checkpoint | None:
        with self.db.read() as session:
            row = session.scalar(
                select(CheckpointRow)
                .where(CheckpointRow.job_id == job_id)
                .order_by(CheckpointRow.id.desc())
                .limit(1)
            )
            return None if row is None else _checkpoint(row)

    def checkpoint_data(self, checkpoint_id: int) -> bytes:
        with self.db.read() as session:
            data = session.scalar(
                select(CheckpointRow.data).where(CheckpointRow.id == checkpoint_id)
            )
        if data is None:
            raise NotFound(f"checkpoint {checkpoint_id} does not exist")
        return bytes(data)

    def metric_values(self, job_id: str) -> list[MetricValue]:
        with self.db.read() as session:
            rows = session.execute(
                select(MetricRow.name, MetricRow.step, MetricRow.epoch, MetricRow.value)
                .where(MetricRow.job_id == job_id)
                .order_by(MetricRow.name, MetricRow.step)
            ).all()
        return [MetricValue(name, step, epoch, value) for name, step, epoch, value in rows]
