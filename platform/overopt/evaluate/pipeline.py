"""The Ray Data evaluation pipeline of one checkpoint, and the reference log-prob cache pass.

    held-out prompts (ids + text) and the baseline response of each
      -> map_batches(_score_batch): generate -> policy & reference log-probs -> judge   [per sample]
      -> summarize on the caller: KL + SE, d, win rate + interval, lengths, judge usage  [one row]

Models are read from Hugging Face directories (safetensors) or hub names, so a task can run on any
node. Each Ray worker process keeps the reference model it loaded (keyed by path): Ray reuses worker
processes, so after the first evaluation only the policy (a new checkpoint each time) is loaded.
Everything a task needs travels as one typed ``EvaluationSpec``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from overopt.config import GenerationConfig, JudgeConfig, LoadOptions, SyntheticTaskConfig
from overopt.evaluate.generation import HFGenerator
from overopt.evaluate.judges import build_judge
from overopt.evaluate.scoring import USAGE_PREFIX, score_samples, summarize
from overopt.models import load_model, load_tokenizer

EVALUATION_SEED_BASE = 7_000_000  # far from the stage seeds (sweep/stages.py)


@dataclass(frozen=True)
class EvaluationSpec:
    """What every evaluation of one trial needs, from the driver to the evaluation tasks."""

    reference: str  # the reference model's directory or hub name
    tokenizer: str  # the tokenizer's directory or hub name
    generation: GenerationConfig
    judge: JudgeConfig
    load_options: LoadOptions
    synthetic_task: SyntheticTaskConfig | None  # the gold judge's task; None for real data
    seed: int  # the trial's sampling stream: the same draws at every evaluation of the trial
    use_gpu: bool = False


def _options_key(options: LoadOptions) -> str:
    return LoadOptions.model_validate(options.model_dump(include=set(LoadOptions.model_fields))).model_dump_json()


def cached_model(path: str, options: LoadOptions | None = None):
    return _cached_model(path, _options_key(options or LoadOptions()))


@lru_cache(maxsize=4)
def _cached_model(path: str, options_json: str):
    return load_model(path, options=LoadOptions.model_validate_json(options_json)).eval()


@lru_cache(maxsize=4)
def cached_tokenizer(path: str):
    return load_tokenizer(path)


def _device(use_gpu: bool) -> str:
    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"


def _score_batch(batch: dict[str, np.ndarray], *, policy_dir: str, spec: EvaluationSpec) -> dict[str, np.ndarray]:
    torch.set_num_threads(1)  # one task per core; intra-op threads would only contend
    device = _device(spec.use_gpu)
    policy = load_model(policy_dir, options=spec.load_options).to(device).eval()  # a new checkpoint each evaluation: never cached
    task = None
    if spec.synthetic_task is not None:
        from overopt.data.synthetic import SyntheticTask

        task = SyntheticTask(**spec.synthetic_task.model_dump())
    judge = build_judge(spec.judge, task, spec.load_options)
    records = score_samples(
        policy,
        cached_model(spec.reference, spec.load_options).to(device),
        cached_tokenizer(spec.tokenizer),
        HFGenerator(spec.generation.max_new_tokens, spec.generation.temperature, spec.generation.batch_size),
        judge,
        [list(map(int, ids)) for ids in batch["prompt_ids"]],
        [str(p) for p in batch["prompt"]],
        [str(r) for r in batch["reference_response"]],
        [bool(f) for f in batch["reference_finished"]],
        # One seed per (trial stream, first prompt of the block): the same draws at every evaluation of
        # a trial (common random numbers smooth its curve), disjoint from the eval set's reference
        # samples (seeded in sweep/stages.py).
        seed=EVALUATION_SEED_BASE + 100_003 * (int(spec.seed) % 10_007) + int(batch["index"][0]),
    )
    # The judge's request counts of this block ride on its first row; summarize adds them up.
    for name, count in judge.usage().items():
        column = np.zeros(len(batch["index"]), dtype=np.int64)
        column[0] = count
        records[USAGE_PREFIX + name] = column
    records["index"] = batch["index"]
    records["prompt"] = batch["prompt"]
    records["reference_response"] = batch["reference_response"]
    return records


def load_eval_set(eval_path: str, parallelism: int = 2) -> ray.data.Dataset:
    """The eval set (Parquet: index, prompt, prompt_ids, reference_response, reference_finished) as an
    in-memory dataset of ``parallelism`` blocks, read once per trial and reused by every evaluation."""
    table = pq.read_table(eval_path)
    size = -(-table.num_rows // parallelism)
    return ray.data.from_arrow([table.slice(start, size) for start in range(0, table.num_rows, size)])


def evaluate_checkpoint(policy_dir: str, eval_set: ray.data.Dataset, spec: EvaluationSpec) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Run the pipeline on ``eval_set`` (from ``load_eval_set``): one scoring task per block.

    Returns the metrics row and the per-sample records (the audit file's columns). The scoring tasks
    are pinned to this node: the checkpoint directory was just written here.
    """
    # Pin to this node with a custom resource every Ray node has: "node:<ip>".
    here = {f"node:{ray.util.get_node_ip_address()}": 0.001}
    scored = eval_set.map_batches(
        _score_batch,
        fn_kwargs={"policy_dir": policy_dir, "spec": spec},
        batch_size=None,  # a whole block per call: generation batches inside
        batch_format="numpy",
        # One CPU (or GPU) per block on this node, besides those the waiting Train workers hold
        # (Ray Data does not launch zero-resource tasks). See cluster/README.md.
        num_cpus=0 if spec.use_gpu else 1,
        num_gpus=1 if spec.use_gpu else 0,
        # Ray Data retries a task only for system errors: a judge outage (JudgeUnavailable) or a
        # generation crash fails this evaluation, and with it the trial, visibly.
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


def cache_reference_logprobs(
    pairs: ray.data.Dataset, reference: str, tokenizer: str, use_gpu: bool = False, options: LoadOptions | None = None, batch_size: int = 512
) -> ray.data.Dataset:
    """Add reference_chosen_logps / reference_rejected_logps columns with one pass of pi_ref.

    Done once per (reference, dataset) so training steps carry no reference forward pass.
    """
    from overopt.logprobs import pair_logprobs

    def add_columns(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch.set_num_threads(1)
        model = cached_model(reference, options).to(_device(use_gpu))
        with torch.no_grad():
            logps, _, n = pair_logprobs(model, batch, cached_tokenizer(tokenizer).pad_token_id)
        batch["reference_chosen_logps"], batch["reference_rejected_logps"] = logps[:n].cpu().numpy(), logps[n:].cpu().numpy()
        return batch

    return pairs.map_batches(add_columns, batch_size=batch_size, batch_format="numpy", num_cpus=0 if use_gpu else 1, num_gpus=1 if use_gpu else 0)
