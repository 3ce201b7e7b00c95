"""The refusal of a training or SFT worker that does not fit ``train.device_memory_gb``: its estimate
part by part and the changes that would make it fit, searched with the same estimate (the largest
micro-batch, with gradient checkpointing only when none fits without; the fewest workers; ZeRO-3,
bf16, RMSprop). Plain Python: no Ray, no GPU (docs/memory-plan.md, "What a refusal suggests").

    worker_problem(cfg, size, worker_memory(cfg, shape), "train")   # None when it fits, else the sentence
"""

from __future__ import annotations

from typing import Literal

from overopt.config import ExperimentConfig
from overopt.worker_memory import GIB, WorkerMemory, activation_setting, size_text, worker_memory

MAX_WORKERS_SUGGESTED = 1024  # the largest train.num_workers a refusal searches for one that fits


def _limit_bytes(cfg: ExperimentConfig) -> float:
    """train.device_memory_gb in bytes, for the checks that run only when it is set (check_memory_plan)."""
    assert cfg.train.device_memory_gb is not None
    return cfg.train.device_memory_gb * GIB


def workers_that_fit(cfg: ExperimentConfig, plan: WorkerMemory, stage: Literal["train", "sft"]) -> int | None:
    """The fewest workers above the plan's (a divisor of the batch size, as the config requires, whose
    share the configured micro-batch divides) that fit, if any."""
    use_gpu, limit, section = cfg.train.use_gpu, _limit_bytes(cfg), getattr(cfg, stage)
    for n in range(plan.num_workers + 1, MAX_WORKERS_SUGGESTED + 1):
        if section.batch_size % n or (section.micro_batch_size and (section.batch_size // n) % section.micro_batch_size):
            continue
        if worker_memory(cfg, plan.shape, stage, num_workers=n, reference=plan.reference_mode).peak(use_gpu) <= limit:
            return n
    return None


def micro_batch_that_fits(cfg: ExperimentConfig, plan: WorkerMemory, stage: Literal["train", "sft"]) -> tuple[int, bool] | None:
    """The largest micro-batch (a divisor of the worker's share) that fits, without gradient
    checkpointing if any does (it costs about one more forward pass per step), else with it:
    (micro-batch, checkpointing), or None when even one pair (sequence) with checkpointing does not."""
    section, limit = getattr(cfg, stage), _limit_bytes(cfg)
    share = section.batch_size // section.num_workers
    for checkpointing in (False, True):
        for micro in sorted((d for d in range(1, share + 1) if share % d == 0), reverse=True):
            memory = worker_memory(
                cfg, plan.shape, stage, micro_batch=micro, gradient_checkpointing=checkpointing, reference=plan.reference_mode
            )
            if memory.peak(cfg.train.use_gpu) <= limit:
                return micro, checkpointing
    return None


def worker_problem(cfg: ExperimentConfig, size: str, plan: WorkerMemory, stage: Literal["train", "sft"]) -> str | None:
    """The refusal of one size in one stage (DAA training or SFT), or None when it fits."""
    t, section = cfg.train, getattr(cfg, stage)
    need = plan.peak(t.use_gpu)
    if need <= _limit_bytes(cfg):
        return None
    if plan.total >= plan.load or t.use_gpu:
        parts = (
            f"policy weights {size_text(plan.weights)} + gradients {size_text(plan.gradients)} + optimizer state "
            f"{size_text(plan.optimizer_state)} + reference {size_text(plan.reference)} + activations {size_text(plan.activation_bytes)}"
        )
        if plan.activations:
            parts += f" ({activation_setting(cfg, stage, plan)})"
    else:
        parts = f"the whole model in models.dtype={cfg.models.dtype} that each worker builds before DeepSpeed partitions it"
    hints = []
    fitting = micro_batch_that_fits(cfg, plan, stage) if plan.activations and plan.activation_bytes else None
    if fitting is not None:
        micro, checkpointing = fitting
        unit = "pairs" if stage == "train" else "sequences"
        hints.append(
            (f"{stage}.gradient_checkpointing: true with " if checkpointing and not section.gradient_checkpointing else "")
            + f"{stage}.micro_batch_size: {micro} ({micro} {unit} per forward/backward pass, "
            f"{section.batch_size // section.num_workers // micro} accumulated per step)"
        )
    sharding = t.zero_stage  # with more than one worker the SFT stage shards as training does
    n = workers_that_fit(cfg, plan, stage) if sharding >= 1 else None
    if n is not None:
        hints.append(f"{stage}.num_workers: {n} (ZeRO partitions the model states across workers)")
    elif sharding >= 1:
        hints.append(f"more {stage}.num_workers")
    if t.zero_stage < 3:
        hints.append("train.zero_stage: 3 (partitions weights and gradients too)")
    if t.precision == "fp32" and t.use_gpu:
        hints.append("train.precision: bf16 with models.dtype: bfloat16")
    if stage == "train" and t.optimizer == "adamw":
        hints.append("train.optimizer: rmsprop (one optimizer moment instead of two)")
    if not t.use_gpu and cfg.models.dtype == "float32" and plan.load > plan.total:
        hints.append("models.dtype: bfloat16 with train.precision: bf16 (halves the model each worker first builds)")
    where = "training worker" if stage == "train" else "SFT worker"
    return (
        f"models.sizes[{size}]: needs an estimated {size_text(need)} per {where} ({parts}; ZeRO-{plan.zero_stage}, "
        f"{plan.num_workers} workers, {plan.precision}, {plan.optimizer}), more than train.device_memory_gb={t.device_memory_gb:g}. "
        f"Try {'; or '.join(hints) if hints else 'a larger device'} (or raise train.device_memory_gb if the device really holds more)"
    )
