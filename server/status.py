"""`trainwire status`: a one-screen summary of a deployment, read from its database.

Version, database and schema, queue depth by state and queue, workers (alive when seen within
two lease periods), recent failures; with `--target`, the server's health too.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

from .config import Settings
from .db import Database
from .metrics import count_alive
from .migrate import current_revision, head_revision
from .store import Store


def collect_status(settings: Settings, target: str | None = None) -> dict[str, Any]:
    database = Database(settings.database_url)
    try:
        store = Store(database)
        alive_within = 2 * settings.lease_s
        now = datetime.now(UTC)
        workers = store.workers()
        for worker in workers:
            seen = (now - worker["last_seen_at"]).total_seconds()
            worker["state"] = (
                "stopped" if worker["stopped_at"] else "alive" if seen <= alive_within else "lost"
            )
            worker["seen_s_ago"] = round(seen, 1)
        status: dict[str, Any] = {
            "version": version("trainwire"),
            "database": database.engine.url.render_as_string(hide_password=True),
            "schema": {"current": current_revision(database), "head": head_revision(database.url)},
            "queue": [
                {"state": state, "queue": queue, "jobs": count}
                for state, queue, count in store.queue_depth()
            ],
            "workers_alive": count_alive(workers, alive_within),
            "workers": workers,
            "recent_failures": [
                {"job": f"jobs/{job.id}", "ended_at": job.ended_at, "error": job.error}
                for job in store.recent_failures()
            ],
        }
    finally:
        database.dispose()
    if target:
        status["server"] = {"target": target, "health": server_health(target)}
    return status


def server_health(target: str) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
    except grpc.RpcError as error:
        return f"unreachable ({error.code().name})"


def render(status: dict[str, Any]) -> str:
    lines = [
        f"Trainwire {status['version']}",
        f"database  {status['database']} (schema {status['schema']['current']}, "
        f"code expects {status['schema']['head']})",
    ]
    if "server" in status:
        lines.append(f"server    {status['server']['target']}: {status['server']['health']}")
    lines.append("")
    lines.append("queue     state        queue              jobs")
    for row in status["queue"] or [{"state": "-", "queue": "-", "jobs": 0}]:
        lines.append(f"          {row['state']:<12} {row['queue']:<18} {row['jobs']:>4}")
    lines.append("")
    lines.append(f"workers   {status['workers_alive']} alive")
    for worker in status["workers"][-10:]:
        job = f"running {worker['current_job']}" if worker["current_job"] else "idle"
        lines.append(
            f"          {worker['id']:<32} {worker['state']:<8} seen {worker['seen_s_ago']}s ago, "
            f"{worker['jobs_done']} jobs, {job if worker['state'] == 'alive' else ''}".rstrip(", ")
        )
    lines.append("")
    lines.append("recent failures")
    for failure in status["recent_failures"] or [{"job": "none", "ended_at": "", "error": ""}]:
        lines.append(
            f"          {failure['job']} {failure['ended_at'] or ''} {failure['error'][:80]}"
        )
    return "\n".join(lines)


def to_json(status: dict[str, Any]) -> str:
    return json.dumps(status, default=str)
