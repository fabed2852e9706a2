"""Which failed fit() calls the launcher relaunches (and which it must not)."""

import pytest
from ray.exceptions import ActorDiedError
from ray.train import ControllerError, WorkerGroupError

from rayfleet.train.launcher import retry_reason

pytestmark = pytest.mark.unit


def test_controller_errors_are_retried():
    exc = ControllerError(OSError("When writing checkpoint_manager_snapshot.json: timeout"))
    assert retry_reason(exc).startswith("controller error: When writing")


def test_worker_io_errors_are_retried():
    io = OSError("AWS Error NETWORK_CONNECTION during PutObject")
    exc = WorkerGroupError("upload failed", {0: io, 1: io})
    assert retry_reason(exc).startswith("storage error on workers")


def test_wrapped_io_error_is_found_through_the_cause_chain():
    inner = ConnectionError("connection refused")
    outer = RuntimeError("report failed")
    outer.__cause__ = inner
    assert retry_reason(WorkerGroupError("x", {0: outer})) is not None


@pytest.mark.parametrize(
    "failures",
    [
        {0: ValueError("shapes (32, 10) and (64,) not aligned")},  # a bug: retrying repeats it
        {0: OSError("disk"), 1: KeyError("loss")},  # one real bug among I/O errors
        {1: ActorDiedError()},  # worker deaths are FailureConfig's job, already exhausted
    ],
)
def test_user_bugs_and_exhausted_worker_restarts_are_not_retried(failures):
    assert retry_reason(WorkerGroupError("x", failures)) is None
