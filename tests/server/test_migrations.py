"""Migrations and ORM models agree, and a stale schema is refused with a clear message."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from trainwire.server.db import Database
from trainwire.server.migrate import NotMigrated, ensure_migrated, head_revision
from trainwire.server.models import Base


def test_migrations_match_models(database_url: str) -> None:
    database = Database(database_url)
    try:
        with database.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
    finally:
        database.dispose()
    assert differences == []


def test_unmigrated_database_is_refused(empty_database_url: str) -> None:
    database = Database(empty_database_url)
    try:
        with pytest.raises(NotMigrated, match="trainwire db upgrade"):
            ensure_migrated(database, auto_migrate_sqlite=False)
    finally:
        database.dispose()


def test_embedded_sqlite_migrates_itself(tmp_path: object) -> None:
    database = Database(f"sqlite:///{tmp_path}/auto.db")
    try:
        ensure_migrated(database, auto_migrate_sqlite=True)
        with database.engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        assert current == head_revision(database.url)
    finally:
        database.dispose()
