"""Configuration checks, structured logs, and `trainwire status`."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2
from sqlalchemy.exc import OperationalError

from trainwire.server import app, supervisor
from trainwire.server.app import HealthMonitor, housekeep, key_checker, serve
from trainwire.server.auth import DEFAULT_PROJECT, KeyChecker, Unauthenticated
from trainwire.server.cli import _settings, build_parser
from trainwire.server.config import ConfigError, Settings, host_port
from trainwire.server.errors import Unavailable
from trainwire.server.local import local_server
from trainwire.server.logs import JOB_ID, REQUEST_ID, JsonFormatter, Throttle
from trainwire.server.metrics import DeploymentCollector
from trainwire.server.migrate import upgrade
from trainwire.server.models import ApiKeyRow
from trainwire.server.records import JobState
from trainwire.server.status import render, server_health
from trainwire.server.store import Store
from trainwire.server.supervisor import WorkerPool

from ..e2e.test_api import make_certificates
from ..support.ports import free_ports
from ..support.waiting import wait_for
from .test_cli_database import run
from .test_store import make_dataset, make_job


def test_every_wrong_setting_gets_its_own_message() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "TRAINWIRE_PORT": "http",
                "TRAINWIRE_WORKERS": "-1",
                "TRAINWIRE_LEASE_S": "0",
                "TRAINWIRE_TLS_KEY": "/missing.key",
                "TRAINWIRE_ALLOW_OPEN_PUBLIC": "maybe",
                "TRAINWIRE_DATABASE_URL": "trainwire.db",
            }
        )
    problems = caught.value.problems
    assert len(problems) == 7, problems
    text = "\n".join(problems)
    for expected in (
        "TRAINWIRE_PORT must be a number. Received: 'http'",
        "TRAINWIRE_WORKERS must not be negative",
        "TRAINWIRE_LEASE_S must be positive",
        "TRAINWIRE_TLS_CERT and TRAINWIRE_TLS_KEY must be set together",
        "TRAINWIRE_TLS_KEY: no such file: /missing.key",
        "TRAINWIRE_ALLOW_OPEN_PUBLIC must be true or false",
        "TRAINWIRE_DATABASE_URL must be a URL",
    ):
        assert expected in text


def test_only_a_server_or_a_probe_of_a_mutual_tls_one_needs_the_tls_key(tmp_path: Path) -> None:
    """`trainwire health` probes a TLS server with its certificate alone; `serve` needs the key
    of its certificate, and so does a probe of a server that requires client certificates (it
    shows the server's own)."""
    cert, ca = tmp_path / "server.pem", tmp_path / "ca.pem"
    cert.write_text("certificate")
    ca.write_text("ca")
    certificate_only = {"TRAINWIRE_TLS_CERT": str(cert)}
    assert Settings.from_env(certificate_only, serving=False).tls_cert == str(cert)
    refused = [certificate_only, {**certificate_only, "TRAINWIRE_TLS_CLIENT_CA": str(ca)}]
    for environ, serving in [(refused[0], True), (refused[1], True), (refused[1], False)]:
        with pytest.raises(ConfigError, match="TLS_CERT and TRAINWIRE_TLS_KEY must be set"):
            Settings.from_env(environ, serving=serving)
    with pytest.raises(ConfigError, match="TLS_CERT and TRAINWIRE_TLS_KEY must be set"):
        Settings.from_env({"TRAINWIRE_TLS_KEY": str(cert)}, serving=False)  # a key and no cert


@pytest.mark.parametrize("command", [["health"], ["status", "--target", "host:1"], ["serve"]])
def test_only_serve_needs_the_key_of_the_tls_certificate(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's health probe "uses TLS when TRAINWIRE_TLS_CERT is set": with the certificate
    alone it was refused as a configuration error (exit 2)."""
    cert = tmp_path / "server.pem"
    cert.write_text("certificate")
    monkeypatch.setenv("TRAINWIRE_TLS_CERT", str(cert))
    monkeypatch.delenv("TRAINWIRE_TLS_KEY", raising=False)
    monkeypatch.delenv("TRAINWIRE_TLS_CLIENT_CA", raising=False)
    args = build_parser().parse_args(command)
    if command[0] != "serve":
        assert _settings(args).tls_cert == str(cert)
        return
    with pytest.raises(ConfigError, match="TLS_CERT and TRAINWIRE_TLS_KEY must be set together"):
        _settings(args)


def test_the_default_model_cache_holds_two_of_the_largest_models() -> None:
    # An open stream pins its model: with room for one only, a stream on the largest model
    # would refuse every other stream's model.
    defaults = Settings()
    assert defaults.model_cache_bytes >= 2 * defaults.max_parameters * 8


def test_settings_past_what_can_work_are_refused_at_start() -> None:
    """NaN or infinite durations broke every claim later (a lease of inf is no timedelta);
    a 2**40-byte message limit made gRPC raise OverflowError at start; 100,000,000 threads."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "TRAINWIRE_LEASE_S": "nan",
                "TRAINWIRE_POLL_INTERVAL_S": "inf",
                "TRAINWIRE_DB_RETRY_S": "nan",
                "TRAINWIRE_PREDICT_BATCH_WAIT_MS": "nan",
                "TRAINWIRE_MAX_MESSAGE_BYTES": str(2**40),
                "TRAINWIRE_GRPC_THREADS": "100000000",
            }
        )
    assert caught.value.problems == [
        "TRAINWIRE_POLL_INTERVAL_S must be a finite number. Received: inf",
        "TRAINWIRE_LEASE_S must be a finite number. Received: nan",
        "TRAINWIRE_DB_RETRY_S must be a finite number. Received: nan",
        "TRAINWIRE_PREDICT_BATCH_WAIT_MS must be a finite number. Received: nan",
        "TRAINWIRE_MAX_MESSAGE_BYTES must be at most 2,147,483,647 (gRPC takes a 32-bit "
        "integer). Received: 1099511627776",
        "TRAINWIRE_GRPC_THREADS must be at most 4,096 (far past any host's cores or database "
        "connections). Received: 100000000",
    ]
    with pytest.raises(ConfigError, match="TRAINWIRE_LEASE_S must be at most 9,223,372,036"):
        Settings.from_env({"TRAINWIRE_LEASE_S": "1e300"})  # finite, but no lease
    # A larger dataset was accepted whole, then refused INTERNAL by the database.
    with pytest.raises(
        ConfigError,
        match=r"TRAINWIRE_MAX_DATASET_BYTES must be at most 1,000,000,000 \(the database stores "
        r"no larger value\)",
    ):
        Settings.from_env({"TRAINWIRE_MAX_DATASET_BYTES": str(2**31)})
    largest = {"TRAINWIRE_MAX_MESSAGE_BYTES": str(2**31 - 1), "TRAINWIRE_GRPC_THREADS": "4096"}
    assert Settings.from_env(largest).max_message_bytes == 2**31 - 1
    # Below 64 KiB no prediction's answer would fit beside the 4 KiB the server keeps back.
    with pytest.raises(ConfigError, match="TRAINWIRE_MAX_MESSAGE_BYTES must be at least 65,536"):
        Settings.from_env({"TRAINWIRE_MAX_MESSAGE_BYTES": "4096"})
    assert Settings.from_env({"TRAINWIRE_MAX_MESSAGE_BYTES": "65536"}).max_message_bytes == 65536


def test_server_processes_share_the_cores_for_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert Settings(server_processes=1).blas_threads_per_server() == 2
    assert Settings(server_processes=2).blas_threads_per_server() == 1
    assert Settings(server_processes=3).blas_threads_per_server() == 1
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert Settings(server_processes=4).blas_threads_per_server() == 2, "2 at most"


def test_worker_processes_share_the_cores_for_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    for variable in ("TRAINWIRE_WORKERS", "TRAINWIRE_BLAS_THREADS"):
        monkeypatch.delenv(variable, raising=False)

    def worker(*words: str) -> Settings:
        return _settings(build_parser().parse_args(["worker", *words]))

    assert worker("--concurrency", "8").blas_threads_per_worker() == 1
    assert worker("--concurrency", "2").blas_threads_per_worker() == 4
    assert worker().blas_threads_per_worker() == 8, "one worker process has every core"
    monkeypatch.setenv("TRAINWIRE_WORKERS", "2")  # `trainwire serve`'s count, not this command's
    assert worker("--concurrency", "8").blas_threads_per_worker() == 1
    # Its children are supervised workers: they learn the count from their environment.
    child_env = worker("--concurrency", "8").to_env()
    monkeypatch.setenv("TRAINWIRE_WORKERS", child_env["TRAINWIRE_WORKERS"])
    child = worker("--index", "3", "--parent-pid", "1")
    assert child.blas_threads_per_worker() == 1
    # So are the embedded workers of `trainwire serve --workers 4`.
    monkeypatch.setenv("TRAINWIRE_WORKERS", "4")
    assert worker("--index", "0", "--parent-pid", "1").blas_threads_per_worker() == 2
    monkeypatch.setenv("TRAINWIRE_BLAS_THREADS", "3")
    assert worker("--concurrency", "8").blas_threads_per_worker() == 3, "an explicit value wins"


def test_metrics_ports_after_the_first_must_exist() -> None:
    crowded = Settings(metrics_port=65534, workers=1, server_processes=2).problems()
    assert any("up to 65536" in problem for problem in crowded), crowded
    assert not Settings(metrics_port=65533, workers=1, server_processes=2).problems()
    assert not Settings(metrics_port=0, workers=8, server_processes=8).problems()


def test_cli_reports_configuration_problems_with_exit_code_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trainwire.server.cli", "serve"],
        env={"TRAINWIRE_PORT": "99999", "TRAINWIRE_MAX_EPOCHS": "0", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "TRAINWIRE_PORT must be a port number" in result.stderr
    assert "TRAINWIRE_MAX_EPOCHS must be positive" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_log_setting_is_named_in_the_one_refusal_with_the_other_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad TRAINWIRE_LOG_LEVEL was refused alone: the other mistakes showed only once it was
    fixed."""
    monkeypatch.setenv("TRAINWIRE_PORT", "abc")
    monkeypatch.setenv("TRAINWIRE_LEASE_S", "-1")
    monkeypatch.setenv("TRAINWIRE_LOG_LEVEL", "LOUD")
    monkeypatch.setenv("TRAINWIRE_LOG_FORMAT", "yaml")
    code, out, err = run(capsys, "serve")
    assert code == 2 and out == ""
    assert err.count("invalid configuration") == 1, err
    for expected in (
        "TRAINWIRE_PORT must be a number. Received: 'abc'",
        "TRAINWIRE_LEASE_S must not be negative. Received: '-1'",
        "TRAINWIRE_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL. "
        "Received: 'LOUD'",
        "TRAINWIRE_LOG_FORMAT must be json or text",
    ):
        assert expected in err, err


def test_flag_values_are_checked_and_named_as_the_flags_they_came_from(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve --workers -3` started "-3 worker processes" and `worker --concurrency 0` idled
    forever: a flag's value skipped the negative check of a variable's. `--port -5` was named
    TRAINWIRE_PORT. `serve --workers 0`, a server without workers, stays allowed."""
    monkeypatch.setenv("TRAINWIRE_DATABASE_URL", f"sqlite:///{tmp_path / 'trainwire.db'}")
    code, out, err = run(capsys, "serve", "--workers", "-3", "--port", "-5")
    assert code == 2 and out == "", err
    assert "--workers must not be negative. Received: -3" in err, err
    assert "--port must be a port number (0-65535). Received: -5" in err, err
    assert "TRAINWIRE_PORT" not in err and "TRAINWIRE_WORKERS" not in err, err
    for concurrency in ("0", "-1"):
        code, out, err = run(capsys, "worker", "--concurrency", concurrency)
        assert code == 2 and out == "", err
        assert "--concurrency must be at least 1 (the worker processes to run). " in err
        assert f"Received: {concurrency}" in err
    assert _settings(build_parser().parse_args(["serve", "--workers", "0"])).workers == 0
    monkeypatch.setenv("TRAINWIRE_PORT", "-5")  # a variable's value is named as the variable
    code, out, err = run(capsys, "serve")
    assert code == 2 and "TRAINWIRE_PORT must not be negative" in err, err


def test_serve_refuses_tls_files_it_cannot_use_naming_the_flag_and_the_file(
    tmp_path: Path,
) -> None:
    """A malformed certificate or client CA, or a key not the certificate's, ended `serve` in
    gRPC's "Failed to bind to address", exit 1, naming neither the setting nor the file."""
    _, cert, key = make_certificates(tmp_path)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    database = f"sqlite:///{tmp_path / 'trainwire.db'}"
    serve = [sys.executable, "-m", "trainwire.server.cli", "serve", "--workers", "0"]
    for flags, expected in (
        (
            ["--tls-cert", str(bad), "--tls-key", str(key), "--tls-client-ca", str(key)],
            [f"--tls-cert: {bad} is not a PEM certificate (no certificate or crl found)",
             f"--tls-client-ca: {key} is not a PEM certificate"],
        ),
        (
            ["--tls-cert", str(cert), "--tls-key", str(tmp_path / "client.pem")],
            [f"--tls-key: {tmp_path / 'client.pem'} is not the private key of the certificate "
             f"{cert} (--tls-cert)"],
        ),
    ):  # fmt: skip
        result = subprocess.run(
            [*serve, "--port", "0", *flags],
            env={**os.environ, "TRAINWIRE_DATABASE_URL": database},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert "Failed to bind" not in result.stderr and "Traceback" not in result.stderr
        for text in expected:
            assert text in result.stderr, result.stderr
    assert not (tmp_path / "trainwire.db").exists()  # refused before it opened the database


def test_health_and_status_name_a_malformed_certificate_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`trainwire health`, the container's health check, and `status --target` ended in an
    ssl.SSLError traceback given a TRAINWIRE_TLS_CERT that holds no certificate."""
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    url = f"sqlite:///{tmp_path / 'trainwire.db'}"
    upgrade(url)
    env = {**os.environ, "TRAINWIRE_TLS_CERT": str(bad), "TRAINWIRE_DATABASE_URL": url}
    health = subprocess.run(
        [sys.executable, "-m", "trainwire.server.cli", "health", "--target", "127.0.0.1:1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    named = f"TRAINWIRE_TLS_CERT: {bad} is not a PEM certificate"
    assert health.returncode == 1, health.stderr  # what a container's health check reads
    assert "not probed (unusable TLS files)" in health.stdout
    assert named in health.stderr and "Traceback" not in health.stderr
    monkeypatch.setenv("TRAINWIRE_TLS_CERT", str(bad))
    monkeypatch.setenv("TRAINWIRE_DATABASE_URL", url)
    code, out, err = run(capsys, "status", "--target", "127.0.0.1:1", "--json")
    assert code == 0, err
    server = json.loads(out)["server"]
    assert server["health"] == "not probed (unusable TLS files)" and named in server["hint"]


def test_serve_on_a_port_in_use_names_the_address_and_the_port_setting(tmp_path: Path) -> None:
    """Only a port 0 that could not be had got the clear message; any other said gRPC's
    "Failed to bind to address …; set GRPC_VERBOSITY=debug"."""
    port = free_ports(1)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = subprocess.run(
            [sys.executable, "-m", "trainwire.server.cli", "serve", "--workers", "0",
             "--port", str(port)],
            env={**os.environ, "TRAINWIRE_DATABASE_URL": f"sqlite:///{tmp_path / 't.db'}"},
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"trainwire: cannot listen on 127.0.0.1:{port}: the port is in use" in result.stderr
    assert "another process may hold it" in result.stderr
    assert "--port or TRAINWIRE_PORT" in result.stderr
    assert "GRPC_VERBOSITY" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_serve_listens_on_a_bare_ipv6_address_as_on_a_bracketed_one(
    host: str, tmp_path: Path
) -> None:
    """`serve --host ::1` failed: gRPC read `::1:PORT` as a misformatted domain name."""
    with local_server(f"sqlite:///{tmp_path / 't.db'}", workers=0, host=host) as server:
        assert server.target.startswith("[::1]:"), server.target
        assert server_health(server.target) == "SERVING"
    assert host_port("::1", 5) == "[::1]:5" and host_port("[::1]", 5) == "[::1]:5"
    assert host_port("127.0.0.1", 5) == "127.0.0.1:5" and host_port("db", 5) == "db:5"


def help_options(capsys: pytest.CaptureFixture[str], *command: str) -> dict[str, str]:
    """Each option of `trainwire COMMAND --help`, by its flag, with its help text on one line."""
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    section = capsys.readouterr().out.split("options:\n", 1)[1].split("\n\n", 1)[0]
    options: dict[str, str] = {}
    for line in section.splitlines():
        if line.startswith("  -"):  # a new option; its help continues on indented lines
            flag, *text = line.split()
            options[flag.rstrip(",")] = " ".join(text)
        else:
            options[flag.rstrip(",")] += " " + " ".join(line.split())
    return options


def test_operator_help_shows_defaults_and_the_variable_of_every_serve_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--tls-client-ca` and `--allow-open-public` named no variable, though every other serve
    option does; `worker --concurrency` showed no default."""
    serve = help_options(capsys, "serve")
    assert "--tls-client-ca" in serve and "--allow-open-public" in serve
    for flag, text in serve.items():
        if flag != "-h":
            assert "TRAINWIRE_" in text, (flag, text)
    assert "(TRAINWIRE_TLS_CLIENT_CA)" in serve["--tls-client-ca"]
    assert "TRAINWIRE_ALLOW_OPEN_PUBLIC=true" in serve["--allow-open-public"]
    assert "(default 1)" in help_options(capsys, "worker")["--concurrency"]


def help_description(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    """What `trainwire COMMAND --help` says the command does, between its usage and its
    arguments, on one line."""
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    page = capsys.readouterr().out
    after_usage = page.split("\n\n", 1)[1]
    return " ".join(after_usage.split("arguments:\n", 1)[0].split("options:\n", 1)[0].split())


def test_each_operator_command_s_help_says_what_it_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`keys create --help`, `serve --help` and the others showed usage and options alone."""
    expected = {
        ("serve",): ["Run the gRPC server", "`trainwire db upgrade`", "SQLite"],
        ("worker",): ["train the queued jobs", "TRAINWIRE_DATABASE_URL"],
        ("keys", "create"): ["Create an API key for a project", "the only time it is shown"],
        ("keys", "list"): ["List the API keys", "never their secrets"],
        ("keys", "revoke"): ["Revoke an API key by its id"],
        ("status",): ["Summarise a deployment from its database", "With --target"],
        ("health",): ["SERVING", "exit 0 when it is, 1 when"],
        # The groups, which showed their subcommands' names alone.
        ("db",): ["`upgrade` migrates it", "`current` shows its revision"],
        ("keys",): ["API keys, each of one project", "`revoke`"],
        ("datasets",): ["Datasets on the server", "`upload`"],
        ("jobs",): ["Training jobs", "`submit`"],
    }
    for command, phrases in expected.items():
        described = help_description(capsys, *command)
        for phrase in phrases:
            assert phrase in described, (command, described)


def test_keys_list_is_a_table_with_a_header_and_says_how_to_make_the_first_key(
    database_url: str,
    store: Store,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It printed bare rows, and nothing at all when no key existed."""
    # Named by the variable, which the command it suggests reads too (with --database-url it
    # carries the option: see the test after the next ones).
    monkeypatch.setenv("TRAINWIRE_DATABASE_URL", database_url)
    listing = ["keys", "list"]
    assert run(capsys, *listing) == (
        0, "no API keys; create one with `trainwire keys create --project NAME`\n", ""
    )  # fmt: skip
    research = store.create_api_key("research", "ci")
    other = store.create_api_key("other")
    store.revoke_api_key(other.id)
    code, out, err = run(capsys, *listing)
    assert code == 0 and err == ""
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "PROJECT", "STATE", "NAME"]
    assert rows[0].split() == [research.id, "research", "active", "ci"]
    assert rows[1].split()[:3] == [other.id, "other", "revoked"]
    assert research.key not in out and other.key not in out


def test_keys_list_shows_control_characters_of_a_key_s_name_escaped(
    database_url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key's note stored before `keys create` refused control characters: an ESC sequence in
    it (here OSC 52, which sets the clipboard) must reach the operator's terminal as text, like
    what the user commands print from a server (`terminal_text`)."""
    key = store.create_api_key("research", "ci")
    with store.db.write() as session:
        session.get(ApiKeyRow, key.id).name = "ci\x1b]52;c;cm0gLXJmIH4=\x07"
    code, out, err = run(capsys, "keys", "list", "--database-url", database_url)
    assert code == 0 and err == ""
    assert "\x1b" not in out and "\x07" not in out
    (row,) = out.splitlines()[1:]
    assert row.split() == [key.id, "research", "active", "ci\\x1b]52;c;cm0gLXJmIH4=\\x07"]


def test_keys_create_refuses_a_note_with_control_characters(
    database_url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """`keys create --name` stored an ESC sequence as the key's note, which `keys list` then
    printed to every operator's terminal: it is refused, naming the character, and no key is
    made."""
    code, out, err = run(
        capsys, "keys", "create", "--project", "research", "--name", "ci\x1b[2J",
        "--database-url", database_url,
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert "invalid argument: name: must not contain control characters" in err
    assert "U+001B at position 2" in err
    assert store.list_api_keys() == []


def test_a_public_server_allowed_open_is_closed_for_good_once_a_key_was_created(
    store: Store,
) -> None:
    """With --allow-open-public a public server was open whenever no key was active: revoking
    the last key (rotating keys on the compose deployment, which sets it) opened it to anyone."""
    allowed_open = Settings(host="0.0.0.0", allow_open_public=True)
    checker = key_checker(allowed_open, store)
    assert checker.is_open and checker.project_of(()) == (DEFAULT_PROJECT, "")
    # Created and revoked between two reads: the checker never saw it active.
    key = store.create_api_key("research")
    store.revoke_api_key(key.id)
    checker.refresh()
    for server in (checker, key_checker(allowed_open, store)):  # running on, and restarted
        assert not server.required and not server.is_open
        with pytest.raises(Unauthenticated, match="none is active") as refused:
            server.project_of(())
        assert "`trainwire keys create --project NAME`" in str(refused.value)
    # Refused exactly like a public server without the flag; a loopback one is open again.
    closed = key_checker(Settings(host="0.0.0.0"), store)
    with pytest.raises(Unauthenticated, match="none is active"):
        closed.project_of(())
    loopback = key_checker(Settings(host="127.0.0.1"), store)
    assert loopback.is_open and loopback.project_of(()) == (DEFAULT_PROJECT, "")


def test_a_public_server_whose_keys_were_all_revoked_is_not_told_to_run_open(
    database_url: str, store: Store
) -> None:
    """Its refusal to start still offered --allow-open-public, which no longer opens a server
    once a key was created: only creating a key helps."""
    public = Settings(host="0.0.0.0", port=0, workers=0, database_url=database_url)
    with pytest.raises(ValueError, match="--allow-open-public"):
        serve(public)
    key = store.create_api_key("research")
    store.revoke_api_key(key.id)
    with pytest.raises(ValueError, match="without API keys: create one with") as refused:
        serve(public)
    assert "--allow-open-public" not in str(refused.value)


def test_the_bearer_scheme_is_read_in_any_case(store: Store) -> None:
    """`authorization: bearer tw_…` was refused: the scheme was matched as `Bearer` only, though
    RFC 7235 makes an authentication scheme case-insensitive."""
    key = store.create_api_key("research")
    checker = key_checker(Settings(host="127.0.0.1"), store)
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR", " Bearer"):
        metadata = (("authorization", f"{scheme} {key.key} "),)
        assert checker.project_of(metadata) == ("research", key.id), scheme
    for header in (f"Bearer{key.key}", key.key, "Basic dXNlcjpwYXNz", "bearer", ""):
        with pytest.raises(Unauthenticated, match="authorization: Bearer <key>") as refused:
            checker.project_of((("authorization", header),))
        assert key.key.split("_")[-1] not in str(refused.value), "the secret is never shown"
    # What was sent is said, not shown: a key alone (the usual mistake of a hand-written
    # client), another scheme, or nothing.
    said = {}
    for header in (key.key, f" {key.key}", "Basic dXNlcjpwYXNz", "", " bearer "):
        with pytest.raises(Unauthenticated) as refused:
            checker.project_of((("authorization", header),))
        said[header] = str(refused.value)
    assert said[key.key].endswith("held a key without the `Bearer ` before it")
    assert said[f" {key.key}"] == said[key.key]
    assert said["Basic dXNlcjpwYXNz"].endswith("held no `Bearer ` scheme")
    assert said[""].endswith("(the SDK's api_key= or TRAINWIRE_API_KEY)")
    assert said[" bearer "].endswith("held the `Bearer` scheme but no key after it")
    with pytest.raises(Unauthenticated, match="unknown or was revoked"):
        checker.project_of((("authorization", "bearer tw_nosuch"),))


def test_revoking_an_unknown_key_exits_3_naming_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    upgrade(url)
    result = subprocess.run(
        [sys.executable, "-m", "trainwire.server.cli", "keys", "revoke", "nosuchkey",
         "--database-url", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3, "the README's exit code for not found"
    assert result.stderr.strip() == "trainwire: not found: API key nosuchkey does not exist"


def test_revoke_given_a_key_s_secret_says_it_takes_the_id_and_never_echoes_the_secret(
    database_url: str,
    store: Store,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It answered `not found: API key tw_<id>_<secret> does not exist`: no hint, and the
    secret printed in full."""
    monkeypatch.setenv("TRAINWIRE_DATABASE_URL", database_url)  # the suggestions name none
    key = store.create_api_key("research")
    secret = key.key.split("_", 2)[2]
    code, out, err = run(capsys, "keys", "revoke", key.key)
    assert code == 2 and out == "", "the README's exit code for invalid arguments"
    assert err.startswith(f"trainwire: invalid argument: tw_{key.id}_… looks like an API key's")
    assert "takes the key's id (16 hexadecimal digits); this key's id is" in err
    assert err.rstrip().endswith(f"; this key's id is {key.id}: `trainwire keys revoke {key.id}`")
    assert secret not in err and len(err.strip().splitlines()) == 1
    assert [active.id for active in store.active_api_keys()] == [key.id]
    # Pasted with a space or as the header's value: still read as the key, never echoed.
    for pasted in (f" {key.key}", f"Bearer {key.key}"):
        code, out, err = run(capsys, "keys", "revoke", pasted)
        assert code == 2 and f"`trainwire keys revoke {key.id}`" in err
        assert secret not in err
    # What is no id and no key (a key without its prefix, say) is not echoed either.
    for wrong in ("tw_not-a-key", f"{key.id}_{secret}"):
        code, out, err = run(capsys, "keys", "revoke", wrong)
        assert code == 2 and "takes the key's id (16 hexadecimal digits)" in err
        assert "which `trainwire keys list` shows" in err
        assert "not-a-key" not in err and secret not in err
    assert [active.id for active in store.active_api_keys()] == [key.id]


def test_keys_messages_suggest_commands_on_the_database_given_by_option_password_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commands a `keys` message suggests named no database: a user who gave it by
    --database-url ran the copy on TRAINWIRE_DATABASE_URL's or the default one (a key created
    there is one the server never sees). They carry the option now, its password masked."""
    monkeypatch.delenv("TRAINWIRE_DATABASE_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    upgrade(url)
    create = f"`trainwire keys create --project NAME --database-url {url}`"
    assert run(capsys, "keys", "list", "--database-url", url) == (
        0, f"no API keys; create one with {create}\n", ""
    )  # fmt: skip
    # A password is never shown: masked, and the user told to put it back; the URL quoted for
    # the shell (`***` is a glob). A secret given as the id is refused before any connection, so
    # this database need not exist.
    postgres = "postgresql://tw:s3cret@db.example/trainwire?sslmode=require"
    masked = "'postgresql://tw:***@db.example/trainwire?sslmode=require'"
    key_id = "0123456789abcdef"
    code, out, err = run(
        capsys, "keys", "revoke", f"tw_{key_id}_{'x' * 43}", "--database-url", postgres
    )
    assert code == 2 and out == "" and "s3cret" not in err
    assert err.rstrip().endswith(
        f"; this key's id is {key_id}: `trainwire keys revoke {key_id} --database-url {masked}` "
        "(replace *** with your password, URL-encoded)"
    )
    code, out, err = run(capsys, "keys", "revoke", "tw_not-a-key", "--database-url", postgres)
    assert code == 2 and "s3cret" not in err
    assert (
        f"which `trainwire keys list --database-url {masked}` (replace *** with your password, "
        "URL-encoded) shows"
    ) in err
    # libpq also takes the password as a query parameter: masked too.
    in_query = "postgresql://tw@db.example/trainwire?password=s3cret&sslpassword=s3cret"
    code, out, err = run(capsys, "keys", "revoke", "tw_not-a-key", "--database-url", in_query)
    assert code == 2 and "s3cret" not in err
    assert "?password=***&sslpassword=***'` (replace *** with your password" in err


def test_keys_revoke_of_a_secret_with_a_malformed_database_url_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The secret's refusal suggested commands carrying the URL before the settings were
    checked: a --database-url that is not a URL raised SQLAlchemy's ArgumentError, a traceback.
    What is not a URL is not shown either: it cannot be masked."""
    code, out, err = run(
        capsys, "keys", "revoke", f"tw_0123456789abcdef_{'x' * 43}", "--database-url",
        "tw:s3cret@db.example/trainwire",
    )  # fmt: skip
    assert code == 2 and out == ""
    assert "--database-url must be a URL such as sqlite:///trainwire.db" in err
    assert "s3cret" not in err and "Traceback" not in err
    # With '://' but not one SQLAlchemy can read, and for the other keys commands too.
    for command in (["keys", "revoke", f"tw_0123456789abcdef_{'x' * 43}"], ["keys", "list"]):
        code, out, err = run(capsys, *command, "--database-url", "my-sql://u:s3cret@h/db")
        assert code == 2 and "--database-url must be a URL" in err, err
        assert "s3cret" not in err and "Traceback" not in err


def test_the_database_url_option_given_empty_is_named_as_the_option() -> None:
    with pytest.raises(ConfigError, match="--database-url must be a URL"):
        Settings.from_env(environ={}, database_url="", database_url_option="")


def test_an_empty_log_setting_is_unset() -> None:
    """Empty is unset for every TRAINWIRE_* variable; an empty log level was refused."""
    Settings.from_env(environ={"TRAINWIRE_LOG_LEVEL": "", "TRAINWIRE_LOG_FORMAT": ""})


def test_revoking_a_revoked_key_says_it_was_already_revoked(
    database_url: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second revoke printed `revoked key ...` again, as if it had just revoked it."""
    key_id = store.create_api_key("research").id
    revoke = ["keys", "revoke", key_id, "--database-url", database_url]
    assert run(capsys, *revoke) == (0, f"revoked key {key_id}\n", "")
    code, out, err = run(capsys, *revoke)
    assert code == 0 and err == "", "revoking is idempotent"
    assert out.startswith(f"key {key_id} was already revoked (") and out.endswith(" UTC)\n")


def test_json_logs_carry_request_and_job_ids() -> None:
    record = logging.LogRecord(
        "trainwire.worker", logging.INFO, __file__, 1, "epoch %d", (3,), None
    )
    request, job = REQUEST_ID.set("req-1"), JOB_ID.set("abc")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        REQUEST_ID.reset(request)
        JOB_ID.reset(job)
    assert line["message"] == "epoch 3" and line["level"] == "INFO"
    assert line["request_id"] == "req-1" and line["job_id"] == "abc"


def test_status_summarises_queue_workers_and_failures(database_url: str, store: Store) -> None:
    dataset = make_dataset(store)
    store.create_job(make_job(store, dataset))
    failing = store.create_job(make_job(store, dataset, queue="gpu"))
    claim = store.claim_job("host:1:0", ["gpu"])
    assert claim is not None and claim.job.id == failing.id
    store.finish_job(claim, JobState.FAILED, "the loss became nan")
    store.worker_seen("host:1:0", "host", 1, ["gpu"], None, 1)
    store.worker_seen("host:2:0", "host", 2, [], None, 0)
    store.worker_stopped("host:2:0")
    command = [sys.executable, "-m", "trainwire.server.cli", "status", "--database-url"]
    text = subprocess.run(
        [*command, database_url], capture_output=True, text=True, check=True
    ).stdout
    assert "QUEUED" in text and "FAILED" in text and "1 alive" in text
    assert "the loss became nan" in text
    data = json.loads(
        subprocess.run(
            [*command, database_url, "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert {(q["state"], q["queue"], q["jobs"]) for q in data["queue"]} == {
        ("QUEUED", "default", 1),
        ("FAILED", "gpu", 1),
    }
    assert data["workers_alive"] == 1
    assert [w["state"] for w in data["workers"]] == ["alive", "stopped"]
    assert data["recent_failures"][0]["job"] == f"jobs/{failing.id}"
    assert data["schema"]["current"] == data["schema"]["head"]


def test_status_shows_the_first_line_of_a_failure_made_safe_for_a_terminal() -> None:
    """A job's error may run over lines (a driver's message) or hold control characters: each
    failure stays one line of the summary, its first, escaped as the user commands escape
    server text, and marked when cut."""
    status = {
        "version": "1",
        "database": "sqlite:///x.db",
        "schema": {"current": "h", "head": "h"},
        "queue": [],
        "workers_alive": 0,
        "workers": [],
        "recent_failures": [
            {"job": "jobs/a", "ended_at": "t1", "error": "boom\n[SQL: UPDATE jobs]\nLINE 1"},
            {"job": "jobs/b", "ended_at": "t2", "error": "x\x1b]52;c;cm0=\x07 " + "y" * 100},
            {"job": "jobs/c", "ended_at": "t3", "error": "the loss became nan"},
        ],
    }
    lines = render(status).splitlines()
    failures = lines[lines.index("recent failures") + 1 :]
    assert failures == [
        "          jobs/a t1 boom ...",
        "          jobs/b t2 " + ("x\\x1b]52;c;cm0=\\x07 " + "y" * 100)[:80] + " ...",
        "          jobs/c t3 the loss became nan",
    ]


def test_the_server_housekeeping_outlives_an_unexpected_database_error(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "database is locked" (not Unavailable) while rescuing jobs must not end `serve`: the
    round is logged, and the next one rescues again."""
    stopping = threading.Event()
    rounds: list[str] = []

    def flaky_rescue() -> list[tuple[str, JobState]]:
        rounds.append("rescue")
        if len(rounds) == 1:
            raise OperationalError("UPDATE jobs", {}, Exception("database is locked"))
        stopping.set()
        return []

    monkeypatch.setattr(store, "rescue_expired", flaky_rescue)
    housekeep(store, [], stopping, every_s=0.001)
    assert rounds == ["rescue", "rescue"]


def test_housekeeping_backs_off_but_still_looks_for_its_parent_every_wake(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While rounds fail and back off, a server whose parent is gone still stops within a wake
    (the clock stands still: after the failed round no other is ever due)."""
    stopping = threading.Event()
    rounds: list[int] = []
    looks: list[int] = []
    parent = os.getppid()

    def locked() -> list[tuple[str, JobState]]:
        rounds.append(1)
        raise OperationalError("UPDATE jobs", {}, Exception("database is locked"))

    def getppid() -> int:
        looks.append(1)
        return parent if len(looks) < 6 else 1  # gone at the sixth look

    monkeypatch.setattr(store, "rescue_expired", locked)
    monkeypatch.setattr(app.os, "getppid", getppid)
    housekeep(store, [], stopping, parent_pid=parent, every_s=0.001, clock=lambda: 0.0)
    assert len(looks) == 6 and len(rounds) == 1


def test_a_child_that_keeps_exiting_is_restarted_with_doubling_delays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child that exits at start (say its metrics port is taken) is restarted 1, 2, 4, ... s
    after it exits, not at every supervise; once a child has stayed up STABLE_S the delay starts
    over at 1 s. The clock is a fake one, advanced 0.5 s before each supervise."""
    now = [0.0]
    pool = WorkerPool(Settings(), 1, clock=lambda: now[0])
    crash = [sys.executable, "-c", "raise SystemExit(1)"]
    command = crash
    monkeypatch.setattr(pool, "_command", lambda index: command)
    spawned_at = [0.0]

    def run_until(end: float) -> None:
        while now[0] < end:
            now[0] += 0.5
            pool.processes[0].wait()  # a crashing child has exited by now
            restarts = pool.restarts
            pool.supervise()
            if pool.restarts > restarts:
                spawned_at.append(now[0])

    pool.start()
    try:
        run_until(17.0)
        # Each exit is seen 0.5 s on, then waited out 1, 2, 4, 8 s.
        assert spawned_at == [0.0, 1.5, 4.0, 8.5, 17.0]
        command = [sys.executable, "-c", "import time; time.sleep(600)"]
        run_until(33.5)  # replaced 16 s after it exits, by one that lives
        assert spawned_at[-1] == 33.5
        now[0] += supervisor.STABLE_S
        command = crash
        pool.processes[0].kill()
        run_until(now[0] + 2.0)
        assert spawned_at[-1] == 33.5 + supervisor.STABLE_S + 1.5
    finally:
        pool.stop()


class SlowChild:
    """A child that outlasts its stop timeout: the first wait times out."""

    pid = 4321

    def __init__(self) -> None:
        self.waited: list[float | None] = []
        self.events: list[str] = []

    def poll(self) -> int | None:
        return None

    def send_signal(self, signum: int) -> None:
        self.events.append(signal.Signals(signum).name)

    def wait(self, timeout: float | None = None) -> int:
        self.waited.append(timeout)
        if len(self.waited) == 1:
            raise subprocess.TimeoutExpired("trainwire worker", timeout or 0)
        return -9

    def kill(self) -> None:
        self.events.append("kill")


def test_stopping_waits_stop_timeout_s_for_children_before_killing_them() -> None:
    """A worker checkpointing a big model on SIGTERM gets TRAINWIRE_STOP_TIMEOUT_S, not a fixed
    10 s, before it is killed (and its job's attempt lost)."""
    settings = Settings.from_env({"TRAINWIRE_STOP_TIMEOUT_S": "300"})
    pool = WorkerPool(settings, 1)
    child = SlowChild()
    pool.processes = [child]  # type: ignore[list-item]
    pool.stop()
    assert child.events == ["SIGTERM", "kill"]
    assert child.waited[0] is not None and 299 < child.waited[0] <= 300
    assert Settings().stop_timeout_s >= Settings().lease_s


@pytest.mark.parametrize(("servers", "kind"), [(False, "worker"), (True, "server process")])
def test_a_child_killed_at_stop_is_named_by_its_kind(
    servers: bool, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The pool of extra server processes warned "worker pid N did not stop" too."""
    caplog.set_level(logging.WARNING, logger="trainwire.supervisor")
    pool = WorkerPool(Settings(stop_timeout_s=0.01), 1, servers=servers)
    pool.processes = [SlowChild()]  # type: ignore[list-item]
    pool.stop()
    assert [record.getMessage() for record in caplog.records] == [
        f"{kind} 0 (pid 4321) did not stop in 0s; killing it"
    ]


def test_only_a_pool_with_children_logs_their_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`serve` starts a worker pool and a pool of extra server processes: the empty one (every
    serve without TRAINWIRE_SERVER_PROCESSES) logged "started 0 worker processes: []"."""
    monkeypatch.setattr(WorkerPool, "_command", lambda self, index: [sys.executable, "-c", ""])
    caplog.set_level(logging.INFO, logger="trainwire.supervisor")
    pools = [
        WorkerPool(Settings(), 2),
        WorkerPool(Settings(), 0, servers=True),
        WorkerPool(Settings(port=6000), 1, servers=True),
    ]
    for pool in pools:
        pool.start()
        pool.stop()
    started = [record.getMessage() for record in caplog.records]
    assert len(started) == 2
    assert started[0].startswith("started 2 worker processes: [")
    assert started[1].startswith("started 1 more server process on port 6000: [")


def test_a_database_outage_warns_once_a_minute_not_on_every_retry(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """While the database was away, each server process warned "cannot refresh API keys" and
    "cannot rescue jobs" twice a second, and once per scrape that it could not read the
    deployment: thousands of lines an hour. Each repeat is now at debug level for a minute."""
    caplog.set_level(logging.DEBUG)
    # Another test may have warned of a rescue.
    monkeypatch.setattr(app, "_RESCUE_WARNINGS", Throttle(), raising=False)

    def down(*_args: object) -> list[Any]:
        raise Unavailable("The database is unreachable; try again shortly")

    def lines(start: str) -> list[int]:
        return [r.levelno for r in caplog.records if r.getMessage().startswith(start)]

    stopped = threading.Event()
    try:
        KeyChecker(down, ttl_s=0.002).refresh_in_background(stopped)
        wait_for(lambda: len(lines("cannot refresh API keys")) >= 20, 60, "20 failed key refreshes")
        monkeypatch.setattr(store, "rescue_expired", down)
        for _ in range(20):
            app.rescue_lost_jobs(store)
        DeploymentCollector(down, down, 60.0).refresh_in_background(stopped, every_s=0.001)
        wait_for(lambda: len(lines("cannot read the deployment")) >= 20, 60, "20 failed reads")
        for start in (
            "cannot refresh API keys",
            "cannot rescue jobs",
            "cannot read the deployment's state",
        ):
            levels = lines(start)
            assert len(levels) >= 20 and levels.count(logging.WARNING) == 1, (start, levels)
    finally:
        stopped.set()


def test_a_ping_the_database_never_answers_turns_health_not_serving_and_is_not_doubled() -> None:
    """A hung database (its connections open, nothing answered) kept health SERVING for as long
    as it lasted: the health check waited on its ping without a limit. A ping now has
    `ping_timeout_s`, and one stuck is waited on again by the next checks, not joined by more."""
    answer = threading.Event()
    pings: list[int] = []

    class HungStore:
        def ping(self) -> None:
            pings.append(1)
            answer.wait(30)

    reported: list[int] = []
    monitor = HealthMonitor(
        HungStore(),  # type: ignore[arg-type]
        lambda _name, status: reported.append(status),
        ping_timeout_s=0.05,
    )
    try:
        monitor.check()
        assert monitor.serving is False
        assert set(reported) == {health_pb2.HealthCheckResponse.NOT_SERVING}
        wait_for(lambda: len(pings) == 1, 30, "the ping to start")
        monitor.check()
        monitor.check()
        assert monitor.serving is False and len(pings) == 1
    finally:
        answer.set()

    def serving() -> bool:
        monitor.check()
        return monitor.serving is True

    wait_for(serving, 30, "health to report SERVING once the ping is answered")
    assert reported[-1] == health_pb2.HealthCheckResponse.SERVING


def test_health_logs_each_change_of_the_database_once(caplog: pytest.LogCaptureFixture) -> None:
    """Health's return to SERVING was not logged (only its turn to NOT_SERVING was): an
    operator reading the log could not tell when an outage ended."""
    caplog.set_level(logging.INFO, logger="trainwire.server")
    reachable = [True]

    class FlakyStore:
        def ping(self) -> None:
            if not reachable[0]:
                raise Unavailable("The database is unreachable; try again shortly")

    monitor = HealthMonitor(FlakyStore(), lambda _name, _status: None)  # type: ignore[arg-type]
    for up in (True, True, False, False, True, True):
        reachable[0] = up
        monitor.check()
    messages = [r.getMessage() for r in caplog.records if r.name == "trainwire.server"]
    assert [m for m in messages if "database" in m] == [
        "database unreachable (The database is unreachable; try again shortly): reporting "
        "NOT_SERVING",
        "database reachable again: reporting SERVING",
    ]
