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
    model = load_model("runs/x", options=LoadOptions(dtype="bfloat16"))   # the config's models section
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from overopt.config import LoadOptions
from overopt.storage import local_directory


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

BUILTIN_MAX_POSITIONS = 64  # prompt + response tokens of the synthetic task fit in 30


def builtin_config(size: str, vocab_size: int, max_positions: int = BUILTIN_MAX_POSITIONS) -> GPTNeoXConfig:
    """GPT-NeoX config of a built-in size; ``max_positions`` bounds prompt + response tokens."""
    if size not in BUILTIN_SIZES:
        raise ValueError(f"unknown built-in model size {size!r}; valid sizes: {', '.join(BUILTIN_SIZES)}")
    s = BUILTIN_SIZES[size]
    # rotary_pct: GPTNeoXConfig reads this legacy keyword (convert_rope_params_to_dict) but its signature omits it
    return GPTNeoXConfig(  # type: ignore[call-arg]
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


SAFE = LoadOptions()


def save_neox_shaped(
    directory: str | Path,
    shape: tuple[int, int, int, int, int],
    max_positions: int,
    seed: int = 0,
    token_ids: tuple[int, int, int] = (0, 0, 1),
) -> Path:
    """A GPT-NeoX model of ``shape`` = (layers, hidden, heads, MLP width, vocab) with random weights (the
    Pythia architecture, drawn with ``seed``; ``token_ids`` = (bos, eos, pad), Pythia's by default), saved
    once to ``directory``: benchmarks size Pythia shapes without downloading weights. Returns the directory."""
    directory = Path(directory)
    if (directory / "model.safetensors").exists():
        return directory
    layers, hidden, heads, mlp, vocab = shape
    config = GPTNeoXConfig(  # type: ignore[call-arg]  # rotary_pct: as in builtin_config
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=mlp,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        max_position_embeddings=max_positions,
        bos_token_id=token_ids[0],
        eos_token_id=token_ids[1],
        pad_token_id=token_ids[2],
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory


def is_local_path(name_or_path: str) -> bool:
    """A path rather than a hub name: it exists, or it is written like a path (./x, /x, ~/x)."""
    return os.path.exists(name_or_path) or name_or_path.startswith((".", "/", "~", "file://"))


def size_label(size: str) -> str:
    """A directory-safe name for a model size: "EleutherAI/pythia-1b" -> "EleutherAI--pythia-1b"."""
    if "://" in size:  # a directory in storage: its last path component, without the URI's options
        size = size.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    elif is_local_path(size):
        size = os.path.basename(os.path.abspath(os.path.expanduser(size)))
    return re.sub(r"[^A-Za-z0-9._-]+", "--", size).strip(".-") or "model"


def check_weights(directory: str, options: LoadOptions = SAFE) -> None:
    """Fail with a clear message when a local model directory has no usable weights."""
    path = os.path.expanduser(directory)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model not found: {directory!r} is not a directory (nor a built-in size or a hub name)")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"model directory {directory!r} has no config.json: not a Hugging Face model directory")
    files = os.listdir(path)
    if any(f.endswith(".safetensors") or f == "model.safetensors.index.json" for f in files):
        return
    pickles = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    if pickles and not options.allow_pickle:
        raise ValueError(
            f"model directory {directory!r} holds only pickle weights ({', '.join(sorted(pickles))}); loading them can run "
            "arbitrary code. Convert them to safetensors, or set models.allow_pickle: true if you trust their source"
        )
    if not pickles:
        raise FileNotFoundError(f"model directory {directory!r} holds no weights (*.safetensors)")


def _from_pretrained(auto_class, name_or_path: str, options: LoadOptions):
    from safetensors import SafetensorError

    source, name_or_path = name_or_path, local_directory(name_or_path)  # a directory in remote storage is copied to this node first
    if is_local_path(name_or_path):
        check_weights(name_or_path, options)
    kwargs = {"attn_implementation": options.attn_implementation} if options.attn_implementation else {}
    try:
        return auto_class.from_pretrained(
            os.path.expanduser(name_or_path),
            dtype=getattr(torch, options.dtype),
            use_safetensors=None if options.allow_pickle else True,
            trust_remote_code=options.trust_remote_code,
            **kwargs,
        )
    except SafetensorError as error:  # safetensors names no file: say which model it was
        raise ValueError(
            f"model {source!r}: its safetensors weights cannot be read ({error}); the file is incomplete or corrupt: copy or save it again"
        ) from error


def load_model(name_or_path: str, vocab_size: int | None = None, seed: int = 0, options: LoadOptions = SAFE) -> PreTrainedModel:
    """A causal LM: a built-in size (fresh weights, needs ``vocab_size``) or ``from_pretrained``.

    Anything that is not a built-in size name goes to ``AutoModelForCausalLM.from_pretrained``, which
    accepts a local directory or a hub name; weights are read as safetensors unless
    ``options.allow_pickle``.
    """
    if name_or_path in BUILTIN_SIZES:
        if vocab_size is None:
            raise ValueError(f"building the built-in size {name_or_path!r} from config needs vocab_size")
        torch.manual_seed(seed)  # fresh weights are part of the experiment: make them reproducible
        return AutoModelForCausalLM.from_config(builtin_config(name_or_path, vocab_size), dtype=getattr(torch, options.dtype))
    return _from_pretrained(AutoModelForCausalLM, name_or_path, options)


def load_reward_model(name_or_path: str, options: LoadOptions = SAFE) -> PreTrainedModel:
    """A sequence-classification model with one output (a reward model), ``from_pretrained``."""
    from transformers import AutoModelForSequenceClassification

    return _from_pretrained(AutoModelForSequenceClassification, name_or_path, options)


def load_tokenizer(name_or_path: str, options: LoadOptions = SAFE) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` (a name or a directory).

    Tokenizers without a pad token (Pythia's) get EOS as pad, the usual choice for causal LMs.
    """
    name_or_path = local_directory(name_or_path)
    if is_local_path(name_or_path) and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise FileNotFoundError(f"tokenizer not found: {name_or_path!r} is not a directory")
    tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(name_or_path), trust_remote_code=options.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def context_length(name_or_path: str, options: LoadOptions = SAFE) -> int | None:
    """How many positions a model has (prompt + response must fit); None when its config does not say."""
    if name_or_path in BUILTIN_SIZES:
        return BUILTIN_MAX_POSITIONS
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(os.path.expanduser(local_directory(name_or_path)), trust_remote_code=options.trust_remote_code)
    return getattr(config, "max_position_embeddings", None)


def check_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    """A tokenizer whose ids run past the model's embedding table would index out of range."""
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary holds {model.config.vocab_size}: "
            "they do not belong together (models.tokenizer)"
        )
