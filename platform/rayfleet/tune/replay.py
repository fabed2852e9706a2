"""What one launch of a sweep runs: everything for a new sweep; for `--resume`, what is left.

`--resume` never restores Tune's experiment: Tune keeps it as pickles (`tuner.pkl`, trial and
searcher state) that run code when loaded, and a sweep's storage is shared. The sweep's own
documents are its state instead: `trials.json` (ids, params, state, epochs, value) and each
trial's Train run at `<sweep>/<trial_id>/train` with its verified checkpoints. A resumed
launch is a fresh Tune experiment that

- keeps finished rows (DONE, STOPPED) as they are, never running them again, and errored ones
  too unless `--retry-errored`;
- reruns every other row with the same params under the same trial id, so its run resumes
  from its newest verified checkpoint (a run that had finished reports again, untrained);
- samples only the trials still missing to reach the spec's count: the grid points not yet
  run, for random search a *new* draw (the searcher is seeded per launch, so it does not
  repeat the first launch's points), for TPE an Optuna study told the finished trials.

Pure planning, no Ray: `rayfleet.tune.search` turns a Launch into Tune's searcher.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from rayfleet.errors import SpecError
from rayfleet.tune.documents import FINISHED, SweepTable, TrialRow
from rayfleet.tune.space import PreparedSweep


@dataclass(frozen=True)
class Launch:
    """One Tune experiment of a sweep."""

    number: int  # 1 for a new sweep; each --resume adds one
    kept: list[TrialRow] = field(default_factory=list)  # shown as they are, never run
    rerun: list[TrialRow] = field(default_factory=list)  # same id, same params, run again
    new_points: list[dict[str, Any]] = field(default_factory=list)  # grid values fixed
    free_samples: int = 0  # Tune samples drawn from the whole space (each a full grid pass)

    @property
    def tune_samples(self) -> int:
        """Tune's num_samples: one per rerun and per new point, plus the free samples."""
        return len(self.rerun) + len(self.new_points) + self.free_samples

    def seed(self, spec_seed: int | None) -> int | None:
        """The searcher's seed: the spec's for launch 1 (a new sweep samples as it always
        did), a different one per later launch so a resume draws new points."""
        if spec_seed is None or self.number == 1:
            return spec_seed
        return (spec_seed + 1_000_003 * (self.number - 1)) % 2**32


def grid_keys(prep: PreparedSweep) -> list[str]:
    """Search-space keys Tune enumerates (grid values; choices too under grid search)."""
    spec = prep.sweep.spec
    as_grid = spec.search.algorithm == "grid"
    return [
        k
        for k, d in spec.search_space.items()
        if d.kind == "grid" or (as_grid and d.kind == "choice")
    ]


def grid_points(prep: PreparedSweep) -> list[dict[str, Any]]:
    """Every grid combination, numSamples times: the trials a grid sweep runs ([{}] x n
    when nothing is enumerated)."""
    spec = prep.sweep.spec
    keys = grid_keys(prep)
    values = [list(spec.search_space[k][spec.search_space[k].kind]) for k in keys]
    combos = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]
    return combos * spec.num_samples


def plan_fresh(prep: PreparedSweep) -> Launch:
    return Launch(number=1, free_samples=prep.sweep.spec.num_samples)


def plan_resume(prep: PreparedSweep, table: SweepTable, *, retry_errored: bool) -> Launch:
    """The next launch of a sweep whose table is `table` (see the module docstring)."""
    _check_same_sweep(prep, table)
    kept, rerun = [], []
    for row in table.trials:
        if row.state in FINISHED or (row.state == "ERROR" and not retry_errored):
            kept.append(row)
        else:
            rerun.append(row)
    number = table.launches + 1
    keys = grid_keys(prep)
    if not keys:
        missing = max(0, prep.sweep.spec.num_samples - len(table.trials))
        return Launch(number, kept, rerun, free_samples=missing)
    todo = grid_points(prep)
    for row in table.trials:
        ran = {k: row.params[k] for k in keys}
        if ran in todo:
            todo.remove(ran)
    return Launch(number, kept, rerun, new_points=todo)


def _check_same_sweep(prep: PreparedSweep, table: SweepTable) -> None:
    """Resuming with a spec that measures differently would mix incomparable rows."""
    spec = prep.sweep.spec
    where = f"sweep {prep.sweep.name}: {prep.uri}/trials.json"
    ran = (table.metric, table.mode, table.epochs)
    now = (spec.metric, spec.mode, prep.epochs)
    if ran != now:
        raise SpecError(
            f"{where} was run with metric {ran[0]} ({ran[1]}), {ran[2]} epochs, not "
            f"{now[0]} ({now[1]}), {now[2]} epochs; resume with the spec it ran with, or use "
            "a new metadata.name"
        )
    keys = set(spec.search_space)
    for row in table.trials:
        if set(row.params) != keys:
            raise SpecError(
                f"{where}: trial {row.trial_id} searched {', '.join(sorted(row.params))}, "
                f"the spec searches {', '.join(sorted(keys))}; resume with the spec it ran "
                "with, or use a new metadata.name"
            )
