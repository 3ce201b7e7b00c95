"""The alignment loop: one DAA trial's optimizer steps, the same for the sweep and the screen.

The sweep's Ray Train workers (train/worker.py, under DeepSpeed ZeRO-3) and the one-process screen
(overopt/local_trial.py, a plain torch optimizer) both drive an ``AlignmentLoop``; what they add is
their glue: handing checkpoints over and saving engine state, or evaluating in place.

    loop = AlignmentLoop(engine, pairs, objective="dpo", beta=0.1, batch_size=32, pad_token_id=0,
                         experiment_seed=0, trial_seed=0)
    while loop.step < total_steps:
        loop.train_step()
        if loop.step in schedule:
            interval = loop.take_interval()   # mean diagnostics since the last call, summed over ranks

Data order: every epoch visits the pairs in a permutation drawn from (experiment seed, trial seed,
epoch) (overopt/streams.py), the whole global batch is drawn before it is split across ranks, and
the loop's position (epoch, batch within it) is part of its state, so a restored trial continues the
same permutation at the same batch. ``engine`` is anything with DeepSpeed's engine interface: called
as the model, ``backward(loss)``, ``step()`` (which also zeroes the gradients) and
``get_global_grad_norm()``; ``PlainEngine`` gives a torch module and optimizer that interface.
Nothing here imports Ray or DeepSpeed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from overopt.streams import ALIGNMENT_ORDER, batch_rows, epoch_order
from overopt.train.steps import check_finite_on_all_ranks, preference_loss

# Per-step diagnostics, averaged over the steps (and ranks) of each interval between evaluations.
DIAGNOSTICS = ("loss", "implicit_accuracy", "reward_margin", "chosen_log_ratio", "rejected_log_ratio", "grad_norm")
ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
REFERENCE_COLUMNS = ("reference_chosen_logps", "reference_rejected_logps")  # absent when the reference is sharded


class PlainEngine:
    """A torch module, optimizer and scheduler behind DeepSpeed's engine interface, for one process:
    ``step()`` clips the gradients to ``max_grad_norm`` (DeepSpeed's gradient_clipping) and steps both."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, max_grad_norm: float):
        self.module, self.optimizer, self.scheduler, self.max_grad_norm = module, optimizer, scheduler, max_grad_norm
        self._grad_norm: float | None = None

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def parameters(self):
        return self.module.parameters()

    def backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def step(self) -> None:
        self._grad_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()

    def get_global_grad_norm(self) -> float | None:
        return self._grad_norm


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
    ):
        self.engine, self.pairs = engine, pairs
        self.objective, self.beta, self.objective_kwargs = objective, beta, objective_kwargs or {}
        self.batch_size, self.pad_token_id = batch_size, pad_token_id
        self.experiment_seed, self.trial_seed = experiment_seed, trial_seed
        self.rank, self.world, self.reduce, self.prepare_batch = rank, world, reduce, prepare_batch
        self.steps_per_epoch = pairs.num_rows // batch_size  # the last, partial batch of an epoch is dropped
        if self.steps_per_epoch < 1:
            raise ValueError(f"{pairs.num_rows} pairs are fewer than one batch ({batch_size})")
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
        """This rank's share of the next global batch (advancing to a new epoch when one is used up)."""
        if self.batch_in_epoch == self.steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        rows = batch_rows(self.epoch_rows(self.epoch), self.batch_size, self.batch_in_epoch, self.rank, self.world)
        indices = pa.array(rows)
        batch: dict[str, Any] = {name: self.pairs.column(name).take(indices).to_pylist() for name in ID_COLUMNS}
        for name in REFERENCE_COLUMNS:
            if name in self.pairs.column_names:
                batch[name] = self.pairs.column(name).take(indices).to_numpy().astype(np.float64)
        return self.prepare_batch(batch) if self.prepare_batch is not None else batch

    def train_step(self) -> dict[str, float]:
        """One optimizer step on the next batch; returns its diagnostics. Raises ``NonFiniteTraining``
        on every rank alike when any rank's loss (before backward) or the gradient norm is not finite."""
        batch = self.next_batch()
        out = preference_loss(self.engine, batch, self.pad_token_id, self.objective, self.beta, self.objective_kwargs)
        values = out.diagnostics()
        check_finite_on_all_ranks(self.step + 1, values)  # before backward: a NaN never reaches the weights
        self.engine.backward(out.loss)
        self.engine.step()
        self.step += 1
        self.batch_in_epoch += 1
        grad_norm = self.engine.get_global_grad_norm()
        values["grad_norm"] = float("nan") if grad_norm is None else float(grad_norm)  # a norm of 0.0 stays 0.0
        if grad_norm is not None:
            check_finite_on_all_ranks(self.step, values)
        tokens = sum(len(ids) for name in ID_COLUMNS for ids in batch[name])
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
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "sums": self.sums.tolist(),
                "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        self.sums = np.asarray(state["sums"], dtype=np.float64)
        torch.set_rng_state(state["torch_rng"])
