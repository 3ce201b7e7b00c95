"""The embedded synthetic task: prompts, an exact gold judge, noisy demonstrations, a biased labeller.

Everything is deterministic from a seed and runs in milliseconds, so a laptop or CI can run the whole
over-optimization study with an exact judge (docs/calibration.md):

- a vocabulary of ``n_content_words`` words ``w00 w01 ...``; a fixed, seeded subset is *salient*;
- a prompt is a random "document" of words holding a few distinct salient words, then ``<sep>``;
- the ideal response lists the prompt's salient words in order of appearance (then EOS);
- ``gold_reward`` scores a response against the ideal (in-order coverage up; missing, extra, repeated
  words, excess length and a missing EOS down), bounded in [0, 1] and exactly 1 for the ideal;
- SFT demonstrations are ideal responses corrupted by drops, substitutions, duplicates, insertions,
  swaps, early stops (an answer that ends before it is complete) and trailing junk (one that rambles on);
- a ``Labeller`` labels pairs with a Bradley-Terry draw on *its* score: gold plus a bias the gold
  judge does not share, ``length_bias`` per word (> 0: a verbosity bias, raters who prefer longer
  answers, as human summary labels do; < 0: concise ones). That proxy/gold gap is what a policy can
  over-optimize (docs/calibration.md). ``length_bias = 0`` leaves only label noise and finite data.

The task is a data source and a judge, nothing more: the training and evaluation code treat its
prompts and responses as plain text, exactly like a Hugging Face dataset.

Usage:
    task = SyntheticTask(seed=0)
    prompts = task.prompts(256, seed=1)
    task.gold_reward(prompts[0], task.ideal_response(prompts[0]))   # -> 1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np

from overopt.config import SyntheticTaskConfig

SEP = "<sep>"  # ends every prompt: the model's cue to start the response


class SyntheticTask(SyntheticTaskConfig):
    """The task's behaviour on top of its parameters (overopt.config.SyntheticTaskConfig, documented there)."""

    # --- vocabulary (computed once per task: the gold judge asks for it at every sample) --------------
    @cached_property
    def content_words(self) -> list[str]:
        return [f"w{i:02d}" for i in range(self.n_content_words)]

    @cached_property
    def salient_words(self) -> frozenset[str]:
        rng = np.random.default_rng(self.seed)
        chosen = rng.choice(self.n_content_words, size=self.n_salient, replace=False)
        return frozenset(self.content_words[i] for i in chosen)

    @cached_property
    def filler_words(self) -> list[str]:
        return sorted(set(self.content_words) - self.salient_words)

    # --- prompts and ideal responses ---------------------------------------------------------------
    def prompts(self, n: int, seed: int) -> list[str]:
        """``n`` prompt texts ("w03 w17 ... <sep>"), deterministic from ``seed``."""
        rng = np.random.default_rng(seed)
        salient = sorted(self.salient_words)
        filler = self.filler_words
        prompts = []
        for _ in range(n):
            length = int(rng.integers(self.prompt_words[0], self.prompt_words[1] + 1))
            k = int(rng.integers(self.salient_per_prompt[0], self.salient_per_prompt[1] + 1))
            words = list(rng.choice(filler, size=length - k, replace=True))
            for word, position in zip(rng.choice(salient, size=k, replace=False), rng.permutation(length)[:k]):
                words.insert(int(position), str(word))
            prompts.append(" ".join(words[:length]) + " " + SEP)
        return prompts

    def ideal_response(self, prompt: str) -> str:
        """The prompt's salient words in order of first appearance."""
        return " ".join(_ideal_words(prompt, self.salient_words))

    # --- the gold judge ----------------------------------------------------------------------------
    def gold_reward(self, prompt: str, response: str, finished: bool = True) -> float:
        """True quality in [0, 1]; 1 exactly for the ideal response ended with EOS."""
        ideal = _ideal_words(prompt, self.salient_words)
        words = response.split()
        matched = len(set(words) & set(ideal))
        precision = matched / len(words) if words else 0.0
        recall = matched / len(ideal)
        f1 = 2 * precision * recall / (precision + recall) if matched else 0.0
        in_order = _longest_common_subsequence(words, ideal) / len(ideal)
        excess = max(0, len(words) - len(ideal))
        repeats = len(words) - len(set(words))
        score = (
            self.f1_weight * f1
            + self.order_weight * in_order
            - self.excess_length_penalty * excess
            - self.repeat_penalty * repeats
            - self.no_eos_penalty * (not finished)
        )
        return float(min(1.0, max(0.0, score)))

    def response_errors(self, prompt: str, response: str) -> dict[str, int]:
        """What a response gets wrong, in words: ideal words it misses, words that are not ideal
        (junk), repeated words, and its length minus the ideal's (how the policy moves, in the task's
        own terms: docs/calibration.md)."""
        ideal = _ideal_words(prompt, self.salient_words)
        words = response.split()
        return {
            "missing": len(set(ideal) - set(words)),
            "junk": sum(word not in ideal for word in words),
            "repeats": len(words) - len(set(words)),
            "length_gap": len(words) - len(ideal),
        }

    # --- SFT demonstrations ------------------------------------------------------------------------
    def demonstration(self, prompt: str, rng: np.random.Generator) -> str:
        """The ideal response corrupted by drops, substitutions, duplicates, insertions and a swap, then
        trailing junk words (``trailing_rate``): an answer that goes on after it is complete."""
        words = []
        for word in _ideal_words(prompt, self.salient_words):
            if rng.random() < self.drop_prob:
                continue
            if rng.random() < self.substitute_prob:
                word = str(rng.choice(self.filler_words))
            words.append(word)
            if rng.random() < self.duplicate_prob:
                words.append(word)
        for _ in range(rng.poisson(self.insertion_rate)):
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(self.content_words)))
        if len(words) >= 2 and rng.random() < self.swap_prob:
            i = int(rng.integers(0, len(words) - 1))
            words[i], words[i + 1] = words[i + 1], words[i]
        if self.stop_early_prob and len(words) >= 2 and rng.random() < self.stop_early_prob:
            # Ends before its answer is complete (and so does not ramble on after it).
            return " ".join(words[: int(rng.integers(1, len(words)))])
        if self.trailing_rate:  # drawn only when asked for: the other draws stay what they were without it
            words += [str(w) for w in rng.choice(self.content_words, size=rng.poisson(self.trailing_rate))]
        return " ".join(words[: self.max_response_words - 1])  # leave room for EOS

    def demonstrations(self, n: int, seed: int) -> list[dict[str, str]]:
        """``n`` SFT rows {"prompt", "response"} on fresh prompts, deterministic from ``seed``."""
        rng = np.random.default_rng([seed, 1])
        return [{"prompt": p, "response": self.demonstration(p, rng)} for p in self.prompts(n, seed)]


class Response(NamedTuple):
    """A sampled response: its text (no special tokens) and whether it ended with EOS."""

    text: str
    finished: bool


# A response source: given prompts, return one sampled Response per prompt (a model, a heuristic...).
ResponseSampler = Callable[[list[str]], list[Response]]


@dataclass(frozen=True)
class Labeller:
    """Simulated preference labeller: Bradley-Terry on gold reward plus a bias gold does not share.

    P(a preferred over b) = sigmoid((score(a) - score(b)) / temperature), where
    score = gold + length_bias * (words) + mention_bias * (salient-word mentions, repeats included).
    temperature = 0 labels deterministically (ties broken at random). A junk word costs about
    0.1-0.2 gold (precision, and the excess-length penalty), so a length_bias above that makes the
    labeller prefer a padded answer to a clean one (the embedded default: +0.5); a repeated salient word costs about 0.19 gold, so mention_bias above that rewards
    keyword stuffing. Both biases 0 = the labeller agrees with gold up to label noise.
    """

    task: SyntheticTask = field(default_factory=SyntheticTask)
    length_bias: float = -0.12  # labeller score per response word (> 0: verbosity bias; < 0: raters prefer concise answers)
    temperature: float = 0.1  # Bradley-Terry temperature: the label noise
    mention_bias: float = 0.0  # labeller score per mention of a salient word, repeats included

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"Labeller.temperature must be >= 0, got {self.temperature}")

    def score(self, prompt: str, response: Response) -> float:
        words = response.text.split()
        mentions = sum(word in self.task.salient_words for word in words)
        gold = self.task.gold_reward(prompt, response.text, response.finished)
        return gold + self.length_bias * len(words) + self.mention_bias * mentions

    def probability_first_preferred(self, prompt: str, first: Response, second: Response) -> float:
        gap = self.score(prompt, first) - self.score(prompt, second)
        if self.temperature == 0:
            return 1.0 if gap > 0 else 0.0 if gap < 0 else 0.5
        return 1.0 / (1.0 + math.exp(-gap / self.temperature))


def make_preference_pairs(
    prompts: list[str],
    sample_responses: ResponseSampler,
    labeller: Labeller,
    seed: int,
) -> tuple[list[dict], dict[str, int]]:
    """Label two sampled responses per prompt; returns (rows, counts of what was skipped).

    A pair is skipped when either response did not finish (a truncated answer is not a complete
    preference example) or when both are identical (the pair carries no preference signal).
    Each row holds prompt, chosen, rejected, their gold rewards and the labeller's probability.
    """
    rng = np.random.default_rng([seed, 2])
    first, second = sample_responses(prompts), sample_responses(prompts)
    rows, skipped = [], {"unfinished": 0, "identical": 0}
    for prompt, a, b in zip(prompts, first, second, strict=True):
        if not (a.finished and b.finished):
            skipped["unfinished"] += 1
            continue
        if a.text == b.text:
            skipped["identical"] += 1
            continue
        p_first = labeller.probability_first_preferred(prompt, a, b)
        chosen, rejected = (a, b) if rng.random() < p_first else (b, a)
        rows.append(
            {
                "prompt": prompt,
                "chosen": chosen.text,
                "rejected": rejected.text,
                "chosen_gold": labeller.task.gold_reward(prompt, chosen.text),
                "rejected_gold": labeller.task.gold_reward(prompt, rejected.text),
                "label_probability": p_first if chosen is a else 1.0 - p_first,
            }
        )
    return rows, skipped


def demonstration_sampler(task: SyntheticTask, seed: int) -> ResponseSampler:
    """A response source that draws fresh noisy demonstrations (no model needed: tests, smoke runs)."""
    rng = np.random.default_rng([seed, 3])
    return lambda prompts: [Response(task.demonstration(p, rng), True) for p in prompts]


def _ideal_words(prompt: str, salient: frozenset[str]) -> list[str]:
    seen: list[str] = []
    for word in prompt.split():
        if word in salient and word not in seen:
            seen.append(word)
    return seen


def _longest_common_subsequence(a: list[str], b: list[str]) -> int:
    # Classic O(|a||b|) dynamic programme; responses are at most a few dozen words.
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]
