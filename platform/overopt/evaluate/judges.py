"""Judges: compare a policy response with the prompt's reference response -> win / tie / loss.

One interface for every judge. ``GoldJudge`` is the synthetic task's exact judge (gold reward of
each side). A judge returns one outcome per prompt (1 win, 0.5 tie, 0 loss, None when its answer
could not be used) and, when it has one, the policy response's absolute score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from overopt.data.synthetic import SyntheticTask
from overopt.metrics import judge_outcome


@dataclass(frozen=True)
class Judgement:
    outcome: float | None  # 1 / 0.5 / 0, or None = invalid judgement (never counted as a loss)
    policy_score: float | None  # e.g. gold reward of the policy response; None if the judge has none
    reference_score: float | None


class Judge(Protocol):
    def judge(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        finished: Sequence[bool],
        references: Sequence[str],
        references_finished: Sequence[bool],
    ) -> list[Judgement]: ...


@dataclass(frozen=True)
class GoldJudge:
    """Exact judge of the synthetic task: compares the gold rewards of the two responses."""

    task: SyntheticTask

    def judge(self, prompts, responses, finished, references, references_finished) -> list[Judgement]:
        judgements = []
        for prompt, response, done, reference, reference_done in zip(
            prompts, responses, finished, references, references_finished, strict=True
        ):
            policy_score = self.task.gold_reward(prompt, response, bool(done))
            reference_score = self.task.gold_reward(prompt, reference, bool(reference_done))
            judgements.append(Judgement(judge_outcome(policy_score, reference_score), policy_score, reference_score))
        return judgements


def build_judge(name: str, task: SyntheticTask | None) -> Judge:
    if name == "gold":
        if task is None:
            raise ValueError("judge 'gold' needs the synthetic task (it is the task's exact reward)")
        return GoldJudge(task)
    raise ValueError(f"unknown judge {name!r}; valid choices: gold")
