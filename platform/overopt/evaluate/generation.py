"""Generation backends: one interface, Hugging Face ``generate`` on CPU, vLLM on GPU.

A backend turns prompts, given as token ids (tokenised once, by the data stage), into one sampled
response each, as token ids (EOS included when the model ended its answer) plus the decoded text.
Sampling is plain ancestral sampling at temperature 1 (``overopt.config.SAMPLING_TEMPERATURE``) over
the full vocabulary, whatever ``generation_config`` a hub model ships: no top-k / top-p, no repetition
penalty, no forced or suppressed tokens, no minimum length. The KL estimate assumes the samples come
from pi itself.

Usage:
    backend = HFGenerator(max_new_tokens=13)
    samples = backend.generate(model, tokenizer, prompt_ids, seed=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from overopt.config import SAMPLING_TEMPERATURE


@dataclass(frozen=True)
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]  # ends with EOS iff finished
    text: str  # decoded response without special tokens
    finished: bool  # False = hit max_new_tokens (a truncation)
    sampler_logp: float | None = None  # the sampler's own summed log-prob of the response (vLLM), None if not kept


class GenerationBackend(Protocol):
    def generate(self, model, tokenizer, prompt_ids: Sequence[Sequence[int]], seed: int) -> list[Sample]: ...


# Every generation_config field that would make samples differ from pi itself, set to its neutral value.
PLAIN_SAMPLING = {
    "do_sample": True,
    "top_k": 0,  # the full vocabulary: no truncation of the tail
    "top_p": 1.0,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_repetition_penalty": 1.0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "min_new_tokens": 0,  # takes precedence over any min_length a model ships
    "length_penalty": 1.0,
    "num_beams": 1,
    "renormalize_logits": False,
    "sequence_bias": None,
}


@dataclass(frozen=True)
class HFGenerator:
    """``model.generate`` with a KV cache, batched, left-padded prompts."""

    max_new_tokens: int = 13
    temperature: float = SAMPLING_TEMPERATURE  # 1: the KL estimate assumes samples of pi itself
    batch_size: int = 256

    @torch.no_grad()
    def generate(self, model, tokenizer, prompt_ids: Sequence[Sequence[int]], seed: int) -> list[Sample]:
        torch.manual_seed(seed)  # reproducible samples for a given (checkpoint, seed)
        samples: list[Sample] = []
        device = next(model.parameters()).device
        for start in range(0, len(prompt_ids), self.batch_size):
            chunk = [list(map(int, ids)) for ids in prompt_ids[start : start + self.batch_size]]
            width = max(len(ids) for ids in chunk)
            # Left padding: every prompt ends where generation starts.
            input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in chunk], device=device)
            attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                **PLAIN_SAMPLING,
                temperature=self.temperature,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                use_cache=True,
            )
            for ids, tokens in zip(chunk, output[:, width:].tolist()):
                samples.append(_to_sample(tokenizer, ids, tokens))
        return samples


@dataclass(frozen=True)
class GivenSamples:
    """Samples drawn before scoring (the vLLM stage of the pipeline), handed to ``score_samples`` as
    its backend: ``generate`` returns them after checking they answer exactly these prompts."""

    samples: list[Sample]

    def generate(self, model, tokenizer, prompt_ids: Sequence[Sequence[int]], seed: int) -> list[Sample]:
        if [s.prompt_ids for s in self.samples] != [list(map(int, ids)) for ids in prompt_ids]:
            raise ValueError("the given samples do not answer these prompts (order or content differs)")
        return self.samples


def _to_sample(tokenizer, prompt_ids: list[int], tokens: list[int]) -> Sample:
    eos = tokenizer.eos_token_id
    finished = eos in tokens
    response = tokens[: tokens.index(eos) + 1] if finished else tokens
    return Sample(prompt_ids, response, tokenizer.decode(response, skip_special_tokens=True), finished)
