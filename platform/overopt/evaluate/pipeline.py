"""The Ray Data evaluation pipeline of one checkpoint, and the reference log-prob cache pass.

    held-out prompts (+ reference responses)
      -> map_batches(score_batch): generate -> policy & reference log-probs -> judge   [per sample]
      -> summarize on the caller: KL + SE, d, win rate + interval, lengths, ...       [one row]

Models are read from Hugging Face directories (safetensors), so a task can run on any node. Each
Ray worker process keeps the reference model it loaded (keyed by path): Ray reuses worker processes,
so after the first evaluation only the policy (a new checkpoint each time) is loaded.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from overopt.data.synthetic import SyntheticTask
from overopt.evaluate.generation import HFGenerator
from overopt.evaluate.judges import build_judge
from overopt.evaluate.scoring import score_samples, summarize
from overopt.models import load_model, load_tokenizer


EVALUATION_SEED_BASE = 7_000_000  # far from the stage seeds (sweep/stages.py)


@lru_cache(maxsize=4)
def cached_model(path: str):
    return load_model(path).eval()


@lru_cache(maxsize=4)
def cached_tokenizer(path: str):
    return load_tokenizer(path)


def _score_batch(batch: dict[str, np.ndarray], *, policy_dir: str, reference_dir: str, settings: dict[str, Any]) -> dict[str, np.ndarray]:
    torch.set_num_threads(1)  # one task per core; intra-op threads would only contend
    task = SyntheticTask(**settings["task"]) if settings.get("task") else None
    backend = _backend(settings)
    device = "cuda" if settings.get("use_gpu") and torch.cuda.is_available() else "cpu"
    policy = load_model(policy_dir).to(device).eval()  # a new checkpoint each evaluation: never cached
    records = score_samples(
        policy,
        cached_model(reference_dir).to(device),
        cached_tokenizer(reference_dir),
        backend,
        build_judge(settings["judge"], task),
        [str(p) for p in batch["prompt"]],
        [str(r) for r in batch["reference_response"]],
        [bool(f) for f in batch["reference_finished"]],
        # One seed per (trial stream, first prompt of the block): the same draws at every evaluation of
        # a trial (common random numbers smooth its curve), disjoint from the eval set's reference
        # samples (seeded in sweep/stages.py).
        seed=EVALUATION_SEED_BASE + 100_003 * (int(settings["seed"]) % 10_007) + int(batch["index"][0]),
    )
    records["index"] = batch["index"]
    return records


def _backend(settings: dict[str, Any]):
    if settings["backend"] != "hf":
        raise ValueError(f"generation backend {settings['backend']!r} is not available; valid choices: hf")
    return HFGenerator(settings["max_new_tokens"], settings["temperature"], settings["batch_size"])


def load_eval_set(eval_path: str, parallelism: int = 2) -> ray.data.Dataset:
    """The eval set (Parquet: index, prompt, reference_response, reference_finished) as an in-memory
    dataset of ``parallelism`` blocks, read once per trial and reused by every evaluation."""
    table = pq.read_table(eval_path)
    size = -(-table.num_rows // parallelism)
    return ray.data.from_arrow([table.slice(start, size) for start in range(0, table.num_rows, size)])


def evaluate_checkpoint(
    policy_dir: str,
    reference_dir: str,
    eval_set: ray.data.Dataset,
    settings: dict[str, Any],
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Run the pipeline on ``eval_set`` (from ``load_eval_set``): one scoring task per block.

    ``settings``: backend, judge, max_new_tokens, temperature, batch_size, seed and (for the gold
    judge) task = the SyntheticTask fields. Returns the metrics row and the per-sample records.
    The scoring tasks are pinned to this node: the checkpoint directory was just written here.
    """
    # Pin to this node with a custom resource every Ray node has: "node:<ip>".
    here = {f"node:{ray.util.get_node_ip_address()}": 0.001}
    scored = eval_set.map_batches(
        _score_batch,
        fn_kwargs={"policy_dir": policy_dir, "reference_dir": reference_dir, "settings": settings},
        batch_size=None,  # a whole block per call: generation batches inside
        batch_format="numpy",
        # One CPU (or GPU) per block on this node, besides those the waiting Train workers hold
        # (Ray Data does not launch zero-resource tasks). See cluster/README.md.
        num_cpus=0 if settings.get("use_gpu") else 1,
        num_gpus=1 if settings.get("use_gpu") else 0,
        resources=here,
    )
    records = collect_in_index_order(scored)
    return summarize(records), records


def collect_in_index_order(dataset: ray.data.Dataset) -> dict[str, np.ndarray]:
    """All rows of a (small) dataset as numpy columns, sorted by its "index" column."""
    batches = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    columns = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    order = np.argsort(columns["index"])
    return {k: v[order] for k, v in columns.items()}


def cache_reference_logprobs(pairs: ray.data.Dataset, reference_dir: str, batch_size: int = 512) -> ray.data.Dataset:
    """Add reference_chosen_logps / reference_rejected_logps columns with one pass of pi_ref.

    Done once per (reference, dataset) so training steps carry no reference forward pass.
    """
    from overopt.train.steps import reference_logprobs

    def add_columns(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch.set_num_threads(1)
        model, tokenizer = cached_model(reference_dir), cached_tokenizer(reference_dir)
        batch.update(reference_logprobs(model, batch, tokenizer.pad_token_id))
        return batch

    return pairs.map_batches(add_columns, batch_size=batch_size, batch_format="numpy", num_cpus=1)
