"""The job service: validates and enqueues training jobs, and reads them back."""

from __future__ import annotations

import re

from trainwire.v1 import jobs_pb2

from .config import Settings
from .convert import STATES_FROM_PROTO, model_spec_from_proto
from .errors import InvalidArgument, ResourceExhausted
from .names import parse_name
from .records import Job, JobState, NewJob
from .store import Store
from .training import (
    build_model,
    build_trainer,
    check_model_fits_dataset,
    training_from_proto,
)

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_LABELS = 64
MAX_LABEL_LENGTH = 256
MAX_REQUEST_ID = 128
MAX_ATTEMPTS_LIMIT = 100


class JobService:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def create(self, request: jobs_pb2.CreateJobRequest) -> Job:
        dataset = self.store.get_dataset(parse_name(request.dataset, "datasets", "dataset"))
        if request.model.input_dim < 0:
            raise InvalidArgument.field(
                "model.input_dim", f"must not be negative. Received: {request.model.input_dim}"
            )
        if not request.model.layers:
            raise InvalidArgument.field("model.layers", "a model needs at least one layer")
        training = training_from_proto(request.training, dataset)
        if training["epochs"] > self.settings.max_epochs:
            raise ResourceExhausted.limit(
                "max_epochs", self.settings.max_epochs, training["epochs"]
            )
        spec = model_spec_from_proto(request.model, dataset.num_features)
        model = build_model(spec, training)
        check_model_fits_dataset(model, training, dataset)
        if model.num_parameters > self.settings.max_parameters:
            raise ResourceExhausted.limit(
                "max_parameters", self.settings.max_parameters, model.num_parameters
            )
        build_trainer(model, training)
        _check_labels(dict(request.labels))
        queue = request.queue or "default"
        if not QUEUE_NAME.match(queue):
            raise InvalidArgument.field(
                "queue", f"must be 1-64 letters, digits, '_', '.' or '-'. Received: {queue!r}"
            )
        if len(request.request_id) > MAX_REQUEST_ID:
            raise InvalidArgument.field(
                "request_id", f"must be at most {MAX_REQUEST_ID} characters"
            )
        if not 0 <= request.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise InvalidArgument.field(
                "max_attempts",
                f"must be in [0, {MAX_ATTEMPTS_LIMIT}]. Received: {request.max_attempts}",
            )
        if len(request.display_name) > MAX_LABEL_LENGTH:
            raise InvalidArgument.field(
                "display_name", f"must be at most {MAX_LABEL_LENGTH} characters"
            )
        return self.store.create_job(
            NewJob(
                dataset_id=dataset.id,
                model_spec=model.to_spec(),
                training=training,
                display_name=request.display_name,
                labels=dict(request.labels),
                queue=queue,
                priority=request.priority,
                max_attempts=request.max_attempts or self.settings.default_max_attempts,
                request_id=request.request_id or None,
            )
        )

    def get(self, name: str) -> Job:
        return self.store.get_job(parse_name(name, "jobs", "name"))

    def cancel(self, name: str) -> Job:
        return self.store.cancel_job(parse_name(name, "jobs", "name"))

    def list(self, request: jobs_pb2.ListJobsRequest) -> tuple[list[Job], str]:
        state: JobState | None = None
        if request.state:
            if request.state not in STATES_FROM_PROTO:
                raise InvalidArgument.field(
                    "state", f"is not a known JobState. Received: {request.state}"
                )
            state = STATES_FROM_PROTO[request.state]
        dataset_id = parse_name(request.dataset, "datasets", "dataset") if request.dataset else None
        return self.store.list_jobs(
            request.page_size, request.page_token, state, dataset_id, dict(request.labels)
        )


def _check_labels(labels: dict[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument.field(
            "labels", f"at most {MAX_LABELS} labels. Received: {len(labels)}"
        )
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_LENGTH or len(value) > MAX_LABEL_LENGTH:
            raise InvalidArgument.field(
                f"labels[{key[:40]!r}]",
                f"keys must be 1-{MAX_LABEL_LENGTH} characters and values at most "
                f"{MAX_LABEL_LENGTH}",
            )
