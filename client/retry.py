"""Retries with exponential backoff and full jitter, for idempotent calls.

The SDK retries a call that failed with UNAVAILABLE (server down, restarting, connection dropped),
RESOURCE_EXHAUSTED (server busy) or a CANCELLED it did not cause (a server stopping: see
`RETRYABLE`), within the call's deadline; UNAVAILABLE for at least
`RECONNECT_WINDOW_S`, longer than the channel may wait between connection attempts. A
RESOURCE_EXHAUSTED that names a configured limit (`max_epochs is limited to 5. Received: 6`) or a
message-size limit is permanent and raised at once, unless the limit bounds the whole server's
load (`_SHED`): that refusal is a busy server's. A per-client count of open calls refusing a call
whose earlier attempt the server may still be running is retried until the deadline (the count
may be that attempt's). Only idempotent calls are retried, which is every call: `CreateJob` and
`UploadDataset` always carry a `request_id`, so a retry cannot create two jobs or store two
datasets. A delete whose answer was lost may find its resource gone when
retried: NOT_FOUND on a retry of `DeleteJob` or `DeleteDataset` counts as deleted.

A reconnecting watch gives up after `watch_reconnect_s` without an open stream, and one that has
never opened a stream after `RECONNECT_WINDOW_S`, as a call does. Its re-open refused by the
per-client count of watches is retried within the same bounds (the count may be its lost
stream's); its first open refused so is raised at once. The server marks a watch's
stream (WatchJob, WatchJobBatches) as open with `WATCH_OPENED` in its initial metadata once it
has found the job, so a watch of a quiet job (no event for longer than that) still counts its
outage from the connection it lost, not from its last event.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

from .rpc import MAX_RECONNECT_BACKOFF_S

#: Status codes worth another attempt.
#:
#: CANCELLED among them: a stopping gRPC server cancels every call it has received and not yet
#: started, and every call that reaches it once its shutdown has begun (grpc/grpc#41785), so an
#: idempotent call in flight across a graceful restart could end CANCELLED, never handled. The
#: client cannot tell that from any other CANCELLED it did not cause (a Trainwire server never
#: answers CANCELLED itself), and each is a call a server dropped, so it is retried like a refused
#: one, within `max_attempts` (a Trainwire server refuses what it can UNAVAILABLE first, see
#: `server.wrappers.Draining`; the instant before its shutdown is left). One the client caused is
#: not retried: a sync call cancelled by `close()` (`CallAttempts.delay_after(closed=True)`); an
#: asyncio call cancelled by its task or by `close()` raises `asyncio.CancelledError`, never a
#: status, so it never reaches a retry.
RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
)
# Phrases of RESOURCE_EXHAUSTED statuses that another attempt cannot fix (the last: a stream's
# model larger than the server's whole model cache).
_PERMANENT = (
    "is limited to",
    "larger than max",
    "message larger",
    "more than the server's model cache holds",
)
# Phrases of RESOURCE_EXHAUSTED statuses that name a bound of the whole server's load, shared by
# every client's calls, not a limit on the caller's request or its own open calls: load shed,
# retried as a busy server's refusal is, though they say "is limited to" (the upload beyond as
# many waiting for a slot as there are slots, which says to upload again once some end).
_SHED = ("waiting for a slot is limited to",)
# The phrase of a refusal by a per-client count of open calls (the server's
# max_uploads_per_client, max_predict_streams_per_client, max_watches_per_client).
_PER_CLIENT_LIMIT = "_per_client is limited to"
# The codes of a failed attempt the server may still be running, and counting among its client's
# open calls: it lost the connection, or cancelled the call as it stopped.
_MAY_STILL_RUN = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})

#: How long calls that failed UNAVAILABLE go on being retried, past `max_attempts` if need be.
#: While a channel waits out its backoff between connection attempts it is in TRANSIENT_FAILURE
#: and fails every call at once, even when the server is back: retries must outlast the longest
#: wait, `MAX_RECONNECT_BACKOFF_S` plus gRPC's jitter of up to 20 %, and leave the attempt after
#: it half a second for its TCP, TLS and HTTP/2 handshakes (the channel stays in
#: TRANSIENT_FAILURE until it is connected).
RECONNECT_WINDOW_S = MAX_RECONNECT_BACKOFF_S * 1.2 + 0.5


@dataclass(frozen=True)
class RetryPolicy:
    """How failed idempotent calls are retried.

    Attempt n (1-based) that fails waits a random time in [0, min(max_backoff,
    initial_backoff * multiplier ** (n - 1))] ("full jitter") before the next attempt, up to
    `max_attempts` attempts in all and never past the call's deadline.

    UNAVAILABLE is retried for longer: until `reconnect_window` seconds (about 3 s) have passed
    since the call's first UNAVAILABLE, even past `max_attempts`, and the last of those attempts
    starts no earlier than that (a wait within the window never ends past it). A call made just
    after a server restart, while its channel still waits to reconnect, then succeeds; one to a
    server that stays down raises `Unavailable` after about `reconnect_window` seconds (sooner
    if the call's deadline comes first), not after its whole timeout. `max_attempts=1` turns
    every retry off, this one included.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    reconnect_window: float = RECONNECT_WINDOW_S
    codes: frozenset[grpc.StatusCode] = field(default=RETRYABLE)
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1. Received: {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and the multiplier >= 1")
        if self.reconnect_window < 0:
            raise ValueError(f"reconnect_window must be >= 0. Received: {self.reconnect_window}")

    def retryable(self, code: grpc.StatusCode | None, details: str) -> bool:
        """Whether a failure with this status may succeed on another attempt."""
        if code not in self.codes:
            return False
        if code is not grpc.StatusCode.RESOURCE_EXHAUSTED:
            return True
        shed = any(phrase in details for phrase in _SHED)
        return shed or not any(phrase in details for phrase in _PERMANENT)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return self.rng.uniform(0.0, ceiling)

    def next_delay(
        self,
        attempt: int,
        code: grpc.StatusCode | None,
        details: str,
        remaining: float,
        *,
        unavailable_for: float,
        server_delay: float = 0.0,
    ) -> float | None:
        """The wait before another attempt, or None when the failure should be raised.
        `unavailable_for` is the time since the call's first UNAVAILABLE failure (0 if none);
        `server_delay`, the wait the server asked for, is the least wait, up to `max_backoff`."""
        if self.max_attempts == 1 or not self.retryable(code, details):
            return None
        wait = max(self.delay(attempt), min(server_delay, self.max_backoff))
        reconnecting = (
            code is grpc.StatusCode.UNAVAILABLE and unavailable_for < self.reconnect_window
        )
        if reconnecting:
            # The attempt at the window's end is the one the channel's reconnection is for.
            wait = min(wait, self.reconnect_window - unavailable_for)
        elif attempt >= self.max_attempts:
            return None
        return wait if wait < remaining else None


def refused_by_a_per_client_count(code: grpc.StatusCode | None, details: str) -> bool:
    """Whether a failure is a refusal by a per-client count of open calls (`_PER_CLIENT_LIMIT`):
    after an attempt the server may still be running, the count may be that attempt's."""
    return code is grpc.StatusCode.RESOURCE_EXHAUSTED and _PER_CLIENT_LIMIT in details


class CallAttempts:
    """One call's attempts under a `RetryPolicy`, for both clients' call loops: its deadline,
    the attempt under way, and since when the server has been unavailable."""

    def __init__(self, policy: RetryPolicy, budget_s: float) -> None:
        self.policy = policy
        self.deadline = time.monotonic() + budget_s
        self.attempt = 0
        self._unavailable_since: float | None = None  # the first UNAVAILABLE
        # An earlier attempt failed so that the server may still be running it (see
        # `delay_after`).
        self._earlier_may_run = False

    def next_timeout(self) -> float:
        """Starts another attempt; returns its timeout: what is left of the deadline."""
        self.attempt += 1
        return max(self.deadline - time.monotonic(), 0.001)

    def answered(self) -> None:
        """The server answered part of a stream during this attempt: its next failure begins
        a new outage, counted as a first attempt's."""
        self.attempt = min(self.attempt, 1)
        self._unavailable_since = None

    def delay_after(
        self,
        code: grpc.StatusCode | None,
        details: str,
        *,
        closed: bool = False,
        server_delay: float = 0.0,
    ) -> float | None:
        """The wait before another attempt after this one failed so, or None to raise. `closed`:
        whether the client is closed, when a CANCELLED is its own doing and raised;
        `server_delay`: the wait the server asked for (`errors.retry_delay_of`)."""
        if closed and code is grpc.StatusCode.CANCELLED:
            return None
        now = time.monotonic()
        if (
            self._earlier_may_run
            and refused_by_a_per_client_count(code, details)
            and code in self.policy.codes
            and self.policy.max_attempts > 1
        ):
            # The open call the limit counts may be this call's own earlier attempt, which the
            # server has not yet seen end: an upload whose client lost its connection while it
            # was being stored holds its project's count until it is stored, and its retry was
            # refused as a second upload, raised at once though the dataset was stored. Tried
            # again, backing off, until the count is let go of or the deadline comes.
            wait = max(self.policy.delay(self.attempt), min(server_delay, self.policy.max_backoff))
            return wait if wait < self.deadline - now else None
        self._earlier_may_run = self._earlier_may_run or code in _MAY_STILL_RUN
        if code is grpc.StatusCode.UNAVAILABLE and self._unavailable_since is None:
            self._unavailable_since = now
        since = self._unavailable_since
        return self.policy.next_delay(
            self.attempt,
            code,
            details,
            self.deadline - now,
            unavailable_for=0.0 if since is None else now - since,
            server_delay=server_delay,
        )


#: Never retry (for callers that do their own).
NO_RETRY = RetryPolicy(max_attempts=1)


#: The initial metadata of a watch's stream (WatchJob, WatchJobBatches) the server opened (sent
#: once the job is found).
#: gRPC reports empty initial metadata for a stream that failed before the server answered and
#: for one whose server sent empty headers alike, so an open stream needs a marker of its own.
WATCH_OPENED = ("trainwire-watch", "open")


def watch_was_open(metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
    """Whether a watch stream's initial metadata carries `WATCH_OPENED`."""
    return any(tuple(item) == WATCH_OPENED for item in metadata or ())
