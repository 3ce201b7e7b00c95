"""What each evaluation process holds on one of its devices: a scoring task (the models it loads whole,
one scoring pass's logits, Hugging Face sampling's KV cache, a reward-model judge) and a vLLM engine (its
share of the weights and one full-length sequence's KV cache within the part of the GPU vLLM takes);
the dry run's evaluation lines and the refusals of a size whose evaluation does not fit. Plain Python:
no Ray, no GPU (docs/memory-plan.md, "Evaluation processes").

    parts = scoring_task_parts(cfg, shape)         # {part: bytes, or None where unknown}
    weights, kv = vllm_engine_bytes(cfg, shape)    # per GPU of a generation engine
"""

from __future__ import annotations

import math

from overopt.config import ExperimentConfig
from overopt.model_shapes import ModelShape, reward_model_shape, sequence_tokens
from overopt.trial_plan import task_gpus
from overopt.worker_memory import DTYPE_BYTES, GIB, WorkerMemory, scoring_pass_bytes, size_text

VLLM_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default share of each GPU (evaluate/vllm_generation.py: 0.9 x a GPU share)


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
    gpus = task_gpus(e, cfg.train.use_gpu)
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
    share = min(task_gpus(cfg.evaluation, cfg.train.use_gpu), 1.0)
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
        detail = " + ".join(f"{name} {size_text(b) if b is not None else 'unknown (not found)'}" for name, b in parts.items())
        tasks[size] = (
            f"{size} {size_text(need)}"
            + (f" ({detail})" if detail else "")
            + ("" if limit is None or need <= limit * GIB else " DOES NOT FIT")
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
        text = f"{size} weights {size_text(weights)} + one {shape.max_positions}-token sequence's KV cache {size_text(kv)}"
        if budget is not None and kv:
            sequences = (budget - weights) // kv
            text += f": its KV cache holds {sequences} such sequences" if sequences >= 1 else " DOES NOT FIT"
        engines.append(text)
    if engines:
        share = f"{VLLM_GPU_MEMORY_UTILIZATION:g} x {min(task_gpus(e, cfg.train.use_gpu), 1.0):g} of each GPU"
        taken = f" = {size_text(budget)}" if budget is not None else ""
        lines.append(f"    evaluation: each vLLM generation engine takes {share}{taken}: {', '.join(engines)}")
    return lines


def evaluation_problems(cfg: ExperimentConfig, size: str, plan: WorkerMemory) -> list[str]:
    """The refusals of a size whose evaluation processes cannot hold what they need."""
    limit, evaluation = cfg.train.device_memory_gb, cfg.evaluation
    assert limit is not None  # checked only when it is set (check_memory_plan)
    parts = scoring_task_parts(cfg, plan.shape)
    need = sum(b for b in parts.values() if b)
    problems = []
    if need > limit * GIB:
        what = " + ".join(f"{name} {size_text(b)}" for name, b in parts.items() if b)
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
            f"models.sizes[{size}]: each evaluation task would hold {size_text(need)}: {what} (models.dtype={cfg.models.dtype}, evaluation.scoring: "
            f"{evaluation.scoring}, generation backend {evaluation.generation.backend}), more than train.device_memory_gb={limit:g}. "
            f"Try {'; or '.join(hints) if hints else 'a larger device'}"
        )
    weights, kv = vllm_engine_bytes(cfg, plan.shape)
    budget = vllm_engine_budget(cfg)
    if weights and budget is not None and weights + kv > budget:
        problems.append(
            f"models.sizes[{size}]: a vLLM engine's share of the policy ({size_text(weights)}) and one full-length sequence's KV cache "
            f"({size_text(kv)}) exceed the {size_text(budget)} it takes of each GPU ({VLLM_GPU_MEMORY_UTILIZATION:g} of "
            f"train.device_memory_gb={limit:g}). Try more evaluation.gpus_per_task (the vLLM engine's tensor-parallel GPUs)"
        )
    return problems
