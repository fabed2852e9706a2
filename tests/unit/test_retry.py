"""The poll helper and the retry policies (rayfleet.retry), on a fake clock: no real waiting."""

from __future__ import annotations

import pytest

from rayfleet.errors import WorkFailedError
from rayfleet.retry import (
    AGENT_START,
    CONFLICT,
    RECONNECT,
    TimedOutError,
    doubling,
    jittered,
    poll,
    retrying,
)

pytestmark = pytest.mark.unit


class FakeClock:
    """A monotonic clock that only moves when something sleeps on it."""

    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def answers(*values):
    """A check that returns `values` one per call, and counts its calls."""
    queue = list(values)

    def check():
        check.calls += 1
        return queue.pop(0)

    check.calls = 0
    return check


# ---------------------------------------------------------------------------------- poll


def test_poll_returns_the_first_answer_that_is_not_none():
    clock = FakeClock()
    check = answers(None, None, "ready")
    value = poll(check, timeout=10, interval=0.5, what="x", sleep=clock.sleep, clock=clock)
    assert value == "ready" and check.calls == 3 and clock.slept == [0.5, 0.5]


def test_falsy_answers_other_than_none_are_answers():
    clock = FakeClock()
    assert (
        poll(answers(None, 0), timeout=5, interval=1, what="x", sleep=clock.sleep, clock=clock) == 0
    )


def test_poll_times_out_naming_what_it_waited_for():
    clock = FakeClock()
    check = answers(*[None] * 100)
    with pytest.raises(TimedOutError, match=r"timed out after 2\.5 s waiting for the Ray head"):
        poll(check, timeout=2.5, interval=1, what="the Ray head", sleep=clock.sleep, clock=clock)
    # at once, after 1 s, 2 s, and a last look at the deadline (the last wait is shortened)
    assert clock.slept == [1, 1, 0.5] and check.calls == 4
    assert issubclass(TimedOutError, WorkFailedError)


def test_poll_raises_what_on_timeout_builds():
    clock = FakeClock()

    def locked() -> Exception:
        return LookupError("held by someone else")

    with pytest.raises(LookupError, match="held by someone else"):
        poll(
            answers(None, None),
            timeout=1,
            interval=1,
            what="x",
            on_timeout=locked,
            sleep=clock.sleep,
            clock=clock,
        )


def test_zero_timeout_checks_exactly_once():
    clock = FakeClock()
    check = answers(None)
    with pytest.raises(TimedOutError):
        poll(check, timeout=0, interval=1, what="x", sleep=clock.sleep, clock=clock)
    assert check.calls == 1 and clock.slept == []


def test_no_timeout_polls_until_ready():
    clock = FakeClock()
    check = answers(*[None] * 500, "done")
    assert poll(check, timeout=None, interval=2, what="x", sleep=clock.sleep, clock=clock) == "done"
    assert check.calls == 501 and set(clock.slept) == {2}


def test_an_exception_from_the_check_ends_the_poll_as_it_is():
    clock = FakeClock()
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("ray start exited")
        return None

    with pytest.raises(RuntimeError, match="ray start exited"):
        poll(check, timeout=60, interval=1, what="x", sleep=clock.sleep, clock=clock)
    assert len(calls) == 2


def test_poll_waits_for_real_with_the_default_clock():
    check = answers(None, None, True)
    assert poll(check, timeout=5, interval=0.001, what="x") is True and check.calls == 3


# ------------------------------------------------------------------------ backoff shapes


def _waits(wait, failures: int) -> list[float]:
    """The waits a retry with `wait` sleeps between `failures` failed attempts."""
    slept: list[float] = []

    def fail():
        raise OSError("down")

    with pytest.raises(OSError):
        retrying(on=OSError, wait=wait, attempts=failures, sleep=slept.append)(fail)
    return slept


def test_reconnect_backoff_doubles_from_one_second_to_ten():
    assert _waits(RECONNECT, 7) == [1, 2, 4, 8, 10, 10]


def test_conflict_backoff_doubles_from_50_ms_to_one_second():
    assert _waits(CONFLICT, 8) == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_agent_start_waits_two_seconds_each_time():
    assert _waits(AGENT_START, 4) == [2, 2, 2]


def test_jitter_scales_each_wait_into_its_upper_half():
    waits = _waits(jittered(doubling(0.1, 2.0)), 6)
    for wait, base in zip(waits, [0.1, 0.2, 0.4, 0.8, 1.6], strict=True):
        assert base * 0.5 <= wait <= base


# ------------------------------------------------------------------------------- retries


def test_retrying_retries_only_what_it_is_told_and_reraises_the_last_failure():
    slept: list[float] = []
    errors = iter([KeyError("a"), KeyError("b"), KeyError("c")])

    def fail():
        raise next(errors)

    with pytest.raises(KeyError, match="c"):
        retrying(on=KeyError, wait=RECONNECT, attempts=3, sleep=slept.append)(fail)
    assert slept == [1, 2]

    calls = []

    def bug():
        calls.append(1)
        raise ValueError("a bug is not retried")

    with pytest.raises(ValueError, match="a bug"):
        retrying(on=KeyError, wait=RECONNECT, attempts=3, sleep=slept.append)(bug)
    assert calls == [1]


def test_retrying_takes_a_predicate_and_returns_the_result():
    outcomes = iter([RuntimeError("No available agent"), RuntimeError("No available agent"), 7])
    notes = []

    def submit():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    policy = retrying(
        on=lambda exc: "No available agent" in str(exc),
        wait=AGENT_START,
        within_s=60,
        before_sleep=lambda state: notes.append(state.attempt_number),
        sleep=lambda s: None,
    )
    assert policy(submit) == 7 and notes == [1, 2]

    with pytest.raises(RuntimeError, match="status code 500"):
        policy(lambda: (_ for _ in ()).throw(RuntimeError("status code 500")))


def test_retrying_within_zero_seconds_tries_once():
    calls = []

    def fail():
        calls.append(1)
        raise OSError("store down")

    with pytest.raises(OSError, match="store down"):
        retrying(on=OSError, wait=RECONNECT, within_s=0, sleep=lambda s: None)(fail)
    assert calls == [1]
