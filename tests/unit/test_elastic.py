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
    from rayfleet.train.launcher import _train_config

    job = load_spec(DIGITS, ["spec.scaling.minWorkers=1"])
    config = _train_config(job, None, [], job.run_uri())
    assert config["learning_rate"] == job.spec.run.learning_rate
    assert config["batch_size"] == job.spec.run.batch_size
    rows, batch = 1437, config["batch_size"]
    steps = {w: (shard_range(rows, 0, w, equal=True)[1] // batch) for w in (1, 2)}
    assert steps[1] >= 2 * steps[2]  # one worker: twice the steps of 32 rows each
    assert steps[2] * batch * 2 <= rows  # two workers: 64 rows per global step
