"""Dynamic micro-batching: concurrent predictions for one model share one forward pass.

Predictions run on the server's event loop (see `server.app`). A request that finds no pass forming
starts a leader task for the next pass. The leader lets whatever else is due on the loop run first
and takes its pass when nothing is — when the loop would otherwise wait for the network — so the
calls the loop is receiving meanwhile join that pass (for at most `BUSY_LOOP_HOLD_S`). A small
request that finds its model idle and nothing else due on the loop runs that pass (itself alone) at
once in its own handler instead. Neither adds a wait when nothing else is queued, the fault
tensorflow/serving#255 describes. Requests that arrive while a pass runs queue up; when a pass ends,
a new leader takes what queued, up to `max_rows` rows (a bigger request runs alone). That leader —
the model is under load — may also wait for more rows up to `max_wait_s` after the oldest queued
request arrived. No leader makes a request spend more than half the time its deadline gave it
waiting for company.

Why hold a pass while the loop is busy: under load, gRPC hands the loop one call at a time, so a
leader that ran at once would mostly run alone. Measured here (one-row requests at concurrency 16,
784-512-512-10): passes carried 1.1 requests and the server answered about 1,700 requests/s;
holding them until the loop is idle gave about 3 requests a pass and 2,300-2,500 requests/s. A pass
costs far more per request alone than in company even though every row still gets its own `gemv`:
each pass reads the 2.6 MB of weights through the cache again and releases the GIL once per layer,
and both slow down the rest of the server's work.

Every request's rows are computed as if it were alone (`engine.inference.predict_stacked`), so
batching never changes an answer, and a pass's `postprocess` (probabilities and labels) runs once
over the whole pass, row by row, when one of its requests wants it (not one that asked for the raw
outputs alone); requests are validated before they join, so a malformed one
never reaches a batch. A request whose caller cancels or whose deadline passes while it is queued
leaves the queue (gRPC cancels its task; a leader also drops expired ones); one already in a
running pass is computed and its answer dropped. Small passes run on the loop itself (a thread
hop would cost more than the pass); large ones in the thread pool, so the loop goes on receiving.
One pass per model runs at a time, which also keeps the model's scratch buffers safe.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from trainwire.engine import Model
from trainwire.engine.inference import blocked_rows, layer_tiles, predict_stacked

from .errors import DeadlineExceeded
from .metrics import PREDICTION_BATCH_REQUESTS

# Passes of at least this many rows run in the thread pool rather than on the event loop
# (about 1 ms of forward pass for a 784-512-512-10 network).
OFF_LOOP_ROWS = 64
# The longest a leader lets other work due on the loop go first, after its oldest request arrived.
BUSY_LOOP_HOLD_S = 0.002


# What a pass's stacked outputs become: arrays with one row per input row, each row computed from
# that row alone (so batching cannot change it); every request gets its rows of each.
Postprocess = Callable[[np.ndarray], tuple[np.ndarray, ...]]


def raw_outputs(outputs: np.ndarray) -> tuple[np.ndarray, ...]:
    return (outputs,)


# Leaders holding their pass, by id() of their loop (other models'). Each has its wake-up in the
# loop's ready queue whenever another callback runs: that is not work that could join a pass, and
# counted as such, two models' leaders would hold each other for the whole BUSY_LOOP_HOLD_S. An
# entry lives only while a leader holds (so a new loop cannot inherit a closed one's id), and a
# plain dict, unlike a WeakKeyDictionary, makes no weak reference on every look.
_holding: dict[int, int] = {}


def _others_due(loop: asyncio.AbstractEventLoop) -> bool | None:
    """Whether callbacks other than holding leaders' wake-ups are due on the running `loop`;
    None when the loop does not tell.

    Read from the loop's ready queue, which CPython's asyncio keeps in `_ready`. On a loop without
    one, requests always go through a leader, which takes its pass at once.
    """
    ready = getattr(loop, "_ready", None)
    return None if ready is None else len(ready) > _holding.get(id(loop), 0)


def _alone_on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether nothing else is due on the running `loop`. Then a small request on an idle model
    runs its pass itself, at once: a leader started now would have company only if a call arrived
    in the next turn of the loop, and the task and two trips round the loop cost more than that
    chance is worth at low load."""
    return _others_due(loop) is False


def _deadline_passed(waited: bool) -> DeadlineExceeded:
    where = "while it waited for a forward pass" if waited else "before it reached the model"
    return DeadlineExceeded(
        f"the prediction's deadline passed {where}; "
        "allow more time or send fewer concurrent requests"
    )


@dataclass(eq=False)
class _Ticket:
    """One request's place in a model's batch queue."""

    features: np.ndarray
    deadline: float | None  # time.monotonic() value
    postprocessed: bool  # wants `postprocess` of its outputs, not the raw outputs alone
    done: asyncio.Future[tuple[np.ndarray, ...]]
    arrived: float = field(default_factory=time.monotonic)

    def half_waited(self) -> float:
        """When it will have waited half the time its deadline gave it (inf without one)."""
        if self.deadline is None:
            return math.inf
        return self.arrived + (self.deadline - self.arrived) / 2


class ModelBatcher:
    """A loaded model and its batch queue; `predict` is called on the server's event loop (one
    loop at a time: the batcher keeps the loop it runs on until that loop stops)."""

    def __init__(
        self,
        model: Model,
        max_rows: int,
        max_wait_s: float,
        executor: Executor | None = None,
        postprocess: Postprocess = raw_outputs,
    ) -> None:
        self.model = model
        self.postprocess = postprocess
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.executor = executor
        self.tiles = layer_tiles(model, max_rows)
        self.passes = 0  # forward passes run (tests, metrics)
        self._queue: deque[_Ticket] = deque()
        # Kept as the queue changes, since a holding leader reads them on every turn of the loop:
        # its rows, and the earliest time at which a queued request has waited half the time its
        # deadline gave it (a request that leaves early may leave it too early until the next
        # pass takes the queue: the pass then forms sooner, never later).
        self._queued_rows = 0
        self._half_deadline = math.inf
        self._leader: asyncio.Task[None] | None = None  # forms or runs the current pass
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop `predict` runs on
        # A pass running in the thread pool, until it ends: it goes on if its leader is
        # cancelled, and no other pass may use the model meanwhile.
        self._pool_pass: asyncio.Future[tuple[np.ndarray, ...]] | None = None

    async def predict(
        self, features: np.ndarray, deadline: float | None = None, postprocessed: bool = True
    ) -> tuple[np.ndarray, ...]:
        """`postprocess` of the outputs for `features` (validated, the model's dtype): by default
        a 1-tuple of the raw outputs. Not `postprocessed`, the tuple starts with the raw outputs
        and may hold nothing else. Computed in a shared pass, or at once on an idle model. The
        arrays are row slices of the whole pass's: read them, never write to them."""
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise _deadline_passed(waited=False)
        loop = self._loop
        if loop is None or not loop.is_running():
            # Looked up once per loop: on Python 3.11 every asyncio.get_running_loop() makes a
            # getpid() system call (a fork check). Looked up here and on every turn of a
            # holding leader, they were 8.4 system calls a request at concurrency 16 (strace;
            # grpc's own 2.0 remain) and cost 4-7% of the requests/s (interleaved A/B runs).
            loop = self._loop = asyncio.get_running_loop()
        if (
            self._leader is None
            and self._pool_pass is None
            and not self._queue
            and len(features) < OFF_LOOP_ROWS
            and _alone_on_loop(loop)
        ):
            try:
                return self._compute([features], postprocessed)
            finally:
                self._passed(1)
        ticket = _Ticket(features, deadline, postprocessed, loop.create_future())
        self._enqueue(ticket)
        if self._leader is None:
            self._start_leader(loop, under_load=False)
        try:
            return await ticket.done
        except asyncio.CancelledError:
            if ticket in self._queue:  # not taken yet: leave without a trace
                self._queue.remove(ticket)
                self._queued_rows -= len(ticket.features)
            raise

    def _enqueue(self, ticket: _Ticket) -> None:
        self._queue.append(ticket)
        self._queued_rows += len(ticket.features)
        self._half_deadline = min(self._half_deadline, ticket.half_waited())

    def _start_leader(self, loop: asyncio.AbstractEventLoop, under_load: bool) -> None:
        # A task of its own, not the request's: a cancelled caller must not stop a pass that
        # others wait for. It runs after the handlers already due on the loop, so requests
        # received meanwhile join its pass.
        self._leader = loop.create_task(self._lead(loop, under_load))

    async def _lead(self, loop: asyncio.AbstractEventLoop, under_load: bool) -> None:
        """Forms and runs one pass, then starts the next leader for what queued meanwhile."""
        cancelled = False
        try:
            await self._let_due_work_run(loop)
            if under_load and self.max_wait_s > 0:
                await self._wait_for_rows()
            batch = self._take()
            if batch:
                await self._run(loop, batch)
        except asyncio.CancelledError:  # the server is stopping
            cancelled = True
            raise
        finally:
            self._leader = None
            if self._queue and not cancelled:
                self._start_leader(loop, under_load=True)

    def _wait_until(self, patience_s: float) -> float:
        """When the forming batch stops waiting for rows: `patience_s` after the oldest request
        arrived, and before any request has spent half the time its deadline gave it."""
        return min(self._queue[0].arrived + patience_s, self._half_deadline)

    async def _let_due_work_run(self, loop: asyncio.AbstractEventLoop) -> None:
        """Yields to the loop while other work is due on it (handlers that may queue requests),
        until the batch is full or `BUSY_LOOP_HOLD_S` is up."""
        key = id(loop)
        # Read on every look: a request that arrives meanwhile may bring a closer deadline.
        while (
            self._queue
            and _others_due(loop)
            and self._queued_rows < self.max_rows
            and time.monotonic() < self._wait_until(BUSY_LOOP_HOLD_S)
        ):
            _holding[key] = _holding.get(key, 0) + 1  # its wake-up is queued until it runs
            try:
                await asyncio.sleep(0)
            finally:
                if _holding[key] == 1:
                    del _holding[key]
                else:
                    _holding[key] -= 1

    async def _wait_for_rows(self) -> None:
        while self._queue and self._queued_rows < self.max_rows:
            remaining = self._wait_until(self.max_wait_s) - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 0.001))

    def _take(self) -> list[_Ticket]:
        """The queue's head up to `max_rows` rows (at least one request); expired ones fail."""
        batch: list[_Ticket] = []
        rows = 0
        now = time.monotonic()
        while self._queue:
            ticket = self._queue[0]
            # Counted as the blocked products will see them (zero padding included): the row
            # tiles were probed for passes up to max_rows rows.
            size = max(len(ticket.features), blocked_rows(len(ticket.features), self.tiles))
            if batch and rows + size > self.max_rows:
                break
            self._queue.popleft()
            self._queued_rows -= len(ticket.features)
            if ticket.done.done():  # its caller went away
                continue
            if ticket.deadline is not None and ticket.deadline <= now:
                ticket.done.set_exception(_deadline_passed(waited=True))
                continue
            batch.append(ticket)
            rows += size
        self._half_deadline = min((t.half_waited() for t in self._queue), default=math.inf)
        return batch

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Ticket]) -> None:
        inputs = [t.features for t in batch]
        postprocessed = any(t.postprocessed for t in batch)
        if self._pool_pass is not None:  # left running by a cancelled leader
            await asyncio.wait([self._pool_pass])
        try:
            if self.executor is not None and sum(len(x) for x in inputs) >= OFF_LOOP_ROWS:
                # Shielded: if the leader is cancelled (the server stops) the pass still ends,
                # and `_pool_pass` keeps other passes off the model until it has.
                pool_pass = loop.run_in_executor(
                    self.executor, self._compute, inputs, postprocessed
                )
                self._pool_pass = pool_pass
                pool_pass.add_done_callback(self._pool_pass_ended)
                results = await asyncio.shield(pool_pass)
            else:
                results = self._compute(inputs, postprocessed)
        except Exception as error:  # every request of the batch gets it
            for ticket in batch:
                if not ticket.done.done():
                    ticket.done.set_exception(error)
        else:
            start = 0
            for ticket in batch:
                end = start + len(ticket.features)
                if not ticket.done.done():
                    ticket.done.set_result(tuple(result[start:end] for result in results))
                start = end
        self._passed(len(batch))

    def _passed(self, requests: int) -> None:
        self.passes += 1
        PREDICTION_BATCH_REQUESTS.observe(requests)

    def _pool_pass_ended(self, _: object) -> None:
        self._pool_pass = None

    def _compute(self, inputs: list[np.ndarray], postprocessed: bool) -> tuple[np.ndarray, ...]:
        outputs = predict_stacked(self.model, inputs, self.tiles)
        return (self.postprocess if postprocessed else raw_outputs)(outputs)
