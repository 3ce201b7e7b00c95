"""The experiment config: one typed, validated tree loaded from YAML, with dotted overrides.

    cfg = load_config("configs/embedded.yaml", overrides=["train.lr=3e-4", "sweep.seeds=[0,1]"])
    cfg.save("runs/exp/config.yaml")          # the resolved config, saved beside every result

Every section forbids unknown keys, so a typo fails fast with the file, line and dotted key instead
of being silently ignored. Every default below carries a comment saying why it is what it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from overopt.data.synthetic import SyntheticTask
from overopt.objectives import OBJECTIVES, validate_objective

# pydantic validates the plain dataclass SyntheticTask as a config section; forbid unknown keys there too.
SyntheticTask.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, line and key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LabellerConfig(Section):
    """The simulated labeller of the synthetic task (see overopt.data.synthetic.Labeller)."""

    length_bias: float = -0.12  # labeller score per word: < 0 = raters prefer concise answers (docs/calibration.md)
    temperature: float = Field(0.1, ge=0)  # Bradley-Terry temperature: label noise (0 = deterministic)
    mention_bias: float = 0.0  # labeller score per salient-word mention (keyword stuffing), repeats included


class ModelsConfig(Section):
    sizes: list[str] = ["tiny", "small"]  # built-in sizes (tiny/small/medium) or HF names / local dirs
    tokenizer: str = "synthetic"  # "synthetic" = the task's word tokenizer; else an HF name / dir


class SFTConfig(Section):
    """Supervised fine-tuning of each size on demonstrations: the reference model pi_ref."""

    checkpoints: dict[str, str] = {}  # size -> existing SFT HF directory to use instead of training
    demonstrations: int = Field(20_000, gt=0)  # synthetic demonstrations (finite, noisy)
    steps: int = Field(1500, gt=0)  # optimizer steps per size
    steps_by_size: dict[str, int] = {}  # per-size override of steps (larger sizes learn faster per step)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)  # tiny models from scratch tolerate a large rate
    num_workers: int = Field(1, gt=0)  # tiny models SFT fastest unsharded (ZeRO stage 0); raise for real sizes
    cpus_per_worker: int = Field(2, gt=0)  # torch threads per SFT worker (nothing else runs during SFT)

    @model_validator(mode="after")
    def _batch_splits_across_workers(self) -> "SFTConfig":
        if self.batch_size % self.num_workers:
            raise ValueError(f"sft.batch_size={self.batch_size} must be a multiple of sft.num_workers={self.num_workers}")
        if self.demonstrations < self.batch_size:
            raise ValueError(f"sft.demonstrations={self.demonstrations} is fewer than one batch ({self.batch_size})")
        return self


class DataConfig(Section):
    preference_pairs: int = Field(4000, gt=0)  # finite preference set: over-optimization needs finite data
    eval_prompts: int = Field(512, gt=0)  # held-out prompts: a win-rate interval near +-0.04


class TrainConfig(Section):
    """The DAA training recipe of every trial."""

    objectives: list[str] = ["dpo", "ipo", "slic"]  # the paper's three
    betas: dict[str, list[float]] = {  # per objective: a 33x span covers the behaviour (science.md)
        "dpo": [0.03, 0.1, 0.3, 1.0],
        "ipo": [0.03, 0.1, 0.3, 1.0],
        "slic": [0.03, 0.1, 0.3, 1.0],
    }
    objective_kwargs: dict[str, dict[str, float]] = {}  # e.g. {cdpo: {label_smoothing: 0.1}}
    epochs: float = Field(2.0, gt=0)  # past one epoch so the decline is visible
    batch_size: int = Field(32, gt=0)  # global batch (pairs) per optimizer step
    optimizer: Literal["rmsprop", "adamw"] = "rmsprop"  # the paper's; Adam's momentum swings tiny policies
    lr: float = Field(5e-4, gt=0)
    warmup_steps: int = Field(30, ge=0)  # linear warm-up from 0
    max_grad_norm: float = Field(1.0, gt=0)
    num_workers: int = Field(2, gt=0)  # Ray Train workers; ZeRO-3 shards the policy across them
    zero_stage: Literal[0, 1, 2, 3] = 3
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 where the hardware has it (GPUs)
    use_gpu: bool = False  # one GPU per Ray Train worker (nccl) instead of CPU workers (gloo)
    keep_deepspeed_checkpoints: bool = False  # also save ZeRO shards (optimizer state) at each evaluation

    @model_validator(mode="after")
    def _batch_splits_across_workers(self) -> "TrainConfig":
        if self.batch_size % self.num_workers:
            raise ValueError(f"train.batch_size={self.batch_size} must be a multiple of train.num_workers={self.num_workers}")
        return self

    @model_validator(mode="after")
    def _betas_cover_objectives(self) -> "TrainConfig":
        for name in self.objectives:
            if name not in self.betas or not self.betas[name]:
                raise ValueError(f"train.betas has no betas for objective {name!r}")
            for beta in self.betas[name]:
                validate_objective(name, beta, **self.objective_kwargs.get(name, {}))
        extra = sorted(set(self.betas) - set(self.objectives))
        if extra:
            raise ValueError(f"train.betas names objectives not in train.objectives: {', '.join(extra)}")
        return self

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in OBJECTIVES:
                raise ValueError(f"unknown objective {name!r}; valid choices: {', '.join(sorted(OBJECTIVES))}")
        return names


class EvaluationConfig(Section):
    """When and how checkpoints are evaluated."""

    early_fractions: list[float] = [1 / 32, 1 / 16]  # geometric: small-beta peaks come early
    fractions_per_epoch_1: int = Field(8, ge=1)  # then evenly spaced points through epoch 1
    fractions_after_epoch_1: float = Field(0.5, gt=0)  # then one every this many epochs
    max_new_tokens: int = Field(13, gt=0)  # the synthetic task's response budget
    temperature: float = 1.0  # samples must come from pi itself for the KL estimate: fixed at 1
    backend: Literal["hf"] = "hf"  # Hugging Face generate with a KV cache (the vLLM backend is not built yet)
    judge: Literal["gold"] = "gold"  # the synthetic task's exact judge
    batch_size: int = Field(256, gt=0)

    @field_validator("temperature")
    @classmethod
    def _sample_from_pi(cls, value: float) -> float:
        if value != 1.0:
            raise ValueError("must be 1.0: KL(pi || pi_ref) is estimated from samples of pi itself")
        return value


class StopperConfig(Section):
    """DegradationStopper: end trials clearly past their peak (the decline is still recorded)."""

    margin: float = Field(0.05, ge=0)  # win rate this far below the trial's running best counts as worse
    patience: int = Field(3, ge=1)  # ... for this many consecutive evaluations -> stop
    kl_budget: float | None = None  # optionally stop once KL exceeds this (nats)


class SweepConfig(Section):
    seeds: list[int] = [0]
    size_objectives: dict[str, list[str]] = {}  # size -> objectives run at that size (default: all)
    max_concurrent_trials: int = Field(1, ge=1)  # a 2-CPU machine fits one 2-worker trial
    stopper: StopperConfig = StopperConfig()


class ExperimentConfig(Section):
    name: str = "embedded"  # experiment directory name under output_dir
    seed: int = 0  # master seed of data generation; trial seeds come from sweep.seeds
    output_dir: str = "runs"  # experiments, SFT checkpoints and caches land here
    task: SyntheticTask = SyntheticTask()
    labeller: LabellerConfig = LabellerConfig()
    models: ModelsConfig = ModelsConfig()
    sft: SFTConfig = SFTConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    sweep: SweepConfig = SweepConfig()

    @model_validator(mode="after")
    def _sweep_refers_to_known_sizes_and_objectives(self) -> "ExperimentConfig":
        for size, objectives in self.sweep.size_objectives.items():
            if size not in self.models.sizes:
                raise ValueError(f"sweep.size_objectives names size {size!r}, not in models.sizes {self.models.sizes}")
            unknown = sorted(set(objectives) - set(self.train.objectives))
            if unknown:
                raise ValueError(f"sweep.size_objectives.{size} names objectives not in train.objectives: {unknown}")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config (every default filled in) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        node = raw
        *parents, leaf = key.strip().split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[leaf] = yaml.safe_load(value)
    return raw


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each dotted key path in a YAML document to its 1-based line, for error messages."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                child = path + (str(key_node.value),)
                lines[child] = key_node.start_mark.line + 1
                walk(value_node, child)

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate a config; every error names the file, line and dotted key."""
    overrides = overrides or []
    source = str(path) if path else "<defaults>"
    text = ""
    if path is not None:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    apply_overrides(raw, overrides)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        lines = _key_lines(text) if text else {}
        overridden = {item.partition("=")[0].strip() for item in overrides}
        problems = []
        for e in error.errors():
            loc = tuple(str(part) for part in e["loc"])
            dotted = ".".join(loc) or "(top level)"
            where = f"{source}:{lines[loc]}" if loc in lines else source
            if dotted in overridden:
                where = "--set override"
            problems.append(f"  {where}: {dotted}: {e['msg']}")
        raise ConfigError(f"invalid config {source}:\n" + "\n".join(problems)) from None
