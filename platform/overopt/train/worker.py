"""The Ray Train per-worker loop of DAA alignment, and the set-up it shares with SFT's (train/sft_worker.py).

It runs on every worker of a ``TorchTrainer``; Ray has set up the process group and DeepSpeed
shards the policy across the workers (ZeRO stage from the config). Every rank holds the whole
pairs table (small next to the model) and takes its share of each global
batch of a seeded per-epoch permutation (overopt/streams.py), so the order is a property of the seeds,
not of how many workers there are or how a data loader splits streams. Training does not evaluate: at each scheduled step all ranks consolidate the sharded
weights into a Hugging Face directory (in the training dtype), rank 0 writes it to the experiment's
storage and hands it over to the trial driver with this interval's training metrics (sweep/handover.py),
which evaluates it. In ``inline`` mode training waits for that evaluation; in ``async`` mode it goes on.

One module: the hand-over, resume and scoring closures of ``alignment_worker`` share its engine and
loop, and ``score_on_workers`` / ``with_reference_logprobs`` are the collectives they run on every rank.
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

from overopt.config import CheckpointingConfig, LoadOptions, TrainConfig
from overopt.logprobs import chunked_sequence_logprobs, pair_logprobs
from overopt.models import check_vocabulary, load_model, load_tokenizer
from overopt.schedule import evaluation_steps
from overopt.storage import Storage
from overopt.train.engine import deepspeed_config, initialize_engine, partitioned_loading, reference_engine, save_hf_checkpoint
from overopt.train.loop import DIAGNOSTICS, AlignmentLoop, enable_gradient_checkpointing
from overopt.train.steps import NonFiniteTraining


@dataclass(frozen=True)
class AlignmentSpec:
    """Everything one trial's workers need, typed: built by the Tune trial, read by every rank."""

    objective: str
    beta: float
    objective_kwargs: dict[str, float]
    seed: int  # the trial's seed (sweep.seeds): with experiment_seed, the data order and the policy's randomness
    experiment_seed: int  # the experiment's master seed (config ``seed``)
    train: TrainConfig
    load_options: LoadOptions
    reference: str  # the SFT model the policy starts from (directory or hub name)
    tokenizer: str  # its tokenizer (directory or hub name)
    eval_fractions: list[float]
    pairs_path: str  # the pairs table (parquet, a path or URI): every rank reads it whole
    checkpoints: str  # where rank 0 writes each consolidated checkpoint: <location>/step_XXXXXX
    handover: Any  # the trial's CheckpointHandover actor (sweep/handover.py): takes each checkpoint
    reference_mode: str = "cache"  # cache: pi_ref's log-probs come with the pairs; sharded: a ZeRO-3 reference here
    checkpointing: CheckpointingConfig = field(
        default_factory=CheckpointingConfig
    )  # engine state saved for resume (off: restart from step 0)
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


def _setup(
    model_path: str,
    tokenizer,
    options: LoadOptions,
    seed: int,
    threads: int,
    ds_config: dict,
    lr: float,
    warmup: int,
    optimizer: str,
    gradient_checkpointing: bool = False,
):
    """``tokenizer``: a tokenizer object, or its directory / hub name."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer, options)
    with partitioned_loading(ds_config):  # ZeRO-3: each worker only ever holds its own shard
        model = load_model(model_path, vocab_size=len(tokenizer), seed=seed, options=options)
    check_vocabulary(model, tokenizer, model_path)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    engine, _ = initialize_engine(model, lr, warmup, ds_config, optimizer)  # the engine steps its scheduler
    return tokenizer, engine


def alignment_worker(spec: AlignmentSpec) -> None:
    """Train one (objective, beta, size, seed) trial; hand a checkpoint over at each scheduled step.

    The steps are train/loop.py's ``AlignmentLoop`` (the screen runs the same loop in one process);
    this function is its Ray Train glue: the ZeRO-3 engine, the pairs read from storage, diagnostics
    summed across ranks, checkpoints handed to the trial driver, and the driver's stop decision
    (``CheckpointHandover.progress``), which ends training at the same step on every rank.

    With ``checkpointing.enabled`` the engine state is saved through Ray Train at each evaluation (and
    every ``every_steps``) and, when Ray Train restarts this worker group (a lost worker or node) or the
    sweep is run again, restored: training continues from that step, at the same batch of the same
    epoch's permutation.
    """
    import pyarrow.parquet as pq
    import ray.train

    entered_at = time.time()  # this worker's process is up and Ray Train has called it
    _quiet_worker_logs()
    store = Storage(spec.checkpoints)
    if store.exists(TRAINING_FAILED_FILE):
        raise NonFiniteTraining(store.read_text(TRAINING_FAILED_FILE) + NOT_TRAINED_AGAIN)
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    train = spec.train
    share = train.batch_size // world
    micro = train.micro_batch_size or share  # pairs per forward/backward pass, accumulated up to this rank's share
    ds_config = deepspeed_config(micro, world, train.zero_stage, train.precision, train.max_grad_norm, share // micro)
    tokenizer, engine = _setup(
        spec.reference,
        spec.tokenizer,
        spec.load_options,
        spec.seed,
        train.cpus_per_worker,
        ds_config,
        train.lr,
        train.warmup_steps,
        train.optimizer,
        train.gradient_checkpointing,
    )
    reference = None
    if spec.reference_mode == "sharded":
        ref_config = deepspeed_config(micro, world, 3, train.precision, train.max_grad_norm, share // micro)
        with partitioned_loading(ref_config):
            reference = reference_engine(load_model(spec.reference, options=spec.load_options), ref_config)
    # Where this worker group's start-up went, stamped on the first checkpoint it hands over (unix times;
    # analysis/measured_costs.py turns them into phases with the driver's trial_started_at).
    start_up: dict[str, float] | None = {"worker_started_at": entered_at, "engine_ready_at": time.time()}

    def all_ranks_sum(sums: np.ndarray) -> np.ndarray:
        tensor = torch.tensor(sums, dtype=torch.float64, device=engine.device)
        dist.all_reduce(tensor)
        return tensor.cpu().numpy()

    # Every rank reads the whole (small) pairs table and takes its share of each global batch: the
    # order is one seeded permutation per epoch, the same in the screen (overopt/local_trial.py).
    loop = AlignmentLoop(
        engine,
        pq.read_table(spec.pairs_path),
        objective=spec.objective,
        beta=spec.beta,
        objective_kwargs=spec.objective_kwargs,
        batch_size=train.batch_size,
        pad_token_id=tokenizer.pad_token_id,
        experiment_seed=spec.experiment_seed,
        trial_seed=spec.seed,
        rank=rank,
        world=world,
        reduce=all_ranks_sum,
        prepare_batch=(lambda batch: with_reference_logprobs(reference, batch, tokenizer.pad_token_id)) if reference is not None else None,
        micro_batch_size=micro,
    )
    steps_per_epoch = loop.steps_per_epoch
    total_steps = max(1, round(train.epochs * steps_per_epoch))
    schedule = evaluation_steps(spec.eval_fractions, steps_per_epoch)
    clock, waited = time.time(), 0.0

    def save_state(train_row: dict | None) -> None:
        """The engine state and the loop's position to storage, through Ray Train (collective)."""
        name = f"step_{loop.step:06d}"
        state = {"loop": loop.state_dict(), "train_row": train_row}  # train_row: saved at an evaluation
        with tempfile.TemporaryDirectory(prefix=f"overopt_ds{rank}_") as local:
            engine.save_checkpoint(local, tag=name, client_state=state)  # each rank writes its own ZeRO shards
            # Every rank reports its directory; Ray Train merges them into one checkpoint in storage.
            ray.train.report({"step": loop.step}, checkpoint=ray.train.Checkpoint.from_directory(local), checkpoint_dir_name=name)

    def hand_over(restored_row: dict | None = None) -> None:
        """Consolidate the weights at the loop's step and hand them to the trial driver, unless it has
        them. ``restored_row``: the training row of a step restored from a checkpoint, handed over again."""
        nonlocal clock, waited, start_up
        step = loop.step
        if restored_row is None:
            interval = loop.take_interval()  # collective
            elapsed = time.time() - clock
            train_row = {
                "step": step,
                "epoch_fraction": step / steps_per_epoch,
                "samples_seen": step * train.batch_size,
                **{name: interval[name] for name in DIAGNOSTICS},
                "tokens_per_second": interval["tokens"] / max(elapsed - waited, 1e-9) if step else float("nan"),
                # This interval's wall time and the part of it training spent waiting for evaluations
                # (handing over the previous checkpoint): docs/benchmarks.md.
                "interval_seconds": elapsed,
                "evaluation_wait_seconds": waited,
                "train_node_id": ray.get_runtime_context().get_node_id(),  # where rank 0 ran (clusters)
                "planned_epochs": train.epochs,
                "planned_steps": total_steps,  # lets the analysis tell a finished trial from an interrupted one
            }
            clock = time.time()
            if start_up is not None:
                train_row.update(start_up)
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
                    if start_up is not None and restored_row is None:
                        train_row["checkpoint_ready_at"] = time.time()  # the first checkpoint is in storage
                    # Written last: a checkpoint with its training row is complete; the driver recovers such
                    # a checkpoint after a restart if it was never evaluated.
                    store.write_text(f"{name}/{TRAIN_ROW_FILE}", json.dumps(train_row))
        start_up = None  # stamped once per worker group
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
        evaluated = spec.handover.hand_over.remote(loop.step, checkpoint, train_row) if rank == 0 else None
        while True:
            message: list[Any] = [None]  # rank 0's, broadcast: "evaluated", a scoring request, or None
            if evaluated is not None:  # rank 0
                finished, _ = ray.wait([evaluated], timeout=0)
                message = ["evaluated"] if finished else [ray.get(spec.handover.scoring_request.remote(SCORING_POLL_SECONDS))]
            dist.broadcast_object_list(message, src=0)
            if message[0] == "evaluated":
                return ray.get(evaluated) if evaluated is not None else 0.0  # only rank 0 holds it
            if message[0] is not None:
                request, prompt_ids, response_ids = message[0]
                scores = score_on_workers(engine, reference, prompt_ids, response_ids, tokenizer.pad_token_id, spec.scoring_batch_size)
                if rank == 0:
                    ray.get(spec.handover.scored.remote(request, scores))

    def stop_requested() -> bool:
        """Rank 0 tells the driver how far training got and learns whether it decided to stop the
        trial; every rank gets the answer, so all leave the loop at the same step (collective)."""
        flag = torch.tensor([float(ray.get(spec.handover.progress.remote(loop.step))) if rank == 0 else 0.0], device=engine.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    restored = ray.train.get_checkpoint()
    if restored is None:
        hand_over()  # the reference itself: every curve starts at d = 0
    else:
        with restored.as_directory() as directory:
            _, state = engine.load_checkpoint(directory, load_optimizer_states=True, load_lr_scheduler_states=True)
        loop.load_state_dict(state["loop"])
        if rank == 0:
            print(
                f"  resumed {os.path.basename(spec.checkpoints)} from its checkpoint at step {loop.step} "
                f"(epoch {loop.epoch}, batch {loop.batch_in_epoch})",
                flush=True,
            )
        if state["train_row"] is not None:  # saved at an evaluation: the driver may not have its row yet
            hand_over(state["train_row"])
    every = spec.checkpointing.every_steps if spec.checkpointing.enabled else None
    while loop.step < total_steps and not stop_requested():
        try:
            loop.train_step()
        except NonFiniteTraining as error:  # every rank raises the same message at the same step
            if rank == 0:
                store.write_text(TRAINING_FAILED_FILE, str(error))  # before raising: restarts see it (above)
            raise
        if loop.step in schedule:
            hand_over()
        elif every and loop.step % every == 0:
            save_state(None)
    stop_requested()  # the driver learns where training ended (a stop decided at the last step included)


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
    parts: list[Any] = [None] * world  # every rank's part, gathered
    dist.all_gather_object(parts, part)
    if rank != 0:
        return None
    scores: dict[str, Any] = {
        "policy_logps": [0.0] * len(prompt_ids),
        "reference_logps": [0.0] * len(prompt_ids),
        "lengths": [0] * len(prompt_ids),
        "ranks": world,
    }
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
