"""Typed callables for every Trainwire RPC on a sync or asyncio channel.

The generated `*_pb2_grpc` stubs are untyped; these are built from the channel with the
messages' own (de)serializers, so each call is checked by mypy end to end.
"""

from __future__ import annotations

import binascii
import os
import re
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from trainwire.v1 import datasets_pb2, jobs_pb2, predictions_pb2

Q = TypeVar("Q", bound=Message)
R = TypeVar("R", bound=Message)

DATASETS = "/trainwire.v1.DatasetService/"
JOBS = "/trainwire.v1.JobService/"
PREDICTIONS = "/trainwire.v1.PredictionService/"


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class Rpc:
    """The RPCs on a sync channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        def uu(path: str, _: type[Q], response: type[R]) -> grpc.UnaryUnaryMultiCallable[Q, R]:
            method: grpc.UnaryUnaryMultiCallable[Q, R] = channel.unary_unary(
                path, _serialize, response.FromString
            )
            return method

        self.upload_dataset: grpc.StreamUnaryMultiCallable[
            datasets_pb2.UploadDatasetRequest, datasets_pb2.Dataset
        ] = channel.stream_unary(
            DATASETS + "UploadDataset", _serialize, datasets_pb2.Dataset.FromString
        )
        self.get_dataset = uu(
            DATASETS + "GetDataset", datasets_pb2.GetDatasetRequest, datasets_pb2.Dataset
        )
        self.list_datasets = uu(
            DATASETS + "ListDatasets",
            datasets_pb2.ListDatasetsRequest,
            datasets_pb2.ListDatasetsResponse,
        )
        self.delete_dataset = uu(
            DATASETS + "DeleteDataset",
            datasets_pb2.DeleteDatasetRequest,
            datasets_pb2.DeleteDatasetResponse,
        )
        self.create_job = uu(JOBS + "CreateJob", jobs_pb2.CreateJobRequest, jobs_pb2.Job)
        self.get_job = uu(JOBS + "GetJob", jobs_pb2.GetJobRequest, jobs_pb2.Job)
        self.list_jobs = uu(JOBS + "ListJobs", jobs_pb2.ListJobsRequest, jobs_pb2.ListJobsResponse)
        self.cancel_job = uu(JOBS + "CancelJob", jobs_pb2.CancelJobRequest, jobs_pb2.Job)
        self.delete_job = uu(
            JOBS + "DeleteJob", jobs_pb2.DeleteJobRequest, jobs_pb2.DeleteJobResponse
        )
        self.watch_job: grpc.UnaryStreamMultiCallable[
            jobs_pb2.WatchJobRequest, jobs_pb2.JobEvent
        ] = channel.unary_stream(JOBS + "WatchJob", _serialize, jobs_pb2.JobEvent.FromString)
        self.watch_job_batches: grpc.UnaryStreamMultiCallable[
            jobs_pb2.WatchJobRequest, jobs_pb2.JobEventBatch
        ] = channel.unary_stream(
            JOBS + "WatchJobBatches", _serialize, jobs_pb2.JobEventBatch.FromString
        )
        self.list_job_metrics = uu(
            JOBS + "ListJobMetrics",
            jobs_pb2.ListJobMetricsRequest,
            jobs_pb2.ListJobMetricsResponse,
        )
        self.list_checkpoints = uu(
            JOBS + "ListCheckpoints",
            jobs_pb2.ListCheckpointsRequest,
            jobs_pb2.ListCheckpointsResponse,
        )
        self.predict = uu(
            PREDICTIONS + "Predict", predictions_pb2.PredictRequest, predictions_pb2.PredictResponse
        )
        self.predict_stream: grpc.StreamStreamMultiCallable[
            predictions_pb2.PredictRequest, predictions_pb2.PredictResponse
        ] = channel.stream_stream(
            PREDICTIONS + "PredictStream", _serialize, predictions_pb2.PredictResponse.FromString
        )
        self.get_model_metadata = uu(
            PREDICTIONS + "GetModelMetadata",
            predictions_pb2.GetModelMetadataRequest,
            predictions_pb2.ModelMetadata,
        )


class AioRpc:
    """The RPCs on an asyncio channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        def uu(path: str, _: type[Q], response: type[R]) -> grpc.aio.UnaryUnaryMultiCallable[Q, R]:
            method: grpc.aio.UnaryUnaryMultiCallable[Q, R] = channel.unary_unary(
                path, _serialize, response.FromString
            )
            return method

        self.upload_dataset: grpc.aio.StreamUnaryMultiCallable[
            datasets_pb2.UploadDatasetRequest, datasets_pb2.Dataset
        ] = channel.stream_unary(
            DATASETS + "UploadDataset", _serialize, datasets_pb2.Dataset.FromString
        )
        self.get_dataset = uu(
            DATASETS + "GetDataset", datasets_pb2.GetDatasetRequest, datasets_pb2.Dataset
        )
        self.list_datasets = uu(
            DATASETS + "ListDatasets",
            datasets_pb2.ListDatasetsRequest,
            datasets_pb2.ListDatasetsResponse,
        )
        self.delete_dataset = uu(
            DATASETS + "DeleteDataset",
            datasets_pb2.DeleteDatasetRequest,
            datasets_pb2.DeleteDatasetResponse,
        )
        self.create_job = uu(JOBS + "CreateJob", jobs_pb2.CreateJobRequest, jobs_pb2.Job)
        self.get_job = uu(JOBS + "GetJob", jobs_pb2.GetJobRequest, jobs_pb2.Job)
        self.list_jobs = uu(JOBS + "ListJobs", jobs_pb2.ListJobsRequest, jobs_pb2.ListJobsResponse)
        self.cancel_job = uu(JOBS + "CancelJob", jobs_pb2.CancelJobRequest, jobs_pb2.Job)
        self.delete_job = uu(
            JOBS + "DeleteJob", jobs_pb2.DeleteJobRequest, jobs_pb2.DeleteJobResponse
        )
        self.watch_job: grpc.aio.UnaryStreamMultiCallable[
            jobs_pb2.WatchJobRequest, jobs_pb2.JobEvent
        ] = channel.unary_stream(JOBS + "WatchJob", _serialize, jobs_pb2.JobEvent.FromString)
        self.watch_job_batches: grpc.aio.UnaryStreamMultiCallable[
            jobs_pb2.WatchJobRequest, jobs_pb2.JobEventBatch
        ] = channel.unary_stream(
            JOBS + "WatchJobBatches", _serialize, jobs_pb2.JobEventBatch.FromString
        )
        self.list_job_metrics = uu(
            JOBS + "ListJobMetrics",
            jobs_pb2.ListJobMetricsRequest,
            jobs_pb2.ListJobMetricsResponse,
        )
        self.list_checkpoints = uu(
            JOBS + "ListCheckpoints",
            jobs_pb2.ListCheckpointsRequest,
            jobs_pb2.ListCheckpointsResponse,
        )
        self.predict = uu(
            PREDICTIONS + "Predict", predictions_pb2.PredictRequest, predictions_pb2.PredictResponse
        )
        self.get_model_metadata = uu(
            PREDICTIONS + "GetModelMetadata",
            predictions_pb2.GetModelMetadataRequest,
            predictions_pb2.ModelMetadata,
        )
        self.predict_stream: grpc.aio.StreamStreamMultiCallable[
            predictions_pb2.PredictRequest, predictions_pb2.PredictResponse
        ] = channel.stream_stream(
            PREDICTIONS + "PredictStream", _serialize, predictions_pb2.PredictResponse.FromString
        )


#: The channel's longest backoff between connection attempts (`grpc.max_reconnect_backoff_ms`).
#: `retry.RECONNECT_WINDOW_S` is derived from it: calls that failed UNAVAILABLE are retried for
#: longer than the channel may wait before it tries to connect again.
MAX_RECONNECT_BACKOFF_S = 2.0

#: While calls are open, the channel pings the server after this long without a frame from it,
#: and closes the connection when a ping is not answered within `KEEPALIVE_TIMEOUT_S`: a
#: connection that died silently (the server's host gone, a NAT or load balancer forgetting it
#: without a reset) failed nothing, and a watch of a quiet job waited on it for ever. The server
#: accepts pings this often (`server.app.MIN_PING_INTERVAL_S`).
KEEPALIVE_S = 30.0
KEEPALIVE_TIMEOUT_S = 10.0


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Channel options: message limits, keepalive pings, and quick reconnection after a server
    restart.

    The backoff between connection attempts starts at 0.1 s and stays under
    `MAX_RECONNECT_BACKOFF_S` (2 s, give or take gRPC's jitter). Not
    `grpc.min_reconnect_backoff_ms`: despite its name it is the time one attempt may take to
    connect (gRPC's subchannel gives an attempt the larger of it and the backoff; 20 s by
    default). At 0.1 s, a connection whose TCP, TLS and HTTP/2 handshakes took longer (a distant
    server, a loaded machine) was abandoned and tried again, for seconds.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", round(MAX_RECONNECT_BACKOFF_S * 1000)),
        ("grpc.keepalive_time_ms", round(KEEPALIVE_S * 1000)),
        ("grpc.keepalive_timeout_ms", round(KEEPALIVE_TIMEOUT_S * 1000)),
        # What grpcio 1.85 waits for a ping's answer (1 minute by default): with the keepalive
        # timeout alone, a connection that stopped answering was still open 15 s later.
        ("grpc.http2.ping_timeout_ms", round(KEEPALIVE_TIMEOUT_S * 1000)),
        # A quiet watch sends no data: gRPC stops pinging after 2 pings without any by default.
        ("grpc.http2.max_pings_without_data", 0),
    ]


def read_file(path: str | os.PathLike[str], name: str) -> bytes:
    """The bytes of `path`, else a ValueError naming the option or variable (`name`) that gave
    it: a bare OSError names only the path. Checked by reading it: a file opened once cannot
    change or go between a check and the read."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise ValueError(f"cannot read {name} {os.fspath(path)}: {reason}") from None


def api_key_text(api_key: str, name: str) -> str:
    """`api_key` without surrounding whitespace (a key read from a file, `open("key").read()`,
    ends with a newline). A key that still cannot be sent as a gRPC metadata value (printable
    ASCII only) is a ValueError naming the argument or variable (`name`) that gave it, here,
    rather than an INTERNAL error from gRPC at the first call. The key itself is never shown:
    it is a secret."""
    if not isinstance(api_key, str):
        raise TypeError(f"{name} must be a str. Received: {type(api_key).__name__}")
    key = api_key.strip()
    for position, character in enumerate(key):
        if not (character.isascii() and character.isprintable()):
            kind = "a control character" if character.isascii() else "a non-ASCII character"
            raise ValueError(
                f"{name} holds {kind} at position {position}: an API key is printable ASCII "
                "(tw_…), sent as gRPC metadata. Copy the key again as `trainwire keys create` "
                "printed it"
            )
    return key


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata of every call: the API key, if there is one (call credentials are refused
    on plaintext channels). The key is checked by `api_key_text`."""
    key = api_key_text(api_key, "api_key") if api_key is not None else ""
    return (("authorization", f"Bearer {key}"),) if key else ()


# A PEM file given by its path (a str or a `pathlib.Path`), or by its bytes (as the CLI and
# `env_settings` pass the files they read, so that each is read once, where its option or
# variable can be named).
Pem = str | os.PathLike[str] | bytes


# A PEM block: its label (CERTIFICATE, PRIVATE KEY, EC PRIVATE KEY...) and base64 body.
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


def check_pem(data: bytes, name: str, key: bool = False) -> bytes:
    """`data` if it is PEM certificates (a CA's or a client's: one or more CERTIFICATE blocks),
    or with `key` a PEM private key, each block's body base64 of a DER structure; else a
    ValueError naming the argument, option or variable (`name`) and what was found. gRPC reads
    them only at the handshake, and a malformed one fails there as a refused connection (after
    log lines of its own), never naming the file. Only the armour is shown, never a key's body;
    checked in memory: key material is never written elsewhere."""
    blocks = _PEM_BLOCK.findall(data)
    wanted = [
        (label, body)
        for label, body in blocks
        if (label.endswith(b"PRIVATE KEY") if key else label == b"CERTIFICATE")
    ]
    kind = "private key" if key else "certificate"
    if not wanted:
        if not data.strip():
            found = "it is empty"
        elif blocks:
            labels = sorted({label.decode() for label, _ in blocks})
            found = f"it holds {' and '.join(labels)} blocks only"
        else:
            found = "it holds no PEM block (DER, or not a certificate or key file?)"
        armour = "-----BEGIN ... PRIVATE KEY-----" if key else "-----BEGIN CERTIFICATE-----"
        raise ValueError(f"{name} is not a PEM {kind}: {found}; give a {armour} PEM file")
    if key and any(
        label.startswith(b"ENCRYPTED") or b"Proc-Type:" in body for label, body in wanted
    ):
        raise ValueError(
            f"{name} is an encrypted private key, which gRPC cannot use: decrypt it "
            "(`openssl pkey -in KEY -out PLAIN_KEY`) and give that"
        )
    for number, (_, body) in enumerate(wanted, 1):
        try:
            der = binascii.a2b_base64(b"".join(body.split()), strict_mode=True)
        except binascii.Error:
            der = b""
        if not der.startswith(b"\x30"):  # a DER SEQUENCE, as every certificate and key is
            raise ValueError(
                f"{name} is not a PEM {kind}: the body of its {kind} block {number} is not "
                "base64 of a DER structure (a truncated or edited file?); give the file again "
                "as it was issued"
            )
    return data


def read_pem(path: str | os.PathLike[str], name: str, key: bool = False) -> bytes:
    """The bytes of the PEM file `path`, read by `read_file` and checked by `check_pem`, whose
    errors name the option or variable (`name`) that gave it and the path."""
    return check_pem(read_file(path, name), f"{name} {os.fspath(path)}", key)


def pem_bytes(pem: Pem, name: str, key: bool = False) -> bytes:
    """The bytes of `pem`: given, or read from its path (`read_pem`), checked by `check_pem`
    (whose ValueError names `name`). Anything else is a TypeError naming `name`: never a file
    silently not read."""
    if isinstance(pem, bytes | bytearray):
        return check_pem(bytes(pem), name, key)
    if isinstance(pem, str | os.PathLike):
        return read_pem(pem, name, key)
    raise TypeError(
        f"{name} must be a PEM file's path (a str or os.PathLike) or its bytes. "
        f"Received: {type(pem).__name__}"
    )


def channel_credentials(
    tls: bool | Pem | None, client_cert: tuple[Pem, Pem] | None
) -> grpc.ChannelCredentials | None:
    """TLS credentials (`tls=True`: system CAs; `tls="ca.pem"`, a `Path`, or the CA's bytes:
    that CA), or None for plaintext (`tls` False, None or ""). A file that cannot be read is a
    ValueError, and a `tls` or `client_cert` file of another type a TypeError, naming it:
    the system's CAs are used only when asked for, never in place of a CA that was not read.
    Each file is checked as PEM (`check_pem`), as gRPC does only at the first handshake."""
    if tls is None or isinstance(tls, bool) or (isinstance(tls, str) and not tls):
        if not tls and client_cert is None:
            return None
        root = None  # the system's CAs: asked for by True, or by a client_cert without tls
    elif isinstance(tls, str | bytes | bytearray | os.PathLike):
        # Any bytes are a CA, even none read from an empty file: refused by `check_pem`, never a
        # silent fall to plaintext.
        root = pem_bytes(tls, "tls")
    else:
        raise TypeError(
            "tls must be True (the system's CAs), a CA file's path (a str or os.PathLike) or its "
            f"PEM bytes, or False. Received: {type(tls).__name__}"
        )
    key = chain = None
    if client_cert is not None:
        chain = pem_bytes(client_cert[0], "client_cert certificate")
        key = pem_bytes(client_cert[1], "client_cert key", key=True)
    return grpc.ssl_channel_credentials(root, key, chain)
