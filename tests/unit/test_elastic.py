"""Elastic scaling in the spec (`scaling.minWorkers`) and exact data sharding when the world
size changes between worker-group starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rayfleet.data.shards import shard_range
from rayfleet.errors import SpecError
from rayfleet.specs import json_schema, load_spec, parse_spec
from rayfleet.tune.space import prepare

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "jobs" / "digits" / "train.yaml"
SWEEP = REPO / "jobs" / "digits" / "sweep.yaml"


def _scaling(**changes):
    doc = yaml.safe_load(DIGITS.read_text())
    doc["spec"]["scaling"].update(changes)
    return parse_spec(doc).spec.scaling


def test_min_workers_makes_the_run_elastic_between_min_and_num_workers():
    scaling = _scaling(numWorkers=4, minWorkers=2)
    assert scaling.elastic and (scaling.fewest_workers, scaling.num_workers) == (2, 4)
    assert scaling.resize_check_seconds == 60  # Ray Train's default monitor interval


@pytest.mark.parametrize("changes", [{}, {"minWorkers": 2}], ids=["unset", "equal"])
def test_without_a_range_the_worker_count_is_fixed(changes):
    scaling = _scaling(numWorkers=2, **changes)
    assert not scaling.elastic and scaling.fewest_workers == 2


def test_min_workers_above_num_workers_is_refused_with_how_to_fix():
    with pytest.raises(SpecError, match=r"spec\.scaling: .*minWorkers 3 is more than numWorkers 2"):
        _scaling(numWorkers=2, minWorkers=3)


@pytest.mark.parametrize("bad", [0, "two"])
def test_min_workers_must_be_a_positive_integer(bad):
    with pytest.raises(SpecError, match=r"spec\.scaling\.minWorkers"):
        _scaling(minWorkers=bad)


def test_schema_lists_the_elastic_fields():
    props = json_schema("TrainJob")["$defs"]["ScalingSpec"]["properties"]
    assert {"minWorkers", "resizeCheckSeconds"} <= set(props)


def test_elastic_fields_do_not_change_the_training_identity():
    """A resized run resumes its own checkpoints: the worker range is not part of the
    spec hash that resume checks."""
    plain = load_spec(DIGITS)
    elastic = load_spec(DIGITS, ["spec.scaling.minWorkers=1", "spec.scaling.numWorkers=4"])
    assert plain.spec_hash() == elastic.spec_hash()


def test_sweep_overrides_accept_min_workers():
    doc = yaml.safe_load(SWEEP.read_text())
    doc["spec"]["trainJob"]["overrides"].update({"scaling.numWorkers": 4, "scaling.minWorkers": 2})
    base = prepare(parse_spec(doc), source_dir=SWEEP.parent).base
    assert base.spec.scaling.elastic and base.spec.scaling.fewest_workers == 2


@pytest.mark.parametrize("total", [1797, 1000, 7])
def test_each_world_size_shards_disjoint_equal_ranges(total):
    """Shards are computed from the world size of the worker group that reads them: for
    every size an elastic run may take, ranks get disjoint, equal, contiguous ranges that
    drop fewer rows than there are ranks."""
    for world in range(1, 5):
        ranges = [shard_range(total, rank, world, equal=True) for rank in range(world)]
        sizes = {stop - start for start, stop in ranges}
        assert len(sizes) == 1
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        assert ranges[0][0] == 0 and total - ranges[-1][1] < world
        evals = [shard_range(total, rank, world, equal=False) for rank in range(world)]
        assert evals[0][0] == 0 and evals[-1][1] == total  # evaluation keeps every row


def test_batch_is_per_worker_and_the_rate_is_not_rescaled_across_resizes():
    """The convention the README states: each worker takes `batchSize` rows a step, so the
    global batch is batchSize x the current world size and an epoch of a smaller group takes
    more steps; the learning rate every worker gets is the spec's, whatever the size."""
    from rayfleet.train.launcher import train_config

    job = load_spec(DIGITS, ["spec.scaling.minWorkers=1"])
    config = train_config(job, None, [], job.run_uri())
    assert config["learning_rate"] == job.spec.run.learning_rate
    assert config["batch_size"] == job.spec.run.batch_size
    rows, batch = 1437, config["batch_size"]
    steps = {w: (shard_range(rows, 0, w, equal=True)[1] // batch) for w in (1, 2)}
    assert steps[1] >= 2 * steps[2]  # one worker: twice the steps of 32 rows each
    assert steps[2] * batch * 2 <= rows  # two workers: 64 rows per global step


# ------------------------------------------------------------------ preemption notices


def test_checkpoint_waits_while_one_more_step_and_the_save_still_fit():
    """The just-in-time checkpoint comes as late as possible: with 10 s left, a 0.5 s step
    and a 2 s save, not yet; once fewer than step + save + slack seconds are left, now."""
    from rayfleet.train.preemption import SLACK_S, checkpoint_due

    due = {
        left: checkpoint_due(now_ms=0, deadline_ms=int(left * 1000), step_s=0.5, save_s=2.0)
        for left in (10.0, 3.5, 0.5 + 2.0 + SLACK_S + 0.01, 0.5 + 2.0 + SLACK_S - 0.01, -1.0)
    }
    assert list(due.values()) == [False, False, False, True, True]


def test_a_notice_without_a_deadline_checkpoints_at_once():
    from rayfleet.train.preemption import checkpoint_due

    assert checkpoint_due(now_ms=0, deadline_ms=None, step_s=0.1, save_s=0.1)


@pytest.mark.parametrize(
    ("step_s", "every_s", "steps"),
    [(0.01, 1.0, 100), (0.3, 1.0, 3), (2.0, 1.0, 1), (0.0, 1.0, 1), (None, 1.0, 1)],
)
def test_checks_are_spaced_by_seconds_of_training(step_s, every_s, steps):
    from rayfleet.train.preemption import steps_per_check

    assert steps_per_check(step_s, every_s) == steps


class _Rank0Collectives:
    """Ray Train's two collectives as a single rank sees them: its own value comes back
    (rank 0 is the one whose value every rank gets). `notice` is what Ray reports now."""

    def __init__(self):
        self.notice = None
        self.asked_at: list[int] = []
        self.broadcasts = 0

    def get_info(self):
        return self.notice

    def broadcast(self, value):
        self.broadcasts += 1
        return value


def _simulated_watch():
    """Rank 0's NoticeWatch on 0.1 s steps (its clock) and a wall clock the test advances:
    (the collectives, the wall clock in ms as a one-item list, the watch)."""
    from rayfleet.train.preemption import NoticeWatch

    ray = _Rank0Collectives()
    wall = [0.0]
    ticks = iter(range(1_000_000))
    watch = NoticeWatch(
        rank=0,
        check_every_s=1.0,
        enabled=True,
        get_info=lambda: (ray.asked_at.append(watch.steps), ray.notice)[1],
        broadcast=ray.broadcast,
        clock=lambda: next(ticks) * 0.1,
        wall_ms=lambda: wall[0],
    )
    return ray, wall, watch


def test_notice_watch_asks_ray_once_a_second_then_saves_every_step_of_the_final_window():
    """0.1 s steps: after 5 timing steps the cadence becomes every 10 steps (one collective
    a second, nothing in between). A notice with 6 s left: training goes on until one more
    step plus the save would not fit, then a checkpoint after every step until the deadline
    has passed by the slack (the node was not taken), so at most about one step is trained
    after the last checkpoint; the same notice is not acted on twice, a new one is."""
    from types import SimpleNamespace

    ray, wall, watch = _simulated_watch()
    assert not any(watch.step() for _ in range(30))
    assert watch.every == 10 and ray.asked_at == [5, 15, 25]

    ray.notice = SimpleNamespace(deadline_ms=6_050, preempted_node_ids=["n1"])
    due_at = []
    for _ in range(90):
        wall[0] += 100  # 0.1 s of wall clock per step
        if watch.step():
            due_at.append(watch.steps)
    # Seen at the check of step 35 (5.55 s left); first due at step 50, the first with less
    # than 0.1 + 3.0 (the save estimate before any save) + 1.0 s left (4.05 s); then every
    # step until 1 s (SLACK_S) past the deadline: step 100 at 1.0 s past it, 101 closes it.
    assert due_at == list(range(50, 101)) and watch.due_count == 51
    assert ray.asked_at[-1] == 111  # back to a check a second, the handled notice ignored

    ray.notice = SimpleNamespace(deadline_ms=None, preempted_node_ids=["n2"])
    # At the next check: checkpoint at once, and only once.
    assert [watch.step() for _ in range(20)] == [True] + [False] * 19  # step 121: a check


def test_no_collective_at_all_where_ray_train_watches_no_drains(monkeypatch):
    """rayfleet's embedded single-node Ray turns Ray Train's drain watcher off: no notice can
    come, so a step never pays for the barrier that asks for one."""
    from rayfleet.train.preemption import WATCHER_ENV, NoticeWatch

    def collective(*_):
        raise AssertionError("a collective was called")

    monkeypatch.setenv(WATCHER_ENV, "0")
    watch = NoticeWatch(rank=0, get_info=collective, broadcast=collective)
    assert not watch.enabled and not any(watch.step() for _ in range(100))
    monkeypatch.delenv(WATCHER_ENV)
    assert NoticeWatch(rank=0, get_info=collective, broadcast=collective).enabled


def test_a_measured_save_moves_the_next_checkpoint_of_the_window_later():
    """After the first just-in-time save is timed (0.2 s here), the next comes once one more
    step plus 1.5x that save plus the slack no longer fits: 1.4 s before the deadline rather
    than the 4.1 s of the default estimate."""
    from types import SimpleNamespace

    ray, wall, watch = _simulated_watch()
    ray.notice = SimpleNamespace(deadline_ms=10_000, preempted_node_ids=["n1"])
    left_at_due = []
    for _ in range(120):
        wall[0] += 100
        if watch.step():
            left_at_due.append(round((10_000 - wall[0]) / 1000, 1))
            watch.saved(0.2)
    first, second = left_at_due[:2]  # (the clock's float steps: within one step of the rule)
    assert 4.0 <= first <= 4.1 and 1.3 <= second <= 1.4, left_at_due


def test_the_save_estimate_is_the_slowest_recent_checkpoint_with_margin():
    from rayfleet.train.preemption import DEFAULT_SAVE_ESTIMATE_S, SAVE_MARGIN, NoticeWatch

    watch = NoticeWatch(rank=1, get_info=lambda: None, broadcast=lambda v: v)
    assert watch.save_s == DEFAULT_SAVE_ESTIMATE_S
    for seconds in (0.4, 1.5, 0.6, 0.7):
        watch.saved(seconds)
    assert watch.save_s == SAVE_MARGIN * 1.5
    watch.saved(0.5)
    assert watch.save_s == SAVE_MARGIN * 0.7  # the last three


def test_a_mid_epoch_checkpoint_resumes_at_its_step_on_the_same_world_size():
    from pathlib import Path

    from rayfleet.train.preemption import POSITION_KEY
    from rayfleet.train.session import Resume

    whole = Resume(Path("."), epoch=4, meta={})
    assert (whole.next_epoch, whole.first_step(2)) == (5, 0)
    mid = Resume(Path("."), epoch=4, meta={POSITION_KEY: {"step": 9, "worldSize": 2}})
    assert (mid.next_epoch, mid.first_step(2)) == (4, 9)
    # Resumed on one worker (elastic): the same share of the epoch, 18 of its steps.
    assert mid.first_step(1) == 18 and mid.first_step(4) == 4


# ------------------------------------------------------------------ waiting for room


def test_the_wait_for_room_is_bounded_by_start_attempts():
    """failure.replacementWaitSeconds becomes Ray Train's start timeout x attempts: 30 s
    attempts by default, or the start timeout already in the environment."""
    from rayfleet.train.waiting import wait_bound

    bound = wait_bound(600, {})
    assert (bound.start_timeout_s, bound.attempts, bound.controller_failure_limit) == (30, 20, 19)
    assert wait_bound(20, {}).attempts == 1 and wait_bound(20, {}).start_timeout_s == 20
    env = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "15"}
    assert (wait_bound(40, env).start_timeout_s, wait_bound(40, env).attempts) == (15, 3)


def test_replacement_wait_is_a_failure_field_with_a_documented_default():
    failure = load_spec(DIGITS).spec.failure
    assert failure.replacement_wait_seconds == 600
    props = json_schema("TrainJob")["$defs"]["FailureSpec"]["properties"]
    assert "replacementWaitSeconds" in props
    with pytest.raises(SpecError, match=r"spec\.failure\.replacementWaitSeconds"):
        load_spec(DIGITS, ["spec.failure.replacementWaitSeconds=0"])


def test_giving_up_names_the_knob_and_the_ways_out():
    from rayfleet.train.waiting import gave_up_line, wait_bound, waiting_line

    line = gave_up_line(2, 600)
    assert "2 worker(s)" in line and "600 s" in line and "failure.replacementWaitSeconds" in line
    assert "scaling.minWorkers" in line and "\n" not in line
    assert "up to 600 s" in waiting_line(2, wait_bound(600, {}))
