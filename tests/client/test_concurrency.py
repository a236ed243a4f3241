"""The SDK's clients shared between threads and tasks: a close() racing calls, one watch iterated
from two threads, concurrent uploads of one dataset, a prediction stream abandoned early."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from trainwire.client import Client, ClientClosed, NotFound
from trainwire.client.aio import AsyncClient
from trainwire.server.local import LocalServer

from ..support.h2_proxy import HeldRepliesProxy
from .conftest import blobs

MISSING_JOB = "jobs/" + "0" * 32  # well formed, never created: the server answers NotFound


@pytest.mark.parametrize("rpc", ["get_dataset", "predict_stream", "watch_job"])
def test_a_call_racing_close_from_another_thread_raises_client_closed(
    live_server: LocalServer, monkeypatch: pytest.MonkeyPatch, rpc: str
) -> None:
    """A call checks that its client is open, then invokes the RPC: a close() from another thread
    between the two made gRPC refuse the call with its own ValueError ("Cannot invoke RPC: Channel
    closed!"), no SDK error. The close() is made to come exactly there."""
    features, _ = blobs()
    client = Client(live_server.target, timeout=10)
    invoke = getattr(client._rpc, rpc)

    def closed_meanwhile(*args: object, **kwargs: object) -> object:
        client.close()  # as another thread's, once the call has found the client open
        return invoke(*args, **kwargs)

    monkeypatch.setattr(client._rpc, rpc, closed_meanwhile)
    calls = {
        "get_dataset": lambda: client.get_dataset("datasets/any"),
        "predict_stream": lambda: list(client.predict_stream(MISSING_JOB, [features])),
        "watch_job": lambda: list(client.watch_job(MISSING_JOB)),
    }
    with pytest.raises(ClientClosed, match=r"^Client\('.*'\) is closed"):
        calls[rpc]()


ASYNC_CALLS: dict[str, Callable[[AsyncClient], Awaitable[object]]] = {
    "unary": lambda client: client.get_job(MISSING_JOB),
    "predict": lambda client: client.predict(MISSING_JOB, blobs()[0]),
    "stream": lambda client: anext(client.predict_stream(MISSING_JOB, [blobs()[0]])),
    "watch": lambda client: anext(client.watch_job(MISSING_JOB)),
}


@pytest.mark.parametrize("kind", ASYNC_CALLS)
def test_calls_in_flight_when_an_async_client_closes_raise_client_closed(
    live_server: LocalServer, kind: str
) -> None:
    """close() cancels the calls in flight, which grpc.aio reported to the tasks awaiting them as
    a bare CancelledError, though no one had cancelled those tasks: a caller's `except
    TrainwireError` missed it. The proxy holds the server's answers, so the call is in flight."""
    host, port = live_server.target.rsplit(":", 1)
    proxy = HeldRepliesProxy(host, int(port))

    async def scenario() -> None:
        client = AsyncClient(f"127.0.0.1:{proxy.port}", timeout=30)
        with pytest.raises(NotFound):
            await client.job_status(MISSING_JOB)  # connected
        proxy.hold()
        call = asyncio.create_task(ASYNC_CALLS[kind](client))
        # The server has answered (the stream's model_metadata): the answer is held, the call on.
        assert await asyncio.to_thread(proxy.stream_ended.wait, 30), "never answered"
        await client.close()
        with pytest.raises(ClientClosed, match=r"^AsyncClient\('.*'\) is closed"):
            await call

    try:
        asyncio.run(scenario())
    finally:
        proxy.close()


def test_a_task_cancelled_as_its_async_client_closes_is_cancelled(live_server: LocalServer) -> None:
    host, port = live_server.target.rsplit(":", 1)
    proxy = HeldRepliesProxy(host, int(port))

    async def scenario() -> None:
        client = AsyncClient(f"127.0.0.1:{proxy.port}", timeout=30)
        with pytest.raises(NotFound):
            await client.job_status(MISSING_JOB)
        proxy.hold()
        call = asyncio.create_task(client.get_job(MISSING_JOB))
        assert await asyncio.to_thread(proxy.stream_ended.wait, 30), "never answered"
        call.cancel()
        await client.close()
        with pytest.raises(asyncio.CancelledError):
            await call

    try:
        asyncio.run(scenario())
    finally:
        proxy.close()
