"""Judges: compare a policy response with the baseline response of the same prompt -> win / tie / loss.

One interface for every judge (docs/judges.md):

    judge = build_judge(config.evaluation.judge, task)           # JudgeConfig (+ the SyntheticTask for gold)
    judgements = judge.judge(prompts, responses, finished, baselines, baselines_finished)
    judgements[i].outcome      # 1 win, 0.5 tie, 0 loss for the policy; None = invalid (never a loss)
    judgements[i].raw          # the judge's raw output, kept for the audit file
    judge.usage()              # {"requests": .., "retries": .., "failures": .., "invalid": .., ...}

Judges
    gold          the synthetic task's exact reward of both responses; the higher wins (``GoldJudge``)
    reward_model  a sequence-classification model with one output scores prompt + response for both;
                  the higher score wins, equal scores tie (``RewardModelJudge``)
    llm           an OpenAI-compatible chat endpoint compares the two, asked twice with the order
                  swapped; the verdict rules are in verdicts.py, the HTTP in llm_judge.py (``LLMJudge``).
                  With ``transport: vllm`` the same prompts and rules run in vLLM engines of the
                  evaluation, a stage after scoring (vllm_judge.py), not through ``build_judge``.

A judge that cannot answer (an endpoint down beyond its retry budget) raises ``JudgeUnavailable``:
the evaluation fails, it never becomes a win rate. ``usage()`` returns the same keys for every judge
(verdicts.USAGE_KEYS, zeros where a judge has nothing to count); they become the ``judge_*`` columns
of the results row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

from overopt.config import JudgeConfig, LoadOptions
from overopt.evaluate.verdicts import USAGE_KEYS, JudgeUnavailable, combine, empty_usage, pairwise_prompts, parse_preference
from overopt.metrics import judge_outcome
from overopt.models import SAFE, load_reward_model, load_tokenizer

if TYPE_CHECKING:
    from overopt.data.synthetic import SyntheticTask
    from overopt.evaluate.llm_judge import ChatTransport

__all__ = [
    "USAGE_KEYS",
    "GoldJudge",
    "Judge",
    "JudgeUnavailable",
    "Judgement",
    "LLMJudge",
    "RewardModelJudge",
    "build_judge",
]


@dataclass(frozen=True)
class Judgement:
    outcome: float | None  # policy vs baseline: 1 win, 0.5 tie, 0 loss; None = invalid (never counted as a loss)
    policy_score: float | None  # the judge's absolute score of the policy response (gold, reward model); else None
    reference_score: float | None  # the same for the baseline response
    raw: tuple[str, ...] = ()  # raw judge outputs for the audit file (llm: the answer with the policy as A, then as B)


class Judge(Protocol):
    @property
    def score_name(self) -> str | None:
        """The results row's column for the mean of this judge's policy scores, named for what they are:
        "gold_reward" (the synthetic task's), "reward_model_score"; None for a judge without absolute scores.
        Each judge sets it as a class attribute."""
        ...

    def judge(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        finished: Sequence[bool],
        references: Sequence[str],
        references_finished: Sequence[bool],
    ) -> list[Judgement]: ...

    def usage(self) -> dict[str, int]: ...


def _check_lengths(*columns: Sequence) -> None:
    lengths = {len(column) for column in columns}
    if len(lengths) != 1:
        raise ValueError(f"judge inputs differ in length: {[len(column) for column in columns]}")


# ------------------------------------------------------------------------------------------------
# gold


@dataclass(frozen=True)
class GoldJudge:
    """Exact judge of the synthetic task: compares the gold rewards of the two responses.

    The gold reward penalises a response without EOS, so ``finished`` matters here (and only here).
    """

    task: SyntheticTask
    score_name: ClassVar[str] = "gold_reward"

    def judge(self, prompts, responses, finished, references, references_finished) -> list[Judgement]:
        judgements = []
        for prompt, response, done, reference, reference_done in zip(
            prompts, responses, finished, references, references_finished, strict=True
        ):
            policy_score = self.task.gold_reward(prompt, response, bool(done))
            reference_score = self.task.gold_reward(prompt, reference, bool(reference_done))
            judgements.append(Judgement(judge_outcome(policy_score, reference_score), policy_score, reference_score))
        return judgements

    def usage(self) -> dict[str, int]:
        return empty_usage()  # nothing is requested, nothing can be unparseable


# ------------------------------------------------------------------------------------------------
# reward model


def _pick_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _options_json(options: LoadOptions) -> str:
    # Only the loading fields: a ModelsConfig (a LoadOptions subclass) carries sizes etc. too.
    return LoadOptions.model_validate(options.model_dump(include=set(LoadOptions.model_fields))).model_dump_json()


@lru_cache(maxsize=2)
def _cached_reward_model(name_or_path: str, options_json: str, device: str):
    """(model, tokenizer, max_length), loaded once per process: evaluations build a judge per block."""
    options = LoadOptions.model_validate_json(options_json)
    model = load_reward_model(name_or_path, options).to(device).eval()  # type: ignore[arg-type]  # transformers types PreTrainedModel.to as @wraps(Module.to): unbound, expecting self first
    tokenizer = load_tokenizer(name_or_path, options)
    if model.config.num_labels != 1:
        raise ValueError(f"reward model {name_or_path!r} has {model.config.num_labels} outputs; a reward model has one (num_labels=1)")
    # Right padding: the real tokens keep positions 0..n-1 whatever the batch, so a score does not
    # depend on its neighbours. Models that pool the last token (GPT-NeoX, Llama, ...) find it as the
    # rightmost token that is not pad_token_id, so model and tokenizer must agree on the pad id: the
    # model's own wins (it was trained with it); a model without one adopts the tokenizer's.
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"  # an over-long input loses the start of the prompt, not the response
    if model.config.pad_token_id is None:
        if tokenizer.pad_token_id is None:
            raise ValueError(f"reward model {name_or_path!r}: neither the model nor its tokenizer defines a pad token")
        model.config.pad_token_id = tokenizer.pad_token_id
    elif tokenizer.pad_token_id != model.config.pad_token_id:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(int(model.config.pad_token_id))
    max_length = min(
        int(getattr(tokenizer, "model_max_length", 10**9) or 10**9),
        int(getattr(model.config, "max_position_embeddings", 10**9) or 10**9),
    )
    scorer = (model, tokenizer, max_length)
    _check_padding_invariance(scorer, name_or_path)
    return scorer


@torch.inference_mode()
def _score(scorer, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """One score per (prompt, response), as a text pair: ``tokenizer(prompt, response)``.

    A pair, not a concatenated string, because pair encoding is each tokenizer's own way to join two
    texts: [CLS] p [SEP] r [SEP] for encoder reward models, plain concatenation of the two token
    sequences for GPT-style ones (as the policy saw them), a separator-safe join for word tokenizers.
    """
    model, tokenizer, max_length = scorer
    encoded = tokenizer(
        list(prompts), list(responses), padding=True, truncation="longest_first", max_length=max_length, return_tensors="pt"
    )
    device = next(model.parameters()).device
    logits = model(input_ids=encoded["input_ids"].to(device), attention_mask=encoded["attention_mask"].to(device)).logits
    return logits.float().reshape(-1).cpu().tolist()


def _check_padding_invariance(scorer, name: str) -> None:
    """A padded batch must score like single sequences; otherwise the pad handling is broken."""
    prompts, responses = ["a short prompt", "a somewhat longer prompt than the first one is"], ["yes", "a much longer answer here"]
    batched = _score(scorer, prompts, responses)
    alone = [_score(scorer, [p], [r])[0] for p, r in zip(prompts, responses)]
    if not all(math.isclose(b, a, rel_tol=1e-3, abs_tol=1e-4) for b, a in zip(batched, alone)):
        raise ValueError(
            f"reward model {name!r} scores a padded batch differently from single sequences ({batched} vs {alone}): "
            "its pad token handling does not match its tokenizer"
        )


class RewardModelJudge:
    """A sequence-classification model with one output scores both responses; the higher wins.

    Each distinct (prompt, response) is scored once (a baseline judged against itself gets exactly
    equal scores, hence a tie). ``finished`` is not used: the model scores the text as it is.
    """

    score_name: ClassVar[str] = "reward_model_score"  # a proxy's score, never the gold reward

    def __init__(self, model_name: str, batch_size: int = 32, load_options: LoadOptions = SAFE, device: str | None = None):
        self.model_name = model_name
        self.batch_size = batch_size
        self._scorer = _cached_reward_model(model_name, _options_json(load_options), _pick_device(device))
        self._invalid = 0

    def __repr__(self) -> str:
        return f"RewardModelJudge({self.model_name!r}, batch_size={self.batch_size})"

    def scores(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Scores of (prompt, response) pairs, batched, shortest first (less padding per batch)."""
        _check_lengths(prompts, responses)
        unique = list(dict.fromkeys(zip(prompts, responses)))
        unique.sort(key=lambda pair: len(pair[0]) + len(pair[1]))
        score_of: dict[tuple[str, str], float] = {}
        for start in range(0, len(unique), self.batch_size):
            chunk = unique[start : start + self.batch_size]
            score_of.update(zip(chunk, _score(self._scorer, [p for p, _ in chunk], [r for _, r in chunk])))
        return [score_of[pair] for pair in zip(prompts, responses)]

    def judge(self, prompts, responses, finished, references, references_finished) -> list[Judgement]:
        _check_lengths(prompts, responses, finished, references, references_finished)
        scores = self.scores(list(prompts) * 2, list(responses) + list(references))
        n = len(prompts)
        judgements = [Judgement(judge_outcome(p, r), p, r) for p, r in zip(scores[:n], scores[n:])]
        self._invalid += sum(j.outcome is None for j in judgements)  # a NaN score: a broken model, visible
        return judgements

    def usage(self) -> dict[str, int]:
        return {**empty_usage(), "invalid": self._invalid}


# ------------------------------------------------------------------------------------------------
# llm


class LLMJudge:
    """Pairwise comparison by a chat model, asked in both orders (verdicts.py has the rules).

    ``transport`` is anything with ``complete_all(texts) -> [Completion]`` and ``usage()``
    (llm_judge.ChatTransport for real endpoints). Prompts go out together, so one outage fails the
    whole batch with ``JudgeUnavailable`` and no judgement is returned.
    """

    score_name: ClassVar[None] = None  # pairwise: no absolute scores

    def __init__(self, template: str, transport: ChatTransport):
        self.template = template
        self._transport = transport
        self._invalid = 0

    def __repr__(self) -> str:
        return f"LLMJudge({self._transport!r})"

    def judge(self, prompts, responses, finished, references, references_finished) -> list[Judgement]:
        _check_lengths(prompts, responses, finished, references, references_finished)
        texts: list[str] = []
        for prompt, response, reference in zip(prompts, responses, references):
            texts.extend(pairwise_prompts(self.template, prompt, response, reference))
        answers = [completion.text for completion in self._transport.complete_all(texts)]
        judgements = []
        for first, second in zip(answers[0::2], answers[1::2]):
            verdict = combine(parse_preference(first), parse_preference(second))
            self._invalid += verdict.unparseable
            judgements.append(Judgement(verdict.outcome, None, None, (first, second)))
        return judgements

    def usage(self) -> dict[str, int]:
        return {**self._transport.usage(), "invalid": self._invalid}

    def close(self) -> None:
        self._transport.close()


# ------------------------------------------------------------------------------------------------


def build_judge(
    config: JudgeConfig | str,
    task: SyntheticTask | None = None,
    load_options: LoadOptions = SAFE,
    *,
    device: str | None = None,
) -> Judge:
    """The judge a ``JudgeConfig`` describes (a bare type name works for ``"gold"``).

    ``task``: the SyntheticTask whose exact reward the gold judge is. ``load_options``: how the
    reward model is read (safetensors only unless allowed). ``device``: the reward model's device
    (default: CUDA when this process sees a GPU).
    """
    if isinstance(config, str):
        config = JudgeConfig(type=config)
    if config.type == "gold":
        if task is None:
            raise ValueError(
                "judge 'gold' needs the synthetic task (it is the task's exact reward); real data needs judge type reward_model or llm"
            )
        return GoldJudge(task)
    if config.type == "reward_model":
        assert config.model is not None  # JudgeConfig requires it of a reward_model judge
        return RewardModelJudge(config.model, config.batch_size, load_options, device)
    if config.served_by_vllm:
        raise ValueError(
            "the llm judge over transport 'vllm' is a stage of the evaluation pipeline (evaluate/vllm_judge.py), not a per-block judge"
        )
    if config.type == "llm":
        from overopt.evaluate.llm_judge import ChatTransport  # the openai client only where it is used

        return LLMJudge(config.template, ChatTransport.from_config(config))
    raise ValueError(f"unknown judge type {config.type!r}; valid types: gold, reward_model, llm")
