"""How much memory each process of a sweep needs, estimated per model size before anything starts (no
weights allocated): the memory plan, the dry run's table, and the check that refuses a config that
does not fit ``train.device_memory_gb``. Plain Python: no Ray here, and no GPU needed.

    plans = memory_plan(cfg)                               # every size of a config: WorkerMemory or why unknown
    sft = sft_memory_plan(cfg, plans)                      # the same for the SFT stage's workers
    lines = describe_memory(cfg, plans)                    # the table ``jobs/scale_sweep.py --dry-run`` prints
    check_memory_plan(cfg)                                 # ConfigError when a size exceeds train.device_memory_gb

The estimates of one worker are in worker_memory.py (model states and activations), of the evaluation
processes in evaluation_memory.py, the model shapes they start from in model_shapes.py; memory_fit.py
words a refusal and the micro-batch, checkpointing or workers that would fit. docs/memory-plan.md says
what is counted and why.
"""

from __future__ import annotations

from typing import Literal

from overopt.config import ConfigError, ExperimentConfig
from overopt.evaluation_memory import describe_evaluation, evaluation_problems
from overopt.memory_fit import worker_problem
from overopt.model_shapes import policy_shape
from overopt.worker_memory import GIB, WorkerMemory, activation_setting, size_text, worker_memory


def memory_plan(cfg: ExperimentConfig, reference: Literal["cache", "sharded"] | None = None) -> dict[str, WorkerMemory | str]:
    """Per size of ``cfg.models.sizes``: the estimate for one training worker, or why it is unknown
    (``reference``: default ``cfg.reference.mode``)."""
    plans: dict[str, WorkerMemory | str] = {}
    for size in cfg.models.sizes:
        try:
            plans[size] = worker_memory(cfg, policy_shape(cfg, size), reference=reference)
        except OSError:
            plans[size] = "unknown (model not found)"
        except Exception as error:  # noqa: BLE001 - a plan must not stop at one odd model: it says why and goes on
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            plans[size] = f"unknown ({type(error).__name__}: {first})" if first else f"unknown ({type(error).__name__})"
    return plans


def sft_memory_plan(cfg: ExperimentConfig, plans: dict[str, WorkerMemory | str]) -> dict[str, WorkerMemory]:
    """Per size the SFT stage trains (sft.enabled and no sft.checkpoints entry): one SFT worker's model
    states and activations. The SFT stage uses AdamW, ``sft.num_workers`` and the training precision,
    and ZeRO stage 0 when it has a single worker (as ``SFTSpec.zero_stage`` in train/sft_worker.py)."""
    if not cfg.sft.enabled:
        return {}
    return {
        size: worker_memory(cfg, plan.shape, "sft")
        for size, plan in plans.items()
        if not isinstance(plan, str) and size not in cfg.sft.checkpoints
    }


def _params(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def describe_memory(cfg: ExperimentConfig, plans: dict[str, WorkerMemory | str], reference: str | None = None) -> list[str]:
    """The dry-run's memory table: one row per size, bytes per training worker, and the verdict."""
    reference = reference or cfg.reference.mode
    t = cfg.train
    limit = t.device_memory_gb
    device = "GPU" if t.use_gpu else "host RAM"
    lines = [
        (
            f"  memory per training worker (ZeRO-{t.zero_stage}, {t.num_workers} workers, {t.precision}, {t.optimizer}, "
            f"reference: {reference}; model states + one micro-batch's activations):"
        )
    ]
    header = ("size", "params", "weights", "grads", "optimizer", "reference", "activations", "total", "at load (RAM)", f"vs {device}")
    rows, unknown = [header], {}
    for size, plan in plans.items():
        if isinstance(plan, str):
            unknown[size] = plan
            continue
        verdict = "no limit set" if limit is None else ("fits" if plan.peak(t.use_gpu) <= limit * GIB else "DOES NOT FIT")
        if limit is not None:
            verdict += f" ({size_text(plan.peak(t.use_gpu))} of {limit:g} GiB)"
        rows.append(
            (
                size,
                _params(plan.shape.total_params),
                size_text(plan.weights),
                size_text(plan.gradients),
                size_text(plan.optimizer_state),
                size_text(plan.reference),
                size_text(plan.activation_bytes) if plan.activations else "unknown",
                size_text(plan.total),
                size_text(plan.load),
                verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    widths[0] = max([widths[0], *map(len, unknown)])
    lines += ["    " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows if len(rows) > 1]
    lines += [f"    {size.ljust(widths[0])}  {reason}" for size, reason in unknown.items()]
    known = {size: p for size, p in plans.items() if not isinstance(p, str)}
    counted = {size: p for size, p in known.items() if p.activations}
    if counted:
        first = next(iter(counted.values()))
        activations = {size: p.activations for size, p in counted.items() if p.activations}
        parts = ", ".join(
            f"{size} {size_text(a.layers)} + {size_text(a.recomputed)} + {size_text(a.logits)}" for size, a in activations.items()
        )
        lines.append(f"    activations: {activation_setting(cfg, 'train', first)}; layers + recomputed layer + logits: {parts}")
        scoring = {size: p.scoring for size, p in counted.items() if p.scoring}
        if scoring:
            each = ", ".join(f"{size} {size_text(b)}" for size, b in scoring.items())
            lines.append(
                f"    scoring on the training workers (evaluation.scoring_batch_size={cfg.evaluation.scoring_batch_size}, "
                f"while training waits; the larger counts): {each}"
            )
    estimated = {size: p.deepspeed_estimate for size, p in known.items() if p.deepspeed_estimate is not None}
    if estimated:
        estimates = ", ".join(f"{size} {size_text(b)}" for size, b in estimated.items())
        lines.append(f"    DeepSpeed's own ZeRO-{t.zero_stage} estimate (model states; assumes Adam + 16-bit mixed precision): {estimates}")
    sft = sft_memory_plan(cfg, plans)
    if sft:
        first = next(iter(sft.values()))
        each = ", ".join(
            f"{size} {size_text(p.total)}"
            + (f" (activations {size_text(p.activation_bytes)})" if p.activations else "")
            + ("" if limit is None or p.peak(t.use_gpu) <= limit * GIB else " DOES NOT FIT")
            for size, p in sft.items()
        )
        setting = f"; {activation_setting(cfg, 'sft', first)}" if first.activations else ""
        lines.append(
            f"    SFT stage per worker (AdamW, ZeRO-{first.zero_stage}, {first.num_workers} workers, {t.precision}{setting}): {each}"
        )
    lines += describe_evaluation(cfg, {size: p.shape for size, p in known.items()})
    if limit is None:
        lines.append("    set train.device_memory_gb to the memory of one training device to have the plan checked")
    return lines


def memory_problems(cfg: ExperimentConfig, plans: dict[str, WorkerMemory | str] | None = None) -> list[str]:
    """One sentence per size and stage (DAA training, SFT, evaluation) whose estimate exceeds
    ``train.device_memory_gb`` (none when it is unset).

    Sizes whose shape is unknown are skipped: the input checks report those models as not found.
    """
    if cfg.train.device_memory_gb is None:
        return []
    plans = memory_plan(cfg) if plans is None else plans
    problems = [worker_problem(cfg, size, plan, "train") for size, plan in plans.items() if not isinstance(plan, str)]
    problems += [worker_problem(cfg, size, plan, "sft") for size, plan in sft_memory_plan(cfg, plans).items()]
    problems += [p for size, plan in plans.items() if not isinstance(plan, str) for p in evaluation_problems(cfg, size, plan)]
    return [p for p in problems if p]


def check_memory_plan(cfg: ExperimentConfig) -> None:
    """Refuse, before Ray starts, a config whose training, SFT or evaluation processes cannot hold what they need."""
    problems = memory_problems(cfg)
    if problems:
        raise ConfigError("the memory plan does not fit:\n" + "\n".join(f"  {p}" for p in problems))
