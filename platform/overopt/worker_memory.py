"""The bytes one training or SFT worker holds: its model states under each ZeRO stage and one
micro-batch's activations, estimated from a model's shape before anything starts. Plain Python: no Ray,
and no GPU needed. What each part counts, and where it differs from DeepSpeed's own estimators, is
written in docs/memory-plan.md.

    memory = estimate_worker_memory(shape, num_workers=8, zero_stage=3, precision="bf16", optimizer="adamw")
    memory.total / GIB                                      # policy + gradients + optimizer + reference (+ activations if given)
    acts = activation_memory(shape, sequences=16, tokens=576, precision="bf16", gradient_checkpointing=False)
    memory = worker_memory(cfg, shape, "train")             # the same for a config's training (or "sft") worker
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

from overopt.config import ExperimentConfig
from overopt.model_shapes import ModelShape, sequence_tokens

GIB = 2**30  # train.device_memory_gb is in GiB, as torch.cuda.mem_get_info and nvidia-smi (MiB) count

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "float32": 4, "bfloat16": 2, "float16": 2}
MOMENT_BYTES = {"adamw": 8, "rmsprop": 4}  # fp32 optimizer state per parameter: AdamW 2 moments, RMSprop 1


@dataclass(frozen=True)
class ActivationMemory:
    """Bytes one forward and backward pass of a micro-batch adds on a training worker (docs/memory-plan.md)."""

    sequences: int  # per forward pass (a DAA pair is two)
    tokens: int  # per sequence
    gradient_checkpointing: bool
    layers: int  # what the decoder layers keep for the backward pass (their inputs only with checkpointing)
    recomputed: int  # with checkpointing: one layer's activations, recomputed in the backward pass
    logits: int  # the final norm, the logits, their fp32 copy and the log-softmax backward's three temporaries

    @property
    def total(self) -> int:
        return self.layers + self.recomputed + self.logits


def activation_memory(
    shape: ModelShape,
    *,
    sequences: int,
    tokens: int,
    precision: Literal["fp32", "bf16"],
    gradient_checkpointing: bool,
    attn_implementation: str | None = None,
) -> ActivationMemory:
    """The activation bytes of one forward/backward pass of ``sequences`` sequences of ``tokens``
    tokens through a model of ``shape`` (docs/memory-plan.md, "Activations")."""
    if not shape.has_architecture:
        raise ValueError("the model's architecture (layers, hidden size, MLP width, vocabulary) is unknown")
    w = DTYPE_BYTES[precision]
    h, f, n = shape.hidden_size, shape.intermediate_size, sequences * tokens
    # eager attention keeps each head's fp32 softmax (and its copy in w below 32 bits): a x s per token
    scores = shape.num_heads * tokens * (4 + (w if w < 4 else 0)) if attn_implementation == "eager" else 0
    kept_per_layer = (8 * h + 2 * f) * w + scores  # the KV cache holds K and V: attention saves those copies
    recomputed_layer = (10 * h + 2 * f) * w + scores  # no cache under checkpointing: V stays a view of all of QKV
    fp32_copy = 4 if w < 4 else 0  # logits.float() (overopt/logprobs.py) is the same tensor in fp32
    lse_backward = 12  # logsumexp's backward: (logits - lse), its exp and grad x exp, fp32, alive together
    return ActivationMemory(
        sequences=sequences,
        tokens=tokens,
        gradient_checkpointing=gradient_checkpointing,
        layers=shape.num_layers * n * (h * w if gradient_checkpointing else kept_per_layer),
        recomputed=n * recomputed_layer if gradient_checkpointing else 0,
        logits=n * (2 * h * w + shape.vocab_size * (w + fp32_copy + lse_backward)),
    )


@dataclass(frozen=True)
class WorkerMemory:
    """Estimated bytes per training worker (docs/memory-plan.md says what each part holds)."""

    shape: ModelShape
    num_workers: int
    zero_stage: int
    precision: str
    optimizer: str
    reference_mode: Literal["cache", "sharded"]
    weights: int  # the policy's weights (its partition under ZeRO-3, plus one gathered layer)
    gradients: int  # training-dtype gradients + the fp32 gradient the optimizer steps on
    optimizer_state: int  # fp32 master copy (where one exists) + moments
    reference: int  # 0 under reference mode "cache"
    load: int  # what one worker builds while loading: the whole model in models.dtype, or its shard under ZeRO-3
    deepspeed_estimate: int | None  # DeepSpeed's estimator (Adam, 16-bit mixed precision); None at stages 0/1
    activations: ActivationMemory | None = None  # one micro-batch's forward/backward; None = not counted
    scoring: int = 0  # evaluation.scoring training_workers: one scoring pass's logits (while training waits)

    @property
    def model_states(self) -> int:
        """Weights, gradients, optimizer state and reference: what stays between steps."""
        return self.weights + self.gradients + self.optimizer_state + self.reference

    @property
    def activation_bytes(self) -> int:
        """The larger of a training pass's activations and a scoring pass's logits (0: not counted)."""
        return max(self.activations.total if self.activations else 0, self.scoring)

    @property
    def total(self) -> int:
        """Per worker once training runs: model states and activations."""
        return self.model_states + self.activation_bytes

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
    activations: ActivationMemory | None = None,
    scoring: int = 0,
) -> WorkerMemory:
    """Bytes of model states on one of ``num_workers`` workers (docs/memory-plan.md, "Model states"), with
    the ``activations`` of one micro-batch and the ``scoring`` pass where given."""
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
        activations=activations,
        scoring=scoring,
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


def scoring_pass_bytes(shape: ModelShape, sequences: int, tokens: int, dtype_bytes: int) -> int:
    """One no-gradient log-prob pass (overopt/logprobs.py) of ``sequences`` sequences: the logits in the
    model's dtype, their fp32 copy (none in fp32) and the log-softmax's fp32 temporary. The layers keep
    nothing without gradients (one layer's transient is small next to the logits)."""
    return sequences * tokens * shape.vocab_size * (dtype_bytes + (4 if dtype_bytes < 4 else 0) + 4)


def worker_memory(
    cfg: ExperimentConfig,
    shape: ModelShape,
    stage: Literal["train", "sft"] = "train",
    *,
    num_workers: int | None = None,
    micro_batch: int | None = None,
    gradient_checkpointing: bool | None = None,
    reference: Literal["cache", "sharded"] | None = None,
) -> WorkerMemory:
    """One DAA training worker (``stage`` "train") or SFT worker ("sft") of ``cfg`` for a model of
    ``shape``: model states and one micro-batch's activations. The keyword arguments replace the
    config's ``<stage>.num_workers``, micro-batch (pairs or sequences; default the worker's whole share),
    ``<stage>.gradient_checkpointing`` and ``reference.mode``, for the refusals' search of what fits."""
    section = getattr(cfg, stage)
    workers = num_workers or section.num_workers
    micro = micro_batch or section.micro_batch_size or section.batch_size // workers
    checkpointing = section.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    activations = None
    if shape.has_architecture:
        activations = activation_memory(
            shape,
            sequences=(2 if stage == "train" else 1) * micro,
            tokens=sequence_tokens(cfg, shape),
            precision=cfg.train.precision,
            gradient_checkpointing=checkpointing,
            attn_implementation=cfg.models.attn_implementation,
        )
    if stage == "sft":
        # The SFT stage: AdamW, the training precision, ZeRO stage 0 with one worker (SFTSpec.zero_stage).
        return estimate_worker_memory(
            shape,
            num_workers=workers,
            zero_stage=cfg.train.zero_stage if workers > 1 else 0,
            precision=cfg.train.precision,
            optimizer="adamw",
            load_dtype=cfg.models.dtype,
            activations=activations,
        )
    scoring = 0
    if cfg.evaluation.scoring == "training_workers" and shape.has_architecture:
        tokens = sequence_tokens(cfg, shape, cfg.evaluation.generation.max_new_tokens)
        scoring = scoring_pass_bytes(shape, cfg.evaluation.scoring_batch_size, tokens, DTYPE_BYTES[cfg.train.precision])
    return estimate_worker_memory(
        shape,
        num_workers=workers,
        zero_stage=cfg.train.zero_stage,
        precision=cfg.train.precision,
        optimizer=cfg.train.optimizer,
        reference=reference or cfg.reference.mode,
        load_dtype=cfg.models.dtype,
        activations=activations,
        scoring=scoring,
    )


def size_text(nbytes: int) -> str:
    """Bytes for the table: MiB below a GiB (the built-in sizes), GiB above."""
    if nbytes == 0:
        return "0"
    return f"{nbytes / 2**20:.2f} MiB" if nbytes < GIB else f"{nbytes / GIB:.2f} GiB"


def activation_setting(cfg: ExperimentConfig, stage: Literal["train", "sft"], plan: WorkerMemory) -> str:
    """The micro-batch behind a plan's activations, in words."""
    section, acts = getattr(cfg, stage), plan.activations
    assert acts is not None  # called for plans that count activations only
    batch = (
        f"{acts.sequences // 2} pairs ({acts.sequences} sequences x {acts.tokens} tokens)"
        if stage == "train"
        else f"{acts.sequences} sequences x {acts.tokens} tokens"
    )
    passes = section.batch_size // plan.num_workers // (acts.sequences // 2 if stage == "train" else acts.sequences)
    each = f"{passes} passes per optimizer step" if passes > 1 else "the whole share in one pass"
    return f"micro-batch of {batch}, {each}, gradient checkpointing {'on' if acts.gradient_checkpointing else 'off'}"
