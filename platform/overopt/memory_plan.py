"""How much memory one training worker needs, estimated before anything starts (no weights allocated).

    shape = model_shape("EleutherAI/pythia-1b")            # parameters counted on the meta device
    memory = estimate_worker_memory(shape, num_workers=8, zero_stage=3, precision="bf16", optimizer="adamw")
    memory.total / GIB                                      # policy + gradients + optimizer + reference
    plans = memory_plan(cfg)                               # every size of a config: WorkerMemory or why unknown
    sft = sft_memory_plan(cfg, plans)                      # the same for the SFT stage's workers
    check_memory_plan(cfg)                                 # ConfigError when a size exceeds train.device_memory_gb

``jobs/scale_sweep.py --dry-run`` prints the table (``describe_memory``) and refuses a config that
does not fit. Plain Python: no Ray here, and no GPU needed.

What is counted: the *model states* of one DAA training worker (a Ray Train worker running one
DeepSpeed engine), in bytes per parameter P, with N = ``train.num_workers`` and "/N" meaning
"partitioned across the N workers" (DeepSpeed 0.19's ``stage_1_and_2.py`` and ``stage3.py``):

    part               bf16 (mixed precision)           fp32                          partitioned from
    weights            2  (bf16 working copy)           4                             ZeRO-3
    gradients          2  (bf16, reduced)               4                             ZeRO-2
    fp32 gradient      4  (flat copy made for the step) 4 under ZeRO-1/2/3, 0 at 0    ZeRO-1
    fp32 master        4                                4 under ZeRO-1/2 (a clone),   ZeRO-1
                                                        0 at 0 and 3 (aliased)
    optimizer moments  AdamW 8 (two fp32), RMSprop 4 (one fp32 square average)       ZeRO-1
    reference          cache: 0 (precomputed log-probs); sharded: 2 or 4 (frozen ZeRO-3 partition, /N)

ZeRO-3 also gathers one whole layer at a time (its weights and gradients in the training dtype):
``2 x`` (bytes of the training dtype) ``x largest_layer_params``, DeepSpeed's ``4 x largest_layer`` at
16 bits. The table's "gradients" column is the first two gradient rows, "optimizer" the master copy
and the moments (DeepSpeed's own split: its 12 bytes of optimizer state are 4 master + 8 Adam). The
fp32 gradient copy exists only during the optimizer step; it is counted because the step is the peak.

The SFT stage's workers (``sft.num_workers``, AdamW, the training precision; ZeRO stage 0 when there
is one worker, as ``SFTSpec.zero_stage``) follow the same table (``sft_memory_plan``) and the same check.

DeepSpeed ships estimators for model states under ZeRO-2 and ZeRO-3
(``estimate_zero2_model_states_mem_needs``, ``estimate_zero3_model_states_mem_needs``); their
per-GPU figure without offload is reported beside ours (``WorkerMemory.deepspeed_estimate``), but it
assumes Adam with 16-bit mixed precision, so it is not our number where the config differs:

- ZeRO-2: DeepSpeed's ``2 P + 18 P / N`` (2 replicated 16-bit weights; 2 + 4 gradients, 4 master,
  8 Adam moments partitioned) is exactly ours for bf16 + AdamW.
- ZeRO-3: DeepSpeed's ``4 L + 18 P / N`` counts 18 bytes per parameter where its ZeRO-2 estimator
  counts 20; we keep the same 20 under every stage (the bf16 weight partition is there too), so for
  bf16 + AdamW ours is DeepSpeed's plus ``2 P / N``: the more conservative of the two.
- fp32 training (our default on CPU): no 16-bit copies; weights and gradients take 4 bytes each, and
  a separate fp32 master exists only where DeepSpeed clones the partition (ZeRO-1/2).
- RMSprop (our default optimizer, momentum 0, not centred) keeps one fp32 state per parameter, not two.
- Stages 0 and 1 have no DeepSpeed estimator; they follow the same table.

Not counted: activations (they grow with ``train.batch_size / num_workers`` and the sequence length),
DeepSpeed's communication buckets, the CUDA context and allocator fragmentation, rank 0's consolidated
state dict at each saved checkpoint (the whole model in the training dtype, in host RAM), and the
evaluation tasks (they run in their own processes: ``evaluation_task_bytes`` is checked against the same
device memory). Leave headroom: the check compares model states only.
Each worker also builds the whole model (in ``models.dtype``) before DeepSpeed partitions it: on CPU
workers the host RAM is the device, so there the check uses the larger of that and the model states.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from overopt.config import ConfigError, ExperimentConfig

GIB = 2**30  # train.device_memory_gb is in GiB, as torch.cuda.mem_get_info and nvidia-smi (MiB) count
MAX_WORKERS_SUGGESTED = 1024  # the largest train.num_workers a refusal searches for one that fits

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "float32": 4, "bfloat16": 2, "float16": 2}
MOMENT_BYTES = {"adamw": 8, "rmsprop": 4}  # fp32 optimizer state per parameter: AdamW 2 moments, RMSprop 1


@dataclass(frozen=True)
class ModelShape:
    """What the estimators need from a model: its parameter count and its largest layer's."""

    total_params: int  # shared (tied) parameters counted once
    largest_layer_params: int  # the module with the most parameters of its own (not its children's)


@dataclass(frozen=True)
class WorkerMemory:
    """Estimated bytes per training worker (see the module docstring for what each part holds)."""

    shape: ModelShape
    num_workers: int
    zero_stage: int
    precision: str
    optimizer: str
    reference_mode: str
    weights: int  # the policy's weights (its partition under ZeRO-3, plus one gathered layer)
    gradients: int  # training-dtype gradients + the fp32 gradient the optimizer steps on
    optimizer_state: int  # fp32 master copy (where one exists) + moments
    reference: int  # 0 under reference mode "cache"
    load: int  # what one worker builds while loading: the whole model in models.dtype, or its shard under ZeRO-3
    deepspeed_estimate: int | None  # DeepSpeed's estimator (Adam, 16-bit mixed precision); None at stages 0/1

    @property
    def total(self) -> int:
        """Model states per worker once training runs."""
        return self.weights + self.gradients + self.optimizer_state + self.reference

    def peak(self, use_gpu: bool) -> int:
        """What the device must hold: on CPU workers the whole model is first built in the same RAM."""
        return self.total if use_gpu else max(self.total, self.load)


def _sharded(nbytes_per_param: int, params: int, divide: bool, workers: int) -> int:
    return math.ceil(nbytes_per_param * params / workers) if divide else nbytes_per_param * params


def estimate_worker_memory(
    shape: ModelShape,
    *,
    num_workers: int,
    zero_stage: int,
    precision: Literal["fp32", "bf16"],
    optimizer: Literal["adamw", "rmsprop"],
    reference: Literal["cache", "sharded"] = "cache",
    load_dtype: str = "float32",
) -> WorkerMemory:
    """Bytes of model states on one of ``num_workers`` workers (the table in the module docstring)."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, not {zero_stage!r}")
    if precision not in ("fp32", "bf16") or optimizer not in MOMENT_BYTES or reference not in ("cache", "sharded"):
        raise ValueError(f"unknown precision/optimizer/reference: {precision!r}, {optimizer!r}, {reference!r}")
    P, L, N, stage = shape.total_params, shape.largest_layer_params, num_workers, zero_stage
    w = DTYPE_BYTES[precision]
    mixed = precision == "bf16"
    gathered_layer = w * L if stage == 3 else 0  # ZeRO-3 gathers one layer's weights (and its gradients) whole

    weights = _sharded(w, P, stage >= 3, N) + gathered_layer
    fp32_grad = 4 if (mixed or stage >= 1) else 0  # fp32 stage 0: the torch optimizer steps on p.grad itself
    gradients = _sharded(w, P, stage >= 2, N) + _sharded(fp32_grad, P, stage >= 1, N) + gathered_layer
    master = 4 if (mixed or stage in (1, 2)) else 0  # fp32 ZeRO-3 aliases its partition; ZeRO-1/2 clone it
    optimizer_state = _sharded(master + MOMENT_BYTES[optimizer], P, stage >= 1, N)
    reference_bytes = math.ceil(w * P / N) if reference == "sharded" else 0
    return WorkerMemory(
        shape=shape,
        num_workers=N,
        zero_stage=stage,
        precision=precision,
        optimizer=optimizer,
        reference_mode=reference,
        weights=weights,
        gradients=gradients,
        optimizer_state=optimizer_state,
        reference=reference_bytes,
        # ZeRO-3 workers load under deepspeed.zero.Init (train/engine.py partitioned_loading): a shard each.
        load=DTYPE_BYTES[load_dtype] * (math.ceil(P / N) if stage == 3 else P),
        deepspeed_estimate=deepspeed_estimate(shape, N, stage),
    )


class _DropDeepSpeedAcceleratorWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()


def deepspeed_estimate(shape: ModelShape, num_workers: int, zero_stage: int, workers_per_node: int | None = None) -> int | None:
    """DeepSpeed's per-GPU model-state estimate without offload (Adam, 16-bit mixed precision); None at
    ZeRO-0/1 (it has no estimator for them) or where DeepSpeed cannot be imported.

    Without offload the per-GPU figure depends on the total number of workers only; ``workers_per_node``
    (default: all on one node) only changes DeepSpeed's host-memory figure, which is not used here.
    """
    if zero_stage < 2:
        return None
    per_node = workers_per_node or num_workers
    nodes = math.ceil(num_workers / per_node)
    quiet = _DropDeepSpeedAcceleratorWarning()
    logger = logging.getLogger("DeepSpeed")  # the logger DeepSpeed creates on import: drop its CPU-probe warning
    logger.addFilter(quiet)
    try:
        if zero_stage == 2:
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

            _, gpu = estimate_zero2_model_states_mem_needs(shape.total_params, per_node, nodes, cpu_offload=False)
        else:
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

            _, gpu, _ = estimate_zero3_model_states_mem_needs(
                shape.total_params, shape.largest_layer_params, per_node, nodes, cpu_offload=False, cpu_offload_params=False
            )
    except ImportError:
        return None
    finally:
        logger.removeFilter(quiet)
    return int(gpu)


def shape_of_config(config, trust_remote_code: bool = False) -> ModelShape:
    """Count a causal LM's parameters by building it from ``config`` on the meta device (nothing allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    return ModelShape(total_params=total, largest_layer_params=largest)


@lru_cache(maxsize=64)
def model_shape(name_or_path: str, vocab_size: int | None = None, trust_remote_code: bool = False) -> ModelShape:
    """The shape of a built-in size (needs ``vocab_size``), a local Hugging Face directory or a hub name.

    Only config.json is read (``AutoConfig``); OSError when it cannot be found (offline hub names).
    """
    from overopt.models import BUILTIN_SIZES, builtin_config

    if name_or_path in BUILTIN_SIZES:
        if vocab_size is None:
            raise ValueError(f"counting the built-in size {name_or_path!r} needs vocab_size")
        return shape_of_config(builtin_config(name_or_path, vocab_size))
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(os.path.expanduser(name_or_path), trust_remote_code=trust_remote_code)
    return shape_of_config(config, trust_remote_code)


@lru_cache(maxsize=8)
def _synthetic_vocab_size(task_json: str) -> int:
    from overopt.config import SyntheticTaskConfig
    from overopt.data.synthetic import SyntheticTask
    from overopt.data.tokenizer import build_synthetic_tokenizer

    return len(build_synthetic_tokenizer(SyntheticTask(**SyntheticTaskConfig.model_validate_json(task_json).model_dump())))


def policy_shape(cfg: ExperimentConfig, size: str) -> ModelShape:
    """The shape of the policy a size's trials train: its SFT checkpoint (when given as a local
    directory) or the size itself; a built-in size's vocabulary is its tokenizer's, as the workers build it."""
    from overopt.models import BUILTIN_SIZES, load_tokenizer
    from overopt.storage import is_uri

    checkpoint = cfg.sft.checkpoints.get(size)
    source = checkpoint if checkpoint and not (is_uri(checkpoint) and not checkpoint.startswith("file://")) else size
    source = source.removeprefix("file://")
    vocab_size = None
    if source in BUILTIN_SIZES:
        if cfg.models.tokenizer == "synthetic":
            vocab_size = _synthetic_vocab_size(cfg.data.synthetic.task.model_dump_json())
        elif cfg.models.tokenizer is None:
            raise ValueError(f"models.tokenizer is null but {size!r} is a built-in size with no tokenizer of its own")
        else:
            try:
                vocab_size = len(load_tokenizer(cfg.models.tokenizer, cfg.models))
            except OSError as error:  # not "model not found": the model is built in, its tokenizer is missing
                raise ValueError(f"tokenizer not found: {cfg.models.tokenizer!r}") from error
    return model_shape(source, vocab_size, cfg.models.trust_remote_code)


def memory_plan(cfg: ExperimentConfig, reference: Literal["cache", "sharded"] | None = None) -> dict[str, WorkerMemory | str]:
    """Per size of ``cfg.models.sizes``: the estimate for one training worker, or why it is unknown
    (``reference``: default ``cfg.reference.mode``)."""
    reference = reference or cfg.reference.mode
    plans: dict[str, WorkerMemory | str] = {}
    for size in cfg.models.sizes:
        try:
            shape = policy_shape(cfg, size)
        except OSError:
            plans[size] = "unknown (model not found)"
            continue
        except Exception as error:  # noqa: BLE001 - a plan must not stop at one odd model: it says why and goes on
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            plans[size] = f"unknown ({type(error).__name__}: {first})" if first else f"unknown ({type(error).__name__})"
            continue
        plans[size] = estimate_worker_memory(
            shape,
            num_workers=cfg.train.num_workers,
            zero_stage=cfg.train.zero_stage,
            precision=cfg.train.precision,
            optimizer=cfg.train.optimizer,
            reference=reference,
            load_dtype=cfg.models.dtype,
        )
    return plans


def sft_memory_plan(cfg: ExperimentConfig, plans: dict[str, WorkerMemory | str]) -> dict[str, WorkerMemory]:
    """Per size the SFT stage trains (sft.enabled and no sft.checkpoints entry): one SFT worker's model
    states. The SFT stage uses AdamW, ``sft.num_workers`` and the training precision, and ZeRO stage 0
    when it has a single worker (as ``SFTSpec.zero_stage`` in train/worker.py)."""
    if not cfg.sft.enabled:
        return {}
    stage = cfg.train.zero_stage if cfg.sft.num_workers > 1 else 0
    return {
        size: estimate_worker_memory(
            plan.shape, num_workers=cfg.sft.num_workers, zero_stage=stage, precision=cfg.train.precision, optimizer="adamw",
            load_dtype=cfg.models.dtype,
        )
        for size, plan in plans.items()
        if not isinstance(plan, str) and size not in cfg.sft.checkpoints
    }


def _size(nbytes: int) -> str:
    """Bytes for the table: MiB below a GiB (the built-in sizes), GiB above."""
    if nbytes == 0:
        return "0"
    return f"{nbytes / 2**20:.2f} MiB" if nbytes < GIB else f"{nbytes / GIB:.2f} GiB"


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
            f"reference: {reference}; model states only, no activations):"
        )
    ]
    header = ("size", "params", "weights", "grads", "optimizer", "reference", "total", "at load (RAM)", f"vs {device}")
    rows, unknown = [header], {}
    for size, plan in plans.items():
        if isinstance(plan, str):
            unknown[size] = plan
            continue
        verdict = "no limit set" if limit is None else ("fits" if plan.peak(t.use_gpu) <= limit * GIB else "DOES NOT FIT")
        if limit is not None:
            verdict += f" ({_size(plan.peak(t.use_gpu))} of {limit:g} GiB)"
        rows.append((
            size, _params(plan.shape.total_params), _size(plan.weights), _size(plan.gradients), _size(plan.optimizer_state),
            _size(plan.reference), _size(plan.total), _size(plan.load), verdict,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    widths[0] = max([widths[0], *map(len, unknown)])
    lines += ["    " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows if len(rows) > 1]
    lines += [f"    {size.ljust(widths[0])}  {reason}" for size, reason in unknown.items()]
    known = {size: p for size, p in plans.items() if not isinstance(p, str) and p.deepspeed_estimate is not None}
    if known:
        estimates = ", ".join(f"{size} {_size(p.deepspeed_estimate)}" for size, p in known.items())
        lines.append(f"    DeepSpeed's own ZeRO-{t.zero_stage} estimate (assumes Adam + 16-bit mixed precision): {estimates}")
    sft = sft_memory_plan(cfg, plans)
    if sft:
        first = next(iter(sft.values()))
        each = ", ".join(
            f"{size} {_size(p.total)}" + ("" if limit is None or p.peak(t.use_gpu) <= limit * GIB else " DOES NOT FIT")
            for size, p in sft.items()
        )
        lines.append(f"    SFT stage per worker (AdamW, ZeRO-{first.zero_stage}, {first.num_workers} workers, {t.precision}): {each}")
    evaluation = {size: evaluation_task_bytes(cfg, p.shape) for size, p in plans.items() if not isinstance(p, str)}
    if evaluation:
        e = cfg.evaluation
        each = ", ".join(
            f"{size} {_size(need)}" + ("" if limit is None or need <= limit * GIB else " DOES NOT FIT") for size, need in evaluation.items()
        )
        lines.append(f"    evaluation per task or engine GPU (scoring: {e.scoring}, generation: {e.generation.backend}, weights only): {each}")
    if limit is None:
        lines.append("    set train.device_memory_gb to the memory of one training device to have the plan checked")
    return lines


def _workers_that_fit(cfg: ExperimentConfig, plan: WorkerMemory, batch_size: int, zero_stage: int) -> int | None:
    """The fewest workers above the plan's (a divisor of the batch size, as the config requires) that fit
    under ``zero_stage``, if any."""
    use_gpu, limit = cfg.train.use_gpu, cfg.train.device_memory_gb * GIB
    for n in range(plan.num_workers + 1, MAX_WORKERS_SUGGESTED + 1):
        if batch_size % n:
            continue
        bigger = estimate_worker_memory(
            plan.shape, num_workers=n, zero_stage=zero_stage, precision=plan.precision, optimizer=plan.optimizer,
            reference=plan.reference_mode, load_dtype=cfg.models.dtype,
        )
        if bigger.peak(use_gpu) <= limit:
            return n
    return None


def _problem(cfg: ExperimentConfig, size: str, plan: WorkerMemory, stage: Literal["train", "sft"]) -> str | None:
    """The refusal of one size in one stage (DAA training or SFT), or None when it fits."""
    t = cfg.train
    need = plan.peak(t.use_gpu)
    if need <= t.device_memory_gb * GIB:
        return None
    if plan.total >= plan.load or t.use_gpu:
        parts = (
            f"policy weights {_size(plan.weights)} + gradients {_size(plan.gradients)} + optimizer state "
            f"{_size(plan.optimizer_state)} + reference {_size(plan.reference)}"
        )
    else:
        parts = f"the whole model in models.dtype={cfg.models.dtype} that each worker builds before DeepSpeed partitions it"
    hints = []
    sharding = t.zero_stage  # with more than one worker the SFT stage shards as training does
    n = _workers_that_fit(cfg, plan, getattr(cfg, stage).batch_size, sharding) if sharding >= 1 else None
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
        f"models.sizes[{size}]: needs an estimated {_size(need)} per {where} ({parts}; ZeRO-{plan.zero_stage}, "
        f"{plan.num_workers} workers, {plan.precision}, {plan.optimizer}), more than train.device_memory_gb={t.device_memory_gb:g}. "
        f"Try {'; or '.join(hints) if hints else 'a larger device'} (or raise train.device_memory_gb if the device really holds more)"
    )


def _evaluation_loads(cfg: ExperimentConfig, shape: ModelShape) -> tuple[int, int, int]:
    """(whole models a scoring task loads, bytes of one model in ``models.dtype``, bytes a vLLM engine
    holds per GPU). A scoring task loads the policy and the reference whole (``evaluation.scoring:
    tasks``), or only the policy it samples with (``training_workers`` with Hugging Face generation),
    or nothing (``training_workers`` with vLLM); a vLLM engine splits the policy over its GPUs."""
    evaluation = cfg.evaluation
    model = shape.total_params * DTYPE_BYTES[cfg.models.dtype]
    whole = 2 if evaluation.scoring == "tasks" else (1 if evaluation.generation.backend == "hf" else 0)
    engine_gpus = evaluation.task_gpus(cfg.train.use_gpu)
    engine = math.ceil(model / engine_gpus) if evaluation.generation.backend == "vllm" and engine_gpus >= 1 else 0
    return whole, model, engine


def evaluation_task_bytes(cfg: ExperimentConfig, shape: ModelShape) -> int:
    """The weights one evaluation process holds (``_evaluation_loads``). Not counted: the scoring
    chunk's logits and the KV cache (vLLM takes a fraction of its GPU for it)."""
    whole, model, engine = _evaluation_loads(cfg, shape)
    return max(whole * model, engine)


def _evaluation_problem(cfg: ExperimentConfig, size: str, plan: WorkerMemory) -> str | None:
    """The refusal of a size whose evaluation processes cannot hold what they load, or None."""
    limit, evaluation = cfg.train.device_memory_gb, cfg.evaluation
    whole, model, engine = _evaluation_loads(cfg, plan.shape)
    if max(whole * model, engine) <= limit * GIB:
        return None
    if whole * model >= engine:
        what = f"{_size(whole * model)}: {'the policy and the reference' if whole == 2 else 'the policy it samples with'} whole"
    else:
        what = f"{_size(engine)}: the vLLM engine's share of the policy on each of its GPUs"
    hints = []
    if evaluation.scoring == "tasks":
        hints.append("evaluation.scoring: training_workers with reference.mode: sharded (the training workers score with their ZeRO-3 shards)")
    if evaluation.generation.backend == "hf":
        hints.append("evaluation.generation.backend: vllm with evaluation.gpus_per_task > 1 (a tensor-parallel engine samples)")
    elif cfg.train.use_gpu:
        hints.append("more evaluation.gpus_per_task (the vLLM engine's tensor-parallel GPUs)")
    return (
        f"models.sizes[{size}]: each evaluation task would hold {what} (models.dtype={cfg.models.dtype}, evaluation.scoring: "
        f"{evaluation.scoring}, generation backend {evaluation.generation.backend}), more than train.device_memory_gb={limit:g}. "
        f"Try {'; or '.join(hints) if hints else 'a larger device'}"
    )


def memory_problems(cfg: ExperimentConfig, plans: dict[str, WorkerMemory | str] | None = None) -> list[str]:
    """One sentence per size and stage (DAA training, SFT, evaluation) whose estimate exceeds
    ``train.device_memory_gb`` (none when it is unset).

    Sizes whose shape is unknown are skipped: the input checks report those models as not found.
    """
    if cfg.train.device_memory_gb is None:
        return []
    plans = memory_plan(cfg) if plans is None else plans
    problems = [_problem(cfg, size, plan, "train") for size, plan in plans.items() if not isinstance(plan, str)]
    problems += [_problem(cfg, size, plan, "sft") for size, plan in sft_memory_plan(cfg, plans).items()]
    problems += [_evaluation_problem(cfg, size, plan) for size, plan in plans.items() if not isinstance(plan, str)]
    return [p for p in problems if p]


def check_memory_plan(cfg: ExperimentConfig) -> None:
    """Refuse, before Ray starts, a config whose training workers cannot hold their model states."""
    problems = memory_problems(cfg)
    if problems:
        raise ConfigError("the memory plan does not fit:\n" + "\n".join(f"  {p}" for p in problems))


# ------------------------------------------------------------------------------------------------
# Storage: what a sweep's checkpoints occupy at once


def checkpoint_storage_bytes(cfg: ExperimentConfig, plans: dict[str, WorkerMemory | str] | None = None) -> int:
    """The most bytes a sweep's checkpoints hold in its storage at once (sizes whose shape is unknown
    count as 0). Per running trial: the consolidated Hugging Face checkpoints of its open evaluations
    (``evaluation.slots`` + the one being written) in the training dtype, and, with checkpointing,
    ``checkpointing.keep`` + 1 engine checkpoints (the training-dtype weights and every worker's
    optimizer state). Times the trials that run at once, all of the largest size."""
    plans = memory_plan(cfg) if plans is None else plans
    dtype_bytes = {"fp32": 4, "bf16": 2}[cfg.train.precision]
    largest = 0
    for plan in plans.values():
        if isinstance(plan, str):
            continue
        params = plan.shape.total_params
        per_trial = (cfg.evaluation.slots + 1) * params * dtype_bytes
        if cfg.checkpointing.enabled:
            optimizer = plan.optimizer_state * (plan.num_workers if plan.zero_stage >= 1 else 1)  # ZeRO: each rank saves its part
            per_trial += (cfg.checkpointing.keep + 1) * (params * dtype_bytes + optimizer)
        largest = max(largest, per_trial)
    trials = len(cfg.train.objectives) * max(len(b) for b in cfg.train.betas.values()) * len(cfg.models.sizes) * len(cfg.sweep.seeds)
    return largest * max(1, min(cfg.sweep.max_concurrent_trials, trials))


def describe_storage(cfg: ExperimentConfig, plans: dict[str, WorkerMemory | str] | None = None) -> str:
    """The dry run's storage line: what checkpoints may occupy at once, and whether trials can resume."""
    resume = (f"engine checkpoints kept: {cfg.checkpointing.keep} per trial, {cfg.checkpointing.max_failures} restarts"
              if cfg.checkpointing.enabled else "no engine checkpoints (an interrupted trial restarts from step 0)")
    return f"  storage: checkpoints may take {_size(checkpoint_storage_bytes(cfg, plans))} at once; {resume}"


def storage_problem(cfg: ExperimentConfig, free_bytes: int | None) -> str | None:
    """Why the planned checkpoints cannot fit ``free_bytes`` (None: unbounded, an object store), or None."""
    if free_bytes is None:
        return None
    need = checkpoint_storage_bytes(cfg)
    if need <= free_bytes:
        return None
    return (
        f"storage {cfg.storage!r} has {_size(free_bytes)} free but the sweep's checkpoints may take {_size(need)} at once "
        f"({cfg.sweep.max_concurrent_trials} trials at once x (evaluation checkpoints"
        + (f" + checkpointing.keep={cfg.checkpointing.keep} engine checkpoints" if cfg.checkpointing.enabled else "")
        + ")): free space, or lower sweep.max_concurrent_trials / checkpointing.keep"
    )
