"""Server and worker settings, read from `TRAINWIRE_*` environment variables or given directly."""

from __future__ import annotations

import ipaddress
import math
import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from .logs import log_setting_problems

DEFAULT_SQLITE_PATH = Path("trainwire.db")
# The largest values that can work: gRPC takes message limits as 32-bit signed integers; a wait
# longer than threading.TIMEOUT_MAX (about 292 years) raises OverflowError, so no poll, lease or
# retry may be longer; and a pool of more threads than this is far past any host's cores or the
# database's connections (a typo such as 100000000 would only fail under load, when threads
# cannot be started).
MAX_MESSAGE_BYTES = 2**31 - 1
# Of each message the server keeps 4 KiB back for the framing and names around a prediction's
# tensors; below 64 KiB little would be left for the tensors.
ANSWER_FRAMING_BYTES = 4096
MIN_MESSAGE_BYTES = 64 * 1024
MAX_THREADS = 4096
MAX_SECONDS = threading.TIMEOUT_MAX
# A dataset is stored as one value: SQLite stores at most 1,000,000,000 bytes in one (its
# default SQLITE_LIMIT_LENGTH), PostgreSQL's bytea a little more (1 GiB - 1).
MAX_STORED_DATASET_BYTES = 1_000_000_000
UPPER_BOUNDS: dict[str, tuple[float, str]] = {
    "max_message_bytes": (MAX_MESSAGE_BYTES, "gRPC takes a 32-bit integer"),
    "grpc_threads": (MAX_THREADS, "far past any host's cores or database connections"),
    "blas_threads": (MAX_THREADS, "far past any host's cores"),
    "poll_interval_s": (MAX_SECONDS, "a longer wait overflows"),
    "lease_s": (MAX_SECONDS, "a longer wait overflows"),
    "db_retry_s": (MAX_SECONDS, "a longer wait overflows"),
    "stop_timeout_s": (MAX_SECONDS, "a longer wait overflows"),
    "stream_idle_timeout_s": (MAX_SECONDS, "a longer wait overflows"),
    "predict_batch_wait_ms": (MAX_SECONDS * 1000, "a longer wait overflows"),
    "max_dataset_bytes": (MAX_STORED_DATASET_BYTES, "the database stores no larger value"),
}


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 literal in brackets (`[::1]:50051`): gRPC read `:::50051` as a
    misformatted domain name. A bracketed host is kept as it is."""
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return f"{host}:{port}"
    return f"[{host}]:{port}"


def _is_url(text: str) -> bool:
    """Whether SQLAlchemy can read `text` as a database URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if "://" not in text:
        return False
    try:
        make_url(text)
    except (ArgumentError, ValueError):
        return False
    return True


def _is_file(path: str) -> bool:
    return bool(path) and os.path.isfile(path)


def _certificate_problem(path: str) -> str | None:
    """Why the file at `path` holds no PEM certificate OpenSSL can read, or None."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as error:  # NO_CERTIFICATE_OR_CRL_FOUND, as OpenSSL names it
        return str(error.reason or error).lower().replace("_", " ")
    except OSError as error:  # unreadable
        return error.strerror or str(error)
    return None


def _is_key_of(key: str, cert: str) -> bool:
    """Whether the file at `key` is an unencrypted PEM private key of the certificate `cert`.
    An empty password: an encrypted key (which gRPC cannot take) fails instead of prompting."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=lambda: b"")
    except OSError:  # ssl.SSLError is an OSError; OpenSSL says only "PEM lib"
        return False
    return True


# The database URLs' schemes (SQLAlchemy's driver names) Trainwire runs on: SQLite, and
# PostgreSQL with psycopg 3 (`db.normalise_url` picks it for a bare postgresql:// or postgres://).
DATABASE_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql", "postgres", "postgresql+psycopg")


def _database_problem(url: str) -> str | None:
    """Why Trainwire cannot use the database URL `url` (a URL), or None: another database or
    driver ended a command in a traceback (ModuleNotFoundError: MySQLdb, NoSuchModuleError)."""
    from sqlalchemy.engine import make_url

    from .db import masked_url

    if make_url(url).drivername in DATABASE_SCHEMES:
        return None
    return (
        "must be a SQLite URL (sqlite:///PATH) or a PostgreSQL one (postgresql://USER@HOST/DB, "
        f"or postgresql+psycopg://...): Trainwire runs on no other. Received: {masked_url(url)}"
    )


def default_database_url() -> str:
    return f"sqlite:///{DEFAULT_SQLITE_PATH}"


@dataclass(frozen=True)
class Settings:
    """Everything a server or worker process needs to know; plain data so it crosses processes."""

    database_url: str = field(default_factory=default_database_url)
    # The URL when the command's --database-url gave it (database_url is then that URL too),
    # else None: a command a message suggests running next must then carry it, or it would read
    # TRAINWIRE_DATABASE_URL or the default. Not handed to child processes, which get
    # database_url as TRAINWIRE_DATABASE_URL.
    database_url_option: str | None = None
    # The command-line flag that gave a setting, by field name ({"port": "--port"}, and
    # {"workers": "--concurrency"} for `trainwire worker`): messages name the flag a value came
    # from, else its TRAINWIRE_* variable (see `setting`). Not handed to child processes.
    flags: Mapping[str, str] = field(default_factory=dict, compare=False)
    host: str = "127.0.0.1"
    port: int = 50051
    workers: int = 2
    # Queues the workers take jobs from, comma-separated; empty: every queue.
    queues: str = ""
    # gRPC limits. Uploads and big predictions are streamed, so 4 MiB messages suffice.
    max_message_bytes: int = 4 * 1024 * 1024
    max_dataset_bytes: int = 512 * 1024 * 1024
    max_parameters: int = 50_000_000
    # The largest activation batch a job may need: the rows of its largest forward pass (a
    # training batch or a validation pass) times its widest layer times 4 or 8 bytes.
    # max_parameters bounds the weights only; training holds a few such buffers per layer.
    max_batch_bytes: int = 1024 * 1024 * 1024
    max_epochs: int = 100_000
    # Open streams per client (a project, its API keys together, or a peer on an open server),
    # each kind its own count: a client's open streams held what every other project needed
    # (watches a little memory each; prediction streams their models pinned in the model cache;
    # uploads every slot of grpc_threads, so their limit must stay well below it).
    max_watches_per_client: int = 16
    max_predict_streams_per_client: int = 16
    max_uploads_per_client: int = 4
    grpc_threads: int = 16
    # How long a client stream (an upload, a PredictStream) may send nothing (no first message,
    # or none since the last) before the server ends it: an open upload holds a slot of
    # grpc_threads and its bytes so far, a prediction stream its model pinned in the model cache,
    # and a client gone silent without a deadline held them for good. A minute is far past the
    # gap between messages of a live client (the SDK sends upload chunks of at most 1 MiB,
    # prepared before the call: 60 s is a chunk at 17 KiB/s), yet frees a dead one's within a
    # minute.
    stream_idle_timeout_s: float = 60.0
    # Server processes on the port (SO_REUSEPORT: the kernel spreads connections, not calls,
    # over them). `reuse_port` lets separately started servers share a port.
    server_processes: int = 1
    reuse_port: bool = False
    # TLS: PEM files of the server's certificate and key; with a client CA, clients must present
    # a certificate it signed (mutual TLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Without API keys the server only listens on loopback unless this is set; then it runs
    # open on a public address until the first key is created, never again after.
    allow_open_public: bool = False
    # Prometheus /metrics over HTTP (0: off). Worker processes started by `trainwire serve` or
    # `trainwire worker --concurrency N` use the following ports, one each, then the extra
    # server processes.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # Worker behaviour.
    poll_interval_s: float = 0.5
    default_max_attempts: int = 3
    # A running job's lease; its worker renews it every lease_s / 4. A job whose lease runs out
    # (worker killed, machine gone) is queued again to resume from its latest checkpoint.
    lease_s: float = 30.0
    # How long a worker keeps retrying a database write of a running job before giving it up.
    db_retry_s: float = 60.0
    # How long a stopping supervisor waits for its children after SIGTERM before it kills them:
    # a worker checkpoints its job first, which for a big model takes a while, and a killed one
    # loses the attempt (its job is rescued as a lost worker's). At least lease_s by default; a
    # container's stop grace period must be longer.
    stop_timeout_s: float = 60.0
    # BLAS threads per worker process; 0 picks cores // workers (at least 1).
    blas_threads: int = 0
    # Model cache of the prediction path: by default room for two of the largest models accepted
    # (max_parameters float64 weights), so an open PredictStream, which pins its model in the
    # cache, never leaves another model without room.
    model_cache_bytes: int = 1024 * 1024 * 1024
    # Micro-batching: concurrent predictions for one model share a forward pass of at most this
    # many rows; a batch formed under load may wait this long for more (0: never waits).
    predict_batch_rows: int = 256
    predict_batch_wait_ms: float = 0.0
    # Migrate an embedded SQLite database at start; PostgreSQL is migrated by
    # `trainwire db upgrade`.
    auto_migrate_sqlite: bool = True

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, serving: bool = True, **overrides: object
    ) -> Settings:
        """Settings from `TRAINWIRE_*` variables, then `overrides` (None values are ignored).

        Every wrong value is reported, one message each, in one ConfigError, the log settings'
        (TRAINWIRE_LOG_LEVEL, TRAINWIRE_LOG_FORMAT: see `logs.log_setting_problems`) too.
        `serving=False`: the settings of a command that serves no gRPC (see `problems`).
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        problems: list[str] = []
        for name, kind in _ENV_FIELDS.items():
            raw = env.get(f"TRAINWIRE_{name.upper()}")
            if raw is None or raw == "":
                continue
            try:
                values[name] = _parse(name, raw, kind)
            except ValueError as error:
                problems.append(str(error))
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = replace(cls(), **values)  # type: ignore[arg-type]
        problems += settings.problems(serving)
        # Not fields (the logging is set up apart, in each process), but settings all the same:
        # a bad one named alone hid the others until it was fixed.
        problems += log_setting_problems(env)
        if problems:
            raise ConfigError(problems)
        return settings

    def problems(self, serving: bool = True) -> list[str]:
        """What is wrong with these settings, one message per value. A command that serves no
        gRPC (`serving=False`: `health` and `status --target` only probe a server, with its
        certificate) needs TRAINWIRE_TLS_KEY only to show the server's certificate to a server
        that requires client certificates: it must have it with TRAINWIRE_TLS_CLIENT_CA, and
        uses it whenever given (a server started with `--tls-client-ca` requires them too)."""
        found = []
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                found.append(
                    f"{self.setting(name)} must be a port number (0-65535). Received: {value}"
                )
        last_metrics_port = self.metrics_ports()[1] + self.server_processes - 2
        if self.metrics_port and last_metrics_port > 65535:
            found.append(
                "TRAINWIRE_METRICS_PORT leaves no room for the ports after it: the workers and "
                f"extra server processes would need up to {last_metrics_port} (at most 65535)"
            )
        positive = (
            "max_message_bytes", "max_dataset_bytes", "max_parameters", "max_batch_bytes",
            "max_epochs",
            "max_watches_per_client", "max_predict_streams_per_client", "max_uploads_per_client",
            "grpc_threads", "stream_idle_timeout_s",
            "server_processes", "poll_interval_s",
            "lease_s", "stop_timeout_s",
            "default_max_attempts", "model_cache_bytes", "predict_batch_rows",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                found.append(
                    f"{self.setting(name)} must be positive. Received: {getattr(self, name)}"
                )
        # What a flag gave was not parsed by `_parse`, which refuses a negative variable: a
        # `serve --workers -3` started "-3 worker processes". 0 workers is a server without any.
        if self.workers < 0:
            found.append(
                f"{self.setting('workers')} must not be negative. Received: {self.workers}"
            )
        if 0 < self.max_message_bytes < MIN_MESSAGE_BYTES:
            found.append(
                f"TRAINWIRE_MAX_MESSAGE_BYTES must be at least {MIN_MESSAGE_BYTES:,} (room for a "
                f"prediction's answer beside its framing). Received: {self.max_message_bytes}"
            )
        for name, kind in _ENV_FIELDS.items():
            value = getattr(self, name)
            if kind is float and not math.isfinite(value):
                found.append(f"{self.setting(name)} must be a finite number. Received: {value}")
        for name, (bound, why) in UPPER_BOUNDS.items():
            value = getattr(self, name)
            if math.isfinite(value) and value > bound:
                found.append(
                    f"{self.setting(name)} must be at most {int(bound):,} ({why}). "
                    f"Received: {value}"
                )
        if self.predict_batch_wait_ms < 0:
            found.append(
                "TRAINWIRE_PREDICT_BATCH_WAIT_MS must be 0 or more. "
                f"Received: {self.predict_batch_wait_ms}"
            )
        key_needed = serving or bool(self.tls_client_ca)
        cert, key, client_ca = (self.setting(n) for n in ("tls_cert", "tls_key", "tls_client_ca"))
        if (self.tls_key and not self.tls_cert) or (
            self.tls_cert and not self.tls_key and key_needed
        ):
            found.append(f"{cert} and {key} must be set together")
        if self.tls_client_ca and not self.tls_cert:
            found.append(f"{client_ca} needs {cert} and {key}")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                found.append(f"{self.setting(name)}: no such file: {path}")
        if serving:  # a probe reports its files as its answer (`status.server_health`)
            found += self.tls_file_problems(serving)
        # Named as given: --database-url (also when given empty) or the variable.
        given = self.database_url_option is not None
        source = "--database-url" if given else "TRAINWIRE_DATABASE_URL"
        if not _is_url(self.database_url):
            # Not shown: what is not a URL cannot be masked, and may hold a password.
            found.append(
                f"{source} must be a URL such as sqlite:///trainwire.db or "
                "postgresql://user@host/db; the value given is not one (it is not shown, as it "
                "may hold a password)"
            )
        elif problem := _database_problem(self.database_url):
            found.append(f"{source} {problem}")
        return found

    def tls_file_problems(self, serving: bool = True) -> list[str]:
        """What is wrong with the contents of the TLS files there are, read as `serve` uses them
        (`serving`: the certificate with its key, the client CA) or as a probe does (the
        certificate as the one CA it trusts, with the key when given). gRPC took any bytes and
        failed at bind ("Failed to bind to address"), naming neither the setting nor the file;
        the standard library reads them as gRPC's OpenSSL would, from their paths."""
        cert, key, client_ca = self.tls_cert, self.tls_key, self.tls_client_ca
        found = []
        if _is_file(cert):
            if problem := _certificate_problem(cert):
                found.append(
                    f"{self.setting('tls_cert')}: {cert} is not a PEM certificate ({problem}): "
                    "give the server's certificate (-----BEGIN CERTIFICATE-----)"
                )
            elif _is_file(key) and not _is_key_of(key, cert):
                found.append(
                    f"{self.setting('tls_key')}: {key} is not the private key of the certificate "
                    f"{cert} ({self.setting('tls_cert')}), or not an unencrypted PEM key: give "
                    "the key the certificate was made for"
                )
        if serving and _is_file(client_ca) and (problem := _certificate_problem(client_ca)):
            found.append(
                f"{self.setting('tls_client_ca')}: {client_ca} is not a PEM certificate "
                f"({problem}): give the certificate of the CA that signs client certificates"
            )
        return found

    def setting(self, name: str) -> str:
        """How a user gave the field `name`: its flag when a command-line flag gave it, else its
        TRAINWIRE_* variable (which also names the setting when its default is in force)."""
        return self.flags.get(name, f"TRAINWIRE_{name.upper()}")

    def to_env(self) -> dict[str, str]:
        """These settings as `TRAINWIRE_*` variables, to hand to a child process."""
        env = {}
        for name in _ENV_FIELDS:
            value = getattr(self, name)
            env[f"TRAINWIRE_{name.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
        return env

    def max_answer_bytes(self) -> int:
        """The most an answer may carry: the message limit less the framing kept back."""
        return self.max_message_bytes - ANSWER_FRAMING_BYTES

    def queue_list(self) -> list[str]:
        return [q.strip() for q in self.queues.split(",") if q.strip()]

    def metrics_ports(self) -> tuple[int, int]:
        """The first metrics port of the embedded workers and of the extra server processes
        (0, 0 with metrics off): the workers' ports follow the server's, then theirs."""
        if not self.metrics_port:
            return 0, 0
        return self.metrics_port + 1, self.metrics_port + 1 + self.workers

    def blas_threads_per_worker(self) -> int:
        if self.blas_threads > 0:
            return self.blas_threads
        return _share_of_cores(self.workers)

    def blas_threads_per_server(self) -> int:
        """BLAS threads of each server process's forward passes: its share of the cores, 2 at
        most (requests run side by side anyway, and the batch-invariance probe of
        engine.inference finds no row tile with many threads). Server processes that each took 2
        threads of 2 cores fought over them: 1,000-row predictions at concurrency 4 lost about a
        quarter."""
        return min(2, _share_of_cores(self.server_processes))


def _share_of_cores(processes: int) -> int:
    """The cores each of `processes` processes gets, 1 at least."""
    return max(1, (os.cpu_count() or 1) // max(1, processes))


_ENV_FIELDS: dict[str, type] = {
    "database_url": str,
    "host": str,
    "port": int,
    "workers": int,
    "queues": str,
    "max_message_bytes": int,
    "max_dataset_bytes": int,
    "max_parameters": int,
    "max_batch_bytes": int,
    "max_epochs": int,
    "max_watches_per_client": int,
    "max_predict_streams_per_client": int,
    "max_uploads_per_client": int,
    "grpc_threads": int,
    "stream_idle_timeout_s": float,
    "server_processes": int,
    "reuse_port": bool,
    "tls_cert": str,
    "tls_key": str,
    "tls_client_ca": str,
    "allow_open_public": bool,
    "metrics_port": int,
    "metrics_host": str,
    "poll_interval_s": float,
    "default_max_attempts": int,
    "lease_s": float,
    "db_retry_s": float,
    "stop_timeout_s": float,
    "blas_threads": int,
    "model_cache_bytes": int,
    "predict_batch_rows": int,
    "predict_batch_wait_ms": float,
    "auto_migrate_sqlite": bool,
}


class ConfigError(ValueError):
    """Configuration values that cannot work; `str()` lists one problem per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


def _parse(name: str, raw: str, kind: type) -> object:
    variable = f"TRAINWIRE_{name.upper()}"
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"{variable} must be true or false. Received: {raw!r}")
    if kind is int or kind is float:
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"{variable} must be a number. Received: {raw!r}") from None
        if value < 0:
            raise ValueError(f"{variable} must not be negative. Received: {raw!r}")
        return value
    return raw
