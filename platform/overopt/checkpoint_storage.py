"""What a sweep's checkpoints occupy in its storage at once, from the memory plan's model shapes: the
dry run's storage line, and the refusal of a storage location without room for them (sweep/run.py,
before the stages start). Plain Python: no Ray.

    checkpoint_storage_bytes(cfg)          # the most bytes the sweep's checkpoints hold at once
    storage_problem(cfg, free_bytes)       # None, or why they cannot fit
"""

from __future__ import annotations

from overopt.config import ExperimentConfig
from overopt.memory_plan import memory_plan
from overopt.trial_plan import evaluation_slots
from overopt.worker_memory import WorkerMemory, size_text


def checkpoint_storage_bytes(cfg: ExperimentConfig, plans: dict[str, WorkerMemory | str] | None = None) -> int:
    """The most bytes a sweep's checkpoints hold in its storage at once (sizes whose shape is unknown
    count as 0). Per running trial: the consolidated Hugging Face checkpoints of its open evaluations
    (``trial_plan.evaluation_slots`` + the one being written) in the training dtype, and, with checkpointing,
    ``checkpointing.keep`` + 1 engine checkpoints (the training-dtype weights and every worker's
    optimizer state). Times the trials that run at once, all of the largest size."""
    plans = memory_plan(cfg) if plans is None else plans
    dtype_bytes = {"fp32": 4, "bf16": 2}[cfg.train.precision]
    largest = 0
    for plan in plans.values():
        if isinstance(plan, str):
            continue
        params = plan.shape.total_params
        per_trial = (evaluation_slots(cfg.evaluation) + 1) * params * dtype_bytes
        if cfg.checkpointing.enabled:
            optimizer = plan.optimizer_state * (plan.num_workers if plan.zero_stage >= 1 else 1)  # ZeRO: each rank saves its part
            per_trial += (cfg.checkpointing.keep + 1) * (params * dtype_bytes + optimizer)
        largest = max(largest, per_trial)
    trials = len(cfg.train.objectives) * max(len(b) for b in cfg.train.betas.values()) * len(cfg.models.sizes) * len(cfg.sweep.seeds)
    return largest * max(1, min(cfg.sweep.max_concurrent_trials, trials))


def describe_storage(cfg: ExperimentConfig, plans: dict[str, WorkerMemory | str] | None = None) -> str:
    """The dry run's storage line: what checkpoints may occupy at once, and whether trials can resume."""
    resume = (
        f"engine checkpoints kept: {cfg.checkpointing.keep} per trial, {cfg.checkpointing.max_failures} restarts"
        if cfg.checkpointing.enabled
        else "no engine checkpoints (an interrupted trial restarts from step 0)"
    )
    return f"  storage: checkpoints may take {size_text(checkpoint_storage_bytes(cfg, plans))} at once; {resume}"


def storage_problem(cfg: ExperimentConfig, free_bytes: int | None) -> str | None:
    """Why the planned checkpoints cannot fit ``free_bytes`` (None: unbounded, an object store), or None."""
    if free_bytes is None:
        return None
    need = checkpoint_storage_bytes(cfg)
    if need <= free_bytes:
        return None
    return (
        f"storage {cfg.storage!r} has {size_text(free_bytes)} free but the sweep's checkpoints may take {size_text(need)} at once "
        f"({cfg.sweep.max_concurrent_trials} trials at once x (evaluation checkpoints"
        + (f" + checkpointing.keep={cfg.checkpointing.keep} engine checkpoints" if cfg.checkpointing.enabled else "")
        + ")): free space, or lower sweep.max_concurrent_trials / checkpointing.keep"
    )
