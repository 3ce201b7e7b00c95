"""Evaluate one checkpoint, framework-free: sample -> log-probs under policy and reference -> judge.

``score_samples`` turns a batch of prompts into per-sample records (what a Ray Data ``map_batches``
stage emits); ``summarize`` folds all records of one evaluation into one metrics row. The Ray Data
pipeline (evaluate/pipeline.py) only distributes these two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from overopt.evaluate.generation import GenerationBackend
from overopt.evaluate.judges import Judge
from overopt.evaluate.proxy import Proxy
from overopt.logprobs import chunked_sequence_logprobs
from overopt.metrics import kl_to_reference, length_regression, proxy_win_rate, win_rate

USAGE_PREFIX = "judge_"  # per-block judge request counts ride in columns with this prefix

# The row's columns for the mean absolute score of the policy's samples, one per kind of judge that
# gives one (its ``score_name``): the synthetic task's gold reward is ground truth, a reward model's
# score is a proxy, so they never share a column. NaN where the evaluation's judge is of another kind.
SCORE_COLUMNS = ("gold_reward", "reward_model_score")

# (prompt ids, response ids) of B sequences -> policy log-probs [B], reference log-probs [B], response
# lengths [B]: summed over the response tokens, as float64 / int64 numpy arrays.
SequenceScorer = Callable[[list[list[int]], list[list[int]]], tuple[np.ndarray, np.ndarray, np.ndarray]]


def models_scorer(policy, reference, pad_token_id: int, scoring_batch_size: int = 64) -> SequenceScorer:
    """Score with two loaded models, ``scoring_batch_size`` sequences per forward pass (memory bound:
    that many x length x vocabulary logits)."""

    @torch.no_grad()
    def score(prompt_ids, response_ids):
        policy_logps, lengths = chunked_sequence_logprobs(policy, prompt_ids, response_ids, pad_token_id, scoring_batch_size)
        reference_logps, _ = chunked_sequence_logprobs(reference, prompt_ids, response_ids, pad_token_id, scoring_batch_size)
        return policy_logps.double().numpy(), reference_logps.double().numpy(), lengths.numpy().astype(np.int64)

    return score


@torch.no_grad()
def score_samples(
    policy,
    scorer: SequenceScorer,
    tokenizer,
    backend: GenerationBackend,
    judge: Judge | None,
    prompt_ids: Sequence[Sequence[int]],
    prompts: Sequence[str],
    references: Sequence[str],
    references_finished: Sequence[bool],
    seed: int,
    proxy: Proxy | None = None,
) -> dict[str, np.ndarray]:
    """Per-sample columns for one batch of held-out prompts (what the audit file keeps).

    ``policy``: the model that samples (None when ``backend`` hands over samples drawn before).
    The sampled token ids themselves (never re-tokenised text) go to ``scorer`` (``models_scorer``,
    or the training workers' sharded models: evaluate/pipeline.py): both log-probs are recomputed by a
    forward pass (never taken from the sampler), so the KL estimate is on exactly the tokens
    sampled and does not depend on the generation backend.
    ``judge`` None: the judgement columns are left out, for a judge stage after this one to add
    (evaluate/vllm_judge.py); summarize fails without them, so they cannot go missing silently.
    ``proxy``: the reward behind the training labels (evaluate/proxy.py); its probability of preferring
    each sample over the baseline becomes the ``proxy_probability`` column (None: no column).
    """
    samples = backend.generate(policy, tokenizer, prompt_ids, seed=seed)
    policy_logps, reference_logps, lengths = scorer([list(s.prompt_ids) for s in samples], [list(s.response_ids) for s in samples])
    nan = float("nan")
    records = {
        "response": np.array([s.text for s in samples], dtype=object),
        "finished": np.array([s.finished for s in samples]),
        "length": np.asarray(lengths, dtype=np.int64),  # response tokens, EOS included when present
        "policy_logp": np.asarray(policy_logps, dtype=np.float64),
        "reference_logp": np.asarray(reference_logps, dtype=np.float64),
        # The sampler's own log-prob of each response (vLLM), NaN where it kept none: a diagnostic only.
        "sampler_logp": np.array([nan if s.sampler_logp is None else s.sampler_logp for s in samples], dtype=np.float64),
    }
    if proxy is not None:
        records["proxy_probability"] = np.asarray(
            proxy.preference_probabilities(
                prompts, records["response"].tolist(), records["finished"].tolist(), references, references_finished
            ),
            dtype=np.float64,
        )
    if judge is None:
        return records
    judgements = judge.judge(prompts, records["response"].tolist(), [s.finished for s in samples], references, references_finished)
    records["outcome"] = np.array([nan if j.outcome is None else j.outcome for j in judgements], dtype=np.float64)
    records["policy_score"] = np.array([nan if j.policy_score is None else j.policy_score for j in judgements], dtype=np.float64)
    records["reference_score"] = np.array([nan if j.reference_score is None else j.reference_score for j in judgements], dtype=np.float64)
    records["raw_judgement"] = np.array(["\n---\n".join(j.raw) for j in judgements], dtype=object)
    # Which row column the scores are averaged into (summarize); "" for a judge without absolute scores.
    records["score_name"] = np.full(len(samples), judge.score_name or "", dtype=object)
    return records


def summarize(records: dict[str, np.ndarray]) -> dict[str, float]:
    """One metrics row from all per-sample records of an evaluation."""
    kl = kl_to_reference(records["policy_logp"], records["reference_logp"])
    wins = win_rate([None if np.isnan(o) else float(o) for o in records["outcome"]])
    log_ratio = records["policy_logp"] - records["reference_logp"]
    regression = length_regression(log_ratio, records["length"])
    score = records["policy_score"]
    score_names = set(records["score_name"].tolist()) - {""}
    if len(score_names) > 1 or not score_names <= set(SCORE_COLUMNS):
        raise ValueError(f"one evaluation's scores come from judges {sorted(score_names)}; a row has one of {SCORE_COLUMNS}")
    mean_score = float(np.nanmean(score)) if np.isfinite(score).any() else float("nan")
    # The proxy beside the judge (NaN columns without one, so every row has the same columns).
    proxy = proxy_win_rate(records["proxy_probability"] if "proxy_probability" in records else [])
    usage = {name: int(np.sum(column)) for name, column in records.items() if name.startswith(USAGE_PREFIX)}
    # Mean absolute gap per token between the sampler's log-probs and the scoring pass's (vLLM vs HF
    # forward of the same tokens): ~0 when both compute the same distribution; NaN without a sampler's.
    sampler = records.get("sampler_logp", np.full(len(records["policy_logp"]), np.nan))
    per_token_gap = np.abs(sampler - records["policy_logp"]) / np.maximum(records["length"], 1)
    return {
        "kl": kl.kl,
        "kl_se": kl.kl_se,
        "d": kl.d,
        "kl_negative": kl.negative,
        "win_rate": wins.rate,
        "win_rate_low": wins.low,
        "win_rate_high": wins.high,
        "proxy_win_rate": proxy.rate,
        "proxy_win_rate_low": proxy.low,
        "proxy_win_rate_high": proxy.high,
        "judged": wins.n_valid,
        "invalid_judgements": wins.n_invalid,
        **{name: mean_score if name in score_names else float("nan") for name in SCORE_COLUMNS},
        "mean_length": float(np.mean(records["length"])),
        "truncation_rate": float(1.0 - np.mean(records["finished"])),
        "length_slope": regression.slope,
        "length_r2": regression.r2,
        "sampler_logprob_gap": float(np.nanmean(per_token_gap)) if np.isfinite(per_token_gap).any() else float("nan"),
        **usage,
    }
