"""The `trainwire` command: the operator's commands (serve, worker, db, keys, status, health) and
the user commands of `trainwire.client.cli` (datasets, jobs, predict)."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

# Nothing here imports grpc before `main` has set GRPC_VERBOSITY (see `_quiet_grpc`).
if TYPE_CHECKING:
    from .config import Settings

# The commands of `trainwire.client.cli.add_user_commands`.
USER_COMMANDS = ("datasets", "jobs", "predict")


def _quiet_grpc(arguments: Sequence[str]) -> None:
    """Keeps gRPC's own log lines (`I1128 ... ssl_transport_security.cc ... Handshake failed`,
    once per connection attempt) off a user command's stderr, where they came before its message
    and broke its --json error: that message already says what failed (gRPC's status details)
    and what to check. GRPC_VERBOSITY=ERROR, unless the user set it; gRPC reads it once, when it
    is imported, so not in a process that has imported it already. Servers and workers keep
    gRPC's logging, which operators read."""
    if arguments[:1] and arguments[0] in USER_COMMANDS and "grpc" not in sys.modules:
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


# The flags of settings, by field: `Settings.setting` names the flag a value came from.
_SETTING_FLAGS = {
    "database_url": "--database-url",
    "host": "--host",
    "port": "--port",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "tls_client_ca": "--tls-client-ca",
    "allow_open_public": "--allow-open-public",
}


def _settings(args: argparse.Namespace) -> Settings:
    from .config import Settings

    given: dict[str, Any] = {name: getattr(args, name, None) for name in _SETTING_FLAGS}
    given["allow_open_public"] = given["allow_open_public"] or None  # store_true: False is unset
    given["workers"] = _worker_processes(args)
    workers_flag = "--concurrency" if args.command == "worker" else "--workers"
    flags = {**_SETTING_FLAGS, "workers": workers_flag}
    return Settings.from_env(
        # Only `serve` serves TLS, with its key; `health` and `status --target` probe a server
        # with its certificate alone (and show it, with its key when they have it, to a server
        # that requires client certificates), and the other commands use neither.
        serving=args.command == "serve",
        database_url_option=given["database_url"],
        flags={name: flags[name] for name, value in given.items() if value is not None},
        **given,
    )


def _worker_processes(args: argparse.Namespace) -> int | None:
    """The worker processes that share this machine's cores (each takes its share as BLAS
    threads): `serve --workers`, or a `worker` command's `--concurrency`. A supervised worker (one
    `serve` or `worker --concurrency N` started) keeps its supervisor's count, which reaches it as
    TRAINWIRE_WORKERS; None leaves the environment's value."""
    if args.command == "worker" and args.parent_pid is None:
        return int(args.concurrency)
    return getattr(args, "workers", None)


def _serve(args: argparse.Namespace) -> int:
    from .app import serve
    from .logs import configure_logging

    settings = _settings(args)  # first: it names every setting's problem, the log settings' too
    configure_logging()
    return serve(settings, parent_pid=args.parent_pid, index=args.index, exit_with=args.exit_with)


def _worker(args: argparse.Namespace) -> int:
    if args.concurrency < 1:  # `serve --workers 0` still serves; this would idle silently
        raise ValueError(
            "--concurrency must be at least 1 (the worker processes to run). "
            f"Received: {args.concurrency}"
        )
    settings = _settings(args)
    if args.parent_pid is None:  # a supervised worker's supervisor checked for it
        _check_worker_database(settings)
    if args.concurrency == 1:
        from .worker import run_worker_process

        run_worker_process(settings, args.index, args.queue, parent_pid=args.parent_pid)
        return 0
    import signal
    import threading

    from .logs import configure_logging
    from .supervisor import WorkerPool

    configure_logging()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    pool = WorkerPool(settings, args.concurrency, args.queue)
    pool.start()
    while not stopping.wait(1.0):
        pool.supervise()
    pool.stop()
    return 0


def _check_worker_database(settings: Settings) -> None:
    """Refuses, before any worker starts, a database workers cannot use: a SQLite file that does
    not exist (connecting would create an empty one, where each round fails on a missing table),
    a schema behind the code, or one that cannot be reached. Once running, a worker rides out
    an outage by retrying."""
    from .db import Database
    from .migrate import check_deployment

    database = Database(settings.database_url, idle_in_transaction_s=settings.lease_s)
    try:
        check_deployment(database, settings.database_url_option)
    finally:
        database.dispose()


def _db(args: argparse.Namespace) -> int:
    from .db import Database, masked_url
    from .migrate import (
        current_revision,
        head_revision,
        refuse_missing_sqlite,
        refuse_newer_schema,
        upgrade,
        upgrade_suggestion,
    )

    settings = _settings(args)
    database = Database(settings.database_url)
    try:
        if args.db_command == "current":  # it must not create the database it reports on
            refuse_missing_sqlite(database, settings.database_url_option)
        # Read before upgrading too: a database that cannot be reached is then one message.
        current = current_revision(database)
    finally:
        database.dispose()
    shown, head = masked_url(database.url), head_revision(database.url)
    if args.db_command == "upgrade":
        refuse_newer_schema(database, current)  # nothing to upgrade to: this code is older
        upgrade(database.url)
        print(f"database {shown} is at revision {head} (it was at {current or 'none'})")
        return 0
    print(f"database {shown}")
    print(f"current revision: {current or 'none'}; head: {head}")
    if current == head:
        return 0
    refuse_newer_schema(database, current)  # upgrading cannot help there
    print(
        "trainwire: the database is behind this Trainwire: run "
        f"{upgrade_suggestion(database.url, settings.database_url_option)} to migrate it",
        file=sys.stderr,
    )
    return 1


def _refuse_a_secret(key_id: str, database_url_option: str | None) -> None:
    """Refuses, without echoing it, a `keys revoke` argument that may hold a key's secret: the
    key pasted whole (with a space, or as "Bearer tw_…"), or without its prefix (longer than any
    id). Only the id of a key read from it is named; a short unknown id goes on to be named by
    the not-found answer. The commands it suggests carry `database_url_option`, if given."""
    from .auth import KEY_ID, KEY_PREFIX, masked_key, parse_key
    from .db import suggested_command
    from .errors import InvalidArgument

    pasted = key_id.strip().removeprefix("Bearer ").strip()
    parsed = parse_key(pasted)
    if KEY_ID.fullmatch(key_id) or not (
        parsed or pasted.startswith(KEY_PREFIX) or len(key_id) > 32  # an id has 16 characters
    ):
        return
    # One command to run next, carrying the --database-url given: `keys revoke` with the id read
    # from the key, else `keys list`, which shows the ids.
    takes_an_id = "`trainwire keys revoke` takes the key's id (16 hexadecimal digits)"
    if parsed:
        revoke = suggested_command(f"keys revoke {parsed[0]}", database_url_option)
        raise InvalidArgument(
            f"{masked_key(pasted)} looks like an API key's secret, not its id: {takes_an_id}; "
            f"this key's id is {parsed[0]}: {revoke}"
        )
    keys_list = suggested_command("keys list", database_url_option)
    raise InvalidArgument(
        f"{takes_an_id}, which {keys_list} shows; what was given is not shown, as it may hold a "
        "secret"
    )


def _keys(args: argparse.Namespace) -> int:
    from .db import Database
    from .migrate import check_deployment
    from .store import Store

    settings = _settings(args)  # a malformed --database-url is a configuration error first
    if args.keys_command == "revoke":
        _refuse_a_secret(args.key_id, settings.database_url_option)
    database = Database(settings.database_url, idle_in_transaction_s=settings.lease_s)
    try:
        # Keys live in the server's database: one made anywhere else is one it never sees.
        check_deployment(database, settings.database_url_option)
        store = Store(database)
        if args.keys_command == "create":
            created = store.create_api_key(args.project, args.name)
            print(f"created key {created.id} for project {created.project}; it is shown once:")
            print(created.key)
        elif args.keys_command == "revoke":
            earlier = store.revoke_api_key(args.key_id)
            if earlier is None:
                print(f"revoked key {args.key_id}")
            else:  # revoking is idempotent: nothing changed, and nothing failed
                print(f"key {args.key_id} was already revoked ({earlier:%Y-%m-%d %H:%M} UTC)")
        else:
            _print_keys(store.list_api_keys(), settings.database_url_option)
    finally:
        database.dispose()
    return 0


def _print_keys(keys: list[dict[str, Any]], database_url_option: str | None) -> None:
    """`keys list`: a table like the user commands' (never a secret), or how to make a key (in
    the database `database_url_option` named, if given)."""
    from trainwire.client.cli import table

    from .db import suggested_command

    if not keys:
        create = suggested_command("keys create --project NAME", database_url_option)
        print(f"no API keys; create one with {create}")
        return
    rows = [
        (key["id"], key["project"],
         f"revoked {key['revoked_at']:%Y-%m-%d %H:%M}" if key["revoked_at"] else "active",
         key["name"])
        for key in keys
    ]  # fmt: skip
    print(table(rows, ("ID", "PROJECT", "STATE", "NAME")))


def _status(args: argparse.Namespace) -> int:
    from .status import collect_status, render, to_json

    status = collect_status(_settings(args), args.target)
    print(to_json(status) if args.json else render(status))
    # The JSON has it as server.hint; the table's readers get it as `trainwire health` gives it.
    hint = status.get("server", {}).get("hint")
    if hint and not args.json:
        print(f"trainwire: {hint}", file=sys.stderr)
    return 0


def _health(args: argparse.Namespace) -> int:
    from .status import HINTED, probe_health_hint, server_health

    settings = _settings(args)
    # This machine's server, with its own settings (TRAINWIRE_PORT, its TLS certificate), unless
    # told otherwise. Not TRAINWIRE_TARGET: that is the user commands' server, which an
    # environment shared with clients (an env file, a ConfigMap) would turn a container's
    # health check to.
    target = args.target or f"127.0.0.1:{settings.port}"
    health = server_health(target, settings)
    print(f"{target}: {health}")
    if health in HINTED:
        print(f"trainwire: {probe_health_hint(settings)}", file=sys.stderr)
    return 0 if health == "SERVING" else 1


def _command(parent: Any, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """An operator command's parser: its one-line `help` in its parent's listing, and its own
    --help saying what it does and listing the exit codes, as each user command's does."""
    from trainwire.client.cli import exit_codes_epilog

    parser: argparse.ArgumentParser = parent.add_parser(
        name,
        help=help,
        # Wrapped here: the raw formatter, which keeps the epilog's table, wraps nothing.
        description=textwrap.fill(description, 88),
        epilog=exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    from trainwire.client.cli import ArgumentParser, add_user_commands, exit_codes_epilog

    parser = ArgumentParser(
        prog="trainwire",
        description=__doc__,
        # One table of exit codes for the operator and the user commands alike.
        epilog=exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = _command(
        commands,
        "serve",
        "run the gRPC server with embedded worker processes",
        "Run the gRPC server, with --workers embedded worker processes that train queued jobs. "
        "It needs a database at this Trainwire's schema revision: run `trainwire db upgrade` "
        "first, except for a SQLite database, which is migrated at start "
        "(TRAINWIRE_AUTO_MIGRATE_SQLITE).",
    )
    serve.add_argument("--host", help="address to bind (TRAINWIRE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port, 0 for any free one (TRAINWIRE_PORT, 50051)")
    serve.add_argument("--workers", type=int, help="worker processes (TRAINWIRE_WORKERS, 2)")
    serve.add_argument("--database-url", help="SQLAlchemy URL (TRAINWIRE_DATABASE_URL)")
    serve.add_argument("--tls-cert", help="PEM certificate: serve TLS (TRAINWIRE_TLS_CERT)")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert (TRAINWIRE_TLS_KEY)")
    serve.add_argument(
        "--tls-client-ca",
        help="require client certificates signed by this CA: mutual TLS (TRAINWIRE_TLS_CLIENT_CA)",
    )
    serve.add_argument(
        "--allow-open-public",
        action="store_true",
        help="serve a non-loopback address open (without API keys) until the first key is "
        "created in its database; from then on every call needs a key, even after all are "
        "revoked (TRAINWIRE_ALLOW_OPEN_PUBLIC=true)",
    )
    serve.set_defaults(handler=_serve)

    serve.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument("--exit-with", type=int, help=argparse.SUPPRESS)
    worker = _command(
        commands,
        "worker",
        "run worker processes that train queued jobs",
        "Run worker processes that train the queued jobs of a server's database (the same "
        "TRAINWIRE_DATABASE_URL), on any machine that reaches it. Refused at start for a "
        "database that does not exist or whose schema is not this Trainwire's.",
    )
    worker.add_argument(
        "--concurrency", type=int, default=1, help="worker processes to run (default 1)"
    )
    worker.add_argument("--queue", action="append", default=[], help="only take jobs of this queue")
    worker.add_argument("--database-url", help="SQLAlchemy URL (TRAINWIRE_DATABASE_URL)")
    worker.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    worker.set_defaults(handler=_worker)

    db = commands.add_parser(
        "db",
        help="database schema: upgrade it or show its revision",
        description=textwrap.fill(
            "The database's schema: `upgrade` migrates it to this Trainwire's revision, "
            "`current` shows its revision; `trainwire db COMMAND --help` tells more.",
            88,
        ),
        epilog=exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Also accepted before the subcommand (`db --database-url URL upgrade`), as it once was.
    db.add_argument("--database-url", help="SQLAlchemy URL (TRAINWIRE_DATABASE_URL)")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    for name, text, description in (
        (
            "upgrade",
            "migrate the schema to this Trainwire's revision",
            "Migrate the database's schema to this Trainwire's revision (the head), creating "
            "a SQLite file that does not exist; refused (exit 1) for a schema a newer "
            "Trainwire migrated.",
        ),
        (
            "current",
            "show the schema's revision and this Trainwire's",
            "Show the database and its schema revision beside this Trainwire's (the head); "
            "exit 0 when they match, exit 1 when the schema is behind (run `trainwire db "
            "upgrade`) or ahead (a newer Trainwire migrated it). Creates no database.",
        ),
    ):
        sub = _command(db_commands, name, text, description)
        # SUPPRESS: left unset here, a URL given before the subcommand is not overwritten.
        sub.add_argument(
            "--database-url",
            default=argparse.SUPPRESS,
            help="SQLAlchemy URL (TRAINWIRE_DATABASE_URL)",
        )
    db.set_defaults(handler=_db)

    keys = commands.add_parser(
        "keys",
        help="API keys (each belongs to one project)",
        description=textwrap.fill(
            "API keys, each of one project, kept in the server's database: `create`, `list`, "
            "`revoke`; `trainwire keys COMMAND --help` tells more.",
            88,
        ),
        epilog=exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = _command(
        keys_commands,
        "create",
        "create a key and print it once",
        "Create an API key for a project and print it, the only time it is shown (the database "
        "keeps only its hash). The database must be the server's, existing and migrated.",
    )
    create.add_argument("--project", required=True, help="the project the key can see")
    create.add_argument("--name", default="", help="a note on who uses the key")
    listing = _command(
        keys_commands,
        "list",
        "list keys (never their secrets)",
        "List the API keys of the server's database, with their project, state and name; "
        "never their secrets.",
    )
    revoke = _command(
        keys_commands,
        "revoke",
        "revoke a key",
        "Revoke an API key by its id; revoking a revoked key changes nothing (exit 0).",
    )
    revoke.add_argument(
        "key_id", help="the key's id, as keys list and keys create show it (not its tw_… secret)"
    )
    for sub in (create, listing, revoke):
        sub.add_argument("--database-url", help="SQLAlchemy URL (TRAINWIRE_DATABASE_URL)")
    keys.set_defaults(handler=_keys)

    status = _command(
        commands,
        "status",
        "a one-screen summary of the deployment",
        "Summarise a deployment from its database (which must exist, migrated): version and "
        "schema, queue depth by state and queue, workers, recent failures. With --target, "
        "also probe that server's health (exit 0 whatever it answers).",
    )
    status.add_argument("--database-url", help="SQLAlchemy URL (TRAINWIRE_DATABASE_URL)")
    status.add_argument("--target", help="also check this server's health (host:port)")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.set_defaults(handler=_status)

    health = _command(
        commands,
        "health",
        "exit 0 when a server answers SERVING, else 1",
        "Ask a server's gRPC health service whether it is SERVING (the container's health "
        "check): exit 0 when it is, 1 when it is not or cannot be reached. Over TLS, trusting "
        "TRAINWIRE_TLS_CERT, when that is set.",
    )
    health.add_argument(
        "--target",
        help="host:port (default 127.0.0.1:TRAINWIRE_PORT, this machine's server; "
        "TRAINWIRE_TARGET is the user commands' and is not read)",
    )
    health.set_defaults(handler=_health)

    add_user_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    _quiet_grpc(arguments)  # first: the imports below load grpc
    from trainwire.client.cli import parse_arguments

    from .errors import TrainwireError

    args = parse_arguments(build_parser(), arguments)
    try:
        return int(args.handler(args))
    except BrokenPipeError:  # stdout's reader went away (`| head`): no error of the command
        from trainwire.client.cli import stdout_closed

        return stdout_closed()
    except TrainwireError as error:  # the store's domain errors: the user commands' exit codes
        from trainwire.client.cli import EXIT_CODES, FAILED

        print(f"trainwire: {error.code.name.lower().replace('_', ' ')}: {error}", file=sys.stderr)
        return EXIT_CODES.get(error.code, FAILED)
    except ValueError as error:  # configuration mistakes
        print(f"trainwire: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f"trainwire: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
