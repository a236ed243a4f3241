"""Schema migrations: run Alembic from code, check SQLite's foreign keys around them, and refuse
to serve an un-migrated database or one a newer Trainwire migrated."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from importlib.metadata import version
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import JSON, Column, Connection
from sqlalchemy.exc import OperationalError

import trainwire.migrations

from .config import default_database_url
from .db import Database, masked_url, normalise_url, sqlite_file, suggested_command
from .errors import NotFound, Unavailable

log = logging.getLogger("trainwire.server")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(trainwire.migrations.__file__).parent))
    # Alembic's config is an INI file: '%' must be escaped.
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(database: Database) -> str | None:
    with connect(database) as connection:
        return MigrationContext.configure(connection).get_current_revision()


def connect(database: Database) -> Connection:
    """A connection to `database`, or Unavailable naming it (password masked) with the driver's
    reason: reading the schema revision is the first thing the operator commands and `serve` do
    with the database, so a server that is down, an unknown host, a missing database or a
    refused login is one message there, not a traceback. (Unlike the store's errors, which
    reach clients over gRPC, this names the host and user: it is shown to the operator.)"""
    try:
        return database.engine.connect()
    except OperationalError as error:
        reason = " ".join(str(error.orig).split())  # psycopg's text spans lines
        raise Unavailable(
            f"cannot connect to the database {masked_url(database.url)}: {reason}\n"
            "Check TRAINWIRE_DATABASE_URL (or --database-url), and that the database server is up."
        ) from error


def compare_server_default(
    _context: MigrationContext,
    inspected_column: Column[Any],
    metadata_column: Column[Any],
    inspected_default: str | None,
    metadata_default: Any,
    _rendered_metadata_default: str | None,
) -> bool | None:
    """Alembic's `compare_server_default` hook: whether a JSON column's server default differs,
    compared as JSON values; None (Alembic's own comparison) for every other column.

    PostgreSQL reflects `'{}'::json` where the model says `{}`, and Alembic compares the two by
    asking the server `'{}'::json = '{}'`, which fails: json has no equality operator.
    """
    if not isinstance(metadata_column.type, JSON):
        return None
    declared = getattr(metadata_default, "arg", None)
    if inspected_default is None or not isinstance(declared, str):
        return None
    return _json_or_text(_sql_literal_text(inspected_default)) != _json_or_text(declared)


def _sql_literal_text(default: str) -> str:
    """The text of a reflected string default: `'{}'::json` (PostgreSQL) or `'{}'` (SQLite) is
    `{}`."""
    default = re.sub(r"::[a-z ]+$", "", default.strip())
    if len(default) >= 2 and default[0] == default[-1] == "'":
        return default[1:-1].replace("''", "'")
    return default


def _json_or_text(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def broken_foreign_keys(connection: Connection) -> Counter[str]:
    """How many rows of a SQLite database have a foreign key that points to no row, by
    "table -> referred table"."""
    # Each row of the pragma: the table, the row's rowid, the table it refers to, the key's index.
    rows = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    return Counter(f"{table} -> {parent}" for table, _, parent, _ in rows)


def check_foreign_keys(before: Counter[str], after: Counter[str]) -> None:
    """Refuses a migration that left more rows with a broken foreign key than it found (the
    caller's transaction rolls it back); warns of rows that were broken before it."""
    broken_by_it = after - before
    if broken_by_it:
        raise RuntimeError(
            f"this migration would leave {sum(broken_by_it.values())} more rows whose foreign key "
            f"points to no row ({', '.join(sorted(broken_by_it))}), so it was rolled back: "
            "nothing was changed"
        )
    if after:
        log.warning(
            "%d rows have a foreign key that points to no row (%s); they did before this "
            "migration too: repair or delete them",
            sum(after.values()),
            ", ".join(sorted(after)),
        )


class NotMigrated(RuntimeError):
    """The database schema is behind the code."""


class NewerSchema(RuntimeError):
    """The database schema was migrated by a newer Trainwire: a revision this one does not know."""


def refuse_newer_schema(database: Database, current: str | None) -> None:
    """Refuses a database at a revision this Trainwire does not know, which a newer Trainwire's
    migrations wrote: `trainwire db upgrade` cannot help there (Alembic cannot even locate the
    revision), and this code would read tables it does not know. This Trainwire's revisions are
    one line up to its head, so any revision it knows is the head or behind it."""
    script = ScriptDirectory.from_config(alembic_config(database.url))
    if current is None or current in {revision.revision for revision in script.walk_revisions()}:
        return
    head = script.get_current_head()
    raise NewerSchema(
        f"The database {masked_url(database.url)} is at schema revision {current}, which this "
        f"Trainwire ({version('trainwire')}, revisions up to {head}) does not know: a newer "
        "Trainwire migrated it, and this version cannot serve it. Run a Trainwire at least as new "
        f"as the one that migrated it, or downgrade the schema to revision {head} with that "
        "newer Trainwire's migrations."
    )


def upgrade_suggestion(database_url: str, database_url_option: str | None) -> str:
    """`trainwire db upgrade` as a message tells a person to run it on `database_url`, the
    database of the command they ran, which `database_url_option` named if not None (see
    `suggested_command`). Else TRAINWIRE_DATABASE_URL named it, which the command needs again,
    or (the URL is the default one) nothing did, and the command alone names it too."""
    if database_url_option is None and database_url != default_database_url():
        return f"{suggested_command('db upgrade', None)} (with the same TRAINWIRE_DATABASE_URL)"
    return suggested_command("db upgrade", database_url_option)


def ensure_migrated(
    database: Database, auto_migrate_sqlite: bool, database_url_option: str | None = None
) -> None:
    """Migrates an embedded SQLite database if allowed; otherwise refuses a stale schema. A schema
    a newer Trainwire migrated is refused either way. `database_url_option`: the --database-url
    that named the database, which the command the refusal suggests must carry."""
    head = head_revision(database.url)
    current = current_revision(database)
    if current == head:
        return
    refuse_newer_schema(database, current)
    if database.is_sqlite and auto_migrate_sqlite:
        upgrade(database.url)
        return
    shown = masked_url(database.url)
    raise NotMigrated(
        f"The database {shown} is at schema revision {current or 'none'}, but this Trainwire "
        f"needs {head}. Run {upgrade_suggestion(database.url, database_url_option)} first."
    )


def refuse_missing_sqlite(
    database: Database, database_url_option: str | None = None, serving: bool = False
) -> None:
    """Refuses a SQLite URL whose file does not exist: connecting would create an empty database
    there, and a command run in the wrong directory would then read, or add keys to, a database
    the server never sees. `database_url_option`: as `ensure_migrated` takes it. `serving`: the
    refusal of `serve` itself, with TRAINWIRE_AUTO_MIGRATE_SQLITE off."""
    path = sqlite_file(database.url)
    if path is None or path.exists():
        return
    shown = masked_url(database.url)
    relative = not Path(database.engine.url.database or "").is_absolute()
    source = f"{shown} names a path relative to the current directory" if relative else shown
    upgrade = suggested_command("db upgrade", database_url_option)
    if serving:
        raise NotFound(
            f"no database at {path} (the URL {source}), and TRAINWIRE_AUTO_MIGRATE_SQLITE is "
            "false: point TRAINWIRE_DATABASE_URL (or --database-url) at the server's database, "
            f"or create one with {upgrade} (or with TRAINWIRE_AUTO_MIGRATE_SQLITE=true)."
        )
    raise NotFound(
        f"no database at {path} (the URL {source}). Run this command from the server's "
        "directory, or set TRAINWIRE_DATABASE_URL (or --database-url) to the server's database; "
        f"{upgrade} or {suggested_command('serve', database_url_option)} creates a new one."
    )


def check_deployment(database: Database, database_url_option: str | None = None) -> None:
    """What a command that reads or administers an existing deployment checks before it uses the
    database: that the database exists and its schema is the code's. It creates and migrates
    nothing (`trainwire db upgrade` and `trainwire serve` do). `database_url_option`: as
    `ensure_migrated` takes it."""
    refuse_missing_sqlite(database, database_url_option)
    ensure_migrated(database, auto_migrate_sqlite=False, database_url_option=database_url_option)
