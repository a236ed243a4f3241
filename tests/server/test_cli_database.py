"""The operator commands that open the database, given one they cannot use: a SQLite file that
is not there (the default URL is relative to the current directory), a schema behind the code,
or a server that cannot be reached. Each is one message naming the database and what to do,
with the README's exit code, and no database is created where none was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from trainwire.server.cli import main
from trainwire.server.db import Database, masked_url, sqlite_file, suggested_command
from trainwire.server.migrate import current_revision, head_revision, upgrade

from ..support.ports import free_ports

CLI = [sys.executable, "-m", "trainwire.server.cli"]


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


def test_a_file_uri_names_its_file_and_a_missing_one_is_created_by_no_command(
    empty_directory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # SQLite's URI form names the same file, so it is refused alike (an in-memory one names
    # none), and the URL is shown as given, not percent-encoded.
    url = "sqlite:///file:trainwire.db?mode=rwc&uri=true"
    assert sqlite_file(url) == empty_directory / "trainwire.db"
    assert sqlite_file("sqlite:///file::memory:?uri=true") is None
    assert sqlite_file("sqlite:///file:x.db?mode=memory&uri=true") is None
    for command in (["keys", "list"], ["status"], ["db", "current"]):
        code, out, err = run(capsys, *command, "--database-url", url)
        assert out == ""
        assert code == 3 and f"no database at {empty_directory / 'trainwire.db'}" in err
        assert url in err, err
    assert list(empty_directory.iterdir()) == []
    assert masked_url("sqlite:///:memory:") == "sqlite:///:memory:"
    assert masked_url("postgresql://u:secret@db/x") == "postgresql://u:***@db/x"


def test_status_refuses_a_schema_behind_the_code_as_serve_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = stale_database(tmp_path)
    code, out, err = run(capsys, "status", "--database-url", url)
    assert code == 1 and out == ""
    assert f"is at schema revision {revision_of(url)}" in err
    assert f"Run `trainwire db upgrade --database-url {url}` first." in err


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
    assert f"is at schema revision {previous}" in err
    assert f"Run `trainwire db upgrade --database-url {url}` first." in err
    assert revision_of(url) == previous


def test_the_commands_a_refusal_suggests_name_the_database_as_the_user_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Run trainwire db upgrade (with the same TRAINWIRE_DATABASE_URL)` answered a database
    given by --database-url: the copy upgraded the variable's database, or created the default
    one. Given by the option, the suggestion carries it (quoted for the shell); given by the
    variable, it reads the same variable and is as it was."""
    monkeypatch.delenv("TRAINWIRE_DATABASE_URL", raising=False)
    directory = tmp_path / "a directory"  # a space: the URL must be quoted
    directory.mkdir()
    stale, missing = stale_database(directory), f"sqlite:///{directory / 'missing.db'}"
    commands = (["db", "current"], ["keys", "list"], ["status"])
    for command in commands:
        code, _, err = run(capsys, *command, "--database-url", stale)
        assert code == 1 and f"`trainwire db upgrade --database-url '{stale}'` " in err, err
        assert "TRAINWIRE_DATABASE_URL" not in err
    code, _, err = run(capsys, "keys", "list", "--database-url", missing)
    creates = (
        f"`trainwire db upgrade --database-url '{missing}'` or "
        f"`trainwire serve --database-url '{missing}'` creates a new one."
    )
    assert code == 3 and creates in err, err
    monkeypatch.setenv("TRAINWIRE_DATABASE_URL", stale)
    for command in commands:
        code, _, err = run(capsys, *command)
        assert code == 1
        assert "`trainwire db upgrade` (with the same TRAINWIRE_DATABASE_URL)" in err, err
    monkeypatch.setenv("TRAINWIRE_DATABASE_URL", missing)
    code, _, err = run(capsys, "keys", "list")
    assert code == 3 and "`trainwire db upgrade` or `trainwire serve` creates a new one." in err
    assert not (directory / "missing.db").exists()


def test_a_suggested_command_masks_the_password_and_says_to_put_it_back() -> None:
    url = "postgresql://tw:s3cret@db.example/trainwire?sslmode=require"
    assert suggested_command("db upgrade", url) == (
        "`trainwire db upgrade --database-url "
        "'postgresql://tw:***@db.example/trainwire?sslmode=require'` "
        "(replace *** with your password, URL-encoded)"
    )
    assert suggested_command("db upgrade", None) == "`trainwire db upgrade`"


def test_a_password_with_an_unencoded_at_sign_is_masked_whole() -> None:
    """SQLAlchemy reads `u:pa@ss@h` as the password "pa" at host "ss@h": "ss" was shown."""
    assert masked_url("postgresql://u:pa@ss@db.example/trainwire") == (
        "postgresql://***@db.example/trainwire"
    )


def test_a_password_in_the_query_is_masked_too() -> None:
    """libpq takes `?password=` (and `?sslpassword=`) as well: it was shown in full."""
    url = "postgresql://tw@db.example/trainwire?password=s3cret&sslmode=require&SSLPASSWORD=x"
    assert masked_url(url) == (
        "postgresql://tw@db.example/trainwire?SSLPASSWORD=***&password=***&sslmode=require"
    )
    assert masked_url("sqlite:///:memory:") == "sqlite:///:memory:", "nothing to mask: as given"


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
    assert f"run `trainwire db upgrade --database-url {url}` to migrate it" in err
    upgrade(url)
    code, out, err = run(capsys, "db", "current", "--database-url", url)
    assert code == 0 and err == ""
    assert f"database {url}" in out and f"current revision: {head}; head: {head}" in out


def test_db_help_describes_each_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """`db upgrade --help` was the generic `db` usage, `{upgrade,current}` described nowhere."""
    helps = {}
    for command in (["db"], ["db", "upgrade"], ["db", "current"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        helps[" ".join(command)] = capsys.readouterr().out
    listing = helps["db"].splitlines()
    for name in ("upgrade", "current"):
        described = [line.split() for line in listing if line.split()[:1] == [name]]
        assert len(described) == 1 and len(described[0]) > 1, helps["db"]  # one line each
    upgrade, current = (" ".join(helps[f"db {name}"].split()) for name in ("upgrade", "current"))
    assert "usage: trainwire db upgrade" in upgrade and "--database-url" in upgrade
    assert "Migrate the database's schema to this Trainwire's revision" in upgrade
    assert "usage: trainwire db current" in current and "--database-url" in current
    assert "Show the database and its schema revision beside this Trainwire's" in current


def test_db_takes_the_database_url_before_or_after_its_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'either.db'}"
    code, out, err = run(capsys, "db", "--database-url", url, "upgrade")
    assert code == 0 and f"database {url} is at revision" in out, err
    code, out, err = run(capsys, "db", "current", "--database-url", url)
    assert code == 0 and f"database {url}" in out, err


NEWER_REVISION = "9999"


def newer_database(directory: Path) -> str:
    """A SQLite database at a revision this Trainwire does not know, as a newer one leaves it."""
    url = f"sqlite:///{directory / 'newer.db'}"
    upgrade(url)
    database = Database(url)
    try:
        with database.engine.begin() as connection:
            connection.execute(
                text("UPDATE alembic_version SET version_num = :newer"), {"newer": NEWER_REVISION}
            )
    finally:
        database.dispose()
    return url


def assert_refused_as_newer(url: str, code: int, err: str) -> None:
    """Exit 1, one message naming the revision and the way out, not `trainwire db upgrade`
    (which cannot help: Alembic cannot even locate the revision), and the schema left as it
    was."""
    assert code == 1, err
    assert "Traceback" not in err
    assert f"is at schema revision {NEWER_REVISION}, which this Trainwire" in err
    assert "a newer Trainwire migrated it, and this version cannot serve it" in err
    assert f"downgrade the schema to revision {head_revision(url)}" in err
    assert "db upgrade" not in err
    assert revision_of(url) == NEWER_REVISION


def test_db_current_says_a_newer_trainwire_migrated_the_database_not_to_upgrade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = newer_database(tmp_path)
    code, out, err = run(capsys, "db", "current", "--database-url", url)
    assert f"current revision: {NEWER_REVISION}; head: {head_revision(url)}" in out
    assert_refused_as_newer(url, code, err)


@pytest.mark.parametrize("command", [["db", "upgrade"], ["status"], ["keys", "list"]], ids=" ".join)
def test_commands_refuse_a_database_a_newer_trainwire_migrated_as_db_current_does(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = newer_database(tmp_path)
    code, _, err = run(capsys, *command, "--database-url", url)
    assert_refused_as_newer(url, code, err)


def test_serve_refuses_a_database_a_newer_trainwire_migrated_even_where_it_migrates(
    tmp_path: Path,
) -> None:
    """An embedded SQLite database migrates itself at start: on a newer one that was Alembic's
    traceback (`Can't locate revision`)."""
    url = newer_database(tmp_path)
    serve = [*CLI, "serve", "--port", "0", "--workers", "0", "--database-url", url]
    result = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    assert_refused_as_newer(url, result.returncode, result.stderr)


@pytest.fixture
def closed_port_url() -> str:
    """A PostgreSQL URL, with a password, on a local port nothing listens on."""
    return f"postgresql://trainwire:s3cret@127.0.0.1:{free_ports(1)}/trainwire"


def assert_refused_as_unreachable(code: int, out: str, err: str, reason: str) -> None:
    """Exit 5 (the README's code for unreachable), one message of at most two lines naming the
    database with its password masked and the driver's reason."""
    assert code == 5, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert "trainwire: unavailable: cannot connect to the database postgresql" in err
    assert "s3cret" not in out + err and ":***@127.0.0.1:" in err
    assert reason in err
    assert "TRAINWIRE_DATABASE_URL" in err


UNREACHABLE_COMMANDS = [
    ["db", "upgrade"],
    ["db", "current"],
    ["keys", "list"],
    ["keys", "create", "--project", "p"],
    ["keys", "revoke", "k1"],
    ["status"],
]


@pytest.mark.parametrize("command", UNREACHABLE_COMMANDS, ids=" ".join)
def test_a_database_that_refuses_connections_is_one_message_and_exit_5(
    command: list[str], closed_port_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(capsys, *command, "--database-url", closed_port_url)
    assert_refused_as_unreachable(*result, reason="Connection refused")


def test_serve_on_a_database_that_refuses_connections_is_one_message_and_exit_5(
    closed_port_url: str,
) -> None:
    serve = [*CLI, "serve", "--port", "0", "--workers", "0", "--database-url", closed_port_url]
    result = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    assert_refused_as_unreachable(
        result.returncode, result.stdout, result.stderr, reason="Connection refused"
    )


@pytest.mark.postgres
@pytest.mark.parametrize("command", [["db", "upgrade"], ["keys", "list"]], ids=" ".join)
def test_a_missing_postgres_database_is_one_message_and_exit_5(
    command: list[str], postgres_server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = make_url(postgres_server_url).set(
        database="trainwire_no_such_database", password="s3cret"
    )
    shown = url.render_as_string(hide_password=False)
    code, out, err = run(capsys, *command, "--database-url", shown)
    assert code == 5, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert "s3cret" not in out + err and ":***@" in err
    assert 'database "trainwire_no_such_database" does not exist' in err


def worker(directory: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`trainwire worker` in `directory`; TimeoutExpired if it does not exit by itself."""
    environment = {"PATH": "", "TRAINWIRE_POLL_INTERVAL_S": "0.1"}
    return subprocess.run(
        [*CLI, "worker", *options],
        cwd=directory,
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_worker_refuses_a_missing_sqlite_file_and_creates_none(
    concurrency: str, tmp_path: Path
) -> None:
    result = worker(tmp_path, "--concurrency", concurrency)
    assert_refused_as_missing(tmp_path, result.returncode, result.stdout, result.stderr)


def test_worker_refuses_a_schema_behind_the_code(tmp_path: Path) -> None:
    url = stale_database(tmp_path)
    result = worker(tmp_path, "--database-url", url)
    assert result.returncode == 1, result.stderr
    assert f"is at schema revision {revision_of(url)}" in result.stderr
    assert f"Run `trainwire db upgrade --database-url {url}` first." in result.stderr


def test_worker_on_a_database_that_refuses_connections_is_one_message_and_exit_5(
    tmp_path: Path, closed_port_url: str
) -> None:
    result = worker(tmp_path, "--database-url", closed_port_url)
    assert_refused_as_unreachable(
        result.returncode, result.stdout, result.stderr, reason="Connection refused"
    )


def serve_without_auto_migration(directory: Path) -> subprocess.CompletedProcess[str]:
    """`trainwire serve` in `directory` with TRAINWIRE_AUTO_MIGRATE_SQLITE=false and the default
    database URL; TimeoutExpired if it does not exit by itself."""
    environment = {"PATH": "", "TRAINWIRE_AUTO_MIGRATE_SQLITE": "false"}
    return subprocess.run(
        [*CLI, "serve", "--port", "0", "--workers", "0"],
        cwd=directory,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_without_auto_migration_refuses_a_missing_sqlite_file_and_creates_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It connected, leaving an empty trainwire.db that `status` then read as schema none (exit
    1), and said to upgrade "with the same TRAINWIRE_DATABASE_URL", which was not set."""
    result = serve_without_auto_migration(tmp_path)
    assert result.returncode == 3, result.stderr
    refusal = [line for line in result.stderr.splitlines() if "no database at" in line]
    assert len(refusal) == 1 and str(tmp_path / "trainwire.db") in refusal[0], result.stderr
    # Its own way out: not `trainwire serve`, which refuses again in this environment.
    assert "TRAINWIRE_AUTO_MIGRATE_SQLITE is false" in refusal[0]
    assert "`trainwire db upgrade`" in refusal[0] and "`trainwire serve`" not in refusal[0]
    assert list(tmp_path.iterdir()) == [], "nothing created"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRAINWIRE_DATABASE_URL", raising=False)
    assert_refused_as_missing(tmp_path, *run(capsys, "status"))


def test_a_refusal_of_the_default_database_suggests_the_upgrade_alone(
    empty_directory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No TRAINWIRE_DATABASE_URL named the database: the suggestion does not ask for the same
    one, as it did."""
    upgrade(f"sqlite:///{empty_directory / 'trainwire.db'}", "head-1")
    for command in (["status"], ["keys", "list"], ["db", "current"]):
        code, _, err = run(capsys, *command)
        assert code == 1 and "`trainwire db upgrade`" in err, err
        assert "TRAINWIRE_DATABASE_URL" not in err, err
    result = serve_without_auto_migration(empty_directory)
    assert result.returncode == 1, result.stderr
    assert "Run `trainwire db upgrade` first." in result.stderr
    assert "TRAINWIRE_DATABASE_URL" not in result.stderr


@pytest.mark.parametrize("command", [["serve", "--port", "0", "--workers", "0"], ["status"]])
def test_a_database_trainwire_does_not_run_on_is_a_configuration_error(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """mysql:// ended in ModuleNotFoundError (MySQLdb), foo:// in NoSuchModuleError: a URL was
    checked only for being one. Named by the variable or the option, its password masked."""
    for url, shown in (
        ("mysql://u:s3cret@db.example/trainwire", "mysql://u:***@db.example/trainwire"),
        ("foo://x/y", "foo://x/y"),
    ):
        result = subprocess.run(
            [*CLI, *command],
            cwd=tmp_path,
            env={"PATH": "", "TRAINWIRE_DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and "s3cret" not in result.stderr
        assert (
            "TRAINWIRE_DATABASE_URL must be a SQLite URL (sqlite:///PATH) or a PostgreSQL one"
            in result.stderr
        )
        assert f"Received: {shown}" in result.stderr, result.stderr
    code, _, err = run(capsys, command[0], "--database-url", "postgresql+psycopg2://u:pw@h/db")
    assert code == 2 and "--database-url must be a SQLite URL" in err, err
    assert "Received: postgresql+psycopg2://u:***@h/db" in err
    assert list(tmp_path.iterdir()) == [], "nothing created"
