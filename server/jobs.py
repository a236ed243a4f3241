"""The job service: validates and enqueues training jobs, and reads them back."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from trainwire.client.specs import model_spec_from_proto, model_spec_to_proto
from trainwire.engine import Model
from trainwire.engine.errors import quoted
from trainwire.engine.model import SpecSummary
from trainwire.v1 import jobs_pb2

from .config import Settings
from .convert import STATES_FROM_PROTO
from .errors import InvalidArgument, ResourceExhausted
from .names import MAX_LABELS, check_text, enum_received, parse_name
from .records import (
    Checkpoint,
    Dataset,
    Job,
    JobEvent,
    JobState,
    MetricValue,
    NewJob,
    TaskKind,
)
from .store import (
    Fits,
    Store,
    decode_key_page_token,
    encode_page_token,
    page_scope,
    same_request_or_refuse,
)
from .training import (
    check_loss_fits_targets,
    check_metrics_fit_targets,
    check_model_fits_dataset,
    check_monitors_are_logged,
    check_output_activation,
    describe_model,
    largest_pass_rows,
    logged_metric_names,
    normalised_training,
    training_from_proto,
    validation_trainer,
)

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_LABEL_LENGTH = 256
MAX_REQUEST_ID = 128
MAX_ATTEMPTS_LIMIT = 100
# The most a point of a MetricSeries takes: its step as a varint of up to 9 bytes (steps are
# never negative), its epoch up to 5, its value 8; and of a series, its tag and length, its
# name's, and its three packed arrays' (its name's bytes come on top).
METRIC_POINT_BYTES = 22
METRIC_SERIES_BYTES = 32
# How often a watch looks for new events of a running job.
WATCH_POLL_S = 0.2


class JobService:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def create(self, request: jobs_pb2.CreateJobRequest, project: str) -> Job:
        # A retry gets the job its request_id created before the limits and the dataset are
        # checked: the limits may have been lowered, or the dataset deleted, since that job was
        # accepted.
        check_text("request_id", request.request_id, MAX_REQUEST_ID)
        if request.request_id:
            existing = self.store.job_by_request_id(request.request_id, project)
            if existing is not None:
                return same_request_or_refuse(self._as_retry_of(existing, request), existing)
        dataset_id = parse_name(request.dataset, "datasets", "dataset")
        dataset = self.store.get_dataset(dataset_id, project)
        if request.model.input_dim < 0:
            raise InvalidArgument.field(
                "model.input_dim", f"must not be negative. Received: {request.model.input_dim}"
            )
        if not request.model.layers:
            raise InvalidArgument.field("model.layers", "a model needs at least one layer")
        training, model = self._training_and_model(request, dataset)
        if training["epochs"] > self.settings.max_epochs:
            raise ResourceExhausted.limit(
                "max_epochs", self.settings.max_epochs, training["epochs"]
            )
        if model.num_parameters > self.settings.max_parameters:
            raise ResourceExhausted.limit(
                "max_parameters", self.settings.max_parameters, model.num_parameters
            )
        self._check_batch_bytes(model, training, dataset)
        check_model_fits_dataset(model, training, dataset)
        check_output_activation(model, training, dataset)
        trainer = validation_trainer(model, training)
        check_loss_fits_targets(trainer, dataset)
        check_metrics_fit_targets(trainer, dataset)
        check_monitors_are_logged(trainer, training, dataset)
        _check_spec_round_trips(model.spec)
        _check_spec_fits_answers(model.spec, self.settings)
        check_labels("labels", request.labels)
        check_text("display_name", request.display_name, MAX_LABEL_LENGTH)
        queue = request.queue or "default"
        if not QUEUE_NAME.match(queue):
            raise InvalidArgument.field(
                "queue",
                f"must be 1-64 letters, digits, '_', '.' or '-'. Received: {quoted(queue)}",
            )
        if not 0 <= request.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise InvalidArgument.field(
                "max_attempts",
                f"must be in [0, {MAX_ATTEMPTS_LIMIT}]. Received: {request.max_attempts}",
            )
        return self.store.create_job(
            NewJob(
                dataset_id=dataset.id,
                model_spec=model.spec,
                training=training,
                project=project,
                target=dataset.target(),
                display_name=request.display_name,
                labels=dict(request.labels),
                queue=queue,
                priority=request.priority,
                max_attempts=request.max_attempts or self.settings.default_max_attempts,
                request_id=request.request_id or None,
            )
        )

    def _as_retry_of(self, job: Job, request: jobs_pb2.CreateJobRequest) -> NewJob:
        """`request` normalised as `create` would store it, with what it took from its dataset
        (input width, task) read from `job`: that dataset may be gone since."""
        task = TaskKind(job.target["task"]) if "task" in job.target else None
        return NewJob(
            dataset_id=parse_name(request.dataset, "datasets", "dataset"),
            model_spec=describe_model(
                model_spec_from_proto(request.model, job.model_spec["input_dim"])
            ).spec,
            # Only a job from before targets were kept, its dataset deleted, lacks a task: what
            # its training's defaults were is unknown, so its training is not compared.
            training=job.training
            if task is None
            else normalised_training(request.training, task, strict=False),
            project=job.project,
            display_name=request.display_name,
            labels=dict(request.labels),
            queue=request.queue or "default",
            priority=request.priority,
            # 0 asks for the default the server had when it created the job: a retry may reach
            # a restarted server, or another one, whose default differs.
            max_attempts=request.max_attempts or job.max_attempts,
            request_id=request.request_id,
        )

    def _training_and_model(
        self, request: jobs_pb2.CreateJobRequest, dataset: Dataset
    ) -> tuple[dict[str, Any], SpecSummary]:
        """The request's normalised training settings and its model's description. A mistake
        in each is reported together: a caller without the SDK's local checks (another
        language) needed a round trip per mistake."""
        problems: list[InvalidArgument] = []
        training: dict[str, Any] = {}
        try:
            training = training_from_proto(request.training, dataset)
        except InvalidArgument as error:
            problems.append(error)
        try:
            # Described, never built: the model is allocated by the worker that trains it.
            model = describe_model(model_spec_from_proto(request.model, dataset.num_features))
        except InvalidArgument as error:
            problems.append(error)
        if problems:
            raise InvalidArgument.joined(problems)
        return training, model

    def _check_batch_bytes(
        self, model: SpecSummary, training: dict[str, Any], dataset: Dataset
    ) -> None:
        """The largest activation batch the job's training holds (its largest pass's rows times
        the widest layer, input included) must fit `max_batch_bytes`: max_parameters bounds the
        weights, not the activations, and a wide layer over a big batch was OOM-killed at the
        worker, rescued and retried up to max_attempts."""
        rows = largest_pass_rows(training, dataset)
        width = max(model.widths)
        itemsize = np.dtype(training["dtype"]).itemsize
        needed = rows * width * itemsize
        if needed > self.settings.max_batch_bytes:
            raise ResourceExhausted.limit(
                "max_batch_bytes",
                self.settings.max_batch_bytes,
                needed,
                f"{rows} rows in a pass x {width} units in the widest layer x {itemsize} bytes",
            )

    def get(self, name: str, project: str) -> Job:
        return self.store.get_job(parse_name(name, "jobs", "name"), project)

    def cancel(self, name: str, project: str) -> Job:
        return self.store.cancel_job(parse_name(name, "jobs", "name"), project)

    def delete(self, name: str, project: str) -> str:
        """Deletes a finished job; returns its id (so caches can forget it)."""
        job_id = parse_name(name, "jobs", "name")
        self.store.delete_job(job_id, project)
        return job_id

    def list_jobs(
        self, request: jobs_pb2.ListJobsRequest, project: str, fits: Fits | None = None
    ) -> tuple[list[Job], str]:
        state: JobState | None = None
        if request.state:
            if request.state not in STATES_FROM_PROTO:
                raise InvalidArgument.field(
                    "state",
                    "is not a known JobState. "
                    f"Received: {enum_received(jobs_pb2.JobState, request.state)}",
                )
            state = STATES_FROM_PROTO[request.state]
        dataset_id = parse_name(request.dataset, "datasets", "dataset") if request.dataset else None
        created_before = None
        if request.HasField("created_before"):
            created_before = _instant("created_before", request.created_before)
        return self.store.list_jobs(
            request.page_size,
            request.page_token,
            state,
            dataset_id,
            dict(request.labels),
            project,
            fits,
            created_before,
        )

    def watched_job(self, name: str, after: int, project: str) -> str:
        """The id of the job a watch names, checked to exist; the watch starts after `after`,
        which must be a number the job's events reached (a reconnecting watch resumes after
        the last one it received)."""
        job_id = parse_name(name, "jobs", "name")
        if after < 0:
            raise InvalidArgument.field(
                "after_sequence", f"must not be negative. Received: {after}"
            )
        self.store.get_job(job_id, project)
        # Beyond the last event, a running job's watch stayed silent until its deadline and a
        # finished job's ended at once, as if it had caught up.
        last = self.store.last_event_sequence(job_id) if after else 0
        if after > last:
            raise InvalidArgument.field(
                "after_sequence",
                f"is beyond {name}'s last event, number {last}. Received: {after}; send the "
                "sequence of the last event a watch returned, or 0 for all of them",
            )
        return job_id

    def new_events(self, job_id: str, after: int, project: str) -> tuple[list[JobEvent], bool]:
        """One look at a watched job: its events after `after`, and whether the watch is over
        (the job finished and every event was seen). Never waits: the caller polls every
        `WATCH_POLL_S` while nothing is new."""
        batch = self.store.job_events(job_id, after)
        if batch:
            return batch, False
        if self.store.get_job(job_id, project).state.is_finished:
            # One last look: the final event is written with the final state.
            tail = self.store.job_events(job_id, after)
            return tail, not tail
        return [], False

    def metrics(
        self, request: jobs_pb2.ListJobMetricsRequest, project: str
    ) -> tuple[dict[str, list[MetricValue]], str]:
        """One page of the job's metrics, each series in step order, and the next page's token:
        a job logging every step had more points than one answer could carry (250,000 made
        3.1 MB), so they are paged by (name, step), each page as many as fit in an answer."""
        job_id = parse_name(request.name, "jobs", "name")
        if request.page_size < 0:
            raise InvalidArgument.field(
                "page_size", f"must not be negative. Received: {request.page_size}"
            )
        for index, metric in enumerate(request.metric_names):
            # They reach the query, where a NUL failed on PostgreSQL (INTERNAL).
            check_text(f"metric_names[{index}]", metric, MAX_LABEL_LENGTH)
        # A token continues only its own job's listing of the same metrics: another's position
        # skipped the points before it.
        scope = page_scope("metrics", job_id, sorted(request.metric_names))
        after = decode_key_page_token(request.page_token, scope) if request.page_token else None
        job = self.store.get_job(job_id, project)
        self._check_metric_names(job, request.metric_names)
        budget = self.settings.max_answer_bytes()
        most = budget // METRIC_POINT_BYTES
        if request.page_size:
            most = min(most, request.page_size)
        # One more than a page holds tells whether another follows.
        values = self.store.metric_values(job_id, list(request.metric_names), after, most + 1)
        count = min(most, _points_that_fit(values, budget))
        token = ""
        if count < len(values):
            if not request.page_size:
                raise ResourceExhausted(
                    "page_size: 0 asks for every point in one answer, which is limited to "
                    f"{count} points by max_message_bytes ({self.settings.max_message_bytes}); "
                    f"jobs/{job_id} has more: set page_size and follow next_page_token, as the "
                    "SDK's job_metrics does"
                )
            last = values[count - 1]
            token = encode_page_token((last.name, last.step), scope)
        series: dict[str, list[MetricValue]] = {}
        for value in values[:count]:
            series.setdefault(value.name, []).append(value)
        return series, token

    def _check_metric_names(self, job: Job, names: Sequence[str]) -> None:
        """Each name must be one the job's training logs (it may have no point yet) or one it
        has points of: an unknown name answered no points, as one not logged yet does, and the
        CLI read every point of the job to say which names it has."""
        if not names:  # every metric: nothing to judge, and no trainer to build for it
            return
        try:
            logged = logged_metric_names(job)
        except (InvalidArgument, ValueError, KeyError):
            # A job an older server stored whose training no longer builds: its listing must
            # not fail for that; the names it has points of judge alone.
            logged = set()
        if all(name in logged for name in names):
            return
        known = sorted(logged.union(self.store.metric_names(job.id)))
        for index, name in enumerate(names):
            if name not in known:
                raise InvalidArgument.field(
                    f"metric_names[{index}]",
                    f"jobs/{job.id} has no metric {quoted(name)}; its metrics: {', '.join(known)}",
                )

    def checkpoints(
        self,
        request: jobs_pb2.ListCheckpointsRequest,
        project: str,
        fits: Callable[[int | None], Fits] | None = None,
    ) -> tuple[list[Checkpoint], int | None, str]:
        """A page of the job's checkpoints, the id of its best and the next page's token (see
        `Store.checkpoints_page`)."""
        job_id = parse_name(request.name, "jobs", "name")
        self.store.get_job(job_id, project)
        return self.store.checkpoints_page(job_id, request.page_size, request.page_token, fits)


def _points_that_fit(values: list[MetricValue], max_bytes: int) -> int:
    """How many of `values`, in (name, step) order, fit in a ListJobMetrics answer of
    `max_bytes`: each point at its widest, each series with its name and framing."""
    used = 0
    previous = None
    for count, value in enumerate(values):
        used += METRIC_POINT_BYTES
        if value.name != previous:
            used += METRIC_SERIES_BYTES + len(value.name.encode())
            previous = value.name
        if used > max_bytes:
            return count
    return len(values)


def max_model_bytes(settings: Settings) -> int:
    """The most a job's model may take of an answer that shows the job: half of it, the rest
    left for its labels, training and the like."""
    return settings.max_answer_bytes() // 2


def _check_spec_fits_answers(spec: dict[str, Any], settings: Settings) -> None:
    """Every answer about the job shows its stored (normalised) spec, which can be many times
    the request's size: 120,000 dense layers sent in 720 KB were stored, then made every
    GetJob, CancelJob and ListJobs page that showed the job fail for the message limit."""
    shown = model_spec_to_proto(spec).ByteSize()
    limit = max_model_bytes(settings)
    if shown > limit:
        raise ResourceExhausted.limit(
            "model.layers",
            limit,
            shown,
            "bytes of the normalised model every answer about the job shows: half of "
            "max_message_bytes less framing; send fewer layers or raise "
            "TRAINWIRE_MAX_MESSAGE_BYTES",
        )


def _check_spec_round_trips(spec: dict[str, Any]) -> None:
    """Every answer that shows the job (CreateJob, GetJob, ListJobs, CancelJob, model metadata)
    turns its stored spec back into a ModelSpec: a spec that cannot be shown, or is shown as
    another model, is refused here, not stored to make those answers fail for good."""
    try:
        shown = model_spec_to_proto(spec)
        again = Model.describe_spec(model_spec_from_proto(shown, spec["input_dim"])).spec
    except ValueError as error:
        raise InvalidArgument.field(
            "model", f"normalises to a spec a ModelSpec cannot express: {error}"
        ) from None
    if again != spec:
        raise InvalidArgument.field(
            "model",
            f"normalises to a spec a ModelSpec does not express faithfully: {spec} is shown "
            f"as {again}",
        )


def _instant(field: str, stamp: Timestamp) -> datetime:
    """A request's time, aware (UTC); InvalidArgument naming `field` if protobuf's range of
    times (years 1 to 9999, nanos under a second) does not hold it."""
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except ValueError as error:
        raise InvalidArgument.field(field, f"is not a time a Timestamp holds: {error}") from None


def check_labels(field: str, labels: Mapping[str, str]) -> None:
    """The labels of a job or of a dataset (`field` names them): both follow this one rule."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument.field(field, f"at most {MAX_LABELS} labels. Received: {len(labels)}")
    for key, value in labels.items():
        if not key:
            raise InvalidArgument.field(field, "label keys must not be empty")
        check_text(field, key, MAX_LABEL_LENGTH)
        check_text(f"{field}[{quoted(key)}]", value, MAX_LABEL_LENGTH)
