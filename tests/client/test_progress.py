"""`Job.wait(progress=True)`'s tqdm bar, driven by a stub client's statuses, without a server."""

from __future__ import annotations

import functools
import io
import re
from types import SimpleNamespace

import pytest
import tqdm

from trainwire.client import Job, JobStatus
from trainwire.v1 import jobs_pb2


def status(state: jobs_pb2.JobState.ValueType, epoch: int) -> JobStatus:
    return JobStatus.from_proto(
        jobs_pb2.Job(
            name="jobs/x", state=state, progress=jobs_pb2.Progress(epoch=epoch, total_epochs=5)
        )
    )


def test_each_frame_of_the_bar_shows_the_state_of_the_status_its_epochs_came_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A running job's last epoch was drawn "5/5 ... state=queued" (the count moved before the
    state) until the postfix caught up."""
    out = io.StringIO()
    # mininterval=0: every update draws, so a frame between the count and the state shows.
    monkeypatch.setattr(tqdm, "tqdm", functools.partial(tqdm.tqdm, file=out, mininterval=0))
    polls = iter(
        [
            status(jobs_pb2.JOB_STATE_QUEUED, 0),
            status(jobs_pb2.JOB_STATE_RUNNING, 5),
            status(jobs_pb2.JOB_STATE_SUCCEEDED, 5),
        ]
    )
    client = SimpleNamespace(
        job_status=lambda name: next(polls), watch_reconnect_s=300.0, _pause=lambda seconds: None
    )
    job = Job(client, status(jobs_pb2.JOB_STATE_QUEUED, 0))  # type: ignore[arg-type]

    assert job.wait(poll_interval=0, progress=True).state == "SUCCEEDED"

    frames = {re.search(r"(\d+)/5 .*state=(\w+)", f) for f in out.getvalue().split("\r")}
    shown = {frame.groups() for frame in frames if frame is not None}
    assert shown == {("0", "queued"), ("5", "running"), ("5", "succeeded")}


def test_the_bar_shows_the_server_s_names_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's name and its metrics' names come from the server, drawn on a terminal."""
    out = io.StringIO()
    monkeypatch.setattr(tqdm, "tqdm", functools.partial(tqdm.tqdm, file=out, mininterval=0))
    hostile = "jobs/x\x1b]0;pwned\x07\x1b[2J"
    final = JobStatus.from_proto(
        jobs_pb2.Job(
            name=hostile, state=jobs_pb2.JOB_STATE_SUCCEEDED, metrics={"loss\x1b[8m": 0.5},
            progress=jobs_pb2.Progress(epoch=5, total_epochs=5),
        )
    )  # fmt: skip
    client = SimpleNamespace(
        job_status=lambda name: final, watch_reconnect_s=300.0, _pause=lambda seconds: None
    )
    job = Job(client, status(jobs_pb2.JOB_STATE_QUEUED, 0))  # type: ignore[arg-type]
    job.name = hostile
    job.wait(poll_interval=0, progress=True)
    drawn = out.getvalue()
    assert "jobs/x\\x1b]0;pwned\\x07\\x1b[2J" in drawn and "loss\\x1b[8m=0.5" in drawn
    # tqdm draws each frame after a CR, and may clear the line with its own ESC[A: none other.
    assert "\x1b]" not in drawn and "\x1b[2J" not in drawn and "\x1b[8m" not in drawn
