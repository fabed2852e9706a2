"""A launch's Tune search: the parameter space, the searcher and the scheduler.

Reruns (trials of an earlier launch run again under their own id) go in through the config
key `TRIAL_ID_KEY`: random and grid search take them as `points_to_evaluate` of Tune's
BasicVariantGenerator (each point replaces one sample and, with every grid key fixed, yields
exactly one trial); TPE gets them from `ReplaySearcher` before Optuna suggests anything, and
Optuna starts from a study told every finished trial (`evaluated_rewards`).
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import Searcher

from rayfleet.specs.sweep import Domain
from rayfleet.tune.documents import FINISHED
from rayfleet.tune.replay import Launch
from rayfleet.tune.space import PreparedSweep
from rayfleet.tune.trial import EPOCHS_DONE, TRIAL_ID_KEY


def tune_domain(domain: Domain, *, as_grid: bool = False):
    from ray import tune

    kind = domain.kind
    if kind == "grid" or (as_grid and kind == "choice"):
        return tune.grid_search(list(domain[kind]))
    if kind == "choice":
        return tune.choice(list(domain.choice))
    low, high = domain[kind]
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](
        low, high
    )


def param_space(prep: PreparedSweep) -> dict[str, Any]:
    """The spec's search space in Tune's terms, plus the (unset) rerun key."""
    as_grid = prep.sweep.spec.search.algorithm == "grid"
    space = {k: tune_domain(d, as_grid=as_grid) for k, d in prep.sweep.spec.search_space.items()}
    return {**space, TRIAL_ID_KEY: None}


def rerun_configs(launch: Launch) -> list[dict[str, Any]]:
    return [{**row.params, TRIAL_ID_KEY: row.trial_id} for row in launch.rerun]


def search_alg(prep: PreparedSweep, concurrency: int, launch: Launch | None = None):
    """The searcher. Tune applies max_concurrent_trials to Searchers (Optuna) itself, but
    ignores it for a BasicVariantGenerator passed in, which must be told directly."""
    spec = prep.sweep.spec
    launch = launch or Launch(number=1, free_samples=spec.num_samples)
    seed = launch.seed(spec.search.seed)
    if spec.search.algorithm == "tpe":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        done = [r for r in launch.kept if r.state in FINISHED and r.value is not None]
        optuna_search = OptunaSearch(
            sampler=optuna.samplers.TPESampler(seed=seed),
            points_to_evaluate=[dict(r.params) for r in done] or None,
            evaluated_rewards=[r.value for r in done] or None,
        )
        replay = rerun_configs(launch)
        return ReplaySearcher(optuna_search, replay) if replay else optuna_search
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(
        points_to_evaluate=rerun_configs(launch) + [dict(p) for p in launch.new_points],
        random_state=seed,
        max_concurrent=concurrency,
    )


def scheduler(prep: PreparedSweep):
    """The trial scheduler; it counts in completed epochs, which stay right across resumes.
    Each launch starts it afresh: trials of earlier launches do not inform its decisions."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    s = prep.sweep.spec.scheduler
    if s.type == "asha":
        return ASHAScheduler(
            time_attr=EPOCHS_DONE,
            max_t=prep.epochs,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
    if s.type == "median":
        return MedianStoppingRule(
            time_attr=EPOCHS_DONE,
            grace_period=s.grace_period,
            min_samples_required=s.min_samples_required,
        )
    return FIFOScheduler()


class ReplaySearcher(Searcher):
    """Hands out fixed configs (reruns) first, then asks the wrapped searcher.

    The wrapped searcher hears only of trials it suggested; a replayed trial's final metric
    is added to it as an evaluated point when the searcher supports that (Optuna does).
    """

    def __init__(self, searcher: Searcher, configs: list[dict[str, Any]]):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self._configs = list(configs)
        self._replayed: dict[str, dict[str, Any]] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        return ok

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._configs:
            config = self._configs.pop(0)
            self._replayed[trial_id] = config
            return dict(config)
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._replayed:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        config = self._replayed.pop(trial_id, None)
        if config is None:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
            return
        value = (result or {}).get(self.metric) if not error else None
        if value is not None:
            params = {k: v for k, v in config.items() if k != TRIAL_ID_KEY}
            try:
                self.searcher.add_evaluated_point(params, value)
            except NotImplementedError:
                pass  # the wrapped searcher cannot learn from points it did not suggest

    def save(self, checkpoint_path: str) -> None:
        # Tune saves searcher state beside its experiment; rayfleet never reads it back.
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("rayfleet resumes sweeps from trials.json, not Tune state")
