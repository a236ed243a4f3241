"""Alembic environment: migrates the database named by the config against the ORM metadata."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from trainwire.server.db import make_engine
from trainwire.server.models import Base

target_metadata = Base.metadata


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        # All of an upgrade in one transaction on SQLite too (Alembic assumes SQLite cannot roll
        # DDL back; it can, with the explicit BEGIN our engine emits): a migration that fails
        # half-way leaves the database as it found it.
        transactional_ddl=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
        if connection.dialect.name == "sqlite":
            _check_foreign_keys(connection)


def _check_foreign_keys(connection: Connection) -> None:
    """Refuses to finish an upgrade after which a row's foreign key points to no row.

    Migrations on SQLite run with foreign keys off (see `run_online`), so nothing else would
    notice; raising here, inside the upgrade's one transaction, rolls all of it back.
    """
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        # Each row: the table, the row's rowid, the table it refers to, the key's index.
        pairs = sorted({f"{table} -> {parent}" for table, _, parent, _ in broken})
        raise RuntimeError(
            f"after this upgrade {len(broken)} rows would have a foreign key that points to no "
            f"row ({', '.join(pairs)}), so it was rolled back: repair or delete those rows, then "
            "upgrade again"
        )


def run_online() -> None:
    # Foreign keys off on SQLite, as Alembic advises for batch mode: a batch operation rebuilds a
    # table by copying it and dropping the original, and dropping a table with foreign keys on
    # deletes its rows first, which ON DELETE CASCADE carries into every child table (upgrading
    # 0002 to 0003 emptied checkpoints, events and metrics that way). Migrations always run on
    # this engine of their own, never on a caller's connection, so the setting cannot be missed.
    engine = make_engine(
        context.config.get_main_option("sqlalchemy.url") or "", sqlite_foreign_keys=False
    )
    try:
        with engine.connect() as connection:
            run_with(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Trainwire migrations run online only: use `trainwire db upgrade`.")
run_online()
