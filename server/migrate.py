"""Schema migrations: run Alembic from code and refuse to serve an un-migrated database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import trainwire.migrations

from .db import Database, normalise_url


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
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


class NotMigrated(RuntimeError):
    """The database schema is behind the code."""


def ensure_migrated(database: Database, auto_migrate_sqlite: bool) -> None:
    """Migrates an embedded SQLite database if allowed; otherwise refuses a stale schema."""
    head = head_revision(database.url)
    current = current_revision(database)
    if current == head:
        return
    if database.is_sqlite and auto_migrate_sqlite:
        upgrade(database.url)
        return
    shown = database.engine.url.render_as_string(hide_password=True)
    raise NotMigrated(
        f"The database {shown} is at schema revision {current or 'none'}, but this Trainwire "
        f"needs {head}. Run `trainwire db upgrade` (with the same TRAINWIRE_DATABASE_URL) first."
    )
