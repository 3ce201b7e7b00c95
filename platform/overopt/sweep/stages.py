"""The stages before the sweep, per model size: reference (SFT) model, preference pairs, eval set.

Each stage writes a directory under ``<storage>/cache/`` (a local path or a URI) named by a hash of
exactly the parts of the config it reads, declared once per stage in sweep/stage_keys.py (``REFERENCE_INPUTS``,
``PAIRS_INPUTS``, ``EVAL_SET_INPUTS``: dotted paths to sections or fields), and of its input files;
a directory is only marked complete once every file is in place. Re-running with the same config
reuses it, so a second ``make demo`` skips work already done; a changed input, a field newly added
to a section a stage reads included, never silently reuses stale data, and a change to what a stage
does not read (train.betas, say) rebuilds nothing.

    reference  SFT of the size on the demonstrations table (Ray Train TorchTrainer), a given SFT
               directory (sft.checkpoints), or the model itself (sft.enabled: false)
    pairs      the pairs table (synthetic: two reference samples per prompt (Ray Data), labelled by the
               labeller) -> token ids -> reference log-probs cached as columns (Ray Data) -> pairs.parquet
    eval set   held-out prompts + the baseline each policy sample is judged against: one reference
               sample per prompt, or the table's own reference responses (evaluation.baseline)
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from overopt.config import ExperimentConfig
from overopt.data import sources
from overopt.data.synthetic import Response, make_preference_pairs
from overopt.data.tokenize import tokenize_table
from overopt.evaluate.generation import HFGenerator
from overopt.evaluate.pipeline import cache_reference_logprobs, cached_tokenizer, collect_in_index_order, device_for, loaded_model
from overopt.models import BUILTIN_SIZES, check_weights, context_length, is_local_path, load_tokenizer, size_label
from overopt.storage import Storage
from overopt.sweep.stage_keys import eval_cache_key, pairs_cache_key, reference_cache_key
from overopt.train.sft_worker import SFTSpec

# The sampling of the stages draws from streams disjoint from each other and from the evaluations.
PAIR_SAMPLING_SEED, REFERENCE_SAMPLING_SEED = 1_000_000, 2_000_000  # + 1009 x block start + sample


@dataclass(frozen=True)
class SizeData:
    """Everything a trial of one model size needs, as paths or names (trials may run on other nodes)."""

    reference: str  # the reference model pi_ref (and the policy's start): an HF directory or hub name
    tokenizer: str  # the tokenizer's directory or hub name
    pairs_path: str
    n_pairs: int
    eval_path: str


def cached_directory(storage: Storage, kind: str, name: str, key: str, build: Callable[[Path], None], log=print) -> str:
    """``cache/<kind>/<name>-<key>`` (relative to ``storage``), built by ``build(local_dir)`` unless a
    complete one exists. It is marked complete only after every file is in place."""
    relative = f"cache/{kind}/{name}-{key}"
    if storage.exists(f"{relative}/_COMPLETE"):
        log(f"  reusing {storage.uri(relative)}")
        return relative
    # A line as the stage starts and one as it ends, from this driver: what the stage's Ray Train workers
    # and Ray Data tasks print (the SFT's step lines among it) goes to the run's workers.log (sweep/console.py).
    what = {"reference": "the reference model", "pairs": "the preference pairs", "eval": "the eval set"}.get(kind, kind)
    log(f"  {name}: building {what} ...")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix=f"overopt-{kind}-") as local:
        build(Path(local))
        storage.upload_dir(local, relative)
    storage.write_text(f"{relative}/_COMPLETE", f"built in {time.time() - started:.1f} s\n")
    log(f"  built {storage.uri(relative)} in {time.time() - started:.0f} s")
    return relative


def prepare_size(cfg: ExperimentConfig, size: str, storage: Storage, ray_storage: str, log=print) -> tuple[SizeData, dict]:
    """What the trials of ``size`` need, and what the stages read and skipped (for the run's summary)."""
    reference, tokenizer_source, reference_key = prepare_reference(cfg, size, storage, ray_storage, log)
    pairs_dir = prepare_pairs(cfg, reference, tokenizer_source, reference_key, storage, log)
    eval_dir = prepare_eval_set(cfg, reference, tokenizer_source, reference_key, storage, log)
    pairs_path, eval_path = storage.uri(f"{pairs_dir}/pairs.parquet"), storage.uri(f"{eval_dir}/eval.parquet")
    n_pairs = pq.read_metadata(storage.path(f"{pairs_dir}/pairs.parquet"), filesystem=storage.fs).num_rows
    if n_pairs < cfg.train.batch_size:
        raise ValueError(
            f"{size}: only {n_pairs} usable preference pairs (see {storage.uri(pairs_dir + '/stats.json')}), fewer than one batch "
            f"(train.batch_size={cfg.train.batch_size})"
        )
    # A reference trained here keeps its SFT table's stats beside its weights; a given one had no SFT table here.
    trained_here = cfg.sft.enabled and size not in cfg.sft.checkpoints and Storage(reference).exists("stats.json")
    sft = json.loads(Storage(reference).read_text("stats.json")) if trained_here else None
    stats = {"reference": reference, "sft": sft}
    stats |= {kind: json.loads(storage.read_text(f"{d}/stats.json")) for kind, d in (("pairs", pairs_dir), ("eval", eval_dir))}
    return SizeData(reference, tokenizer_source, pairs_path, n_pairs, eval_path), stats


def tokenizer_for(cfg: ExperimentConfig, size: str):
    """The tokenizer a size trains with: the synthetic task's, the configured one, or the model's own."""
    if cfg.models.tokenizer == "synthetic":
        from overopt.data.tokenizer import build_synthetic_tokenizer

        return build_synthetic_tokenizer(sources.synthetic_task(cfg.data))
    name = cfg.models.tokenizer or size
    if name in BUILTIN_SIZES:
        raise ValueError(f"models.tokenizer is null but {size!r} is a built-in size with no tokenizer of its own: name one")
    return load_tokenizer(name, cfg.models)


def _tokenize(cfg: ExperimentConfig, kind: str, rows: list[dict], read_report, tokenizer, max_length: int | None, log):
    """Token ids (and the text they encode) of a table's rows; defects name the rows' files and lines."""
    columns, report = tokenize_table(
        kind,
        rows,
        tokenizer,
        max_prompt_tokens=cfg.data.max_prompt_tokens,
        max_response_tokens=cfg.data.max_response_tokens,
        max_length=max_length,
        on_invalid=cfg.data.on_invalid,
        locations=read_report.locations if read_report is not None else None,
        # The synthetic task's answers may be empty (just EOS): a legitimate "nothing to list".
        allow_empty_responses=getattr(cfg.data, kind).source == "synthetic",
    )
    log(f"  {report.summary()}")
    return columns, report


def prepare_reference(cfg: ExperimentConfig, size: str, storage: Storage, ray_storage: str, log=print) -> tuple[str, str, str]:
    """The reference model pi_ref of ``size`` -> (model dir or name, tokenizer dir or name, cache key)."""
    if size in cfg.sft.checkpoints:
        path = cfg.sft.checkpoints[size]
        check_weights(path, cfg.models)
        tokenizer = cfg.models.tokenizer if cfg.models.tokenizer not in (None, "synthetic") else path
        return path, tokenizer, reference_cache_key(cfg, size)
    if not cfg.sft.enabled:
        if size in BUILTIN_SIZES:
            raise ValueError(f"sft.enabled is false but {size!r} is a built-in size with random weights: train SFT or give sft.checkpoints")
        if is_local_path(size):
            check_weights(size, cfg.models)
        return size, cfg.models.tokenizer or size, reference_cache_key(cfg, size)
    key = reference_cache_key(cfg, size)

    def build(tmp: Path) -> None:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        tokenizer = tokenizer_for(cfg, size)
        rows, read_report = sources.load_rows(cfg.data, "sft", seed=cfg.seed)
        columns, token_report = _tokenize(cfg, "sft", rows, read_report, tokenizer, context_length(size, cfg.models), log)
        # Beside the weights: what the SFT table read, sampled and lost to the eval set (data_summary.json).
        (tmp / "stats.json").write_text(_stats(read_report, token_report, demonstrations=len(columns["prompt_ids"])))
        table = pa.table({"prompt_ids": columns["prompt_ids"], "response_ids": columns["response_ids"]})
        if table.num_rows < cfg.sft.batch_size:
            raise ValueError(
                f"{size}: {table.num_rows} SFT demonstrations ({sources.describe(cfg.data.sft)}) are fewer than one batch (sft.batch_size={cfg.sft.batch_size})"
            )
        steps = cfg.sft.steps_by_size.get(size, cfg.sft.steps)
        log(f"  SFT {size}: {steps} steps x {cfg.sft.batch_size} on {table.num_rows} demonstrations ({sources.describe(cfg.data.sft)})")
        trainer = TorchTrainer(
            _sft_entry,
            train_loop_config={
                "spec": SFTSpec(
                    model=size,
                    tokenizer=tokenizer,
                    sft=cfg.sft,
                    steps=steps,
                    train=cfg.train,
                    load_options=cfg.models,
                    seed=cfg.seed,
                    demonstrations=ray.put(table),  # every worker takes its share of each batch (train/sft_worker.py)
                )
            },
            scaling_config=ScalingConfig(
                num_workers=cfg.sft.num_workers,
                use_gpu=cfg.train.use_gpu,
                resources_per_worker={"GPU": 1} if cfg.train.use_gpu else {"CPU": cfg.sft.cpus_per_worker},
            ),
            run_config=RunConfig(name=f"sft-{size_label(size)}-{key}", **Storage(ray_storage).ray_storage()),
        )
        result = trainer.fit()
        assert result.checkpoint is not None  # rank 0 reports one; fit() raises when training failed
        result.checkpoint.to_directory(str(tmp))  # the HF directory (+ tokenizer) rank 0 reported

    directory = storage.uri(cached_directory(storage, "reference", size_label(size), key, build, log))
    return directory, directory, key


def _sft_entry(config):  # a module-level function: Ray pickles it by reference
    from overopt.train.sft_worker import sft_worker

    sft_worker(config["spec"])


def _sample_batch(batch: dict, *, model_dir: str, tokenizer_dir: str, settings: dict, samples_per_prompt: int, options) -> dict:
    """Ray Data stage: ``samples_per_prompt`` reference samples per prompt (ids, text, finished)."""
    import torch

    torch.set_num_threads(1)
    tokenizer = cached_tokenizer(tokenizer_dir)
    backend = HFGenerator(settings["max_new_tokens"], batch_size=settings["batch_size"])
    prompt_ids = [list(map(int, ids)) for ids in batch["prompt_ids"]]
    out = {}
    with loaded_model(model_dir, options, device_for(1 if settings["use_gpu"] else 0)) as model:  # on the GPU the task holds, if any
        for k in range(samples_per_prompt):
            samples = backend.generate(model, tokenizer, prompt_ids, seed=settings["seed"] + 1009 * int(batch["index"][0]) + k)
            out[f"response_{k}"] = np.array([s.text for s in samples], dtype=object)
            out[f"finished_{k}"] = np.array([s.finished for s in samples])
    out["index"] = batch["index"]
    return out


def _sample_references(prompt_ids: list[list[int]], model: str, tokenizer: str, settings: dict, samples_per_prompt: int, options) -> dict:
    ds = ray.data.from_items([{"index": i, "prompt_ids": ids} for i, ids in enumerate(prompt_ids)])
    sampled = ds.map_batches(
        _sample_batch,  # type: ignore[arg-type]  # Ray types the function as taking any batch format; batch_format numpy gives dicts of arrays
        fn_kwargs={
            "model_dir": model,
            "tokenizer_dir": tokenizer,
            "settings": settings,
            "samples_per_prompt": samples_per_prompt,
            "options": options,
        },
        batch_size=512,
        batch_format="numpy",
        # The stages use GPUs when the config trains on them, else one CPU per sampling task.
        num_cpus=0 if settings["use_gpu"] else 1,
        num_gpus=1 if settings["use_gpu"] else 0,
    )
    return collect_in_index_order(sampled)


def _generation_settings(cfg: ExperimentConfig) -> dict:
    generation = cfg.evaluation.generation
    return {"max_new_tokens": generation.max_new_tokens, "batch_size": generation.batch_size}  # sampled at SAMPLING_TEMPERATURE


def _stats(read_report, token_report, **extra) -> str:
    """The stage's stats.json: counts, and what reading and tokenising skipped (never silently)."""
    reports = {"read": read_report.to_dict() if read_report is not None else None, "tokenized": token_report.to_dict()}
    return json.dumps({**extra, **reports}, default=str)


def prepare_pairs(cfg: ExperimentConfig, reference: str, tokenizer_source: str, reference_key: str, storage: Storage, log=print) -> str:
    """Preference pairs (sampled and labelled, or from the pairs table), tokenized, with cached reference
    log-probs (``reference.mode: cache``)."""
    data = cfg.data
    key = pairs_cache_key(cfg, reference_key)

    def build(tmp: Path) -> None:
        tokenizer = load_tokenizer(tokenizer_source, cfg.models)
        extra_columns, report, extra_stats = {}, None, {}
        if data.pairs.source == "synthetic":
            prompts, prompts_report = sources.synthetic_pair_prompts(data, cfg.seed)
            prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
            settings = {**_generation_settings(cfg), "seed": PAIR_SAMPLING_SEED + 100_003 * cfg.seed, "use_gpu": cfg.train.use_gpu}
            columns = _sample_references(prompt_ids, reference, tokenizer_source, settings, samples_per_prompt=2, options=cfg.models)
            # make_preference_pairs asks its sampler for a first and then a second response per prompt.
            draws = iter(
                [Response(str(text), bool(done)) for text, done in zip(columns[f"response_{k}"], columns[f"finished_{k}"])] for k in (0, 1)
            )
            rows, skipped = make_preference_pairs(prompts, lambda _: next(draws), sources.synthetic_labeller(data), seed=cfg.seed)
            extra_columns = {k: [r[k] for r in rows] for k in ("chosen_gold", "rejected_gold", "label_probability")}
            longer = float(np.mean([len(r["chosen"].split()) > len(r["rejected"].split()) for r in rows]))
            extra_stats = {"skipped": skipped, "longer_chosen": longer}
            log(f"  pairs: {len(rows)} labelled ({skipped} skipped); the longer response chosen in {longer:.0%}")
        else:
            rows, report = sources.load_rows(data, "pairs", seed=cfg.seed)
            log(f"  pairs: {len(rows)} from {sources.describe(data.pairs)}")
        columns, token_report = _tokenize(cfg, "pairs", rows, report, tokenizer, context_length(reference, cfg.models), log)
        if extra_columns and len(columns["prompt_ids"]) != len(rows):
            raise ValueError("synthetic pairs lost rows in tokenisation: the task's words and the tokenizer disagree")
        table = pa.table(
            {
                **{name: columns[f"{name}_text"] for name in ("prompt", "chosen", "rejected")},
                **{name: columns[name] for name in ("prompt_ids", "chosen_ids", "rejected_ids")},
                **extra_columns,
            }
        )
        if cfg.reference.mode == "cache":
            gpus = 1 if cfg.train.use_gpu else 0
            with_reference = cache_reference_logprobs(
                ray.data.from_arrow(table), reference, tokenizer_source, gpus=gpus, options=cfg.models
            )
            table = pa.concat_tables(ray.get(with_reference.to_arrow_refs()))
        pq.write_table(table, tmp / "pairs.parquet")  # sharded: the trials' workers score the reference themselves
        # What was read: the pairs table, or (synthetic) the draw of the prompts the pairs were sampled for.
        read_report = prompts_report if data.pairs.source == "synthetic" else report
        (tmp / "stats.json").write_text(_stats(read_report, token_report, pairs=table.num_rows, **extra_stats))

    return cached_directory(storage, "pairs", size_label(reference), key, build, log)


def prepare_eval_set(cfg: ExperimentConfig, reference: str, tokenizer_source: str, reference_key: str, storage: Storage, log=print) -> str:
    """Held-out prompts (as ids and text) and the baseline response each is judged against."""
    data, baseline = cfg.data, cfg.evaluation.baseline
    key = eval_cache_key(cfg, reference_key)

    def build(tmp: Path) -> None:
        tokenizer = load_tokenizer(tokenizer_source, cfg.models)
        rows, report = sources.load_rows(data, "eval", seed=cfg.seed)
        context = context_length(reference, cfg.models)
        # Room for the whole response budget after the prompt.
        room = None if context is None else context - cfg.evaluation.generation.max_new_tokens + 1
        columns, token_report = _tokenize(cfg, "eval", rows, report, tokenizer, room, log)
        n = len(columns["prompt_ids"])
        if baseline == "reference_samples":
            settings = {**_generation_settings(cfg), "seed": REFERENCE_SAMPLING_SEED + 100_003 * cfg.seed, "use_gpu": cfg.train.use_gpu}
            sampled = _sample_references(
                columns["prompt_ids"], reference, tokenizer_source, settings, samples_per_prompt=1, options=cfg.models
            )
            references, finished = [str(x) for x in sampled["response_0"]], sampled["finished_0"].astype(bool)
        else:
            missing = [i for i, r in enumerate(columns["reference_text"]) if not r]
            if missing:
                raise ValueError(
                    f"evaluation.baseline is dataset_references but {len(missing)} of {n} eval prompts "
                    f"({sources.describe(data.eval)}) have no reference response"
                )
            references, finished = list(columns["reference_text"]), np.ones(n, dtype=bool)
        table = pa.table(
            {
                "index": np.arange(n),
                "prompt": list(columns["prompt_text"]),
                "prompt_ids": columns["prompt_ids"],
                "reference_response": references,
                "reference_finished": finished,
            }
        )
        pq.write_table(table, tmp / "eval.parquet")
        (tmp / "stats.json").write_text(_stats(report, token_report, prompts=n, baseline=baseline))
        log(f"  eval set: {n} prompts from {sources.describe(data.eval)}; baseline: {baseline}")

    return cached_directory(storage, "eval", size_label(reference), key, build, log)
