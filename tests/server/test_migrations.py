"""Migrations and ORM models agree, and a stale schema is refused with a clear message."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, DateTime, LargeBinary, bindparam, text
from sqlalchemy.exc import OperationalError

from trainwire.server.db import Database, make_engine
from trainwire.server.migrate import (
    NotMigrated,
    alembic_config,
    check_foreign_keys,
    ensure_migrated,
    head_revision,
    upgrade,
)
from trainwire.server.models import Base
from trainwire.server.records import TaskKind
from trainwire.server.store import Store


@contextmanager
def _opened(url: str) -> Iterator[Database]:
    """The database at `url`, disposed of afterwards."""
    database = Database(url)
    try:
        yield database
    finally:
        database.dispose()


def test_migrations_match_models(database_url: str) -> None:
    with _opened(database_url) as database, database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_unmigrated_database_is_refused(empty_database_url: str) -> None:
    with (
        _opened(empty_database_url) as database,
        pytest.raises(NotMigrated, match="trainwire db upgrade"),
    ):
        ensure_migrated(database, auto_migrate_sqlite=False)


def test_embedded_sqlite_migrates_itself(tmp_path: object) -> None:
    with _opened(f"sqlite:///{tmp_path}/auto.db") as database:
        ensure_migrated(database, auto_migrate_sqlite=True)
        with database.engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        assert current == head_revision(database.url)


# Longer than a SQLite page, so the value spills onto overflow pages as real checkpoints do.
CHECKPOINT_BYTES = bytes(range(256)) * 64

_INSERT_JOB = text(
    "INSERT INTO jobs (id, project, display_name, target, model_spec, training, state, queue, "
    "priority, attempt, max_attempts, labels, progress, metrics, error, created_at, updated_at) "
    "VALUES ('j1', 'default', '', '{}', '{}', '{}', 'SUCCEEDED', 'default', 0, 1, 3, '{}', "
    "'{}', '{}', '', :now, :now)"
).bindparams(bindparam("now", type_=DateTime(timezone=True)))
_INSERT_CHECKPOINT = text(
    "INSERT INTO checkpoints (job_id, epoch, step, metrics, is_final, size_bytes, data, "
    "created_at) VALUES ('j1', 1, 10, '{}', false, :size, :data, :now)"
).bindparams(
    bindparam("data", type_=LargeBinary()), bindparam("now", type_=DateTime(timezone=True))
)


def test_checkpoint_bytes_survive_the_move_to_their_own_table(empty_database_url: str) -> None:
    upgrade(empty_database_url, "0004")
    with _opened(empty_database_url) as database, database.engine.begin() as connection:
        now = datetime(2026, 11, 27, tzinfo=UTC)
        connection.execute(_INSERT_JOB, {"now": now})
        connection.execute(
            _INSERT_CHECKPOINT,
            {"size": len(CHECKPOINT_BYTES), "data": CHECKPOINT_BYTES, "now": now},
        )
        checkpoint_id = connection.execute(text("SELECT id FROM checkpoints")).scalar_one()

    upgrade(empty_database_url)
    with _opened(empty_database_url) as database:
        with database.engine.connect() as connection:
            moved = connection.execute(
                text("SELECT data FROM checkpoint_blobs WHERE checkpoint_id = :id"),
                {"id": checkpoint_id},
            ).scalar_one()
        assert bytes(moved) == CHECKPOINT_BYTES
        store = Store(database)
        assert store.checkpoint_data(checkpoint_id) == CHECKPOINT_BYTES
        listed = store.list_checkpoints("j1")
        assert [(c.id, c.epoch, c.size_bytes) for c in listed] == [
            (checkpoint_id, 1, len(CHECKPOINT_BYTES))
        ]

    command.downgrade(alembic_config(empty_database_url), "0004")
    with _opened(empty_database_url) as database, database.engine.connect() as connection:
        data = connection.execute(
            text("SELECT data FROM checkpoints WHERE id = :id"), {"id": checkpoint_id}
        ).scalar_one()
    assert bytes(data) == CHECKPOINT_BYTES


_AT_0002 = [
    "INSERT INTO datasets (id, display_name, task, num_classes, num_examples, feature_dtype, "
    "feature_shape, target_dtype, target_shape, size_bytes, sha256, labels, feature_names, "
    "class_names, created_at) VALUES ('d1', '', 'MULTICLASS_CLASSIFICATION', 2, 4, 'float32', "
    "'[4, 2]', 'int64', '[4]', 8, '', '{}', '[\"a\", \"b\"]', '[\"no\", \"yes\"]', :now)",
    "INSERT INTO dataset_blobs (dataset_id, data) VALUES ('d1', :data)",
    "INSERT INTO jobs (id, display_name, dataset_id, model_spec, training, state, queue, "
    "priority, attempt, max_attempts, labels, progress, metrics, error, created_at, updated_at) "
    "VALUES ('j1', '', 'd1', '{}', '{}', 'SUCCEEDED', 'default', 0, 1, 3, '{}', '{}', '{}', '', "
    ":now, :now)",
    "INSERT INTO checkpoints (job_id, epoch, step, metrics, is_final, size_bytes, data, "
    "created_at) VALUES ('j1', 1, 10, '{}', false, 16384, :data, :now)",
    "INSERT INTO job_metrics (job_id, name, step, epoch, value, created_at) "
    "VALUES ('j1', 'loss', 10, 1, 0.5, :now)",
    "INSERT INTO job_events (job_id, sequence, state, attempt, progress, metrics, message, "
    "created_at) VALUES ('j1', 1, 'SUCCEEDED', 1, '{}', '{}', '', :now)",
]


def test_upgrading_a_database_with_jobs_keeps_every_row(empty_database_url: str) -> None:
    """Batch migrations rebuild tables on SQLite; with foreign keys on, dropping the old `jobs`
    (0003) used to cascade to its checkpoints, metrics and events and delete them."""
    upgrade(empty_database_url, "0002")
    with _opened(empty_database_url) as database, database.engine.begin() as connection:
        values = {"data": CHECKPOINT_BYTES, "now": datetime(2026, 11, 27, tzinfo=UTC)}
        types = {"data": LargeBinary(), "now": DateTime(timezone=True)}
        for statement in _AT_0002:
            used = [name for name in values if f":{name}" in statement]
            connection.execute(
                text(statement).bindparams(*(bindparam(n, type_=types[n]) for n in used)),
                {name: values[name] for name in used},
            )

    upgrade(empty_database_url)
    with _opened(empty_database_url) as database:
        with database.engine.connect() as connection:
            counts = {
                table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in (
                    "datasets", "dataset_blobs", "jobs", "checkpoints", "checkpoint_blobs",
                    "job_metrics", "job_events",
                )
            }  # fmt: skip
        assert counts == dict.fromkeys(counts, 1)
        store = Store(database)
        (checkpoint,) = store.list_checkpoints("j1")
        assert store.checkpoint_data(checkpoint.id) == CHECKPOINT_BYTES
        assert checkpoint.is_partial is False, "checkpoints from before 0006 are epoch ends"
        job = store.get_job("j1")
        assert job.project == "default"
        assert job.target == {
            "task": "MULTICLASS_CLASSIFICATION", "num_classes": 2, "class_names": ["no", "yes"],
            "feature_names": ["a", "b"], "num_features": 2, "target_width": 1,
        }, "0003 left it {}; 0008 fills it from the dataset"  # fmt: skip
        assert TaskKind(job.target["task"]).is_classification, "the value predictions read"


def _insert_job(
    connection: Connection,
    job_id: str,
    dataset_id: str | None,
    target: str,
    state: str = "SUCCEEDED",
) -> None:
    """A finished job (no error) as revisions 0003 to 0008 store it."""
    connection.execute(
        text(
            "INSERT INTO jobs (id, project, display_name, dataset_id, target, model_spec, "
            "training, state, queue, priority, attempt, max_attempts, labels, progress, "
            "metrics, error, created_at, updated_at) VALUES (:id, 'default', '', :dataset, "
            ":target, '{}', '{}', :state, 'default', 0, 1, 3, '{}', '{}', '{}', '', "
            ":now, :now)"
        ).bindparams(bindparam("now", type_=DateTime(timezone=True))),
        {"id": job_id, "dataset": dataset_id, "target": target, "state": state,
         "now": datetime(2026, 11, 27, tzinfo=UTC)},
    )  # fmt: skip


def test_targets_gain_feature_names_and_keep_what_they_held(empty_database_url: str) -> None:
    upgrade(empty_database_url, "0007")
    held = json.dumps(
        {"task": "MULTICLASS_CLASSIFICATION", "num_classes": 2, "class_names": [],
         "num_features": 2, "target_width": 1}
    )  # fmt: skip
    with _opened(empty_database_url) as database, database.engine.begin() as connection:
        now = {"now": datetime(2026, 11, 27, tzinfo=UTC)}
        for statement in _AT_0002[:1]:
            connection.execute(
                text(statement).bindparams(bindparam("now", type_=DateTime(timezone=True))), now
            )
        _insert_job(connection, "j1", "d1", held)
        _insert_job(connection, "j2", None, "{}")
        _insert_job(connection, "j3", "d1", held, state="CANCELLED")
    upgrade(empty_database_url)
    with _opened(empty_database_url) as database:
        store = Store(database)
        assert store.get_job("j1").target == {
            "task": "MULTICLASS_CLASSIFICATION", "num_classes": 2, "class_names": [],
            "feature_names": ["a", "b"], "num_features": 2, "target_width": 1,
        }, "held values kept (class_names stays []), feature names added"  # fmt: skip
        assert store.get_job("j2").target == {}, "no dataset to fill it from"
        assert store.get_job("j3").error == "cancelled by request"
        assert store.get_job("j1").error == "", "only cancelled jobs get the reason"


def _at_0002_with(url: str, statement: str) -> None:
    """A SQLite database at revision 0002 where `statement` ran with foreign keys off."""
    upgrade(url, "0002")
    engine = make_engine(url, sqlite_foreign_keys=False)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def test_an_upgrade_that_fails_half_way_on_sqlite_is_rolled_back_whole(tmp_path: object) -> None:
    """0003 rebuilds tables and adds api_keys, then 0004 fails (its table exists already): on
    SQLite too the upgrade is one transaction, so nothing of 0003 remains."""
    url = f"sqlite:///{tmp_path}/half.db"
    _at_0002_with(url, "CREATE TABLE workers (id INTEGER PRIMARY KEY)")
    with pytest.raises(OperationalError, match="workers already exists"):
        upgrade(url)
    with _opened(url) as database, database.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == "0002"
        tables = set(connection.execute(text("SELECT name FROM sqlite_master")).scalars())
        assert "api_keys" not in tables
        job_columns = {row[1] for row in connection.exec_driver_sql("PRAGMA table_info(jobs)")}
        assert "project" not in job_columns, "0003's rebuild of jobs was undone"


def test_rows_broken_before_an_upgrade_are_kept_and_reported(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path}/dangling.db"
    _at_0002_with(
        url,
        "INSERT INTO job_events (job_id, sequence, state, attempt, progress, metrics, message, "
        "created_at) VALUES ('missing', 1, 'QUEUED', 1, '{}', '{}', '', '2026-11-27 00:00:00')",
    )
    upgrade(url)
    with _opened(url) as database, database.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head_revision(url)
        events = connection.execute(text("SELECT job_id FROM job_events")).scalars().all()
        assert events == ["missing"]
    assert "1 rows have a foreign key that points to no row (job_events -> jobs)" in caplog.text


def test_a_migration_that_breaks_foreign_keys_is_refused() -> None:
    before = Counter({"job_events -> jobs": 1})
    check_foreign_keys(before, Counter({"job_events -> jobs": 1}))  # broken before: allowed
    check_foreign_keys(before, Counter())
    with pytest.raises(
        RuntimeError, match=r"2 more rows .*\(checkpoints -> jobs, job_events -> jobs\)"
    ):
        check_foreign_keys(before, Counter({"job_events -> jobs": 2, "checkpoints -> jobs": 1}))


def test_a_downgrade_below_0003_with_jobs_whose_dataset_is_gone_is_refused_by_name(
    empty_database_url: str,
) -> None:
    upgrade(empty_database_url, "0003")
    with _opened(empty_database_url) as database, database.engine.begin() as connection:
        _insert_job(connection, "j1", None, "{}")
    with pytest.raises(RuntimeError, match=r"1 jobs have no dataset .*: jobs/j1; delete them"):
        command.downgrade(alembic_config(empty_database_url), "0002")
    with _opened(empty_database_url) as database, database.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == "0003"
