"""The alignment loop: one DAA trial's optimizer steps, the same for the sweep and the screen.

The sweep's Ray Train workers (train/worker.py, under DeepSpeed ZeRO-3) and the one-process screen
(overopt/local_trial.py, a plain torch optimizer) both drive an ``AlignmentLoop``; what they add is
their glue: handing checkpoints over and saving engine state, or evaluating in place.

    loop = AlignmentLoop(engine, pairs, objective="dpo", beta=0.1, batch_size=32, pad_token_id=0,
                         experiment_seed=0, trial_seed=0, micro_batch_size=8)   # engine: 4 micro-batches a step
    while loop.step < total_steps:
        loop.train_step()
        if loop.step in schedule:
            interval = loop.take_interval()   # mean diagnostics since the last call, summed over ranks

Data order: every epoch visits the pairs in a permutation drawn from (experiment seed, trial seed,
epoch) (overopt/streams.py), the whole global batch is drawn before it is split across ranks, and
the loop's position (epoch, batch within it) is part of its state, so a restored trial continues the
same permutation at the same batch.

Micro-batches: one ``train_step`` is one optimizer step. This rank's share of the global batch is cut,
in order, into micro-batches of ``micro_batch_size`` pairs (train.micro_batch_size; default the whole
share), each through its own forward and backward pass; the engine accumulates their gradients, each
scaled by 1 / (micro-batches per step), and updates the weights after the last one, so the step equals
the whole share's. ``engine`` is anything with DeepSpeed's engine interface: called as the model,
``backward(loss)`` (scaled by 1 / ``gradient_accumulation_steps()``), ``step()`` (an optimizer step,
clipping and zeroing the gradients, at the accumulation boundary only) and ``get_global_grad_norm()``;
``PlainEngine`` gives a torch module and optimizer that interface. ``sft_step`` is the same for one
SFT step. Nothing here imports Ray or DeepSpeed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from overopt.logprobs import as_id_lists, pack_prompt_response
from overopt.streams import ALIGNMENT_ORDER, batch_rows, epoch_order
from overopt.train.steps import check_finite_on_all_ranks, preference_loss, sft_loss

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Per-step diagnostics, averaged over the steps (and ranks) of each interval between evaluations.
DIAGNOSTICS = ("loss", "implicit_accuracy", "reward_margin", "chosen_log_ratio", "rejected_log_ratio", "grad_norm")
ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
REFERENCE_COLUMNS = ("reference_chosen_logps", "reference_rejected_logps")  # absent when the reference is sharded


class PlainEngine:
    """A torch module, optimizer and scheduler behind DeepSpeed's engine interface, for one process,
    gradient accumulation included: ``backward`` adds the gradients of loss / gradient_accumulation_steps
    (zeroing them first at the first micro-batch of each step), and ``step()`` clips the accumulated
    gradients to ``max_grad_norm`` (DeepSpeed's gradient_clipping) and steps optimizer and scheduler at
    the last micro-batch of each step only (DeepSpeed's ``is_gradient_accumulation_boundary``)."""

    def __init__(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        max_grad_norm: float,
        gradient_accumulation_steps: int = 1,
    ):
        self.module, self.optimizer, self.scheduler, self.max_grad_norm = module, optimizer, scheduler, max_grad_norm
        self.accumulation_steps = gradient_accumulation_steps
        self.micro_steps = 0  # backward passes so far, counted as DeepSpeed's engine counts them
        self._grad_norm: float | None = None

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def parameters(self):
        return self.module.parameters()

    def gradient_accumulation_steps(self) -> int:
        return self.accumulation_steps

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro_steps + 1) % self.accumulation_steps == 0

    def backward(self, loss: torch.Tensor) -> None:
        if self.micro_steps % self.accumulation_steps == 0:
            self.optimizer.zero_grad(set_to_none=True)
        (loss / self.accumulation_steps).backward()

    def step(self) -> None:
        if self.is_gradient_accumulation_boundary():
            self._grad_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm))
            self.optimizer.step()
            self.scheduler.step()
        self.micro_steps += 1

    def get_global_grad_norm(self) -> float | None:
        return self._grad_norm


def enable_gradient_checkpointing(model: PreTrainedModel) -> PreTrainedModel:
    """Hugging Face activation checkpointing on every decoder layer, for training: each layer keeps only
    its input in the forward pass and is run again in the backward pass (torch's non-reentrant
    checkpoint, which DeepSpeed ZeRO-3's parameter gathering hooks work with). The KV cache is switched
    off in the config (a checkpointed layer cannot fill it); the generation config keeps its own, so a
    saved checkpoint still samples with the cache. Returns the model."""
    # transformers 5 renamed gradient_checkpointing_enable (kept as a deprecated alias) to activation_checkpointing_enable
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    model.config.use_cache = False
    return model


def micro_batches(batch: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """``batch`` (columns of one length: lists or arrays) cut in order into parts of ``size`` rows."""
    rows = len(next(iter(batch.values())))
    if rows % size:
        raise ValueError(f"{rows} rows do not split into micro-batches of {size}")
    return [{name: column[start : start + size] for name, column in batch.items()} for start in range(0, rows, size)]


def response_tokens(batch: dict[str, Any], pad_token_id: int) -> int:
    """The response tokens ``sft_loss`` averages over in ``batch`` (prompt_ids, response_ids)."""
    packed = pack_prompt_response(as_id_lists(batch["prompt_ids"]), as_id_lists(batch["response_ids"]), pad_token_id)
    return int(packed["response_mask"][:, 1:].sum())  # as token_logprobs' mask: a token is predicted from its prefix


def sft_step(engine: Any, share: dict[str, Any], pad_token_id: int, micro_batch_size: int) -> float:
    """One SFT optimizer step on this rank's share of a batch of demonstrations (prompt_ids,
    response_ids), cut in order into micro-batches of ``micro_batch_size`` whose gradients the engine
    accumulates. The loss is the share's mean over all its response tokens, as one pass over the share
    computes it: each micro-batch's own token mean is weighted by its part of the share's tokens (times
    the micro-batches per step, which the engine's backward divides by). Returns that loss."""
    parts = micro_batches(share, micro_batch_size)
    counts = [response_tokens(part, pad_token_id) for part in parts]
    share_loss = 0.0
    for part, count in zip(parts, counts):
        weighted = sft_loss(engine, part, pad_token_id) * (count / sum(counts))
        engine.backward(weighted * len(parts))
        engine.step()  # an optimizer step at the last micro-batch only
        share_loss += float(weighted.detach())
    return share_loss


class AlignmentLoop:
    """One trial's training position and its steps (see the module docstring).

    ``pairs``: the pairs table (prompt_ids, chosen_ids, rejected_ids and, with the cached reference,
    reference_chosen_logps and reference_rejected_logps). ``rank``/``world``: this process's share of
    each global batch. ``reduce``: sums a float64 vector across ranks (all_reduce under Ray Train;
    identity in one process). ``prepare_batch``: adds what the table lacks (the sharded reference's
    log-probs) to a batch before the loss.
    """

    def __init__(
        self,
        engine: Any,
        pairs: pa.Table,
        *,
        objective: str,
        beta: float,
        batch_size: int,
        pad_token_id: int,
        experiment_seed: int,
        trial_seed: int,
        objective_kwargs: dict[str, float] | None = None,
        rank: int = 0,
        world: int = 1,
        reduce: Callable[[np.ndarray], np.ndarray] = lambda sums: sums,
        prepare_batch: Callable[[dict], dict] | None = None,
        micro_batch_size: int | None = None,
    ):
        self.engine, self.pairs = engine, pairs
        self.objective, self.beta, self.objective_kwargs = objective, beta, objective_kwargs or {}
        self.batch_size, self.pad_token_id = batch_size, pad_token_id
        self.experiment_seed, self.trial_seed = experiment_seed, trial_seed
        self.rank, self.world, self.reduce, self.prepare_batch = rank, world, reduce, prepare_batch
        self.steps_per_epoch = pairs.num_rows // batch_size  # the last, partial batch of an epoch is dropped
        if self.steps_per_epoch < 1:
            raise ValueError(f"{pairs.num_rows} pairs are fewer than one batch ({batch_size})")
        share = batch_size // world
        self.micro_batch_size = micro_batch_size or share  # pairs per forward/backward pass
        if share % self.micro_batch_size:
            raise ValueError(f"micro-batches of {self.micro_batch_size} pairs do not divide this rank's {share} pairs of each batch")
        # Where training is (saved and restored with the engine): steps taken, epoch, batches of it done.
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        # Diagnostics summed since the last interval, then the step count and the response+prompt tokens.
        self.sums = np.zeros(len(DIAGNOSTICS) + 2)
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its permutation)

    def epoch_rows(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.pairs.num_rows, self.experiment_seed, self.trial_seed, epoch, ALIGNMENT_ORDER))
        return self._order[1]

    def next_batch(self) -> dict[str, Any]:
        """This rank's share of the next global batch (advancing to a new epoch when one is used up),
        as the table holds it (``prepare_batch`` is applied to each micro-batch by ``train_step``)."""
        if self.batch_in_epoch == self.steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        rows = batch_rows(self.epoch_rows(self.epoch), self.batch_size, self.batch_in_epoch, self.rank, self.world)
        indices = pa.array(rows)
        batch: dict[str, Any] = {name: self.pairs.column(name).take(indices).to_pylist() for name in ID_COLUMNS}
        for name in REFERENCE_COLUMNS:
            if name in self.pairs.column_names:
                batch[name] = self.pairs.column(name).take(indices).to_numpy().astype(np.float64)
        return batch

    def train_step(self) -> dict[str, float]:
        """One optimizer step on the next batch: this rank's share, cut in order into micro-batches, each
        through forward and backward; returns the diagnostics averaged over the micro-batches (all of
        one size: the share's means). Raises ``NonFiniteTraining`` on every rank alike when any rank's
        loss (checked per micro-batch, before its backward) or the step's gradient norm is not finite."""
        share = self.next_batch()
        parts = micro_batches(share, self.micro_batch_size)
        if self.engine.gradient_accumulation_steps() != len(parts):  # the engine would step at the wrong micro-batch
            raise ValueError(
                f"the engine accumulates {self.engine.gradient_accumulation_steps()} micro-batches per step, "
                f"but each step here has {len(parts)} ({len(share['prompt_ids'])} pairs in micro-batches of {self.micro_batch_size})"
            )
        sums: dict[str, float] = {}
        for part in parts:
            if self.prepare_batch is not None:
                part = self.prepare_batch(part)
            out = preference_loss(self.engine, part, self.pad_token_id, self.objective, self.beta, self.objective_kwargs)
            values = out.diagnostics()
            check_finite_on_all_ranks(self.step + 1, values)  # before backward: a NaN never reaches the weights
            self.engine.backward(out.loss)
            self.engine.step()  # the optimizer steps at the last micro-batch only
            sums = {name: sums.get(name, 0.0) + value for name, value in values.items()}
        values = {name: total / len(parts) for name, total in sums.items()}
        self.step += 1
        self.batch_in_epoch += 1
        grad_norm = self.engine.get_global_grad_norm()
        values["grad_norm"] = float("nan") if grad_norm is None else float(grad_norm)  # a norm of 0.0 stays 0.0
        if grad_norm is not None:
            check_finite_on_all_ranks(self.step, values)
        tokens = sum(len(ids) for name in ID_COLUMNS for ids in share[name])
        self.sums += np.array([values[name] for name in DIAGNOSTICS] + [1.0, tokens])
        return values

    def take_interval(self) -> dict[str, float]:
        """Mean diagnostics over the steps since the last call, across all ranks (collective under
        Ray Train), and ``tokens``: the tokens all ranks trained on meanwhile. Starts a new interval."""
        sums = self.reduce(self.sums.copy())
        count = sums[len(DIAGNOSTICS)]
        interval = {name: float(sums[i] / count) if count else float("nan") for i, name in enumerate(DIAGNOSTICS)}
        interval["tokens"] = float(sums[-1])
        self.sums = np.zeros_like(self.sums)
        return interval

    def state_dict(self) -> dict[str, Any]:
        """The loop's position, its interval sums and torch's RNG: saved beside the engine's state."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "sums": self.sums.tolist(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        self.sums = np.asarray(state["sums"], dtype=np.float64)
        torch.set_rng_state(state["torch_rng"])
