"""One training step's maths, framework-free: batching, the SFT loss and the preference loss.

The Ray Train worker loop (train/worker.py) wraps these with a DeepSpeed engine; tests and quick
experiments call them on a plain ``torch.nn.Module``. Nothing here imports Ray or DeepSpeed.

Rows are token-id lists produced by ``tokenize_*``: responses already end with EOS, prompts start
with whatever the tokenizer adds (``<bos>`` for the synthetic tokenizer, nothing for Pythia's).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from overopt.logprobs import pack_prompt_response, sequence_logprobs, token_logprobs
from overopt.objectives import ObjectiveOutput, compute_objective


def tokenize_response(tokenizer, text: str) -> list[int]:
    """Response token ids (no special tokens) followed by EOS: a complete answer."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def tokenize_demonstrations(tokenizer, rows: Sequence[Mapping[str, str]]) -> dict[str, list[list[int]]]:
    """{"prompt", "response"} text rows -> {"prompt_ids", "response_ids"} columns."""
    return {
        "prompt_ids": [tokenizer(r["prompt"])["input_ids"] for r in rows],
        "response_ids": [tokenize_response(tokenizer, r["response"]) for r in rows],
    }


def tokenize_pairs(tokenizer, rows: Sequence[Mapping[str, str]]) -> dict[str, list[list[int]]]:
    """{"prompt", "chosen", "rejected"} text rows -> id columns."""
    return {
        "prompt_ids": [tokenizer(r["prompt"])["input_ids"] for r in rows],
        "chosen_ids": [tokenize_response(tokenizer, r["chosen"]) for r in rows],
        "rejected_ids": [tokenize_response(tokenizer, r["rejected"]) for r in rows],
    }


def _as_lists(column: Any) -> list[list[int]]:
    # Ray Data hands list columns over as numpy object arrays of numpy arrays.
    return [list(map(int, x)) for x in column]


def _pair_logprobs(model: torch.nn.Module, batch: Mapping[str, Any], pad_token_id: int):
    """Summed log-probs and token counts [2B] of chosen (first B) then rejected (last B), one pass."""
    prompts = _as_lists(batch["prompt_ids"])
    chosen, rejected = _as_lists(batch["chosen_ids"]), _as_lists(batch["rejected_ids"])
    logps, counts = sequence_logprobs(model, **pack_prompt_response(prompts + prompts, chosen + rejected, pad_token_id))
    return logps, counts, len(prompts)


def sft_loss(model: torch.nn.Module, batch: Mapping[str, Any], pad_token_id: int) -> torch.Tensor:
    """Mean negative log-likelihood of response tokens (prompt and padding masked)."""
    packed = pack_prompt_response(_as_lists(batch["prompt_ids"]), _as_lists(batch["response_ids"]), pad_token_id)
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
    logps, counts, n = _pair_logprobs(model, batch, pad_token_id)
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


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, batch: Mapping[str, Any], pad_token_id: int) -> dict[str, np.ndarray]:
    """Cache columns for a batch of pairs: the reference model's chosen/rejected log-probs."""
    logps, _, n = _pair_logprobs(model, batch, pad_token_id)
    return {"reference_chosen_logps": logps[:n].cpu().numpy(), "reference_rejected_logps": logps[n:].cpu().numpy()}
