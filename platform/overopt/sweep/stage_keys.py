"""The stages' cache keys: each stage (sweep/stages.py) declares once the parts of the config it reads
(``REFERENCE_INPUTS``, ``PAIRS_INPUTS``, ``EVAL_SET_INPUTS``: dotted paths to sections or fields), and
its key is a hash of exactly those parts and of its input files (``fingerprint``). A change to what a
stage reads, a field newly added to a section it reads included, gives another key; a change to what it
does not read (train.betas, say) leaves the key alone. No Ray.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from overopt.config import ExperimentConfig, TableSource
from overopt.models import is_local_path

SFT_DATA_ORDER = "a permutation per epoch (overopt/streams.py)"  # in the reference's cache key: another order is another model


def fingerprint(path: str | Path) -> list:
    """Names, sizes and mtimes of the files under ``path``: a changed input must not reuse old stages."""
    path = Path(path).expanduser()
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return [str(path.resolve())] + [
        (str(f.relative_to(path)) if f != path else f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files
    ]


def source_key(source: TableSource) -> list:
    """What a table's cache key needs: its config, plus a fingerprint of local files."""
    key: list[Any] = [source.model_dump(mode="json")]
    if source.source in ("file", "hf") and is_local_path(source.path or ""):
        assert source.path is not None  # TableSource requires it of file and hf sources
        for match in sorted(glob.glob(str(Path(source.path).expanduser()))) or [source.path]:
            key.append(fingerprint(match) if Path(match).exists() else match)
    return key


def content_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --- what each stage reads ---------------------------------------------------------------------------
# A stage's cache key is a hash of exactly the parts of the config it reads, declared once below (and
# of what is not config: the files of local tables and models, the reference's own key). A part is a
# dotted path to a section, a sub-model or a field, taken whole: a field added to a declared section is
# in the key without a change here. Where the pairs and eval stages sample (train.use_gpu: GPUs or CPUs)
# is no input: it does not change what they build.


def _always(cfg: ExperimentConfig) -> bool:
    return True


@dataclass(frozen=True)
class Read:
    """One part of the config a stage reads: ``path`` (dotted, from the top of the config), less the
    fields in ``exclude``, read only where ``when(cfg)`` holds (the synthetic task's settings, say,
    only where a table is synthetic)."""

    path: str
    exclude: frozenset[str] = frozenset()
    when: Callable[[ExperimentConfig], bool] = _always

    @property
    def name(self) -> str:
        """The part's name in the key: its path, and what it leaves out."""
        return f"{self.path} less {','.join(sorted(self.exclude))}" if self.exclude else self.path

    def value(self, cfg: ExperimentConfig) -> Any:
        """The part as plain JSON values: a table also fingerprints its local files (``source_key``)."""
        node: Any = cfg
        for name in self.path.split("."):
            node = getattr(node, name)
        if isinstance(node, TableSource):
            return source_key(node)
        if isinstance(node, BaseModel):
            return node.model_dump(mode="json", exclude=set(self.exclude))
        return node


def _synthetic(table: str) -> Callable[[ExperimentConfig], bool]:
    return lambda cfg: getattr(cfg.data, table).source == "synthetic"


def _held_out_of(table: str) -> Callable[[ExperimentConfig], bool]:
    return lambda cfg: cfg.data.eval.source == "held_out" and cfg.data.eval.held_out_from == table


# How every table is read and tokenised.
TABLE_INPUTS = (Read("data.max_prompt_tokens"), Read("data.max_response_tokens"), Read("data.on_invalid"))
# The evaluation prompts, which every training table loses (sources.load_rows): another eval set removes
# other rows. data.seed draws the held-out split and every table's limit sample.
EVAL_PROMPT_INPUTS = (
    Read("seed"),
    Read("data.seed"),
    Read("data.eval"),
    Read("data.synthetic.task", when=_synthetic("eval")),
    Read("data.synthetic.eval_prompts", when=_synthetic("eval")),
    Read("data.sft", when=_held_out_of("sft")),
    Read("data.pairs", when=_held_out_of("pairs")),
)
# How the stages after the reference load it (models.tokenizer is the reference's: in its key).
LOAD_INPUTS = (Read("models", exclude=frozenset({"sizes", "tokenizer"})),)

# The reference, given (sft.checkpoints) or used as it is (sft.enabled: false): its tokenizer; the
# model's files are fingerprinted.
GIVEN_REFERENCE_INPUTS = (Read("models.tokenizer"),)
# The reference, trained here: SFT on the sft table (less the eval prompts) with the sweep's ZeRO stage,
# precision and clipping. The size's steps (sft.steps_by_size or sft.steps) go in beside.
REFERENCE_INPUTS = (
    *EVAL_PROMPT_INPUTS,
    *TABLE_INPUTS,
    Read("data.sft"),
    Read("data.synthetic.task", when=lambda cfg: cfg.data.sft.source == "synthetic" or cfg.models.tokenizer == "synthetic"),
    Read("data.synthetic.demonstrations", when=_synthetic("sft")),
    Read("models", exclude=frozenset({"sizes"})),
    Read("sft", exclude=frozenset({"checkpoints", "steps_by_size", "steps"})),
    Read("train.zero_stage"),
    Read("train.precision"),
    Read("train.max_grad_norm"),
)
# The preference pairs: the pairs table, or two reference samples per synthetic prompt, labelled; with
# reference log-prob columns (reference.mode: cache).
PAIRS_INPUTS = (
    *EVAL_PROMPT_INPUTS,
    *TABLE_INPUTS,
    *LOAD_INPUTS,
    Read("data.pairs"),
    Read("data.synthetic.task", when=_synthetic("pairs")),
    Read("data.synthetic.labeller", when=_synthetic("pairs")),
    Read("data.synthetic.preference_pairs", when=_synthetic("pairs")),
    Read("evaluation.generation.max_new_tokens", when=_synthetic("pairs")),
    Read("evaluation.generation.batch_size", when=_synthetic("pairs")),
    Read("reference.mode"),
)
# The eval set: the eval prompts, room for the response budget after each, and the baseline response.
EVAL_SET_INPUTS = (
    *EVAL_PROMPT_INPUTS,
    *TABLE_INPUTS,
    *LOAD_INPUTS,
    Read("evaluation.baseline"),
    Read("evaluation.generation.max_new_tokens"),
    Read("evaluation.generation.batch_size", when=lambda cfg: cfg.evaluation.baseline == "reference_samples"),
)


def stage_inputs(cfg: ExperimentConfig, reads: tuple[Read, ...]) -> dict[str, Any]:
    """What of ``cfg`` a stage reads, by dotted path (less what it leaves out), as plain JSON values."""
    return {read.name: read.value(cfg) for read in reads if read.when(cfg)}


def stage_key(cfg: ExperimentConfig, reads: tuple[Read, ...], *extra: Any) -> str:
    """A stage's cache key: a hash of the sorted JSON of its inputs (and of ``extra``, what is not config)."""
    return content_key(stage_inputs(cfg, reads), *extra)


def reference_cache_key(cfg: ExperimentConfig, size: str) -> str:
    """The cache key of the reference model of ``size`` (the key of the stages after it too)."""
    if size in cfg.sft.checkpoints:
        # Fingerprint the files, not just the path: a retrained directory must not reuse old pairs.
        return stage_key(cfg, GIVEN_REFERENCE_INPUTS, "given", fingerprint(cfg.sft.checkpoints[size]))
    identity = fingerprint(size) if is_local_path(size) else size
    if not cfg.sft.enabled:
        return stage_key(cfg, GIVEN_REFERENCE_INPUTS, "as-is", identity)
    steps = cfg.sft.steps_by_size.get(size, cfg.sft.steps)
    return stage_key(cfg, REFERENCE_INPUTS, identity, {"sft.steps": steps}, SFT_DATA_ORDER)


def pairs_cache_key(cfg: ExperimentConfig, reference_key: str) -> str:
    return stage_key(cfg, PAIRS_INPUTS, reference_key)


def eval_cache_key(cfg: ExperimentConfig, reference_key: str) -> str:
    return stage_key(cfg, EVAL_SET_INPUTS, reference_key)
