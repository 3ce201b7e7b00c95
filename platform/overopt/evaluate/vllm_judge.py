"""The ``llm`` judge answered by vLLM engines of the evaluation itself (``transport: vllm``).

The alternative to an HTTP endpoint (llm_judge.py) when the judge model should run on the cluster's
own GPUs: after the scoring stage, every comparison becomes two judge prompts (the policy as A, then
as B: verdicts.pairwise_prompts), a ray.data.llm processor answers them (vllm_generation.judge_with_vllm)
and the answers combine by the same rules as over HTTP (verdicts.parse_preference, verdicts.combine).
So a judgement means the same whatever the transport: both orders, strict parsing, a disagreement is a
tie, an unparseable answer makes the judgement invalid (never a loss).

    judge: {type: llm, transport: vllm, model: /models/Llama-3.1-8B-Instruct, max_tokens: 256}

Each judge prompt is the template rendered as the user message of the judge tokenizer's chat template
(with the generation prompt); a tokenizer without a chat template gets the rendered text as it is.
Answers are greedy. The engines read ``model`` (a local Hugging Face directory holding a tokenizer)
and get ``evaluation.gpus_per_task`` GPUs each.

Usage (inside evaluate/pipeline.py, on the driver's in-memory records of one evaluation):
    records.update(judge_with_vllm_engines(records, judge_config, num_gpus=0))
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from overopt.config import JudgeConfig
from overopt.evaluate.scoring import USAGE_PREFIX
from overopt.evaluate.verdicts import combine, empty_usage, pairwise_prompts, parse_preference


@lru_cache(maxsize=2)
def _judge_tokenizer(model: str):
    from overopt.models import load_tokenizer

    return load_tokenizer(model)


def judge_prompt_ids(tokenizer, text: str) -> list[int]:
    """The token ids of one rendered judge prompt: as the user turn of the chat template when there is one."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        # transformers 5 returns a BatchEncoding-like mapping here, 4.x a plain list.
        return [int(t) for t in (ids["input_ids"] if hasattr(ids, "keys") else ids)]
    return [int(t) for t in tokenizer(text)["input_ids"]]


def judge_with_vllm_engines(
    records: dict[str, np.ndarray], judge: JudgeConfig, *, num_gpus: float = 0, placement_group=None
) -> dict[str, np.ndarray]:
    """Judgement columns (outcome, raw_judgement, policy_score, reference_score, score_name and the
    judge_* usage counts) for ``records``: one evaluation's scored samples (columns index, prompt, response,
    reference_response), judged by vLLM engines of ``judge.model`` (in ``placement_group``: the trial's)."""
    import ray

    from overopt.evaluate.vllm_generation import in_placement_group, judge_with_vllm

    if not judge.served_by_vllm:
        raise ValueError(f"judge {judge.type!r} with transport {judge.transport!r} is not answered by vLLM engines")
    assert judge.model is not None  # JudgeConfig requires it of an llm judge
    tokenizer = _judge_tokenizer(judge.model)
    rows: list[dict[str, Any]] = []
    for position, (prompt, response, baseline) in enumerate(
        zip(records["prompt"], records["response"], records["reference_response"], strict=True)
    ):
        for order, text in enumerate(pairwise_prompts(judge.template, str(prompt), str(response), str(baseline))):
            # index: unique per request (it also seeds it); position and order put the answers back.
            rows.append({"index": 2 * position + order, "judge_prompt_ids": judge_prompt_ids(tokenizer, text)})
    answered = judge_with_vllm(
        in_placement_group(ray.data.from_items(rows), placement_group),
        judge.model,
        max_new_tokens=judge.max_tokens,
        batch_size=judge.batch_size,
        num_gpus=num_gpus,
    ).take_all()
    if len(answered) != len(rows):
        raise RuntimeError(f"the vLLM judge answered {len(answered)} of {len(rows)} judge prompts")
    text_of = {int(row["index"]): str(row["judge_text"]) for row in answered}
    n = len(records["prompt"])
    outcomes, raw, unparseable = np.full(n, np.nan), np.empty(n, dtype=object), 0
    for position in range(n):
        first, second = text_of[2 * position], text_of[2 * position + 1]
        verdict = combine(parse_preference(first), parse_preference(second))
        outcomes[position] = np.nan if verdict.outcome is None else verdict.outcome
        raw[position] = f"{first}\n---\n{second}"  # the audit file's format for every llm judge
        unparseable += verdict.unparseable
    usage = {
        **empty_usage(),
        "requests": len(rows),
        "invalid": unparseable,
        "prompt_tokens": sum(len(row["judge_prompt_ids"]) for row in rows),
        "completion_tokens": sum(int(row["judge_completion_tokens"]) for row in answered),
    }
    columns = {
        "outcome": outcomes,
        "raw_judgement": raw,
        "policy_score": np.full(n, np.nan),  # a pairwise judge gives no absolute scores
        "reference_score": np.full(n, np.nan),
        "score_name": np.full(n, "", dtype=object),  # so no row column holds a mean score
    }
    for name, count in usage.items():  # per-evaluation totals ride on the first row, as per block
        column = np.zeros(n, dtype=np.int64)
        column[0] = count
        columns[USAGE_PREFIX + name] = column
    return columns
