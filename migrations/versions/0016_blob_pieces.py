"""blob pieces

A dataset's or checkpoint's bytes were one bytea value, and `pg_dump` writes a value as text
(a bytea as hex, twice its size), which PostgreSQL builds only up to 1 GB: one value over 512
MiB (a 45M-parameter float32 model trained with Adam checkpoints 539 MB) failed the whole dump,
leaving the operator no backup. `dataset_blobs` and `checkpoint_blobs` now hold a value as rows
of 1 MiB pieces, keyed by (its dataset or checkpoint, `piece` from 0); existing values are cut
into such rows. A downgrade joins them again.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-28 23:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The size of a piece (`server.store._BLOB_PIECE` today, written here as this revision cuts).
PIECE = 1024 * 1024
# Each blob table and the column naming what its bytes belong to.
TABLES = {"dataset_blobs": "dataset_id", "checkpoint_blobs": "checkpoint_id"}


def upgrade() -> None:
    for table, key in TABLES.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("piece", sa.Integer(), server_default="0", nullable=False)
            )
            batch_op.drop_constraint(f"pk_{table}", type_="primary")
            batch_op.create_primary_key(f"pk_{table}", [key, "piece"])
        if op.get_bind().dialect.name == "postgresql":
            _cut_postgresql(table, key)
        else:
            _cut_sqlite(table, key)


def _cut_postgresql(table: str, key: str) -> None:
    # substring(data FROM 1) detoasts each value once (as `Store._read_blob` reads one); pieces
    # taken from the stored value would decompress it from its start for each.
    op.execute(
        f"INSERT INTO {table} ({key}, piece, data) "
        f"SELECT blob.{key}, (start - 1) / {PIECE}, substring(blob.data FROM start FOR {PIECE}) "
        f"FROM (SELECT {key}, substring(data FROM 1) AS data FROM {table} "
        f"WHERE octet_length(data) > {PIECE} OFFSET 0) AS blob "
        f"CROSS JOIN LATERAL generate_series({PIECE} + 1, octet_length(blob.data), {PIECE}) "
        "AS start"
    )
    op.execute(
        f"UPDATE {table} SET data = substring(data FROM 1 FOR {PIECE}) "
        f"WHERE piece = 0 AND octet_length(data) > {PIECE}"
    )


def _cut_sqlite(table: str, key: str) -> None:
    # Read through a blob handle, in order: substr() loads the whole value for each piece. The
    # pieces go to a temporary table first: an insert into `table` between two reads made the
    # handle walk the value's overflow pages from its start again (a 300 MiB value: 61 s,
    # against 16-18 s for the whole migration).
    bind = op.get_bind()
    driver = bind.connection.driver_connection
    bind.execute(sa.text("CREATE TEMPORARY TABLE cut_pieces (owner, piece, data)"))
    values = bind.execute(
        sa.text(f"SELECT rowid, {key}, length(data) FROM {table} WHERE length(data) > {PIECE}")
    ).all()
    for rowid, owner, size in values:
        with driver.blobopen(table, "data", rowid, readonly=True) as blob:
            blob.seek(PIECE)
            for start in range(PIECE, size, PIECE):
                bind.execute(
                    sa.text("INSERT INTO temp.cut_pieces VALUES (:k, :n, :d)"),
                    {"k": owner, "n": start // PIECE, "d": blob.read(PIECE)},
                )
        bind.execute(
            sa.text(f"UPDATE {table} SET data = substr(data, 1, {PIECE}) WHERE rowid = :r"),
            {"r": rowid},
        )
        bind.execute(
            sa.text(f"INSERT INTO {table} ({key}, piece, data) SELECT * FROM temp.cut_pieces")
        )
        bind.execute(sa.text("DELETE FROM temp.cut_pieces"))
    bind.execute(sa.text("DROP TABLE temp.cut_pieces"))


def downgrade() -> None:
    for table, key in TABLES.items():
        if op.get_bind().dialect.name == "postgresql":
            op.execute(
                f"UPDATE {table} SET data = joined.data FROM (SELECT {key}, "
                f"string_agg(data, ''::bytea ORDER BY piece) AS data FROM {table} "
                f"GROUP BY {key} HAVING count(*) > 1) AS joined "
                f"WHERE {table}.{key} = joined.{key} AND {table}.piece = 0"
            )
        else:
            _join_sqlite(table, key)
        op.execute(f"DELETE FROM {table} WHERE piece > 0")
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(f"pk_{table}", type_="primary")
            batch_op.create_primary_key(f"pk_{table}", [key])
            batch_op.drop_column("piece")


def _join_sqlite(table: str, key: str) -> None:
    """Each value of several pieces written whole into its piece 0, through a blob handle."""
    bind = op.get_bind()
    driver = bind.connection.driver_connection
    owners = bind.execute(
        sa.text(f"SELECT {key}, sum(length(data)) FROM {table} GROUP BY {key} HAVING count(*) > 1")
    ).all()
    for owner, size in owners:
        first = bind.execute(
            sa.text(f"SELECT data FROM {table} WHERE {key} = :k AND piece = 0"), {"k": owner}
        ).scalar_one()
        rowid = bind.execute(
            sa.text(
                f"UPDATE {table} SET data = zeroblob(:size) WHERE {key} = :k AND piece = 0 "
                "RETURNING rowid"
            ),
            {"size": size, "k": owner},
        ).scalar_one()
        pieces = bind.execute(
            sa.text(f"SELECT rowid FROM {table} WHERE {key} = :k AND piece > 0 ORDER BY piece"),
            {"k": owner},
        ).scalars()
        with driver.blobopen(table, "data", rowid) as blob:
            blob.write(first)
            for piece_rowid in pieces.all():
                with driver.blobopen(table, "data", piece_rowid, readonly=True) as piece:
                    blob.write(piece.read())
