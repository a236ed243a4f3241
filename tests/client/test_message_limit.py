"""A server whose TRAINWIRE_MAX_MESSAGE_BYTES is at the bottom of its range (64 KiB): the SDK and
the user commands work with it when given its limit, and say how when they are not."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainwire.client import Client, Dense, Sequential
from trainwire.client.aio import AsyncClient
from trainwire.client.client import env_settings
from trainwire.client.errors import ResourceExhausted
from trainwire.server.cli import main
from trainwire.server.local import LocalServer, local_server

LIMIT = 64 * 1024


def rows(count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` rows of 20 float32 features (80 bytes a row) and binary labels."""
    features = np.random.default_rng(0).normal(size=(count, 20)).astype(np.float32)
    return features, (features[:, 0] > 0).astype(np.int64)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    url = f"sqlite:///{tmp_path_factory.mktemp('limit') / 'trainwire.db'}"
    env = {"TRAINWIRE_MAX_MESSAGE_BYTES": str(LIMIT), "TRAINWIRE_POLL_INTERVAL_S": "0.1"}
    with local_server(url, workers=1, extra_env=env) as server:
        yield server


@pytest.fixture(scope="module")
def job(small_server: LocalServer) -> str:
    with Client(small_server.target, max_message_bytes=LIMIT) as client:
        dataset = client.upload_dataset(*rows(200), name="small")
        trained = client.create_job(dataset, Sequential([Dense(4), Dense(1)]), epochs=1)
        assert trained.wait(timeout=60).state == "SUCCEEDED"
        return trained.name


def test_uploads_are_chunked_under_the_limit_the_client_is_given(
    small_server: LocalServer,
) -> None:
    """Upload chunks were a fixed 1 MiB: over a 64 KiB limit, the client's own ("Sent message
    larger than max") or the server's."""
    features, labels = rows(20_000)  # 1.6 MB
    with Client(small_server.target, max_message_bytes=LIMIT) as client:
        dataset = client.upload_dataset(features, labels, name="big", dedupe=False)
    assert dataset.feature_shape == (20_000, 20)

    async def upload() -> Any:
        async with AsyncClient(small_server.target, max_message_bytes=LIMIT) as client:
            return await client.upload_dataset(features, labels, name="async", dedupe=False)

    assert asyncio.run(upload()).sha256 == dataset.sha256


def test_an_upload_over_the_servers_limit_says_to_give_the_client_that_limit(
    small_server: LocalServer,
) -> None:
    with Client(small_server.target) as client, pytest.raises(ResourceExhausted) as raised:
        client.upload_dataset(*rows(20_000), name="too-big", dedupe=False)
    assert f"the server's message limit ({LIMIT} bytes)" in raised.value.message
    assert f"max_message_bytes={LIMIT}" in raised.value.message
    assert f"TRAINWIRE_MAX_MESSAGE_BYTES={LIMIT}" in raised.value.message


def counting(client: Client, most: int) -> list[int]:
    """Counts the client's Predict calls, failing the test past `most` (a request refused and
    sent again unchanged would go on for ever)."""
    calls: list[int] = []
    predict: Callable[..., Any] = client._rpc.predict

    def counted(request: Any, **kwargs: Any) -> Any:
        calls.append(request.inputs.shape[0])
        assert len(calls) <= most, "the same refused request sent again and again"
        return predict(request, **kwargs)

    client._rpc.predict = counted  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("limit", [LIMIT, None], ids=["given", "default"])
def test_a_prediction_is_sized_by_the_servers_limit(
    small_server: LocalServer, job: str, limit: int | None
) -> None:
    """Given the server's limit, the SDK sized its requests by it; with its own default (4 MiB),
    the first request (1,024 rows, 80 KiB) was refused by the server ("Received message larger
    than max (N vs. 65536)") and sent again, unchanged, for ever: the limit the refusal names
    now sizes it and every later request."""
    features, _ = rows(20_000)
    settings = {} if limit is None else {"max_message_bytes": limit}
    with Client(small_server.target, **settings) as client:
        calls = counting(client, 400)
        prediction = client.predict(job, features)
    assert prediction.outputs.shape == (20_000, 1)
    assert max(calls[1:]) * 80 <= LIMIT // 4 + 80, calls[:3]


def test_a_prediction_stream_is_sized_by_the_servers_limit_below_the_clients(
    small_server: LocalServer, job: str
) -> None:
    """A client left at its default limit (4 MiB) sized a stream's messages by a quarter of it:
    1 MiB, over the server's 64 KiB, which refused the stream (RESOURCE_EXHAUSTED, "Received
    message larger than max") where `predict` of the same rows succeeded. The server now says
    its limit in `GetModelMetadata`, which the stream asks once, and the stream is sized by the
    smaller of the two."""
    features, _ = rows(20_000)  # 1.6 MB
    with Client(small_server.target) as client:
        sent: list[int] = []
        stream: Callable[..., Any] = client._rpc.predict_stream

        def counted(requests: Iterator[Any], **kwargs: Any) -> Any:
            def seen() -> Iterator[Any]:
                for request in requests:
                    sent.append(request.ByteSize())
                    yield request

            return stream(seen(), **kwargs)

        client._rpc.predict_stream = counted  # type: ignore[method-assign]
        streamed = list(client.predict_stream(job, [features[:3], features, features[3:5]]))
        whole = client.predict(job, features)
        assert client.model_metadata(job).max_message_bytes == LIMIT
    assert [len(p.outputs) for p in streamed] == [3, 20_000, 2]
    assert max(sent) <= LIMIT // 4 + 1024, "each message within a quarter of the server's limit"
    assert whole.labels is not None and np.array_equal(streamed[1].labels, whole.labels)
    np.testing.assert_allclose(streamed[1].outputs, whole.outputs, rtol=1e-6)
    np.testing.assert_allclose(streamed[1].probabilities, whole.probabilities, rtol=1e-6)

    async def scenario() -> list[Any]:
        async with AsyncClient(small_server.target) as client:
            return [p async for p in client.predict_stream(job, [features, features[:3]])]

    streamed_async = asyncio.run(scenario())
    assert [len(p.outputs) for p in streamed_async] == [20_000, 3]
    np.testing.assert_allclose(streamed_async[0].outputs, whole.outputs, rtol=1e-6)


def test_the_user_commands_and_from_env_read_the_limit(
    small_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    features, labels = rows(20_000)
    np.save(tmp_path / "x.npy", features)
    np.save(tmp_path / "y.npy", labels)
    monkeypatch.setenv("TRAINWIRE_MAX_MESSAGE_BYTES", str(LIMIT))
    monkeypatch.setenv("TRAINWIRE_TARGET", small_server.target)
    with Client.from_env() as client:
        assert client.max_message_bytes == LIMIT
    upload = ["datasets", "upload", str(tmp_path / "x.npy"), "--targets", str(tmp_path / "y.npy")]
    assert main([*upload, "--name", "cli"]) == 0


@pytest.mark.parametrize("value", ["4096", "64k", "2147483648"])
def test_a_message_limit_out_of_range_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="TRAINWIRE_MAX_MESSAGE_BYTES must be a whole number"):
        env_settings({"TRAINWIRE_MAX_MESSAGE_BYTES": value})
