"""The user commands of `trainwire`: datasets, jobs and predict, talking to a server via the SDK.

    trainwire datasets upload|list|show|delete
    trainwire jobs submit job.yaml|list|show|watch|cancel|metrics|plot|delete
    trainwire predict JOB --input rows.csv|rows.npy [--output out.csv|.json|.npy] [--outputs-only]

The server is `--target` (TRAINWIRE_TARGET, default localhost:50051) with `--api-key`
(TRAINWIRE_API_KEY), over TLS with `--tls` (TRAINWIRE_TLS); a server that requires client
certificates is shown `--client-cert` with `--client-key` (TRAINWIRE_CLIENT_CERT,
TRAINWIRE_CLIENT_KEY). Output is a table for people, or JSON with `--json`. The exit codes are
EXIT_CODE_MEANINGS, which every command's --help lists.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import grpc

from trainwire.engine.schedules import resolve_mode

from .client import Client, Job, call_timeout, client_cert_pair, env_settings
from .errors import JobFailed, TrainwireError
from .files import (
    check_prediction_path,
    label_names,
    prediction_to_dict,
    read_model_inputs,
    write_prediction,
)
from .jobspec import DatasetSource, JobSpec
from .results import STATES, JobStatus, ModelInfo, checkpoint_to_dict, terminal_text
from .rpc import api_key_text, read_pem

OK, FAILED, USAGE, NOT_FOUND, PRECONDITION, UNREACHABLE, DENIED, LIMIT, CANCELLED = range(9)
INTERRUPTED = 128 + signal.SIGINT  # Ctrl-C, as other Unix tools exit on it
EXIT_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: USAGE,
    grpc.StatusCode.NOT_FOUND: NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: PRECONDITION,
    grpc.StatusCode.FAILED_PRECONDITION: PRECONDITION,
    grpc.StatusCode.UNAVAILABLE: UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: UNREACHABLE,
    grpc.StatusCode.UNAUTHENTICATED: DENIED,
    grpc.StatusCode.PERMISSION_DENIED: DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: LIMIT,
}
# What each exit code means, for every command's --help and the top-level one (the operator
# commands of server/cli.py use the same codes); the README's table says the same
# (tests/client/test_cli.py compares them).
EXIT_CODE_MEANINGS: dict[int, str] = {
    OK: "success",
    FAILED: "the job FAILED, a database schema behind or ahead of this Trainwire, a server that "
    "health finds not SERVING or unreachable (container health checks read 0 or 1), or another "
    "error",
    USAGE: "invalid arguments, spec or configuration",
    NOT_FOUND: "not found",
    PRECONDITION: "not allowed in the current state (FAILED_PRECONDITION), a request id already "
    "used (ALREADY_EXISTS), or an optional extra not installed (jobs plot without matplotlib)",
    UNREACHABLE: "server or database unreachable, or deadline exceeded",
    DENIED: "unauthenticated or permission denied",
    LIMIT: "a limit was reached (RESOURCE_EXHAUSTED)",
    CANCELLED: "the job was CANCELLED (jobs submit --wait, jobs watch)",
}
Handler = Callable[[Client, argparse.Namespace], int]
# What to check when a client could not connect (`connection_hint`).
PLAINTEXT_HINT = "if the server uses TLS, pass --tls CA_FILE or --tls system, or set TRAINWIRE_TLS"
TLS_HINT = (
    "over TLS: if the server requires client certificates (mutual TLS), pass --client-cert CERT "
    "and --client-key KEY or set TRAINWIRE_CLIENT_CERT and TRAINWIRE_CLIENT_KEY; check too that "
    "the server serves TLS, with a certificate naming the target's host, signed by the CA given "
    "to --tls (TRAINWIRE_TLS)"
)
CLIENT_CERT_HINT = (
    "over TLS with a client certificate: check that the server's client CA (its "
    "--tls-client-ca) signed that certificate, and that the server serves TLS, with a "
    "certificate naming the target's host, signed by the CA given to --tls (TRAINWIRE_TLS; "
    "without it, one of the system's)"
)


def exit_codes_epilog() -> str:
    """EXIT_CODE_MEANINGS as the epilog of a --help (for argparse.RawDescriptionHelpFormatter)."""
    return "exit codes:\n" + "\n".join(
        textwrap.fill(meaning, 88, initial_indent=f"  {code}  ", subsequent_indent="     ")
        for code, meaning in EXIT_CODE_MEANINGS.items()
    )


def connection_hint(error: TrainwireError, settings: dict[str, Any]) -> str | None:
    """What may be wrong when a client with these `settings` could not connect: a refused TLS
    handshake fails just like a server that is down ("failed to connect to all addresses; ...
    Socket closed"), and the last error gRPC names may be another address's. None for any other
    error, such as an UNAVAILABLE the server answered itself (its database is down)."""
    if error.code != grpc.StatusCode.UNAVAILABLE or "failed to connect" not in error.message:
        return None
    if settings.get("client_cert"):
        return CLIENT_CERT_HINT
    # A CA's bytes are TLS however few (an empty file's are none).
    return TLS_HINT if settings.get("tls") not in (None, False) else PLAINTEXT_HINT


def exit_code(error: TrainwireError) -> int:
    """The documented exit code of an SDK error."""
    if isinstance(error, JobFailed):
        return FAILED
    return EXIT_CODES.get(error.code, FAILED) if error.code is not None else FAILED


# --- output ---------------------------------------------------------------------------------


def table(rows: Iterable[Sequence[object]], headers: Sequence[str]) -> str:
    """Rows as aligned text columns under a header, each cell `terminal_text`."""
    cells = [
        [terminal_text(str(h)) for h in headers],
        *([terminal_text(str(c)) for c in row] for row in rows),
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def emit(args: argparse.Namespace, document: object, human: str) -> None:
    """Prints `document` as JSON with --json, else the human text, whose every value from the
    server went through `terminal_text` (each value, not the whole text: a newline it holds
    would otherwise print a line of its own)."""
    if args.json:
        print(json.dumps(document, indent=None, sort_keys=True))
    elif human:
        print(human)


def _metrics_text(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _resource(kind: str, name: str) -> str:
    """`abc` -> `jobs/abc`: ids may be given without their collection."""
    return name if "/" in name else f"{kind}/{name}"


def _instant(text: str) -> datetime:
    """An ISO 8601 date or time (`2026-10-01`, `2026-10-01T12:00:00+02:00`), UTC unless it
    gives its offset."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            "--created-before takes an ISO 8601 date or time, e.g. 2026-10-01 or "
            f"2026-10-01T12:00:00+02:00 (UTC unless an offset is given). Received: {text!r}"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"labels are KEY=VALUE. Received: {pair!r}")
        labels[key] = value
    return labels


def _status_text(status: JobStatus) -> str:
    fields = [
        ("name", status.name),
        ("display", status.display_name),
        # A job keeps its model when its dataset is deleted; the server then names none.
        ("dataset", status.dataset or "(deleted)"),
        ("state", status.state),
        ("progress", f"epoch {status.epoch}/{status.total_epochs}"),
        ("metrics", _metrics_text(status.metrics) or "-"),
        ("attempt", str(status.attempt)),
    ]
    if status.error:
        fields.append(("error", status.error))
    return "\n".join(f"{label + ':':<11}{terminal_text(value)}" for label, value in fields)


def _flattened(settings: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of nested settings: `optimizer.learning_rate`, `metrics` as a
    comma-separated list."""
    pairs: list[tuple[str, str]] = []
    for key, value in settings.items():
        if isinstance(value, dict):
            pairs += _flattened(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            pairs.append((prefix + key, ",".join(str(v) for v in value)))
        else:
            pairs.append((prefix + key, str(value)))  # every digit: sweep points may differ late
    return pairs


def _final_code(status: JobStatus) -> int:
    return {"FAILED": FAILED, "CANCELLED": CANCELLED}.get(status.state, OK)


# --- datasets -------------------------------------------------------------------------------


def _datasets_upload(client: Client, args: argparse.Namespace) -> int:
    column = args.target_column
    info = client.upload_dataset(
        args.file,
        args.targets,
        task=args.task,
        name=args.name or "",
        labels=_labels(args.label),
        target_column=int(column)
        if column is not None and column.lstrip("-").isdigit()
        else column,
        header=args.header,
        num_classes=args.num_classes,
        class_names=_names(args.class_names),
        feature_names=_names(args.feature_names),
        dedupe=not args.no_dedupe,
        progress=None if not args.json else False,
    )
    emit(args, info.to_dict(), terminal_text(f"{info.name}  {info.num_examples} examples x "
         f"{info.num_features} features  {info.task}  sha256 {info.sha256[:12]}"))  # fmt: skip
    return OK


def _datasets_list(client: Client, args: argparse.Namespace) -> int:
    datasets = list(client.list_datasets())
    rows = [
        (d.name, d.display_name, d.task, d.num_examples, d.num_features, _size(d.size_bytes),
         d.create_time.strftime("%Y-%m-%d %H:%M") if d.create_time else "")
        for d in datasets
    ]  # fmt: skip
    headers = ("NAME", "DISPLAY NAME", "TASK", "EXAMPLES", "FEATURES", "SIZE", "CREATED")
    emit(args, [d.to_dict() for d in datasets], table(rows, headers))
    return OK


def _datasets_show(client: Client, args: argparse.Namespace) -> int:
    info = client.get_dataset(_resource("datasets", args.dataset))
    document = info.to_dict()
    human = "\n".join(
        f"{key + ':':<15}"
        + terminal_text(_names_text(value) if key.endswith("_names") else str(value))
        for key, value in document.items()
    )
    emit(args, document, human)
    return OK


def _names_text(names: list[str], shown: int = 10) -> str:
    """Feature or class names for people: the first few, and how many in all."""
    if len(names) <= shown:
        return ", ".join(names) or "-"
    return f"{', '.join(names[:shown])}, ... ({len(names)} in all)"


def _datasets_delete(client: Client, args: argparse.Namespace) -> int:
    name = _resource("datasets", args.dataset)
    client.delete_dataset(name)
    emit(args, {"deleted": name}, terminal_text(f"deleted {name}"))
    return OK


# --- jobs -----------------------------------------------------------------------------------


def _jobs_submit(client: Client, args: argparse.Namespace) -> int:
    # --dataset replaces the spec's dataset, which a spec reused across datasets leaves out.
    spec = JobSpec.load(args.spec, dataset=args.dataset)
    options = dict(spec.options)
    if args.name:
        options["display_name"] = args.name
    dataset = spec.dataset
    if isinstance(dataset, DatasetSource):
        info = client.upload_dataset(
            dataset.path, dataset.targets, task=dataset.task, name=dataset.name,
            num_classes=dataset.num_classes, labels=dataset.labels,
            target_column=dataset.target_column, header=dataset.header,
            class_names=dataset.class_names, feature_names=dataset.feature_names,
        )  # fmt: skip
        dataset = info.name
        if not args.json:
            line = f"dataset {info.name} ({info.num_examples} examples)"
            print(terminal_text(line), file=sys.stderr)
    job = client.create_job(_resource("datasets", dataset), spec.model, **options)
    if not (args.wait or args.watch):
        human = terminal_text(f"{job.name}  {job.last_status.state}")
        emit(args, job.last_status.to_dict(), human)
        return OK
    try:
        if args.watch:
            # As `jobs watch`: events alone, one per line (the JSON ones name the job).
            return _watch(client, job.name, args)
        try:
            status = job.wait(progress=not args.json)
        except JobFailed:
            status = job.last_status
    except KeyboardInterrupt:
        # Ctrl-C stops the waiting, not the job: the user may not know its name yet.
        job_id = job.name.split("/")[-1]
        message = (
            f"stopped waiting; {job.name} goes on on the server (`trainwire jobs watch {job_id}` "
            f"follows it again, `trainwire jobs cancel {job_id}` stops it)"
        )
        _report(args, "INTERRUPTED", message, [], INTERRUPTED)
        raise
    emit(args, status.to_dict(), _status_text(status))
    return _final_code(status)


def _best_first(jobs: list[Job], key: str) -> list[Job]:
    """`jobs` ordered best first by the metric `key`, judged as early stopping's "auto" mode
    judges it (highest first for accuracy- and r2-like names, else lowest first); jobs without
    a finite value of it go last. The sort is stable: ties stay newest first."""
    higher_is_better = resolve_mode("auto", key) == "max"

    def rank(job: Job) -> tuple[bool, float]:
        value = job.last_status.metrics.get(key, math.nan)
        if not math.isfinite(value):
            return True, 0.0
        return False, -value if higher_is_better else value

    if jobs and all(key not in job.last_status.metrics for job in jobs):
        logged = sorted({name for job in jobs for name in job.last_status.metrics})
        raise ValueError(
            f"--sort {key}: no listed job has that metric; they have: "
            f"{', '.join(logged) or 'none yet'}"
        )
    return sorted(jobs, key=rank)


def _jobs_list(client: Client, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ValueError(f"--limit must be at least 1. Received: {args.limit}")
    jobs: list[Job] = []
    more = False
    created_before = None if args.created_before is None else _instant(args.created_before)
    for job in client.list_jobs(
        state=args.state, dataset=args.dataset and _resource("datasets", args.dataset),
        labels=_labels(args.label), created_before=created_before,
    ):  # fmt: skip
        # Sorted, the best may be the oldest: every match is read, then the first --limit kept.
        if len(jobs) == args.limit and not args.sort:
            more = True  # one past the limit, read to say so: a cut list looked complete
            break
        jobs.append(job)
    if args.sort:
        jobs = _best_first(jobs, args.sort)
        more = len(jobs) > args.limit
        jobs = jobs[: args.limit]
    rows = [
        (j.name, s.display_name, s.state, f"{s.epoch}/{s.total_epochs}", _metrics_text(s.metrics))
        for j in jobs
        for s in [j.last_status]
    ]
    headers = ("NAME", "DISPLAY NAME", "STATE", "EPOCH", "METRICS")
    emit(args, [j.last_status.to_dict() for j in jobs], table(rows, headers))
    if more:
        print(
            f"trainwire: showing the first {args.limit} jobs; more match: raise --limit",
            file=sys.stderr,
        )
    return OK


def _jobs_show(client: Client, args: argparse.Namespace) -> int:
    job = client.get_job(_resource("jobs", args.job))
    checkpoints = job.checkpoints()
    document = {
        **job.last_status.to_dict(),
        "checkpoints": [checkpoint_to_dict(c) for c in checkpoints],
    }
    status = job.last_status
    document["training"] = status.training
    human = _status_text(status)
    # What a sweep's jobs differ by: their settings and how they were labelled.
    settings = [
        ("queue", f"{status.queue} (priority {status.priority})"),
        ("labels", " ".join(f"{k}={v}" for k, v in sorted(status.labels.items())) or "-"),
        ("training", " ".join(f"{k}={v}" for k, v in _flattened(status.training))),
    ]
    human += "\n" + "\n".join(f"{label + ':':<11}{terminal_text(text)}" for label, text in settings)
    if checkpoints:
        rows = [
            (_short(c.name), c.epoch, c.step, "best" if c.is_best else "",
             "final" if c.is_final else "partial" if c.is_partial else "",
             _metrics_text(dict(c.metrics)))
            for c in checkpoints
        ]  # fmt: skip
        human += "\n\n" + table(rows, ("CHECKPOINT", "EPOCH", "STEP", "BEST", "KIND", "METRICS"))
    emit(args, document, human)
    return OK


def _follow(client: Client, name: str, args: argparse.Namespace) -> JobStatus:
    for event in client.watch_job(name, args.after if "after" in args else 0):
        if args.json:
            print(json.dumps({"job": name, **event.to_dict()}, sort_keys=True), flush=True)
        else:
            parts = [f"#{event.sequence}", event.state]
            if event.total_epochs:
                parts.append(f"epoch {event.epoch}/{event.total_epochs}")
            if event.metrics:
                parts.append(_metrics_text(event.metrics))
            if event.message:
                parts.append(event.message)
            print(terminal_text("  ".join(parts)), flush=True)
    return client.job_status(name)


def _jobs_watch(client: Client, args: argparse.Namespace) -> int:
    return _watch(client, _resource("jobs", args.job), args)


def _watch(client: Client, name: str, args: argparse.Namespace) -> int:
    """Prints the job's events until it finishes, then (for people) its final state."""
    status = _follow(client, name, args)
    if not args.json:
        line = f"{status.name} {status.state}" + (f": {status.error}" if status.error else "")
        print(terminal_text(line))
    return _final_code(status)


# What one job of several can be refused for, alone, so the others are still asked: its name
# malformed (a cancel's or a delete's only argument), the job gone, or, for `delete`, still
# running. Any other refusal (the server away, the key refused) would refuse them all, and
# ends the command.
_ONE_JOBS_REFUSALS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
)


def _each_job(args: argparse.Namespace, act: Callable[[str], None]) -> int:
    """`act` on each job named, in order. A job refused alone (`_ONE_JOBS_REFUSALS`) is
    reported as the command's error is, naming it, and the rest go on; the exit code is then
    the first refusal's. One job named: its error is the command's."""
    names = [_resource("jobs", job) for job in args.jobs]
    if len(names) == 1:
        act(names[0])
        return OK
    code = OK
    for name in names:
        try:
            act(name)
        except TrainwireError as error:
            if error.code not in _ONE_JOBS_REFUSALS:
                raise
            refused = exit_code(error)
            # The server's messages name the job; one that did not is prefixed with it.
            message = error.message if name in error.message else f"{name}: {error.message}"
            _report(args, error.code_name, message, [], refused)
            code = code or refused
    return code


def _jobs_cancel(client: Client, args: argparse.Namespace) -> int:
    def cancel(name: str) -> None:
        status = client.cancel_job(name)
        emit(args, status.to_dict(), terminal_text(f"{status.name}  {status.state}"))

    return _each_job(args, cancel)


def _jobs_delete(client: Client, args: argparse.Namespace) -> int:
    def delete(name: str) -> None:
        client.delete_job(name)
        emit(args, {"deleted": name}, terminal_text(f"deleted {name}"))

    return _each_job(args, delete)


def _jobs_metrics(client: Client, args: argparse.Namespace) -> int:
    name = _resource("jobs", args.job)
    # The server refuses a name the job never logs, listing those it does; a named metric
    # without points yet (a job that has not finished an epoch) is an empty column.
    metrics = client.job_metrics(name, args.metric)
    names = sorted(set(args.metric)) or sorted(n for n in metrics if n != "batch_loss")
    recorded = [n for n in names if n in metrics]
    # A row per epoch, or per (epoch, step) when a metric has several points in an epoch
    # (batch_loss with log_every_steps): the epoch's metrics then share the row of their step.
    per_step = any(
        len(set(epochs)) < len(epochs) for epochs in (metrics.epochs(n).tolist() for n in recorded)
    )
    rows_by_key: dict[tuple[int, ...], dict[str, float]] = {}
    for metric in recorded:
        points = zip(
            metrics.epochs(metric), metrics.steps(metric), metrics.values_of(metric), strict=True
        )
        for epoch, step, value in points:
            key = (int(epoch), int(step)) if per_step else (int(epoch),)
            rows_by_key.setdefault(key, {})[metric] = float(value)
    rows = [
        (*key, *(f"{values[n]:.6g}" if n in values else "" for n in names))
        for key, values in sorted(rows_by_key.items())
    ]
    headers = ("EPOCH", *(["STEP"] if per_step else []), *(n.upper() for n in names))
    emit(args, metrics.to_dict(), table(rows, headers))
    return OK


def _jobs_plot(client: Client, args: argparse.Namespace) -> int:
    job = client.get_job(_resource("jobs", args.job))
    path = job.plot(args.output)
    curves = sorted(job.metrics())
    document = {"job": job.name, "path": str(path), "curves": curves}
    emit(args, document, terminal_text(f"wrote {path}"))
    return OK


def _predict(client: Client, args: argparse.Namespace) -> int:
    job = _resource("jobs", args.job)
    if args.output:  # before the inputs are read and predicted for
        check_prediction_path(args.output)

    @functools.cache
    def metadata() -> ModelInfo:
        return client.model_metadata(job, args.checkpoint)

    # A CSV header's columns are matched to the model's features by name, which are fetched
    # only for such a file.
    inputs = read_model_inputs(args.input, lambda: metadata().feature_names, header=args.header)
    prediction = client.predict(
        job, inputs, checkpoint=args.checkpoint, outputs_only=args.outputs_only
    )
    # A classifier's labels are named by its classes, when its training dataset named them and
    # the output shows names (the table, JSON); a regression, .npy and .csv cost no call. The
    # prediction is answered: a failure to read the names only leaves them out.
    shows_names = not args.output or str(args.output).lower().endswith(".json")
    class_names: list[str] = []
    if prediction.labels is not None and shows_names:
        try:
            class_names = list(metadata().class_names)
        except TrainwireError as error:
            message = terminal_text(error.message)
            print(f"trainwire: class names left out: {message}", file=sys.stderr)
    if args.output:
        write_prediction(args.output, prediction, class_names)
        emit(args, {"output": str(args.output), "rows": len(prediction.outputs),
                    "checkpoint": prediction.checkpoint}, terminal_text(f"wrote "
             f"{len(prediction.outputs)} predictions to {args.output} "
             f"({prediction.checkpoint})"))  # fmt: skip
        return OK
    if args.json:
        print(json.dumps(prediction_to_dict(prediction, class_names)))
        return OK
    if prediction.labels is not None and prediction.probabilities is not None:
        names = label_names(prediction, class_names)
        rows = [
            (i, int(label), *([names[i]] if names else []), f"{float(p.max()):.3f}")
            for i, (label, p) in enumerate(
                zip(prediction.labels, prediction.probabilities, strict=True)
            )
        ]
        print(table(rows, ("ROW", "LABEL", *(["CLASS"] if names else []), "PROBABILITY")))
    else:
        outputs = prediction.outputs.reshape(len(prediction.outputs), -1)
        values = [(i, *(f"{v:.6g}" for v in row)) for i, row in enumerate(outputs)]
        print(table(values, ("ROW", *(f"Y{i}" for i in range(outputs.shape[1])))))
    return OK


# --- wiring ---------------------------------------------------------------------------------


def _run(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Wraps a command: opens the client, maps SDK errors to exit codes and messages."""

    def run(args: argparse.Namespace) -> int:
        settings: dict[str, Any] = {}
        try:
            # The options override their variables, which are then not read (a pair of client
            # certificate options both of theirs). Their files are read here, once, where a file
            # that cannot be read can be named by its option; the client takes the bytes.
            # An option given empty or zero is refused by the client, not taken for one left
            # out (which would fall back to the variable, or the default).
            overrides: dict[str, Any] = {}
            if args.target:
                overrides["target"] = args.target
            if args.api_key is not None:
                overrides["api_key"] = api_key_text(args.api_key, "--api-key")
                if not overrides["api_key"]:
                    raise ValueError(
                        "--api-key is empty: give the key `trainwire keys create` printed "
                        "(tw_…), or leave the option out to use TRAINWIRE_API_KEY (an empty "
                        "TRAINWIRE_API_KEY is no key)"
                    )
            if args.tls:
                overrides["tls"] = True if args.tls == "system" else read_pem(args.tls, "--tls")
            pair = client_cert_pair(
                args.client_cert, args.client_key, ("--client-cert", "--client-key")
            )
            if pair is not None:
                overrides["client_cert"] = pair
            if args.timeout is not None:
                overrides["timeout"] = call_timeout(args.timeout, "--timeout")
            settings = env_settings(**overrides)
            with Client(**settings) as client:
                return handler(client, args)
        except TrainwireError as error:
            code = exit_code(error)
            message = error.message
            hint = connection_hint(error, settings)
            if hint:
                message += f" ({hint})"
            _report(args, error.code_name, message, error.field_violations, code)
            return code
        except BrokenPipeError:
            raise  # not a bad argument: `main` ends quietly (`stdout_closed`)
        except (ValueError, OSError) as error:
            _report(args, "INVALID_ARGUMENT", str(error), [], USAGE)
            return USAGE
        except ImportError as error:  # an optional extra (plotting) is not installed
            _report(args, "FAILED_PRECONDITION", str(error), [], PRECONDITION)
            return PRECONDITION
        except KeyboardInterrupt:
            return INTERRUPTED

    return run


def _report(
    args: argparse.Namespace, code: str, message: str, violations: list[tuple[str, str]], exit: int
) -> None:
    if args.json:
        fields = [{"field": f, "description": d} for f, d in violations]
        error = {"code": code, "message": message, "exit_code": exit, "field_violations": fields}
        print(json.dumps({"error": error}), file=sys.stderr)
        return
    # The message and the violations may quote the server, or what it was sent.
    print(f"trainwire: {code.lower().replace('_', ' ')}: {terminal_text(message)}", file=sys.stderr)
    for field, description in violations:
        if field not in message:
            print(f"  {terminal_text(field)}: {terminal_text(description)}", file=sys.stderr)


class UsageError(Exception):
    """A mistake on the command line, as argparse found it (see `ArgumentParser`)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser (its subcommands' too), whose mistakes `parse_arguments` reports."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> Any:
    """`parser.parse_args(argv)`. A mistake exits 2 after argparse's usage and message or, with
    --json anywhere on the command line, after the commands' JSON error (INVALID_ARGUMENT)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        return parser.parse_args(arguments)
    except UsageError as error:
        prog = error.parser.prog
        if "--json" in arguments:
            message = f"{prog}: {error.message}; `{prog} --help` lists its arguments"
            _report(argparse.Namespace(json=True), "INVALID_ARGUMENT", message, [], USAGE)
        else:  # as argparse itself says it
            error.parser.print_usage(sys.stderr)
            print(f"{prog}: error: {error.message}", file=sys.stderr)
        sys.exit(USAGE)


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", help="server address (TRAINWIRE_TARGET, localhost:50051)")
    common.add_argument("--api-key", help="API key (TRAINWIRE_API_KEY)")
    common.add_argument(
        "--tls", metavar="CA", help="use TLS: a CA file, or 'system' (TRAINWIRE_TLS)"
    )
    common.add_argument(
        "--client-cert",
        metavar="CERT",
        help="PEM client certificate, for a server that requires one (mutual TLS); with "
        "--client-key (TRAINWIRE_CLIENT_CERT)",
    )
    common.add_argument(
        "--client-key",
        metavar="KEY",
        help="PEM private key of --client-cert (TRAINWIRE_CLIENT_KEY)",
    )
    common.add_argument("--timeout", type=float, help="deadline of each call in seconds (30)")
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
    return common


def _names(listed: str | None) -> list[str]:
    """Names given as one comma-separated argument (none: an empty list)."""
    return [] if listed is None else [name.strip() for name in listed.split(",")]


def _header_option(parser: argparse.ArgumentParser, files: str) -> None:
    """--header/--no-header: whether the first line of `files` names the columns."""
    parser.add_argument(
        "--header",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"the first line of {files} names the columns, or (--no-header) is data "
        "(default: guessed; a first line 0,1,...,n-1 is a header)",
    )


def add_user_commands(commands: Any) -> None:
    """Registers the user commands on the `trainwire` parser's subcommands."""
    common = _connection_options()
    epilog = exit_codes_epilog()
    formatter = argparse.RawDescriptionHelpFormatter

    def command(parent: Any, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(
            name, help=help, description=help, parents=[common], epilog=epilog,
            formatter_class=formatter,
        )  # fmt: skip
        parser.set_defaults(handler=_run(handler))
        return parser

    # A group's --help lists the exit codes too; its description is wrapped here, as the raw
    # formatter, which keeps the epilog's table, wraps nothing.
    datasets = commands.add_parser(
        "datasets",
        help="upload, list, show and delete datasets",
        description=textwrap.fill(
            "Datasets on the server: `upload`, `list`, `show`, `delete`; "
            "`trainwire datasets COMMAND --help` tells more.",
            88,
        ),
        epilog=epilog,
        formatter_class=formatter,
    )
    sub = datasets.add_subparsers(dest="datasets_command", required=True)
    upload = command(
        sub, "upload", _datasets_upload, "upload a dataset from a CSV, NPZ or NPY file"
    )
    upload.add_argument("file", help="CSV (targets in a column), NPZ (X, y) or NPY features")
    upload.add_argument("--targets", help="NPY or CSV targets, for NPY features")
    upload.add_argument("--target-column", help="CSV target column name or index (default: last)")
    _header_option(upload, "CSV files")
    upload.add_argument("--name", help="display name (default: the file name)")
    upload.add_argument("--task", choices=["regression", "binary", "multiclass"])
    upload.add_argument(
        "--num-classes", type=int, default=0, help="classes (default: the largest label + 1)"
    )
    upload.add_argument(
        "--class-names",
        metavar="NAME,NAME,...",
        help="the classes' names, label 0 first (a file's word labels are numbered in this order)",
    )
    upload.add_argument(
        "--feature-names", metavar="NAME,NAME,...", help="the features' names (default: a header's)"
    )
    upload.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    upload.add_argument("--no-dedupe", action="store_true", help="upload even if stored already")
    command(sub, "list", _datasets_list, "list the project's datasets")
    show = command(sub, "show", _datasets_show, "show one dataset")
    show.add_argument("dataset", help="datasets/ID or ID")
    delete = command(sub, "delete", _datasets_delete, "delete a dataset")
    delete.add_argument("dataset", help="datasets/ID or ID")

    jobs = commands.add_parser(
        "jobs",
        help="submit, follow and inspect training jobs",
        description=textwrap.fill(
            "Training jobs: `submit`, `list`, `show`, `watch`, `cancel`, `metrics`, `plot`, "
            "`delete`; `trainwire jobs COMMAND --help` tells more.",
            88,
        ),
        epilog=epilog,
        formatter_class=formatter,
    )
    sub = jobs.add_subparsers(dest="jobs_command", required=True)
    submit = command(sub, "submit", _jobs_submit, "submit a job described by a YAML spec file")
    submit.add_argument("spec", help="job spec (YAML), see examples/job.yaml")
    submit.add_argument(
        "--dataset", help="use this stored dataset instead of the spec's (which may be left out)"
    )
    submit.add_argument("--name", help="display name (overrides the spec's)")
    submit.add_argument("--wait", action="store_true", help="wait with a progress bar")
    submit.add_argument("--watch", action="store_true", help="print events until it finishes")
    listing = command(sub, "list", _jobs_list, "list jobs, newest first")
    listing.add_argument("--state", type=str.upper, choices=STATES)
    listing.add_argument("--dataset", help="only jobs of this dataset")
    listing.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    listing.add_argument(
        "--created-before", metavar="TIME",
        help="only jobs created before this ISO 8601 date or time (UTC unless it gives an "
        "offset): 2026-10-01, or $(date -d '30 days ago' -Iseconds)",
    )  # fmt: skip
    listing.add_argument(
        "--limit", type=int, default=50, help="at most this many, newest first (50)"
    )
    listing.add_argument(
        "--sort", metavar="METRIC",
        help="best first by this metric of the jobs' (highest first for accuracy and r2 "
        "names, else lowest; jobs without it last), read from every matching job: a sweep's "
        "best with --label",
    )  # fmt: skip
    for name, handler, text in (
        ("show", _jobs_show, "show a job and its checkpoints"),
        ("watch", _jobs_watch, "print a job's events until it finishes (reconnects by itself)"),
        ("cancel", _jobs_cancel, "cancel jobs"),
        ("delete", _jobs_delete, "delete finished jobs"),
        ("metrics", _jobs_metrics, "a job's metrics by epoch (and step, for per-step ones)"),
        ("plot", _jobs_plot, "save a plot of a job's training curves (PNG, PDF, SVG, ...)"),
    ):
        parser = command(sub, name, handler, text)
        if name in ("cancel", "delete"):
            parser.add_argument(
                "jobs", nargs="+", metavar="job",
                help="jobs/ID or ID, one or more (`jobs list --json` gives names to pipe here)",
            )  # fmt: skip
        else:
            parser.add_argument("job", help="jobs/ID or ID")
        if name == "watch":
            parser.add_argument("--after", type=int, default=0, help="resume after this event")
        if name == "metrics":
            parser.add_argument(
                "--metric", action="append", default=[],
                help="only this one (repeatable); batch_loss is shown only when named",
            )  # fmt: skip
        if name == "plot":
            parser.add_argument(
                "--output", "-o",
                help="file whose extension names the format: .png, .pdf, .svg, ... (default: "
                "<job id>.png)",
            )  # fmt: skip

    predict = command(commands, "predict", _predict, "predict with a trained job's model")
    predict.add_argument("job", help="jobs/ID or ID")
    predict.add_argument("--input", "-i", required=True, help="rows to predict: .csv or .npy")
    _header_option(predict, "the CSV input")
    predict.add_argument("--output", "-o", help="write predictions to .csv, .json or .npy")
    predict.add_argument(
        "--checkpoint",
        default="",
        help="latest (default), best, epoch/N, or a checkpoint's full name, "
        "jobs/ID/checkpoints/N (jobs show lists each N)",
    )
    predict.add_argument(
        "--outputs-only",
        action="store_true",
        help="the raw outputs alone (a classifier's logits, without probabilities and labels)",
    )


def stdout_closed() -> int:
    """The exit code of a command whose stdout's reader went away (`trainwire jobs list | head`):
    not the command's failure, so no message, and the code of a process SIGPIPE ended, as other
    Unix tools give. What is still buffered goes nowhere: Python flushes stdout at exit, which
    would fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    """The user commands alone (the full `trainwire` command is `trainwire.server.cli`)."""
    parser = ArgumentParser(prog="trainwire")
    add_user_commands(parser.add_subparsers(dest="command", required=True))
    args = parse_arguments(parser, argv)
    try:
        return int(args.handler(args))
    except BrokenPipeError:
        return stdout_closed()


__all__ = [
    "EXIT_CODES",
    "ArgumentParser",
    "add_user_commands",
    "exit_code",
    "exit_codes_epilog",
    "main",
    "parse_arguments",
    "stdout_closed",
    "table",
]


if __name__ == "__main__":
    sys.exit(main())
