"""One training step's maths, framework-free: batching, the SFT loss and the preference loss.

The Ray Train worker loop (train/worker.py) wraps these with a DeepSpeed engine; tests and quick
experiments call them on a plain ``torch.nn.Module``. Nothing here imports Ray or DeepSpeed.

Rows are token-id lists produced by ``overopt.data.tokenize.tokenize_table``: responses already end
with EOS, prompts start with whatever the tokenizer adds (``<bos>`` for the synthetic tokenizer,
nothing for Pythia's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from overopt.logprobs import as_id_lists, pack_prompt_response, pair_logprobs, token_logprobs
from overopt.objectives import ObjectiveOutput, compute_objective


def sft_loss(model: torch.nn.Module, batch: Mapping[str, Any], pad_token_id: int) -> torch.Tensor:
    """Mean negative log-likelihood of response tokens (prompt and padding masked)."""
    packed = pack_prompt_response(as_id_lists(batch["prompt_ids"]), as_id_lists(batch["response_ids"]), pad_token_id)
    logps, mask = token_logprobs(model, **packed)
    return -logps.sum() / mask.sum()


def preference_loss(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    pad_token_id: int,
    objective: str,
    beta: float,
    objective_kwargs: Mapping[str, float] | None = None,
) -> ObjectiveOutput:
    """The DAA loss of one batch of pairs; reference log-probs come cached with the batch.

    Chosen and rejected go through the policy in one forward pass (2B sequences), as is standard.
    ``batch`` needs prompt_ids, chosen_ids, rejected_ids, reference_chosen_logps and
    reference_rejected_logps.
    """
    logps, counts, n = pair_logprobs(model, batch, pad_token_id)
    return compute_objective(
        objective,
        beta,
        policy_chosen_logps=logps[:n],
        policy_rejected_logps=logps[n:],
        reference_chosen_logps=torch.tensor(np.asarray(batch["reference_chosen_logps"]), dtype=logps.dtype, device=logps.device),
        reference_rejected_logps=torch.tensor(np.asarray(batch["reference_rejected_logps"]), dtype=logps.dtype, device=logps.device),
        chosen_lengths=counts[:n],
        rejected_lengths=counts[n:],
        **(objective_kwargs or {}),
    )


OPTIMIZERS = {"adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop}


def optimizer_and_schedule(parameters, optimizer: str, lr: float, warmup_steps: int):
    """The torch optimizer (``train.optimizer``, torch's defaults otherwise) and a linear warm-up from 0
    to ``lr`` over ``warmup_steps`` steps, then constant: (optimizer, LambdaLR scheduler).

    DeepSpeed takes both as its client optimizer and scheduler (train/engine.py); a plain loop steps
    them itself (overopt.local_trial)."""
    client = OPTIMIZERS[optimizer](parameters, lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(client, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))
    return client, scheduler


class NonFiniteTraining(FloatingPointError):
    """A loss or gradient norm that is NaN or infinite: the trial stops here, naming the step."""


def check_finite(step: int, diagnostics: Mapping[str, float]) -> None:
    """Raise ``NonFiniteTraining`` naming the step and every diagnostic when any of them is NaN or inf.

    Called with the loss before the backward pass (so a NaN never reaches the weights) and with the
    gradient norm after the step (DeepSpeed computes it there). With several ranks, whose losses differ,
    ``check_finite_on_all_ranks`` makes them agree."""
    bad = [name for name, value in diagnostics.items() if not np.isfinite(value)]
    if bad:
        values = ", ".join(f"{name} {value:.6g}" for name, value in diagnostics.items())
        raise NonFiniteTraining(f"step {step}: {' and '.join(bad)} not finite ({values})")


def check_finite_on_all_ranks(step: int, diagnostics: Mapping[str, float], device: torch.device | str | None = None) -> None:
    """``check_finite`` agreed by every rank of the process group: all of them raise, or none does.

    Under ZeRO-3 a rank that raised alone would leave the others waiting in the next collective for
    hours. So every rank's diagnostics are gathered first (one all_gather; call it on every rank,
    before the backward pass, with the same diagnostic names everywhere), and every rank raises
    ``NonFiniteTraining`` with the same message: the step, each rank whose values are not finite, and
    those values. Without a process group of more than one rank it is ``check_finite``.

    ``device``: where the gathered tensor lives; None = the current CUDA device under nccl (which
    gathers only CUDA tensors), the CPU otherwise (gloo).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        check_finite(step, diagnostics)
        return
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    names = list(diagnostics)
    # float64: a value that is finite in the caller's float is finite here, and prints the same
    local = torch.tensor([float(diagnostics[name]) for name in names], dtype=torch.float64, device=device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    problems = []
    for rank, values in enumerate(gathered):
        by_name = dict(zip(names, values.tolist()))
        bad = [name for name, value in by_name.items() if not np.isfinite(value)]
        if bad:
            shown = ", ".join(f"{name} {value:.6g}" for name, value in by_name.items())
            problems.append(f"{' and '.join(bad)} not finite on rank {rank} ({shown})")
    if problems:
        raise NonFiniteTraining(f"step {step}: {'; '.join(problems)}")
