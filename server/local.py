"""Run `trainwire serve` as a child process on a free local port (for the demo, tests, scripts)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_LISTENING = re.compile(r"Trainwire listening on (\S+):(\d+)")


@dataclass
class LocalServer:
    process: subprocess.Popen[str]
    target: str
    output: list[str]

    def stop(self, timeout_s: float = 90.0) -> int:
        """SIGTERM, then wait for a clean exit (kill after `timeout_s`)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@contextmanager
def local_server(
    database_url: str,
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
    start_timeout_s: float = 60.0,
    echo: bool = False,
    port: int = 0,
    host: str = "127.0.0.1",
) -> Iterator[LocalServer]:
    """Starts `trainwire serve --host HOST --port PORT` (0: any free port) and yields once it
    listens (its target on loopback); stops it on exit."""
    # The URL travels in the environment, not on the command line, where `ps` shows it to anyone.
    env = {
        **os.environ,
        **(extra_env or {}),
        "PYTHONUNBUFFERED": "1",
        "TRAINWIRE_DATABASE_URL": database_url,
    }
    command = [
        sys.executable, "-m", "trainwire.server.cli", "serve",
        "--host", host, "--port", str(port), "--workers", str(workers),
        # It stops (and stops its workers) within a second if this process dies without
        # stopping it: a killed test run or demo leaves nothing behind.
        "--exit-with", str(os.getpid()),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    output: list[str] = []
    ready = threading.Event()
    found: list[str] = []

    def pump() -> None:
        # Keep reading so the child never blocks on a full pipe; remember every line.
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if echo:
                sys.stderr.write(line)
            match = _LISTENING.search(line)
            if match and not found:
                listening = match.group(1)
                if listening in ("0.0.0.0", "[::]", "::"):  # every interface: reach it locally
                    listening = "127.0.0.1"
                found.append(f"{listening}:{match.group(2)}")
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(start_timeout_s) or not found:
        process.kill()
        process.wait()
        raise RuntimeError("trainwire serve did not start:\n" + "".join(output[-40:]))
    server = LocalServer(process, found[0], output)
    try:
        yield server
    finally:
        server.stop()
