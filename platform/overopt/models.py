"""Model and tokenizer loading: built-in small GPT-NeoX sizes, or any Hugging Face name / local path.

The built-in sizes use the Pythia architecture (GPT-NeoX: rotary embeddings on a quarter of each head,
parallel residual, untied embeddings) at sizes a CPU trains in minutes, so the model-size axis of the
sweep is real on a laptop. Every head is 32 wide: vLLM's CPU attention needs head_dim >= 32.

    size     layers  hidden  heads  ~parameters (vocab 45)
    tiny        2      64      2      0.11 M
    small       4     128      4      0.81 M
    medium      6     192      6      2.7 M

Usage:
    model = load_model("tiny", vocab_size=len(tokenizer))        # fresh, from config
    model = load_model("runs/sft/tiny-3f2a")                      # a saved HF directory
    model = load_model("EleutherAI/pythia-1b")                    # the hub (where reachable)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class ModelSize:
    num_layers: int
    hidden_size: int
    num_heads: int


BUILTIN_SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(num_layers=2, hidden_size=64, num_heads=2),
    "small": ModelSize(num_layers=4, hidden_size=128, num_heads=4),
    "medium": ModelSize(num_layers=6, hidden_size=192, num_heads=6),
}

SYNTHETIC_TOKENIZER = "synthetic"  # the tokenizer name that builds the synthetic task's word tokenizer


def builtin_config(size: str, vocab_size: int, max_positions: int = 64) -> GPTNeoXConfig:
    """GPT-NeoX config of a built-in size; ``max_positions`` bounds prompt + response tokens."""
    if size not in BUILTIN_SIZES:
        raise ValueError(f"unknown built-in model size {size!r}; valid sizes: {', '.join(BUILTIN_SIZES)}")
    s = BUILTIN_SIZES[size]
    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=s.hidden_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        intermediate_size=4 * s.hidden_size,
        max_position_embeddings=max_positions,
        rotary_pct=0.25,  # Pythia's partial rotary embeddings
        use_parallel_residual=True,
        tie_word_embeddings=False,  # as Pythia; also keeps ZeRO-3 consolidation simple
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def load_model(name_or_path: str, vocab_size: int | None = None, dtype: torch.dtype = torch.float32, seed: int = 0) -> PreTrainedModel:
    """A causal LM: a built-in size (fresh weights, needs ``vocab_size``) or ``from_pretrained``.

    Anything that is not a built-in size name goes to ``AutoModelForCausalLM.from_pretrained``, which
    accepts a local directory or a hub name; weights are read as safetensors.
    """
    if name_or_path in BUILTIN_SIZES:
        if vocab_size is None:
            raise ValueError(f"building the built-in size {name_or_path!r} from config needs vocab_size")
        torch.manual_seed(seed)  # fresh weights are part of the experiment: make them reproducible
        return AutoModelForCausalLM.from_config(builtin_config(name_or_path, vocab_size), dtype=dtype)
    if os.path.sep in name_or_path and not os.path.isdir(name_or_path) and name_or_path.startswith((".", "/")):
        raise FileNotFoundError(f"model directory {name_or_path!r} does not exist")
    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, use_safetensors=True)


def load_tokenizer(name_or_path: str, synthetic_task=None) -> PreTrainedTokenizerBase:
    """The synthetic word tokenizer (``"synthetic"``), or ``AutoTokenizer.from_pretrained``.

    Tokenizers without a pad token (Pythia's) get EOS as pad, the usual choice for causal LMs.
    """
    if name_or_path == SYNTHETIC_TOKENIZER:
        from overopt.data.synthetic import SyntheticTask
        from overopt.data.tokenizer import build_synthetic_tokenizer

        tokenizer = build_synthetic_tokenizer(synthetic_task or SyntheticTask())
    else:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
