"""Micro-batching on the event loop: coalescing, no idle wait, deadlines and cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score

from trainwire.engine import Model, metrics
from trainwire.engine.inference import predict_many, predict_stacked
from trainwire.server import batching
from trainwire.server.batching import OFF_LOOP_ROWS, ModelBatcher
from trainwire.server.errors import DeadlineExceeded
from trainwire.server.predictions import classify

SPEC = {
    "input_dim": 16,
    "layers": [
        {"type": "dense", "units": 32, "activation": "relu"},
        {"type": "dense", "units": 4},
    ],
}
# A request's deadline in the tests of holds cut short at half of it: long enough that a loaded
# machine's delays stay well within the half left (and within the margin of a check that it
# waited about half, not all of it).
DEADLINE_S = 8.0


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """A pass in the thread pool holds until this is set (at the latest when the test ends), so
    a test can queue requests behind a running pass however fast the model is."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch, release: threading.Event) -> list[list[int]]:
    """The row counts of each forward pass's requests, in order."""
    seen: list[list[int]] = []

    def recording(model: Model, inputs: list[np.ndarray], tiles: list[int | None]) -> object:
        seen.append([len(x) for x in inputs])
        if threading.current_thread() is not threading.main_thread():
            assert release.wait(10), "the test never released the pass"
        return predict_stacked(model, inputs, tiles)

    monkeypatch.setattr(batching, "predict_stacked", recording)
    return seen


async def _pass_started(passes: list[list[int]]) -> None:
    """Waits until the first pass is running (in the thread pool), so later requests queue."""
    deadline = time.monotonic() + 10
    while not passes:
        assert time.monotonic() < deadline, "the first pass never started"
        await asyncio.sleep(0.001)


async def _outputs(
    batcher: ModelBatcher, features: np.ndarray, deadline: float | None = None
) -> np.ndarray:
    """The raw outputs a request gets (the batcher's default postprocess passes them alone)."""
    (outputs,) = await batcher.predict(features, deadline)
    return outputs


def _counted_leaders(batcher: ModelBatcher, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records each leader the batcher starts (its `under_load`), and starts it."""
    leaders: list[bool] = []
    start_leader = batcher._start_leader

    def counted(loop: asyncio.AbstractEventLoop, under_load: bool) -> None:
        leaders.append(under_load)
        start_leader(loop, under_load)

    monkeypatch.setattr(batcher, "_start_leader", counted)
    return leaders


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 16)).astype(np.float32)


def test_concurrent_requests_share_a_pass_and_keep_their_answers(
    passes: list[list[int]],
) -> None:
    model = Model.from_spec(SPEC, seed=0)
    batcher = ModelBatcher(model, max_rows=256, max_wait_s=0.0)
    inputs = [_rows(n, seed) for seed, n in enumerate([1, 5, 1, 13, 2, 1, 30, 1])]

    async def run() -> list[np.ndarray]:
        return await asyncio.gather(*(_outputs(batcher, x) for x in inputs))

    together = asyncio.run(run())
    assert passes == [[1, 5, 1, 13, 2, 1, 30, 1]], "all eight were due at once: one pass"
    for x, out in zip(inputs, together, strict=True):
        alone = asyncio.run(_outputs(batcher, x))
        assert np.array_equal(out, alone)


def test_max_rows_splits_batches_in_arrival_order(passes: list[list[int]]) -> None:
    batcher = ModelBatcher(Model.from_spec(SPEC, seed=0), max_rows=10, max_wait_s=0.0)
    batcher.tiles = [None, None]  # every row on its own: a request counts its own rows

    async def run() -> None:
        await asyncio.gather(*(_outputs(batcher, _rows(n, n)) for n in [4, 4, 4, 12, 1]))

    asyncio.run(run())
    # 4+4 fit in 10; 4 starts the next; 12 is bigger than the limit and runs alone.
    assert passes == [[4, 4], [4], [12], [1]]


def test_zero_padding_counts_against_max_rows(passes: list[list[int]]) -> None:
    """Rows padded to a whole tile count, so no pass exceeds the size the tiles were probed for."""
    batcher = ModelBatcher(Model.from_spec(SPEC, seed=0), max_rows=20, max_wait_s=0.0)
    batcher.tiles = [12, 12]  # 8 leftover rows are padded to 12 (8 * ROWS_PER_GEMV >= 12)

    async def run() -> None:
        await asyncio.gather(*(_outputs(batcher, _rows(n, n)) for n in [8, 8, 1, 1]))

    asyncio.run(run())
    # 8 -> 12 rows, a second 8 would make 24 > 20; single rows are not padded. Counting 8 rows
    # instead of 12 would give one pass [[8, 8, 1, 1]].
    assert passes == [[8], [8, 1, 1]]


def _classifying_batcher() -> tuple[ModelBatcher, list[int]]:
    """A batcher whose postprocess is `classify`, and the row counts of each of its calls."""
    calls: list[int] = []

    def counted(outputs: np.ndarray) -> tuple[np.ndarray, ...]:
        calls.append(len(outputs))
        return classify(outputs)

    batcher = ModelBatcher(
        Model.from_spec(SPEC, seed=0), max_rows=256, max_wait_s=0.0, postprocess=counted
    )
    return batcher, calls


def test_postprocess_runs_once_per_pass_and_each_request_gets_its_own_rows(
    passes: list[list[int]],
) -> None:
    batcher, calls = _classifying_batcher()
    inputs = [_rows(n, seed) for seed, n in enumerate([1, 3, 1, 8, 2])]

    async def run() -> list[tuple[np.ndarray, ...]]:
        return await asyncio.gather(*(batcher.predict(x) for x in inputs))

    together = asyncio.run(run())
    assert calls == [15], "one postprocess for the one pass"
    for x, batched in zip(inputs, together, strict=True):
        alone = asyncio.run(batcher.predict(x))
        assert [a.shape[0] for a in batched] == [len(x)] * 3
        for got, expected in zip(batched, alone, strict=True):
            assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_postprocess_runs_only_for_a_pass_with_a_request_that_wants_it(
    passes: list[list[int]],
) -> None:
    batcher, calls = _classifying_batcher()
    inputs = [_rows(n, seed) for seed, n in enumerate([1, 3, 2])]

    async def run(wanted: list[bool]) -> list[tuple[np.ndarray, ...]]:
        return await asyncio.gather(
            *(batcher.predict(x, postprocessed=w) for x, w in zip(inputs, wanted, strict=True))
        )

    raw = asyncio.run(run([False, False, False]))
    assert calls == [] and len(passes) == 1, "a pass of raw-output requests only: no postprocess"
    assert [len(answer) for answer in raw] == [1, 1, 1]
    mixed = asyncio.run(run([False, True, False]))
    assert calls == [6] and len(passes) == 2, "one postprocess over the mixed pass"
    assert [len(answer) for answer in mixed] == [3, 3, 3]
    lone = [asyncio.run(batcher.predict(x, postprocessed=False)) for x in inputs]
    assert calls == [6], "an idle model's lone raw-output request runs no postprocess either"
    for x, (alone,), (outputs,), (first, *_) in zip(inputs, lone, raw, mixed, strict=True):
        assert np.array_equal(outputs, alone) and np.array_equal(first, alone)
        assert np.array_equal(alone, predict_many(batcher.model, [x], batcher.tiles)[0])


def test_a_small_request_alone_on_an_idle_model_runs_at_once_in_its_own_handler(
    passes: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    batcher = ModelBatcher(Model.from_spec(SPEC, seed=0), max_rows=256, max_wait_s=30.0)
    inputs = [_rows(n, seed) for seed, n in enumerate([1, 3, OFF_LOOP_ROWS])]
    leaders = _counted_leaders(batcher, monkeypatch)

    async def run() -> list[np.ndarray]:
        return [await _outputs(batcher, x) for x in inputs]

    results = asyncio.run(run())
    # One at a time, each found the model idle and nothing else due on the loop: the two small
    # ones ran without a leader task, the big one through one as always. Same answers either way
    # (requests due together go through a leader and share its pass: the tests above).
    assert passes == [[1], [3], [OFF_LOOP_ROWS]]
    assert leaders == [False], "one leader, for the big request"
    for x, out in zip(inputs, results, strict=True):
        assert np.array_equal(out, predict_many(batcher.model, [x], batcher.tiles)[0])


async def _arriving_one_per_loop_turn(
    batcher: ModelBatcher, inputs: list[np.ndarray]
) -> list[np.ndarray]:
    """Starts one request per turn of the loop, as gRPC hands a busy loop its calls."""
    calls = []
    for x in inputs:
        calls.append(asyncio.ensure_future(_outputs(batcher, x)))
        await asyncio.sleep(0)
    return await asyncio.gather(*calls)


def _keep_the_loop_busy() -> Callable[[], None]:
    """Schedules a callback that is always due again (the loop never runs out of work) and
    returns what stops it."""
    loop = asyncio.get_running_loop()
    busy = [True]

    def again() -> None:
        if busy[0]:
            loop.call_soon(again)

    again()
    return lambda: busy.clear()


def test_a_leader_lets_work_due_on_the_loop_run_first_so_arriving_calls_join_its_pass(
    passes: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hold long enough that only the loop running out of work ends it, whatever the machine.
    monkeypatch.setattr(batching, "BUSY_LOOP_HOLD_S", 60.0)
    batcher = ModelBatcher(Model.from_spec(SPEC, seed=0), max_rows=256, max_wait_s=0.0)
    inputs = [_rows(1, seed) for seed in range(6)]
    results = asyncio.run(_arriving_one_per_loop_turn(batcher, inputs))
    # The first request's leader would have run a turn later with one or two requests; it held
    # its pass while the loop was still busy receiving, so all six share it.
    assert passes == [[1] * 6]
    for x, out in zip(inputs, results, strict=True):
        assert np.array_equal(out, predict_many(batcher.model, [x], batcher.tiles)[0])


def test_the_batcher_looks_its_loop_up_once_per_loop(
    passes: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11 each asyncio.get_running_loop() is a getpid() system call: neither each
    request nor each turn of a holding leader may make one."""
    lookups: list[int] = []
    get_running_loop = asyncio.get_running_loop

    def counted() -> asyncio.AbstractEventLoop:
        lookups.append(1)
        return get_running_loop()

    monkeypatch.setattr(asyncio, "get_running_loop", counted)
    monkeypatch.setattr(batching, "BUSY_LOOP_HOLD_S", 60.0)
    batcher = ModelBatcher(Model.from_spec(SPEC, seed=0), max_rows=256, max_wait_s=0.0)
    inputs = [_rows(1, seed) for seed in range(6)]
    for _ in range(2):  # a new loop: looked up again, once
        asyncio.run(_arriving_one_per_loop_turn(batcher, inputs))
    assert passes == [[1] * 6, [1] * 6]
    assert len(lookups) == 2


def test_leaders_of_two_models_do_not_hold_each_other(
    passes: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each holding leader's wake-up is due while the other looks: that is not work that could
    join a pass, so neither waits for the hold to run out."""
    monkeypatch.setattr(batching, "BUSY_LOOP_HOLD_S", 60.0)
    batchers = [
        ModelBatcher(Model.from_spec(SPEC, seed=seed), max_rows=256, max_wait_s=0.0)
        for seed in (0, 1)
    ]

    async def run() -> list[np.ndarray]:
        together = asyncio.gather(*(_outputs(b, _rows(1, i)) for i, b in enumerate(batchers)))
        return await asyncio.wait_for(together, timeout=10)

    assert [out.shape for out in asyncio.run(run())] == [(1, 4), (1, 4)]
    assert sorted(passes) == [[1], [1]]


def test_a_loop_that_stays_busy_holds_a_pass_only_so_long(
    passes: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    batcher = ModelBatcher(Model.from_spec(SPEC, seed=0), max_rows=256, max_wait_s=0.0)

    async def run(deadline_s: float | None) -> np.ndarray:
        stop_busy = _keep_the_loop_busy()
        try:
            deadline = None if deadline_s is None else time.monotonic() + deadline_s
            return await asyncio.wait_for(_outputs(batcher, _rows(1, 0), deadline), timeout=30)
        finally:
            stop_busy()

    # Never idle, the loop still gets the pass after BUSY_LOOP_HOLD_S...
    assert asyncio.run(run(None)).shape == (1, 4)
    # ...or, with a longer hold, before half the request's deadline has gone.
    monkeypatch.setattr(batching, "BUSY_LOOP_HOLD_S", 60.0)
    assert asyncio.run(run(DEADLINE_S)).shape == (1, 4)
    assert passes == [[1], [1]]


def test_a_request_that_joins_a_held_pass_with_a_closer_deadline_shortens_the_hold(
    passes: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batching, "BUSY_LOOP_HOLD_S", 60.0)
    batcher = ModelBatcher(Model.from_spec(SPEC, seed=0), max_rows=256, max_wait_s=0.0)

    async def run() -> float:
        stop_busy = _keep_the_loop_busy()
        try:
            # The first request has no deadline: alone, its leader would hold for 60 s.
            first = asyncio.ensure_future(_outputs(batcher, _rows(1, 0)))
            for _ in range(3):
                await asyncio.sleep(0)
            started = time.monotonic()
            second = _outputs(batcher, _rows(1, 1), deadline=started + DEADLINE_S)
            await asyncio.wait_for(asyncio.gather(first, second), timeout=30)
            return time.monotonic() - started
        finally:
            stop_busy()

    waited = asyncio.run(run())
    # The pass forms once the newcomer has spent half its deadline, and carries both: not at
    # once (a lower bound a loaded machine cannot break), and well before the deadline (3 s
    # of slack past half of it).
    assert DEADLINE_S / 2 - 0.05 <= waited < DEADLINE_S * 0.9, f"answered after {waited:.2f}s"
    assert passes == [[1, 1]]


def test_on_a_loop_that_does_not_tell_what_is_due_every_request_takes_a_leader_at_once(
    passes: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batching, "_others_due", lambda loop: None)
    monkeypatch.setattr(batching, "BUSY_LOOP_HOLD_S", 60.0)
    batcher = ModelBatcher(Model.from_spec(SPEC, seed=0), max_rows=256, max_wait_s=0.0)
    leaders = _counted_leaders(batcher, monkeypatch)

    async def run() -> np.ndarray:
        stop_busy = _keep_the_loop_busy()
        try:
            return await asyncio.wait_for(_outputs(batcher, _rows(1, 0)), timeout=10)
        finally:
            stop_busy()

    assert asyncio.run(run()).shape == (1, 4), "no hold: the loop's state is unknown"
    assert leaders == [False] and passes == [[1]]


def test_a_lone_request_does_not_wait_for_company(passes: list[list[int]]) -> None:
    # A 30 s batching wait applies only under load; a request on an idle model runs at once.
    batcher = ModelBatcher(Model.from_spec(SPEC, seed=0), max_rows=256, max_wait_s=30.0)

    async def run() -> np.ndarray:
        return await asyncio.wait_for(_outputs(batcher, _rows(1, 0)), timeout=10)

    assert asyncio.run(run()).shape == (1, 4)
    assert passes == [[1]]


def test_deadline_shorter_than_the_batching_wait_is_honoured(
    executor: ThreadPoolExecutor, passes: list[list[int]], release: threading.Event
) -> None:
    """Under load the next leader waits for rows, but never past a queued request's deadline."""
    batcher = ModelBatcher(
        Model.from_spec(SPEC, seed=0), max_rows=4096, max_wait_s=60.0, executor=executor
    )

    async def run() -> tuple[np.ndarray, float]:
        # A big request's pass runs in the thread pool; the small one queues behind it, so the
        # pass after it is formed under load and would wait up to 60 s for more rows.
        big = asyncio.ensure_future(_outputs(batcher, _rows(OFF_LOOP_ROWS * 4, 1)))
        await _pass_started(passes)
        started = time.monotonic()
        queued = asyncio.ensure_future(
            _outputs(batcher, _rows(1, 2), deadline=time.monotonic() + DEADLINE_S)
        )
        await asyncio.sleep(0)  # queued behind the running pass
        release.set()
        small = await asyncio.wait_for(queued, timeout=30)
        waited = time.monotonic() - started
        await big
        return small, waited

    small, waited = asyncio.run(run())
    assert small.shape == (1, 4)
    # It waits about half its deadline for company, not the 60 s batching wait nor its whole
    # deadline (3 s of slack past half of it).
    assert DEADLINE_S / 2 - 0.05 <= waited < DEADLINE_S * 0.9, f"answered after {waited:.2f}s"
    assert passes == [[OFF_LOOP_ROWS * 4], [1]]


def test_a_request_whose_deadline_passed_in_the_queue_is_refused(
    executor: ThreadPoolExecutor, passes: list[list[int]], release: threading.Event
) -> None:
    batcher = ModelBatcher(
        Model.from_spec(SPEC, seed=0), max_rows=4096, max_wait_s=0.0, executor=executor
    )

    async def run() -> None:
        big = asyncio.ensure_future(_outputs(batcher, _rows(OFF_LOOP_ROWS * 4, 1)))
        await _pass_started(passes)
        expired = asyncio.ensure_future(
            _outputs(batcher, _rows(1, 2), deadline=time.monotonic() + 0.05)
        )
        await asyncio.sleep(0.1)  # queued behind the running pass until its deadline passed
        release.set()
        with pytest.raises(DeadlineExceeded, match="deadline passed while it waited"):
            await expired
        ok = await _outputs(batcher, _rows(2, 3), deadline=time.monotonic() + 60)
        assert ok.shape == (2, 4)
        await big

    asyncio.run(run())
    assert passes == [[OFF_LOOP_ROWS * 4], [2]], "the expired request never reached a pass"


def test_a_request_past_its_deadline_is_refused_on_an_idle_model_too(
    passes: list[list[int]],
) -> None:
    batcher = ModelBatcher(Model.from_spec(SPEC, seed=0), max_rows=256, max_wait_s=0.0)
    with pytest.raises(DeadlineExceeded):
        asyncio.run(_outputs(batcher, _rows(1, 2), deadline=time.monotonic() - 1.0))
    assert passes == []


def test_a_cancelled_request_leaves_the_queue_without_harming_the_others(
    executor: ThreadPoolExecutor, passes: list[list[int]], release: threading.Event
) -> None:
    model = Model.from_spec(SPEC, seed=0)
    batcher = ModelBatcher(model, max_rows=4096, max_wait_s=0.0, executor=executor)
    others = [_rows(3, 10), _rows(5, 11)]

    async def run() -> list[np.ndarray]:
        big = asyncio.ensure_future(_outputs(batcher, _rows(OFF_LOOP_ROWS * 4, 1)))
        await _pass_started(passes)
        doomed = asyncio.ensure_future(_outputs(batcher, _rows(7, 9)))
        kept = [asyncio.ensure_future(_outputs(batcher, x)) for x in others]
        await asyncio.sleep(0)  # all three are queued behind the big pass
        doomed.cancel()
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(*kept)
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await big
        return results

    results = asyncio.run(run())
    assert passes == [[OFF_LOOP_ROWS * 4], [3, 5]], "the cancelled request left the batch"
    for x, out in zip(others, results, strict=True):
        assert np.array_equal(out, predict_many(model, [x], batcher.tiles)[0])
    # Its rows left the count a holding leader reads (kept as requests come and go) with it.
    assert batcher._queued_rows == 0


def test_a_pass_left_running_by_a_cancelled_leader_keeps_other_passes_off_the_model(
    executor: ThreadPoolExecutor,
    passes: list[list[int]],
    release: threading.Event,
) -> None:
    # Two passes at once would share the model's scratch buffers.
    batcher = ModelBatcher(
        Model.from_spec(SPEC, seed=0), max_rows=4096, max_wait_s=0.0, executor=executor
    )

    async def run() -> np.ndarray:
        big = asyncio.ensure_future(_outputs(batcher, _rows(OFF_LOOP_ROWS * 4, 1)))
        await _pass_started(passes)
        assert batcher._leader is not None
        batcher._leader.cancel()  # as if the server were stopping
        big.cancel()
        await asyncio.sleep(0.01)
        assert batcher._leader is None
        small = asyncio.ensure_future(_outputs(batcher, _rows(1, 2)))
        await asyncio.sleep(0.05)
        assert not small.done() and passes == [[OFF_LOOP_ROWS * 4]], "it waits for the pool pass"
        release.set()
        return await asyncio.wait_for(small, timeout=10)

    out = asyncio.run(run())
    assert passes == [[OFF_LOOP_ROWS * 4], [1]]
    assert np.array_equal(out, predict_many(batcher.model, [_rows(1, 2)], batcher.tiles)[0])


def test_an_error_in_a_pass_reaches_every_request_of_that_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batcher = ModelBatcher(Model.from_spec(SPEC, seed=0), max_rows=256, max_wait_s=0.0)

    def broken(*_: object) -> object:
        raise RuntimeError("forward pass failed")

    monkeypatch.setattr(batching, "predict_stacked", broken)

    async def run() -> list[object]:
        return await asyncio.gather(
            *(_outputs(batcher, _rows(1, i)) for i in range(3)), return_exceptions=True
        )

    outcomes = asyncio.run(run())
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert batcher.passes == 1
    monkeypatch.undo()
    assert asyncio.run(_outputs(batcher, _rows(1, 0))).shape == (1, 4), "the batcher lives on"


@settings(max_examples=40, deadline=None, database=None)
@given(
    rows=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    classes=st.sampled_from([1, 2, 3, 10, 17, 100]),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_classify_gives_each_row_what_it_gets_alone(
    rows: list[int], classes: int, dtype: str
) -> None:
    # Probabilities and labels are computed once per pass, so a row's must not depend on the
    # rows stacked with it (softmax reduces along each row only).
    rng = np.random.default_rng(len(rows) * classes)
    parts = [(rng.normal(size=(n, classes)) * 20).astype(dtype) for n in rows]
    stacked = classify(np.concatenate(parts))
    start = 0
    for part in parts:
        alone = classify(part)
        for got, expected in zip(stacked, alone, strict=True):
            assert np.array_equal(got[start : start + len(part)], expected)
        start += len(part)
    probabilities = stacked[1]
    assert probabilities.shape == (sum(rows), max(classes, 2))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_classify_labels_are_the_classes_the_accuracy_metric_counts(dtype: str) -> None:
    # Logits that differ by less than the probabilities' rounding: sigmoid(1e-9) and the
    # softmax of [0, 1e-17] are exact ties in either dtype, where argmax of the probabilities
    # took class 0 while accuracy (engine/metrics.py: logit > 0, argmax of the logits) counted
    # class 1, so accuracy_score(y, labels) disagreed with the job's reported accuracy.
    binary = np.array([[1e-17], [-1e-17], [0.0], [3.0]], dtype=dtype)
    multiclass = np.array([[0.0, 1e-17, -1.0], [2.0, -5.0, 2.0], [-1.0, -1.0, -1e-17]], dtype=dtype)
    accuracy = metrics.get("accuracy")
    for outputs, expected in ((binary, [1, 0, 0, 1]), (multiclass, [1, 0, 2])):
        labels = classify(outputs)[2]
        assert labels.tolist() == expected
        assert accuracy(outputs, labels.astype(dtype) if outputs.shape[1] == 1 else labels) == 1.0
        assert accuracy_score(expected, labels) == 1.0
