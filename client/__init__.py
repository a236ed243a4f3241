"""The Trainwire Python SDK: upload datasets, submit and follow training jobs, predict.

    from trainwire.client import Client, Dense, Dropout, Sequential

    with Client.from_env() as client:  # TRAINWIRE_TARGET, TRAINWIRE_API_KEY
        data = client.upload_dataset(X, y, name="iris")  # content-addressed: re-uploads are free
        model = Sequential([Dense(16, activation="relu"), Dropout(0.1), Dense(3)])
        job = client.create_job(data, model, epochs=50, metrics=["accuracy"])
        job.wait(progress=True)
        print(job.predict(X[:5]).labels)
        job.plot("curves.png")

`trainwire.client.aio.AsyncClient` offers the same surface for asyncio.
"""

from .builders import Activation, BatchNorm, Dense, Dropout, Sequential
from .client import Client, DatasetInfo, Job, JobStatus, JobWatch, Prediction
from .errors import (
    AlreadyExists,
    Cancelled,
    ClientClosed,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    JobFailed,
    NoMetrics,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SpecError,
    TimedOut,
    TrainwireError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from .jobspec import JobSpec
from .results import Checkpoint, JobEvent, Metrics, ModelInfo
from .retry import RetryPolicy

__all__ = [
    "Activation",
    "AlreadyExists",
    "BatchNorm",
    "Cancelled",
    "Checkpoint",
    "Client",
    "ClientClosed",
    "DatasetInfo",
    "DeadlineExceeded",
    "Dense",
    "Dropout",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Job",
    "JobEvent",
    "JobFailed",
    "JobSpec",
    "JobStatus",
    "JobWatch",
    "Metrics",
    "ModelInfo",
    "NoMetrics",
    "NotFound",
    "PermissionDenied",
    "Prediction",
    "ResourceExhausted",
    "RetryPolicy",
    "Sequential",
    "SpecError",
    "TimedOut",
    "TrainwireError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]
