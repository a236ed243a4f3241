"""A watch survives a server crash and restart: no event lost, none repeated.

The gRPC server runs without workers; a separate `trainwire worker` keeps training (and writing
events) while the server is down, so the watch must catch up on events made during the outage.
A watch of a quiet job also survives one dropped connection after another: its outage is counted
from the failed re-opens only, not from the last event. `Job.wait` rides out an outage as a
watch does, for up to `watch_reconnect_s`.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from trainwire.client import Client, Unavailable, rpc, wire
from trainwire.client.aio import AsyncClient
from trainwire.client.retry import RECONNECT_WINDOW_S, RETRYABLE, RetryPolicy
from trainwire.server import app as app_module
from trainwire.server.app import STOP_GRACE_S, RunningServer
from trainwire.server.config import Settings
from trainwire.server.db import Database
from trainwire.server.local import LocalServer, local_server
from trainwire.server.migrate import ensure_migrated
from trainwire.server.store import Store
from trainwire.v1 import jobs_pb2, jobs_pb2_grpc

from ..support.tcp_proxy import TcpProxy
from ..support.waiting import wait_for
from .conftest import MODEL, blobs

# The watches below give up after this long without a working stream; the job stays quiet for
# longer than that between two dropped connections.
RECONNECT_S = 1.0
QUIET_S = 2.5 * RECONNECT_S


def test_watch_reconnects_across_a_server_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'trainwire.db'}"
    worker: subprocess.Popen[bytes] | None = None
    try:
        with local_server(url, workers=0) as first:
            port = int(first.target.rsplit(":", 1)[1])
            client = Client(first.target, timeout=10)
            features, labels = blobs()
            data = client.upload_dataset(features, labels)
            worker = subprocess.Popen(
                [sys.executable, "-m", "trainwire.server.cli", "worker", "--database-url", url],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            job = client.create_job(data, MODEL, epochs=600, batch_size=8)
            watch = job.watch(timeout=120)
            seen = [next(watch).sequence for _ in range(3)]
            assert not job.status().finished, "the job must outlive the outage"
            first.process.kill()  # a crash: the stream and the connection drop at once
            first.process.wait()
            # The worker records events while no server answers.
            store = Store(Database(url))
            at_crash = _last_sequence(store, job.name)
            wait_for(
                lambda: _last_sequence(store, job.name) >= at_crash + 3, 60, "events in the outage"
            )
            store.db.dispose()
        with local_server(url, workers=0, port=port):
            seen += [event.sequence for event in watch]
            final = job.status()
        client.close()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
    assert final.state == "SUCCEEDED"
    assert watch.reconnects >= 1
    assert seen == list(range(1, len(seen) + 1)), "no event lost or repeated"
    assert len(seen) >= 600 + 3, "QUEUED, RUNNING, one event per epoch, SUCCEEDED"


def _last_sequence(store: Store, job: str) -> int:
    return store.job_events(job.removeprefix("jobs/"), limit=10_000)[-1].sequence


@pytest.fixture
def proxied_server(tmp_path: Path) -> Iterator[tuple[LocalServer, TcpProxy]]:
    """A server without workers (a created job stays QUEUED and emits nothing) behind a proxy
    that a test can cut."""
    with local_server(f"sqlite:///{tmp_path / 'trainwire.db'}", workers=0) as server:
        host, port = server.target.rsplit(":", 1)
        proxy = TcpProxy(host, int(port))
        try:
            yield server, proxy
        finally:
            proxy.close()


def _drop_connections(proxy: TcpProxy) -> None:
    """Drops every connection through the proxy (the watch's stream fails) and lets new ones in."""
    proxy.cut()
    proxy.restore()


def test_watch_of_a_quiet_job_survives_two_dropped_connections(
    proxied_server: tuple[LocalServer, TcpProxy],
) -> None:
    _, proxy = proxied_server
    with (
        Client(f"127.0.0.1:{proxy.port}", timeout=10, watch_reconnect_s=RECONNECT_S) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        features, labels = blobs()
        job = client.create_job(client.upload_dataset(features, labels), MODEL, epochs=5)
        watch = job.watch(timeout=60)
        assert next(watch).state == "QUEUED"
        rest = pool.submit(lambda: [event.state for event in watch])
        _drop_connections(proxy)
        job.status()  # the connection is back (the watch re-opens on it)
        time.sleep(QUIET_S)  # the job stays quiet for longer than watch_reconnect_s
        _drop_connections(proxy)
        job.cancel()
        states = rest.result(timeout=60)
    assert states == ["CANCELLED"]
    assert watch.reconnects >= 2


def test_async_watch_of_a_quiet_job_survives_two_dropped_connections(
    proxied_server: tuple[LocalServer, TcpProxy],
) -> None:
    _, proxy = proxied_server

    async def scenario() -> tuple[list[str], int]:
        async with AsyncClient(
            f"127.0.0.1:{proxy.port}", timeout=10, watch_reconnect_s=RECONNECT_S
        ) as client:
            features, labels = blobs()
            data = await client.upload_dataset(features, labels)
            job = await client.create_job(data, MODEL, epochs=5)
            watch = job.watch(timeout=60)
            assert (await anext(watch)).state == "QUEUED"

            async def rest() -> list[str]:
                return [event.state async for event in watch]

            remaining = asyncio.create_task(rest())
            _drop_connections(proxy)
            await job.status()
            await asyncio.sleep(QUIET_S)
            _drop_connections(proxy)
            await job.cancel()
            return await asyncio.wait_for(remaining, 60), watch.reconnects

    states, reconnects = asyncio.run(scenario())
    assert states == ["CANCELLED"]
    assert reconnects >= 2


# Longer than a poll's own retries (RECONNECT_WINDOW_S, about 3 s), shorter than the wait's limit.
OUTAGE_S = RECONNECT_WINDOW_S + 2.0


def test_wait_rides_out_an_outage_as_a_watch_does(
    proxied_server: tuple[LocalServer, TcpProxy],
) -> None:
    server, proxy = proxied_server
    with (
        Client(f"127.0.0.1:{proxy.port}", timeout=10, watch_reconnect_s=30) as client,
        Client(server.target, timeout=10) as direct,  # ends the job while the proxy is cut
        ThreadPoolExecutor(1) as pool,
    ):
        features, labels = blobs()
        job = client.create_job(client.upload_dataset(features, labels), MODEL, epochs=5)
        waited = pool.submit(job.wait, 60, poll_interval=0.1)
        proxy.cut()  # connections refused, as while a server restarts
        time.sleep(OUTAGE_S)
        direct.cancel_job(job.name)
        proxy.restore()
        assert waited.result(timeout=60).state == "CANCELLED"


def test_wait_gives_up_after_watch_reconnect_s_of_outage(
    proxied_server: tuple[LocalServer, TcpProxy],
) -> None:
    _, proxy = proxied_server
    with Client(f"127.0.0.1:{proxy.port}", timeout=10, watch_reconnect_s=RECONNECT_S) as client:
        features, labels = blobs()
        job = client.create_job(client.upload_dataset(features, labels), MODEL, epochs=5)
        proxy.cut()
        with pytest.raises(Unavailable, match=f"waiting for {job.name}: the server stayed") as e:
            job.wait(60, poll_interval=0.1)
    # Said to CLI users too, who have no Client to pass watch_reconnect_s to.
    assert "then try again" in e.value.message and "Client(" not in e.value.message


def test_async_wait_rides_out_an_outage_as_a_watch_does(
    proxied_server: tuple[LocalServer, TcpProxy],
) -> None:
    server, proxy = proxied_server

    async def scenario() -> str:
        async with (
            AsyncClient(f"127.0.0.1:{proxy.port}", timeout=10, watch_reconnect_s=30) as client,
            AsyncClient(server.target, timeout=10) as direct,
        ):
            features, labels = blobs()
            data = await client.upload_dataset(features, labels)
            job = await client.create_job(data, MODEL, epochs=5)
            waited = asyncio.create_task(job.wait(60, poll_interval=0.1))
            await asyncio.sleep(0.3)  # the wait is polling
            proxy.cut()
            await asyncio.sleep(OUTAGE_S)
            await direct.cancel_job(job.name)
            proxy.restore()
            return (await asyncio.wait_for(waited, 60)).state

    assert asyncio.run(scenario()) == "CANCELLED"


# An idempotent call made just after a restart rides out the channel's reconnection backoff, and
# one to a server that stays down fails within a few seconds (not the call's whole timeout).
# The channel's connection attempts are made to fail until its backoff has grown to its longest
# (attempts about 0.1, 0.16, 0.26, ... 1.7 s apart, then 2 s): eight of them.
FAILED_ATTEMPTS = 8


def _fail_connection_attempts(proxy: TcpProxy, attempts: int) -> None:
    """Stands in for a restarting server while the proxy is cut: each of the channel's connection
    attempts is accepted and closed before the server's first byte (it fails as a refused one
    does, but can be counted). Returns just after the `attempts`-th, the proxy restored: the
    channel's next attempt is then a whole backoff away."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", proxy.port))
    listener.listen(64)
    listener.settimeout(30)  # the channel goes on trying while a call waits out its backoff
    try:
        for _ in range(attempts):
            connection, _ = listener.accept()
            connection.close()
    finally:
        listener.close()
        proxy.restore()


def test_a_call_just_after_a_restart_waits_out_the_reconnection_backoff(
    proxied_server: tuple[LocalServer, TcpProxy],
) -> None:
    _, proxy = proxied_server
    with Client(f"127.0.0.1:{proxy.port}", timeout=10) as client, ThreadPoolExecutor(1) as pool:
        job = client.create_job(client.upload_dataset(*blobs()), MODEL, epochs=5)
        proxy.cut()  # here, not in the thread: the call below must not come before it
        outage = pool.submit(_fail_connection_attempts, proxy, FAILED_ATTEMPTS)
        with pytest.raises(Unavailable):  # starts the channel's connection attempts
            client.get_job(job.name)
        outage.result(timeout=30)
        assert client.cancel_job(job.name).state == "CANCELLED"


def test_an_async_call_just_after_a_restart_waits_out_the_reconnection_backoff(
    proxied_server: tuple[LocalServer, TcpProxy],
) -> None:
    _, proxy = proxied_server

    async def scenario() -> str:
        async with AsyncClient(f"127.0.0.1:{proxy.port}", timeout=10) as client:
            data = await client.upload_dataset(*blobs())
            job = await client.create_job(data, MODEL, epochs=5)
            proxy.cut()
            outage = asyncio.create_task(
                asyncio.to_thread(_fail_connection_attempts, proxy, FAILED_ATTEMPTS)
            )
            with pytest.raises(Unavailable):
                await client.get_job(job.name)
            await asyncio.wait_for(outage, 30)
            return (await client.cancel_job(job.name)).state

    assert asyncio.run(scenario()) == "CANCELLED"


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_call_to_a_server_that_stays_down_fails_within_seconds(
    proxied_server: tuple[LocalServer, TcpProxy], asynchronous: bool
) -> None:
    _, proxy = proxied_server
    target = f"127.0.0.1:{proxy.port}"
    proxy.cut()
    started = time.monotonic()
    with pytest.raises(Unavailable):
        if asynchronous:

            async def get() -> None:
                async with AsyncClient(target, timeout=60) as client:
                    await client.get_job("jobs/" + "a" * 32)

            asyncio.run(get())
        else:
            with Client(target, timeout=60) as client:
                client.get_job("jobs/" + "a" * 32)
    took = time.monotonic() - started
    assert took >= RECONNECT_WINDOW_S, "retried for as long as the channel may wait to reconnect"
    # Half the call's timeout: a bound a loaded machine cannot reach, which waiting it out passes.
    assert took < 30, f"{took:.1f}s: a down server fails well before the call's 60 s timeout"


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_watch_of_a_server_never_reached_fails_as_a_call_does(
    proxied_server: tuple[LocalServer, TcpProxy], asynchronous: bool
) -> None:
    """A watch that never opened a stream (a server down, a refused TLS handshake) waited out
    watch_reconnect_s in silence (5 minutes by default): it raises a call's `Unavailable`."""
    _, proxy = proxied_server
    target = f"127.0.0.1:{proxy.port}"
    proxy.cut()
    started = time.monotonic()
    with pytest.raises(Unavailable, match="failed to connect to all addresses"):
        if asynchronous:

            async def watch() -> None:
                async with AsyncClient(target, timeout=60, watch_reconnect_s=120) as client:
                    async for _ in client.watch_job("jobs/" + "a" * 32):
                        pass

            asyncio.run(watch())
        else:
            with Client(target, timeout=60, watch_reconnect_s=120) as client:
                list(client.watch_job("jobs/" + "a" * 32))
    took = time.monotonic() - started
    assert took >= RECONNECT_WINDOW_S, "retried for as long as a call is"
    assert took < 30, f"{took:.1f}s: a server never reached fails as a call to it does"


def _running_server(url: str, port: int) -> RunningServer:
    """`trainwire serve`'s gRPC server, in this process (its event loop within reach)."""
    database = Database(url)
    ensure_migrated(database, auto_migrate_sqlite=True)
    server = RunningServer(Settings(database_url=url, port=port, workers=0), Store(database))
    server.start()
    return server


# Calls made while the server's event loop is held: each reaches gRPC core, which waits for the
# loop to take it, as calls do behind a busy loop.
HELD_CALLS = 16


def test_calls_in_flight_across_a_graceful_restart_are_never_cancelled(tmp_path: Path) -> None:
    """gRPC core cancels (CANCELLED) the calls it received but the server had not yet started when
    its shutdown begins. The stop refuses them UNAVAILABLE first: every idempotent call succeeds,
    on the restarted server, or raises `Unavailable` once its reconnect window is over; none
    raises `Cancelled`. The client here does not retry CANCELLED, which the SDK does by default
    (tests/client/test_resilience.py), so that the server's half is what is tested."""
    url = f"sqlite:///{tmp_path / 'trainwire.db'}"
    first: RunningServer | None = _running_server(url, 0)
    assert first is not None
    port = first.port
    second: RunningServer | None = None
    released = threading.Event()
    try:
        not_cancelled = RETRYABLE - {grpc.StatusCode.CANCELLED}
        with Client(
            f"127.0.0.1:{port}", timeout=30, retry=RetryPolicy(codes=not_cancelled)
        ) as client:
            job = client.create_job(client.upload_dataset(*blobs()), MODEL, epochs=5).name
            client.get_job(job)  # the connection is up: the calls below go straight out
            first._loop.call_soon_threadsafe(released.wait, 30)  # the loop is held
            stop = first.stop
            with ThreadPoolExecutor(HELD_CALLS + 1) as pool:
                calls = [pool.submit(lambda: client.get_job(job).name) for _ in range(HELD_CALLS)]
                # In flight (the loopback delivers them in microseconds), none answered.
                time.sleep(1.0)
                assert not any(call.done() for call in calls)
                stopping = pool.submit(stop, STOP_GRACE_S)  # it waits for the loop
                time.sleep(0.2)
                released.set()
                stopping.result(timeout=60)
                first = None
                second = _running_server(url, port)
                outcomes = []
                for call in calls:
                    try:
                        outcomes.append(call.result(timeout=60))
                    except Unavailable as error:
                        outcomes.append(type(error).__name__)
    finally:
        released.set()
        for server in (first, second):
            if server is not None:
                server.stop(0)
    assert all(outcome in (job, "Unavailable") for outcome in outcomes), outcomes


def test_a_stopping_server_ends_open_watches_unavailable_and_they_go_on_after_it(
    tmp_path: Path,
) -> None:
    """A stopping server held an open watch for its whole grace period, every graceful
    restart of a server someone watched taking that much longer, then cut it. It now ends the
    watch UNAVAILABLE, saying why, at its next poll; the SDK's watch re-opens on the restarted
    server and goes on, the event made there reaching it, none repeated."""
    url = f"sqlite:///{tmp_path / 'trainwire.db'}"
    first: RunningServer | None = _running_server(url, 0)
    assert first is not None
    port = first.port
    second: RunningServer | None = None
    try:
        with Client(f"127.0.0.1:{port}", timeout=30) as client:
            job = client.create_job(client.upload_dataset(*blobs()), MODEL, epochs=5)
            watch = job.watch(timeout=60)
            seen = [next(watch)]  # QUEUED: no worker takes it, so the job stays quiet
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                raw = jobs_pb2_grpc.JobServiceStub(channel).WatchJob(
                    jobs_pb2.WatchJobRequest(name=job.name, after_sequence=1), timeout=60
                )
                with ThreadPoolExecutor(2) as pool:
                    following = pool.submit(lambda: [event.state for event in watch])
                    stopping = pool.submit(first.stop, STOP_GRACE_S)
                    with pytest.raises(grpc.RpcError) as ended:
                        next(raw)
                    stopping.result(timeout=60)
                    first = None
                    second = _running_server(url, port)
                    job.cancel()  # made on the restarted server: CANCELLED, and the watch ends
                    states = following.result(timeout=60)
    finally:
        for server in (first, second):
            if server is not None:
                server.stop(0)
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "the server is shutting down" in ended.value.details()
    assert [event.state for event in seen] + states == ["QUEUED", "CANCELLED"]
    assert watch.reconnects >= 1


def test_a_prediction_stream_goes_on_across_a_graceful_restart(tmp_path: Path) -> None:
    """A stopping server lets a PredictStream run out its grace period, then gRPC ends it
    (UNAVAILABLE, "Cancelling all calls"), which the SDK raised. The stream goes on over a new
    call on the restarted server; the batch the iterable gave meanwhile is sent there, and each
    batch is read and answered once, in order."""
    url = f"sqlite:///{tmp_path / 'trainwire.db'}"
    rng = np.random.default_rng(6)
    batches = [rng.normal(size=(2, 4)).astype(np.float32) for _ in range(4)]
    with local_server(url, workers=1) as trainer, Client(trainer.target, timeout=30) as client:
        job = client.create_job(client.upload_dataset(*blobs()), MODEL, epochs=2)
        assert job.wait(timeout=60, poll_interval=0.1).state == "SUCCEEDED"
        expected = [client.predict(job.name, x).outputs for x in batches]
    reading, release = threading.Event(), threading.Event()
    reads: list[int] = []

    def feed() -> Iterator[np.ndarray]:
        for index, x in enumerate(batches):
            if index == 2:
                reading.set()
                assert release.wait(60)
            reads.append(index)
            yield x

    first: RunningServer | None = _running_server(url, 0)
    assert first is not None
    port = first.port
    second: RunningServer | None = None
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            stream = client.predict_stream(job.name, feed())
            received = [next(stream).outputs, next(stream).outputs]
            assert reading.wait(30), "the stream reads its third batch"
            first.stop(STOP_GRACE_S)  # the stream, waiting for that batch, is cut at the end
            first = None
            second = _running_server(url, port)
            release.set()
            received += [prediction.outputs for prediction in stream]
    finally:
        for server in (first, second):
            if server is not None:
                server.stop(0)
    assert reads == [0, 1, 2, 3]
    assert len(received) == len(expected)
    assert all(np.array_equal(got, want) for got, want in zip(received, expected, strict=True))


def test_an_upload_cut_by_a_stopping_server_is_retried_on_the_restarted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload in progress when its server stops has the grace period to finish, and is then
    cut. It used to raise, and its user had to upload again; the SDK now retries it (one
    request_id for every attempt) and the restarted server stores it, once."""
    url = f"sqlite:///{tmp_path / 'trainwire.db'}"
    first: RunningServer | None = _running_server(url, 0)
    assert first is not None
    port = first.port
    second: RunningServer | None = None
    requests = wire.Upload.requests
    stalled, resume = threading.Event(), threading.Event()

    def stalling_once(self: wire.Upload, *args: Any) -> Iterator[Any]:
        """The first attempt stops sending after its first chunk, in progress past the grace."""
        for index, request in enumerate(requests(self, *args)):
            yield request
            if index == 1 and not stalled.is_set():
                stalled.set()
                resume.wait(60)

    monkeypatch.setattr(wire.Upload, "requests", stalling_once)
    x = np.random.default_rng(3).normal(size=(300_000, 2)).astype(np.float32)
    y = np.arange(300_000) % 2
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as client, ThreadPoolExecutor(1) as pool:
            uploading = pool.submit(client.upload_dataset, x, y, dedupe=False)
            assert stalled.wait(30)
            first.stop(STOP_GRACE_S)
            first = None
            second = _running_server(url, port)
            resume.set()
            info = uploading.result(timeout=60)
        datasets, _ = second.store.list_datasets(10, "")
    finally:
        resume.set()
        for server in (first, second):
            if server is not None:
                server.stop(0)
    assert [d.id for d in datasets] == [info.name.removeprefix("datasets/")]
    assert datasets[0].request_id and datasets[0].num_examples == 300_000


def test_the_sdk_pings_at_least_as_seldom_as_the_server_accepts() -> None:
    """A client pinging more often than its server accepts is cut off (GOAWAY too_many_pings)."""
    assert rpc.KEEPALIVE_S >= app_module.MIN_PING_INTERVAL_S
    assert rpc.KEEPALIVE_TIMEOUT_S < rpc.KEEPALIVE_S


def test_a_watch_notices_a_connection_that_died_silently_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that dies without a reset (the server's host gone, a NAT or load balancer
    forgetting it) failed nothing: a watch of a quiet job waited on it for ever. The SDK pings
    the server while calls are open and drops a connection whose pings go unanswered; the
    watch re-opens and goes on. Here a frozen proxy relays nothing, either way, and the pings
    are made a second apart (the server set to accept them)."""
    monkeypatch.setattr(app_module, "MIN_PING_INTERVAL_S", 0.5)
    monkeypatch.setattr(rpc, "KEEPALIVE_S", 1.0)
    monkeypatch.setattr(rpc, "KEEPALIVE_TIMEOUT_S", 1.0)
    server = _running_server(f"sqlite:///{tmp_path / 'trainwire.db'}", 0)
    proxy = TcpProxy("127.0.0.1", server.port)
    try:
        with (
            Client(f"127.0.0.1:{server.port}", timeout=30) as direct,
            Client(f"127.0.0.1:{proxy.port}", timeout=30, watch_reconnect_s=60) as client,
            ThreadPoolExecutor(1) as pool,
        ):
            job = direct.create_job(direct.upload_dataset(*blobs()), MODEL, epochs=5)
            watch = client.watch_job(job.name, timeout=None)
            assert next(watch).state == "QUEUED"  # no worker: the job stays quiet
            following = pool.submit(lambda: [event.state for event in watch])
            try:
                time.sleep(3)  # pings answered: the connection stays
                assert watch.reconnects == 0, "the server refused the pings"
                proxy.freeze()
                wait_for(lambda: watch.reconnects >= 1, 30, "the watch to drop the connection")
                proxy.thaw()
                direct.cancel_job(job.name)
                assert following.result(timeout=60) == ["CANCELLED"]
            finally:
                watch.close()  # a watch still waiting on the dead connection ends
    finally:
        proxy.close()
        server.stop(0)
