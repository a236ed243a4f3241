"""The prediction service: resolves a job's checkpoint, runs the forward pass, shapes the answer."""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import NamedTuple

import numpy as np

from trainwire.client.tensors import TensorError, from_tensor
from trainwire.client.wire import answer_row_bytes, answer_too_large
from trainwire.engine import Model
from trainwire.engine.activations import sigmoid, softmax
from trainwire.engine.errors import quoted
from trainwire.v1 import tensor_pb2

from .batching import ModelBatcher, raw_outputs
from .errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from .metrics import MODEL_CACHE_BYTES, PREDICTION_ROWS
from .model_cache import ModelCache, Pin, model_bytes
from .names import FLOAT_DTYPES, check_enum, is_name, parse_name
from .records import Checkpoint, Job, TaskKind
from .store import Store, best_checkpoint, best_ranking
from .training import build_model
from .wrappers import in_pool

MODEL_PREFIX = "model."

log = logging.getLogger("trainwire.server")


class Prediction(NamedTuple):
    checkpoint: Checkpoint
    outputs: np.ndarray
    probabilities: np.ndarray | None
    labels: np.ndarray | None


# A job, the checkpoint a request names, and the model loaded from it.
Served = tuple[Job, Checkpoint, ModelBatcher]
# A stream's hold on its model in the cache.
ServedPin = Pin[ModelBatcher]

# How long a job and its checkpoint list are reused between predictions before they are read again
# (in the background, see `_cached_job`): a new checkpoint ("latest", "best") or a deleted job is
# seen by every server within about this time, two at most.
JOB_TTL_S = 1.0
# How many times a checkpoint deleted while its model was being loaded is resolved again.
RESOLVE_ATTEMPTS = 3
# A refusal answered from a cached job (no checkpoint yet, none at that epoch) is checked with
# the database first, unless the job was read this recently: a client polling a job that has
# no checkpoint yet costs at most one read per job this often.
REFUSAL_RECHECK_S = 0.1
# An epoch or checkpoint number in a selector: ASCII digits that fit an int64 (str.isdigit would
# also take "²", which int() refuses).
_NUMBER = re.compile(r"[0-9]{1,18}")


class PredictionService:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        cache_bytes: int,
        batch_rows: int = 256,
        batch_wait_s: float = 0.0,
        job_ttl_s: float = JOB_TTL_S,
        max_answer_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.executor = executor  # for database reads and model loads
        self.cache: ModelCache[ModelBatcher] = ModelCache(cache_bytes, _batcher_bytes)
        MODEL_CACHE_BYTES.set_function(lambda: self.cache.bytes)  # read at each scrape
        self.batch_rows = batch_rows
        self.batch_wait_s = batch_wait_s
        self.job_ttl_s = job_ttl_s
        self.clock = clock  # dates the job cache's entries
        # The largest answer the server may send (its message limit, less the framing).
        self.max_answer_bytes = max_answer_bytes
        self._jobs: dict[str, tuple[float, Job, list[Checkpoint]]] = {}
        self._refreshing: set[str] = set()  # job ids being re-read in the thread pool
        self._jobs_lock = threading.Lock()
        self._warned: set[tuple[str, int]] = set()  # checkpoints too large for the cache

    def _cached_job(self, job_id: str) -> tuple[Job, list[Checkpoint]] | None:
        """The job and its checkpoints if read less than `job_ttl_s` ago, else None (see
        `_cached_entry`)."""
        entry = self._cached_entry(job_id)
        return None if entry is None else (entry[1], entry[2])

    def _cached_entry(self, job_id: str) -> tuple[float, Job, list[Checkpoint]] | None:
        """When the job was read, it and its checkpoints, if read less than `job_ttl_s` ago,
        else None.

        An entry older than that is still answered while one read in the thread pool refreshes
        it, for another `job_ttl_s` at most (past that, the database being slow or down, callers
        read it themselves): under load, requests never all go to the database at once when an
        entry expires, nor wait for it.
        """
        refresh = False
        with self._jobs_lock:
            cached = self._jobs.get(job_id)
            if cached is None:
                return None
            age = self.clock() - cached[0]
            if age > 2 * self.job_ttl_s:
                return None
            if age > self.job_ttl_s and job_id not in self._refreshing:
                self._refreshing.add(job_id)
                refresh = True
        if refresh:
            try:
                self.executor.submit(self._refresh_job, job_id, cached)
            except RuntimeError:  # the pool is shutting down with the server: no refresh
                with self._jobs_lock:
                    self._refreshing.discard(job_id)
        return cached

    def _refresh_job(self, job_id: str, stale: tuple[float, Job, list[Checkpoint]]) -> None:
        try:
            self._read_job(job_id, replacing=stale)
        except NotFound:
            with self._jobs_lock:
                if self._jobs.get(job_id) is stale:
                    del self._jobs[job_id]
        except Exception as error:  # the stale entry lapses; callers then read it themselves
            log.warning("cannot refresh jobs/%s for predictions: %s", job_id, error)
        finally:
            with self._jobs_lock:
                self._refreshing.discard(job_id)

    def _read_job(
        self, job_id: str, replacing: tuple[float, Job, list[Checkpoint]] | None = None
    ) -> tuple[Job, list[Checkpoint]]:
        """Reads the job and caches it; a refresh (`replacing` the entry it found stale) caches
        nothing if the entry changed meanwhile — above all if `forget` dropped a deleted job."""
        try:
            found = (self.store.get_job(job_id), self.store.list_checkpoints(job_id))
        except NotFound:
            # Deleted, perhaps through another server, or while one of its models was loading
            # here after `forget`: its models go too.
            self.cache.invalidate(job_id)
            raise
        with self._jobs_lock:
            if replacing is None or self._jobs.get(job_id) is replacing:
                if len(self._jobs) > 10_000:
                    self._jobs.clear()
                self._jobs[job_id] = (self.clock(), *found)
        # Models of checkpoints retention has deleted since (a job still training, answering
        # "latest") are never answered again.
        self.cache.forget_deleted(job_id, {checkpoint.id for checkpoint in found[1]})
        return found

    def _job(self, job_id: str) -> tuple[Job, list[Checkpoint]]:
        """The job and its checkpoints, from the database about once per `job_ttl_s`."""
        found = self._cached_job(job_id)
        return found if found is not None else self._read_job(job_id)

    @staticmethod
    def _check_project(job: Job, project: str) -> None:
        if job.project != project:
            raise NotFound(f"jobs/{job.id} does not exist")

    def served(self, job_name: str, selector: str, project: str) -> Served:
        """The job, the checkpoint `selector` names, and its loaded model (may read the database
        and load the model: call it off the event loop).

        A checkpoint that retention deleted between the read of the list and the load of its
        bytes (a job still training, checkpointing often) is resolved again from a fresh list.
        """
        job_id = parse_name(job_name, "jobs", "job")
        cached = self._cached_entry(job_id)
        if cached is None:
            (job, checkpoints), fresh = self._read_job(job_id), True
        else:
            read_at, job, checkpoints = cached
            fresh = self.clock() - read_at <= REFUSAL_RECHECK_S
        attempts = 1
        while True:
            self._check_project(job, project)
            try:
                checkpoint = self.resolve(job, selector, checkpoints)
            except (NotFound, FailedPrecondition):
                if fresh:
                    raise
                # The entry may be up to 2 TTLs old: a job that has ended or checkpointed
                # since would be told to wait, or that its checkpoint does not exist. The
                # database has the last word on a refusal.
                (job, checkpoints), fresh = self._read_job(job_id), True
                continue
            try:
                return job, checkpoint, self.batcher(job, checkpoint)
            except NotFound:
                if attempts == RESOLVE_ATTEMPTS:
                    raise
                attempts += 1
                (job, checkpoints), fresh = self._read_job(job_id), True

    def _served_from_memory(self, job_name: str, selector: str, project: str) -> Served | None:
        """`served` when the job and the model are cached, else None; never blocks."""
        found = self._cached_job(parse_name(job_name, "jobs", "job"))
        if found is None:
            return None
        job, checkpoints = found
        self._check_project(job, project)
        try:
            checkpoint = self.resolve(job, selector, checkpoints)
        except (NotFound, FailedPrecondition):
            return None  # perhaps out of date: `served` reads the job before refusing
        batcher = self.cache.peek((job.id, checkpoint.id))
        return None if batcher is None else (job, checkpoint, batcher)

    async def predict(
        self,
        job_name: str,
        selector: str,
        inputs: tensor_pb2.Tensor,
        project: str,
        deadline: float | None = None,
        served: Served | None = None,
        outputs_only: bool = False,
    ) -> Prediction:
        """Outputs for `inputs`, batched with concurrent requests for the same checkpoint; a
        classifier's probabilities and labels too, unless `outputs_only`.

        Runs on the event loop; a job or model not in memory is fetched in the thread pool.
        `deadline` is a `time.monotonic()` value. `served` (from `resolve_served`) skips the
        checkpoint's resolution: its model answers even if its checkpoint has been deleted since,
        as long as its job exists.
        """
        # What the tensor alone tells is checked first: a malformed one never loads a model.
        decoded = self.decode_inputs(inputs)
        if served is not None:
            found: Served | None = served
            if self._cached_job(served[0].id) is None:  # not read lately, or forgotten: deleted?
                await in_pool(self.executor, self._job, served[0].id)
        else:
            found = self._served_from_memory(job_name, selector, project)
        if found is None:
            found = await self.resolve_served(job_name, selector, project)
        _, checkpoint, batcher = found
        features = self._check_features(decoded, batcher.model)
        if self.max_answer_bytes is not None:
            self._check_answer_fits(len(features), batcher, outputs_only)
        PREDICTION_ROWS.observe(len(features))
        results = await batcher.predict(features, deadline, postprocessed=not outputs_only)
        _check_outputs(results[0], batcher.model)
        if len(results) == 1 or outputs_only:
            return Prediction(checkpoint, results[0], None, None)
        outputs, probabilities, labels = results
        return Prediction(checkpoint, outputs, probabilities, labels)

    async def resolve_served(self, job_name: str, selector: str, project: str) -> Served:
        """`served` from the event loop: from memory, else in the thread pool."""
        found = self._served_from_memory(job_name, selector, project)
        if found is not None:
            return found
        return await in_pool(self.executor, self.served, job_name, selector, project)

    async def pin_served(
        self, job_name: str, selector: str, project: str
    ) -> tuple[Served, ServedPin]:
        """`resolve_served`, its model pinned in the cache until `unpin`: what a stream answers
        every message with stays within the cache's bound however long the stream is open."""
        job, checkpoint, batcher = await self.resolve_served(job_name, selector, project)
        pin = self.cache.pin((job.id, checkpoint.id), batcher)
        if pin is None and _batcher_bytes(batcher) > self.cache.max_bytes:
            raise ResourceExhausted(
                f"the model of jobs/{job.id}/checkpoints/{checkpoint.id} needs "
                f"{_batcher_bytes(batcher)} bytes, more than the server's model cache holds "
                f"(TRAINWIRE_MODEL_CACHE_BYTES={self.cache.max_bytes}); raise "
                "TRAINWIRE_MODEL_CACHE_BYTES to stream predictions from it"
            )
        if pin is None:
            # The caller may try again later: room comes back as streams end (both SDKs retry
            # it within their retry policy, as a busy server's refusal).
            raise ResourceExhausted(
                f"the server's model cache (TRAINWIRE_MODEL_CACHE_BYTES="
                f"{self.cache.max_bytes}) is held by open prediction streams and has no room "
                f"for the model of jobs/{job.id}/checkpoints/{checkpoint.id}; retry when some "
                "streams end, or raise TRAINWIRE_MODEL_CACHE_BYTES"
            )
        return (job, checkpoint, pin.value), pin

    def unpin(self, pin: ServedPin) -> None:
        """Ends a stream's hold taken by `pin_served`."""
        self.cache.unpin(pin)

    def _check_answer_fits(self, rows: int, batcher: ModelBatcher, outputs_only: bool) -> None:
        """Refuses, before the forward pass, a request whose answer could not be sent."""
        assert self.max_answer_bytes is not None
        model = batcher.model
        classes = batcher.postprocess is classify and not outputs_only
        row_bytes = answer_row_bytes(model.output_dim, model.dtype.itemsize, classes)
        if rows * row_bytes > self.max_answer_bytes:
            raise ResourceExhausted(
                answer_too_large(self.max_answer_bytes, self.max_answer_bytes // row_bytes, rows)
            )

    def forget(self, job_id: str) -> None:
        """Drops a deleted job from the caches."""
        self.cache.invalidate(job_id)
        with self._jobs_lock:
            self._jobs.pop(job_id, None)

    def resolve(self, job: Job, selector: str, checkpoints: list[Checkpoint]) -> Checkpoint:
        """The checkpoint named by `selector`: "", "latest", "best", "epoch/N" or a full name."""
        if not checkpoints and job.state.is_finished:
            # Waiting would not help: a job that ended writes no more checkpoints.
            raise FailedPrecondition(
                f"jobs/{job.id} ended {job.state.value} without a checkpoint, so it has no "
                "trained model to predict with; create a new job to train one"
            )
        if not checkpoints:
            raise FailedPrecondition(
                f"jobs/{job.id} has no checkpoint yet (it is {job.state.value}); predictions need "
                "a trained checkpoint, so wait for the job to finish an epoch checkpoint or succeed"
            )
        if selector in ("", "latest"):
            return checkpoints[-1]
        if selector == "best":
            best = best_checkpoint(checkpoints, best_ranking(job.training))
            if best is None:
                raise FailedPrecondition(
                    f"jobs/{job.id} has no checkpoint taken at an epoch's end (only ones "
                    "written when it stopped partway through an epoch), so none is best; ask "
                    "for 'latest'"
                )
            return best
        if selector.startswith("epoch/"):
            epoch_text = selector.removeprefix("epoch/")
            if not _NUMBER.fullmatch(epoch_text):
                raise InvalidArgument.field(
                    "checkpoint", f"must be 'epoch/<number>'. Received: {quoted(selector)}"
                )
            # A partial checkpoint's weights are past its epoch's end: it answers for none.
            whole = [c for c in checkpoints if not c.is_partial]
            matches = [c for c in whole if c.epoch == int(epoch_text)]
            if not matches:
                epochs = sorted({c.epoch for c in whole})
                raise NotFound(
                    f"jobs/{job.id} has no checkpoint at epoch {epoch_text}; it has {epochs}"
                )
            return matches[-1]
        prefix = f"jobs/{job.id}/checkpoints/"
        if selector.startswith(prefix) and _NUMBER.fullmatch(selector[len(prefix) :]):
            wanted = int(selector[len(prefix) :])
            for checkpoint in checkpoints:
                if checkpoint.id == wanted:
                    return checkpoint
            raise NotFound(f"{selector} does not exist")
        owner, _, number = selector.partition("/checkpoints/")
        if _NUMBER.fullmatch(number) and is_name(owner, "jobs"):
            raise InvalidArgument.field(
                "checkpoint",
                f"names a checkpoint of {owner}, but the request is for jobs/{job.id}: set "
                f"job to '{owner}' to use it, or name a checkpoint of jobs/{job.id}. "
                f"Received: {quoted(selector)}",
            )
        raise InvalidArgument.field(
            "checkpoint",
            f"must be '', 'latest', 'best', 'epoch/<n>' or '{prefix}<id>'. "
            f"Received: {quoted(selector)}",
        )

    def batcher(self, job: Job, checkpoint: Checkpoint) -> ModelBatcher:
        """The checkpoint's model and its batch queue, loaded once and cached."""
        key = (job.id, checkpoint.id)

        def load() -> ModelBatcher:
            if "task" not in job.target:
                # Only a job from before migration 0003 whose dataset was deleted before 0008
                # could fill its target in.
                raise FailedPrecondition(
                    f"jobs/{job.id} predates the task kept with each job, and its dataset has "
                    "been deleted since: whether its outputs are classes is unknown, so it "
                    "cannot serve predictions; train a new job"
                )
            # The model's arrays alone: a trainer's checkpoint also holds the optimizer's state
            # (Adam's moments, twice the weights), which serving never reads.
            state, _ = self.store.checkpoint_state(
                checkpoint.id, keep=lambda name: name.startswith(MODEL_PREFIX)
            )
            model = build_model(job.model_spec, job.training)
            model.load_state_dict({k.removeprefix(MODEL_PREFIX): v for k, v in state.items()})
            classifier = TaskKind(job.target["task"]).is_classification
            if _entry_bytes(model) > self.cache.max_bytes and self._first_warning(key):
                log.warning(
                    "the model of jobs/%s/checkpoints/%d (%d bytes) is larger than "
                    "TRAINWIRE_MODEL_CACHE_BYTES=%d, so it is not kept and each request for it "
                    "loads it again (said once per checkpoint); raise "
                    "TRAINWIRE_MODEL_CACHE_BYTES",
                    job.id, checkpoint.id, _entry_bytes(model), self.cache.max_bytes,
                )  # fmt: skip
            return ModelBatcher(
                model,
                self.batch_rows,
                self.batch_wait_s,
                self.executor,
                postprocess=classify if classifier else raw_outputs,
            )

        return self.cache.get(key, load)

    def _first_warning(self, key: tuple[str, int]) -> bool:
        """True the first time `key` is warned about (a model too large for the cache is loaded
        for every request, and a warning each time would flood the log)."""
        with self._jobs_lock:
            if key in self._warned:
                return False
            if len(self._warned) > 10_000:
                self._warned.clear()  # bounded, as the job cache is
            self._warned.add(key)
            return True

    @staticmethod
    def decode_inputs(inputs: tensor_pb2.Tensor) -> np.ndarray:
        """The tensor's array, if its dtype, bytes and shape make rows of features."""
        check_enum("inputs.dtype", tensor_pb2.DataType, inputs.dtype, FLOAT_DTYPES)
        try:
            features = from_tensor(inputs)
        except TensorError as error:
            raise InvalidArgument.field("inputs", str(error)) from None
        if features.ndim != 2:
            raise InvalidArgument.field(
                "inputs.shape", f"must be (rows, features). Received: {list(features.shape)}"
            )
        if features.shape[0] == 0:
            raise InvalidArgument.field("inputs.shape", "has no rows")
        return features

    @staticmethod
    def _check_features(features: np.ndarray, model: Model) -> np.ndarray:
        """Decoded rows as the model's input: its width, its dtype, finite."""
        if features.shape[1] != model.input_dim:
            raise InvalidArgument.field(
                "inputs.shape",
                f"must be (rows, {model.input_dim}) for this model. "
                f"Received: {list(features.shape)}",
            )
        # Decoded tensors are C-contiguous; only a tensor of the other float dtype is converted,
        # and checked after, as a float64 value can be beyond float32's range.
        converted = features if features.dtype == model.dtype else features.astype(model.dtype)
        row = _first_non_finite_row(converted)
        if row is not None:
            if np.isfinite(features[row]).all():
                raise InvalidArgument.field(
                    "inputs", f"row {row} has a value beyond the range of this {model.dtype} model"
                )
            raise InvalidArgument.field("inputs", f"must be finite; row {row} has NaN or Inf")
        return converted


def _first_non_finite_row(values: np.ndarray) -> int | None:
    """The index of the first row of `values` (rows of numbers) holding a NaN or an infinity,
    or None when every value is finite."""
    # A NaN or an infinity anywhere makes the sum of squares NaN or infinite; a finite one
    # proves every value finite in one BLAS dot product, a third of the instructions of a
    # sum's reduction. One that overflows (float32 values from about 1e19, fewer if many are
    # large) is checked value by value.
    if math.isfinite(np.vdot(values, values)) or np.isfinite(values).all():
        return None
    return int(np.argwhere(~np.isfinite(values))[0][0])


def _check_outputs(outputs: np.ndarray, model: Model) -> None:
    """A request's outputs must be finite: finite inputs far beyond the values the model was
    trained on overflow it (float32 features of 3e38 answered outputs of inf and -inf,
    probabilities of NaN and label 0). Checked per request once its pass is done, so the
    requests batched with it keep their answers; a request's outputs are a few numbers a row."""
    row = _first_non_finite_row(outputs)
    if row is not None:
        raise InvalidArgument.field(
            "inputs",
            f"row {row} overflows this {model.dtype} model: its outputs are not finite, as its "
            "values are far outside what the model was trained on; send values on the scale of "
            "its training data (scaled as they were)",
        )


def classify(outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A classifier's raw outputs, class probabilities and labels, row by row (the batcher runs
    it once per pass: each row's result must not depend on the other rows). Their size per row
    is `answer_row_bytes` (client/wire.py), by which the SDK sizes its stream messages: it
    changes with them."""
    # Labels come from the logits, as the accuracy metric scores them (engine/metrics.py): the
    # rounded probabilities tie where the logits do not (sigmoid(z) is exactly 0.5 in float32
    # for 0 < z < 6e-8, and softmax equalises logits closer than its rounding), and argmax then
    # took the first class, a label the job's reported accuracy did not count.
    if outputs.shape[1] == 1:
        # One logit z for binary classification: P(class 1) = sigmoid(z); class 1 when z > 0.
        positive = sigmoid(outputs[:, 0])
        probabilities = np.stack([1.0 - positive, positive], axis=1)
        labels = (outputs[:, 0] > 0).astype(np.int64)
    else:
        probabilities = softmax(outputs)
        labels = outputs.argmax(axis=1).astype(np.int64, copy=False)
    return outputs, probabilities, labels


# What a cached model holds beside its weights (its layers' and its batcher's objects): about 8 KiB
# and 2 KiB a layer for a dense model (tracemalloc). Counted, so the bound is not met by millions
# of tiny models (1 GiB held two million of 524 bytes of weights, each 12 KiB in memory).
ENTRY_BYTES = 8 << 10
LAYER_ENTRY_BYTES = 2 << 10


def _entry_bytes(model: Model) -> int:
    """What the model cache counts a model as."""
    return model_bytes(model) + ENTRY_BYTES + LAYER_ENTRY_BYTES * len(model.layers)


def _batcher_bytes(batcher: ModelBatcher) -> int:
    return _entry_bytes(batcher.model)
