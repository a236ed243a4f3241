"""The Python SDK: `Client` for datasets, jobs and predictions, and the `Job` handle.

Every unary call has a deadline (`timeout`, 30 s by default; a prediction stream has one for the
whole stream, and watches and `Job.wait` none unless given one) and idempotent calls are retried
with exponential backoff and jitter on UNAVAILABLE and RESOURCE_EXHAUSTED (`retry.RetryPolicy`).
Errors are raised as `trainwire.client.errors` exceptions keeping the status and bad fields.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import grpc
import numpy as np

from trainwire.v1 import datasets_pb2, jobs_pb2, predictions_pb2

from .builders import ModelLike
from .errors import (
    ClientClosed,
    JobFailed,
    NotFound,
    ResourceExhausted,
    TimedOut,
    TrainwireError,
    Unavailable,
    from_rpc_error,
    retry_delay_of,
    status_of,
)
from .feeds import BatchFeed
from .files import PathLike, read_dataset, read_targets
from .results import (
    FINISHED,
    TASK_NAMES,
    TASKS,
    Checkpoint,
    DatasetInfo,
    JobEvent,
    JobStatus,
    Metrics,
    ModelInfo,
    Prediction,
    terminal_text,
)
from .retry import (
    RECONNECT_WINDOW_S,
    CallAttempts,
    RetryPolicy,
    refused_by_a_per_client_count,
    watch_was_open,
)
from .rpc import (
    Pem,
    Rpc,
    api_key_text,
    auth_metadata,
    channel_credentials,
    channel_options,
    read_pem,
)
from .wire import (
    CHUNK_BYTES,
    PROGRESS_BYTES,
    ChunkedPrediction,
    StreamedPrediction,
    Upload,
    as_inputs,
    create_job_request,
    dataset_name,
    infer_task,
    join_predictions,
    list_job_metrics_request,
    list_jobs_request,
    metrics_from_responses,
    name_of,
    page_size_arg,
    prepare_upload,
    schedule_options_ignored,
    upload_attempts,
    upload_refused,
    watch_start,
)

DEFAULT_TARGET = "localhost:50051"
DEFAULT_MESSAGE_BYTES = 4 * 1024 * 1024
# The range of TRAINWIRE_MAX_MESSAGE_BYTES, as the server takes it (server/config.py).
MIN_MESSAGE_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 2**31 - 1

log = logging.getLogger("trainwire.client")
P = ParamSpec("P")
Q = TypeVar("Q")
R = TypeVar("R")

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_MESSAGE_BYTES",
    "DEFAULT_TARGET",
    "FINISHED",
    "TASKS",
    "TASK_NAMES",
    "Client",
    "DatasetInfo",
    "Job",
    "JobStatus",
    "JobWatch",
    "Metrics",
    "Prediction",
    "env_settings",
]


def env_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> dict[str, Any]:
    """Client settings from the environment: TRAINWIRE_TARGET, TRAINWIRE_API_KEY,
    TRAINWIRE_TLS (`true` or `system` for the system's CAs, or a CA file), TRAINWIRE_CLIENT_CERT
    with TRAINWIRE_CLIENT_KEY (a client certificate and its key, for a server that requires one),
    TRAINWIRE_TIMEOUT (seconds) and TRAINWIRE_MAX_MESSAGE_BYTES (the server's message limit, which
    upload chunks and prediction requests are sized by). The files are read here, once, and
    their bytes are the settings (a ValueError names the variable of a file that cannot be read).
    `overrides`, keyword arguments of `Client`, replace the variables they stand for, which are
    then not read: `client_cert=` replaces TRAINWIRE_CLIENT_CERT and TRAINWIRE_CLIENT_KEY as a
    pair, so that one of them set alone is no error."""
    env = os.environ if environ is None else environ
    settings: dict[str, Any] = {}
    if "target" not in overrides:
        settings["target"] = env.get("TRAINWIRE_TARGET") or DEFAULT_TARGET
    if "api_key" not in overrides and env.get("TRAINWIRE_API_KEY"):
        settings["api_key"] = api_key_text(env["TRAINWIRE_API_KEY"], "TRAINWIRE_API_KEY")
    tls = env.get("TRAINWIRE_TLS", "") if "tls" not in overrides else ""
    if tls.lower() in ("1", "true", "yes", "system"):  # "system" as `--tls system` says
        settings["tls"] = True
    elif tls and tls.lower() not in ("0", "false", "no"):
        settings["tls"] = read_pem(tls, "TRAINWIRE_TLS")
    if "client_cert" not in overrides:
        pair = client_cert_pair(
            env.get("TRAINWIRE_CLIENT_CERT"),
            env.get("TRAINWIRE_CLIENT_KEY"),
            ("TRAINWIRE_CLIENT_CERT", "TRAINWIRE_CLIENT_KEY"),
        )
        if pair is not None:
            settings["client_cert"] = pair
    if "timeout" not in overrides and env.get("TRAINWIRE_TIMEOUT"):
        try:
            seconds = float(env["TRAINWIRE_TIMEOUT"])
        except ValueError:
            raise ValueError(
                f"TRAINWIRE_TIMEOUT must be a number of seconds. Received: "
                f"{env['TRAINWIRE_TIMEOUT']!r}"
            ) from None
        settings["timeout"] = call_timeout(seconds, "TRAINWIRE_TIMEOUT")
    if "max_message_bytes" not in overrides and env.get("TRAINWIRE_MAX_MESSAGE_BYTES"):
        settings["max_message_bytes"] = message_bytes(env["TRAINWIRE_MAX_MESSAGE_BYTES"])
    return {**settings, **overrides}


def call_timeout(seconds: float, name: str) -> float:
    """`seconds` as the deadline of each call, else a ValueError naming the argument, variable or
    option (`name`) that gave it: a deadline must be positive and finite (gRPC takes NaN and
    infinity, and every call then fails at once, "deadline exceeded")."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(
            f"{name} must be a positive, finite number of seconds (the deadline of each call, "
            f"30 by default). Received: {seconds!r}"
        )
    return seconds


def message_bytes(value: str) -> int:
    """TRAINWIRE_MAX_MESSAGE_BYTES as the client's `max_message_bytes`: the server's range (64
    KiB to 2 GiB - 1 byte), else a ValueError naming the variable."""
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if not MIN_MESSAGE_BYTES <= limit <= MAX_MESSAGE_BYTES:
        raise ValueError(
            f"TRAINWIRE_MAX_MESSAGE_BYTES must be a whole number of bytes from {MIN_MESSAGE_BYTES} "
            f"to {MAX_MESSAGE_BYTES} (the server's message limit). Received: {value!r}"
        )
    return limit


def client_cert_pair(
    cert: str | None, key: str | None, names: tuple[str, str]
) -> tuple[bytes, bytes] | None:
    """The bytes of a client certificate and of its key, read from these paths, as
    `Client(client_cert=)` takes them, or None when neither is given; `names` say where they came
    from, for the ValueError when only one is, or one cannot be read."""
    if not cert and not key:
        return None
    if not cert or not key:
        given, missing = (names[0], names[1]) if cert else (names[1], names[0])
        raise ValueError(
            f"{names[0]} and {names[1]} must be given together (a PEM client certificate and "
            f"its private key). Received {given} without {missing}"
        )
    return read_pem(cert, names[0]), read_pem(key, names[1], key=True)


def job_name(job: object, argument: str = "job") -> str:
    """A job's name from its name or its `Job` handle (see `wire.name_of`)."""
    return name_of(job, argument, "job", (Job,))


# The reconnect backoff doubles up to its 2 s ceiling and no further (past some thousand
# doublings the power itself would overflow, for a watch that never gives up).
MAX_BACKOFF_DOUBLINGS = 6


def is_gone(answer_lost: bool, code: grpc.StatusCode | None) -> bool:
    """Whether a retried delete found its resource gone after an earlier attempt that may have
    deleted it and lost its answer (UNAVAILABLE: a dropped connection): NOT_FOUND then means
    success. After refusals alone (RESOURCE_EXHAUSTED: nothing ran) it still means not found."""
    return answer_lost and code is grpc.StatusCode.NOT_FOUND


def may_have_run(code: grpc.StatusCode | None) -> bool:
    """Whether a failed attempt may have been carried out with only its answer lost (a server
    that stops cancels the calls still running at the end of its grace period: CANCELLED)."""
    return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def reconnectable(code: grpc.StatusCode | None, details: str) -> bool:
    """Whether a stream (or a wait's poll) that failed this way should be tried again: the
    server is unreachable or dropped the connection (an INTERNAL only when it is a reset stream,
    not a server bug), or cancelled it as it stopped (CANCELLED: the calls it had received and
    not started, its first open among them, and those still open after its grace period; see
    `retry.RETRYABLE`). A CANCELLED of the caller's own, a close(), is checked for first."""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return True
    return code is grpc.StatusCode.INTERNAL and "RST_STREAM" in details


def reopen_refused_by_the_watch_count(
    reconnects: int, code: grpc.StatusCode | None, details: str
) -> bool:
    """Whether a watch's open that failed this way is a re-open (`reconnects`: after a
    `reconnectable` failure) refused by the per-client count of open watches
    (max_watches_per_client), which the server may still hold for the watch's lost stream, not
    yet seen to end: tried again, within the watch's outage bounds, as a unary call's retry
    refused so is (`retry.CallAttempts.delay_after`). A first open refused so is the caller's
    own watches at the limit, raised at once."""
    return reconnects > 0 and refused_by_a_per_client_count(code, details)


def upload_bar(upload: Upload, progress: bool | None) -> Any:
    """A tqdm bar of `upload`'s bytes, or None: as `progress` says, by default for uploads of
    PROGRESS_BYTES or more."""
    show = progress if progress is not None else upload.size_bytes >= PROGRESS_BYTES
    if not show:
        return None
    from tqdm import tqdm

    label = upload.header.display_name or "dataset"
    return tqdm(total=upload.size_bytes, unit="B", unit_scale=True, desc=f"uploading {label}")


def wait_timed_out(name: str, state: str, timeout: float) -> TimedOut:
    """The error of a `Job.wait` whose `timeout` passed."""
    return TimedOut(
        f"waiting for {name}: still {state} after {timeout:g}s; wait() again to go on waiting, "
        f"or give a longer timeout="
    )


def watch_timed_out(name: str, timeout: float, last_sequence: int) -> TimedOut:
    """The error of a watch whose `timeout` passed (its stream's deadline, or before a
    reconnection)."""
    return TimedOut(
        f"watching {name}: no end of the job within {timeout:g}s; "
        f"watch(after_sequence={last_sequence}) goes on after the last event returned, or give "
        f"a longer timeout="
    )


def unbatched(batches: Iterable[jobs_pb2.JobEventBatch]) -> Iterator[jobs_pb2.JobEvent]:
    """The events of a WatchJobBatches stream, one at a time (its errors raised as they come)."""
    for batch in batches:
        yield from batch.events


class Outage:
    """A server outage that a watch or `Job.wait` rides out: when it began, and the backoff
    before the next try (doubling from 0.1 s to 2 s, with jitter). It gives up once the server
    has been unreachable for longer than `limit_s` (`Client(watch_reconnect_s=)`), or, while
    the server has never been `reached`, after `RECONNECT_WINDOW_S` as a unary call does: a
    watch of a server that is down or refuses the connection (a TLS handshake) fails within
    seconds, with the same `Unavailable`."""

    def __init__(self, doing: str, limit_s: float, *, reached: bool) -> None:
        self.doing = doing  # "watching jobs/…", for the error
        self.limit_s = limit_s
        self.reached = reached
        self.since: float | None = None
        self.failures = 0

    def ended(self) -> None:
        """The server answered: the next failure begins a new outage, backing off from 0.1 s."""
        self.since, self.failures = None, 0
        self.reached = True

    def next_delay(
        self, error: TrainwireError, server_delay: float = 0.0, *, refused: bool = False
    ) -> float:
        """Seconds to wait before trying again after a `reconnectable` failure, at least
        `server_delay` (the wait the server asked for, `errors.retry_delay_of`) up to 2 s. Raises
        `error` once a server never reached has failed for `RECONNECT_WINDOW_S`, and
        `Unavailable` once an outage has lasted longer than `limit_s`; `error` itself then if it
        is a refusal (`refused`: the server answered, see `JobWatch._recover`)."""
        now = time.monotonic()
        self.since = self.since or now
        if not self.reached and now - self.since > RECONNECT_WINDOW_S:
            raise error from None
        if now - self.since > self.limit_s:
            if refused:
                raise error from None
            raise Unavailable(
                f"{self.doing}: the server stayed unreachable for {self.limit_s:g}s "
                f"({error.message}); check that it runs and that this machine reaches it, then "
                f"try again",
                error.code,
            ) from None
        self.failures = min(self.failures + 1, MAX_BACKOFF_DOUBLINGS)
        backoff = min(0.05 * 2**self.failures, 2.0) * random.uniform(0.5, 1.0)
        return max(backoff, min(server_delay, 2.0))


class Client:
    """A connection to a Trainwire server. Use it as a context manager, or call `close()`.

    `tls=True` verifies the server with the system's CAs, `tls="ca.pem"` with that CA;
    `client_cert=(cert.pem, key.pem)` for servers that require client certificates (mutual TLS;
    without `tls` it verifies the server with the system's CAs). Each file is given by its path
    (a str or a `pathlib.Path`) or by its PEM bytes, and read once, here. `timeout`
    is the deadline of each call in seconds (retries included); `retry` says how idempotent calls
    are retried (`RetryPolicy(max_attempts=1)` turns retries off). `max_message_bytes` is the
    gRPC message limit, which upload chunks and prediction requests are sized by: give a server's
    smaller limit (its TRAINWIRE_MAX_MESSAGE_BYTES) here too.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        tls: bool | Pem = False,
        client_cert: tuple[Pem, Pem] | None = None,
        timeout: float = 30.0,
        max_message_bytes: int = DEFAULT_MESSAGE_BYTES,
        retry: RetryPolicy | None = None,
        watch_reconnect_s: float = 300.0,
    ) -> None:
        self.target = target
        self.timeout = call_timeout(timeout, "timeout")
        self.max_message_bytes = max_message_bytes
        self.retry = retry or RetryPolicy()
        self.watch_reconnect_s = watch_reconnect_s
        self._metadata = auth_metadata(api_key)  # checked before a channel is opened
        # Checked before each call, for an SDK error in place of gRPC's raw ValueError; a flag,
        # not a lock: a call racing close() is cancelled as the calls in flight are, or refused
        # by gRPC, which `_invoke` reports as `ClientClosed` too.
        self._closed = False
        # Notified by close(), and by a watch's close(): it ends the pauses under way (see
        # `_pause`).
        self._closing = threading.Condition()
        options = channel_options(max_message_bytes)
        credentials = channel_credentials(tls, client_cert)
        if credentials is not None:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._rpc = Rpc(self._channel)
        self._uploaded: dict[str, str] = {}  # sha256 -> dataset name, for instant re-uploads

    @classmethod
    def from_env(cls, **overrides: Any) -> Client:
        """A client configured by TRAINWIRE_TARGET (default localhost:50051), TRAINWIRE_API_KEY,
        TRAINWIRE_TLS, TRAINWIRE_CLIENT_CERT and TRAINWIRE_CLIENT_KEY, TRAINWIRE_TIMEOUT and
        TRAINWIRE_MAX_MESSAGE_BYTES;
        keyword arguments override them (`client_cert=` both of its variables)."""
        return cls(**env_settings(**overrides))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.target!r})"

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled, and later ones raise
        `ClientClosed`."""
        self._closed = True
        self._wake()
        self._channel.close()

    def _wake(self) -> None:
        """Has every `_pause` under way check whether to end: its client closed, or its
        `stopped()` true."""
        with self._closing:
            self._closing.notify_all()

    def _pause(self, seconds: float, stopped: Callable[[], bool] = lambda: False) -> None:
        """Waits between a call's attempts (or a wait's polls, a watch's reconnections); a close()
        cuts it short, and the next attempt raises `ClientClosed` (a retry's wait, up to
        `max_backoff`, held it; a watch's, up to 2 s). So does `stopped()` turning true, checked
        when `_wake` is called (a watch's own close()). One condition for every pause: a watch
        waiting on an event of its own slept through its client's close()."""
        with self._closing:
            self._closing.wait_for(lambda: self._closed or stopped(), seconds)

    def _invoke(self, method: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`method(*args, **kwargs)`, an RPC invoked on the channel, as every call of this client
        is: `ClientClosed` once the client is closed. The check and the invocation are two steps:
        a close() from another thread between them makes gRPC refuse the call with its own
        ValueError ("Cannot invoke RPC: Channel closed!"), which is `ClientClosed` too."""
        if self._closed:
            raise ClientClosed(self)
        try:
            return method(*args, **kwargs)
        except ValueError:
            if self._closed:
                raise ClientClosed(self) from None
            raise

    def _call(
        self,
        method: Callable[..., R],
        request: Any,
        timeout: float | None = None,
        *,
        gone_on_retry: Callable[[], R] | None = None,
    ) -> R:
        """One call with a deadline, retried within it: every call is idempotent (CreateJob and
        UploadDataset by their request ids). `request` is the request, or for a client stream (an
        upload) a function making its requests anew for each attempt (`upload_attempts`: an
        iterator is used up by one). A delete passes `gone_on_retry`, its answer when a retry
        finds the resource gone (`is_gone`)."""
        attempts = CallAttempts(self.retry, timeout or self.timeout)
        answer_lost = False
        while True:
            try:
                sent = request() if callable(request) else request
                # ClientClosed once closed, also between attempts (a close() during the sleep).
                return self._invoke(
                    method, sent, timeout=attempts.next_timeout(), metadata=self._metadata
                )
            except grpc.RpcError as error:
                code, details = status_of(error)
                if gone_on_retry is not None and is_gone(answer_lost, code):
                    return gone_on_retry()
                answer_lost = answer_lost or may_have_run(code)
                delay = attempts.delay_after(
                    code, details, closed=self._closed, server_delay=retry_delay_of(error)
                )
                if delay is None:
                    raise from_rpc_error(error) from None
                log.debug("retrying after %s (attempt %d, %.2fs)", code, attempts.attempt, delay)
                self._pause(delay)

    # --- datasets -----------------------------------------------------------------------------

    def upload_dataset(
        self,
        features: np.ndarray | PathLike,
        targets: np.ndarray | PathLike | None = None,
        *,
        task: str | None = None,
        name: str = "",
        num_classes: int = 0,
        feature_names: Sequence[str] = (),
        class_names: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        target_column: str | int | None = None,
        header: bool | None = None,
        dedupe: bool = True,
        progress: bool | None = None,
        timeout: float | None = None,
    ) -> DatasetInfo:
        """Uploads (features, targets), streamed in 1 MiB chunks (smaller under a smaller
        `max_message_bytes`: give the client the server's limit when that is below 1 MiB).

        `features` is an array or a file: a CSV (targets in `target_column`, the last column by
        default), an NPZ (`X` and `y`), or a CSV or NPY of features only with `targets` (an array,
        or an NPY or CSV file) holding one target per row. A CSV targets file holds one column,
        or `target_column` picks one of its columns. Word labels (`setosa`) become classes
        numbered in sorted order, their names the class names; given `class_names`, in that
        order instead (a word not among them is refused; a name no row has is a class without
        examples, `num_classes` defaulting to their count). `header` says whether the first line
        of the CSV files names their columns (None, the default, guesses: a line with a word
        above numbers, or 0,1,...,n-1 for 3 or more columns, as pandas writes unnamed ones, is
        a header; other numbers are data). `task` is
        regression, binary or multiclass; when omitted, integer targets mean multiclass (binary
        for 0/1) and floats regression. Integer and bool features are sent as float32 (float64
        ones stay float64), and bool, unsigned, int8 and int16 targets as int64.

        Uploads are content-addressed: with `dedupe` (the default) the SDK looks for a dataset of
        your project with the same SHA-256, shapes, task, class count (`num_classes`, else the
        largest label + 1) and feature and class names (one `ListDatasets` pass, remembered by
        this client) and returns it instead of sending the bytes again; its display name and
        labels stay those of the first upload. `progress` shows a progress bar (by default for
        uploads of 16 MiB or more).

        An upload is retried as other calls are (within `timeout` and the client's `retry`
        policy: a server restarting, a connection dropped). It carries a fresh request id, the
        same for each of its attempts, by which the server answers a retry with the dataset an
        earlier attempt stored instead of storing another (with `dedupe=False` too); a retry
        sends the whole upload again, unless the server finds that dataset at its header, and
        the progress bar starts over with it. A RESOURCE_EXHAUSTED that names a configured
        limit (or the server's message limit) is raised at once.
        """
        upload = self._prepare(
            features, targets, task, name, num_classes, feature_names, class_names, labels,
            target_column, header,
        )  # fmt: skip
        if dedupe:
            existing = self.find_dataset(upload)
            if existing is not None:
                return existing
        bar = upload_bar(upload, progress)
        try:
            # Idempotent by its request_id: each attempt sends the whole upload again.
            response = self._call(
                self._rpc.upload_dataset,
                upload_attempts(upload, self.max_message_bytes, bar),
                timeout or max(self.timeout, 300.0),
            )
        except ResourceExhausted as error:
            raise upload_refused(error, self.max_message_bytes) from None
        finally:
            if bar is not None:
                bar.close()
        info = DatasetInfo.from_proto(response)
        self._uploaded[upload.sha256] = info.name
        return info

    @staticmethod
    def _prepare(
        features: np.ndarray | PathLike,
        targets: np.ndarray | PathLike | None,
        task: str | None,
        name: str,
        num_classes: int,
        feature_names: Sequence[str],
        class_names: Sequence[str],
        labels: Mapping[str, str] | None,
        target_column: str | int | None,
        header: bool | None = None,
    ) -> Upload:
        if isinstance(features, str | Path):
            if targets is not None and not isinstance(targets, str | Path):
                targets = np.asarray(targets)
            table = read_dataset(
                features, targets, target_column, header=header, class_names=class_names
            )
            x, y = table.features, table.targets
            if task == "regression" and table.class_names:
                raise ValueError(
                    f"the targets of {str(features)!r} are words ({len(table.class_names)} "
                    f"classes: {', '.join(table.class_names[:5])}"
                    f"{', ...' if len(table.class_names) > 5 else ''}), which a regression "
                    "cannot learn: leave the task out (a classification), or pick a column of "
                    "numbers as the target"
                )
            feature_names = feature_names or table.feature_names
            words = table.class_names
            name = name or Path(features).stem
        else:
            if target_column is not None and not (
                isinstance(targets, str | Path) and Path(targets).suffix.lower() == ".csv"
            ):
                raise ValueError(
                    "target_column picks the targets from a CSV file's columns, but the "
                    f"features are an array. Received: target_column={target_column!r}"
                )
            x = np.asarray(features)
            words = []
            if isinstance(targets, str | Path):
                y, words = read_targets(
                    targets, target_column, header=header, class_names=class_names
                )
            else:
                y = targets
        if words and class_names:
            # Word labels numbered by the names given, some of which no row may have: the
            # count is theirs, not the largest label + 1.
            num_classes = num_classes or len(words)
            task = task or ("binary" if num_classes == 2 else "multiclass")
        class_names = class_names or words
        if y is None:
            raise ValueError("targets are required (an array, or a file with a target column)")
        return prepare_upload(
            x, np.asarray(y), task=task, name=name, num_classes=num_classes,
            feature_names=feature_names, class_names=class_names, labels=labels,
        )  # fmt: skip

    def find_dataset(self, upload: Upload) -> DatasetInfo | None:
        """A stored dataset of this project holding exactly `upload`'s arrays, if any."""
        known = self._uploaded.get(upload.sha256)
        if known is not None:
            try:
                info = self.get_dataset(known)
                if upload.matches(info):
                    return info
            except NotFound:
                pass
            self._uploaded.pop(upload.sha256, None)  # a concurrent call may have forgotten it
        for info in self.list_datasets():
            if upload.matches(info):
                self._uploaded[upload.sha256] = info.name
                return info
        return None

    def get_dataset(self, name: str | DatasetInfo) -> DatasetInfo:
        """One dataset by name (`datasets/…`) or handle."""
        request = datasets_pb2.GetDatasetRequest(name=dataset_name(name, "name"))
        return DatasetInfo.from_proto(self._call(self._rpc.get_dataset, request))

    def list_datasets(self, page_size: int = 100) -> Iterator[DatasetInfo]:
        """The project's datasets, newest first; pages are fetched as you iterate."""
        token = ""
        while True:
            request = datasets_pb2.ListDatasetsRequest(
                page_size=page_size_arg(page_size), page_token=token
            )
            response = self._call(self._rpc.list_datasets, request)
            yield from (DatasetInfo.from_proto(d) for d in response.datasets)
            token = response.next_page_token
            if not token:
                return

    def delete_dataset(self, name: str | DatasetInfo) -> None:
        """Deletes a dataset; refused (FailedPrecondition) while an unfinished job uses it."""
        name = dataset_name(name, "name")
        self._call(
            self._rpc.delete_dataset,
            datasets_pb2.DeleteDatasetRequest(name=name),
            gone_on_retry=datasets_pb2.DeleteDatasetResponse,
        )
        self._uploaded = {k: v for k, v in self._uploaded.items() if v != name}

    # --- jobs ---------------------------------------------------------------------------------

    def create_job(
        self,
        dataset: str | DatasetInfo,
        model: ModelLike,
        *,
        epochs: int = 10,
        batch_size: int = 32,
        optimizer: str | Mapping[str, Any] = "adam",
        learning_rate: float = 0.0,
        loss: str = "",
        metrics: Sequence[str] = (),
        validation_fraction: float = 0.0,
        seed: int = 0,
        checkpoint_every_epochs: int = 0,
        schedule: str | Mapping[str, float | str] | None = None,
        early_stopping: Mapping[str, Any] | None = None,
        dtype: str = "float32",
        display_name: str = "",
        labels: Mapping[str, str] | None = None,
        queue: str = "",
        priority: int = 0,
        max_attempts: int = 0,
        request_id: str | None = None,
        log_every_steps: int = 0,
        keep_checkpoints: int = 0,
        validate: bool = True,
    ) -> Job:
        """Submits a training job and returns its handle.

        `model` is a `Sequential`, a list of layers, a spec dict or YAML. The model and the
        training settings are checked locally first (`SpecError`, an `InvalidArgument`, names
        every bad field) unless `validate=False`; given the dataset's `DatasetInfo`, so are the
        metrics against its task (`r2` of a classifier, `accuracy` of a regression).
        `optimizer` and `schedule` are a name or a mapping of `name` and parameters
        (`{"name": "step", "step_size": 10, "interval": "step"}`). An optimizer's parameters
        are numbers (a text one is refused, `SpecError`); its flags (`nesterov`, `centered`)
        take True or False, sent as 1 and 0. A schedule's text parameters (`interval`;
        reduce_on_plateau's `monitor`, `mode`, `threshold_mode`) are strings, sent in its
        `options`, the others numbers. A `request_id` (a fresh one by default) makes
        the call idempotent: a retried call returns the same job. A higher `priority` is
        claimed first (one priority: the oldest job first); a job of a `queue` is taken by the
        workers started for it (`trainwire worker --queue`) and those started for none.
        """
        request = create_job_request(
            dataset, model, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
            learning_rate=learning_rate, loss=loss, metrics=metrics,
            validation_fraction=validation_fraction, seed=seed,
            checkpoint_every_epochs=checkpoint_every_epochs, schedule=schedule,
            early_stopping=early_stopping, dtype=dtype, display_name=display_name, labels=labels,
            queue=queue, priority=priority, max_attempts=max_attempts, request_id=request_id,
            log_every_steps=log_every_steps, keep_checkpoints=keep_checkpoints, validate=validate,
        )  # fmt: skip
        job = self._call(self._rpc.create_job, request)
        ignored = schedule_options_ignored(request, job)
        if ignored is not None:
            self._call(self._rpc.cancel_job, jobs_pb2.CancelJobRequest(name=job.name))
            raise ignored
        return Job(self, JobStatus.from_proto(job))

    def get_job(self, name: str | Job) -> Job:
        """A handle on an existing job (`jobs/…`, or a `Job`), with its current status."""
        return Job(self, self.job_status(name))

    def job_status(self, name: str | Job) -> JobStatus:
        """The current status of a job."""
        request = jobs_pb2.GetJobRequest(name=job_name(name, "name"))
        return JobStatus.from_proto(self._call(self._rpc.get_job, request))

    _job_status = job_status  # the former private name

    def list_jobs(
        self,
        *,
        state: str | None = None,
        dataset: str | DatasetInfo | None = None,
        labels: Mapping[str, str] | None = None,
        page_size: int = 100,
        created_before: datetime | None = None,
    ) -> Iterator[Job]:
        """Jobs, newest first, optionally filtered (`created_before`: an aware datetime, the
        jobs created before it); pages are fetched as you iterate."""
        token = ""
        while True:
            request = list_jobs_request(
                token,
                state=state,
                dataset=dataset,
                labels=labels,
                page_size=page_size,
                created_before=created_before,
            )
            response = self._call(self._rpc.list_jobs, request)
            yield from (Job(self, JobStatus.from_proto(j)) for j in response.jobs)
            token = response.next_page_token
            if not token:
                return

    def cancel_job(self, name: str | Job) -> JobStatus:
        """Cancels a job: a queued one at once, a running one at its next batch."""
        request = jobs_pb2.CancelJobRequest(name=job_name(name, "name"))
        return JobStatus.from_proto(self._call(self._rpc.cancel_job, request))

    def delete_job(self, name: str | Job) -> None:
        """Deletes a finished job with its metrics and checkpoints."""
        self._call(
            self._rpc.delete_job,
            jobs_pb2.DeleteJobRequest(name=job_name(name, "name")),
            gone_on_retry=jobs_pb2.DeleteJobResponse,
        )

    def watch_job(
        self,
        name: str | Job,
        after_sequence: int = 0,
        timeout: float | None = None,
        *,
        reconnect: bool = True,
    ) -> JobWatch:
        """The job's numbered events (`JobEvent`s) after `after_sequence`, until the job
        finishes. A number beyond the job's last event raises `InvalidArgument`.

        The stream re-opens itself after a dropped connection or a server restart, resuming
        after the last event it returned (no event lost or repeated), for up to
        `watch_reconnect_s` of outage. `timeout` bounds the whole watch (None: until the job
        finishes), which then raises `TimedOut`.
        """
        start = watch_start(after_sequence)
        return JobWatch(self, job_name(name, "name"), start, timeout, reconnect)

    def job_metrics(self, name: str | Job, names: Sequence[str] = ()) -> Metrics:
        """Each metric as an array of shape (points, 3): step, epoch, value (every page)."""
        responses = []
        token = ""
        while True:
            request = list_job_metrics_request(job_name(name, "name"), names, token)
            responses.append(self._call(self._rpc.list_job_metrics, request))
            token = responses[-1].next_page_token
            if not token:
                return metrics_from_responses(responses)

    def job_checkpoints(self, name: str | Job) -> list[Checkpoint]:
        """The job's checkpoints, oldest first (every page)."""
        checkpoints: list[Checkpoint] = []
        token = ""
        while True:
            request = jobs_pb2.ListCheckpointsRequest(name=job_name(name, "name"), page_token=token)
            response = self._call(self._rpc.list_checkpoints, request)
            checkpoints.extend(Checkpoint.from_proto(c) for c in response.checkpoints)
            token = response.next_page_token
            if not token:
                return checkpoints

    def model_metadata(self, job: str | Job, checkpoint: str = "") -> ModelInfo:
        """A job's trained model: its checkpoint, input and output dtypes and shapes, classes,
        feature names, size and spec (see `ModelInfo`). `job` and `checkpoint` as for `predict`."""
        name = job_name(job)
        request = predictions_pb2.GetModelMetadataRequest(job=name, checkpoint=checkpoint)
        return ModelInfo.from_proto(self._call(self._rpc.get_model_metadata, request))

    # --- predictions --------------------------------------------------------------------------

    def predict(
        self,
        job: str | Job,
        inputs: np.ndarray | Sequence[Sequence[float]],
        *,
        checkpoint: str = "",
        outputs_only: bool = False,
    ) -> Prediction:
        """Predicts for the rows of `inputs`, in as many requests as the message limit needs.

        `checkpoint` is "" (latest), "best", "epoch/N" or a checkpoint name. `outputs_only`
        asks for the raw outputs alone: a classifier's probabilities and labels are then
        neither computed nor sent (they are None).
        """
        name = job_name(job)
        chunks = ChunkedPrediction(
            name, as_inputs(inputs), checkpoint, self.max_message_bytes, outputs_only
        )
        while (request := chunks.next_request()) is not None:
            try:
                chunks.answered(self._call(self._rpc.predict, request))
            except TrainwireError as error:
                if not chunks.retry_after(error):
                    raise
        return chunks.result()

    def predict_stream(
        self,
        job: str | Job,
        batches: Iterable[np.ndarray | Sequence[Sequence[float]]],
        *,
        checkpoint: str = "",
        outputs_only: bool = False,
    ) -> Iterator[Prediction]:
        """Predictions for each batch of rows, over one PredictStream call, in order.

        Each batch is encoded as `predict` encodes its inputs, and one whose inputs or answers
        would take more than a quarter of the message limit (this client's, or the server's when
        smaller) goes as several messages whose answers make its one `Prediction` (the size of
        an answer and the server's limit come from `model_metadata`, asked once, with the first
        batch). `batches` is read as the stream goes. A batch that cannot be encoded (or an
        exception of the iterable itself) ends the stream: it is raised, as it was, after the
        predictions of the batches before it. `outputs_only` as for `predict`.

        A stream the server drops (a restart) goes on over a new call, as the client's `retry`
        policy retries a call, within the client's `timeout` for the whole stream: the batches
        sent and not yet answered go again, asking the checkpoint that answered the stream's
        first batch, and `batches` is still read once (the batches read and not yet answered
        are kept meanwhile). Each batch's prediction is handed out once, in order.

        `batches` is read by a thread of gRPC's. Stopping early (`close()` of this generator, or
        a `break` out of a loop over it) cancels the stream, and that thread stops at the next
        batch it receives: one still waiting inside the iterable for it (a live feed) cannot be
        interrupted, and ends only once the iterable gives its next batch or ends.
        """
        if self._closed:
            raise ClientClosed(self)
        name = job_name(job)
        streamed = StreamedPrediction(name, checkpoint, self.max_message_bytes, outputs_only)
        # gRPC reads the requests in a thread of its own and reports what they raise as an
        # UNKNOWN status ("Exception iterating requests!"): the feed ends them instead, and its
        # failure is raised to the caller once the batches before it are answered.
        feed = BatchFeed(batches, streamed)
        attempts = CallAttempts(self.retry, self.timeout)
        while True:
            ended = threading.Event()  # the call is over: no more batches are read or sent
            stream = self._invoke(
                self._rpc.predict_stream,
                feed.requests(ended, lambda: self.model_metadata(name, checkpoint)),
                timeout=attempts.next_timeout(),
                metadata=self._metadata,
            )
            try:
                for response in stream:
                    prediction = streamed.answered(response)
                    if prediction is not None:
                        feed.answered(prediction.checkpoint)
                        attempts.answered()
                        yield prediction
                break
            except grpc.RpcError as error:
                if self._closed:  # its close() cancelled the stream, as a watch's (`JobWatch`)
                    raise ClientClosed(self) from None
                code, details = status_of(error)
                delay = attempts.delay_after(code, details, server_delay=retry_delay_of(error))
                if delay is None:
                    raise from_rpc_error(error) from None
                feed.restart(ended)
                log.info("prediction stream of %s lost (%s); resuming in %.2fs", name, code, delay)
                self._pause(delay)
            finally:
                # The caller may stop early: end the call, rather than leave gRPC's thread reading
                # `batches` (and sending them) for an abandoned call, as the async stream does.
                ended.set()
                stream.cancel()
        if feed.failure is not None:
            raise feed.failure


class JobWatch(Iterator[JobEvent]):
    """An iterator of a job's events (`JobEvent`s) that survives dropped connections and server
    restarts.

    It ends when the job finishes. `last_sequence` is the last event returned and `reconnects`
    how many times the stream was re-opened. `close()` stops it (and cancels the stream), from
    any thread. Threads sharing one watch take its events in turn, each event once.
    """

    def __init__(
        self,
        client: Client,
        name: str,
        after_sequence: int,
        timeout: float | None,
        reconnect: bool,
    ) -> None:
        self.client = client
        self.name = name
        self.last_sequence = after_sequence
        self.reconnects = 0
        self.reconnect = reconnect
        self.timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._stream: grpc.CallIterator[Any] | None = None
        self._events: Iterator[jobs_pb2.JobEvent] | None = None
        # WatchJobBatches, until a server older than it answers UNIMPLEMENTED: then WatchJob.
        self._batched = True
        # Until a stream has opened, the server may never have been reached: the watch then
        # fails as a unary call does (see `Outage`).
        self._outage = Outage(f"watching {name}", client.watch_reconnect_s, reached=False)
        self._closed = False
        # One thread at a time in `__next__`: gRPC's stream takes one reader at a time (a second
        # one failed inside gRPC, "Internal gRPC call error 8"), and `last_sequence` is read and
        # set there. `close()` takes no lock, so that it cancels a stream another thread waits on.
        self._lock = threading.Lock()

    def __iter__(self) -> JobWatch:
        return self

    def __next__(self) -> JobEvent:
        with self._lock:
            while True:
                if self._closed:
                    raise StopIteration
                events = self._events if self._events is not None else self._open()
                try:
                    event = next(events)
                except StopIteration:
                    self.close()
                    raise
                except grpc.RpcError as error:
                    opened = self._was_open()
                    self._events = self._stream = None
                    if self._batched and status_of(error)[0] is grpc.StatusCode.UNIMPLEMENTED:
                        self._batched = False
                        continue
                    self._recover(error, opened)
                    continue
                self._outage.ended()
                # A batch's events after a close() come from the batch read, not from the
                # cancelled call: none is handed out (WatchJob's next read failed at once).
                if self._closed:
                    raise StopIteration
                if self.client._closed:
                    raise ClientClosed(self.client)
                if event.sequence <= self.last_sequence:
                    continue  # never hand out an event twice
                self.last_sequence = event.sequence
                return JobEvent.from_proto(event)

    def _open(self) -> Iterator[jobs_pb2.JobEvent]:
        request = jobs_pb2.WatchJobRequest(name=self.name, after_sequence=self.last_sequence)
        remaining = None if self._deadline is None else max(self._deadline - time.monotonic(), 0)
        rpc = self.client._rpc
        stream = self.client._invoke(
            rpc.watch_job_batches if self._batched else rpc.watch_job,
            request,
            timeout=remaining,
            metadata=self.client._metadata,
        )
        self._stream = stream
        if self._closed:
            # A close() in another thread since the check in `__next__` found no stream to
            # cancel: this one would go on, and hand out an event after close().
            cast("grpc.Future[Any]", stream).cancel()
        self._events = unbatched(stream) if self._batched else iter(stream)
        return self._events

    def _was_open(self) -> bool:
        """Whether the current (failed) stream had been opened by the server."""
        return self._stream is not None and watch_was_open(self._stream.initial_metadata())

    def _recover(self, error: grpc.RpcError, opened: bool) -> None:
        """Sleeps before re-opening the stream, or raises the SDK error. `opened`: the failed
        stream had been open (the server sent `WATCH_OPENED`), so a new outage begins."""
        code, details = status_of(error)
        if self._closed:
            raise StopIteration
        if self.client._closed:  # its close() cancelled the stream: not a server's doing
            raise ClientClosed(self.client) from None
        if self.timeout is not None and code is grpc.StatusCode.DEADLINE_EXCEEDED:
            # The stream's deadline is the watch's own.
            raise watch_timed_out(self.name, self.timeout, self.last_sequence) from None
        refused = reopen_refused_by_the_watch_count(self.reconnects, code, details)
        if not self.reconnect or not (reconnectable(code, details) or refused):
            raise from_rpc_error(error) from None
        # A quiet job's stream may have been open longer than watch_reconnect_s: the outage
        # starts now. The backoff does not start over (events alone reset it), so a server that
        # opens streams and drops them at once is not re-dialled every 50 ms.
        if opened:
            self._outage.since = None
            self._outage.reached = True
        delay = self._outage.next_delay(
            from_rpc_error(error), retry_delay_of(error), refused=refused
        )
        late = self._deadline is not None and time.monotonic() + delay >= self._deadline
        if late and self.timeout is not None:
            raise watch_timed_out(self.name, self.timeout, self.last_sequence) from None
        log.info("watch of %s lost (%s); reconnecting in %.2fs", self.name, code, delay)
        self.reconnects += 1
        self._pause(delay)

    def _pause(self, seconds: float) -> None:
        """Waits before re-opening the stream; this watch's close() cuts it short, and so does
        its client's (the next open raises `ClientClosed`). Another thread may be in it."""
        self.client._pause(seconds, lambda: self._closed)

    def close(self) -> None:
        """Stops the watch and cancels its stream. From another thread it takes effect while
        `__next__` waits for an event or to reconnect, and the stream it may be opening meanwhile
        is cancelled by `_open`; it leaves the stream in place (that thread may be reading it)."""
        self._closed = True
        self.client._wake()
        stream = self._stream
        if stream is not None:
            cast("grpc.Future[Any]", stream).cancel()


class JobWaiting:
    """The decisions of one `Job.wait` or `AsyncJob.wait`, which differ only in how they poll
    and sleep: after each poll, finished or the wait before the next one; the progress bar; the
    outage ridden out; the timeout."""

    def __init__(
        self,
        name: str,
        status: JobStatus,
        reconnect_s: float,
        timeout: float | None,
        poll_interval: float,
        progress: bool,
    ) -> None:
        self.name = name
        self.status = status  # the latest
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.started = time.monotonic()
        # A server restart is ridden out as a watch rides it out, not given up once one poll's
        # retries (RECONNECT_WINDOW_S) are spent. The status it starts from came from the
        # server: it was reached, so even a first poll that fails is an outage to ride out (a
        # server restarting just after `create_job`).
        self.outage = Outage(f"waiting for {name}", reconnect_s, reached=True)
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.status.total_epochs or None,
                unit="epoch",
                desc=terminal_text(self.name),
            )

    def polled(self, status: JobStatus) -> float | None:
        """None once `status` is final, else the wait before the next poll."""
        self.status = status
        self.outage.ended()
        if self.bar is not None:
            _update_bar(self.bar, status)
        return None if status.finished else self._within_timeout(self.poll_interval)

    def failed(self, error: TrainwireError) -> float:
        """The wait before the next poll after a poll that failed: an outage is ridden out,
        anything else raised."""
        if not reconnectable(error.code, error.message):
            raise error
        return self._within_timeout(self.outage.next_delay(error))

    def _within_timeout(self, delay: float) -> float:
        if self.timeout is None:
            return delay
        left = self.started + self.timeout - time.monotonic()
        if left <= 0:
            raise wait_timed_out(self.name, self.status.state, self.timeout)
        return min(delay, left)  # one last poll at the deadline

    def result(self) -> JobStatus:
        """The final status; JobFailed if the job FAILED."""
        if self.status.state == "FAILED":
            raise JobFailed(f"{self.name} failed: {self.status.error}", self.status)
        return self.status

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Job:
    """A handle on one training job: follow it, read its results, predict with it."""

    def __init__(self, client: Client, status: JobStatus) -> None:
        self.client = client
        self.name = status.name
        self.last_status = status

    def __repr__(self) -> str:
        return f"Job({self.name!r}, state={self.last_status.state})"

    def status(self) -> JobStatus:
        """The job's current status (also kept as `last_status`)."""
        self.last_status = self.client.job_status(self.name)
        return self.last_status

    def wait(
        self,
        timeout: float | None = None,
        *,
        poll_interval: float = 0.5,
        progress: bool = False,
    ) -> JobStatus:
        """Waits until the job finishes and returns its final status.

        `progress=True` shows a tqdm bar of epochs with the state, the latest loss and metrics,
        and the ETA. Raises JobFailed if the job FAILED (a CANCELLED job is returned) and
        `TimedOut` (a DeadlineExceeded and a TimeoutError) after `timeout` seconds. A server
        outage is ridden out as a watch rides it out: `Unavailable` after `watch_reconnect_s`
        without reaching the server.
        """
        waiting = JobWaiting(
            self.name, self.last_status, self.client.watch_reconnect_s, timeout, poll_interval,
            progress,
        )  # fmt: skip
        try:
            while True:
                delay: float | None
                try:
                    status = self.status()
                except TrainwireError as error:
                    delay = waiting.failed(error)
                else:
                    delay = waiting.polled(status)
                if delay is None:
                    return waiting.result()
                self.client._pause(delay)
        finally:
            waiting.close()

    def watch(
        self, after_sequence: int = 0, *, timeout: float | None = None, reconnect: bool = True
    ) -> JobWatch:
        """The job's events (see `Client.watch_job`), reconnecting transparently."""
        return self.client.watch_job(self.name, after_sequence, timeout, reconnect=reconnect)

    def metrics(self, names: Sequence[str] = ()) -> Metrics:
        """Each metric as an (points, 3) array of step, epoch, value; `to_pandas()` for a
        DataFrame."""
        return self.client.job_metrics(self.name, names)

    def checkpoints(self) -> list[Checkpoint]:
        """The job's checkpoints, oldest first."""
        return self.client.job_checkpoints(self.name)

    def model_metadata(self, checkpoint: str = "") -> ModelInfo:
        """The trained model's checkpoint, dtypes, shapes, classes, size and spec (see
        `Client.model_metadata`)."""
        return self.client.model_metadata(self.name, checkpoint)

    def delete(self) -> None:
        """Deletes the finished job with its metrics and checkpoints."""
        self.client.delete_job(self.name)

    def cancel(self) -> JobStatus:
        """Cancels the job: a queued job at once, a running one at its next batch."""
        self.last_status = self.client.cancel_job(self.name)
        return self.last_status

    def predict(
        self,
        inputs: np.ndarray | Sequence[Sequence[float]],
        *,
        checkpoint: str = "",
        outputs_only: bool = False,
    ) -> Prediction:
        """Predictions of the job's model (latest checkpoint unless told otherwise; see
        `Client.predict`)."""
        return self.client.predict(
            self.name, inputs, checkpoint=checkpoint, outputs_only=outputs_only
        )

    def predict_stream(
        self,
        batches: Iterable[np.ndarray | Sequence[Sequence[float]]],
        *,
        checkpoint: str = "",
        outputs_only: bool = False,
    ) -> Iterator[Prediction]:
        """Predictions for each batch of rows over one stream (see `Client.predict_stream`)."""
        return self.client.predict_stream(
            self.name, batches, checkpoint=checkpoint, outputs_only=outputs_only
        )

    def plot(self, path: PathLike | None = None, *, dpi: int = 100) -> Path:
        """Saves a PNG of the training curves (default `<job id>.png`; another extension, `.pdf`,
        `.svg`, ..., another format matplotlib writes) and returns its path.

        Needs matplotlib (`pip install 'trainwire[plot]'`; in a source checkout
        `.venv/bin/pip install -e '.[plot]'`).
        """
        from .plot import save_metrics_plot

        target = path if path is not None else f"{self.name.rsplit('/', 1)[-1]}.png"
        title = self.last_status.display_name or self.name
        return save_metrics_plot(self.metrics(), target, title=title, dpi=dpi)


def _update_bar(bar: Any, status: JobStatus) -> None:
    """Moves a tqdm bar to a status: epochs done, state, latest metrics, drawn together."""
    # tqdm draws on update() and refresh(): the postfix is set first, without drawing, so no
    # frame shows this status's epochs beside the previous status's state (a running job was
    # drawn "100% ... state=queued" until the postfix caught up).
    postfix = {"state": status.state.lower()}
    # The bar is drawn on a terminal: the server's metric names are shown as `terminal_text`.
    postfix.update({terminal_text(k): f"{v:.4g}" for k, v in sorted(status.metrics.items())})
    bar.set_postfix(postfix, refresh=False)
    if status.total_epochs:
        bar.total = status.total_epochs
    bar.update(max(status.epoch - bar.n, 0))
    bar.refresh()  # update() does not draw within tqdm's mininterval of its last frame


# Names kept for code that imported these helpers from this module.
_infer_task = infer_task
_join_predictions = join_predictions
