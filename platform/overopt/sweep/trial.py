"""One sweep trial: a Tune function trainable that trains with Ray Train and evaluates what it hands over.

Ray Train V2 (the default in Ray 2.60) does not let ``Tuner`` wrap a trainer; the pattern is a Tune
function trainable that builds the ``TorchTrainer`` and calls ``fit()``. Here ``fit()`` runs in a
thread while this function, the trial driver, evaluates each checkpoint that training rank 0 hands
over (sweep/handover.py) and reports one row per evaluation to Tune, in step order and exactly once:

    training (Ray Train workers) --checkpoint URI + training metrics--> CheckpointHandover
    trial driver: next checkpoint -> evaluate_checkpoint (Ray Data, on the trial's reserved resources)
                  -> the degradation rule -> audit file + row in storage -> tune.report(row)

``evaluation.mode`` decides whether training waits for each evaluation (inline) or goes on with up to
``evaluation.max_in_flight`` evaluations open (async). Each row says how far training had got when
it was reported (``trained_steps_at_report``).

Stops are decided here, where the rows arrive: the driver applies the degradation rule
(sweep/degradation.py) to each row before reporting it. When the rule says stop, the driver tells
training to stop (the workers end at their next step, all ranks alike), writes the stop record
``stops/<trial>.json`` at once (the row it was based on, the reason, how far training had got; in
async mode the later steps whose evaluations were open and are discarded), waits for training to end,
adds where it ended (``trained_steps``) and reports the row last. Tune's ``DegradationStopper`` sees
the same rows and reaches the same decision: it is the cluster-wide backstop. A trial with a stop
record is never trained again. An evaluation that fails fails the trial with its cause; it never
becomes a row.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune

from overopt.config import CheckpointingConfig, EvaluationConfig, LoadOptions, StopperConfig, SyntheticTaskConfig, TrainConfig
from overopt.evaluate.pipeline import EvaluationSpec, audit_table, evaluate_checkpoint, load_eval_set
from overopt.evaluate.proxy import ProxySpec
from overopt.evaluate.vllm_generation import TrialEngines
from overopt.storage import Storage
from overopt.streams import evaluation_seed, trial_key
from overopt.sweep.degradation import DegradationRule
from overopt.sweep.handover import CheckpointHandover
from overopt.sweep.kept_models import keep_evaluated_checkpoint
from overopt.sweep.stages import SizeData
from overopt.train.steps import NonFiniteTraining
from overopt.train.worker import NOT_TRAINED_AGAIN, TRAIN_ROW_FILE, TRAINING_FAILED_FILE, AlignmentSpec
from overopt.trial_plan import bundles_per_trial, evaluation_bundle, evaluation_slots, task_gpus

POLL_SECONDS = 0.5  # how often the driver looks for a new checkpoint or a finished evaluation


def _alignment_entry(config: dict[str, Any]) -> None:  # module-level: pickled by reference
    from overopt.train.worker import alignment_worker

    alignment_worker(config["spec"])


@dataclass(frozen=True)
class SweepSettings:
    """What every trial of a sweep shares, typed (Tune hands it to each trial unchanged)."""

    train: TrainConfig
    evaluation: EvaluationConfig
    load_options: LoadOptions
    synthetic_task: SyntheticTaskConfig | None  # the gold judge's task
    proxy: ProxySpec | None  # the reward behind the training labels, asked at every evaluation (evaluate/proxy.py)
    eval_fractions: list[float]
    sizes: dict[str, SizeData]
    experiment: str  # the experiment's location (path or URI): rows/, audit/ and checkpoints/ go there
    train_storage: str  # where Ray Train keeps its own files (a path or URI)
    experiment_seed: int = 0  # the config's master seed: data order and evaluation sampling streams (overopt/streams.py)
    stopper: StopperConfig = field(default_factory=StopperConfig)  # the degradation rule each trial driver applies
    reference_mode: str = "cache"  # reference.mode
    checkpointing: CheckpointingConfig = field(default_factory=CheckpointingConfig)  # resume mid-trial (docs/reliability.md)
    collective_timeout_s: int = 4 * 3600  # inline: ranks other than 0 wait in a collective while a checkpoint is evaluated

    @property
    def gpus_per_evaluation_task(self) -> float:
        return task_gpus(self.evaluation, self.train.use_gpu)


def trial_resources(settings: SweepSettings) -> list[dict[str, float]]:
    """The trial's placement group: its driver, then a bundle for each scoring task and vLLM engine of
    every evaluation it may have open at once. Reserved with the trial, so its training workers (a
    placement group of their own, from Ray Train) can never take what its evaluations wait for. Tune
    makes the group capture the trial's children: the vLLM judge engines of ray.data.llm (one device each,
    so no placement group of their own) land in these bundles too; the trial's kept generation engines
    are placed in them explicitly (vllm_generation.TrialEngines)."""
    evaluation = settings.evaluation
    return [{"CPU": 1.0}] + [evaluation_bundle(evaluation, settings.train.use_gpu) for _ in range(bundles_per_trial(evaluation))]


def alignment_trial(params: dict[str, Any], settings: SweepSettings) -> None:
    """``params["trial"]`` = {objective, beta, size, seed}; ``settings`` = what every trial shares."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started_at = time.time()
    ray.data.DataContext.get_current().enable_progress_bars = False  # the evaluations' Ray Data executions
    # A trial runs a Ray Data execution per evaluation: Ray Data's per-execution lines would bury the
    # sweep's own progress lines (sweep/progress.py). Warnings and errors still come through.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    trial = params["trial"]
    name = tune.get_context().get_trial_name()
    size = settings.sizes[trial["size"]]
    train, evaluation = settings.train, settings.evaluation
    experiment = Storage(settings.experiment)
    stop_file = f"stops/{name}.json"
    if experiment.exists(stop_file):
        return  # stopped in an earlier run of the sweep (its driver died before Tune recorded it): never trained again
    # A restarted trial (Tune retried it, or the sweep was run again) reports no step twice: the steps
    # whose rows are in storage are known to the handover, and checkpoints handed over before the
    # restart but never evaluated are evaluated first.
    stored_rows = _stored_rows(experiment, name)
    reported = {row["step"] for row in stored_rows}
    diverged = f"checkpoints/{name}/{TRAINING_FAILED_FILE}"  # written by its workers (train/worker.py)
    if experiment.exists(diverged):
        raise NonFiniteTraining(experiment.read_text(diverged) + NOT_TRAINED_AGAIN)
    # The degradation rule, applied here to this trial's rows as they arrive (and first to the rows a
    # restarted trial reported before): the stop is decided, enacted and recorded in one place.
    stopper = settings.stopper
    rule = DegradationRule(stopper.margin, stopper.patience_epochs, stopper.kl_budget)
    for row in sorted(stored_rows, key=lambda row: row["step"]):
        rule.observe(name, row)
    workers_score = evaluation.scoring == "training_workers"  # the training workers score each evaluation's samples
    handover = CheckpointHandover.remote(
        evaluation_slots(evaluation),
        wait_for_evaluation=evaluation.mode == "inline",
        known_steps=sorted(reported),
        serve_scoring=workers_score,
    )
    # Scored by the workers, a checkpoint is evaluated only while they hold its weights: the restored
    # workers hand it over again (from the state saved with it, or by training up to it once more).
    for step, checkpoint, train_row in [] if workers_score else _unevaluated_checkpoints(experiment, name, reported):
        ray.get(handover.recover.remote(step, checkpoint, train_row))
    spec = AlignmentSpec(
        objective=trial["objective"],
        beta=trial["beta"],
        objective_kwargs=train.objective_kwargs.get(trial["objective"], {}),
        seed=trial["seed"],
        experiment_seed=settings.experiment_seed,
        train=train,
        load_options=settings.load_options,
        reference=size.reference,
        tokenizer=size.tokenizer,
        eval_fractions=settings.eval_fractions,
        pairs_path=size.pairs_path,
        checkpoints=experiment.uri(f"checkpoints/{name}"),
        handover=handover,
        reference_mode=settings.reference_mode,
        checkpointing=settings.checkpointing,
        score_evaluations=workers_score,
        scoring_batch_size=evaluation.scoring_batch_size,
    )
    resources = {"GPU": 1, "CPU": train.cpus_per_worker} if train.use_gpu else {"CPU": train.cpus_per_worker}
    trainer = TorchTrainer(
        _alignment_entry,
        train_loop_config={"spec": spec},
        # Inline: ranks other than 0 wait in a collective while a checkpoint is evaluated.
        torch_config=TorchConfig(timeout_s=settings.collective_timeout_s),
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu, resources_per_worker=resources),
        # The trial's name is stable across Tuner.restore: the same name and storage make Ray Train
        # restore this trial's latest checkpoint (ray.train.get_checkpoint() in the workers), as it does
        # when it restarts a failed worker group itself (max_failures).
        run_config=RunConfig(
            name=name,
            failure_config=FailureConfig(max_failures=settings.checkpointing.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=settings.checkpointing.keep),
            **Storage(settings.train_storage).ray_storage(),
        ),
        # No Ray Data dataset: the workers read the pairs table themselves and each takes its share of
        # every batch of a seeded per-epoch permutation (train/loop.py).
    )
    training = _in_thread(trainer.fit)
    evaluation_spec = EvaluationSpec(
        reference=size.reference,
        tokenizer=size.tokenizer,
        generation=evaluation.generation,
        judge=evaluation.judge,
        load_options=settings.load_options,
        synthetic_task=settings.synthetic_task,
        seed=0,  # each evaluation's own sampling stream replaces it below
        cpus_per_task=evaluation.cpus_per_task,
        gpus_per_task=settings.gpus_per_evaluation_task,
        scoring_batch_size=evaluation.scoring_batch_size,
        tasks=evaluation.tasks,
        workers=handover if workers_score else None,
        proxy=settings.proxy,
    )
    # Each evaluation samples from its own stream, (experiment seed, trial, step): the step-0 evaluations
    # of different trials and the evaluations of one trial are independent estimates.
    stream_name = trial_key(trial["objective"], trial["beta"], trial["size"], trial["seed"])
    eval_set = load_eval_set(size.eval_path, evaluation.tasks)
    placement_group = ray.util.get_current_placement_group()  # the trial's: its evaluation bundles
    sampling = "ancestral, temperature 1, no top-k/top-p/penalties"
    open_evaluations: dict[int, tuple[Future, str, dict[str, Any]]] = {}
    stop: dict[str, Any] | None = None  # the stop record, once the rule decides
    stopping_row: dict[str, Any] = {}
    # With vLLM generation the trial keeps its engines (one per open evaluation, in its reserved bundles) from
    # its first evaluation to its end, and loads each checkpoint's weights into them: an engine starts once a trial.
    kept_engines = (
        TrialEngines(evaluation_slots(evaluation), num_gpus=settings.gpus_per_evaluation_task, placement_group=placement_group)
        if evaluation.generation.backend == "vllm"
        else nullcontext()
    )
    with kept_engines as engines, ThreadPoolExecutor(max_workers=evaluation_slots(evaluation), thread_name_prefix="evaluation") as pool:
        while stop is None:
            # Read before asking for a checkpoint: training hands each one over (and the actor holds it)
            # before fit() returns, so once training is seen finished, next() below still returns the
            # last one. Read after, a checkpoint handed over in between was never evaluated (async).
            finished = training.done()
            if finished and workers_score and training.exception() is not None:
                # No worker is left to score an open evaluation: end its requests, fail with training's error.
                ray.get(handover.close_scoring.remote(f"training ended before this evaluation was scored: {training.exception()!r}"))
                training.result()
            item = ray.get(handover.next.remote(POLL_SECONDS))  # at once if one is there
            if item is not None:
                step, checkpoint, train_row = item
                step_spec = dataclasses.replace(evaluation_spec, seed=evaluation_seed(settings.experiment_seed, stream_name, step))
                future = pool.submit(_timed, _evaluate, checkpoint, eval_set, step_spec, placement_group, engines)
                open_evaluations[step] = (future, checkpoint, train_row)
            # Rows go out in step order: the oldest open evaluation first, once it is in.
            while stop is None and open_evaluations and open_evaluations[min(open_evaluations)][0].done():
                step = min(open_evaluations)
                future, checkpoint, train_row = open_evaluations.pop(step)
                ((metrics, records), engine_row), seconds = future.result()  # an evaluation that failed fails the trial here
                row = {
                    **trial,
                    "trial_name": name,
                    **train_row,
                    **metrics,
                    **engine_row,
                    "sampling": sampling,
                    "evaluation_seconds": seconds,  # checkpoint taken -> metrics ready
                    "evaluation_node_ids": ",".join(sorted(set(records["evaluation_node"]))),
                    "scoring_ranks": int(
                        records["scoring_ranks"].max()
                    ),  # training ranks that scored the samples (0: the evaluation tasks)
                    "trial_started_at": started_at,  # unix times: when trials ran at once (tests/integration)
                    "evaluation_gpu_ids": ",".join(sorted({g for gpus in records["evaluation_gpus"] for g in gpus.split(",") if g})),
                }
                reason = rule.observe(name, row)
                if reason is not None:
                    # Decided here, on this row: training is told to stop, and the decision is recorded at once.
                    ray.get(handover.stop_training.remote())
                    stop = {
                        "trial_name": name,
                        "step": step,
                        "reason": reason,
                        "decided_at": time.time(),
                        "trained_steps_at_decision": ray.get(handover.trained_steps.remote()),
                        # async: checkpoints of later steps already handed over, never reported
                        "discarded_steps": sorted(open_evaluations),
                    }
                    experiment.write_text(stop_file, json.dumps(stop))
                ray.get(handover.evaluated.remote(step))  # inline: training goes on (or, stopped, ends)
                if stop is not None:
                    training.result()  # training ends at its next step; a failure on the way fails the trial
                # How far training had got when this row was reported (for the stopping row: where it ended).
                # Training says how far it got before each step, so the counter can lag the checkpoint just
                # evaluated by one: training has done at least this row's steps.
                row["trained_steps_at_report"] = max(step, ray.get(handover.trained_steps.remote()))
                row["reported_at"] = time.time()
                if stop is not None:
                    stop["trained_steps"] = row["trained_steps_at_report"]
                    experiment.write_text(stop_file, json.dumps(stop))
                stem = f"step_{step:06d}"
                experiment.write_parquet(f"audit/{name}/{stem}.parquet", audit_table(records, step))
                # The row lands in storage before Tune sees it: a crash or a stop loses nothing reported.
                experiment.write_text(f"rows/{name}/{stem}.json", json.dumps(row))
                # Evaluated: it moves to models/<trial>/ if it is the trial's best (win rate) or last evaluation,
                # for jobs/export.py; every other evaluated checkpoint is deleted (sweep/kept_models.py).
                keep_evaluated_checkpoint(experiment, name, step, row)
                if stop is None:
                    tune.report(row)
                else:
                    stopping_row = row  # reported last, below: Tune's own stopper ends the trial at that row too
            if item is None and finished and not open_evaluations:
                break
    # Here every evaluation is in (a stopped trial's discarded ones too) and training has ended.
    training.result()  # a training failure fails the trial with its own error
    _finish(settings, experiment, name)
    if stop is not None:
        tune.report(stopping_row)


def _finish(settings: SweepSettings, experiment: Storage, name: str) -> None:
    """A trial that ended (finished or stopped) never resumes: its handed-over checkpoints and its
    engine checkpoints go."""
    experiment.delete_dir(f"checkpoints/{name}")
    Storage(settings.train_storage).delete_dir(name)


def _stored_rows(experiment: Storage, name: str) -> list[dict[str, Any]]:
    """The rows of trial ``name`` in storage (reported before a restart)."""
    return [json.loads(experiment.read_text(path)) for path in experiment.list(f"rows/{name}", suffix=".json")]


def _unevaluated_checkpoints(experiment: Storage, name: str, reported: set[int]) -> list[tuple[int, str, dict[str, Any]]]:
    """(step, location, training row) of every complete handed-over checkpoint without a row, oldest first."""
    found = []
    for path in experiment.list(f"checkpoints/{name}", suffix="/" + TRAIN_ROW_FILE, recursive=True):
        directory = path.rsplit("/", 1)[0]
        step = int(directory.rsplit("step_", 1)[1])
        if step not in reported:
            found.append((step, experiment.uri(directory), json.loads(experiment.read_text(path))))
    return sorted(found, key=lambda item: item[0])


def _evaluate(checkpoint: str, eval_set, spec: EvaluationSpec, placement_group, engines: TrialEngines | None):
    """One evaluation, on a kept vLLM engine borrowed for it when the trial keeps some: its row then says
    which engine sampled (one per trial and open evaluation), its start-up and this checkpoint's weight load."""
    if engines is None:
        return evaluate_checkpoint(checkpoint, eval_set, spec, placement_group), {}
    with engines.lend(checkpoint) as (engine, load_seconds):
        result = evaluate_checkpoint(checkpoint, eval_set, spec, placement_group, engine)
        engine_row = {**ray.get(engine.describe.remote()), "vllm_weights_load_s": load_seconds}
    return result, engine_row


def _timed(function, *args):
    started = time.time()
    return function(*args), time.time() - started


def _in_thread(function) -> Future:
    """Run ``function`` in a daemon thread; its result or exception lands in the returned future."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(function())
        except BaseException as error:  # noqa: BLE001 - handed to the trial driver, which re-raises it
            future.set_exception(error)

    threading.Thread(target=run, name="ray-train-fit", daemon=True).start()
    return future
