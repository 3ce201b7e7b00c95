"""The trials a config plans, their optimizer steps and evaluations, and the resources each trial holds.

    trials = planned_trials(cfg)                          # every (objective, beta, size, seed), smallest size first
    steps, evaluations = steps_and_evaluations(cfg, pairs)  # one trial run to its planned end
    resources_per_trial(cfg)                              # {"CPU": ..., "GPU": ...}: what Ray reserves for one trial
    holding(cfg)                                          # the same, counted as devices (worker-seconds)
    bundles_per_trial(cfg.evaluation), evaluation_bundle(cfg.evaluation, cfg.train.use_gpu)

Plain arithmetic on the config, shared by the dry run (sweep/plan.py), the sweep that places the
trials (sweep/run.py, sweep/trial.py, sweep/capacity.py), the memory and storage plans and the cost
analysis (analysis/). No Ray here.

What a trial holds, from its driver's start to its end: its Ray Train workers (``train.num_workers``,
each 1 GPU when training on GPUs, else ``train.cpus_per_worker`` CPUs), its Tune driver's CPU, and its
evaluation bundles, reserved with the trial in one placement group (sweep/trial.py ``trial_resources``):
one per scoring task and vLLM engine of every evaluation it may have open at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from overopt.schedule import evaluation_fractions, evaluation_steps

if TYPE_CHECKING:
    from overopt.config import EvaluationConfig, ExperimentConfig


# ----------------------------------------------------------------------------------------------
# The trials, their steps and evaluations


def planned_trials(cfg: ExperimentConfig) -> list[dict]:
    """Every (objective, beta, size, seed) the config asks for, smallest size first."""
    trials = []
    for size in cfg.models.sizes:
        for objective in cfg.sweep.size_objectives.get(size, cfg.train.objectives):
            for beta in cfg.train.betas[objective]:
                for seed in cfg.sweep.seeds:
                    trials.append({"objective": objective, "beta": beta, "size": size, "seed": seed})
    return trials


def planned_fractions(cfg: ExperimentConfig) -> list[float]:
    """The evaluation schedule's epoch fractions (as sweep/run.py hands them to every trial)."""
    evaluation = cfg.evaluation
    return evaluation_fractions(
        cfg.train.epochs, evaluation.early_fractions, evaluation.fractions_per_epoch_1, evaluation.fractions_after_epoch_1
    )


def steps_and_evaluations(cfg: ExperimentConfig, pairs: int | None = None) -> tuple[int, int]:
    """A trial's planned optimizer steps and evaluations, as its workers count them (train/worker.py);
    ``pairs``: the pairs table's rows (None: synthetic, ``preference_pairs``)."""
    fractions = planned_fractions(cfg)
    # Synthetic pairs lose some prompts to truncated or identical samples: the count is an upper bound.
    n_pairs = pairs if pairs is not None else cfg.data.synthetic.preference_pairs
    steps_per_epoch = max(1, n_pairs // cfg.train.batch_size)
    return max(1, round(cfg.train.epochs * steps_per_epoch)), len(evaluation_steps(fractions, steps_per_epoch))


# ----------------------------------------------------------------------------------------------
# A trial's evaluation bundles


def task_gpus(evaluation: EvaluationConfig, use_gpu: bool) -> float:
    """GPUs each scoring task holds: gpus_per_task, or by default 1 when training runs on GPUs."""
    return (1.0 if use_gpu else 0.0) if evaluation.gpus_per_task is None else evaluation.gpus_per_task


def evaluation_slots(evaluation: EvaluationConfig) -> int:
    """Evaluations a trial can have running at once: their resources are reserved with the trial."""
    return evaluation.max_in_flight if evaluation.mode == "async" else 1


def vllm_engines(evaluation: EvaluationConfig) -> int:
    """vLLM engine actors a trial holds at once: per evaluation it may have open, one generation engine
    (kept by the trial from its first evaluation to its end, evaluate/vllm_generation.py ``TrialEngines``)
    and one judge engine (started for the evaluation's judging stage) when it generates or judges with vLLM."""
    per_evaluation = (evaluation.generation.backend == "vllm") + evaluation.judge.served_by_vllm
    return evaluation_slots(evaluation) * per_evaluation


def bundles_per_trial(evaluation: EvaluationConfig) -> int:
    """The trial's evaluation bundles: every scoring task and vLLM engine it may hold at once."""
    return evaluation.tasks * evaluation_slots(evaluation) + vllm_engines(evaluation)


def evaluation_bundle(evaluation: EvaluationConfig, use_gpu: bool) -> dict[str, float]:
    """One evaluation bundle. With vLLM engines every bundle can hold either a scoring task or an
    engine (1 CPU and the task's GPUs): Ray places a trial's children in whichever bundle has room,
    so bundles of two shapes could leave an engine and a task each waiting for the other's."""
    cpus = max(evaluation.cpus_per_task, 1.0) if vllm_engines(evaluation) else evaluation.cpus_per_task
    gpus = task_gpus(evaluation, use_gpu)
    return {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}


# ----------------------------------------------------------------------------------------------
# What one trial holds


def resources_per_trial(cfg: ExperimentConfig) -> dict[str, float]:
    """What one trial holds while it runs: its Tune driver and its evaluations' tasks (one placement
    group, sweep/trial.py ``trial_resources``) and its Train workers (Ray Train's placement group)."""
    train, evaluation = cfg.train, cfg.evaluation
    bundle, bundles = evaluation_bundle(evaluation, train.use_gpu), bundles_per_trial(evaluation)
    resources = {"CPU": 1 + bundles * bundle["CPU"] + train.num_workers * train.cpus_per_worker}
    gpus = bundles * bundle.get("GPU", 0) + (train.num_workers if train.use_gpu else 0)
    if gpus:
        resources["GPU"] = gpus
    return resources


@dataclass(frozen=True)
class Holding:
    """The devices one trial holds while it runs, in ``unit`` (GPU when training on GPUs, else CPU):
    what its worker-seconds count (analysis/measured_costs.py)."""

    unit: str
    workers: int  # its Ray Train workers (train.num_workers) ...
    per_worker: float  # ... each holding this many
    bundles: int  # its evaluation bundles (bundles_per_trial) ...
    per_bundle: float  # ... each holding this many
    driver: float = 0.0  # its Tune driver's CPU (CPU-seconds only)

    @property
    def training(self) -> float:
        return self.workers * self.per_worker

    @property
    def evaluation(self) -> float:
        return self.bundles * self.per_bundle

    @property
    def total(self) -> float:
        return self.training + self.evaluation + self.driver

    def text(self) -> str:
        """What is counted, in words: 'the 5 CPUs a trial holds: 2 training workers x 1 CPU + ...'."""
        parts = [
            f"{self.workers} training workers x {self.per_worker:g} {self.unit}",
            f"{self.bundles} evaluation bundles x {self.per_bundle:g} {self.unit}",
        ]
        if self.driver:
            parts.append(f"the trial driver's {self.driver:g} CPU")
        counted = "" if self.unit == "CPU" else " (their CPUs not counted)"
        return f"the {self.total:g} {self.unit}s a trial holds: {' + '.join(parts)}{counted}"

    def to_dict(self) -> dict:
        return dict(self.__dict__, training=self.training, evaluation=self.evaluation, total=self.total)


def holding(cfg: ExperimentConfig) -> Holding:
    """What a trial of ``cfg`` holds, as devices: GPUs when training on GPUs (the training workers' and
    the bundles'; CPUs are not counted), else CPUs (the workers', the bundles' and the driver's)."""
    train, evaluation = cfg.train, cfg.evaluation
    bundle, bundles = evaluation_bundle(evaluation, train.use_gpu), bundles_per_trial(evaluation)
    if train.use_gpu:
        return Holding("GPU", train.num_workers, 1.0, bundles, bundle.get("GPU", 0.0))
    return Holding("CPU", train.num_workers, float(train.cpus_per_worker), bundles, bundle["CPU"], 1.0)
