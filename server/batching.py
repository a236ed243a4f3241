"""Dynamic micro-batching: concurrent predictions for one model share one forward pass.

Leader and followers, no batching thread. A request that finds its model idle runs at once — no
added wait when nothing is queued, the fault tensorflow/serving#255 describes. Requests that
arrive while a pass runs queue up; when the pass ends, the first of them leads the next pass over
what queued, up to `max_rows` rows (a bigger request runs alone). That leader may wait for more
rows up to `max_wait_s` after the oldest queued request arrived, never past the earliest deadline
in its batch less the time of a pass.

Every request's rows are computed as if it were alone (`engine.inference.predict_many`), so
batching never changes an answer; validation happens before a request joins, so a malformed one
never reaches a batch. A request whose deadline passes or whose caller cancels while it is queued
leaves the queue; one already in a running pass is computed and its answer dropped.

One pass per model runs at a time, which is also what keeps the model's scratch buffers safe.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from trainwire.engine import Model
from trainwire.engine.inference import layer_tiles, predict_many

from .errors import Cancelled, DeadlineExceeded
from .metrics import PREDICTION_BATCH_REQUESTS


class _State(enum.Enum):
    QUEUED = "queued"  # waiting for a leader to take it
    LEAD = "lead"  # its thread runs the next pass
    TAKEN = "taken"  # in a running pass
    DONE = "done"
    GONE = "gone"  # left the queue: deadline or cancellation


@dataclass(eq=False)
class Ticket:
    """One request's place in a model's batch queue."""

    features: np.ndarray
    deadline: float | None  # time.monotonic() value
    arrived: float = field(default_factory=time.monotonic)
    state: _State = _State.QUEUED
    handed_over: bool = False  # became the leader when a pass ended, not on an idle model
    ready: threading.Event = field(default_factory=threading.Event)
    outputs: np.ndarray | None = None
    error: BaseException | None = None


class ModelBatcher:
    """The batch queue of one loaded model; `predict` is called from the RPC threads."""

    def __init__(self, model: Model, max_rows: int, max_wait_s: float) -> None:
        self.model = model
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.tiles = layer_tiles(model, max_rows)
        self.passes = 0  # forward passes run, for tests and metrics
        self._cond = threading.Condition()
        self._queue: deque[Ticket] = deque()
        self._busy = False
        self._pass_s = 0.0  # the last pass's duration

    def submit(self, features: np.ndarray, deadline: float | None = None) -> Ticket:
        """Queues `features` (validated, the model's dtype) for the next pass."""
        ticket = Ticket(features, deadline)
        with self._cond:
            if self._busy:
                self._queue.append(ticket)
                self._cond.notify()  # a leader filling its batch may want these rows
            else:
                self._busy = True
                ticket.state = _State.LEAD
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Takes a queued ticket out (the caller went away); later states are left alone."""
        with self._cond:
            if ticket.state is _State.QUEUED:
                self._queue.remove(ticket)
                ticket.state = _State.GONE
                ticket.error = Cancelled("the prediction was cancelled by its caller")
                ticket.ready.set()

    def result(self, ticket: Ticket) -> np.ndarray:
        """Waits for the ticket's outputs, leading a pass when its turn comes."""
        while True:
            # Every state change and `ready.set()` happens under the lock, so clearing here
            # before waiting loses no wake-up.
            with self._cond:
                if ticket.state is _State.LEAD:
                    break
                if ticket.state in (_State.DONE, _State.GONE):
                    return self._answer(ticket)
                timeout = None
                if ticket.state is _State.QUEUED and ticket.deadline is not None:
                    timeout = ticket.deadline - time.monotonic()
                    if timeout <= 0:
                        self._queue.remove(ticket)
                        ticket.state = _State.GONE
                        raise DeadlineExceeded(
                            "the prediction's deadline passed while it waited for a forward "
                            "pass; allow more time or send fewer concurrent requests"
                        )
                ticket.ready.clear()
            ticket.ready.wait(timeout)
        self._lead(ticket)
        return self._answer(ticket)

    def predict(self, features: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """`submit` then `result`."""
        return self.result(self.submit(features, deadline))

    @staticmethod
    def _answer(ticket: Ticket) -> np.ndarray:
        if ticket.error is not None:
            raise ticket.error
        assert ticket.outputs is not None
        return ticket.outputs

    def _gather(self, leader: Ticket) -> list[Ticket]:
        """The leader's batch: itself and what queued, within `max_rows`."""
        batch = [leader]
        rows = len(leader.features)
        with self._cond:
            if leader.handed_over and self.max_wait_s > 0:
                # Only a leader handed the turn by a finished pass waits: it arrived under load.
                until = leader.arrived + self.max_wait_s
                deadlines = [t.deadline for t in (leader, *self._queue) if t.deadline is not None]
                if deadlines:
                    until = min(until, min(deadlines) - 2 * self._pass_s)
                while self._queue_rows() + rows < self.max_rows:
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            while self._queue and rows + len(self._queue[0].features) <= self.max_rows:
                ticket = self._queue.popleft()
                ticket.state = _State.TAKEN
                rows += len(ticket.features)
                batch.append(ticket)
        return batch

    def _queue_rows(self) -> int:
        return sum(len(t.features) for t in self._queue)

    def _lead(self, leader: Ticket) -> None:
        batch = self._gather(leader)
        started = time.monotonic()
        try:
            outputs = predict_many(self.model, [t.features for t in batch], self.tiles)
        except Exception as error:  # every caller in the batch gets it
            for ticket in batch:
                ticket.error = error
        else:
            for ticket, out in zip(batch, outputs, strict=True):
                ticket.outputs = out
        self._pass_s = time.monotonic() - started
        self.passes += 1
        PREDICTION_BATCH_REQUESTS.observe(len(batch))
        with self._cond:
            for ticket in batch:
                ticket.state = _State.DONE
                ticket.ready.set()
            if self._queue:
                successor = self._queue.popleft()
                successor.state = _State.LEAD
                successor.handed_over = True
                successor.ready.set()
            else:
                self._busy = False
