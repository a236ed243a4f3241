"""Child OS processes: start N `trainwire worker` (or `trainwire serve`) children, restart any that
die, stop them all.

Each child is a separate process started fresh (not forked), so no database connection or lock
crosses into it; settings travel as `TRAINWIRE_*` environment variables.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from .config import Settings

log = logging.getLogger("trainwire.supervisor")


class WorkerPool:
    """`count` worker processes, or with `servers=True` that many more `trainwire serve`
    processes sharing the server's port (SO_REUSEPORT)."""

    def __init__(
        self, settings: Settings, count: int, queues: Sequence[str] = (), servers: bool = False
    ) -> None:
        self.settings = settings
        self.count = count
        self.queues = list(queues)
        self.servers = servers
        self.processes: list[subprocess.Popen[bytes]] = []
        self.restarts = 0

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "trainwire.server.cli"]
        command += ["serve" if self.servers else "worker", "--index", str(index)]
        if not self.servers:
            for queue in self.queues:
                command += ["--queue", queue]
        # A child outlives a parent that was killed outright (SIGKILL, OOM) unless it watches for
        # it: it then stops as on SIGTERM (a worker hands its job back).
        command += ["--parent-pid", str(os.getpid())]
        env = {**os.environ, **self.settings.to_env()}
        return subprocess.Popen(command, env=env)

    def start(self) -> None:
        self.processes = [self._spawn(i) for i in range(self.count)]
        log.info("started %d worker processes: %s", self.count, [p.pid for p in self.processes])

    def supervise(self) -> None:
        """Restarts workers that exited; call it periodically."""
        for index, process in enumerate(self.processes):
            code = process.poll()
            if code is not None:
                log.warning(
                    "%s %d (pid %d) exited with %s; restarting it",
                    "server" if self.servers else "worker",
                    index,
                    process.pid,
                    code,
                )
                self.processes[index] = self._spawn(index)
                self.restarts += 1

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every worker (each checkpoints and hands back its job), then wait, then kill."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "worker pid %d did not stop in %.0fs; killing it", process.pid, timeout_s
                )
                process.kill()
                process.wait()
