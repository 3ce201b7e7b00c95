"""One training step's maths, framework-free: batching, the SFT loss and the preference loss.

The Ray Train worker loop (train/worker.py) wraps these with a DeepSpeed engine; tests and quick
experiments call them on a plain ``torch.nn.Module``. Nothing here imports Ray or DeepSpeed.

Rows are token-id lists produced by ``overopt.data.tokenize.tokenize_table``: responses already end
with EOS, prompts start with whatever the tokenizer adds (``<bos>`` for the synthetic tokenizer,
nothing for Pythia's).
"""

from __future__ import annotations

from typing import Any, Mapping

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
    gradient norm after the step (DeepSpeed computes it there)."""
    bad = [name for name, value in diagnostics.items() if not np.isfinite(value)]
    if bad:
        values = ", ".join(f"{name} {value:.6g}" for name, value in diagnostics.items())
        raise NonFiniteTraining(f"step {step}: {' and '.join(bad)} not finite ({values})")
