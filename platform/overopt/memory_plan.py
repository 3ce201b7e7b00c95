"""How much memory one training worker needs, estimated before anything starts (no weights allocated).

    shape = model_shape("EleutherAI/pythia-1b")            # parameters counted on the meta device
    memory = estimate_worker_memory(shape, num_workers=8, zero_stage=3, precision="bf16", optimizer="adamw")
    memory.total / GIB                                      # policy + gradients + optimizer + reference (+ activations if given)
    acts = activation_memory(shape, sequences=16, tokens=576, precision="bf16", gradient_checkpointing=False)
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

Activations (``activation_memory``): what one forward and backward pass of a micro-batch adds on top
of the model states, on each training worker. A DAA micro-batch of m pairs is 2m sequences (chosen and
rejected go through the policy in one pass), SFT's m sequences; each as long as the data allows
(``data.max_prompt_tokens + data.max_response_tokens``; the model's positions where unlimited). Per
token, in bytes, with w the training dtype's bytes, h the hidden size, f the MLP's, V the vocabulary
and L layers, counted from what Hugging Face's GPT-NeoX code keeps for the backward pass (each tensor
saved by autograd, measured with saved-tensor hooks) and what the log-probs (overopt/logprobs.py) add:

    decoder layers, no checkpointing  L x (8 h + 2 f) x w   the layer's input, the two norms' outputs,
                                      Q after the rotary embedding, K and V as the KV cache copies them
                                      (attention saves those copies), attention's output and its
                                      reshaped copy, the MLP's up-projection and activation outputs
    with gradient checkpointing       L x h x w             each layer's input only, plus
                                      (10 h + 2 f) x w      one layer recomputed in the backward pass
                                                            (without the KV cache V stays a view of QKV)
    final norm                        2 h x w               its input and output
    logits                            V x (w + c + 12)      the logits (w), their fp32 copy for the
                                                            log-softmax (c = 4 in bf16; fp32 needs none),
                                                            and the three fp32 temporaries of the same size
                                                            that logsumexp's backward, grad x exp(logits -
                                                            logsumexp), holds at once: the peak, at the
                                                            start of the backward pass

Attention is Hugging Face's sdpa (flash or memory-efficient kernels): no sequence x sequence scores are
kept; ``models.attn_implementation: eager`` adds heads x sequence x (4 + w) per token per layer (the
fp32 softmax and its copy in w). Korthikanti et al. (2022)'s 16-bit estimate, (34 h + 5 a s) bytes per
token per layer, counts GPT-3's dropout masks and the attention scores; Pythia has no dropout and sdpa
keeps no scores, and w (8 h + 2 f) = 32 h bytes at f = 4 h is the same order. benchmarks/memory_plan.py
measures the term on CPU against this count (docs/benchmarks.md). With ``evaluation.scoring:
training_workers`` a worker also scores samples, ``evaluation.scoring_batch_size`` sequences per
no-gradient pass, while training waits: the larger of the two counts.

Not counted: DeepSpeed's communication buckets, the CUDA context and allocator fragmentation, rank 0's
consolidated state dict at each saved checkpoint (the whole model in the training dtype, in host RAM),
the attention mask (a byte per sequence x sequence entry) and the sharded reference's no-gradient pass
(before the policy's, and smaller). Each worker also builds the whole model (in ``models.dtype``)
before DeepSpeed partitions it: on CPU workers the host RAM is the device, so there the check uses the
larger of that and what training holds.

Evaluation runs in its own processes, each checked against the same device memory
(``scoring_task_parts``, ``vllm_engine_bytes``): a scoring task holds the models it loads whole in ``models.dtype`` (policy and reference, or
the policy it samples with), one scoring pass's logits (``evaluation.scoring_batch_size`` sequences:
the logits, their fp32 copy, the log-softmax's temporary), with Hugging Face sampling the KV cache of
``evaluation.generation.batch_size`` prompts, and a reward-model judge's weights; a vLLM engine takes
``gpu_memory_utilization`` (0.9, or 0.9 x its share of a GPU) of each of its GPUs, which must hold its
share of the weights and the KV cache of at least one sequence of the model's full length.
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
    """What the estimators need from a model: its parameter count and its largest layer's, and for the
    activations its architecture (0 where unknown: then no activation estimate)."""

    total_params: int  # shared (tied) parameters counted once
    largest_layer_params: int  # the module with the most parameters of its own (not its children's)
    num_layers: int = 0  # decoder layers
    hidden_size: int = 0
    num_heads: int = 0  # attention heads (queries)
    num_kv_heads: int = 0  # key/value heads (fewer under grouped-query attention): the KV cache's size
    intermediate_size: int = 0  # the MLP's hidden width
    vocab_size: int = 0  # the embedding's rows: the logits' width
    max_positions: int = 0  # the longest sequence the model takes (max_position_embeddings)

    @property
    def has_architecture(self) -> bool:
        return min(self.num_layers, self.hidden_size, self.intermediate_size, self.vocab_size) > 0


@dataclass(frozen=True)
class ActivationMemory:
    """Bytes one forward and backward pass of a micro-batch adds on a training worker (the module
    docstring's "Activations")."""

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
    tokens through a model of ``shape`` (the module docstring's table)."""
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
    """Bytes of model states on one of ``num_workers`` workers (the table in the module docstring), with
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


def shape_of_config(config, trust_remote_code: bool = False) -> ModelShape:
    """Count a causal LM's parameters by building it from ``config`` on the meta device (nothing allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config

    def first(*names: str) -> int:  # the same quantity under each model family's name (GPT-NeoX/Llama, GPT-2)
        return next((int(value) for name in names if (value := getattr(text, name, None)) is not None), 0)

    hidden, heads = first("hidden_size", "n_embd"), first("num_attention_heads", "n_head")
    return ModelShape(
        total_params=total,
        largest_layer_params=largest,
        num_layers=first("num_hidden_layers", "n_layer"),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=first("num_key_value_heads") or heads,
        intermediate_size=first("intermediate_size", "n_inner") or 4 * hidden,  # GPT-2 leaves n_inner unset: 4 h
        vocab_size=first("vocab_size"),
        max_positions=first("max_position_embeddings", "n_positions"),
    )


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


def sequence_tokens(cfg: ExperimentConfig, shape: ModelShape, response_tokens: int | None = None) -> int:
    """The longest sequence a forward pass takes: ``data.max_prompt_tokens`` + the response's limit
    (``data.max_response_tokens``, or ``response_tokens`` where given), at most the model's positions;
    the model's positions where a limit is unset."""
    prompt, response = cfg.data.max_prompt_tokens, response_tokens or cfg.data.max_response_tokens
    if prompt is None or response is None:
        if not shape.max_positions:
            raise ValueError("no data.max_prompt_tokens / data.max_response_tokens and the model's positions are unknown")
        return shape.max_positions
    return min(prompt + response, shape.max_positions) if shape.max_positions else prompt + response


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
    and ZeRO stage 0 when it has a single worker (as ``SFTSpec.zero_stage`` in train/worker.py)."""
    if not cfg.sft.enabled:
        return {}
    return {
        size: worker_memory(cfg, plan.shape, "sft")
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


def _activation_setting(cfg: ExperimentConfig, stage: Literal["train", "sft"], plan: WorkerMemory) -> str:
    """The micro-batch behind a plan's activations, in words."""
    section, acts = getattr(cfg, stage), plan.activations
    batch = (
        f"{acts.sequences // 2} pairs ({acts.sequences} sequences x {acts.tokens} tokens)"
        if stage == "train"
        else f"{acts.sequences} sequences x {acts.tokens} tokens"
    )
    passes = section.batch_size // plan.num_workers // (acts.sequences // 2 if stage == "train" else acts.sequences)
    each = f"{passes} passes per optimizer step" if passes > 1 else "the whole share in one pass"
    return f"micro-batch of {batch}, {each}, gradient checkpointing {'on' if acts.gradient_checkpointing else 'off'}"


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
            verdict += f" ({_size(plan.peak(t.use_gpu))} of {limit:g} GiB)"
        rows.append(
            (
                size,
                _params(plan.shape.total_params),
                _size(plan.weights),
                _size(plan.gradients),
                _size(plan.optimizer_state),
                _size(plan.reference),
                _size(plan.activation_bytes) if plan.activations else "unknown",
                _size(plan.total),
                _size(plan.load),
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
        parts = ", ".join(
            f"{size} {_size(p.activations.layers)} + {_size(p.activations.recomputed)} + {_size(p.activations.logits)}"
            for size, p in counted.items()
        )
        lines.append(f"    activations: {_activation_setting(cfg, 'train', first)}; layers + recomputed layer + logits: {parts}")
        scoring = {size: p.scoring for size, p in counted.items() if p.scoring}
        if scoring:
            each = ", ".join(f"{size} {_size(b)}" for size, b in scoring.items())
            lines.append(
                f"    scoring on the training workers (evaluation.scoring_batch_size={cfg.evaluation.scoring_batch_size}, "
                f"while training waits; the larger counts): {each}"
            )
    estimated = {size: p for size, p in known.items() if p.deepspeed_estimate is not None}
    if estimated:
        estimates = ", ".join(f"{size} {_size(p.deepspeed_estimate)}" for size, p in estimated.items())
        lines.append(f"    DeepSpeed's own ZeRO-{t.zero_stage} estimate (model states; assumes Adam + 16-bit mixed precision): {estimates}")
    sft = sft_memory_plan(cfg, plans)
    if sft:
        first = next(iter(sft.values()))
        each = ", ".join(
            f"{size} {_size(p.total)}"
            + (f" (activations {_size(p.activation_bytes)})" if p.activations else "")
            + ("" if limit is None or p.peak(t.use_gpu) <= limit * GIB else " DOES NOT FIT")
            for size, p in sft.items()
        )
        setting = f"; {_activation_setting(cfg, 'sft', first)}" if first.activations else ""
        lines.append(
            f"    SFT stage per worker (AdamW, ZeRO-{first.zero_stage}, {first.num_workers} workers, {t.precision}{setting}): {each}"
        )
    lines += describe_evaluation(cfg, {size: p.shape for size, p in known.items()})
    if limit is None:
        lines.append("    set train.device_memory_gb to the memory of one training device to have the plan checked")
    return lines


def _workers_that_fit(cfg: ExperimentConfig, plan: WorkerMemory, stage: Literal["train", "sft"]) -> int | None:
    """The fewest workers above the plan's (a divisor of the batch size, as the config requires, whose
    share the configured micro-batch divides) that fit, if any."""
    use_gpu, limit, section = cfg.train.use_gpu, cfg.train.device_memory_gb * GIB, getattr(cfg, stage)
    for n in range(plan.num_workers + 1, MAX_WORKERS_SUGGESTED + 1):
        if section.batch_size % n or (section.micro_batch_size and (section.batch_size // n) % section.micro_batch_size):
            continue
        if worker_memory(cfg, plan.shape, stage, num_workers=n, reference=plan.reference_mode).peak(use_gpu) <= limit:
            return n
    return None


def _micro_batch_that_fits(cfg: ExperimentConfig, plan: WorkerMemory, stage: Literal["train", "sft"]) -> tuple[int, bool] | None:
    """The largest micro-batch (a divisor of the worker's share) that fits, without gradient
    checkpointing if any does (it costs about one more forward pass per step), else with it:
    (micro-batch, checkpointing), or None when even one pair (sequence) with checkpointing does not."""
    section, limit = getattr(cfg, stage), cfg.train.device_memory_gb * GIB
    share = section.batch_size // section.num_workers
    for checkpointing in (False, True):
        for micro in sorted((d for d in range(1, share + 1) if share % d == 0), reverse=True):
            memory = worker_memory(
                cfg, plan.shape, stage, micro_batch=micro, gradient_checkpointing=checkpointing, reference=plan.reference_mode
            )
            if memory.peak(cfg.train.use_gpu) <= limit:
                return micro, checkpointing
    return None


def _problem(cfg: ExperimentConfig, size: str, plan: WorkerMemory, stage: Literal["train", "sft"]) -> str | None:
    """The refusal of one size in one stage (DAA training or SFT), or None when it fits."""
    t, section = cfg.train, getattr(cfg, stage)
    need = plan.peak(t.use_gpu)
    if need <= t.device_memory_gb * GIB:
        return None
    if plan.total >= plan.load or t.use_gpu:
        parts = (
            f"policy weights {_size(plan.weights)} + gradients {_size(plan.gradients)} + optimizer state "
            f"{_size(plan.optimizer_state)} + reference {_size(plan.reference)} + activations {_size(plan.activation_bytes)}"
        )
        if plan.activations:
            parts += f" ({_activation_setting(cfg, stage, plan)})"
    else:
        parts = f"the whole model in models.dtype={cfg.models.dtype} that each worker builds before DeepSpeed partitions it"
    hints = []
    fitting = _micro_batch_that_fits(cfg, plan, stage) if plan.activations and plan.activation_bytes else None
    if fitting is not None:
        micro, checkpointing = fitting
        unit = "pairs" if stage == "train" else "sequences"
        hints.append(
            (f"{stage}.gradient_checkpointing: true with " if checkpointing and not section.gradient_checkpointing else "")
            + f"{stage}.micro_batch_size: {micro} ({micro} {unit} per forward/backward pass, "
            f"{section.batch_size // section.num_workers // micro} accumulated per step)"
        )
    sharding = t.zero_stage  # with more than one worker the SFT stage shards as training does
    n = _workers_that_fit(cfg, plan, stage) if sharding >= 1 else None
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


# ------------------------------------------------------------------------------------------------
# Evaluation: what each evaluation process holds on one of its devices

VLLM_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default share of each GPU (evaluate/vllm_generation.py: 0.9 x a GPU share)


@lru_cache(maxsize=16)
def reward_model_shape(name_or_path: str, trust_remote_code: bool = False) -> ModelShape:
    """A sequence-classification model's shape (its config only, built on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(os.path.expanduser(name_or_path), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
    total = sum(p.numel() for p in model.parameters())
    return ModelShape(
        total_params=total, largest_layer_params=max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    )


def scoring_task_parts(cfg: ExperimentConfig, shape: ModelShape) -> dict[str, int | None]:
    """What one scoring task holds on its device, by part (None: a part whose size is unknown): the
    models it loads whole in ``models.dtype`` (policy and reference under ``evaluation.scoring: tasks``,
    the policy it samples with under training_workers with Hugging Face sampling), one scoring pass's
    logits, Hugging Face sampling's KV cache and a reward-model judge's weights."""
    e, w = cfg.evaluation, DTYPE_BYTES[cfg.models.dtype]
    model = shape.total_params * w
    hf = e.generation.backend == "hf"
    whole = 2 if e.scoring == "tasks" else (1 if hf else 0)
    parts: dict[str, int | None] = {}
    if whole:
        parts["the policy and the reference whole" if whole == 2 else "the policy it samples with whole"] = whole * model
    if shape.has_architecture:
        tokens = sequence_tokens(cfg, shape, e.generation.max_new_tokens)
        if e.scoring == "tasks":
            parts[f"a scoring pass's logits ({e.scoring_batch_size} sequences)"] = scoring_pass_bytes(
                shape, e.scoring_batch_size, tokens, w
            )
        if hf:
            kv_per_token = (
                2 * shape.num_layers * (shape.num_kv_heads or shape.num_heads) * (shape.hidden_size // max(shape.num_heads, 1)) * w
            )
            parts[f"sampling's KV cache ({e.generation.batch_size} prompts)"] = e.generation.batch_size * tokens * kv_per_token
    if e.judge.type == "reward_model" and e.judge.model:
        try:
            parts["the reward model"] = reward_model_shape(e.judge.model, cfg.models.trust_remote_code).total_params * w
        except (OSError, ValueError):
            parts["the reward model"] = None  # not found here (offline hub name): not counted
    return parts


def vllm_engine_bytes(cfg: ExperimentConfig, shape: ModelShape) -> tuple[int, int]:
    """(its share of the policy's weights, the KV cache of one sequence of the model's full length) on
    each GPU of a generation engine: what must fit in the part of the GPU vLLM takes. (0, 0) without one."""
    e, w = cfg.evaluation, DTYPE_BYTES[cfg.models.dtype]
    gpus = e.task_gpus(cfg.train.use_gpu)
    if e.generation.backend != "vllm" or gpus < 1:
        return 0, 0
    weights = math.ceil(shape.total_params * w / gpus)  # tensor parallel over the engine's GPUs
    if not shape.has_architecture:
        return weights, 0
    head_dim = shape.hidden_size // max(shape.num_heads, 1)
    kv_sequence = 2 * shape.num_layers * (shape.num_kv_heads or shape.num_heads) * head_dim * w * (shape.max_positions or 0)
    return weights, math.ceil(kv_sequence / gpus)


def vllm_engine_budget(cfg: ExperimentConfig) -> int | None:
    """The bytes of each GPU a vLLM engine takes (gpu_memory_utilization x the device), None when unset."""
    if cfg.train.device_memory_gb is None:
        return None
    share = min(cfg.evaluation.task_gpus(cfg.train.use_gpu), 1.0)
    return int(VLLM_GPU_MEMORY_UTILIZATION * share * cfg.train.device_memory_gb * GIB)


def evaluation_task_bytes(cfg: ExperimentConfig, shape: ModelShape) -> int:
    """The most one evaluation process needs on one of its devices: a scoring task's known parts
    (``scoring_task_parts``), or a vLLM engine's weights share and one full-length sequence's KV cache."""
    task = sum(b for b in scoring_task_parts(cfg, shape).values() if b)
    return max(task, sum(vllm_engine_bytes(cfg, shape)))


def describe_evaluation(cfg: ExperimentConfig, shapes: dict[str, ModelShape]) -> list[str]:
    """The dry run's evaluation lines: per size what a scoring task and a vLLM engine hold per device."""
    if not shapes:
        return []
    e, limit = cfg.evaluation, cfg.train.device_memory_gb
    lines = []
    tasks = {}
    for size, shape in shapes.items():
        parts = scoring_task_parts(cfg, shape)
        need = sum(b for b in parts.values() if b)
        detail = " + ".join(f"{name} {_size(b) if b is not None else 'unknown (not found)'}" for name, b in parts.items())
        tasks[size] = (
            f"{size} {_size(need)}" + (f" ({detail})" if detail else "") + ("" if limit is None or need <= limit * GIB else " DOES NOT FIT")
        )
    lines.append(
        f"    evaluation: each scoring task (scoring: {e.scoring}, generation: {e.generation.backend}) per device: {', '.join(tasks.values())}"
    )
    budget = vllm_engine_budget(cfg)
    engines = []
    for size, shape in shapes.items():
        weights, kv = vllm_engine_bytes(cfg, shape)
        if not weights:
            continue
        text = f"{size} weights {_size(weights)} + one {shape.max_positions}-token sequence's KV cache {_size(kv)}"
        if budget is not None and kv:
            sequences = (budget - weights) // kv
            text += f": its KV cache holds {sequences} such sequences" if sequences >= 1 else " DOES NOT FIT"
        engines.append(text)
    if engines:
        share = f"{VLLM_GPU_MEMORY_UTILIZATION:g} x {min(e.task_gpus(cfg.train.use_gpu), 1.0):g} of each GPU"
        taken = f" = {_size(budget)}" if budget is not None else ""
        lines.append(f"    evaluation: each vLLM generation engine takes {share}{taken}: {', '.join(engines)}")
    return lines


def _evaluation_problems(cfg: ExperimentConfig, size: str, plan: WorkerMemory) -> list[str]:
    """The refusals of a size whose evaluation processes cannot hold what they need."""
    limit, evaluation = cfg.train.device_memory_gb, cfg.evaluation
    parts = scoring_task_parts(cfg, plan.shape)
    need = sum(b for b in parts.values() if b)
    problems = []
    if need > limit * GIB:
        what = " + ".join(f"{name} {_size(b)}" for name, b in parts.items() if b)
        hints = []
        if evaluation.scoring == "tasks":
            hints.append(
                "evaluation.scoring: training_workers with reference.mode: sharded (the training workers score with their ZeRO-3 shards)"
            )
        if evaluation.generation.backend == "hf":
            hints.append("evaluation.generation.backend: vllm with evaluation.gpus_per_task > 1 (a tensor-parallel engine samples)")
            hints.append("a smaller evaluation.generation.batch_size (the sampling KV cache)")
        elif cfg.train.use_gpu:
            hints.append("more evaluation.gpus_per_task (the vLLM engine's tensor-parallel GPUs)")
        if any(name.startswith("a scoring pass") for name, b in parts.items() if b):
            hints.append("a smaller evaluation.scoring_batch_size (the scoring pass's logits)")
        problems.append(
            f"models.sizes[{size}]: each evaluation task would hold {_size(need)}: {what} (models.dtype={cfg.models.dtype}, evaluation.scoring: "
            f"{evaluation.scoring}, generation backend {evaluation.generation.backend}), more than train.device_memory_gb={limit:g}. "
            f"Try {'; or '.join(hints) if hints else 'a larger device'}"
        )
    weights, kv = vllm_engine_bytes(cfg, plan.shape)
    budget = vllm_engine_budget(cfg)
    if weights and budget is not None and weights + kv > budget:
        problems.append(
            f"models.sizes[{size}]: a vLLM engine's share of the policy ({_size(weights)}) and one full-length sequence's KV cache "
            f"({_size(kv)}) exceed the {_size(budget)} it takes of each GPU ({VLLM_GPU_MEMORY_UTILIZATION:g} of "
            f"train.device_memory_gb={limit:g}). Try more evaluation.gpus_per_task (the vLLM engine's tensor-parallel GPUs)"
        )
    return problems


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
    problems += [p for size, plan in plans.items() if not isinstance(plan, str) for p in _evaluation_problems(cfg, size, plan)]
    return [p for p in problems if p]


def check_memory_plan(cfg: ExperimentConfig) -> None:
    """Refuse, before Ray starts, a config whose training, SFT or evaluation processes cannot hold what they need."""
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
    resume = (
        f"engine checkpoints kept: {cfg.checkpointing.keep} per trial, {cfg.checkpointing.max_failures} restarts"
        if cfg.checkpointing.enabled
        else "no engine checkpoints (an interrupted trial restarts from step 0)"
    )
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
