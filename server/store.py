"""The persistence layer: every read and write of datasets, jobs, metrics and checkpoints.

One method is one unit of work (one transaction). ORM rows become `server.records` before they
leave. Writes made for a claimed job carry the claim's fencing token and change nothing once the
lease has passed to another worker (`LeaseLost`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import secrets
import struct
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import starmap
from typing import Any, Protocol, TypeVar, cast

import numpy as np
from sqlalchemy import (
    JSON,
    ColumnElement,
    DateTime,
    Interval,
    Select,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased

from trainwire.engine import read_state
from trainwire.engine.errors import quoted
from trainwire.engine.schedules import resolve_mode

from .auth import (
    KeyRecord,
    NewKey,
    check_project_name,
    format_key,
    hash_secret,
    new_secret,
)
from .db import Database
from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from .models import (
    FAILED_ONLY,
    QUEUED_ONLY,
    ApiKeyRow,
    CheckpointBlobRow,
    CheckpointRow,
    DatasetBlobRow,
    DatasetRow,
    JobEventRow,
    JobLabelRow,
    JobRow,
    MetricRow,
    WorkerRow,
)
from .names import MAX_LABELS, MAX_NAME_LENGTH, check_text, is_id
from .records import (
    FINISHED_STATES,
    Checkpoint,
    Claim,
    Dataset,
    Job,
    JobEvent,
    JobState,
    MetricValue,
    NewJob,
    TaskKind,
    shown_progress,
)
from .training import MAX_KEEP_CHECKPOINTS

DEFAULT_PAGE_SIZE = 50
# Tokens we issue are base64 of `["<ISO timestamp with offset>", "<32 hex digits>", "<scope>"]`
# (`page_scope`), about 110 characters, or of `["<metric name>", <step>, "<scope>"]` or
# `["<best checkpoint id>", <checkpoint id>, "<scope>"]`, less.
MAX_PAGE_TOKEN_LENGTH = 256
MAX_PAGE_SIZE = 1000
DEFAULT_KEEP_CHECKPOINTS = 3
# ListCheckpoints' default and largest page: every checkpoint a job keeping the most holds (its
# latest MAX_KEEP_CHECKPOINTS, its best and its newest epoch end: see `_apply_retention`), so a
# client from before paging, which sends no page_size, still gets every checkpoint of such a job.
CHECKPOINT_PAGE_SIZE = MAX_KEEP_CHECKPOINTS + 2
# The PostgreSQL NOTIFY channel of enqueued jobs (payload: the queue); a cancel is seen by the
# worker's own poll of its job (about every 0.5 s), so it is not announced.
JOBS_CHANNEL = "trainwire_jobs"
# Job.error of every CANCELLED job, however it got there.
CANCELLED_BY_REQUEST = "cancelled by request"
# How long CancelJob and DeleteJob wait for a lock on PostgreSQL (its `lock_timeout`) before they
# answer UNAVAILABLE, which the SDK retries within the call's deadline (about 5 attempts in the
# default 30 s). A job's row is held by its worker's writes, each briefly (a checkpoint's blob,
# a few seconds for a big model, is sent before it takes the lock CancelJob waits for: see
# `save_checkpoint`), or by a session that hung mid-transaction until the database ends it
# (`Database`'s idle_in_transaction_s, the lease): unbounded, the call held a server thread for
# as long as that, past its deadline.
API_LOCK_WAIT_S = 5.0
# How many of a job's newest events a retried epoch write looks through for its own (the API
# appends a few between a write and its retry at most: a cancel request).
_RECENT_EVENTS = 8
# PostgreSQL's SQLSTATE of a lock wait that ran out (lock_not_available).
_LOCK_NOT_AVAILABLE = "55P03"
# A dataset's or checkpoint's bytes are written to the database in pieces of this size
# (`_write_blob`).
_BLOB_PIECE = 1024 * 1024
# The start of PostgreSQL's binary COPY format.
_PGCOPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def _joined(pieces: Iterable[bytes], size: int) -> bytes:
    data = b"".join(pieces)
    assert len(data) == size
    return data


def _copied_pieces(rows: Iterable[tuple[Any, ...]], size: int, missing: str) -> Iterator[bytes]:
    """The pieces of a `_read_blob` COPY, checked to come in order (each row gives its piece's
    number). None at all: the value was deleted since its size was read."""
    expected = 0
    for number, piece in rows:
        if number != expected:
            raise RuntimeError(f"COPY gave piece {number}, not {expected}")
        expected += 1
        yield piece
    if expected == 0:
        raise NotFound(missing)


def _blob_key_column(table: type[DatasetBlobRow] | type[CheckpointBlobRow]) -> str:
    """The column a blob table is keyed by: its dataset's id, or its checkpoint's."""
    return "dataset_id" if table is DatasetBlobRow else "checkpoint_id"


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
        project=row.project,
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
        request_id=row.request_id,
    )


def new_claim_token() -> str:
    """A fencing token for a claim's lease: random, so a stale holder can never match it."""
    return secrets.token_hex(16)


def _job(row: Any) -> Job:
    """A Job record from an ORM row or a RETURNING row (same attribute names)."""
    return Job(
        id=row.id,
        project=row.project,
        display_name=row.display_name,
        dataset_id=row.dataset_id,
        target=dict(row.target or {}),
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
        worker_id=row.worker_id,
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
        is_partial=row.is_partial,
    )


# What "best" ranks a job's checkpoints by: a logged key and whether lower ("min") or higher
# ("max") is better.
Ranking = tuple[str, str]


def best_ranking(training: Mapping[str, Any]) -> Ranking | None:
    """The ranking of a job whose early stopping monitors a key: that key, its way, as early
    stopping judges it (a job watching val_accuracy asks for the most accurate model, which
    the lowest val_loss need not be). None otherwise: `checkpoint_score`'s losses."""
    early = training.get("early_stopping")
    if not early or not early.get("monitor"):
        return None
    monitor = str(early["monitor"])
    return monitor, resolve_mode(str(early.get("mode", "auto")), monitor)


def checkpoint_score(metrics: dict[str, float], ranking: Ranking | None = None) -> float:
    """Lower is better: by `ranking` when the checkpoint records its key (its negation for a
    "max" key), else the validation loss when recorded, else the training loss. A value that
    is not finite scores +inf: NaN compares false both ways and would otherwise win "best"
    whenever it is looked at first."""
    if ranking is not None and ranking[0] in metrics:
        key, direction = ranking
        score = float(metrics[key]) * (-1.0 if direction == "max" else 1.0)
    else:
        score = float(metrics.get("val_loss", metrics.get("loss", math.inf)))
    return score if math.isfinite(score) else math.inf


class Scored(Protocol):
    """A checkpoint as `best_checkpoint` reads it (a record, or a row of those columns)."""

    @property
    def metrics(self) -> dict[str, float]: ...

    @property
    def is_partial(self) -> bool: ...


ScoredT = TypeVar("ScoredT", bound=Scored)
T = TypeVar("T")


def best_checkpoint(
    checkpoints: Sequence[ScoredT], ranking: Ranking | None = None
) -> ScoredT | None:
    """The best of a job's checkpoints (in the order written): the lowest `checkpoint_score`
    among those of an epoch's end, the newest on ties. A partial one (written mid-epoch)
    repeats the metrics of the epoch end before it with other weights: never the best."""
    whole = [c for c in checkpoints if not c.is_partial]
    if not whole:
        return None
    return min(reversed(whole), key=lambda c: checkpoint_score(c.metrics, ranking))


def same_request_or_refuse(new: NewJob, job: Job) -> Job:
    """`job`, which `new.request_id` created, if `new` asks for what it records: a retry gets its
    job back; a different request reusing the id is refused, as payment APIs treat an
    idempotency key (`refuse_another_request`)."""
    asked = {
        "dataset": new.dataset_id,
        "model": new.model_spec,
        "training": new.training,
        "display_name": new.display_name,
        "labels": new.labels,
        "queue": new.queue,
        "priority": new.priority,
        "max_attempts": new.max_attempts,
    }
    recorded = {
        "dataset": job.dataset_id,
        "model": job.model_spec,
        "training": job.training,
        "display_name": job.display_name,
        "labels": job.labels,
        "queue": job.queue,
        "priority": job.priority,
        "max_attempts": job.max_attempts,
    }
    if job.dataset_id is None:
        # The job's dataset was deleted since, and its id with it: nothing to compare.
        del asked["dataset"], recorded["dataset"]
    refuse_another_request(new.request_id or "", f"jobs/{job.id}", "job", asked, recorded)
    return job


def refuse_another_request(
    request_id: str,
    created: str,
    kind: str,
    asked: Mapping[str, object],
    recorded: Mapping[str, object],
) -> None:
    """Refuses ALREADY_EXISTS a request whose `request_id` already created `created` (a `kind`)
    if it asks for other than that resource records (`asked` and `recorded`, keyed alike by the
    request's fields), naming each field that differs: one wording for CreateJob and
    UploadDataset. Compared as stored (JSON), so a tuple and a list of one spec are equal. A
    field holding settings (`training`, `model`, `labels`) is named by the settings that differ
    (`training.epochs`): "a different training" left the caller to find which of a dozen."""
    differing: list[str] = []
    for key in asked:
        mine, theirs = _as_stored(asked[key]), _as_stored(recorded[key])
        if mine == theirs:
            continue
        if isinstance(mine, dict) and isinstance(theirs, dict):
            differing += [
                f"{key}.{inner}"
                for inner in sorted(mine.keys() | theirs.keys())
                if mine.get(inner) != theirs.get(inner)
            ]
        else:
            differing.append(key)
    if differing:
        raise AlreadyExists(
            f"request_id {quoted(request_id)} was already used by {created}, created with a "
            f"different {', '.join(differing)}; send a new request_id to create another {kind} "
            "(a retry must repeat the request unchanged)"
        )


def _as_stored(value: object) -> object:
    return json.loads(json.dumps(value))


# How many of a page's items (in order) one answer can carry.
Fits = Callable[[Sequence[Any]], int]


def page_scope(listing: str, *filters: object) -> str:
    """What a page token continues: its listing and filters, hashed to 8 hex digits. Sent with
    another listing or other filters, its position would page through rows it was not made
    for (the page size may change)."""
    described = json.dumps([listing, *filters], sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()[:8]


# Where a listing's page ends: (created_at, id) of rows listed newest first (jobs, datasets),
# or a (text, number) key: (metric name, step) of a job's metrics listed in that order, or
# (the listing's best checkpoint id, checkpoint id) of a job's checkpoints, oldest first.
RowPosition = tuple[datetime, str]
KeyPosition = tuple[str, int]
# The steps a metric row holds (a BIGINT): a forged step past them raised OverflowError in
# SQLite's driver (INTERNAL).
_INT64 = range(-(2**63), 2**63)


def encode_page_token(position: RowPosition | KeyPosition, scope: str) -> str:
    """The token of the page after `position` in the listing `scope` names: one format for
    every listing, `[first, second, scope]` in base64."""
    first, second = position
    shown = first.isoformat() if isinstance(first, datetime) else first
    raw = json.dumps([shown, second, scope]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _not_a_page_token() -> InvalidArgument:
    return InvalidArgument.field("page_token", "is not a token returned by a previous List call")


def _token_parts(token: str) -> tuple[Any, Any, list[Any]]:
    """The position's two parts and the scope (none in tokens issued before tokens named it)
    a token holds, unchecked; anything not of that shape is refused."""
    # Refused before decoding: json.loads of a forged token nesting 100,000 lists raised
    # RecursionError (answered INTERNAL), and no token we issue comes near this length.
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        raise InvalidArgument.field(
            "page_token",
            f"is not a token returned by a previous List call (those are at most "
            f"{MAX_PAGE_TOKEN_LENGTH} characters). Received: {len(token)} characters",
        )
    try:
        first, second, *issued_for = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError, binascii.Error, UnicodeError, RecursionError):
        raise _not_a_page_token() from None
    if len(issued_for) > 1:
        raise _not_a_page_token()
    return first, second, issued_for


def _check_scope(issued_for: object, scope: str) -> None:
    if issued_for != scope:
        raise InvalidArgument.field(
            "page_token",
            "was returned for another List call or other filters, and only continues the "
            "listing that returned it; send its filters again, or start again without page_token",
        )


def _is_text(value: object) -> bool:
    """Whether `value` is a string a query can carry: no NUL (PostgreSQL refuses it), no lone
    surrogate (no encoding takes it)."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def decode_page_token(token: str, scope: str) -> RowPosition:
    """The (created_at, id) after which a page of rows starts; the token must have been
    issued for `scope`."""
    created, row_id, issued_for = _token_parts(token)
    try:
        after = datetime.fromisoformat(created)
    except (ValueError, TypeError):
        raise _not_a_page_token() from None
    # The id reaches the query: one holding a NUL (PostgreSQL refuses it) or a lone surrogate
    # (no encoding takes it) failed there, INTERNAL. Every timestamp issued has its offset.
    if not is_id(row_id) or after.tzinfo is None:
        raise _not_a_page_token()
    # A token issued before tokens named their scope has none: it is taken as it was.
    if issued_for:
        _check_scope(issued_for[0], scope)
    return after, row_id


def decode_key_page_token(token: str, scope: str) -> KeyPosition:
    """The (text, number) key after which a page starts: (metric name, step) of a job's metrics,
    or (the listing's best checkpoint id, checkpoint id) of its checkpoints; the token must have
    been issued for `scope` (its job, and metric names: another's position skipped items)."""
    name, step, issued_for = _token_parts(token)
    # Both reach the query, where a NUL, a lone surrogate or a step past int64 failed (INTERNAL).
    # Every such token names its scope: a metrics one without was made before they did and had
    # none (checkpoints were paged after).
    if not _is_text(name) or type(step) is not int or step not in _INT64 or not issued_for:
        raise _not_a_page_token()
    _check_scope(issued_for[0], scope)
    return name, step


def _best_of_token(text: str) -> int | None:
    """The best checkpoint's id a checkpoints page token carries ("" for none)."""
    if text == "":
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise _not_a_page_token()
    return int(text)


def page_size_of(
    requested: int, default: int = DEFAULT_PAGE_SIZE, most: int = MAX_PAGE_SIZE
) -> int:
    if requested < 0:
        raise InvalidArgument.field("page_size", f"must not be negative. Received: {requested}")
    return min(requested or default, most)


# Row locks (PostgreSQL, READ COMMITTED; SQLite renders no FOR clause and needs none, as BEGIN
# IMMEDIATE serialises its writers). On a dataset: DeleteDataset takes FOR UPDATE before it
# looks for unfinished jobs; CreateJob takes FOR KEY SHARE (what the insert's foreign-key check
# takes anyway, so concurrent creates do not wait on each other) from its check to its commit.
# Unlocked, a delete could miss a job being created and leave it QUEUED with no dataset, or
# delete the row under a create whose insert then failed on the foreign key (INTERNAL).
# On a job: its writes (CancelJob, the worker's) change no column a foreign key refers to and
# take FOR NO KEY UPDATE, which serialises them but does not wait for rows being inserted that
# refer to the job (KEY SHARE): a checkpoint being sent holds no more than that (see
# `save_checkpoint`). The claim and the rescue take it too (SKIP LOCKED), so neither skips a job
# whose checkpoint is being sent. DeleteJob deletes the row and takes FOR UPDATE.
_LOCK_TO_DELETE = True
_LOCK_TO_USE = {"read": True, "key_share": True}
_LOCK_TO_UPDATE = {"key_share": True}


def _is_foreign_key_violation(error: IntegrityError) -> bool:
    """PostgreSQL's SQLSTATE 23503, or SQLite's "FOREIGN KEY constraint failed"."""
    return getattr(error.orig, "sqlstate", None) == "23503" or "FOREIGN KEY" in str(error.orig)


# How a NUL is stored in a JSON column's text. Labels were once stored without the check that
# now refuses control characters, and PostgreSQL holds no NUL in a text column (nor decodes
# JSON text holding this escape): a job whose labels' text holds it has no label rows, and the
# listing checks its labels too (`_labels_without_nul`), so it matches no filter.
_NUL_ESCAPE = "\\u0000"


def _label_rows(row: JobRow) -> list[dict[str, Any]]:
    """The `job_labels` rows of a job being created: one per label, none if its labels' JSON
    text holds `_NUL_ESCAPE` (a NUL, or a backslash then `u0000` as text, which the filter never
    matched either; the text is json.dumps', the JSON column's own)."""
    if _NUL_ESCAPE in json.dumps(row.labels):
        return []
    return [
        {
            "job_id": row.id,
            "key": key,
            "value": value,
            "project": row.project,
            "created_at": row.created_at,
        }
        for key, value in row.labels.items()
    ]


def _labels_without_nul(sqlite: bool) -> ColumnElement[bool]:
    """Whether a job's stored labels hold no `_NUL_ESCAPE`. A job's labels never change once
    stored, but one edited in the database to hold a NUL (as the test of such a legacy job
    does) keeps the rows written before, which must not make it match. PostgreSQL's is a NOT
    LIKE, which it estimates to hold for most jobs: `strpos(...) = 0` it took for 1 job in 200,
    and hashed every job of the table to join a common label's 25,000 rows (100,000 jobs:
    300-400 ms a page) instead of looking up a page's jobs in order."""
    if sqlite:
        return func.instr(JobRow.labels, _NUL_ESCAPE) == 0
    return ~JobRow.labels.cast(Text).contains(_NUL_ESCAPE, autoescape=True)


# How many rows are counted, at most, to choose what a label filter reads first
# (`_label_filter_plan`): enough to tell a rare label from a common one, shared out among the
# labels and the other filters, so a filter of 64 labels counts no more (each label counted up
# to 10,000 took 1.8 s to count on PostgreSQL).
_LABEL_COUNT_BOUND = 10_000


def _bounded_count(rows: Select[Any], bound: int) -> Any:
    """How many rows `rows` gives, counted up to `bound`, as a scalar subquery."""
    return select(func.count()).select_from(rows.limit(bound).subquery()).scalar_subquery()


def _label_held(key: str, value: str, project: str | None) -> Select[Any]:
    """The `job_labels` rows of a label, a project's or every project's."""
    held = select(JobLabelRow.job_id).where(JobLabelRow.key == key, JobLabelRow.value == value)
    return held if project is None else held.where(JobLabelRow.project == project)


def _holds_labels(labels: Sequence[tuple[str, str]]) -> ColumnElement[bool]:
    """Whether a job holds every label of `labels`, each with exactly its value: one count of
    its label rows, looked up by its primary key (a job holds a key once). One EXISTS a label
    made PostgreSQL's planning time grow explosively with their number (64 labels: 79 s)."""
    matching = (
        select(func.count())
        .select_from(JobLabelRow)
        .where(
            JobLabelRow.job_id == JobRow.id,
            tuple_(JobLabelRow.key, JobLabelRow.value).in_(list(labels)),
        )
        .scalar_subquery()
    )
    return matching == len(labels)


def _labelled_jobs(
    labels: Sequence[tuple[str, str]], project: str | None, sqlite: bool
) -> tuple[Select[Any], tuple[Any, Any]]:
    """The jobs holding every label of `labels`, each with exactly its value, and the columns
    of their listing's position: the first label's rows, read from ix_job_labels_listing in
    the listing's order (a project's, from the page token's position), and the jobs they name;
    the further labels are looked up by each job's key (`_holds_labels`)."""
    (first_key, first_value), *others = labels
    lead = aliased(JobLabelRow)
    query = (
        select(JobRow)
        .join(lead, lead.job_id == JobRow.id)
        .where(lead.key == first_key, lead.value == first_value, _labels_without_nul(sqlite))
    )
    if project is not None:
        query = query.where(lead.project == project)
    if others:
        query = query.where(_holds_labels(others))
    return query, (lead.created_at, lead.job_id)


JOBS = cast(Table, JobRow.__table__)
EVENTS = cast(Table, JobEventRow.__table__)


def _claim_statement(sqlite: bool, with_queues: bool) -> Any:
    """UPDATE ... WHERE id = (the best QUEUED job, FOR NO KEY UPDATE SKIP LOCKED) RETURNING the
    row.

    Built once per variant with bound parameters: the claim is the queue's hot path. The
    candidate is the first row of the partial index ix_jobs_queued(_by_queue) (for every queue or
    one; several queues' QUEUED jobs are read, and on SQLite sorted), whose condition
    and order it says exactly. SQLite without statistics (no ANALYZE) took ix_jobs_lease for
    `state = 'QUEUED'` (a few rows, it guessed) and sorted every QUEUED job: `likely()` tells
    its planner the condition holds for most rows, and it reads the partial index instead.
    """
    candidate = select(JOBS.c.id).where(func.likely(QUEUED_ONLY) if sqlite else QUEUED_ONLY)
    if with_queues:
        candidate = candidate.where(JOBS.c.queue.in_(bindparam("p_queues", expanding=True)))
    candidate = (
        candidate.order_by(JOBS.c.priority.desc(), JOBS.c.created_at, JOBS.c.id)
        .limit(1)
        .with_for_update(key_share=True, skip_locked=True)  # FOR NO KEY UPDATE
    )
    return (
        update(JOBS)
        .where(JOBS.c.id == candidate.scalar_subquery())
        .where(JOBS.c.state == JobState.QUEUED.value)
        .values(
            state=JobState.RUNNING.value,
            attempt=JOBS.c.attempt + 1,
            worker_id=bindparam("p_worker"),
            lease_token=bindparam("p_token"),
            lease_expires_at=_lease_expression(sqlite),
            started_at=func.coalesce(JOBS.c.started_at, _now_expression(sqlite)),
            updated_at=_now_expression(sqlite),
        )
        .returning(*JOBS.columns)
    )


def _now_expression(sqlite_clock: bool) -> Any:
    """The time now in a prebuilt statement, by the clock of `Store._db_now`: the database's
    on PostgreSQL, so that times written by hosts whose clocks disagree still order as the
    writes did; on SQLite the host's, bound as `p_now` (`_now_params`)."""
    if sqlite_clock:
        return bindparam("p_now", type_=DateTime(timezone=True))
    return func.now()


def _now_params(sqlite_clock: bool) -> dict[str, Any]:
    return {"p_now": utcnow()} if sqlite_clock else {}


def _lease_expression(sqlite_clock: bool) -> Any:
    """When a lease granted now runs out: by the database's clock on PostgreSQL (shared by
    every machine); on SQLite, which serves one host only, by that host's clock."""
    if sqlite_clock:
        return bindparam("p_lease_until", type_=DateTime(timezone=True))
    return func.now() + bindparam("p_lease", type_=Interval())


def _lease_params(sqlite_clock: bool, lease_s: float) -> dict[str, Any]:
    if sqlite_clock:
        return {"p_lease_until": utcnow() + timedelta(seconds=lease_s)}
    return {"p_lease": timedelta(seconds=lease_s)}


def _finish_statement(sqlite_clock: bool) -> Any:
    """Moves a job to a final state if `p_token` still holds it, returning its row."""
    return (
        update(JOBS)
        .where(JOBS.c.id == bindparam("p_id"), JOBS.c.lease_token == bindparam("p_token"))
        .values(
            state=bindparam("p_state"),
            error=bindparam("p_error"),
            # A JSON bind sends None as the JSON value null, which COALESCE would keep (and the
            # stored progress be lost): none_as_null sends SQL NULL, so None keeps the column.
            progress=func.coalesce(
                bindparam("p_progress", type_=JSON(none_as_null=True)), JOBS.c.progress
            ),
            lease_token=None,
            lease_expires_at=None,
            ended_at=_now_expression(sqlite_clock),
            updated_at=_now_expression(sqlite_clock),
        )
        .returning(*JOBS.columns)
    )


def _append_event_statement(sqlite_clock: bool) -> Any:
    """Inserts the job's next numbered event (see `Store._append_event`)."""
    return insert(EVENTS).values(
        job_id=bindparam("p_job"),
        sequence=select(func.coalesce(func.max(EVENTS.c.sequence), 0) + 1)
        .where(EVENTS.c.job_id == bindparam("p_job"))
        .scalar_subquery(),
        state=bindparam("p_state"),
        attempt=bindparam("p_attempt"),
        progress=bindparam("p_progress", type_=JSON),
        metrics=bindparam("p_metrics", type_=JSON),
        message=bindparam("p_message"),
        created_at=_now_expression(sqlite_clock),
    )


class Store:
    """All database access of the server and the workers."""

    def __init__(self, database: Database) -> None:
        self.db = database
        self._claim_any = _claim_statement(database.is_sqlite, with_queues=False)
        self._claim_queues = _claim_statement(database.is_sqlite, with_queues=True)
        self._finish = _finish_statement(database.is_sqlite)
        self._append_event_statement = _append_event_statement(database.is_sqlite)

    def ping(self) -> None:
        """Raises Unavailable if the database cannot be reached."""
        with self.db.read() as session:
            session.execute(select(1))

    # --- datasets -----------------------------------------------------------------------------

    def create_dataset(self, dataset: Dataset, data: bytes | bytearray) -> Dataset:
        """Inserts a dataset and its bytes, created now by the database's clock (not at the
        record's `created_at`, the uploading server's). With a `request_id` another upload of
        its project stored first (two concurrent uploads with one key: the unique constraint
        lets one in), returns that upload's dataset instead, for the caller to compare
        (`DatasetService`)."""
        try:
            with self.db.write() as session:
                row = DatasetRow(
                    id=dataset.id,
                    project=dataset.project,
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
                    # The database's, not the uploading server's: see `create_job`.
                    created_at=self._read_now(session),
                    request_id=dataset.request_id,
                )
                session.add(row)
                session.flush()  # the blob's foreign key needs the dataset row first
                self._write_blob(session, DatasetBlobRow, dataset.id, data)
                return _dataset(row)
        except IntegrityError:
            if dataset.request_id:
                existing = self.dataset_by_request_id(dataset.request_id, dataset.project)
                if existing is not None:
                    return existing
            raise

    def _write_blob(
        self,
        session: Session,
        table: type[DatasetBlobRow] | type[CheckpointBlobRow],
        key: str | int,
        data: bytes | bytearray,
    ) -> None:
        """Stores a dataset's or a checkpoint's bytes (`table`, keyed by its dataset's id or its
        checkpoint's id) as rows of `_BLOB_PIECE` bytes, numbered from 0 (an empty value: one
        empty piece). One bytea value was written whole by `pg_dump` as text, which PostgreSQL
        limits to 1 GB, twice the value (hex): one over 512 MiB failed the whole dump. A piece
        at a time: bound whole, the driver copied the bytes (SQLite twice, libpq once, kept with
        the pooled connection). SQLite inserts the pieces one by one; PostgreSQL gets them by
        COPY."""
        view = memoryview(data).cast("B")
        key_column = _blob_key_column(table)
        name = table.__tablename__
        starts = range(0, max(len(view), 1), _BLOB_PIECE)
        driver = session.connection().connection.driver_connection  # sqlite3's or psycopg's
        assert driver is not None  # a connection of the session's transaction
        if self.db.is_sqlite:
            # executemany takes the rows one at a time from the generator: one piece is bound.
            driver.executemany(
                f"INSERT INTO {name} ({key_column}, piece, data) VALUES (?, ?, ?)",
                (
                    (key, number, view[start : start + _BLOB_PIECE])
                    for number, start in enumerate(starts)
                ),
            )
            return
        # COPY's binary format: its signature, flags and header extension (none), then a row of
        # three fields per piece, each its length and bytes, then the end of the data. A
        # checkpoint's id is an integer column (4 bytes in the binary format), a dataset's text.
        field = key.encode() if isinstance(key, str) else struct.pack("!i", key)
        with (
            driver.cursor() as cursor,
            cursor.copy(
                f"COPY {name} ({key_column}, piece, data) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.write(_PGCOPY_SIGNATURE + struct.pack("!ii", 0, 0))
            for number, start in enumerate(starts):
                piece = view[start : start + _BLOB_PIECE]
                copy.write(struct.pack("!hi", 3, len(field)) + field)
                copy.write(struct.pack("!iii", 4, number, len(piece)))
                copy.write(piece)
            copy.write(struct.pack("!h", -1))

    def dataset_by_request_id(self, request_id: str, project: str) -> Dataset | None:
        """The dataset `project` uploaded with `request_id`; request ids are unique per project
        (migration 0011), so another project's use of one is neither seen nor refused."""
        with self.db.read() as session:
            row = session.scalar(
                select(DatasetRow).where(
                    DatasetRow.project == project, DatasetRow.request_id == request_id
                )
            )
            return None if row is None else _dataset(row)

    def get_dataset(self, dataset_id: str, project: str | None = None) -> Dataset:
        """A dataset; NOT_FOUND if it is missing or belongs to another `project`."""
        with self.db.read() as session:
            return _dataset(self._dataset_row(session, dataset_id, project))

    def delete_dataset(self, dataset_id: str, project: str | None = None) -> None:
        """Deletes a dataset no unfinished job uses; finished jobs keep their models."""
        with self.db.write() as session:
            # Locked before the check: a job being created for it holds the row in KEY SHARE
            # until it commits, so the check below sees that job (see `create_job`).
            self._dataset_row(session, dataset_id, project, lock=_LOCK_TO_DELETE)
            unfinished = (
                select(JobRow.id)
                .where(JobRow.dataset_id == dataset_id)
                .where(JobRow.state.not_in([s.value for s in FINISHED_STATES]))
            )
            users = session.scalars(unfinished.order_by(JobRow.id).limit(5)).all()
            if users:
                names = ", ".join(f"jobs/{u}" for u in users)
                if len(users) == 5:
                    # Named 5 at most (a message, not a listing), but counted, so the caller
                    # knows how many more to look for (`jobs list --dataset`).
                    count = session.scalar(select(func.count()).select_from(unfinished.subquery()))
                    if count and count > 5:
                        names += f" and {count - 5} more"
                raise FailedPrecondition(
                    f"datasets/{dataset_id} is used by unfinished jobs ({names}); cancel them or "
                    "wait for them to finish first"
                )
            session.execute(delete(DatasetRow).where(DatasetRow.id == dataset_id))

    def dataset_data(self, dataset_id: str) -> bytes:
        """A dataset's stored bytes, whole (`dataset_state` reads its arrays without them)."""
        return self._read_blob(DatasetBlobRow, dataset_id, _joined)

    def dataset_state(
        self, dataset_id: str, dtypes: Mapping[str, np.dtype] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """A dataset's arrays and metadata (`read_state`: those named in `dtypes` converted as
        they are read), its bytes read a piece at a time (`_read_blob`)."""
        return self._read_blob(
            DatasetBlobRow, dataset_id, lambda pieces, size: read_state(pieces, size, dtypes)
        )

    def _read_blob(
        self,
        table: type[DatasetBlobRow] | type[CheckpointBlobRow],
        key: str | int,
        read: Callable[[Iterable[bytes], int], T],
    ) -> T:
        """`read(pieces, size)` of a dataset's or a checkpoint's bytes, given a piece at a time
        (the rows `_write_blob` stored, in order). Read whole, they were copied by the driver,
        and kept by it: PostgreSQL sent them as hex text (twice their size), which libpq's input
        buffer then kept for the life of the pooled connection, and psycopg's bytes and a
        parse's copies came on top (measured: 6 times a 256 MiB dataset at the peak, 2 times
        kept; SQLite 2 times). PostgreSQL sends the pieces by COPY. NotFound if there is no such
        value."""
        key_column = _blob_key_column(table)
        name = table.__tablename__
        missing = (
            f"datasets/{key} does not exist"
            if table is DatasetBlobRow
            else f"checkpoint {key} does not exist"
        )
        with self.db.read() as session:
            driver = session.connection().connection.driver_connection
            assert driver is not None  # a connection of the session's transaction
            where = table.__table__.c[key_column] == key
            # The sizes come from the pieces' headers: no piece is read for them.
            size = session.scalar(select(func.sum(func.length(table.data))).where(where))
            if size is None:
                raise NotFound(missing)
            size = int(size)
            if self.db.is_sqlite:
                rows = driver.execute(
                    f"SELECT piece, data FROM {name} WHERE {key_column} = ? ORDER BY piece", (key,)
                )
                return read(_copied_pieces(rows, size, missing), size)
            from psycopg import sql

            query = sql.SQL(
                "COPY (SELECT piece, data FROM {table} WHERE {column} = {key} ORDER BY piece) "
                "TO STDOUT (FORMAT BINARY)"
            ).format(table=sql.Identifier(name), column=sql.Identifier(key_column), key=key)
            with driver.cursor() as cursor, cursor.copy(query) as copy:
                copy.set_types(["int4", "bytea"])
                return read(_copied_pieces(copy.rows(), size, missing), size)

    def list_datasets(
        self,
        page_size: int,
        page_token: str,
        project: str | None = None,
        fits: Fits | None = None,
    ) -> tuple[list[Dataset], str]:
        """A page of datasets, newest first, and the next page's token ("" after the last);
        `fits` may end the page early (see `_with_next_token`)."""
        query = select(DatasetRow)
        if project is not None:
            query = query.where(DatasetRow.project == project)
        scope = page_scope("datasets")
        with self.db.read() as session:
            position = (DatasetRow.created_at, DatasetRow.id)
            rows = self._page(session, query, position, page_size, page_token, scope)
            items = [_dataset(row) for row in rows]
        return self._with_next_token(items, page_size_of(page_size), scope, fits)

    @staticmethod
    def _dataset_row(
        session: Session,
        dataset_id: str,
        project: str | None = None,
        lock: bool | dict[str, bool] = False,
    ) -> DatasetRow:
        row = session.get(DatasetRow, dataset_id, with_for_update=lock)
        # Another project's dataset is reported exactly like a missing one: names do not leak.
        if row is None or (project is not None and row.project != project):
            raise NotFound(f"datasets/{dataset_id} does not exist")
        return row

    # --- jobs ---------------------------------------------------------------------------------

    def create_job(self, new: NewJob) -> Job:
        """Inserts a QUEUED job; with a known `request_id` returns the job it created before, or
        ALREADY_EXISTS if that job was asked for with other settings."""
        if new.request_id:
            existing = self.job_by_request_id(new.request_id, new.project)
            if existing is not None:
                return same_request_or_refuse(new, existing)
        try:
            with self.db.write() as session:
                # Held until the job is committed: a DeleteDataset waits, then sees the job.
                self._dataset_row(session, new.dataset_id, new.project, lock=_LOCK_TO_USE)
                # By the database's clock: the queue takes jobs oldest first and lists them
                # newest first by it, whichever server (and host clock) took each.
                now = self._read_now(session)
                row = JobRow(
                    id=new_id(),
                    project=new.project,
                    display_name=new.display_name,
                    dataset_id=new.dataset_id,
                    target=new.target,
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
                labelled = _label_rows(row)
                if labelled:
                    session.execute(insert(JobLabelRow), labelled)
                self._event_for(session, row, "queued")
                self._notify(session, JOBS_CHANNEL, row.queue)
                return _job(row)
        except IntegrityError as error:
            if _is_foreign_key_violation(error):
                # The dataset went between the check and the insert (a lock makes that unlikely,
                # but should it happen it is the caller's missing dataset, not an internal error).
                raise NotFound(f"datasets/{new.dataset_id} does not exist") from None
            # Two concurrent creates with one request_id: the other one won; return its job.
            if new.request_id:
                existing = self.job_by_request_id(new.request_id, new.project)
                if existing is not None:
                    return same_request_or_refuse(new, existing)
            raise

    def job_by_request_id(self, request_id: str, project: str) -> Job | None:
        """The job `project` created with `request_id`; request ids are unique per project
        (migration 0007), so another project's use of one is neither seen nor refused."""
        with self.db.read() as session:
            row = session.scalar(
                select(JobRow).where(JobRow.project == project, JobRow.request_id == request_id)
            )
            return None if row is None else _job(row)

    def get_job(self, job_id: str, project: str | None = None) -> Job:
        """A job; NOT_FOUND if it is missing or belongs to another `project`."""
        with self.db.read() as session:
            return _job(self._job_row(session, job_id, project))

    @staticmethod
    def _job_row(
        session: Session, job_id: str, project: str | None, lock: bool | dict[str, bool] = False
    ) -> JobRow:
        row = session.get(JobRow, job_id, with_for_update=lock)
        if row is None or (project is not None and row.project != project):
            raise NotFound(f"jobs/{job_id} does not exist")
        return row

    @contextmanager
    def _api_write(self, job_id: str) -> Iterator[Session]:
        """`db.write()` for an API call that locks the job's row: on PostgreSQL each lock wait
        lasts at most `API_LOCK_WAIT_S`, and one that runs out is UNAVAILABLE, naming the job."""
        try:
            with self.db.write() as session:
                if not self.db.is_sqlite:
                    wait = f"{math.ceil(API_LOCK_WAIT_S * 1000)}ms"
                    session.execute(select(func.set_config("lock_timeout", wait, True)))
                yield session
        except OperationalError as error:
            if getattr(error.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            raise Unavailable(
                f"jobs/{job_id} is locked by another write (its worker's) for longer than "
                f"{API_LOCK_WAIT_S:g}s; try again shortly"
            ) from error

    def delete_job(self, job_id: str, project: str | None = None) -> None:
        """Deletes a finished job with its metrics, checkpoints and events."""
        with self._api_write(job_id) as session:
            row = self._job_row(session, job_id, project, lock=_LOCK_TO_DELETE)
            if not JobState(row.state).is_finished:
                advice = (
                    "wait for its cancel to finish (within a batch of its training)"
                    if row.state == JobState.CANCELLING.value
                    else "cancel it and let it finish"
                )
                raise FailedPrecondition(f"jobs/{job_id} is {row.state}; {advice} before deleting")
            session.execute(
                delete(CheckpointBlobRow).where(
                    CheckpointBlobRow.checkpoint_id.in_(
                        select(CheckpointRow.id).where(CheckpointRow.job_id == job_id)
                    )
                )
            )
            for table in (MetricRow, CheckpointRow, JobEventRow, JobLabelRow):
                session.execute(delete(table).where(table.job_id == job_id))
            session.execute(delete(JobRow).where(JobRow.id == job_id))

    def list_jobs(
        self,
        page_size: int,
        page_token: str,
        state: JobState | None = None,
        dataset_id: str | None = None,
        labels: dict[str, str] | None = None,
        project: str | None = None,
        fits: Fits | None = None,
        created_before: datetime | None = None,
    ) -> tuple[list[Job], str]:
        """A page of jobs, newest first, filtered (`created_before`: created before that
        instant), and the next page's token ("" after the last); `fits` may end the page early
        (see `_with_next_token`)."""
        size = page_size_of(page_size)
        # `created_before` joins the scope only when given: tokens issued before it existed
        # continue their listings.
        before = [] if created_before is None else [created_before.isoformat()]
        scope = page_scope(
            "jobs", None if state is None else state.value, dataset_id, labels or {}, *before
        )
        if labels and (len(labels) > MAX_LABELS or any("\x00" in k + v for k, v in labels.items())):
            # No job carries that many labels, nor a NUL (PostgreSQL refuses one as a
            # parameter), and SQLite refuses a filter of over 1,000 terms: the page is empty,
            # once its token is known to be this listing's.
            if page_token:
                decode_page_token(page_token, scope)
            return [], ""
        with self.db.read() as session:
            if labels:
                query, position = self._labelled_jobs_query(
                    session, labels, state, dataset_id, project
                )
            else:
                query, position = self._jobs_query(state, dataset_id, project)
            if created_before is not None:
                # A range of the listing's own index, where its pages start reading.
                query = query.where(position[0] < created_before)
            rows = self._page(session, query, position, size, page_token, scope)
            items = [_job(row) for row in rows]
        return self._with_next_token(items, size, scope, fits)

    def _labelled_jobs_query(
        self,
        session: Session,
        labels: Mapping[str, str],
        state: JobState | None,
        dataset_id: str | None,
        project: str | None,
    ) -> tuple[Select[Any], tuple[Any, Any]]:
        """The jobs of a listing with label filters, and the columns of its position: led, in
        the listing's order, by what the fewest jobs match (`_label_filter_lead`), each job it
        names checked for the rest."""
        given = list(labels.items())
        lead = self._label_filter_lead(session, given, state, dataset_id, project)
        if lead is None:  # the state or dataset filter: the jobs' own listing
            query, position = self._jobs_query(state, dataset_id, project)
            return query.where(
                _holds_labels(given), _labels_without_nul(self.db.is_sqlite)
            ), position
        query, position = _labelled_jobs(lead, project, self.db.is_sqlite)
        if state is not None:
            query = query.where(JobRow.state == state.value)
        if dataset_id:
            query = query.where(JobRow.dataset_id == dataset_id)
        return query, position

    def _label_filter_lead(
        self,
        session: Session,
        given: list[tuple[str, str]],
        state: JobState | None,
        dataset_id: str | None,
        project: str | None,
    ) -> list[tuple[str, str]] | None:
        """The labels of a filter, those the fewest jobs hold first (ties in the filter's
        order), or None when its state or dataset filter matches fewer jobs than any label.
        Counted from the indexes up to a bound (`_LABEL_COUNT_BOUND`), in one statement: SQLite
        keeps no statistics to choose by, and a common label read first made a rare label's
        jobs (360-430 ms at 100,000 jobs), or a rare state's (93-164 ms), wait behind all of
        its own."""
        others_filter = state is not None or bool(dataset_id)
        if len(given) == 1 and not others_filter:
            return given
        bound = max(_LABEL_COUNT_BOUND // (len(given) + others_filter), 1)
        counts = [_bounded_count(_label_held(k, v, project), bound) for k, v in given]
        if others_filter:
            jobs = self._jobs_query(state, dataset_id, project)[0].with_only_columns(JobRow.id)
            counts.append(_bounded_count(jobs, bound))
        held = session.execute(select(*counts)).one()
        fewest = sorted(range(len(given)), key=lambda index: held[index])
        if others_filter and held[-1] < held[fewest[0]]:
            return None
        return [given[index] for index in fewest]

    def _jobs_query(
        self, state: JobState | None, dataset_id: str | None, project: str | None
    ) -> tuple[Select[Any], tuple[Any, Any]]:
        """The jobs of a listing without label filters, and the columns of its position."""
        coarse: list[ColumnElement[bool]] = []
        if project is not None:
            coarse.append(JobRow.project == project)
        if state is not None:
            coarse.append(JobRow.state == state.value)
        query = select(JobRow)
        if dataset_id:
            if self.db.is_sqlite:
                # Without statistics SQLite read (project[, state], created_at, id) and looked
                # up every job of the project for its dataset: `likely()` says the project and
                # state hold for most rows, so it reads the dataset's own index in order.
                coarse = [func.likely(condition) for condition in coarse]
            query = query.where(JobRow.dataset_id == dataset_id)
        return query.where(*coarse), (JobRow.created_at, JobRow.id)

    @staticmethod
    def _page(
        session: Session,
        query: Select[Any],
        position: tuple[Any, Any],
        page_size: int,
        page_token: str,
        scope: str,
    ) -> Sequence[Any]:
        """Newest first, keyset-paginated on `position`, the (created_at, id) columns the rows
        are read by; fetches one extra row. The position is compared as a row value, which both
        databases take as a range of an index on (..., created_at, id) scanned backward (the OR
        of its parts is not)."""
        created_at, row_id = position
        size = page_size_of(page_size)
        if page_token:
            created, after = decode_page_token(page_token, scope)
            query = query.where(tuple_(created_at, row_id) < (created, after))
        query = query.order_by(created_at.desc(), row_id.desc()).limit(size + 1)
        return session.scalars(query).all()

    @staticmethod
    def _with_next_token(
        items: list[Any],
        size: int,
        scope: str,
        fits: Fits | None = None,
        position: Callable[[Any], RowPosition | KeyPosition] = lambda last: (
            last.created_at,
            last.id,
        ),
    ) -> tuple[list[Any], str]:
        """The page's items (`items` holds one more when another page follows) and its token,
        naming the `position` of the page's last item (by default its (created_at, id)).
        `fits` says how many of the page's items one answer can carry: the page ends after
        them (at least one), its token naming the last, so a client paging on gets every item
        (1,000 jobs with sizeable specs went past the message limit, and the whole answer
        failed)."""
        count = min(len(items), size)
        if fits is not None and count:
            count = max(1, min(count, fits(items[:count])))
        if count == len(items):
            return items, ""
        return items[:count], encode_page_token(position(items[count - 1]), scope)

    # --- the queue ----------------------------------------------------------------------------

    def claim_job(
        self,
        worker_id: str,
        queues: Sequence[str] | None = None,
        lease_s: float = 30.0,
        token: str | None = None,
    ) -> Claim | None:
        """Takes the best runnable job in one statement, or returns None.

        PostgreSQL locks the candidate row with FOR NO KEY UPDATE SKIP LOCKED, so concurrent
        workers never wait on or take the same job; SQLite serialises writers with BEGIN
        IMMEDIATE. The lease runs out `lease_s` after the database's clock, with `token` (a
        fresh one by default) as its fencing token: a caller whose claim failed unanswered finds
        by it, with `claimed_with`, the job it may have taken.
        """
        params: dict[str, Any] = {
            "p_worker": worker_id,
            "p_token": token or new_claim_token(),
            **_now_params(self.db.is_sqlite),
            **_lease_params(self.db.is_sqlite, lease_s),
        }
        statement = self._claim_any
        if queues:
            statement = self._claim_queues
            params["p_queues"] = list(queues)
        with self.db.write() as session:
            row = session.execute(statement, params).first()
            if row is None:
                return None
            message = f"running on {worker_id} (attempt {row.attempt})"
            shown = shown_progress(row.training, row.progress)
            self._append_event(session, row.id, row.state, row.attempt, message, shown)
            return Claim(job=_job(row), token=params["p_token"])

    def claimed_with(self, token: str) -> Claim | None:
        """The job a claim with `token` took and still holds, if any: a claim whose commit
        reached the database but whose answer was lost (the connection dropped) left its job
        RUNNING under a lease nobody renews until it lapses; its worker takes it back by this."""
        with self.db.read() as session:
            # Only RUNNING jobs are looked at (ix_jobs_lease gives them, a few): a token is
            # never reused, and a job it took that is no longer RUNNING is not held.
            row = session.scalar(
                select(JobRow)
                .where(JobRow.state == JobState.RUNNING.value)
                .where(JobRow.lease_token == token)
            )
            if row is None:
                return None
            return Claim(job=_job(row), token=token)

    def _db_now(self) -> Any:
        """The clock every stored time is taken from, leases and workers' liveness measured by:
        the database's on PostgreSQL (shared by every machine, whatever each host's own clock
        says); on SQLite, which serves one host only, that host's clock."""
        return utcnow() if self.db.is_sqlite else func.now()

    def _read_now(self, session: Session) -> datetime:
        """The time now by `_db_now`'s clock, read in `session`'s transaction."""
        if self.db.is_sqlite:
            return utcnow()
        now = _aware(session.scalar(select(func.now())))
        assert now is not None
        return now

    def _lease_until(self, lease_s: float) -> Any:
        return self._db_now() + timedelta(seconds=lease_s)

    def heartbeat(self, claim: Claim, lease_s: float) -> JobState:
        """Renews the lease of a claimed job; returns its state so a cancel request is seen."""
        with self.db.write() as session:
            row = self._held_row(session, claim)
            session.execute(
                update(JobRow)
                .where(JobRow.id == row.id)
                .values(lease_expires_at=self._lease_until(lease_s))
            )
            return JobState(row.state)

    def held_job_state(self, claim: Claim) -> JobState:
        """The state of a claimed job, or LeaseLost if the claim is no longer current."""
        with self.db.read() as session:
            row = session.execute(
                select(JobRow.state, JobRow.lease_token).where(JobRow.id == claim.job.id)
            ).first()
        if row is None or row.lease_token != claim.token:
            raise LeaseLost(f"jobs/{claim.job.id} is no longer held by this worker")
        return JobState(row.state)

    def rescue_expired(self) -> list[tuple[str, JobState]]:
        """Jobs whose worker stopped renewing its lease go back to the queue (or fail past
        `max_attempts`; a job being cancelled is CANCELLED). Safe to run from every process."""
        rescued: list[tuple[str, JobState]] = []
        with self.db.write() as session:
            rows = session.scalars(
                select(JobRow)
                .where(JobRow.state.in_([JobState.RUNNING.value, JobState.CANCELLING.value]))
                .where(JobRow.lease_expires_at < self._db_now())
                # NO KEY UPDATE: a checkpoint being sent holds the row in KEY SHARE, and a worker
                # frozen mid-send (its session active, not idle, so never ended by the database)
                # kept its job from rescue, and then from any claim, for as long as it was frozen.
                # Its save checks the lease again before it commits, and finds it lost.
                .with_for_update(key_share=True, skip_locked=True)  # FOR NO KEY UPDATE
            ).all()
            now = self._read_now(session)
            for row in rows:
                lost = f"worker {row.worker_id} stopped renewing its lease (killed or unreachable)"
                if row.state == JobState.CANCELLING.value:
                    state, message = JobState.CANCELLED, f"cancelled; {lost}"
                elif row.attempt >= row.max_attempts:
                    state = JobState.FAILED
                    message = f"{lost} on attempt {row.attempt} of {row.max_attempts}; giving up"
                else:
                    state, message = JobState.QUEUED, f"{lost}; queued again to resume"
                row.state = state.value
                row.worker_id = None
                row.lease_token = None
                row.lease_expires_at = None
                row.updated_at = now
                if state.is_finished:
                    row.ended_at = now
                    row.error = CANCELLED_BY_REQUEST if state is JobState.CANCELLED else message
                self._event_for(session, row, message)
                if state is JobState.QUEUED:
                    self._notify(session, JOBS_CHANNEL, row.queue)
                rescued.append((row.id, state))
        return rescued

    def cancel_job(self, job_id: str, project: str | None = None) -> Job:
        """QUEUED becomes CANCELLED at once; RUNNING becomes CANCELLING for its worker to stop.
        A job already CANCELLING or CANCELLED is answered as it is: a client's retry of a cancel
        whose answer was lost (a dropped connection, a server stopping) must not report that
        cancel as refused. A job that ended otherwise cannot be cancelled."""
        with self._api_write(job_id) as session:
            row = self._job_row(session, job_id, project, lock=_LOCK_TO_UPDATE)
            now = self._read_now(session)
            state = JobState(row.state)
            if state is JobState.QUEUED:
                row.state = JobState.CANCELLED.value
                row.error = CANCELLED_BY_REQUEST
                row.ended_at = now
                row.updated_at = now
                self._event_for(session, row, "cancelled before it ran")
            elif state is JobState.RUNNING:
                row.state = JobState.CANCELLING.value
                row.updated_at = now
                self._event_for(session, row, "cancel requested; stopping at the next batch")
            elif state.is_finished and state is not JobState.CANCELLED:
                raise FailedPrecondition(
                    f"jobs/{job_id} is already {state.value} and cannot be cancelled"
                )
            session.flush()
            return _job(row)

    def _notify(self, session: Session, channel: str, payload: str) -> None:
        """PostgreSQL NOTIFY, delivered when the transaction commits; a no-op on SQLite."""
        if not self.db.is_sqlite:
            session.execute(select(func.pg_notify(channel, payload)))

    def _append_event(
        self,
        session: Session,
        job_id: str,
        state: str,
        attempt: int,
        message: str,
        progress: dict[str, float] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Appends the job's next numbered event in one statement. Callers hold the job row
        (locked by their UPDATE, or new), so no two events of a job get one number."""
        session.execute(
            self._append_event_statement,
            {
                "p_job": job_id,
                "p_state": state,
                "p_attempt": attempt,
                "p_progress": progress or {},
                "p_metrics": metrics or {},
                "p_message": message,
                **_now_params(self.db.is_sqlite),
            },
        )

    def _event_for(
        self,
        session: Session,
        row: JobRow,
        message: str,
        progress: dict[str, float] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Appends the job's next event; one of no `progress` of its own shows the job's."""
        shown = shown_progress(row.training, row.progress) if progress is None else progress
        self._append_event(session, row.id, row.state, row.attempt, message, shown, metrics)

    def last_event_sequence(self, job_id: str) -> int:
        """The number of the job's last event (events are numbered from 1 without gaps)."""
        with self.db.read() as session:
            last = session.scalar(
                select(func.max(JobEventRow.sequence)).where(JobEventRow.job_id == job_id)
            )
            return int(last or 0)

    def job_events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        query = (
            select(
                JobEventRow.sequence,
                JobEventRow.state,
                JobEventRow.attempt,
                JobEventRow.progress,
                JobEventRow.metrics,
                JobEventRow.message,
                JobEventRow.created_at,
            )
            .where(JobEventRow.job_id == job_id, JobEventRow.sequence > after)
            .order_by(JobEventRow.sequence)
            .limit(limit)
        )
        with self.db.read() as session:
            # Through the connection, as `metric_values`: the session's ORM objects cost twice
            # the fetch (a watch replaying a long job reads its events 1,000 at a time).
            rows = session.connection().execute(query).all()
        return [
            JobEvent(
                job_id=job_id,
                sequence=sequence,
                state=JobState(state),
                attempt=attempt,
                progress=dict(progress or {}),
                metrics=dict(metrics or {}),
                message=message,
                created_at=_aware(created_at),  # type: ignore[arg-type]
            )
            for sequence, state, attempt, progress, metrics, message, created_at in rows
        ]

    def _held_row(
        self, session: Session, claim: Claim, lock: dict[str, bool] = _LOCK_TO_UPDATE
    ) -> JobRow:
        # populate_existing: a second look in one transaction reads the row again, not the
        # session's copy of it.
        row = session.get(JobRow, claim.job.id, with_for_update=lock, populate_existing=True)
        if row is None or row.lease_token != claim.token:
            raise LeaseLost(f"jobs/{claim.job.id} is no longer held by this worker")
        return row

    def record_epoch(
        self,
        claim: Claim,
        progress: dict[str, float],
        latest: dict[str, float],
        values: Sequence[MetricValue],
        lease_s: float = 30.0,
    ) -> JobState:
        """Writes an epoch's metrics in one statement, updates progress, renews the lease.

        Returns the job's state, so the worker notices a cancel request. A retry after an
        unknown outcome (the commit went through, its answer was lost) changes nothing more:
        the updates and the metrics' upsert repeat themselves, and the epoch's event is not
        appended again (`_epoch_recorded`).
        """
        with self.db.write() as session:
            row = self._held_row(session, claim)
            now = self._read_now(session)
            row.progress = progress
            row.metrics = {**row.metrics, **latest}
            row.lease_expires_at = self._lease_until(lease_s)
            row.updated_at = now
            if values:
                session.execute(self._upsert_metrics(session, claim.job.id, values, now))
            message = f"epoch {int(progress.get('epoch', 0))} done"
            if not self._epoch_recorded(session, row, message):
                self._event_for(session, row, message, progress, latest)
            return JobState(row.state)

    @staticmethod
    def _epoch_recorded(session: Session, row: JobRow, message: str) -> bool:
        """Whether the job's current attempt already has this epoch's event. The attempt stands
        for the claim: a claim handed back (`release_job`) gives its number to the next, but
        that one resumes from the checkpoint the first wrote after its last epoch end, so no
        epoch ends twice under one number unless its write is retried. An epoch trained again
        by a later attempt (its checkpoint lost with its worker) is recorded again.

        Only the job's newest events are looked at, through its (job_id, sequence) index: a
        retried write follows its first at once, but for what the API appends meanwhile (a
        cancel request). A filter on attempt and message read every event of the job, under
        the job's lock, at every epoch's end: 35 ms with 100,000 events."""
        newest = session.execute(
            select(JobEventRow.attempt, JobEventRow.message)
            .where(JobEventRow.job_id == row.id)
            .order_by(JobEventRow.sequence.desc())
            .limit(_RECENT_EVENTS)
        ).all()
        return (row.attempt, message) in {(attempt, text) for attempt, text in newest}

    def record_metrics(self, claim: Claim, values: Sequence[MetricValue]) -> None:
        """Writes metric values alone (one fenced upsert): those of a run stopped mid-epoch,
        whose epoch has not ended, so progress and events stay as they are."""
        if not values:
            return
        with self.db.write() as session:
            self._held_row(session, claim)
            session.execute(self._upsert_metrics(session, claim.job.id, values, self._db_now()))

    def _upsert_metrics(
        self, session: Session, job_id: str, values: Sequence[MetricValue], now: Any
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
        data: bytes | bytearray,
        is_final: bool = False,
        keep: int = DEFAULT_KEEP_CHECKPOINTS,
        is_partial: bool = False,
    ) -> Checkpoint:
        """Stores a checkpoint, then keeps only the latest `keep`, the best and the newest of a
        whole epoch of the job's (`is_partial`: written partway through an epoch). One of the
        same kind at the same position as the job's newest is that one, returned: see
        `_newest_checkpoint_at`.

        The blob (tens of MB for a big model) is sent with the job's row held in KEY SHARE, what
        the checkpoint's foreign key takes anyway: neither a CancelJob nor a rescue (FOR NO KEY
        UPDATE) waits for it or skips the job. Then the row is locked as the job's other writes
        lock it and the lease checked again, holding to the commit: a save whose lease a rescue
        took meanwhile stores nothing."""
        with self.db.write() as session:
            self._held_row(session, claim, _LOCK_TO_USE)
            stored = self._newest_checkpoint_at(
                session, claim.job.id, epoch, step, is_final, is_partial
            )
            if stored is not None:
                return _checkpoint(stored)
            row = CheckpointRow(
                job_id=claim.job.id,
                epoch=epoch,
                step=step,
                metrics=metrics,
                is_final=is_final,
                size_bytes=len(data),
                created_at=self._read_now(session),
                is_partial=is_partial,
            )
            session.add(row)
            session.flush()  # the blob's foreign key needs the checkpoint's id
            self._write_blob(session, CheckpointBlobRow, row.id, data)
            job_row = self._held_row(session, claim)
            # A write whose first try was still committing when this retry looked above (its
            # connection dropped at the commit) is seen now that it has committed.
            stored = self._newest_checkpoint_at(
                session, claim.job.id, epoch, step, is_final, is_partial, other_than=row.id
            )
            if stored is not None:
                session.execute(
                    delete(CheckpointBlobRow).where(CheckpointBlobRow.checkpoint_id == row.id)
                )
                session.execute(delete(CheckpointRow).where(CheckpointRow.id == row.id))
                return _checkpoint(stored)
            if is_final:
                # The job's metrics become its model's: with early stopping that restored the
                # best weights, the best epoch's rather than the last epoch's.
                job_row.metrics = dict(metrics)
            self._apply_retention(session, claim.job.id, keep, best_ranking(claim.job.training))
            return _checkpoint(row)

    @staticmethod
    def _newest_checkpoint_at(
        session: Session,
        job_id: str,
        epoch: int,
        step: int,
        is_final: bool,
        is_partial: bool,
        other_than: int | None = None,
    ) -> CheckpointRow | None:
        """The job's newest checkpoint if it was taken at this epoch and step and is of this
        kind. A retried write whose commit went through (its answer lost) finds itself here:
        the holder of the lease writes in order, and nothing is newer. Otherwise the trainer
        has not moved since the newest was taken (a cancel or stop met at an epoch end just
        checkpointed, or before the first batch after a resume from it): it holds this very
        state, and a copy would only push older checkpoints out. `other_than`: the checkpoint
        being written, which is not looked at."""
        query = select(CheckpointRow).where(CheckpointRow.job_id == job_id)
        if other_than is not None:
            query = query.where(CheckpointRow.id != other_than)
        newest = session.scalar(query.order_by(CheckpointRow.id.desc()).limit(1))
        if newest is None:
            return None
        same = (newest.epoch, newest.step, newest.is_final, newest.is_partial)
        return newest if same == (epoch, step, is_final, is_partial) else None

    @staticmethod
    def _scored_checkpoints(session: Session, job_id: str) -> Sequence[Any]:
        """Every checkpoint of the job, oldest first, as `best_checkpoint` reads them: their
        id, metrics and is_partial, not their other columns."""
        return session.execute(
            select(CheckpointRow.id, CheckpointRow.metrics, CheckpointRow.is_partial)
            .where(CheckpointRow.job_id == job_id)
            .order_by(CheckpointRow.id)
        ).all()

    @classmethod
    def _apply_retention(
        cls, session: Session, job_id: str, keep: int, ranking: Ranking | None
    ) -> None:
        existing = cls._scored_checkpoints(session, job_id)
        if len(existing) <= keep:
            return
        kept = {row.id for row in existing[-max(keep, 1) :]}
        # A partial checkpoint repeats the metrics of the epoch end before it: counted among
        # the latest, it must not push out that epoch end ("epoch/N") or the best.
        whole = [row for row in existing if not row.is_partial]
        best = best_checkpoint(whole, ranking)
        if best is not None:
            kept.update((whole[-1].id, best.id))
        doomed = [row.id for row in existing if row.id not in kept]
        session.execute(
            delete(CheckpointBlobRow).where(CheckpointBlobRow.checkpoint_id.in_(doomed))
        )
        session.execute(delete(CheckpointRow).where(CheckpointRow.id.in_(doomed)))

    def finish_job(
        self,
        claim: Claim,
        state: JobState,
        error: str = "",
        progress: dict[str, float] | None = None,
    ) -> Job:
        """Moves a claimed job to a final state and drops its lease (one fenced statement);
        `progress` None keeps the stored progress."""
        params = {
            "p_id": claim.job.id,
            "p_token": claim.token,
            "p_state": state.value,
            "p_error": error,
            "p_progress": progress,
            **_now_params(self.db.is_sqlite),
        }
        with self.db.write() as session:
            row = session.execute(self._finish, params).first()
            if row is None:
                raise LeaseLost(f"jobs/{claim.job.id} is no longer held by this worker")
            message = error or state.value.lower()
            shown = shown_progress(row.training, row.progress)
            self._append_event(session, row.id, row.state, row.attempt, message, shown, row.metrics)
            return _job(row)

    def release_job(self, claim: Claim) -> JobState:
        """Hands a running job back to the queue (worker shutting down); not a failed attempt.

        A job asked to cancel meanwhile (its worker stopped before it saw the request) is
        CANCELLED instead, as `rescue_expired` does. Returns the state the job is left in.
        """
        with self.db.write() as session:
            row = self._held_row(session, claim)
            now = self._read_now(session)
            row.worker_id = None
            row.lease_token = None
            row.lease_expires_at = None
            row.updated_at = now
            if row.state == JobState.CANCELLING.value:
                row.state = JobState.CANCELLED.value
                row.error = CANCELLED_BY_REQUEST
                row.ended_at = now
                self._event_for(session, row, row.error)
                return JobState.CANCELLED
            row.state = JobState.QUEUED.value
            row.attempt = max(0, row.attempt - 1)
            self._event_for(session, row, "handed back by a worker shutting down; resumes later")
            self._notify(session, JOBS_CHANNEL, row.queue)
            return JobState.QUEUED

    # --- workers and the deployment's state --------------------------------------------------

    def worker_seen(
        self,
        worker_id: str,
        host: str,
        pid: int,
        queues: Sequence[str],
        current_job_id: str | None,
        jobs_done: int,
    ) -> None:
        """Records that a worker is alive (one upsert), by the database's clock: a worker
        whose host clock is ahead would otherwise count as alive for that long after it died,
        and one behind as lost while it works."""
        now = self._db_now()
        row = {
            "id": worker_id,
            "host": host,
            "pid": pid,
            "queues": list(queues),
            "current_job_id": current_job_id,
            "jobs_done": jobs_done,
            "started_at": now,
            "last_seen_at": now,
            "stopped_at": None,
        }
        dialect_insert = sqlite.insert if self.db.is_sqlite else postgresql.insert
        statement = dialect_insert(WorkerRow).values(row)
        statement = statement.on_conflict_do_update(
            index_elements=["id"],
            set_={
                key: statement.excluded[key]
                for key in ("current_job_id", "jobs_done", "last_seen_at", "stopped_at")
            },
        )
        with self.db.write() as session:
            session.execute(statement)

    def worker_stopped(self, worker_id: str, jobs_done: int | None = None) -> None:
        """Marks a worker stopped, with no current job and, given, its final `jobs_done`."""
        values: dict[str, Any] = {"stopped_at": self._db_now(), "current_job_id": None}
        if jobs_done is not None:
            values["jobs_done"] = jobs_done
        with self.db.write() as session:
            session.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(values))

    def queue_depth(self) -> list[tuple[str, str, int]]:
        """(state, queue, number of jobs) for every state and queue that has jobs."""
        with self.db.read() as session:
            rows = session.execute(
                select(JobRow.state, JobRow.queue, func.count())
                .group_by(JobRow.state, JobRow.queue)
                .order_by(JobRow.state, JobRow.queue)
            ).all()
        return [(state, queue, int(count)) for state, queue, count in rows]

    def workers(self) -> list[dict[str, Any]]:
        """Every worker ever seen, each with `seen_s_ago`: the seconds since it was last seen,
        measured by the clock it was seen by (`_db_now`), not the reader's."""
        with self.db.read() as session:
            now = self._read_now(session)
            rows = session.scalars(select(WorkerRow).order_by(WorkerRow.started_at)).all()
            return [
                {
                    "id": r.id,
                    "host": r.host,
                    "pid": r.pid,
                    "queues": list(r.queues or []),
                    "current_job": r.current_job_id,
                    "jobs_done": r.jobs_done,
                    "started_at": _aware(r.started_at),
                    "last_seen_at": _aware(r.last_seen_at),
                    "stopped_at": _aware(r.stopped_at),
                    "seen_s_ago": (now - _aware(r.last_seen_at)).total_seconds(),  # type: ignore[operator]
                }
                for r in rows
            ]

    def recent_failures(self, limit: int = 5) -> list[Job]:
        """The newest failed jobs, read from the partial index ix_jobs_failed in order. SQLite
        without statistics took ix_jobs_lease for `state = 'FAILED'` and sorted every failure
        of the deployment's history: `likely()` turns it to the partial index, as the claim."""
        failed = func.likely(FAILED_ONLY) if self.db.is_sqlite else FAILED_ONLY
        with self.db.read() as session:
            rows = session.scalars(
                select(JobRow).where(failed).order_by(JobRow.ended_at.desc()).limit(limit)
            ).all()
            return [_job(row) for row in rows]

    # --- API keys ---------------------------------------------------------------------------

    def create_api_key(self, project: str, name: str = "") -> NewKey:
        """A new key for `project`; its secret is returned once and stored only as a hash. `name`,
        a note that `keys list` shows, is held to what a user's names are (no control character,
        at most what its column holds)."""
        check_text("name", name, MAX_NAME_LENGTH)
        key_id, secret = new_secret()
        salt = os.urandom(16)
        with self.db.write() as session:
            session.add(
                ApiKeyRow(
                    id=key_id,
                    project=check_project_name(project),
                    name=name,
                    salt=salt,
                    secret_hash=hash_secret(salt, secret),
                    created_at=self._read_now(session),
                    revoked_at=None,
                )
            )
        return NewKey(key_id, project, format_key(key_id, secret))

    def list_api_keys(self) -> list[dict[str, Any]]:
        with self.db.read() as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()
            return [
                {
                    "id": row.id,
                    "project": row.project,
                    "name": row.name,
                    "created_at": _aware(row.created_at),
                    "revoked_at": _aware(row.revoked_at),
                }
                for row in rows
            ]

    def revoke_api_key(self, key_id: str) -> datetime | None:
        """Revokes the key; returns when it was revoked before, None if it was active."""
        with self.db.write() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"API key {key_id} does not exist")
            earlier = _aware(row.revoked_at)
            row.revoked_at = row.revoked_at or self._read_now(session)
            return earlier

    def active_api_keys(self) -> list[KeyRecord]:
        with self.db.read() as session:
            rows = session.scalars(select(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None))).all()
            return [KeyRecord(r.id, r.project, bytes(r.salt), bytes(r.secret_hash)) for r in rows]

    def any_api_key_created(self) -> bool:
        """Whether a key was ever created: a row exists, active or revoked (none is deleted)."""
        with self.db.read() as session:
            return session.scalar(select(ApiKeyRow.id).limit(1)) is not None

    # --- checkpoints --------------------------------------------------------------------------

    def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        """Every checkpoint of the job, oldest first (for the server's own use: ListCheckpoints
        answers a page at a time, `checkpoints_page`)."""
        with self.db.read() as session:
            rows = session.scalars(
                select(CheckpointRow)
                .where(CheckpointRow.job_id == job_id)
                .order_by(CheckpointRow.id)
            ).all()
            return [_checkpoint(row) for row in rows]

    def checkpoints_page(
        self,
        job_id: str,
        page_size: int,
        page_token: str,
        fits: Callable[[int | None], Fits] | None = None,
    ) -> tuple[list[Checkpoint], int | None, str]:
        """A page of the job's checkpoints, oldest first, the id of the job's best checkpoint
        (`best_checkpoint` of all of them, on this page or not; None if none is), and the next
        page's token ("" after the last). `fits(best id)` may end the page early (see
        `_with_next_token`). Keyset-paginated on the checkpoint id, read by the index on
        (job_id, id): a job an older server kept tens of thousands of checkpoints of passed
        the message limit in one answer, and its listing failed for good.

        The best is judged once, at the listing's first page, and its token carries it to the
        next ones: judged again on each page, a better checkpoint saved meanwhile (a job still
        training) was flagged beside the one an earlier page had flagged, or neither was (and
        every page read every checkpoint's metrics again). Retention never deletes the best."""
        size = page_size_of(page_size, CHECKPOINT_PAGE_SIZE, CHECKPOINT_PAGE_SIZE)
        scope = page_scope("checkpoints", job_id)
        query = select(CheckpointRow).where(CheckpointRow.job_id == job_id)
        with self.db.read() as session:
            if page_token:
                best_text, after = decode_key_page_token(page_token, scope)
                best_id = _best_of_token(best_text)
                query = query.where(CheckpointRow.id > after)
            else:
                training = session.scalar(select(JobRow.training).where(JobRow.id == job_id))
                ranking = best_ranking(training or {})
                best = best_checkpoint(self._scored_checkpoints(session, job_id), ranking)
                best_id = None if best is None else int(best.id)
            rows = session.scalars(query.order_by(CheckpointRow.id).limit(size + 1)).all()
            items = [_checkpoint(row) for row in rows]
        page, token = self._with_next_token(
            items,
            size,
            scope,
            None if fits is None else fits(best_id),
            position=lambda last: ("" if best_id is None else str(best_id), last.id),
        )
        return page, best_id, token

    def latest_resumable_checkpoint(self, job_id: str) -> Checkpoint | None:
        """The newest checkpoint with the full training state (final ones hold weights only)."""
        with self.db.read() as session:
            row = session.scalar(
                select(CheckpointRow)
                .where(CheckpointRow.job_id == job_id, CheckpointRow.is_final.is_(False))
                .order_by(CheckpointRow.id.desc())
                .limit(1)
            )
            return None if row is None else _checkpoint(row)

    def final_checkpoint(self, job_id: str) -> Checkpoint | None:
        """The job's final checkpoint, if one is stored: the job was then trained to its end."""
        with self.db.read() as session:
            row = session.scalar(
                select(CheckpointRow)
                .where(CheckpointRow.job_id == job_id, CheckpointRow.is_final.is_(True))
                .order_by(CheckpointRow.id)
                .limit(1)
            )
            return None if row is None else _checkpoint(row)

    def checkpoint_data(self, checkpoint_id: int) -> bytes:
        """A checkpoint's stored bytes, whole (`checkpoint_state` reads its arrays without
        them)."""
        return self._read_blob(CheckpointBlobRow, checkpoint_id, _joined)

    def checkpoint_state(
        self, checkpoint_id: int, keep: Callable[[str], bool] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """A checkpoint's arrays and metadata, its bytes read a piece at a time (`_read_blob`);
        only the arrays whose names `keep` keeps, given it (`read_state`)."""
        return self._read_blob(
            CheckpointBlobRow,
            checkpoint_id,
            lambda pieces, size: read_state(pieces, size, None, keep),
        )

    def metric_names(self, job_id: str) -> list[str]:
        """The names the job has recorded points of, in order."""
        query = (
            select(MetricRow.name)
            .where(MetricRow.job_id == job_id)
            .distinct()
            .order_by(MetricRow.name)
        )
        with self.db.read() as session:
            return list(session.scalars(query))

    def metric_values(
        self,
        job_id: str,
        names: Sequence[str] = (),
        after: tuple[str, int] | None = None,
        limit: int | None = None,
    ) -> list[MetricValue]:
        """The job's values in (name, step) order (its key), of `names` only when given, after
        the (name, step) `after` and at most `limit`: a page of ListJobMetrics."""
        query = select(MetricRow.name, MetricRow.step, MetricRow.epoch, MetricRow.value).where(
            MetricRow.job_id == job_id
        )
        if names:
            query = query.where(MetricRow.name.in_(names))
        if after is not None:
            # A row-value comparison, which both databases read as a range of the (job_id, name,
            # step) key: the equivalent `name > n OR (name = n AND step > s)` was a filter on
            # PostgreSQL (a page 150,000 points in scanned and dropped them all, 54 ms) and a
            # range on `name` alone on SQLite (the current metric rescanned from its first
            # step). SQLite has row values since 3.15; the upserts' RETURNING needs 3.35.
            query = query.where(tuple_(MetricRow.name, MetricRow.step) > after)
        query = query.order_by(MetricRow.name, MetricRow.step).limit(limit)
        with self.db.read() as session:
            # Through the connection: the session's ORM result handling took as long again as
            # the fetch for a page of 190,000 plain rows.
            rows = session.connection().execute(query).all()
        return list(starmap(MetricValue, rows))
