"""The batches of one `predict_stream`, read once from the caller's iterable and kept until
answered, so that a stream a server dropped goes on over a new call.

A server restarting ends the calls it holds: UNAVAILABLE, or CANCELLED once its grace period is
over (see `retry.RETRYABLE`). The clients then open another PredictStream and send again the
batches sent and not answered, then the rest: the caller's iterable is read once, in order, and
each batch's prediction is handed out once. The batches read and not yet answered are kept
(gRPC's flow control holds how far the sending runs ahead of the answers).

Each call's requests come from `requests` (sync: gRPC reads them in a thread of its own, one per
call) or `next_batch` (asyncio: a task of the client's writes them). A call that has failed may
still be inside the caller's iterable, waiting for a batch: the read goes on, and the batch is
kept for the next call, never read twice nor lost.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from trainwire.v1 import predictions_pb2

from .results import ModelInfo
from .wire import StreamedPrediction, as_inputs

Batch = np.ndarray | Sequence[Sequence[float]]


class BatchFeed:
    """The batches of a sync `predict_stream` across its calls. `requests` runs in gRPC's
    request threads; `answered` and `restart` in the caller's thread."""

    def __init__(self, batches: Iterable[Batch], streamed: StreamedPrediction) -> None:
        self._source = iter(batches)
        self.streamed = streamed
        # `_state` guards what both threads read: the batches kept, how many were answered, and
        # the encoding of a batch's messages (`streamed` counts them per call); `_reading`
        # lets one thread at a time into the caller's iterable, which may block for long.
        self._state = threading.Lock()
        self._reading = threading.Lock()
        self._kept: deque[np.ndarray] = deque()  # read and not yet answered, in order
        self._answered = 0
        self._finished = False  # the iterable ended, or raised
        self.failure: Exception | None = None  # what it raised (or a batch that cannot be sent)
        self.answered_by = ""  # the checkpoint that answered the stream, once one has

    def requests(
        self, ended: threading.Event, describe: Callable[[], ModelInfo]
    ) -> Iterator[predictions_pb2.PredictRequest]:
        """One call's requests: the batches kept (sent by an earlier call, unanswered), then new
        ones, until the iterable ends or `ended` is set (the call is over). A batch that cannot
        be encoded, or an exception of the iterable, ends them (`failure`)."""
        try:
            sent = self._answered  # the next batch this call sends, counted as `_answered` is
            while True:
                if self.streamed.answer_row_bytes is None and self._kept:
                    self.streamed.describe(describe())  # once, after the first batch is encoded
                with self._state:
                    if ended.is_set():
                        return
                    index = sent - self._answered
                    messages = None
                    if index < len(self._kept) and self.streamed.answer_row_bytes is not None:
                        # Encoded whole here: a call ended meanwhile counts no message of it.
                        messages = list(self.streamed.requests(self._kept[index]))
                        sent += 1
                if messages is not None:
                    yield from messages
                elif index >= len(self._kept) and not self._read_one():
                    return
        except Exception as error:
            self.failure = self.failure or error

    def _read_one(self) -> bool:
        """Reads one more batch into the kept ones; False once the iterable has ended. A call
        whose thread is still inside the iterable reads for the next one: the other waits."""
        before = self._read_so_far()
        with self._reading:
            if self._read_so_far() != before:
                return True  # another call's thread read one meanwhile
            if self._finished:
                return False
            try:
                x = as_inputs(next(self._source))
            except StopIteration:
                self._finished = True
                return False
            except Exception:
                self._finished = True
                raise
            with self._state:
                self._kept.append(x)
            return True

    def _read_so_far(self) -> int:
        """How many batches the iterable has given: those answered and those kept."""
        with self._state:
            return self._answered + len(self._kept)

    def answered(self, checkpoint: str) -> None:
        """The oldest batch kept was answered, by `checkpoint` (see `restart`)."""
        with self._state:
            self._kept.popleft()
            self._answered += 1
            self.answered_by = checkpoint

    def restart(self, ended: threading.Event) -> None:
        """Ends a failed call's requests, before the next call: its messages sent and not
        answered no longer count, and it asks the checkpoint that answered (`resume`)."""
        with self._state:
            ended.set()
            resume(self.streamed, self.answered_by)


class AsyncBatchFeed:
    """The batches of an asyncio `predict_stream` across its calls, read by the writing task of
    each call in turn (`next_batch`)."""

    def __init__(
        self, batches: Iterable[Batch] | AsyncIterable[Batch], streamed: StreamedPrediction
    ) -> None:
        self._source = _aiter(batches)
        self.streamed = streamed
        self._kept: deque[np.ndarray] = deque()
        self._answered = 0
        # The read under way: a call's writer cancelled while it waits keeps it going (shielded),
        # and the next call's writer waits for the same read.
        self._reading: asyncio.Future[Any] | None = None
        self._finished = False
        self.failure: Exception | None = None
        self.answered_by = ""

    def first_unanswered(self) -> int:
        """Where a new call starts sending (see `next_batch`)."""
        return self._answered

    async def next_batch(self, sent: int) -> np.ndarray | None:
        """Batch number `sent` (counted as `first_unanswered`), read if need be; None once the
        iterable has ended. A batch that cannot be encoded, or an exception of the iterable,
        ends it (`failure`)."""
        while sent - self._answered >= len(self._kept):
            if self._finished:
                return None
            if self._reading is None:
                self._reading = asyncio.ensure_future(self._read_one())
            await asyncio.shield(self._reading)
        return self._kept[sent - self._answered]

    async def _read_one(self) -> None:
        try:
            self._kept.append(as_inputs(await anext(self._source)))
        except StopAsyncIteration:
            self._finished = True
        except Exception as error:
            self._finished = True
            self.failure = self.failure or error
        finally:
            self._reading = None

    def answered(self, checkpoint: str) -> None:
        """As `BatchFeed.answered`."""
        self._kept.popleft()
        self._answered += 1
        self.answered_by = checkpoint

    def restart(self) -> None:
        """As `BatchFeed.restart`, once the failed call's writer has stopped."""
        resume(self.streamed, self.answered_by)

    def close(self) -> None:
        """Stops a read still under way (the stream is over)."""
        if self._reading is not None:
            self._reading.cancel()


def resume(streamed: StreamedPrediction, answered_by: str) -> None:
    """Readies `streamed` for the next call of a stream: the failed call's messages no longer
    count, and the next asks the checkpoint that answered (`answered_by`, once one has), so that
    no checkpoint written meanwhile answers the rest. Within one call the server holds the model
    that answered its first message for messages asking as that one did: a call's messages all
    ask alike (switching mid-call lost that hold, and a checkpoint retention deleted meanwhile
    failed the stream NOT_FOUND)."""
    if answered_by:
        streamed.checkpoint = answered_by
    streamed.restart()


async def _aiter(items: Iterable[Batch] | AsyncIterable[Batch]) -> AsyncIterator[Batch]:
    """The items of a sync or async iterable, asynchronously."""
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
