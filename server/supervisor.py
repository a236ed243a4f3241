"""Child OS processes: start N `trainwire worker` (or `trainwire serve`) children, restart any that
die, stop them all.

Each child is a separate process started fresh (not forked), so no database connection or lock
crosses into it; settings travel as `TRAINWIRE_*` environment variables. A child that keeps
exiting (say its metrics port is taken) is restarted after a delay that doubles per failure, from
RESTART_MIN_S to RESTART_MAX_S, and starts again from RESTART_MIN_S once a child has stayed up
STABLE_S.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from .config import Settings

log = logging.getLogger("trainwire.supervisor")

RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
STABLE_S = 60.0


class WorkerPool:
    """`count` worker processes, or with `servers=True` that many more `trainwire serve`
    processes sharing the server's port (SO_REUSEPORT)."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        queues: Sequence[str] = (),
        servers: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.count = count
        self.queues = list(queues)
        self.servers = servers
        self.clock = clock
        self.processes: list[subprocess.Popen[bytes]] = []
        self.restarts = 0
        # Per child index: when it was started, the delay before its next restart, and when that
        # restart is due (None while the child runs).
        self.started_at: list[float] = []
        self.delay_s: list[float] = []
        self.restart_at: list[float | None] = []

    @property
    def kind(self) -> str:
        """What each child is, as the log messages name it."""
        return "server process" if self.servers else "worker"

    def _command(self, index: int) -> list[str]:
        command = [sys.executable, "-m", "trainwire.server.cli"]
        command += ["serve" if self.servers else "worker", "--index", str(index)]
        if not self.servers:
            for queue in self.queues:
                command += ["--queue", queue]
        # A child outlives a parent that was killed outright (SIGKILL, OOM) unless it watches for
        # it: it then stops as on SIGTERM (a worker hands its job back).
        command += ["--parent-pid", str(os.getpid())]
        return command

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.settings.to_env()}
        self.started_at[index] = self.clock()
        return subprocess.Popen(self._command(index), env=env)

    def start(self) -> None:
        self.started_at = [0.0] * self.count
        self.delay_s = [RESTART_MIN_S] * self.count
        self.restart_at = [None] * self.count
        self.processes = [self._spawn(i) for i in range(self.count)]
        # `serve` makes a pool of each kind: an empty one (no extra server processes, or
        # `--workers 0`) has nothing to report.
        if self.count:
            processes = "process" if self.count == 1 else "processes"
            what = f"more server {processes} on port {self.settings.port}"
            log.info(
                "started %d %s: %s",
                self.count,
                what if self.servers else f"worker {processes}",
                [p.pid for p in self.processes],
            )

    def supervise(self) -> None:
        """Restarts children that exited, each after its backoff; call it periodically."""
        now = self.clock()
        for index, process in enumerate(self.processes):
            due = self.restart_at[index]
            if due is None:
                code = process.poll()
                if code is None:
                    continue
                if now - self.started_at[index] >= STABLE_S:
                    self.delay_s[index] = RESTART_MIN_S  # it ran a while: not a crash loop
                due = self.restart_at[index] = now + self.delay_s[index]
                log.warning(
                    "%s %d (pid %d) exited with %s; restarting it in %.0fs",
                    self.kind,
                    index,
                    process.pid,
                    code,
                    self.delay_s[index],
                )
                self.delay_s[index] = min(self.delay_s[index] * 2, RESTART_MAX_S)
            if now >= due:
                self.restart_at[index] = None
                self.processes[index] = self._spawn(index)
                self.restarts += 1

    def stop(self) -> None:
        """SIGTERM every child (a worker checkpoints and hands back its job, a server finishes
        its running calls), then wait up to `stop_timeout_s`, then kill."""
        timeout_s = self.settings.stop_timeout_s
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for index, process in enumerate(self.processes):
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s %d (pid %d) did not stop in %.0fs; killing it",
                    self.kind,
                    index,
                    process.pid,
                    timeout_s,
                )
                process.kill()
                process.wait()
