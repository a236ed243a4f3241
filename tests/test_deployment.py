"""docker-compose.yml and the Dockerfile, tested as data (no Docker engine runs here).

The topology they describe is run as real processes in tests/e2e/test_topology.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from trainwire.server.cli import build_parser
from trainwire.server.config import Settings

ROOT = Path(__file__).resolve().parents[1]
KNOWN_VARIABLES = set(Settings().to_env()) | {"TRAINWIRE_LOG_LEVEL"}


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_and_order() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "migrate", "server", "worker"}
    assert services["postgres"]["healthcheck"]["test"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("server", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    assert services["server"]["ports"] == ["50051:50051"]
    # A worker must be scalable: no fixed container name or published port.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]


def test_compose_commands_are_real_cli_commands() -> None:
    services = compose()["services"]
    parser = build_parser()
    expected = {"migrate": ("db", "upgrade"), "server": ("serve",), "worker": ("worker",)}
    for name, words in expected.items():
        command = services[name]["command"]
        assert command[0] == "trainwire"
        args = parser.parse_args(command[1:])
        assert args.command == words[0]
        if name == "migrate":
            assert args.db_command == "upgrade"
    # Workers run as their own service, so the server embeds none.
    assert parser.parse_args(services["server"]["command"][1:]).workers == 0


def test_compose_environment_is_one_shared_database() -> None:
    services = compose()["services"]
    urls = set()
    for name in ("migrate", "server", "worker"):
        environment = services[name]["environment"]
        assert set(environment) <= KNOWN_VARIABLES, set(environment) - KNOWN_VARIABLES
        Settings.from_env({k: str(v) for k, v in environment.items()})
        urls.add(environment["TRAINWIRE_DATABASE_URL"])
    assert len(urls) == 1
    (url,) = urls
    postgres = services["postgres"]["environment"]
    assert f"{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@postgres:5432/" in url
    assert url.endswith(f"/{postgres['POSTGRES_DB']}")


def test_dockerfile_is_multi_stage_non_root_with_health_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE)
    assert len(stages) >= 2, "a build stage and a slim final stage"
    final = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER\s+(?!root)\S+", final, flags=re.MULTILINE), "runs as a non-root user"
    assert "HEALTHCHECK" in final and "grpc_health" in final
    assert "gcc" not in final and "build-essential" not in final
    command = re.search(r"^CMD\s+(\[.*\])", final, flags=re.MULTILINE)
    assert command is not None
    words = yaml.safe_load(command.group(1))
    assert words[0] == "trainwire"
    build_parser().parse_args(words[1:])
    copied = {
        line.split()[1]
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from" not in line
    }
    for folder in ("protos", "engine", "server", "client", "migrations"):
        assert folder in copied, f"the image needs {folder}/"
