"""gRPC servicers: convert the request, call a service, convert the result. Nothing else.

Errors raised by the services are mapped to statuses by `server.interceptors.ErrorInterceptor`.
RPCs not overridden here answer UNIMPLEMENTED through the generated base classes.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from trainwire.client.tensors import to_tensor
from trainwire.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    predictions_pb2,
    predictions_pb2_grpc,
)

from .convert import checkpoint_name, dataset_to_proto, job_to_proto
from .datasets import DatasetService
from .jobs import JobService
from .predictions import PredictionService


class DatasetServicer(datasets_pb2_grpc.DatasetServiceServicer):
    def __init__(self, datasets: DatasetService) -> None:
        self.datasets = datasets

    def UploadDataset(
        self,
        request_iterator: Iterator[datasets_pb2.UploadDatasetRequest],
        context: grpc.ServicerContext,
    ) -> datasets_pb2.Dataset:
        return dataset_to_proto(self.datasets.upload(request_iterator))

    def GetDataset(
        self, request: datasets_pb2.GetDatasetRequest, context: grpc.ServicerContext
    ) -> datasets_pb2.Dataset:
        return dataset_to_proto(self.datasets.get(request.name))

    def ListDatasets(
        self, request: datasets_pb2.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> datasets_pb2.ListDatasetsResponse:
        items, token = self.datasets.list(request.page_size, request.page_token)
        return datasets_pb2.ListDatasetsResponse(
            datasets=[dataset_to_proto(d) for d in items], next_page_token=token
        )


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs

    def CreateJob(
        self, request: jobs_pb2.CreateJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.Job:
        return job_to_proto(self.jobs.create(request))

    def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.Job:
        return job_to_proto(self.jobs.get(request.name))

    def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.Job:
        return job_to_proto(self.jobs.cancel(request.name))

    def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        items, token = self.jobs.list(request)
        return jobs_pb2.ListJobsResponse(
            jobs=[job_to_proto(j) for j in items], next_page_token=token
        )


class PredictionServicer(predictions_pb2_grpc.PredictionServiceServicer):
    def __init__(self, predictions: PredictionService) -> None:
        self.predictions = predictions

    def Predict(
        self, request: predictions_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predictions_pb2.PredictResponse:
        result = self.predictions.predict(request.job, request.checkpoint, request.inputs)
        response = predictions_pb2.PredictResponse(
            checkpoint=checkpoint_name(result.checkpoint), outputs=to_tensor(result.outputs)
        )
        if result.probabilities is not None and result.labels is not None:
            response.probabilities.CopyFrom(to_tensor(result.probabilities))
            response.labels.CopyFrom(to_tensor(result.labels))
        return response
