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
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from overopt.evaluate.pipeline import evaluate_checkpoint, load_eval_set
from overopt.evaluate.schedule import evaluation_steps
from overopt.models import load_model, load_tokenizer
from overopt.train.engine import deepspeed_config, initialize_engine, save_hf_checkpoint
from overopt.train.steps import preference_loss, sft_loss

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


def _setup(config: dict[str, Any], model_path: str, micro_batch: int, world: int, lr: float, warmup: int, optimizer: str):
    torch.set_num_threads(config.get("threads_per_worker", 1))
    torch.manual_seed(config["seed"])
    tokenizer = load_tokenizer(config["tokenizer_path"])
    model = load_model(model_path, vocab_size=len(tokenizer), seed=config["seed"])
    ds_config = deepspeed_config(micro_batch, world, config["zero_stage"], config["precision"], config["max_grad_norm"])
    engine, _ = initialize_engine(model, lr, warmup, ds_config, optimizer)  # the engine steps its scheduler
    return tokenizer, engine


def sft_worker(config: dict[str, Any]) -> None:
    """Supervised fine-tuning on demonstrations; saves the reference model as an HF directory."""
    import ray.train

    _quiet_worker_logs()
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    micro = config["batch_size"] // world
    tokenizer, engine = _setup(config, config["model"], micro, world, config["lr"], config["warmup_steps"], "adamw")
    shard = ray.train.get_dataset_shard("train")
    step, losses, started = 0, [], time.time()
    while step < config["steps"]:
        steps_before = step
        for batch in shard.iter_batches(batch_size=micro, batch_format="numpy", drop_last=True):
            loss = sft_loss(engine, batch, tokenizer.pad_token_id)
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % 250 == 0 or step == config["steps"]:
                if rank == 0:
                    print(f"  sft {config['model']}: step {step}/{config['steps']} loss {np.mean(losses):.3f}", flush=True)
                losses = []
            if step >= config["steps"]:
                break
        if step == steps_before:
            raise RuntimeError(f"this worker's shard holds fewer than one batch ({micro} rows)")
    save_hf_checkpoint(engine, config["output_dir"], tokenizer)
    ray.train.report({"step": step, "sft_seconds": time.time() - started})


def alignment_worker(config: dict[str, Any]) -> None:
    """Train one (objective, beta, size, seed) trial and evaluate it at the scheduled steps."""
    import ray.train
    from ray.train import Checkpoint

    _quiet_worker_logs()
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    micro = config["batch_size"] // world
    tokenizer, engine = _setup(
        config, config["reference_dir"], micro, world, config["lr"], config["warmup_steps"], config["optimizer"]
    )
    steps_per_epoch = config["n_pairs"] // config["batch_size"]
    total_steps = max(1, round(config["epochs"] * steps_per_epoch))
    schedule = evaluation_steps(config["eval_fractions"], steps_per_epoch)
    shard = ray.train.get_dataset_shard("train")
    eval_set = load_eval_set(config["eval_path"]) if rank == 0 else None
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
            if config["keep_deepspeed_checkpoints"]:
                engine.save_checkpoint(os.path.join(local, "deepspeed"), tag=f"step{step}")  # collective
            row = None
            if rank == 0:  # the other ranks wait in broadcast_object_list below
                metrics, _ = evaluate_checkpoint(hf_dir, config["reference_dir"], eval_set, config["eval_settings"])
                row = {
                    **config["trial_params"],
                    "step": step,
                    "epoch_fraction": step / steps_per_epoch,
                    "samples_seen": step * config["batch_size"],
                    **metrics,
                    **train_row,
                    "tokens_per_second": tokens * world / elapsed if step else float("nan"),
                }
                # The row lands on disk before Tune sees it: a crash or a stop loses nothing reported.
                with open(config["rows_path"], "w" if step == 0 else "a") as f:
                    f.write(json.dumps(row) + "\n")
            box = [row]
            dist.broadcast_object_list(box, src=0)  # every rank reports the same row
            ray.train.report(box[0], checkpoint=Checkpoint.from_directory(local), checkpoint_dir_name=f"step_{step:06d}")
        sums, tokens, clock = torch.zeros_like(sums), 0, time.time()

    evaluate_and_report(0)  # the reference itself: every curve starts at d = 0
    step, epoch = 0, 0
    while step < total_steps:
        steps_before = step
        batches = shard.iter_batches(
            batch_size=micro, batch_format="numpy", drop_last=True, local_shuffle_buffer_size=4 * micro, local_shuffle_seed=config["seed"] + epoch
        )
        for batch in batches:
            out = preference_loss(engine, batch, tokenizer.pad_token_id, config["objective"], config["beta"], config["objective_kwargs"])
            engine.backward(out.loss)
            engine.step()
            step += 1
            values = out.diagnostics()
            values["grad_norm"] = float(engine.get_global_grad_norm() or float("nan"))
            sums += torch.tensor([values[name] for name in DIAGNOSTICS] + [1.0], dtype=torch.float64, device=sums.device)
            tokens += sum(len(x) for x in batch["chosen_ids"]) + sum(len(x) for x in batch["rejected_ids"])
            if step in schedule:
                evaluate_and_report(step)
            if step >= total_steps:
                break
        if step == steps_before:
            raise RuntimeError(f"this worker's shard of {config['n_pairs']} pairs holds fewer than one batch ({micro})")
        epoch += 1
