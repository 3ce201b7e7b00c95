"""The Ray Train per-worker loops: SFT (the reference stage) and DAA alignment.

Each runs on every worker of a ``TorchTrainer``; Ray has set up the process group and DeepSpeed
shards the policy across the workers (ZeRO stage from the config). Data arrives as this worker's
Ray Data shard. Training does not evaluate: at each scheduled step all ranks consolidate the sharded
weights into a Hugging Face directory (in the training dtype), rank 0 writes it to the experiment's
storage and hands it over to the trial driver with this interval's training metrics (sweep/handover.py),
which evaluates it. In ``inline`` mode training waits for that evaluation; in ``async`` mode it goes on.
"""

from __future__ import annotations

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
from overopt.logprobs import pair_logprobs
from overopt.models import check_vocabulary, load_model, load_tokenizer
from overopt.schedule import evaluation_steps
from overopt.storage import Storage
from overopt.train.engine import deepspeed_config, initialize_engine, partitioned_loading, reference_engine, save_hf_checkpoint
from overopt.train.steps import check_finite, preference_loss, sft_loss


@dataclass(frozen=True)
class AlignmentSpec:
    """Everything one trial's workers need, typed: built by the Tune trial, read by every rank."""

    objective: str
    beta: float
    objective_kwargs: dict[str, float]
    seed: int  # the trial's seed (sweep.seeds): data order and the policy's randomness
    train: TrainConfig
    load_options: LoadOptions
    reference: str  # the SFT model the policy starts from (directory or hub name)
    tokenizer: str  # its tokenizer (directory or hub name)
    eval_fractions: list[float]
    n_pairs: int
    checkpoints: str  # where rank 0 writes each consolidated checkpoint: <location>/step_XXXXXX
    handover: Any  # the trial's CheckpointHandover actor (sweep/handover.py): takes each checkpoint
    reference_mode: str = "cache"  # cache: pi_ref's log-probs come with the pairs; sharded: a ZeRO-3 reference here


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
    with partitioned_loading(ds_config):  # ZeRO-3: each worker only ever holds its own shard
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
    """Train one (objective, beta, size, seed) trial; hand a checkpoint over at each scheduled step."""
    import ray
    import ray.train
    from ray.train import Checkpoint

    _quiet_worker_logs()
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    train = spec.train
    micro = train.batch_size // world
    ds_config = deepspeed_config(micro, world, train.zero_stage, train.precision, train.max_grad_norm)
    tokenizer, engine = _setup(spec.reference, spec.tokenizer, spec.load_options, spec.seed, train.cpus_per_worker, ds_config, train.lr, train.warmup_steps, train.optimizer)
    reference = None
    if spec.reference_mode == "sharded":
        ref_config = deepspeed_config(micro, world, 3, train.precision, train.max_grad_norm)
        with partitioned_loading(ref_config):
            reference = reference_engine(load_model(spec.reference, options=spec.load_options), ref_config)
    steps_per_epoch = spec.n_pairs // train.batch_size
    total_steps = max(1, round(train.epochs * steps_per_epoch))
    schedule = evaluation_steps(spec.eval_fractions, steps_per_epoch)
    shard = ray.train.get_dataset_shard("train")
    store = Storage(spec.checkpoints)
    # Diagnostics summed since the last evaluation (+ a count), on the engine's device for all_reduce.
    sums = torch.zeros(len(DIAGNOSTICS) + 1, dtype=torch.float64, device=engine.device)
    tokens, clock, waited = 0, time.time(), 0.0

    def hand_over(step: int) -> None:
        nonlocal sums, tokens, clock, waited
        dist.all_reduce(sums)
        elapsed = time.time() - clock
        train_row = {
            "step": step,
            "epoch_fraction": step / steps_per_epoch,
            "samples_seen": step * train.batch_size,
            **{name: float(sums[i] / sums[-1]) if sums[-1] else float("nan") for i, name in enumerate(DIAGNOSTICS)},
            "tokens_per_second": tokens * world / max(elapsed - waited, 1e-9) if step else float("nan"),
            # This interval's wall time and the part of it training spent waiting for evaluations
            # (handing over the previous checkpoint): docs/benchmarks.md.
            "interval_seconds": elapsed,
            "evaluation_wait_seconds": waited,
            "train_node_id": ray.get_runtime_context().get_node_id(),  # where rank 0 ran (clusters)
            "planned_epochs": train.epochs,  # lets the analysis tell a finished trial from an interrupted one
        }
        name = f"step_{step:06d}"
        clock = time.time()
        with tempfile.TemporaryDirectory(prefix=f"overopt_r{rank}_") as local:
            save_hf_checkpoint(engine, os.path.join(local, "hf"), tokenizer)  # collective: gathers the ZeRO-3 shards
            if rank == 0:
                store.upload_dir(os.path.join(local, "hf"), name)
            if train.keep_deepspeed_checkpoints:
                # Each rank reports its own shards (Ray merges them); report() uploads them.
                engine.save_checkpoint(os.path.join(local, "deepspeed"), tag=name)  # collective
                ray.train.report({"step": step}, checkpoint=Checkpoint.from_directory(os.path.join(local, "deepspeed")), checkpoint_dir_name=name)
        waited = ray.get(spec.handover.hand_over.remote(step, store.uri(name), train_row)) if rank == 0 else 0.0
        dist.barrier()  # inline: the other ranks wait here while rank 0 waits for the evaluation
        sums, tokens = torch.zeros_like(sums), 0

    hand_over(0)  # the reference itself: every curve starts at d = 0
    step, epoch = 0, 0
    while step < total_steps:
        steps_before = step
        batches = shard.iter_batches(
            batch_size=micro, batch_format="numpy", drop_last=True, local_shuffle_buffer_size=4 * micro, local_shuffle_seed=spec.seed + epoch
        )
        for batch in batches:
            if reference is not None:
                batch = with_reference_logprobs(reference, batch, tokenizer.pad_token_id)
            out = preference_loss(engine, batch, tokenizer.pad_token_id, spec.objective, spec.beta, spec.objective_kwargs)
            values = out.diagnostics()
            check_finite(step + 1, values)  # before backward: a NaN loss never reaches the weights
            engine.backward(out.loss)
            engine.step()
            step += 1
            grad_norm = engine.get_global_grad_norm()
            values["grad_norm"] = float("nan") if grad_norm is None else float(grad_norm)  # a norm of 0.0 stays 0.0
            if grad_norm is not None:
                check_finite(step, values)
            sums += torch.tensor([values[name] for name in DIAGNOSTICS] + [1.0], dtype=torch.float64, device=sums.device)
            tokens += sum(len(x) for x in batch["chosen_ids"]) + sum(len(x) for x in batch["rejected_ids"])
            if step in schedule:
                hand_over(step)
            if step >= total_steps:
                break
        if step == steps_before:
            raise RuntimeError(f"this worker's shard of {spec.n_pairs} pairs holds fewer than one batch ({micro})")
        epoch += 1


@torch.no_grad()
def with_reference_logprobs(reference, batch: dict, pad_token_id: int) -> dict:
    """The batch with pi_ref's log-probs of chosen and rejected, from the sharded reference (collective)."""
    logps, _, n = pair_logprobs(reference, batch, pad_token_id)
    logps = logps.double().cpu().numpy()
    return {**batch, "reference_chosen_logps": logps[:n], "reference_rejected_logps": logps[n:]}
