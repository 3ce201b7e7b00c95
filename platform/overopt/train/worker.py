"""The Ray Train per-worker loops: SFT (the reference stage) and DAA alignment with evaluations.

Each runs on every worker of a ``TorchTrainer``; Ray has set up the process group and DeepSpeed
shards the policy across the workers (ZeRO stage from the config). Data arrives as this worker's
Ray Data shard. The alignment loop evaluates the policy at the configured steps: all ranks
consolidate the sharded weights into a Hugging Face directory, rank 0 runs the Ray Data evaluation
pipeline on it while the other ranks wait, and every rank reports the same metrics row and its own
checkpoint files (DeepSpeed shards; rank 0 adds the HF directory) to Ray Train, which forwards the
row to Tune.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from overopt.config import LoadOptions, SFTConfig, TrainConfig
from overopt.evaluate.pipeline import EvaluationSpec, evaluate_checkpoint, load_eval_set
from overopt.evaluate.schedule import evaluation_steps
from overopt.models import check_vocabulary, load_model, load_tokenizer
from overopt.storage import Storage
from overopt.train.engine import deepspeed_config, initialize_engine, save_hf_checkpoint
from overopt.train.steps import preference_loss, sft_loss


@dataclass(frozen=True)
class AlignmentSpec:
    """Everything one trial's workers need, typed: built by the Tune trial, read by every rank."""

    objective: str
    beta: float
    objective_kwargs: dict[str, float]
    seed: int  # the trial's seed (sweep.seeds): data order and the policy's randomness
    train: TrainConfig
    load_options: LoadOptions
    eval_fractions: list[float]
    n_pairs: int
    eval_path: str
    evaluation: EvaluationSpec  # holds the reference model and tokenizer
    trial_params: dict[str, Any]  # objective, beta, size, seed, trial_name: the first columns of every row
    experiment: str  # the experiment's location: rows/<trial>/step_X.json and audit/<trial>/step_X.parquet


DIAGNOSTICS = ("loss", "implicit_accuracy", "reward_margin", "chosen_log_ratio", "rejected_log_ratio", "grad_norm")


def _quiet_worker_logs() -> None:
    import warnings

    import deepspeed

    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    warnings.filterwarnings("ignore", category=FutureWarning, module="deepspeed")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False

    deepspeed.utils.logger.setLevel(logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)  # Train V2's per-report INFO lines
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _setup(model_path: str, tokenizer, options: LoadOptions, seed: int, threads: int, ds_config: dict, lr: float, warmup: int, optimizer: str):
    """``tokenizer``: a tokenizer object, or its directory / hub name."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer, options)
    model = load_model(model_path, vocab_size=len(tokenizer), seed=seed, options=options)
    check_vocabulary(model, tokenizer, model_path)
    engine, _ = initialize_engine(model, lr, warmup, ds_config, optimizer)  # the engine steps its scheduler
    return tokenizer, engine


@dataclass(frozen=True)
class SFTSpec:
    """What the SFT stage's workers need, typed: built by sweep/stages.py, read by every rank."""

    model: str  # a built-in size, hub name or directory: the model to fine-tune
    tokenizer: Any  # the tokenizer object itself: workers may not share the driver's disk
    sft: SFTConfig  # steps come from steps (per size, resolved by the stage), batch size, lr, threads
    steps: int
    train: TrainConfig  # the ZeRO stage, precision and gradient clipping of the sweep
    load_options: LoadOptions
    seed: int

    @property
    def zero_stage(self) -> int:
        # One worker has nothing to shard: plain data-parallel stage 0 avoids ZeRO-3's overhead.
        return self.train.zero_stage if self.sft.num_workers > 1 else 0


def sft_worker(spec: SFTSpec) -> None:
    """Supervised fine-tuning on demonstrations; reports the reference model as an HF directory."""
    import ray.train

    _quiet_worker_logs()
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    micro = spec.sft.batch_size // world
    ds_config = deepspeed_config(micro, world, spec.zero_stage, spec.train.precision, spec.train.max_grad_norm)
    tokenizer, engine = _setup(spec.model, spec.tokenizer, spec.load_options, spec.seed, spec.sft.cpus_per_worker, ds_config, spec.sft.lr, 0, "adamw")
    shard = ray.train.get_dataset_shard("train")
    step, losses, started = 0, [], time.time()
    while step < spec.steps:
        steps_before = step
        for batch in shard.iter_batches(batch_size=micro, batch_format="numpy", drop_last=True):
            loss = sft_loss(engine, batch, tokenizer.pad_token_id)
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % 250 == 0 or step == spec.steps:
                if rank == 0:
                    print(f"  sft {spec.model}: step {step}/{spec.steps} loss {np.mean(losses):.3f}", flush=True)
                losses = []
            if step >= spec.steps:
                break
        if step == steps_before:
            raise RuntimeError(f"this worker's shard holds fewer than one batch ({micro} rows)")
    # The reference leaves as a Ray Train checkpoint (to the run's storage): the driver may be elsewhere.
    with tempfile.TemporaryDirectory(prefix="overopt_sft_") as local:
        save_hf_checkpoint(engine, local, tokenizer)
        ray.train.report({"step": step, "sft_seconds": time.time() - started}, checkpoint=ray.train.Checkpoint.from_directory(local))


def alignment_worker(spec: AlignmentSpec) -> None:
    """Train one (objective, beta, size, seed) trial and evaluate it at the scheduled steps."""
    import ray
    import ray.train
    from ray.train import Checkpoint

    _quiet_worker_logs()
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    train = spec.train
    micro = train.batch_size // world
    ds_config = deepspeed_config(micro, world, train.zero_stage, train.precision, train.max_grad_norm)
    tokenizer, engine = _setup(
        spec.evaluation.reference, spec.evaluation.tokenizer, spec.load_options, spec.seed, 1, ds_config, train.lr, train.warmup_steps, train.optimizer
    )
    steps_per_epoch = spec.n_pairs // train.batch_size
    total_steps = max(1, round(train.epochs * steps_per_epoch))
    schedule = evaluation_steps(spec.eval_fractions, steps_per_epoch)
    shard = ray.train.get_dataset_shard("train")
    eval_set = load_eval_set(spec.eval_path) if rank == 0 else None
    store = Storage(spec.experiment)
    # Diagnostics summed since the last evaluation (+ a count), on the engine's device for all_reduce.
    sums = torch.zeros(len(DIAGNOSTICS) + 1, dtype=torch.float64, device=engine.device)
    tokens, clock = 0, time.time()

    def evaluate_and_report(step: int) -> None:
        nonlocal sums, tokens, clock
        dist.all_reduce(sums)
        train_row = {name: float(sums[i] / sums[-1]) if sums[-1] else float("nan") for i, name in enumerate(DIAGNOSTICS)}
        elapsed = time.time() - clock
        # Each rank reports its own directory (Ray merges them); report() uploads it, then it is deleted.
        with tempfile.TemporaryDirectory(prefix=f"overopt_r{rank}_") as local:
            hf_dir = os.path.join(local, "hf")
            save_hf_checkpoint(engine, hf_dir, tokenizer)  # collective: gathers the ZeRO-3 shards
            if train.keep_deepspeed_checkpoints:
                engine.save_checkpoint(os.path.join(local, "deepspeed"), tag=f"step{step}")  # collective
            row = None
            if rank == 0:  # the other ranks wait in broadcast_object_list below
                metrics, records = evaluate_checkpoint(hf_dir, eval_set, spec.evaluation)
                row = {
                    **spec.trial_params,
                    "step": step,
                    "epoch_fraction": step / steps_per_epoch,
                    "samples_seen": step * train.batch_size,
                    **metrics,
                    **train_row,
                    "tokens_per_second": tokens * world / elapsed if step else float("nan"),
                    "train_node_id": ray.get_runtime_context().get_node_id(),  # where rank 0 ran (clusters)
                    "planned_epochs": train.epochs,  # lets the analysis tell a finished trial from an interrupted one
                    # Samples come from pi itself whatever generation_config a hub model ships (evaluate/generation.py).
                    "sampling": f"ancestral, temperature {spec.evaluation.generation.temperature:g}, no top-k/top-p/penalties",
                }
                trial, stem = spec.trial_params["trial_name"], f"step_{step:06d}"
                store.write_parquet(f"audit/{trial}/{stem}.parquet", audit_table(records, step))
                # The row lands in storage before Tune sees it: a crash or a stop loses nothing reported.
                store.write_text(f"rows/{trial}/{stem}.json", json.dumps(row))
            box = [row]
            dist.broadcast_object_list(box, src=0)  # every rank reports the same row
            ray.train.report(box[0], checkpoint=Checkpoint.from_directory(local), checkpoint_dir_name=f"step_{step:06d}")
        sums, tokens, clock = torch.zeros_like(sums), 0, time.time()

    evaluate_and_report(0)  # the reference itself: every curve starts at d = 0
    step, epoch = 0, 0
    while step < total_steps:
        steps_before = step
        batches = shard.iter_batches(
            batch_size=micro, batch_format="numpy", drop_last=True, local_shuffle_buffer_size=4 * micro, local_shuffle_seed=spec.seed + epoch
        )
        for batch in batches:
            out = preference_loss(engine, batch, tokenizer.pad_token_id, spec.objective, spec.beta, spec.objective_kwargs)
            engine.backward(out.loss)
            engine.step()
            step += 1
            values = out.diagnostics()
            grad_norm = engine.get_global_grad_norm()
            values["grad_norm"] = float("nan") if grad_norm is None else float(grad_norm)  # a norm of 0.0 stays 0.0
            sums += torch.tensor([values[name] for name in DIAGNOSTICS] + [1.0], dtype=torch.float64, device=sums.device)
            tokens += sum(len(x) for x in batch["chosen_ids"]) + sum(len(x) for x in batch["rejected_ids"])
            if step in schedule:
                evaluate_and_report(step)
            if step >= total_steps:
                break
        if step == steps_before:
            raise RuntimeError(f"this worker's shard of {spec.n_pairs} pairs holds fewer than one batch ({micro})")
        epoch += 1


AUDIT_COLUMNS = ("index", "prompt", "response", "reference_response", "raw_judgement", "outcome", "policy_score", "reference_score",
                 "finished", "length", "policy_logp", "reference_logp")


def audit_table(records: dict[str, np.ndarray], step: int):
    """One evaluation's per-sample judgements (prompt id, both responses, raw judge outputs, verdict, scores)."""
    import pyarrow as pa

    table = pa.table({name: list(records[name]) if records[name].dtype == object else records[name] for name in AUDIT_COLUMNS})
    return table.append_column("step", pa.array(np.full(table.num_rows, step, dtype=np.int64)))
