"""Per-sequence response log-probs for any Hugging Face causal LM.

Training (policy log-probs of chosen/rejected), the cached reference log-probs and the KL estimate
all need the same quantity: log pi(y | x) = sum_t log pi(y_t | x, y_<t) over the *response* tokens,
with prompt and padding tokens masked out. This module builds padded batches of prompt + response
token ids (left or right padding) and computes that sum in one forward pass.

Shapes: B = batch, T = padded sequence length.

Usage:
    batch = pack_prompt_response(prompt_ids, response_ids, pad_token_id=tok.pad_token_id)
    logps, n_tokens = sequence_logprobs(model, **batch)           # [B], [B]
    logps, n_tokens, B = pair_logprobs(model, pairs_batch, pad_token_id)   # chosen then rejected: [2B]
    logps, n_tokens = chunked_sequence_logprobs(model, prompts, responses, pad_token_id, chunk_size=64)  # bounded memory
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch


def pack_prompt_response(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_token_id: int,
    padding_side: Literal["left", "right"] = "right",
) -> dict[str, torch.Tensor]:
    """Concatenate each prompt with its response and pad to one length.

    Returns input_ids [B, T] (long), attention_mask [B, T] (1 = real token) and response_mask [B, T]
    (1 = a response token whose log-prob counts). Any EOS must already be part of ``response_ids``.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    input_ids = torch.full((len(prompt_ids), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_ids), length), dtype=torch.long)
    response_mask = torch.zeros((len(prompt_ids), length), dtype=torch.long)
    for i, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        n = len(prompt) + len(response)
        start = length - n if padding_side == "left" else 0
        input_ids[i, start : start + n] = torch.tensor(list(prompt) + list(response), dtype=torch.long)
        attention_mask[i, start : start + n] = 1
        response_mask[i, start + len(prompt) : start + n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each token given its prefix, and the mask of tokens that count.

    Returns (logps [B, T-1], mask [B, T-1]) aligned with targets ``input_ids[:, 1:]``; masked
    positions hold 0. Position ids are derived from the attention mask so that left padding gives the
    same numbers as right padding.
    """
    device = next(model.parameters()).device  # batches are built on the CPU; the model may be on a GPU
    input_ids, attention_mask, response_mask = input_ids.to(device), attention_mask.to(device), response_mask.to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits[:, :-1]
    targets = input_ids[:, 1:]
    # log p(target) = logit(target) - logsumexp(logits), both in float32: bf16 log-probs summed over a
    # response lose too much precision. Only the selected logit and the normaliser are kept, not a
    # second vocabulary-sized tensor of log-probs.
    selected = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
    logps = selected - torch.logsumexp(logits.float(), dim=-1)
    mask = response_mask[:, 1:].to(logps.dtype)
    return logps * mask, mask


def sequence_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs [B] and response token counts [B] (prompt and padding masked)."""
    logps, mask = token_logprobs(model, input_ids, attention_mask, response_mask)
    return logps.sum(-1), mask.sum(-1)


def chunked_sequence_logprobs(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_token_id: int,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sequence_logprobs`` of many sequences, ``chunk_size`` per forward pass: the logits of one
    chunk (chunk_size x T x vocabulary floats) bound the memory. Returns [B], [B] on the CPU."""
    logps, counts = [], []
    for start in range(0, len(prompt_ids), chunk_size):
        end = start + chunk_size
        packed = pack_prompt_response(prompt_ids[start:end], response_ids[start:end], pad_token_id)
        chunk_logps, chunk_counts = sequence_logprobs(model, **packed)
        logps.append(chunk_logps.cpu())
        counts.append(chunk_counts.cpu())
    return torch.cat(logps), torch.cat(counts)


def as_id_lists(column) -> list[list[int]]:
    # Ray Data hands list columns over as numpy object arrays of numpy arrays.
    return [list(map(int, x)) for x in column]


def pair_logprobs(model: torch.nn.Module, batch: Mapping[str, Iterable], pad_token_id: int, chunk_size: int | None = None):
    """Summed log-probs and token counts [2B] of chosen (first B) then rejected (last B).

    One forward pass (training: the gradient flows through it), or passes of ``chunk_size``
    sequences without gradient-friendly concatenation needs (the reference cache)."""
    prompts = as_id_lists(batch["prompt_ids"])
    chosen, rejected = as_id_lists(batch["chosen_ids"]), as_id_lists(batch["rejected_ids"])
    if chunk_size is not None:
        logps, counts = chunked_sequence_logprobs(model, prompts + prompts, chosen + rejected, pad_token_id, chunk_size)
    else:
        logps, counts = sequence_logprobs(model, **pack_prompt_response(prompts + prompts, chosen + rejected, pad_token_id))
    return logps, counts, len(prompts)
