"""The proxy beside the gold judge: how much the reward that trained the policy likes its samples.

A DAA policy is trained on preferences; over-optimization is gold quality falling while the policy goes
on pleasing those preferences. So every evaluation also asks the *proxy*, the model behind the training
labels, how likely it is to prefer the policy's sample over the baseline response of the same prompt:

    proxy = build_proxy(proxy_spec(config), load_options)      # None when the experiment has no proxy
    p = proxy.preference_probabilities(prompts, responses, finished, baselines, baselines_finished)

Proxies
    labeller      synthetic pairs: the task's own Labeller, exactly: its Bradley-Terry probability
                  sigmoid((score(policy) - score(baseline)) / temperature) (data/synthetic.py)
    reward_model  real pairs: a reward model trained or given on the same preference data
                  (``evaluation.proxy_judge``): sigmoid(score(policy) - score(baseline)), the
                  Bradley-Terry probability a reward model is trained to give

The row's ``proxy_win_rate`` is the mean of these probabilities with its interval (metrics.py), beside
the gold ``win_rate``: the report reads the two against each other (did the proxy keep rising where
gold fell? did the policy over-shoot even its own labels?).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from overopt.config import ExperimentConfig, JudgeConfig, LabellerConfig, LoadOptions, SyntheticTaskConfig

if TYPE_CHECKING:  # imported where used: a proxy's module loads only what it needs
    from overopt.data.synthetic import Labeller
    from overopt.evaluate.judges import RewardModelJudge


@dataclass(frozen=True)
class ProxySpec:
    """Which proxy an experiment's evaluations ask (travels to the evaluation tasks): exactly one of the two."""

    labeller: LabellerConfig | None = None  # synthetic pairs: the labeller that made them ...
    task: SyntheticTaskConfig | None = None  # ... on this task (its gold reward is part of the labeller's score)
    reward_model: JudgeConfig | None = None  # real pairs: evaluation.proxy_judge

    @property
    def name(self) -> str:
        if self.labeller is not None:
            return "labeller"
        assert self.reward_model is not None  # exactly one of the two
        return f"reward model {self.reward_model.model}"


def proxy_spec(config: ExperimentConfig) -> ProxySpec | None:
    """The experiment's proxy: evaluation.proxy_judge when set, else the synthetic labeller when the
    pairs are synthetic, else None (real pairs without a proxy reward model: no proxy_win_rate)."""
    if config.evaluation.proxy_judge is not None:
        return ProxySpec(reward_model=config.evaluation.proxy_judge)
    if config.data.pairs.source == "synthetic":
        return ProxySpec(labeller=config.data.synthetic.labeller, task=config.data.synthetic.task)
    return None


class Proxy(Protocol):
    def preference_probabilities(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        finished: Sequence[bool],
        baselines: Sequence[str],
        baselines_finished: Sequence[bool],
    ) -> list[float]: ...


@dataclass(frozen=True)
class LabellerProxy:
    """The synthetic task's labeller, asked for its choice probability rather than a sampled label."""

    labeller: Labeller

    def preference_probabilities(self, prompts, responses, finished, baselines, baselines_finished) -> list[float]:
        from overopt.data.synthetic import Response

        return [
            self.labeller.probability_first_preferred(prompt, Response(response, bool(done)), Response(baseline, bool(baseline_done)))
            for prompt, response, done, baseline, baseline_done in zip(
                prompts, responses, finished, baselines, baselines_finished, strict=True
            )
        ]


@dataclass(frozen=True)
class RewardModelProxy:
    """A reward model's Bradley-Terry probability: sigmoid of the score difference (``finished`` unused:
    the model scores the text as it is)."""

    judge: RewardModelJudge  # its cached model and batching

    def preference_probabilities(self, prompts, responses, finished, baselines, baselines_finished) -> list[float]:
        scores = self.judge.scores(list(prompts) * 2, list(responses) + list(baselines))
        n = len(prompts)
        return [_sigmoid(policy - baseline) for policy, baseline in zip(scores[:n], scores[n:])]


def _sigmoid(x: float) -> float:
    if math.isnan(x):
        return math.nan  # a broken score stays visible (left out of the mean, counted by n)
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def build_proxy(spec: ProxySpec | None, load_options: LoadOptions, device: str | None = None) -> Proxy | None:
    """The proxy ``spec`` describes, loaded (None stays None)."""
    if spec is None:
        return None
    if spec.labeller is not None:
        from overopt.data.synthetic import Labeller, SyntheticTask

        assert spec.task is not None  # the labeller's task comes with it
        return LabellerProxy(Labeller(SyntheticTask(**spec.task.model_dump()), **spec.labeller.model_dump()))
    from overopt.evaluate.judges import RewardModelJudge

    judge = spec.reward_model
    assert judge is not None and judge.model is not None  # exactly one of the two; a reward_model judge has its model
    return RewardModelProxy(RewardModelJudge(judge.model, judge.batch_size, load_options, device))
