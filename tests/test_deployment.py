"""docker-compose.yml, the Dockerfile and deploy/prometheus.yml, tested as data (no Docker engine
runs here); the topology they describe runs as processes in tests/e2e/test_topology.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from trainwire.server.app import STOP_GRACE_S
from trainwire.server.cli import build_parser
from trainwire.server.config import Settings

ROOT = Path(__file__).resolve().parents[1]
KNOWN_VARIABLES = set(Settings().to_env()) | {"TRAINWIRE_LOG_LEVEL", "TRAINWIRE_LOG_FORMAT"}


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def interpolate(value: object) -> str:
    """Compose's `${NAME:-default}` with nothing set: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def documented_variables() -> set[str]:
    """The variables of the README's configuration table."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| variable", readme.index("### Configuration")) :]
    table = table[: table.index("\n\n")]
    return set(re.findall(r"`(TRAINWIRE_[A-Z_]+)`", table))


def test_every_setting_is_documented_in_one_table() -> None:
    assert documented_variables() == KNOWN_VARIABLES


def test_compose_services_and_order() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "migrate", "server", "worker", "prometheus"}
    assert services["postgres"]["healthcheck"]["test"]
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"])
    assert "pgdata" in compose()["volumes"], "a named volume keeps the data"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("server", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    # Open without API keys by default, so published on the host's loopback only.
    assert services["server"]["environment"]["TRAINWIRE_ALLOW_OPEN_PUBLIC"].endswith("-true}")
    assert services["server"]["ports"] == ["127.0.0.1:50051:50051"]
    # A worker must be scalable: no fixed container name or published port.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    assert services["worker"]["healthcheck"] == {"disable": True}
    assert services["prometheus"]["profiles"] == ["monitoring"]
    # An image of ours named without its build is pulled from a registry on a fresh host.
    for name, service in services.items():
        if service.get("image", "").startswith("trainwire:"):
            assert service.get("build") == ".", f"{name} would pull {service['image']}"
    # Nothing is published beyond the host's loopback: Prometheus has no authentication either.
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every address"


def test_prometheus_scrapes_server_and_workers() -> None:
    services = compose()["services"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    server_port = services["server"]["environment"]["TRAINWIRE_METRICS_PORT"]
    worker_port = services["worker"]["environment"]["TRAINWIRE_METRICS_PORT"]
    assert jobs["trainwire-server"]["static_configs"][0]["targets"] == [f"server:{server_port}"]
    discovery = jobs["trainwire-worker"]["dns_sd_configs"][0]
    assert discovery["names"] == ["worker"] and str(discovery["port"]) == worker_port


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


def test_compose_environment_is_documented_valid_and_one_database() -> None:
    services = compose()["services"]
    documented = documented_variables()
    urls = set()
    for name in ("migrate", "server", "worker"):
        environment = {k: interpolate(v) for k, v in services[name]["environment"].items()}
        assert set(environment) <= documented, set(environment) - documented
        Settings.from_env(environment)
        urls.add(environment["TRAINWIRE_DATABASE_URL"])
    assert len(urls) == 1
    (url,) = urls
    postgres = services["postgres"]["environment"]
    assert f"{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@postgres:5432/" in url
    assert url.endswith(f"/{postgres['POSTGRES_DB']}")
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(example) <= documented
    Settings.from_env(example)


def test_dockerfile_is_multi_stage_non_root_with_health_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE)
    assert len(stages) >= 2, "a build stage and a slim final stage"
    assert all("slim" in image for image, _ in stages)
    final = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER\s+(?!root)\S+", final, flags=re.MULTILINE), "runs as a non-root user"
    assert "gcc" not in final and "build-essential" not in final
    health = re.search(r"^\s+CMD\s+(\[.*\])", final, flags=re.MULTILINE)
    assert "HEALTHCHECK" in final and health is not None
    health_words = yaml.safe_load(health.group(1))
    assert health_words[:2] == ["trainwire", "health"]
    build_parser().parse_args(health_words[1:])
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


def test_the_worker_grace_period_outlasts_the_stop_timeout() -> None:
    """docker SIGKILLs a container stop_grace_period after SIGTERM: a worker container must
    leave `trainwire worker` its whole TRAINWIRE_STOP_TIMEOUT_S to let its processes checkpoint."""
    worker = compose()["services"]["worker"]
    stop_timeout_s = float(interpolate(worker["environment"].get("TRAINWIRE_STOP_TIMEOUT_S", 0)))
    stop_timeout_s = stop_timeout_s or Settings().stop_timeout_s
    grace = str(worker["stop_grace_period"])
    assert grace.endswith("s") and float(grace[:-1]) > stop_timeout_s


def test_the_dockerfiles_docker_run_example_outlasts_the_stop_timeout() -> None:
    """The image runs `serve` with embedded workers: its example `docker run` had Docker's 10 s
    stop timeout, which SIGKILLs the workers before they checkpoint."""
    examples = [line for line in (ROOT / "Dockerfile").read_text().splitlines()
                if line.lstrip("# ").startswith("docker run")]  # fmt: skip
    assert examples, "the Dockerfile shows how to run the image"
    for line in examples:
        found = re.search(r"--stop-timeout (\d+)", line)
        # The workers' stop timeout, then the server's own grace and a housekeeping tick.
        needed = Settings().stop_timeout_s + STOP_GRACE_S + 1
        assert found and int(found.group(1)) > needed, line


def test_the_runtime_install_can_reach_postgresql() -> None:
    """The README runs `make serve` and `.venv/bin/trainwire db upgrade` on a postgresql:// URL:
    the install behind them must bring the driver (the postgres extra)."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("$(VENV)/.installed:") :].split("\n\n")[0]
    installs = [line for line in recipe.splitlines() if "pip install" in line]
    assert installs and all("postgres" in line for line in installs), installs
