"""What a config will run, checked before anything starts: ``jobs/scale_sweep.py --dry-run``.

    python jobs/scale_sweep.py --config configs/pythia_tldr.yaml --dry-run

``check_inputs`` opens every data source (reading and validating its rows, no tokenisation) and
every model path, and returns the problems as plain sentences (a size whose estimated memory per
training worker exceeds ``train.device_memory_gb`` is one: overopt.memory_plan); ``describe_plan``
prints the trials, evaluations per trial, resources per trial, memory per training worker and the
expected number of evaluations; ``describe_costs`` the steps, evaluations and worker slots, and their
seconds where an earlier experiment of the same config family measured them (analysis/cost_estimate.py). The
trials, their steps and evaluations and what each holds are counted in overopt/trial_plan.py. No Ray here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from overopt.checkpoint_storage import describe_storage
from overopt.config import ExperimentConfig
from overopt.data import sources
from overopt.memory_plan import describe_memory, memory_plan, memory_problems
from overopt.models import BUILTIN_SIZES, check_weights, is_local_path
from overopt.trial_plan import holding, planned_trials, resources_per_trial, steps_and_evaluations
from overopt.worker_memory import WorkerMemory


@dataclass(frozen=True)
class Plan:
    trials: list[dict]
    evaluations_per_trial: dict[str, int]  # by size: distinct evaluation steps (depends on the pairs)
    pairs_per_size: int | None  # None: sampled by the stages (synthetic), known after them
    resources_per_trial: dict[str, float]
    memory: dict[str, WorkerMemory | str] = field(default_factory=dict)  # by size: per training worker, or why unknown
    steps_per_trial: dict[str, int] = field(default_factory=dict)  # by size: optimizer steps of a trial run to its end

    @property
    def total_evaluations(self) -> int:
        return sum(self.evaluations_per_trial[t["size"]] for t in self.trials)


def check_model(cfg: ExperimentConfig, name: str, what: str) -> str | None:
    """None when ``name`` can be loaded, else the problem."""
    if name in BUILTIN_SIZES:
        return None
    try:
        if is_local_path(name):
            check_weights(name, cfg.models)
        else:
            from transformers import AutoConfig

            AutoConfig.from_pretrained(name, trust_remote_code=cfg.models.trust_remote_code)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if is_local_path(name) and os.path.isdir(os.path.expanduser(name)):
            return f"{what}: {first}"  # there, but unusable: no weights, only pickles, no config.json
        return f"{what}: model not found: {name!r} ({first})"
    return None


def vllm_problems(cfg: ExperimentConfig) -> list[str]:
    """What the config asks of vLLM that this Python cannot do (vLLM lives in the venv `make vllm` builds)."""
    wanted = [
        field
        for field, on in (
            ("evaluation.generation.backend: vllm", cfg.evaluation.generation.backend == "vllm"),
            ("evaluation.judge.transport: vllm", cfg.evaluation.judge.served_by_vllm),
        )
        if on
    ]
    if not wanted:
        return []
    from overopt.evaluate.vllm_generation import require_vllm

    try:
        require_vllm()
    except ImportError as error:
        return [f"{' and '.join(wanted)}: {error}"]
    return []


@dataclass(frozen=True)
class InputCheck:
    """What ``check_inputs`` found: problems stop a run before anything starts; notes (rows a data
    source will skip, ``data.on_invalid: skip``) are reported and the run goes on."""

    problems: list[str]
    counts: dict[str, int]  # rows per table
    notes: list[str] = field(default_factory=list)


def check_vocabulary_fit(cfg: ExperimentConfig, model: str, where: str) -> str | None:
    """None when the configured tokenizer's ids fit the local model's vocabulary, else the problem
    (read from the tokenizer and the model's config.json, no weights loaded)."""
    tokenizer = cfg.models.tokenizer
    if model in BUILTIN_SIZES or not is_local_path(model) or tokenizer is None:
        return None  # built-in sizes are built for their tokenizer; a model's own tokenizer fits it
    from transformers import AutoConfig

    from overopt.models import load_tokenizer

    try:
        if tokenizer == "synthetic":
            from overopt.data.tokenizer import build_synthetic_tokenizer

            tokens = len(build_synthetic_tokenizer(sources.synthetic_task(cfg.data)))
        else:
            tokens = len(load_tokenizer(tokenizer, cfg.models))
        vocabulary = AutoConfig.from_pretrained(model, trust_remote_code=cfg.models.trust_remote_code).vocab_size
    except (OSError, ValueError):
        return None  # a missing model or tokenizer is reported on its own
    if tokens > vocabulary:
        return (
            f"{where}: models.tokenizer {tokenizer!r} has {tokens} tokens but the model's vocabulary holds {vocabulary}: "
            "they do not belong together"
        )
    return None


def check_inputs(cfg: ExperimentConfig) -> InputCheck:
    """Every data source and model path the config names, opened and checked (``--dry-run``, and the
    real run before Ray starts)."""
    problems: list[str] = []
    counts: dict[str, int] = {}
    notes: list[str] = []
    models = {}  # config field -> model path the trials start from
    for size in cfg.models.sizes:
        if not (cfg.sft.enabled or size in cfg.sft.checkpoints) and size in BUILTIN_SIZES:
            problems.append(f"models.sizes: {size!r} is a built-in size with random weights and sft.enabled is false")
        if size not in cfg.sft.checkpoints:
            models[f"models.sizes[{size}]"] = size
    for size, path in cfg.sft.checkpoints.items():
        models[f"sft.checkpoints.{size}"] = path
    for where, path in models.items():
        problem = check_model(cfg, path, where) or check_vocabulary_fit(cfg, path, where)
        problems += [problem] if problem else []
    if cfg.models.tokenizer not in (None, "synthetic") and is_local_path(cfg.models.tokenizer):
        if not os.path.isdir(os.path.expanduser(cfg.models.tokenizer)):
            problems.append(f"models.tokenizer: tokenizer not found: {cfg.models.tokenizer!r}")
    if cfg.evaluation.judge.type == "reward_model" or cfg.evaluation.judge.served_by_vllm:
        assert cfg.evaluation.judge.model is not None  # JudgeConfig requires it of both
        problem = check_model(cfg, cfg.evaluation.judge.model, "evaluation.judge.model")
        problems += [problem] if problem else []
    problems += vllm_problems(cfg)
    for kind in ("sft", "pairs", "eval"):
        source = getattr(cfg.data, kind)
        if kind == "sft" and not cfg.sft.enabled:
            continue
        if kind == "pairs" and source.source == "synthetic":
            counts[kind] = cfg.data.synthetic.preference_pairs
            continue
        try:
            rows, report = sources.load_rows(cfg.data, kind, seed=cfg.seed)
            counts[kind] = len(rows)
            if report is not None and report.defects:
                notes.append(f"data.{kind}: {report.summary()} (on_invalid: skip)")
        except (OSError, ValueError) as error:
            problems.append(f"data.{kind} ({sources.describe(source)}): {error}")
    problems += memory_problems(cfg)  # [] unless train.device_memory_gb is set
    if cfg.tracking.mlflow.tracking_uri is not None or cfg.tracking.wandb.project is not None:
        from overopt.sweep.tracking import tracker_problems  # imports Ray: only when a tracker is on

        problems += tracker_problems(cfg)  # a tracking server that does not answer stops the sweep before the stages
    return InputCheck(problems, counts, notes)


def plan_sweep(cfg: ExperimentConfig, pairs: int | None = None) -> Plan:
    steps, evaluations = steps_and_evaluations(cfg, pairs)
    return Plan(
        trials=planned_trials(cfg),
        evaluations_per_trial={size: evaluations for size in cfg.models.sizes},
        pairs_per_size=pairs,
        resources_per_trial=resources_per_trial(cfg),
        memory=memory_plan(cfg),
        steps_per_trial={size: steps for size in cfg.models.sizes},
    )


def describe_plan(cfg: ExperimentConfig, plan: Plan, counts: dict[str, int]) -> str:
    """The plan as the lines ``--dry-run`` prints."""
    lines = [f"experiment {cfg.name}: {len(plan.trials)} trials (objective x beta x size x seed)"]
    for size in cfg.models.sizes:
        objectives = cfg.sweep.size_objectives.get(size, cfg.train.objectives)
        n = sum(1 for t in plan.trials if t["size"] == size)
        lines.append(f"  {size}: {n} trials over {', '.join(objectives)}; {plan.evaluations_per_trial[size]} evaluations each")
    for kind in ("sft", "pairs", "eval"):
        if kind in counts:
            lines.append(f"  data.{kind}: {counts[kind]} rows from {sources.describe(getattr(cfg.data, kind))}")
    resources = ", ".join(f"{v:g} {k}" for k, v in plan.resources_per_trial.items())
    lines.append(f"  resources per trial: {resources}; at most {cfg.sweep.max_concurrent_trials} trials at once")
    lines += describe_memory(cfg, plan.memory)
    lines.append(describe_storage(cfg, plan.memory))
    lines.append(f"  judge: {cfg.evaluation.judge.type}; baseline: {cfg.evaluation.baseline}")
    lines.append(f"  expected evaluations in total: {plan.total_evaluations}")
    return "\n".join(lines)


def describe_costs(cfg: ExperimentConfig, plan: Plan) -> str:
    """What ``--dry-run`` prints about the sweep's cost (analysis/cost_estimate.py): the counts, the devices a trial
    holds, and seconds only where an earlier experiment of the same config family in ``storage`` measured them."""
    from overopt.analysis.cost_estimate import SizeCounts, earlier_measurements, estimate_lines

    counts = {
        size: SizeCounts(sum(t["size"] == size for t in plan.trials), plan.steps_per_trial[size], plan.evaluations_per_trial[size])
        for size in cfg.models.sizes
    }
    measured = earlier_measurements(cfg.storage, cfg)
    return "\n".join(estimate_lines(counts, holding(cfg), measured, cfg.sweep.max_concurrent_trials, plan.resources_per_trial, cfg.storage))
