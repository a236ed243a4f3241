"""The operator commands that open the database, given one they cannot use: a SQLite file that
is not there (the default URL is relative to the current directory), a schema behind the code,
or a server that cannot be reached. Each is one message naming the database and what to do,
with the README's exit code, and no database is created where none was."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainwire.server.cli import main
from trainwire.server.db import Database
from trainwire.server.migrate import current_revision, head_revision, upgrade


@pytest.fixture
def empty_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory, empty, with the default (relative) database URL in force."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRAINWIRE_DATABASE_URL", raising=False)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused_as_missing(directory: Path, code: int, out: str, err: str) -> None:
    """Exit 3 (not found), one message naming the absolute path looked for and the way out, and
    no file left behind."""
    assert code == 3, (out, err)
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert f"no database at {directory / 'trainwire.db'}" in err
    assert "relative to the current directory" in err
    assert "from the server's directory" in err and "TRAINWIRE_DATABASE_URL" in err
    assert "Traceback" not in err
    assert list(directory.iterdir()) == []


def stale_database(directory: Path) -> str:
    """A SQLite database one revision behind the code."""
    url = f"sqlite:///{directory / 'old.db'}"
    upgrade(url, "head-1")
    return url


def revision_of(url: str) -> str | None:
    database = Database(url)
    try:
        return current_revision(database)
    finally:
        database.dispose()


def test_status_refuses_a_missing_sqlite_file_and_creates_none(
    empty_directory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused_as_missing(empty_directory, *run(capsys, "status"))


def test_status_refuses_a_schema_behind_the_code_as_serve_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = stale_database(tmp_path)
    code, out, err = run(capsys, "status", "--database-url", url)
    assert code == 1 and out == ""
    assert f"is at schema revision {revision_of(url)}" in err
    assert "Run `trainwire db upgrade`" in err


@pytest.mark.parametrize(
    "command", [["keys", "list"], ["keys", "create", "--project", "p"], ["keys", "revoke", "k1"]]
)
def test_keys_commands_refuse_a_missing_sqlite_file_and_create_none(
    command: list[str], empty_directory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key created in a database made in the wrong directory is one the server never sees."""
    assert_refused_as_missing(empty_directory, *run(capsys, *command))


def test_keys_refuse_a_schema_behind_the_code_and_leave_it_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = stale_database(tmp_path)
    previous = revision_of(url)
    code, out, err = run(capsys, "keys", "create", "--project", "p", "--database-url", url)
    assert code == 1 and out == ""
    assert f"is at schema revision {previous}" in err and "Run `trainwire db upgrade`" in err
    assert revision_of(url) == previous


def test_db_current_refuses_a_missing_sqlite_file_and_creates_none(
    empty_directory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused_as_missing(empty_directory, *run(capsys, "db", "current"))


def test_db_current_names_the_database_and_says_to_upgrade_when_it_is_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = stale_database(tmp_path)
    previous, head = revision_of(url), head_revision(url)
    code, out, err = run(capsys, "db", "current", "--database-url", url)
    assert code == 1
    assert f"database {url}" in out and f"current revision: {previous}; head: {head}" in out
    assert "run `trainwire db upgrade`" in err
    upgrade(url)
    code, out, err = run(capsys, "db", "current", "--database-url", url)
    assert code == 0 and err == ""
    assert f"database {url}" in out and f"current revision: {head}; head: {head}" in out
