"""One sweep trial: a full data-parallel TrainJob run inside a Ray Tune trial.

This is Ray's Train-V2-in-Tune shape: the Tune trial is a light driver that builds a
`TorchTrainer` for its sampled config and calls `fit()`; Ray Train places the workers in a
placement group of its own, and a callback forwards rank 0's epoch reports to Tune, where
the scheduler (ASHA, median stopping) may end the trial early. A trial of one worker skips
all that when the sweep lets it (`trialLaunch: auto`, see tune.runner.trials_in_process):
its loop trains in the trial's own process (train.inprocess), which Tune reuses for the
next trial, and its reports go to Tune in the same shape.

Each trial's run lives at `<sweep>/<trial_id>/train`, so it writes verified checkpoints
exactly like `rayfleet run`, and a restarted trial (sweep resumed after its driver died)
resumes from its newest verified checkpoint instead of repeating epochs. A trial whose run
already finished reports that result again without training. A resumed sweep is a new Tune
experiment with new Tune trial ids, so a trial run again carries its own id in its config
(`TRIAL_ID_KEY`), which names its run folder, its TrainJob and its row in the table.
"""

from __future__ import annotations

from typing import Any

from rayfleet.lazy import lazy
from rayfleet.specs import TrainJob, parse_spec
from rayfleet.storage.checkpoints import CheckpointRef, newest_verified
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import StorageURI, parse_uri
from rayfleet.train.preemption import continues_at
from rayfleet.tune.space import trial_doc

# Ray Train: loaded in the trial's process, not by the sweep CLI that names trial folders.
inprocess = lazy("rayfleet.train.inprocess")
launcher = lazy("rayfleet.train.launcher")
reporting = lazy("rayfleet.train.reporting")

# The metric schedulers count in: epochs completed by the trial's run, stable across
# restarts (Tune's own training_iteration restarts from 1 when a trial is relaunched).
EPOCHS_DONE = "epochs_done"
CHECKPOINT_KEY = "checkpoint_path"
# Reserved config key: the sweep trial a Tune trial runs (set for reruns, None otherwise).
TRIAL_ID_KEY = "_rayfleet_trial_id"


def sweep_trial_id(config: dict[str, Any], tune_trial_id: str) -> str:
    """The sweep's id for a Tune trial: the rerun's own id, else Tune's."""
    return config.get(TRIAL_ID_KEY) or tune_trial_id


def trial_run_uri(sweep_uri: StorageURI, trial_id: str) -> StorageURI:
    return sweep_uri.join(trial_id, "train")


def trial_name(trial_id: str) -> str:
    """A Kubernetes-style name for the trial's TrainJob (Tune ids contain '_')."""
    return "trial-" + trial_id.replace("_", "-").lower()


def _report_callback(numbering):
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReport(TuneReportCallback):
        """Tune's forwarding callback, plus the epochs the run has completed: the epoch the
        trainer's RunReporter, called first with the same `numbering`, gave the report (a
        plain Ray Train loop that reports no `epoch` is counted from where it resumed)."""

        def __init__(self, numbering):
            super().__init__()
            self.numbering = numbering

        def after_report(self, run_context, metrics, checkpoint):
            first = {**metrics[0], EPOCHS_DONE: self.numbering.last + 1}
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return EpochReport(numbering)


def run_trial(
    params: dict[str, Any],
    *,
    base_doc: dict[str, Any],
    sweep_uri: str,
    sys_path: list[str],
    channel: Any = None,
    in_process: bool = False,
) -> None:
    """The Tune trainable: train the base TrainJob with this trial's sampled values.
    `channel`: the sweep driver's progress channel (its workers' busy time), or None;
    `in_process`: train the one-worker loop in this trial's own process (train.inprocess)
    instead of a Ray Train run of its own."""
    from ray import tune

    trial_id = sweep_trial_id(params, tune.get_context().get_trial_id())
    params = {k: v for k, v in params.items() if k != TRIAL_ID_KEY}
    job = parse_spec(trial_doc(base_doc, params, trial_name(trial_id)), source=trial_id)
    assert isinstance(job, TrainJob)
    run_uri = trial_run_uri(parse_uri(sweep_uri), trial_id)

    ref, _ = newest_verified(filesystem_for(run_uri), run_uri.fs_path)
    if _report_finished(job, ref):
        return

    def log(event: dict[str, Any]) -> None:
        print(f"[{trial_id}] {event.get('message', event)}", flush=True)

    if in_process:
        next_epoch = continues_at(ref.epoch, ref.meta) if ref is not None else 0
        _train_in_process(job, run_uri, channel, sys_path, next_epoch)
        return

    def trainer():
        numbering = reporting.ReportEpochs(str(run_uri))  # one for both callbacks
        return launcher.build_trainer(
            job,
            channel,  # the sweep driver's: its workers' busy time goes to the trial's record
            sys_path,
            run_uri=run_uri,
            callbacks=[_report_callback(numbering)],
            numbering=numbering,
        )

    _, error = launcher.fit_with_retries(job, trainer, log)
    if error is not None:
        raise error


def _train_in_process(job: TrainJob, run_uri: StorageURI, channel, sys_path, next_epoch):
    """The trial's one worker, here: each report goes to Tune as the Ray Train path's
    callback sends it (metrics, epochs done, the persisted checkpoint's path)."""
    from ray import tune

    def reported(metrics: dict[str, Any], epoch: int, path: str | None) -> None:
        tune.report({**metrics, EPOCHS_DONE: epoch + 1, **({CHECKPOINT_KEY: path} if path else {})})

    inprocess.run_in_process(
        job,
        launcher.train_config(job, channel, sys_path, run_uri),
        run_uri=run_uri,
        next_epoch=next_epoch,
        on_report=reported,
    )


def _report_finished(job: TrainJob, ref: CheckpointRef | None) -> bool:
    """If this trial's run (newest verified checkpoint `ref`) already completed every epoch,
    report its result and say so."""
    from ray import tune

    if ref is None or ref.epoch + 1 < job.epochs_planned():
        return False
    metrics = dict(ref.meta.get("metrics", {}))
    tune.report({**metrics, EPOCHS_DONE: ref.epoch + 1, CHECKPOINT_KEY: ref.path})
    return True
