"""Generation backends: one interface, Hugging Face ``generate`` on CPU, vLLM on GPU.

A backend turns prompts into one sampled response each, as token ids (EOS included when the model
ended its answer) plus the decoded text. Sampling is pure temperature sampling over the full
vocabulary (no top-k / top-p): the KL estimate assumes the samples come from pi itself.

Usage:
    backend = HFGenerator(max_new_tokens=13, temperature=1.0)
    samples = backend.generate(model, tokenizer, prompts, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch


@dataclass(frozen=True)
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]  # ends with EOS iff finished
    text: str  # decoded response without special tokens
    finished: bool  # False = hit max_new_tokens (a truncation)


class GenerationBackend(Protocol):
    def generate(self, model, tokenizer, prompts: Sequence[str], seed: int) -> list[Sample]: ...


@dataclass(frozen=True)
class HFGenerator:
    """``model.generate`` with a KV cache, batched, left-padded prompts."""

    max_new_tokens: int = 13
    temperature: float = 1.0
    batch_size: int = 256

    @torch.no_grad()
    def generate(self, model, tokenizer, prompts: Sequence[str], seed: int) -> list[Sample]:
        torch.manual_seed(seed)  # reproducible samples for a given (checkpoint, seed)
        samples: list[Sample] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start : start + self.batch_size])
            encoded = tokenizer(chunk, return_tensors="pt", padding=True, padding_side="left").to(model.device)
            output = model.generate(
                **encoded,
                do_sample=True,
                temperature=self.temperature,
                top_k=0,  # sample the full distribution: no truncation of the tail
                top_p=1.0,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                use_cache=True,
            )
            new_tokens = output[:, encoded["input_ids"].shape[1] :].tolist()
            for prompt_ids, mask, tokens in zip(encoded["input_ids"].tolist(), encoded["attention_mask"].tolist(), new_tokens):
                samples.append(_to_sample(tokenizer, [t for t, m in zip(prompt_ids, mask) if m], tokens))
        return samples


def _to_sample(tokenizer, prompt_ids: list[int], tokens: list[int]) -> Sample:
    eos = tokenizer.eos_token_id
    finished = eos in tokens
    response = tokens[: tokens.index(eos) + 1] if finished else tokens
    return Sample(prompt_ids, response, tokenizer.decode(response, skip_special_tokens=True), finished)
