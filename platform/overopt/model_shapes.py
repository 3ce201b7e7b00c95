"""What the memory estimates need from a model: its parameter count, its largest layer and its
architecture, counted by building it from its config.json on PyTorch's meta device (no weights are
downloaded or allocated). Plain Python: no Ray, no GPU.

    shape = model_shape("EleutherAI/pythia-1b")     # a hub name, a local directory or a built-in size
    shape = policy_shape(cfg, size)                 # the policy a size's trials train (its SFT checkpoint)
    tokens = sequence_tokens(cfg, shape)            # the longest sequence a forward pass takes
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from overopt.config import ExperimentConfig


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
