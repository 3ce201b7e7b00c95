"""The stages before the sweep, per model size: reference (SFT) model, preference pairs, eval set.

Each stage writes a directory named by a hash of exactly the config it depends on, under
``<output_dir>/cache/``; a directory is only renamed into place once complete. Re-running with the
same config reuses it, so a second ``make demo`` skips work already done, and a changed config
never silently reuses stale data.

    reference  SFT of the size on synthetic demonstrations (Ray Train TorchTrainer), or a given path
    pairs      two reference samples per prompt (Ray Data) -> labeller -> reference log-probs cached
               as columns (Ray Data map_batches) -> pairs.parquet
    eval set   held-out prompts + one reference sample each (what the judge compares against)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from overopt.config import ExperimentConfig
from overopt.data.synthetic import Labeller, Response, make_preference_pairs
from overopt.evaluate.generation import HFGenerator
from overopt.evaluate.pipeline import cache_reference_logprobs, cached_model, cached_tokenizer, collect_in_index_order
from overopt.models import load_tokenizer
from overopt.train.steps import tokenize_demonstrations, tokenize_pairs

# Seed offsets keep the prompt sets and the sampling of the stages disjoint streams of the master seed.
DEMO_SEED, PAIR_SEED, EVAL_SEED = 1, 2, 3
PAIR_SAMPLING_SEED, REFERENCE_SAMPLING_SEED = 1_000_000, 2_000_000  # + 1009 x block start + sample


@dataclass(frozen=True)
class SizeData:
    """Everything a trial of one model size needs, as paths (trials may run on other nodes)."""

    reference_dir: str
    pairs_path: str
    n_pairs: int
    eval_path: str


def content_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached_directory(root: Path, name: str, key: str, build: Callable[[Path], None], log=print) -> Path:
    """Return ``root/name-key``, building it with ``build(tmp_dir)`` unless a complete one exists."""
    final = root / f"{name}-{key}"
    if (final / "_COMPLETE").exists():
        log(f"  reusing {final}")
        return final
    tmp = root / f".{name}-{key}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.time()
    build(tmp)
    (tmp / "_COMPLETE").write_text(f"built in {time.time() - started:.1f} s\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    log(f"  built {final} in {time.time() - started:.0f} s")
    return final


def prepare_size(cfg: ExperimentConfig, size: str, ray_storage: str, log=print) -> SizeData:
    cache = Path(cfg.output_dir).resolve() / "cache"
    reference_dir, reference_key = prepare_reference(cfg, size, cache, ray_storage, log)
    pairs_dir = prepare_pairs(cfg, reference_dir, reference_key, cache, log)
    eval_dir = prepare_eval_set(cfg, reference_dir, reference_key, cache, log)
    n_pairs = pq.read_metadata(pairs_dir / "pairs.parquet").num_rows
    if n_pairs < cfg.train.batch_size:
        raise ValueError(
            f"{size}: only {n_pairs} usable preference pairs (data.preference_pairs={cfg.data.preference_pairs} minus "
            f"truncated/identical ones), fewer than one batch (train.batch_size={cfg.train.batch_size})"
        )
    return SizeData(str(reference_dir), str(pairs_dir / "pairs.parquet"), n_pairs, str(eval_dir / "eval.parquet"))


def prepare_reference(cfg: ExperimentConfig, size: str, cache: Path, ray_storage: str, log=print) -> tuple[Path, str]:
    """The reference model pi_ref of ``size``: a given SFT directory, or SFT here (cached)."""
    if size in cfg.sft.checkpoints:
        path = Path(cfg.sft.checkpoints[size])
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"sft.checkpoints.{size}: {path} is not a Hugging Face model directory")
        # Fingerprint the files, not just the path: a retrained directory must not reuse old pairs.
        files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file())
        return path, content_key("given", str(path.resolve()), files)
    recipe = cfg.train.model_dump(include={"zero_stage", "precision", "max_grad_norm"})
    sft_recipe = cfg.sft.model_dump(exclude={"checkpoints", "steps_by_size"}) | {"steps": cfg.sft.steps_by_size.get(size, cfg.sft.steps)}
    key = content_key(size, asdict(cfg.task), cfg.models.tokenizer, sft_recipe, recipe, cfg.seed)

    def build(tmp: Path) -> None:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        tokenizer = load_tokenizer(cfg.models.tokenizer, synthetic_task=cfg.task)
        tokenizer.save_pretrained(tmp)
        demos = cfg.task.demonstrations(cfg.sft.demonstrations, seed=cfg.seed * 1000 + DEMO_SEED)
        table = pa.table(tokenize_demonstrations(tokenizer, demos))
        steps = cfg.sft.steps_by_size.get(size, cfg.sft.steps)
        log(f"  SFT {size}: {steps} steps x {cfg.sft.batch_size} on {len(demos)} demonstrations")
        trainer = TorchTrainer(
            _sft_entry,
            train_loop_config={
                "model": size,
                "tokenizer_path": str(tmp),
                "output_dir": str(tmp),
                "seed": cfg.seed,
                "steps": steps,
                "batch_size": cfg.sft.batch_size,
                "lr": cfg.sft.lr,
                "warmup_steps": 0,
                # One worker has nothing to shard: plain data-parallel stage 0 avoids ZeRO-3's overhead.
                "zero_stage": cfg.train.zero_stage if cfg.sft.num_workers > 1 else 0,
                "threads_per_worker": cfg.sft.cpus_per_worker,
                "precision": cfg.train.precision,
                "max_grad_norm": cfg.train.max_grad_norm,
            },
            scaling_config=ScalingConfig(
                num_workers=cfg.sft.num_workers,
                use_gpu=cfg.train.use_gpu,
                resources_per_worker={"GPU": 1} if cfg.train.use_gpu else {"CPU": cfg.sft.cpus_per_worker},
            ),
            run_config=RunConfig(name=f"sft-{size}-{key}", storage_path=ray_storage),
            datasets={"train": ray.data.from_arrow(table).random_shuffle(seed=cfg.seed)},
        )
        trainer.fit()

    return cached_directory(cache / "reference", size, key, build, log), key


def _sft_entry(config):  # a module-level function: Ray pickles it by reference
    from overopt.train.worker import sft_worker

    sft_worker(config)


def _generation_settings(cfg: ExperimentConfig) -> dict:
    return {"max_new_tokens": cfg.evaluation.max_new_tokens, "temperature": cfg.evaluation.temperature}


def _sample_batch(batch: dict, *, model_dir: str, settings: dict, samples_per_prompt: int) -> dict:
    """Ray Data stage: ``samples_per_prompt`` reference samples per prompt (text, finished)."""
    import torch

    torch.set_num_threads(1)
    model, tokenizer = cached_model(model_dir), cached_tokenizer(model_dir)  # one load per worker process
    backend = HFGenerator(settings["max_new_tokens"], settings["temperature"], batch_size=512)
    prompts = [str(p) for p in batch["prompt"]]
    out = {}
    for k in range(samples_per_prompt):
        samples = backend.generate(model, tokenizer, prompts, seed=settings["seed"] + 1009 * int(batch["index"][0]) + k)
        out[f"response_{k}"] = np.array([s.text for s in samples], dtype=object)
        out[f"finished_{k}"] = np.array([s.finished for s in samples])
    out["index"], out["prompt"] = batch["index"], batch["prompt"]
    return out


def _sample_references(prompts: list[str], model_dir: Path, settings: dict, samples_per_prompt: int) -> dict:
    ds = ray.data.from_items([{"index": i, "prompt": p} for i, p in enumerate(prompts)])
    sampled = ds.map_batches(
        _sample_batch,
        fn_kwargs={"model_dir": str(model_dir), "settings": settings, "samples_per_prompt": samples_per_prompt},
        batch_size=512,
        batch_format="numpy",
        num_cpus=1,
    )
    return collect_in_index_order(sampled)


def prepare_pairs(cfg: ExperimentConfig, reference_dir: Path, reference_key: str, cache: Path, log=print) -> Path:
    """Preference pairs sampled from the reference and labelled, with cached reference log-probs."""
    key = content_key(reference_key, asdict(cfg.task), cfg.labeller.model_dump(), cfg.data.preference_pairs, _generation_settings(cfg), cfg.seed)

    def build(tmp: Path) -> None:
        prompts = cfg.task.prompts(cfg.data.preference_pairs, seed=cfg.seed * 1000 + PAIR_SEED)
        settings = {**_generation_settings(cfg), "seed": PAIR_SAMPLING_SEED + 100_003 * cfg.seed}
        columns = _sample_references(prompts, reference_dir, settings, samples_per_prompt=2)
        labeller = Labeller(cfg.task, **cfg.labeller.model_dump())
        # make_preference_pairs asks its sampler for a first and then a second response per prompt.
        draws = iter(
            [Response(str(text), bool(done)) for text, done in zip(columns[f"response_{k}"], columns[f"finished_{k}"])]
            for k in (0, 1)
        )
        rows, skipped = make_preference_pairs(prompts, lambda _: next(draws), labeller, seed=cfg.seed)
        tokenizer = load_tokenizer(str(reference_dir))
        table = pa.table({**{k: [r[k] for r in rows] for k in rows[0]}, **tokenize_pairs(tokenizer, rows)})
        longer = np.mean([len(r["chosen"].split()) > len(r["rejected"].split()) for r in rows])
        log(f"  pairs: {len(rows)} labelled ({skipped} skipped); the longer response chosen in {longer:.0%}")
        with_reference = cache_reference_logprobs(ray.data.from_arrow(table), str(reference_dir))
        pq.write_table(pa.concat_tables(ray.get(with_reference.to_arrow_refs())), tmp / "pairs.parquet")
        (tmp / "stats.json").write_text(json.dumps({"pairs": len(rows), "skipped": skipped, "longer_chosen": longer}))

    return cached_directory(cache / "pairs", reference_dir.name, key, build, log)


def prepare_eval_set(cfg: ExperimentConfig, reference_dir: Path, reference_key: str, cache: Path, log=print) -> Path:
    """Held-out prompts and one reference sample each: the judge's point of comparison."""
    key = content_key(reference_key, asdict(cfg.task), cfg.data.eval_prompts, _generation_settings(cfg), cfg.seed)

    def build(tmp: Path) -> None:
        prompts = cfg.task.prompts(cfg.data.eval_prompts, seed=cfg.seed * 1000 + EVAL_SEED)
        settings = {**_generation_settings(cfg), "seed": REFERENCE_SAMPLING_SEED + 100_003 * cfg.seed}
        columns = _sample_references(prompts, reference_dir, settings, samples_per_prompt=1)
        table = pa.table(
            {
                "index": np.arange(len(prompts)),
                "prompt": prompts,
                "reference_response": [str(x) for x in columns["response_0"]],
                "reference_finished": columns["finished_0"].astype(bool),
            }
        )
        pq.write_table(table, tmp / "eval.parquet")

    return cached_directory(cache / "eval", reference_dir.name, key, build, log)
