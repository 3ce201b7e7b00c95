"""The Ray Data evaluation pipeline of one checkpoint, and the reference log-prob cache pass.

    held-out prompts (ids + text) and the baseline response of each
      -> map_batches(_score_batch): generate -> policy & reference log-probs -> judge   [per sample]
      (generation.backend vllm: a vLLM engine samples before the scoring tasks, the trial's kept
       engine fed batch by batch, with each checkpoint's weights loaded into it, or, outside a trial,
       a ray.data.llm stage of its own; judge llm over transport vllm: a ray.data.llm stage judges after them)
      -> summarize on the caller: KL + SE, d, win rate + interval, lengths, judge usage  [one row]

The trial driver (sweep/trial.py) calls ``evaluate_checkpoint`` on each checkpoint training hands
over; the checkpoint is read from storage (a path or URI), so the scoring tasks may run on any node.
They hold the resources the config gives evaluation (``evaluation.cpus_per_task`` /
``gpus_per_task``), inside the trial's placement group when there is one: the trial reserved them, so
training workers can never take what its evaluations wait for. Each task loads the policy and the
reference, scores in chunks of ``scoring_batch_size`` sequences, and releases both when it is done:
nothing of the scoring tasks stays on a GPU between evaluations (a trial's kept vLLM engine does, in
its own bundle). With ``evaluation.scoring: training_workers`` a task
loads no reference (and no policy when vLLM sampled): the trial's training workers, waiting for this
evaluation with the checkpoint's weights and the reference as ZeRO-3 shards, score its samples.
Everything a task needs travels as one typed ``EvaluationSpec``.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from overopt.config import SAMPLING_TEMPERATURE, GenerationConfig, JudgeConfig, LoadOptions, SyntheticTaskConfig
from overopt.evaluate.generation import GenerationBackend, GivenSamples, HFGenerator, Sample
from overopt.evaluate.judges import build_judge
from overopt.evaluate.proxy import ProxySpec, build_proxy
from overopt.evaluate.scoring import USAGE_PREFIX, models_scorer, score_samples, summarize
from overopt.evaluate.vllm_generation import in_placement_group
from overopt.models import load_model, load_tokenizer
from overopt.storage import local_copy
from overopt.streams import block_seed


@dataclass(frozen=True)
class EvaluationSpec:
    """What every evaluation of one trial needs, from the driver to the evaluation tasks."""

    reference: str  # the reference model's directory or hub name
    tokenizer: str  # the tokenizer's directory or hub name
    generation: GenerationConfig
    judge: JudgeConfig
    load_options: LoadOptions
    synthetic_task: SyntheticTaskConfig | None  # the gold judge's task; None for real data
    seed: int  # this evaluation's sampling stream (overopt/streams.py evaluation_seed: experiment seed, trial, step)
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    tasks: int = 2  # scoring tasks (blocks) per evaluation
    scoring_batch_size: int = 64  # sequences per log-prob forward pass
    # evaluation.scoring training_workers: the trial's CheckpointHandover actor, through which the
    # training workers score the samples (sweep/handover.py); None: each task loads both models.
    workers: Any = None
    proxy: ProxySpec | None = None  # the reward behind the training labels, asked beside the judge (evaluate/proxy.py)


@lru_cache(maxsize=4)
def cached_tokenizer(path: str):
    return load_tokenizer(path)


def device_for(gpus: float) -> str:
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


@contextmanager
def loaded_model(location: str, options: LoadOptions, device: str, read_once: bool = False):
    """A model for the duration of a block, then released (and its GPU memory returned).

    ``read_once``: a checkpoint evaluated once, copied from remote storage to a temporary directory
    (a reference is copied once per node and kept: models.load_model)."""
    with local_copy(location) if read_once else nullcontext(location) as path:
        model = load_model(path, options=options).to(device).eval()  # type: ignore[arg-type]  # transformers types PreTrainedModel.to as @wraps(Module.to): unbound, expecting self first
    try:
        yield model
    finally:
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


def _score_batch(batch: dict[str, np.ndarray], *, policy_dir: str, spec: EvaluationSpec) -> dict[str, np.ndarray]:
    torch.set_num_threads(max(1, int(spec.cpus_per_task)))  # as many intra-op threads as CPUs held
    device = device_for(spec.gpus_per_task)
    task = None
    if spec.synthetic_task is not None:
        from overopt.data.synthetic import SyntheticTask

        task = SyntheticTask(**spec.synthetic_task.model_dump())
    # An llm judge over vLLM answers after this stage, for the whole evaluation (evaluate_checkpoint).
    judge = None if spec.judge.served_by_vllm else build_judge(spec.judge, task, spec.load_options)
    tokenizer = cached_tokenizer(spec.tokenizer)
    prompt_ids = [list(map(int, ids)) for ids in batch["prompt_ids"]]
    backend: GenerationBackend
    if "response_ids" in batch:  # sampled by the vLLM stage before this one
        backend = GivenSamples(
            [
                Sample(
                    prompt,
                    list(map(int, ids)),
                    tokenizer.decode(list(map(int, ids)), skip_special_tokens=True),
                    bool(done),
                    float(np.sum(logps)),
                )
                for prompt, ids, done, logps in zip(prompt_ids, batch["response_ids"], batch["finished"], batch["sample_logprobs"])
            ]
        )
    else:
        backend = HFGenerator(spec.generation.max_new_tokens, batch_size=spec.generation.batch_size)  # at SAMPLING_TEMPERATURE
    # Models this task loads whole: the policy to sample with (HF generation) and both models to score
    # with, unless the training workers score (their sharded copies: models too big for one device).
    samples_policy = isinstance(backend, HFGenerator)
    with (
        (
            loaded_model(policy_dir, spec.load_options, device, read_once=True) if samples_policy or spec.workers is None else nullcontext()
        ) as policy,
        loaded_model(spec.reference, spec.load_options, device) if spec.workers is None else nullcontext() as reference,
    ):
        scorer = (
            models_scorer(policy, reference, tokenizer.pad_token_id, spec.scoring_batch_size)
            if spec.workers is None
            else WorkersScorer(spec.workers)
        )
        records = score_samples(
            policy,
            scorer,
            tokenizer,
            backend,
            judge,
            prompt_ids,
            [str(p) for p in batch["prompt"]],
            [str(r) for r in batch["reference_response"]],
            [bool(f) for f in batch["reference_finished"]],
            # One seed per (evaluation stream, first prompt of the block).
            seed=block_seed(spec.seed, int(batch["index"][0])),
            proxy=build_proxy(spec.proxy, spec.load_options, device),
        )
    # Training ranks that scored these samples (0: this task did, with both models loaded whole).
    records["scoring_ranks"] = np.full(len(batch["index"]), getattr(scorer, "ranks", 0), dtype=np.int64)
    # The judge's request counts of this block ride on its first row; summarize adds them up.
    for name, count in (judge.usage() if judge is not None else {}).items():
        column = np.zeros(len(batch["index"]), dtype=np.int64)
        column[0] = count
        records[USAGE_PREFIX + name] = column
    # Where this block ran and which GPUs Ray gave it: the row shows evaluations got what they asked for.
    context = ray.get_runtime_context()
    records["evaluation_node"] = np.full(len(batch["index"]), context.get_node_id(), dtype=object)
    records["evaluation_gpus"] = np.full(len(batch["index"]), ",".join(context.get_accelerator_ids().get("GPU", [])), dtype=object)
    records["index"] = batch["index"]
    records["prompt"] = batch["prompt"]
    records["reference_response"] = batch["reference_response"]
    return records


class WorkersScorer:
    """A ``SequenceScorer`` whose scores the trial's training workers compute (evaluation.scoring:
    training_workers): the request waits in the hand-over actor until training rank 0, waiting there for
    this evaluation, takes it and all ranks score it with the ZeRO-3 policy and the sharded reference
    (train/worker.py). ``ranks``: how many ranks scored the last request."""

    def __init__(self, handover):
        self.handover, self.ranks = handover, 0

    def __call__(self, prompt_ids, response_ids):
        scores = ray.get(self.handover.score.remote(prompt_ids, response_ids))
        self.ranks = int(scores["ranks"])
        return np.asarray(scores["policy_logps"]), np.asarray(scores["reference_logps"]), np.asarray(scores["lengths"], dtype=np.int64)


def load_eval_set(eval_path: str, parallelism: int = 2) -> ray.data.Dataset:
    """The eval set (Parquet: index, prompt, prompt_ids, reference_response, reference_finished) as an
    in-memory dataset of ``parallelism`` blocks, read once per trial and reused by every evaluation."""
    table = pq.read_table(eval_path)
    size = -(-table.num_rows // parallelism)
    # from_blocks computes the blocks' metadata here; from_arrow runs a task for it with an explicit
    # "DEFAULT" strategy, which escapes the trial's placement group and waits for a CPU outside it
    # (forever on a cluster whose other CPUs training workers hold: tests/integration/test_vllm_generation.py).
    return ray.data.from_blocks([table.slice(start, size) for start in range(0, table.num_rows, size)])


def evaluate_checkpoint(
    policy_dir: str, eval_set: ray.data.Dataset, spec: EvaluationSpec, placement_group=None, engine=None
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Run the pipeline on ``eval_set`` (from ``load_eval_set``): one scoring task per block.

    ``policy_dir``: the checkpoint's directory or storage URI. ``placement_group``: where the trial
    reserved its evaluation resources (None: anywhere). ``engine``: with generation backend vllm, a kept
    engine already holding ``policy_dir``'s weights (vllm_generation.TrialEngines.lend: a trial's
    evaluations share it); None starts engines for this evaluation alone. Returns the metrics row and
    the per-sample records (the audit file's columns).
    """
    # A whole block per scoring call, as a number (Ray Data needs one when GPUs are requested); counted
    # on the input, which is in memory (counting the vLLM stage's output would run the engines twice).
    rows_per_task = -(-eval_set.count() // spec.tasks)
    # The evaluation's tasks and actors (scoring tasks, vLLM engines) run in the trial's evaluation bundles
    # (sweep/trial.py; any of them: the driver's own bundle has no room left). The dataset's own DataContext
    # carries that scheduling strategy: map_batches takes none among its named arguments, and Ray 2.60
    # deprecates passing one in **ray_remote_args.
    eval_set = in_placement_group(eval_set, placement_group)
    if spec.generation.backend == "vllm":
        # Sampling in vLLM engine actors (the trial's kept engine, or ray.data.llm's for this evaluation),
        # then scoring the sampled ids in the tasks below.
        from overopt.evaluate.vllm_generation import generate_with_engine, generate_with_vllm

        sampling: dict[str, Any] = dict(
            max_new_tokens=spec.generation.max_new_tokens,
            temperature=SAMPLING_TEMPERATURE,
            seed=spec.seed,  # per (evaluation stream, prompt index)
            batch_size=spec.generation.batch_size,
        )
        sampled = (
            generate_with_engine(eval_set, engine, policy_dir, **sampling)
            if engine is not None
            else generate_with_vllm(eval_set, policy_dir, num_gpus=spec.gpus_per_task, **sampling)
        )
        # Back to one block per scoring task. Streaming repartition is a map stage, so it runs in the
        # trial's bundles like the rest; the split-based repartition(n) sends its tasks "SPREAD", outside
        # the trial's placement group, where on a full cluster they wait forever.
        eval_set = sampled.repartition(target_num_rows_per_block=rows_per_task)
    scored = eval_set.map_batches(
        _score_batch,  # type: ignore[arg-type]  # Ray types the function as taking any batch format; batch_format numpy gives dicts of arrays
        fn_kwargs={"policy_dir": policy_dir, "spec": spec},
        batch_size=rows_per_task,  # generation and scoring batch inside
        batch_format="numpy",
        num_cpus=spec.cpus_per_task,
        num_gpus=spec.gpus_per_task,
        # Ray Data retries a task only for system errors: a judge outage (JudgeUnavailable) or a
        # generation crash fails this evaluation, and with it the trial, visibly.
    )
    records = collect_in_index_order(scored)
    if spec.judge.served_by_vllm:
        # The second processor stage: the llm judge's vLLM engines answer both orders of every comparison.
        from overopt.evaluate.vllm_judge import judge_with_vllm_engines

        records.update(judge_with_vllm_engines(records, spec.judge, num_gpus=spec.gpus_per_task, placement_group=placement_group))
    return summarize(records), records


def collect_in_index_order(dataset: ray.data.Dataset) -> dict[str, np.ndarray]:
    """All rows of a (small) dataset as numpy columns, sorted by its "index" column."""
    # Ray types the batches as any batch format; batch_format numpy gives dicts of arrays
    batches: list[dict[str, np.ndarray]] = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))  # type: ignore[arg-type]
    columns = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    order = np.argsort(columns["index"])
    return {k: v[order] for k, v in columns.items()}


def cache_reference_logprobs(
    pairs: ray.data.Dataset, reference: str, tokenizer: str, gpus: float = 0, options: LoadOptions | None = None, batch_size: int = 512
) -> ray.data.Dataset:
    """Add reference_chosen_logps / reference_rejected_logps columns with one pass of pi_ref.

    Done once per (reference, dataset) so training steps carry no reference forward pass. Runs on a
    GPU when ``gpus`` > 0 (the config trains on GPUs), in chunks of 64 sequences.
    """
    from overopt.logprobs import pair_logprobs

    options = options or LoadOptions()

    def add_columns(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch.set_num_threads(1)
        pad = cached_tokenizer(tokenizer).pad_token_id
        with loaded_model(reference, options, device_for(gpus)) as model, torch.no_grad():
            logps, _, n = pair_logprobs(model, batch, pad, chunk_size=64)
        batch["reference_chosen_logps"], batch["reference_rejected_logps"] = logps[:n].cpu().numpy(), logps[n:].cpu().numpy()
        return batch

    return pairs.map_batches(
        add_columns,  # type: ignore[arg-type]  # Ray types the function as taking any batch format; batch_format numpy gives dicts of arrays
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=0 if gpus else 1,
        num_gpus=gpus,
    )


AUDIT_COLUMNS = (
    "index",
    "prompt",
    "response",
    "reference_response",
    "raw_judgement",
    "outcome",
    "policy_score",
    "reference_score",
    "finished",
    "length",
    "policy_logp",
    "reference_logp",
)


def audit_table(records: dict[str, np.ndarray], step: int):
    """One evaluation's per-sample judgements (prompt id, both responses, raw judge outputs, verdict, scores)."""
    import pyarrow as pa

    # proxy_probability: per sample, when the experiment has a proxy (evaluate/proxy.py).
    names = [*AUDIT_COLUMNS, *(["proxy_probability"] if "proxy_probability" in records else [])]
    table = pa.table({name: list(records[name]) if records[name].dtype == object else records[name] for name in names})
    return table.append_column("step", pa.array(np.full(table.num_rows, step, dtype=np.int64)))
