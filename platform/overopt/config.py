"""The experiment config: one typed, validated tree loaded from YAML, with dotted overrides.

    cfg = load_config("configs/embedded.yaml", overrides=["train.lr=3e-4", "sweep.seeds=[0,1]"])
    cfg.save("runs/exp/config.yaml")          # the resolved config, saved beside every result

Every section forbids unknown keys, so a typo fails fast with the file, line and dotted key instead
of being silently ignored. Every default below carries a comment saying why it is what it is.
One module, the schema and its documentation: every section and field with its comment, one place a
reader looks up a key, and the loader that names a bad key's file:line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from overopt.objectives import OBJECTIVES, validate_objective


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, line and key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticTaskConfig(Section):
    """Parameters of the embedded synthetic task (overopt.data.synthetic.SyntheticTask adds its behaviour).

    Defaults follow docs/calibration.md.
    """

    seed: int = 0  # fixes the salient subset; prompts/demos/labels take their own seeds
    n_content_words: int = Field(40, gt=1)  # vocabulary size besides the special tokens
    n_salient: int = Field(10, gt=0)  # how many content words are salient
    prompt_words: tuple[int, int] = (12, 16)  # inclusive range of document length, in words
    salient_per_prompt: tuple[int, int] = (2, 5)  # inclusive range of distinct salient words per prompt
    max_response_words: int = Field(13, gt=1)  # demonstrations stay below this (room for EOS)
    # demonstration noise (applied to the ideal response to make SFT data imperfect and diverse)
    drop_prob: float = Field(0.2, ge=0, le=1)  # each ideal word is dropped with this probability
    substitute_prob: float = Field(0.0, ge=0, le=1)  # each kept ideal word becomes a random filler word
    duplicate_prob: float = Field(0.1, ge=0, le=1)  # each kept word is repeated with this probability
    insertion_rate: float = Field(1.6, ge=0)  # Poisson mean of junk words inserted anywhere: the reference over-generates
    trailing_rate: float = Field(0.0, ge=0)  # Poisson mean of junk words appended after the answer: a reference that rambles on
    swap_prob: float = Field(0.15, ge=0, le=1)  # probability of swapping one random adjacent pair
    # probability that a demonstration stops after a random proper prefix of its answer: a reference
    # that often ends before its answer is complete (drawn only when > 0, so other draws stay as they were)
    stop_early_prob: float = Field(0.0, ge=0, le=1)
    # gold = clip(f1_w*F1 + order_w*LCS/|ideal| - excess_w*excess - repeat_w*repeats - no_eos*[no EOS], 0, 1)
    f1_weight: float = 0.7
    order_weight: float = 0.3
    excess_length_penalty: float = 0.05  # per word beyond the ideal length
    repeat_penalty: float = 0.05  # per repeated word
    no_eos_penalty: float = 0.25  # a truncated response never finished its answer

    @model_validator(mode="after")
    def _consistent_ranges(self) -> SyntheticTaskConfig:
        lo, hi = self.salient_per_prompt
        if not (1 <= lo <= hi <= self.n_salient):
            raise ValueError(f"salient_per_prompt={self.salient_per_prompt} must satisfy 1 <= lo <= hi <= n_salient")
        if not (hi <= self.prompt_words[0] <= self.prompt_words[1]):
            raise ValueError(f"prompt_words={self.prompt_words} must be ordered and hold salient_per_prompt[1] words")
        if self.n_salient >= self.n_content_words:
            raise ValueError("n_salient must be smaller than n_content_words (documents need filler words)")
        return self


class LabellerConfig(Section):
    """The simulated labeller of the synthetic task (see overopt.data.synthetic.Labeller)."""

    # Labeller score per response word, the labeller's one bias on length: > 0 is a verbosity bias (raters
    # prefer longer answers, as human summary labels do), < 0 a preference for concise ones (docs/calibration.md).
    length_bias: float = -0.12
    temperature: float = Field(0.1, ge=0)  # Bradley-Terry temperature: label noise (0 = deterministic)
    mention_bias: float = 0.0  # labeller score per salient-word mention (keyword stuffing), repeats included


class SyntheticDataConfig(Section):
    """The embedded task as a data source: used by every table whose source is `synthetic`, and by the
    `gold` judge. Its pairs are two reference-model samples per prompt, labelled by the labeller."""

    task: SyntheticTaskConfig = SyntheticTaskConfig()
    labeller: LabellerConfig = LabellerConfig()
    demonstrations: int = Field(20_000, gt=0)  # SFT rows (finite, noisy)
    preference_pairs: int = Field(4000, gt=0)  # prompts labelled: over-optimization needs finite data
    eval_prompts: int = Field(512, gt=0)  # held-out prompts: a win-rate interval near +-0.04


DataFormat = Literal["auto", "sft", "preference", "tldr", "tldr-sft", "hh"]
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)


class TableSource(Section):
    """Where one of the three tables a sweep needs comes from (docs/data.md).

    synthetic  the embedded task (sizes from data.synthetic)
    file       local JSONL (.jsonl/.json) or Parquet file(s): a file, a directory or a glob
    hf         a Hugging Face dataset: a hub name (+ split, + subset) or a `save_to_disk` directory
    held_out   eval only: `limit` prompts split off another table (held_out_from) by a seeded draw
    """

    source: Literal["synthetic", "file", "hf", "held_out"] = "synthetic"
    path: str | None = None  # file path/glob, hub dataset name or save_to_disk directory
    format: DataFormat = "auto"  # how rows map to (prompt, ...): see overopt.data.formats
    split: str | None = None  # hf: the split (default: train for sft/pairs, the only one otherwise)
    subset: str | None = None  # hf: the dataset's config name (e.g. "comparisons")
    revision: str | None = None  # hf: a git revision of the hub dataset, for reproducibility
    columns: dict[str, str] = {}  # our field -> the dataset's column, e.g. {prompt: question}
    limit: int | None = Field(None, gt=0)  # at most this many rows, a seeded sample of the table (data.seed); held_out: this many
    held_out_from: Literal["sft", "pairs"] = "pairs"  # held_out: the table whose prompts are split off

    @model_validator(mode="after")
    def _path_where_needed(self) -> TableSource:
        if self.source in ("file", "hf") and not self.path:
            raise ValueError(f"source {self.source!r} needs a path (a file, directory or dataset name)")
        if self.source == "held_out" and self.limit is None:
            raise ValueError("source 'held_out' needs limit: how many prompts to split off")
        return self


class DataConfig(Section):
    """The three tables of a sweep: SFT demonstrations, preference pairs, evaluation prompts."""

    sft: TableSource = TableSource()  # (prompt, completion) for the SFT stage
    pairs: TableSource = TableSource()  # (prompt, chosen, rejected) for DAA training
    eval: TableSource = TableSource()  # (prompt, optional reference) for every evaluation
    synthetic: SyntheticDataConfig = SyntheticDataConfig()
    max_prompt_tokens: int | None = Field(None, gt=0)  # longer prompts keep their last tokens (None: no limit)
    max_response_tokens: int | None = Field(None, gt=0)  # longer responses keep their first tokens, + EOS
    on_invalid: Literal["error", "skip"] = "error"  # a bad row stops the run, or is skipped and reported
    seed: int = 0  # the held-out split and any row sampling

    @model_validator(mode="after")
    def _held_out_only_for_eval(self) -> DataConfig:
        for name in ("sft", "pairs"):
            if getattr(self, name).source == "held_out":
                raise ValueError(f"data.{name}: source 'held_out' is only for data.eval")
        return self


class LoadOptions(Section):
    """How checkpoints are read (overopt.models): safe by default."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights as loaded (training may cast: train.precision)
    attn_implementation: str | None = None  # e.g. "sdpa", "eager", "flash_attention_2"; None = transformers' choice
    trust_remote_code: bool = False  # never run a model repository's own Python unless asked
    allow_pickle: bool = False  # refuse pytorch_model.bin (pickle) checkpoints unless asked: safetensors only


class ModelsConfig(LoadOptions):
    """The policies' starting points (one per size) and how they are loaded."""

    sizes: list[str] = ["tiny", "small"]  # built-in sizes (tiny/small/medium), hub names or local dirs
    tokenizer: str | None = "synthetic"  # "synthetic" = the task's word tokenizer; a name/dir; None = the model's own

    @field_validator("sizes")
    @classmethod
    def _unique_sizes(cls, sizes: list[str]) -> list[str]:
        if not sizes:
            raise ValueError("needs at least one model size")
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"lists a size twice: {sizes}")
        return sizes


def _micro_batch_problem(section: str, batch_size: int, num_workers: int, micro_batch_size: int | None, unit: str) -> str | None:
    """Why ``<section>.micro_batch_size`` cannot cut each worker's share of the batch into equal
    micro-batches, or None (the accumulated gradient equals the whole batch's only for equal parts)."""
    share = batch_size // num_workers
    if micro_batch_size is None or share % micro_batch_size == 0:
        return None
    divisors = ", ".join(str(d) for d in range(1, share + 1) if share % d == 0)
    return (
        f"{section}.micro_batch_size={micro_batch_size} must divide each worker's share of {section}.batch_size={batch_size} "
        f"over {section}.num_workers={num_workers} ({share} {unit}): one of {divisors}"
    )


class SFTConfig(Section):
    """Supervised fine-tuning of each size on demonstrations: the reference model pi_ref."""

    enabled: bool = True  # False: models.sizes already are SFT models (or use sft.checkpoints)
    checkpoints: dict[str, str] = {}  # size -> existing SFT HF directory to use instead of training
    steps: int = Field(1500, gt=0)  # optimizer steps per size
    steps_by_size: dict[str, int] = {}  # per-size override of steps (larger sizes learn faster per step)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)  # tiny models from scratch tolerate a large rate
    num_workers: int = Field(1, gt=0)  # tiny models SFT fastest unsharded (ZeRO stage 0); raise for real sizes
    cpus_per_worker: int = Field(2, gt=0)  # torch threads per SFT worker (nothing else runs during SFT)
    # Sequences per worker per forward/backward pass; the gradients of batch_size / num_workers / this
    # many passes are accumulated into one optimizer step. None = the worker's whole share in one pass.
    micro_batch_size: int | None = Field(None, gt=0)
    gradient_checkpointing: bool = False  # off: tiny models have activations to spare; on recomputes each layer in backward

    @model_validator(mode="after")
    def _batch_splits_across_workers(self) -> SFTConfig:
        if self.batch_size % self.num_workers:
            raise ValueError(f"sft.batch_size={self.batch_size} must be a multiple of sft.num_workers={self.num_workers}")
        problem = _micro_batch_problem("sft", self.batch_size, self.num_workers, self.micro_batch_size, "sequences")
        if problem:
            raise ValueError(problem)
        return self


class TrainConfig(Section):
    """The DAA training recipe of every trial."""

    objectives: list[str] = ["dpo", "ipo", "slic"]  # the paper's three
    betas: dict[str, list[float]] = {  # per objective: a 33x span covers the behaviour (docs/calibration.md)
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
    cpus_per_worker: int = Field(1, gt=0)  # CPUs (torch threads) each Ray Train worker holds
    device_memory_gb: float | None = Field(None, gt=0)  # GiB per training device (GPU; CPU workers: RAM each); None = unchecked
    # Pairs per worker per forward/backward pass (chosen and rejected: twice as many sequences); the
    # gradients of batch_size / num_workers / this many passes are accumulated into one optimizer step,
    # which equals the whole batch's. None = the worker's whole share in one pass (no accumulation).
    micro_batch_size: int | None = Field(None, gt=0)
    # Keep only each layer's input and recompute the layer in the backward pass (about one more forward
    # per step): off by default, as the built-in sizes' activations are small.
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _batch_splits_across_workers(self) -> TrainConfig:
        if self.batch_size % self.num_workers:
            raise ValueError(f"train.batch_size={self.batch_size} must be a multiple of train.num_workers={self.num_workers}")
        problem = _micro_batch_problem("train", self.batch_size, self.num_workers, self.micro_batch_size, "pairs")
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _betas_cover_objectives(self) -> TrainConfig:
        for name in self.objectives:
            if name not in self.betas or not self.betas[name]:
                raise ValueError(f"train.betas has no betas for objective {name!r}")
            for beta in self.betas[name]:
                validate_objective(name, beta, **self.objective_kwargs.get(name, {}))
        for key in ("betas", "objective_kwargs"):
            extra = sorted(set(getattr(self, key)) - set(self.objectives))
            if extra:
                raise ValueError(f"train.{key} names objectives not in train.objectives: {', '.join(extra)}")
        return self

    @field_validator("betas")
    @classmethod
    def _positive_betas(cls, betas: dict[str, list[float]]) -> dict[str, list[float]]:
        # Here rather than with the objective checks below, so that the error names train.betas' own line.
        for name, values in betas.items():
            for beta in values:
                if not beta > 0:
                    raise ValueError(f"{name}: beta must be a positive number, got {beta!r}")
        return betas

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in OBJECTIVES:
                raise ValueError(f"unknown objective {name!r}; valid choices: {', '.join(sorted(OBJECTIVES))}")
        return names


DEFAULT_JUDGE_TEMPLATE = (
    # The summary-comparison prompt of the DPO paper (Rafailov et al. 2023, appendix), for TL;DR.
    "Which of the following summaries does a better job of summarizing the most important points in "
    "the given forum post, without including unimportant or irrelevant details? A good summary is both "
    "precise and concise.\n\nPost:\n{prompt}\n\nSummary A:\n{response_a}\n\nSummary B:\n{response_b}\n\n"
    "FIRST provide a one-sentence comparison of the two summaries, explaining which you prefer and why. "
    'SECOND, on a new line, state only "A" or "B" to indicate your choice. Your response should use '
    'the format:\nComparison: <one-sentence comparison and explanation>\nPreferred: <"A" or "B">'
)


class JudgeConfig(Section):
    """Who decides whether the policy's response beats the baseline's (docs/judges.md).

    gold          the synthetic task's exact reward (needs synthetic evaluation prompts)
    reward_model  a sequence-classification model scores both responses; the higher score wins
    llm           pairwise prompt to a chat model, asked in both orders: over HTTP to an
                  OpenAI-compatible endpoint (transport: http) or to vLLM engines started by the
                  evaluation itself, a Ray Data stage after scoring (transport: vllm; `make vllm`)
    """

    type: Literal["gold", "reward_model", "llm"] = "gold"
    model: str | None = None  # reward_model: HF name/dir; llm: the model the endpoint serves (http) or its directory (vllm)
    transport: Literal["http", "vllm"] = "http"  # llm: an endpoint (base_url) or offline vLLM engines of the model
    base_url: str | None = None  # llm: e.g. http://127.0.0.1:8000/v1 (a vLLM server) or a hosted API
    api_key_env: str | None = None  # llm: NAME of the environment variable holding the key (never the key)
    template: str = DEFAULT_JUDGE_TEMPLATE  # llm: {prompt} {response_a} {response_b}; must end asking for A or B
    timeout_s: float = Field(60.0, gt=0)  # llm: per request, then retried
    max_retries: int = Field(4, ge=0)  # llm: on 429 (honouring Retry-After), 5xx and connection errors
    max_concurrency: int = Field(8, gt=0)  # llm: requests in flight per evaluation
    max_tokens: int = Field(256, gt=0)  # llm: room for the one-sentence comparison and the verdict
    batch_size: int = Field(32, gt=0)  # reward_model: sequences per forward pass; llm over vllm: prompts per engine call

    @model_validator(mode="after")
    def _fields_each_type_needs(self) -> JudgeConfig:
        if self.type == "reward_model" and not self.model:
            raise ValueError("judge type 'reward_model' needs model (a sequence-classification name or directory)")
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            # Never echo the value: a key pasted here by mistake must not end up in an error log.
            raise ValueError("api_key_env must be the NAME of an environment variable (letters, digits, _), not a key")
        if self.transport == "vllm" and self.type != "llm":
            raise ValueError(f"transport 'vllm' is for judge type 'llm', not {self.type!r}")
        if self.type == "llm":
            needed = ("model", "base_url") if self.transport == "http" else ("model",)
            missing = [name for name in needed if not getattr(self, name)]
            if missing:
                raise ValueError(f"judge type 'llm' (transport {self.transport}) needs {' and '.join(missing)}")
            if self.transport == "vllm" and (self.base_url or self.api_key_env):
                raise ValueError("judge transport 'vllm' runs the model itself: base_url and api_key_env are for transport 'http'")
            for field in ("{prompt}", "{response_a}", "{response_b}"):
                if field not in self.template:
                    raise ValueError(f"judge template lacks the placeholder {field}")
        return self

    @property
    def served_by_vllm(self) -> bool:
        """An LLM judge answered by vLLM engines of the evaluation (a stage after scoring), not per block."""
        return self.type == "llm" and self.transport == "vllm"


# Evaluation samples are drawn at temperature 1, always: KL(pi || pi_ref) is estimated from samples of
# pi itself, so no config key sets it (an old config that still does fails as an unknown key).
SAMPLING_TEMPERATURE = 1.0


class GenerationConfig(Section):
    """How evaluation samples are drawn from the policy (and the baseline from the reference): plain
    ancestral sampling at ``SAMPLING_TEMPERATURE``."""

    # hf: Hugging Face generate with a KV cache, inside each scoring task. vllm: a vLLM engine samples in a
    # Ray Data stage before scoring, one kept per trial with each checkpoint's weights loaded into it
    # (evaluate/vllm_generation.py; needs vLLM installed: `make vllm` on CPU machines).
    backend: Literal["hf", "vllm"] = "hf"
    max_new_tokens: int = Field(13, gt=0)  # response budget; a sample that hits it is a truncation
    batch_size: int = Field(256, gt=0)  # prompts per generate call


class EvaluationConfig(Section):
    """When and how checkpoints are evaluated (the resources a trial reserves for them: overopt/trial_plan.py)."""

    early_fractions: list[float] = [1 / 32, 1 / 16]  # geometric: small-beta peaks come early
    fractions_per_epoch_1: int = Field(8, ge=1)  # then evenly spaced points through epoch 1
    fractions_after_epoch_1: float = Field(0.5, gt=0)  # then one every this many epochs
    generation: GenerationConfig = GenerationConfig()
    judge: JudgeConfig = JudgeConfig()
    # What the policy is compared with: one reference-model sample per prompt (the reference then wins
    # 0.5 against itself), or the eval table's own reference responses (the paper's TL;DR choice).
    baseline: Literal["reference_samples", "dataset_references"] = "reference_samples"
    # inline: training waits while each checkpoint is evaluated; async: training goes on and at most
    # max_in_flight evaluations of a trial run beside it (docs/benchmarks.md compares the two).
    mode: Literal["inline", "async"] = "inline"
    max_in_flight: int = Field(2, ge=1)  # async: evaluations of one trial running at once (training waits beyond)
    tasks: int = Field(2, ge=1)  # scoring tasks per evaluation (the eval set's blocks), run in parallel
    cpus_per_task: float = Field(1.0, gt=0)  # CPUs each scoring task holds
    gpus_per_task: float | None = Field(None, ge=0)  # GPUs each scoring task holds; None = 1 if train.use_gpu else 0
    scoring_batch_size: int = Field(64, gt=0)  # sequences per log-prob forward pass: bounds the logits' memory
    # Where the samples' policy and reference log-probs are computed. tasks: each scoring task loads
    # both models whole (they must fit one device). training_workers: the trial's training workers score
    # them with the ZeRO-3 policy engine and the sharded reference, each rank a share of the sequences
    # (models that do not fit one device); needs reference.mode sharded and mode inline (the policy's
    # weights at the checkpoint's step exist only while training waits there).
    scoring: Literal["tasks", "training_workers"] = "tasks"
    # The proxy beside the gold judge: the reward whose preferences trained the policy, read at every
    # evaluation as proxy_win_rate (evaluate/proxy.py). Synthetic pairs need nothing here: the task's own
    # labeller is their proxy. For real pairs, a reward model trained (or given) on the same preference
    # data: {type: reward_model, model: <directory or hub name>}. None with real pairs: no proxy column.
    proxy_judge: JudgeConfig | None = None

    @field_validator("proxy_judge")
    @classmethod
    def _proxy_is_a_reward_model(cls, judge: JudgeConfig | None) -> JudgeConfig | None:
        # A proxy win rate is the proxy's Bradley-Terry probability, which needs absolute scores.
        if judge is not None and judge.type != "reward_model":
            raise ValueError(f"evaluation.proxy_judge must be type reward_model (a model scoring each response), not {judge.type!r}")
        return judge


class StopperConfig(Section):
    """DegradationStopper: end trials clearly past their peak (the decline is still recorded)."""

    margin: float = Field(0.05, ge=0)  # a win rate this far below the trial's running best (point estimates) counts as worse ...
    patience_epochs: float = Field(0.25, ge=0)  # ... if its 95 % interval also lies below the best's, for this many epochs -> stop
    kl_budget: float | None = Field(None, gt=0)  # optionally stop once KL exceeds this (nats)


class SweepConfig(Section):
    seeds: list[int] = [0]
    size_objectives: dict[str, list[str]] = {}  # size -> objectives run at that size (default: all)
    max_concurrent_trials: int = Field(1, ge=1)  # a 2-CPU machine fits one 2-worker trial
    stopper: StopperConfig = StopperConfig()


class ReferenceConfig(Section):
    """Where the DAA loss gets pi_ref's log-probs of the pairs."""

    # cache: one pass of the reference over the pairs in the stages (a whole reference per device),
    # stored with the pairs; training carries no reference model. sharded: no cache; each trial's
    # training workers hold the frozen reference as a ZeRO-3 partition (no optimizer state) and score
    # each batch with it: for references that do not fit one device.
    mode: Literal["cache", "sharded"] = "cache"


class CheckpointingConfig(Section):
    """Resume where a trial stopped: the DeepSpeed engine state (ZeRO shards of weights and optimizer,
    scheduler, data position, RNG, the interval's training sums) saved to storage through Ray Train, and
    restored on a restart of the trial's workers (a lost worker or node) or of the whole sweep (the same
    command run again after the driver died). docs/reliability.md."""

    # Off in the embedded default (one machine, minutes: saving would cost more than a rerun); on in
    # the cluster configs. Without it a restarted trial trains again from step 0 (rows are never duplicated).
    enabled: bool = False
    every_steps: int | None = Field(None, gt=0)  # also save every N optimizer steps (default: at each evaluation only)
    keep: int = Field(2, gt=0)  # newest checkpoints kept per trial (Ray Train's CheckpointConfig(num_to_keep))
    max_failures: int = Field(0, ge=0)  # restarts of a trial after a worker, node or trial-driver failure


class MLflowTrackingConfig(Section):
    """An MLflow tracking server (sweep/tracking.py): one run per trial, nested under one run for the experiment."""

    # Off until set: a sweep needs no server. e.g. http://127.0.0.1:5000 (`mlflow server`); credentials come
    # from the environment (MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME + MLFLOW_TRACKING_PASSWORD), never from here.
    tracking_uri: str | None = None
    # None: the config's ``name``, so every experiment of one config family lands in one MLflow experiment
    # (their hashes tell them apart), where MLflow compares their runs side by side.
    experiment_name: str | None = None

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials_in_uri(cls, uri: str | None) -> str | None:
        # config.yaml and the logs would keep them: a password belongs in the environment.
        if uri is not None and re.match(r"^[a-z][a-z0-9+.-]*://[^/@]*@", uri):
            raise ValueError(
                "the tracking URI holds credentials (user:password@): set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment instead"
            )
        return uri


class WandbTrackingConfig(Section):
    """Weights & Biases (sweep/tracking.py): one run per trial, grouped by experiment."""

    project: str | None = None  # off until set; the API key comes from the environment (WANDB_API_KEY) or `wandb login`
    # online: sent as it happens; offline: files only, sent later with `wandb sync` (no account or network needed).
    mode: Literal["online", "offline"] = "online"


class TrackingConfig(Section):
    """Where a sweep is followed besides its console and storage: docs/tracking.md. Trackers only
    receive copies of what storage holds (rows, report), so they stay out of the experiment's hash and a
    tracker that goes down mid-sweep loses nothing."""

    mlflow: MLflowTrackingConfig = MLflowTrackingConfig()
    wandb: WandbTrackingConfig = WandbTrackingConfig()
    # Off by default: Tune already writes its own event files (by report count) into each trial's tune/
    # directory; true writes them by training step, one run per trial, under <experiment>/tensorboard.
    tensorboard: bool = False


# train.precision -> the models.dtype it needs (ExperimentConfig checks the pair).
PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


class ExperimentConfig(Section):
    name: str = "embedded"  # experiment name (its directory: <storage>/<name>-<hash>)
    seed: int = 0  # master seed of the stages (SFT, sampled pairs, eval set); trial seeds: sweep.seeds
    storage: str = "runs"  # where everything lands: a local path, or a URI (s3://, gs://, file://): docs/clusters.md
    models: ModelsConfig = ModelsConfig()
    data: DataConfig = DataConfig()
    sft: SFTConfig = SFTConfig()
    train: TrainConfig = TrainConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    reference: ReferenceConfig = ReferenceConfig()
    checkpointing: CheckpointingConfig = CheckpointingConfig()
    sweep: SweepConfig = SweepConfig()
    tracking: TrackingConfig = TrackingConfig()  # experiment trackers (MLflow, W&B, TensorBoard): all off

    @model_validator(mode="after")
    def _sweep_refers_to_known_sizes_and_objectives(self) -> ExperimentConfig:
        for size, objectives in self.sweep.size_objectives.items():
            if size not in self.models.sizes:
                raise ValueError(f"sweep.size_objectives names size {size!r}, not in models.sizes {self.models.sizes}")
            unknown = sorted(set(objectives) - set(self.train.objectives))
            if unknown:
                raise ValueError(f"sweep.size_objectives.{size} names objectives not in train.objectives: {unknown}")
        for key in ("checkpoints", "steps_by_size"):
            for size in getattr(self.sft, key):
                if size not in self.models.sizes:
                    raise ValueError(f"sft.{key} names size {size!r}, not in models.sizes {self.models.sizes}")
        return self

    @model_validator(mode="after")
    def _data_judge_and_baseline_agree(self) -> ExperimentConfig:
        synthetic = self.data.synthetic
        if self.sft.enabled and self.data.sft.source == "synthetic" and synthetic.demonstrations < self.sft.batch_size:
            raise ValueError(
                f"data.synthetic.demonstrations={synthetic.demonstrations} is fewer than one batch (sft.batch_size={self.sft.batch_size})"
            )
        if self.evaluation.judge.type == "gold" and self.data.eval.source != "synthetic":
            raise ValueError("evaluation.judge.type 'gold' is the synthetic task's exact reward: it needs data.eval.source: synthetic")
        if self.evaluation.baseline == "dataset_references" and self.data.eval.source == "synthetic":
            raise ValueError("evaluation.baseline 'dataset_references' needs an eval table with reference responses, not the synthetic one")
        if self.models.tokenizer == "synthetic" and any(
            getattr(self.data, t).source not in ("synthetic", "held_out") for t in ("sft", "pairs", "eval")
        ):
            raise ValueError(
                "models.tokenizer 'synthetic' only knows the synthetic task's words: set models.tokenizer to the model's (or null)"
            )
        return self

    @model_validator(mode="after")
    def _precision_matches_the_models_dtype(self) -> ExperimentConfig:
        # The reference's log-probs are cached in models.dtype and the policy trains in train.precision:
        # in different dtypes the two models disagree at step 0, and the log-ratio starts away from 0.
        wanted = PRECISION_DTYPES[self.train.precision]
        if self.models.dtype != wanted:
            raise ValueError(
                f"models.dtype {self.models.dtype} does not match train.precision {self.train.precision}: the reference's "
                "cached log-probs are computed in models.dtype, so the step-0 log-ratio would not be 0; set "
                + " or ".join(f"models.dtype: {dtype} with train.precision: {precision}" for precision, dtype in PRECISION_DTYPES.items())
            )
        return self

    @model_validator(mode="after")
    def _scoring_on_training_workers_is_possible(self) -> ExperimentConfig:
        if self.evaluation.scoring == "training_workers":
            if self.reference.mode != "sharded":
                raise ValueError(
                    "evaluation.scoring 'training_workers' scores with the workers' sharded reference: it needs reference.mode: sharded"
                )
            if self.evaluation.mode != "inline":
                raise ValueError(
                    "evaluation.scoring 'training_workers' needs evaluation.mode: inline (in async mode the workers "
                    "train past the checkpoint's step before its samples are scored)"
                )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config (every default filled in) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path


def dotted_items(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted.key: value} (the keys ``--set`` takes); lists are values."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(dotted_items(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


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
