"""The background writer behind a sweep's trial records: ordered, drained on close, and a
failing change costs a warning, not the changes queued after it."""

import logging
import threading

import pytest

from rayfleet.storage.background import BackgroundWriter

pytestmark = pytest.mark.unit


def test_changes_apply_in_order_and_close_drains_them():
    gate = threading.Event()
    seen: list[int] = []
    writer = BackgroundWriter("test-writer")
    writer.submit("wait", gate.wait)  # the thread is busy while the rest queue up
    for i in range(50):
        writer.submit(f"change {i}", lambda i=i: seen.append(i))
    assert seen == []  # queued, not applied on the caller's thread
    gate.set()
    assert writer.close(timeout_s=10)
    assert seen == list(range(50))


def test_a_failing_change_is_logged_and_the_next_ones_still_apply(caplog):
    seen: list[str] = []
    writer = BackgroundWriter("test-writer")

    def fail():
        raise OSError("bucket unreachable")

    with caplog.at_level(logging.WARNING, logger="rayfleet.storage.background"):
        writer.submit("trial t1: could not update its run record", fail)
        writer.submit("next", lambda: seen.append("next"))
        assert writer.close(timeout_s=10)
    assert seen == ["next"]
    assert "trial t1: could not update its run record: bucket unreachable" in caplog.text


def test_close_gives_up_after_its_timeout_and_refuses_new_changes(caplog):
    gate = threading.Event()
    writer = BackgroundWriter("test-writer")
    writer.submit("stuck", gate.wait)
    with caplog.at_level(logging.WARNING, logger="rayfleet.storage.background"):
        assert writer.close(timeout_s=0.2) is False
    assert "still pending" in caplog.text
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit("late", lambda: None)
    gate.set()
