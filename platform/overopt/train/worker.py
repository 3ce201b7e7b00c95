"""The Ray Train per-worker loops: SFT (the reference stage) and DAA alignment.

Each runs on every worker of a ``TorchTrainer``; Ray has set up the process group and DeepSpeed
shards the policy across the workers (ZeRO stage from the config). Data arrives as this worker's
Ray Data shard. Training does not evaluate: at each scheduled step all ranks consolidate the sharded
weights into a Hugging Face directory (in the training dtype), rank 0 writes it to the experiment's
storage and hands it over to the trial driver with this interval's training metrics (sweep/handover.py),
which evaluates it. In ``inline`` mode training waits for that evaluation; in ``async`` mode it goes on.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from overopt.config import CheckpointingConfig, LoadOptions, SFTConfig, TrainConfig
from overopt.logprobs import chunked_sequence_logprobs, pair_logprobs
from overopt.models import check_vocabulary, load_model, load_tokenizer
from overopt.schedule import evaluation_steps
from overopt.storage import Storage
from overopt.train.engine import deepspeed_config, initialize_engine, partitioned_loading, reference_engine, save_hf_checkpoint
from overopt.train.steps import NonFiniteTraining, check_finite, preference_loss, sft_loss


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
    checkpointing: CheckpointingConfig = field(default_factory=CheckpointingConfig)  # engine state saved for resume (off: restart from step 0)
    # evaluation.scoring training_workers: while each evaluation runs, these workers score its samples
    # with the policy engine and the sharded reference; scoring_batch_size sequences per forward pass.
    score_evaluations: bool = False
    scoring_batch_size: int = 64


TRAIN_ROW_FILE = "train_row.json"  # in a handed-over checkpoint: its training row; written last, so it marks a complete one
# Beside the handed-over checkpoints: why training diverged. A loss or gradient norm that is not finite
# comes back on every restart (the same weights, data order and RNG from the same checkpoint), so
# restarted workers and trial drivers raise it again before loading anything (Ray Train and Tune retry
# every failure up to checkpointing.max_failures: each retry would otherwise train to the same NaN).
TRAINING_FAILED_FILE = "training_failed.txt"
NOT_TRAINED_AGAIN = " (not trained again: from the same checkpoint it would diverge again)"  # appended when raised again


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
    """Train one (objective, beta, size, seed) trial; hand a checkpoint over at each scheduled step.

    With ``checkpointing.enabled`` the engine state is saved through Ray Train at each evaluation (and
    every ``every_steps``) and, when Ray Train restarts this worker group (a lost worker or node) or the
    sweep is run again, restored: training continues from that step, the data where it was in its epoch.
    """
    import ray.train

    _quiet_worker_logs()
    store = Storage(spec.checkpoints)
    if store.exists(TRAINING_FAILED_FILE):
        raise NonFiniteTraining(store.read_text(TRAINING_FAILED_FILE) + NOT_TRAINED_AGAIN)
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
    # Diagnostics summed since the last evaluation (+ a count), on the engine's device for all_reduce.
    sums = torch.zeros(len(DIAGNOSTICS) + 1, dtype=torch.float64, device=engine.device)
    tokens, clock, waited = 0, time.time(), 0.0
    step, epoch, batches_in_epoch = 0, 0, 0  # where training is: what a checkpoint saves and restores

    def save_state(train_row: dict | None) -> None:
        """The engine state and the loop's position to storage, through Ray Train (collective)."""
        name = f"step_{step:06d}"
        state = {"step": step, "epoch": epoch, "batches_in_epoch": batches_in_epoch, "sums": sums.tolist(), "tokens": tokens,
                 "torch_rng": torch.get_rng_state(), "train_row": train_row}  # train_row: saved at an evaluation
        with tempfile.TemporaryDirectory(prefix=f"overopt_ds{rank}_") as local:
            engine.save_checkpoint(local, tag=name, client_state=state)  # each rank writes its own ZeRO shards
            # Every rank reports its directory; Ray Train merges them into one checkpoint in storage.
            ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(local), checkpoint_dir_name=name)

    def hand_over(restored_row: dict | None = None) -> None:
        """Consolidate the weights at ``step`` and hand them to the trial driver, unless it has them.
        ``restored_row``: the training row of a step restored from a checkpoint, handed over again."""
        nonlocal sums, tokens, clock, waited
        if restored_row is None:
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
            sums, tokens, clock = torch.zeros_like(sums), 0, time.time()
        else:
            train_row = restored_row
        # A restarted trial trains steps again: the driver says whether it still needs this one.
        wanted = [ray.get(spec.handover.wants.remote(step)) if rank == 0 else None]
        dist.broadcast_object_list(wanted, src=0)
        name = f"step_{step:06d}"
        if wanted[0]:
            with tempfile.TemporaryDirectory(prefix=f"overopt_r{rank}_") as local:
                save_hf_checkpoint(engine, local, tokenizer)  # collective: gathers the ZeRO-3 shards
                if rank == 0:
                    store.upload_dir(local, name)
                    # Written last: a checkpoint with its training row is complete; the driver recovers such
                    # a checkpoint after a restart if it was never evaluated.
                    store.write_text(f"{name}/{TRAIN_ROW_FILE}", json.dumps(train_row))
        if spec.checkpointing.enabled and restored_row is None:
            save_state(train_row)  # before the evaluation: a crash while it runs resumes from here
        if spec.score_evaluations and wanted[0]:
            waited = serve_scoring(store.uri(name), train_row)
        else:
            waited = ray.get(spec.handover.hand_over.remote(step, store.uri(name), train_row)) if rank == 0 and wanted[0] else 0.0
        dist.barrier()  # inline: the other ranks wait here while rank 0 waits for the evaluation

    def serve_scoring(checkpoint: str, train_row: dict) -> float:
        """Hand the checkpoint over and, until its evaluation is in, score what the evaluation's tasks
        ask for (all ranks together: rank 0 takes each request and broadcasts it). Returns the wait."""
        evaluated = spec.handover.hand_over.remote(step, checkpoint, train_row) if rank == 0 else None
        while True:
            message = [None]
            if rank == 0:
                finished, _ = ray.wait([evaluated], timeout=0)
                message = ["evaluated"] if finished else [ray.get(spec.handover.scoring_request.remote(SCORING_POLL_SECONDS))]
            dist.broadcast_object_list(message, src=0)
            if message[0] == "evaluated":
                return ray.get(evaluated) if rank == 0 else 0.0
            if message[0] is not None:
                request, prompt_ids, response_ids = message[0]
                scores = score_on_workers(engine, reference, prompt_ids, response_ids, tokenizer.pad_token_id, spec.scoring_batch_size)
                if rank == 0:
                    ray.get(spec.handover.scored.remote(request, scores))

    def stop_if_not_finite(at_step: int, values: dict) -> None:
        try:
            check_finite(at_step, values)
        except NonFiniteTraining as error:
            store.write_text(TRAINING_FAILED_FILE, str(error))  # before raising: restarts see it (above)
            raise

    restored = ray.train.get_checkpoint()
    if restored is None:
        hand_over()  # the reference itself: every curve starts at d = 0
    else:
        with restored.as_directory() as directory:
            _, state = engine.load_checkpoint(directory, load_optimizer_states=True, load_lr_scheduler_states=True)
        step, epoch, batches_in_epoch, tokens = state["step"], state["epoch"], state["batches_in_epoch"], state["tokens"]
        sums = torch.tensor(state["sums"], dtype=torch.float64, device=engine.device)
        torch.set_rng_state(state["torch_rng"])
        if rank == 0:
            print(f"  resumed {os.path.basename(spec.checkpoints)} from its checkpoint at step {step} (epoch {epoch}, batch {batches_in_epoch})", flush=True)
        if state["train_row"] is not None:  # saved at an evaluation: the driver may not have its row yet
            hand_over(state["train_row"])
    while step < total_steps:
        steps_before, skip = step, batches_in_epoch  # skip: batches of this epoch trained before a restore
        batches = shard.iter_batches(
            batch_size=micro, batch_format="numpy", drop_last=True, local_shuffle_buffer_size=4 * micro, local_shuffle_seed=spec.seed + epoch
        )
        for index, batch in enumerate(batches):
            if index < skip:
                continue
            if reference is not None:
                batch = with_reference_logprobs(reference, batch, tokenizer.pad_token_id)
            out = preference_loss(engine, batch, tokenizer.pad_token_id, spec.objective, spec.beta, spec.objective_kwargs)
            values = out.diagnostics()
            stop_if_not_finite(step + 1, values)  # before backward: a NaN loss never reaches the weights
            engine.backward(out.loss)
            engine.step()
            step += 1
            batches_in_epoch += 1
            grad_norm = engine.get_global_grad_norm()
            values["grad_norm"] = float("nan") if grad_norm is None else float(grad_norm)  # a norm of 0.0 stays 0.0
            if grad_norm is not None:
                stop_if_not_finite(step, values)
            sums += torch.tensor([values[name] for name in DIAGNOSTICS] + [1.0], dtype=torch.float64, device=sums.device)
            tokens += sum(len(x) for x in batch["chosen_ids"]) + sum(len(x) for x in batch["rejected_ids"])
            if step in schedule:
                hand_over()
            elif spec.checkpointing.enabled and spec.checkpointing.every_steps and step % spec.checkpointing.every_steps == 0:
                save_state(None)
            if step >= total_steps:
                break
        if step == steps_before and skip == 0:
            raise RuntimeError(f"this worker's shard of {spec.n_pairs} pairs holds fewer than one batch ({micro})")
        if step < total_steps:
            epoch, batches_in_epoch = epoch + 1, 0


SCORING_POLL_SECONDS = 0.5  # rank 0's wait for a scoring request before it looks whether the evaluation is in


@torch.no_grad()
def score_on_workers(policy, reference, prompt_ids: list, response_ids: list, pad_token_id: int, chunk_size: int) -> dict | None:
    """Policy and reference log-probs and response lengths of B sequences, computed by all ranks
    together; rank 0 returns them in order (dict of lists of B, and ``ranks``: the world size), the others None.
    Collective.

    Each rank scores its share of ceil(B / world) sequences. Under ZeRO-3 every forward pass gathers
    each layer's shards from all ranks, so every rank must make the same number of passes: a short
    share is padded with copies of the first sequence, whose scores are dropped."""
    world, rank = dist.get_world_size(), dist.get_rank()
    share = -(-len(prompt_ids) // world)
    mine = list(range(rank * share, min(len(prompt_ids), (rank + 1) * share)))
    padded = mine + [0] * (share - len(mine))
    prompts, responses = [prompt_ids[i] for i in padded], [response_ids[i] for i in padded]
    was_training = policy.training
    policy.eval()  # no dropout while scoring; the engine trains again after
    try:
        policy_logps, lengths = chunked_sequence_logprobs(policy, prompts, responses, pad_token_id, chunk_size)
        reference_logps, _ = chunked_sequence_logprobs(reference, prompts, responses, pad_token_id, chunk_size)
    finally:
        policy.train(was_training)
    kept = len(mine)
    part = (mine, policy_logps[:kept].double().tolist(), reference_logps[:kept].double().tolist(), lengths[:kept].long().tolist())
    parts = [None] * world
    dist.all_gather_object(parts, part)
    if rank != 0:
        return None
    scores = {"policy_logps": [0.0] * len(prompt_ids), "reference_logps": [0.0] * len(prompt_ids), "lengths": [0] * len(prompt_ids), "ranks": world}
    for indices, policy_part, reference_part, length_part in parts:
        for i, p, r, n in zip(indices, policy_part, reference_part, length_part):
            scores["policy_logps"][i], scores["reference_logps"][i], scores["lengths"][i] = p, r, n
    return scores


@torch.no_grad()
def with_reference_logprobs(reference, batch: dict, pad_token_id: int) -> dict:
    """The batch with pi_ref's log-probs of chosen and rejected, from the sharded reference (collective)."""
    logps, _, n = pair_logprobs(reference, batch, pad_token_id)
    logps = logps.double().cpu().numpy()
    return {**batch, "reference_chosen_logps": logps[:n], "reference_rejected_logps": logps[n:]}
