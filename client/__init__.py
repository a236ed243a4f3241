"""The Trainwire Python SDK: upload datasets, submit and follow training jobs, predict.

from trainwire.client import Client
with Client("localhost:50051") as client:
    data = client.upload_dataset(X, y, name="iris")
    job = client.create_job(data, {"layers": [{"type": "dense", "units": 16,
                                               "activation": "relu"},
                                              {"type": "dense", "units": 3}]}, epochs=50)
    job.wait(progress=True)
    print(job.predict(X[:5]).labels)
"""

from .client import Client, DatasetInfo, Job, JobStatus, Prediction
from .errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    JobFailed,
    NotFound,
    ResourceExhausted,
    TrainwireError,
    Unavailable,
    Unimplemented,
)

__all__ = [
    "Client",
    "DatasetInfo",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "Job",
    "JobFailed",
    "JobStatus",
    "NotFound",
    "Prediction",
    "ResourceExhausted",
    "TrainwireError",
    "Unavailable",
    "Unimplemented",
]
