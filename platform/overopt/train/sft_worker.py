"""The Ray Train per-worker loop of the SFT stage (the reference model, sweep/stages.py).

It runs on every worker of the stage's ``TorchTrainer`` with the alignment worker's set-up
(train/worker.py: the same loading, ZeRO partitioning and engine), and takes its share of each global
batch of a seeded per-epoch permutation of the demonstrations (overopt/streams.py: SFT_ORDER); rank 0
reports the fine-tuned model as a Ray Train checkpoint.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from overopt.config import LoadOptions, SFTConfig, TrainConfig
from overopt.streams import SFT_ORDER, batch_rows, epoch_order
from overopt.train.engine import deepspeed_config, save_hf_checkpoint
from overopt.train.loop import sft_step
from overopt.train.worker import _quiet_worker_logs, _setup


@dataclass(frozen=True)
class SFTSpec:
    """What the SFT stage's workers need, typed: built by sweep/stages.py, read by every rank."""

    model: str  # a built-in size, hub name or directory: the model to fine-tune
    tokenizer: Any  # the tokenizer object itself: workers may not share the driver's disk
    sft: SFTConfig  # steps come from steps (per size, resolved by the stage), batch size, lr, threads
    steps: int
    train: TrainConfig  # the ZeRO stage, precision and gradient clipping of the sweep
    load_options: LoadOptions
    seed: int  # the experiment's master seed: the model's initialisation and the demonstrations' order
    demonstrations: Any  # ObjectRef of the tokenized demonstrations (prompt_ids, response_ids): an Arrow table

    @property
    def zero_stage(self) -> int:
        # One worker has nothing to shard: plain data-parallel stage 0 avoids ZeRO-3's overhead.
        return self.train.zero_stage if self.sft.num_workers > 1 else 0


def sft_worker(spec: SFTSpec) -> None:
    """Supervised fine-tuning on demonstrations; reports the reference model as an HF directory.

    Every epoch visits the demonstrations in its own seeded permutation (overopt/streams.py: SFT_ORDER,
    the experiment's seed, the epoch), drawn whole before each global batch is split across ranks."""
    import ray.train

    _quiet_worker_logs()
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    sft = spec.sft
    share = sft.batch_size // world
    micro = sft.micro_batch_size or share  # sequences per forward/backward pass, accumulated up to this rank's share
    ds_config = deepspeed_config(micro, world, spec.zero_stage, spec.train.precision, spec.train.max_grad_norm, share // micro)
    tokenizer, engine = _setup(
        spec.model,
        spec.tokenizer,
        spec.load_options,
        spec.seed,
        sft.cpus_per_worker,
        ds_config,
        sft.lr,
        0,
        "adamw",
        sft.gradient_checkpointing,
    )
    table = ray.get(spec.demonstrations)
    batches_per_epoch = table.num_rows // sft.batch_size
    step, losses, started = 0, [], time.time()
    while step < spec.steps:
        epoch, batch_index = divmod(step, batches_per_epoch)
        order = epoch_order(table.num_rows, spec.seed, 0, epoch, SFT_ORDER)
        rows = pa.array(batch_rows(order, sft.batch_size, batch_index, rank, world))
        demonstrations = {name: table.column(name).take(rows).to_pylist() for name in ("prompt_ids", "response_ids")}
        losses.append(sft_step(engine, demonstrations, tokenizer.pad_token_id, micro))
        step += 1
        if step % 250 == 0 or step == spec.steps:
            if rank == 0:  # to the run's workers.log (the console too with --verbose): sweep/console.py
                print(f"  sft {spec.model}: step {step}/{spec.steps} loss {np.mean(losses):.3f}", flush=True)
            losses = []
    # The reference leaves as a Ray Train checkpoint (to the run's storage): the driver may be elsewhere.
    with tempfile.TemporaryDirectory(prefix="overopt_sft_") as local:
        save_hf_checkpoint(engine, local, tokenizer)
        ray.train.report({"step": step, "sft_seconds": time.time() - started}, checkpoint=ray.train.Checkpoint.from_directory(local))
