"""The SDK's clients shared between threads and tasks: a close() racing calls, one watch iterated
from two threads, concurrent uploads of one dataset, a prediction stream abandoned early."""

from __future__ import annotations

import pytest

from trainwire.client import Client, ClientClosed
from trainwire.server.local import LocalServer

from .conftest import blobs


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
        "predict_stream": lambda: list(client.predict_stream("jobs/any", [features])),
        "watch_job": lambda: list(client.watch_job("jobs/any")),
    }
    with pytest.raises(ClientClosed, match=r"^Client\('.*'\) is closed"):
        calls[rpc]()
