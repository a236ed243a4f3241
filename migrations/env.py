"""Alembic environment: migrates the database named by the config against the ORM metadata."""

from __future__ import annotations

from collections import Counter

from alembic import context
from sqlalchemy import Connection, text

from trainwire.server.db import make_engine
from trainwire.server.migrate import (
    broken_foreign_keys,
    check_foreign_keys,
    compare_server_default,
)
from trainwire.server.models import Base

target_metadata = Base.metadata

#: The PostgreSQL advisory lock every migration of a database holds for its whole transaction, so
#: two runs at once (two `trainwire db upgrade`, a deploy's migrate job beside another) take turns
#: instead of both creating the same tables. Any fixed 64-bit key: only migrations take it.
MIGRATION_LOCK_KEY = 0x7472_6E77_6D69_6772  # "trnwmigr"


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
        # The models declare the server defaults migrations gave their columns: autogenerate
        # must see a changed one, and not mistake `'{}'::json` for a change (see the function).
        compare_server_default=compare_server_default,
    )
    # Migrations on SQLite run with foreign keys off (see `run_online`), so nothing else would
    # notice rows they leave pointing nowhere: compared before and after, inside the one
    # transaction, which a refusal rolls back. Each scan reads every table, so it is skipped
    # when no migration will run (`trainwire db upgrade` on a database already at head).
    sqlite = connection.dialect.name == "sqlite"
    with context.begin_transaction():
        # A run that waited here reads the revision only now, after the one before it committed,
        # and finds nothing left to do (Alembic reads it in `run_migrations`). SQLite's
        # transaction began IMMEDIATE (see `run_online`), which is its lock.
        if not sqlite:
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        check = sqlite and not at_destination()
        broken_before = broken_foreign_keys(connection) if check else Counter[str]()
        context.run_migrations()
        if check:
            check_foreign_keys(broken_before, broken_foreign_keys(connection))


def at_destination() -> bool:
    """Whether the database is at exactly the revisions asked for, so no migration will run,
    upgrade or downgrade. False when that cannot be told: a relative revision ("-1") is resolved
    by Alembic from the current one, and autogenerate and stamp name no destination."""
    try:
        destination = context.get_revision_argument()  # "head" resolved; None for "base"
    except KeyError:
        return False
    wanted = {destination} if isinstance(destination, str) else set(destination or ())
    return set(context.get_context().get_current_heads()) == wanted


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
        # SQLite: the write lock at BEGIN, so a second run at once waits for the first to commit
        # (up to the busy timeout). Begun DEFERRED, both would read first, and the one that then
        # writes second fails at once ("database is locked"): SQLite cannot let it wait on a read
        # it made before the other's write.
        with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as connection:
            run_with(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Trainwire migrations run online only: use `trainwire db upgrade`.")
run_online()
