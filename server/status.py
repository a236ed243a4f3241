"""`trainwire status`: a one-screen summary of a deployment, read from its database.

Version, database and schema, queue depth by state and queue, workers (alive when seen within
two lease periods), recent failures; with `--target`, the server's health too, and what to check
when it cannot be reached (`probe_health_hint`). `server_health` is also `trainwire health`, the
container's health check: it speaks TLS to a server configured with TLS.
"""

from __future__ import annotations

import json
import socket
import ssl
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from trainwire.client.results import terminal_text

from .config import Settings
from .db import Database, masked_url
from .metrics import count_alive
from .migrate import check_deployment, current_revision, head_revision
from .store import Store

if TYPE_CHECKING:
    import grpc

# A probe's answer when no server answered: a refused TLS handshake too (`probe_health_hint`).
UNREACHABLE = "unreachable (UNAVAILABLE)"
# Its answer when it could not ask: TLS files it cannot use (`probe_health_hint` names them).
NOT_PROBED = "not probed (unusable TLS files)"
# The answers `probe_health_hint` explains.
HINTED = (UNREACHABLE, NOT_PROBED)


def collect_status(settings: Settings, target: str | None = None) -> dict[str, Any]:
    database = Database(settings.database_url, idle_in_transaction_s=settings.lease_s)
    try:
        check_deployment(database, settings.database_url_option)
        store = Store(database)
        alive_within = 2 * settings.lease_s
        workers = store.workers()
        for worker in workers:
            seen = worker["seen_s_ago"]
            worker["state"] = (
                "stopped" if worker["stopped_at"] else "alive" if seen <= alive_within else "lost"
            )
            worker["seen_s_ago"] = round(seen, 1)
        status: dict[str, Any] = {
            "version": version("trainwire"),
            "database": masked_url(database.url),
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
        health = server_health(target, settings)
        status["server"] = {
            "target": target,
            "health": health,
            # What to check when it could not be reached, as `trainwire health` says.
            "hint": probe_health_hint(settings) if health in HINTED else None,
        }
    return status


def server_health(target: str, settings: Settings | None = None) -> str:
    """The server's answer to a health check (SERVING, NOT_SERVING), or `unreachable (CODE)`.
    A server whose `settings` have TLS is probed over TLS (see `probe_channel`); with TLS files
    that cannot be used, NOT_PROBED (the container's health check then exits 1, and says why,
    rather than ending in a traceback)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    settings = settings or Settings()
    if settings.tls_file_problems(serving=False):
        return NOT_PROBED
    try:
        with probe_channel(target, settings) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
    except grpc.RpcError as error:
        return f"unreachable ({error.code().name})"


def probe_health_hint(settings: Settings) -> str:
    """What to check when a probe with these `settings` found the server UNREACHABLE: a refused
    TLS handshake looks just like a server that is down. Or what is wrong with its TLS files,
    when it could not ask (NOT_PROBED)."""
    unusable = settings.tls_file_problems(serving=False)
    if unusable:
        return "; ".join(unusable)
    if not settings.tls_cert:
        return (
            "the probe spoke plaintext: if the server uses TLS, set TRAINWIRE_TLS_CERT to its "
            "certificate (and TRAINWIRE_TLS_KEY to its key if it requires client certificates)"
        )
    if not settings.tls_key:
        return (
            "the probe spoke TLS, trusting TRAINWIRE_TLS_CERT, without a client certificate: if "
            "the server requires client certificates (--tls-client-ca), set TRAINWIRE_TLS_KEY "
            "too, so that the probe shows the server's own; check too that the server serves "
            "this certificate"
        )
    return (
        "the probe spoke TLS, trusting TRAINWIRE_TLS_CERT, and showed that certificate (with "
        "TRAINWIRE_TLS_KEY) as its client certificate: check that the server serves this "
        "certificate and, if it requires client certificates, that its client CA "
        "(--tls-client-ca) signed it and that it may serve a client too (no extended key usage, "
        "or one with clientAuth: a serverAuth-only certificate is refused as 'unsupported "
        "certificate purpose', in the server's log)"
    )


def probe_channel(target: str, settings: Settings) -> grpc.Channel:
    """A channel to our own server: plaintext, or with TLS trusting exactly the server's own
    certificate (no CA needs configuring: a probe on the server's machine can read it). gRPC also
    checks that the certificate names the target, which 127.0.0.1 seldom is, so the probe asks
    for a name the server's certificate carries. Given the server's key too, the probe shows the
    server's own certificate as its client certificate, for a server that requires client
    certificates (accepted when its client CA signed the server's certificate). It does so
    whether or not TRAINWIRE_TLS_CLIENT_CA says the server requires them: a server started with
    `--tls-client-ca` does, and the probe (a container's health check) does not see that flag;
    a server that does not never asks for a certificate, and is shown none."""
    import grpc

    if not settings.tls_cert:
        return grpc.insecure_channel(target)
    from trainwire.client.rpc import channel_credentials

    shown = (settings.tls_cert, settings.tls_key) if settings.tls_key else None
    credentials = channel_credentials(settings.tls_cert, shown)
    assert credentials is not None
    name = certificate_name(target, settings)
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(target, credentials, options=options)


def certificate_name(target: str, settings: Settings) -> str | None:
    """A name of the certificate the server at `target` presents, verified against the server's
    own certificate (the standard library decodes a certificate only from a verified
    handshake). None when the handshake fails: the gRPC probe then reports why."""
    host, _, port = target.rpartition(":")
    context = ssl.create_default_context(cafile=settings.tls_cert)
    context.check_hostname = False  # the name is what we are looking for
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # trust the leaf itself
    context.set_alpn_protocols(["h2"])
    try:
        if settings.tls_key:  # as probe_channel: shown to a server that requires client certs
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=3) as raw,
            context.wrap_socket(raw) as tls,
        ):
            peer: dict[str, Any] = dict(tls.getpeercert() or {})
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return None
    alternatives = peer.get("subjectAltName", ())
    names = [value for kind, value in alternatives if kind == "DNS"]
    names += [value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for kind, value in alternatives if kind == "IP Address"]
    if not names:
        return None
    # A wildcard certificate names any host of its domain.
    return "health" + names[0][1:] if names[0].startswith("*.") else str(names[0])


def one_line(text: str, width: int = 80) -> str:
    """The first line of `text`, made safe for a terminal (`terminal_text`: a job's error may
    hold an escape sequence) and cut to `width`; " ..." marks what was left off."""
    lines = text.splitlines() or [""]
    first = terminal_text(lines[0])
    cut = len(lines) > 1 or len(first) > width
    return first[:width] + (" ..." if cut else "")


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
            f"          {failure['job']} {failure['ended_at'] or ''} {one_line(failure['error'])}"
        )
    return "\n".join(lines)


def to_json(status: dict[str, Any]) -> str:
    return json.dumps(status, default=str)
