"""The proxy beside the gold judge: its win rate, the labeller proxy, the reward-model proxy, which proxy a config gets."""

import math
from pathlib import Path

import numpy as np
import pytest

from overopt.config import ConfigError, ExperimentConfig, JudgeConfig, LabellerConfig, load_config
from overopt.data.synthetic import Labeller, Response
from overopt.evaluate.generation import HFGenerator
from overopt.evaluate.judges import RewardModelJudge
from overopt.evaluate.proxy import LabellerProxy, ProxySpec, RewardModelProxy, build_proxy, proxy_spec
from overopt.evaluate.scoring import models_scorer, score_samples, summarize
from overopt.metrics import Z_95, proxy_win_rate

ROOT = Path(__file__).resolve().parents[2]


def test_proxy_win_rate_is_the_mean_probability_with_a_normal_interval_over_prompts():
    p = [0.2, 0.6, 0.9, 0.5]
    result = proxy_win_rate(p + [math.nan])  # a broken score is left out, not counted as 0
    mean, sd = 0.55, np.std(p, ddof=1)
    assert result.rate == pytest.approx(mean) and result.n == 4
    assert result.low == pytest.approx(mean - Z_95 * sd / 2) and result.high == pytest.approx(mean + Z_95 * sd / 2)
    clipped = proxy_win_rate([1.0, 1.0, 0.99])
    assert clipped.high == 1.0 and clipped.low < 0.995
    assert math.isnan(proxy_win_rate([]).rate) and proxy_win_rate([]).n == 0
    assert math.isnan(proxy_win_rate([0.3]).low)  # one probability: no spread, no interval
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        proxy_win_rate([0.5, 1.2])


def test_the_labeller_proxy_is_the_labellers_own_choice_probability(task):
    labeller = Labeller(task, length_bias=0.2, temperature=0.1)
    proxy = LabellerProxy(labeller)
    prompt = task.prompts(1, seed=4)[0]
    ideal = task.ideal_response(prompt)
    padded = ideal + " " + sorted(task.filler_words)[0]
    probabilities = proxy.preference_probabilities(
        [prompt] * 3, [padded, ideal, ideal], [True, True, False], [ideal, ideal, ideal], [True] * 3
    )
    # A junk word after k key words costs gold 0.7 * (1 - F1) + 0.05, F1 = 2k / (2k + 1) (precision k / (k + 1)),
    # one excess word; it earns the labeller 0.2.
    k = len(ideal.split())
    gold_cost = 0.7 * (1 - 2 * k / (2 * k + 1)) + 0.05
    assert probabilities[0] == pytest.approx(1 / (1 + math.exp(-(0.2 - gold_cost) / 0.1)))
    assert probabilities[0] == pytest.approx(labeller.probability_first_preferred(prompt, Response(padded, True), Response(ideal, True)))
    assert probabilities[1] == 0.5  # the same answer: no preference
    assert probabilities[2] < 0.1  # an unfinished answer pays gold's missing-EOS penalty, in the labeller's score too


def test_the_reward_model_proxy_is_the_sigmoid_of_the_score_difference(random_reward_model, task):
    directory = random_reward_model[0]
    prompts = task.prompts(3, seed=6)
    responses = [task.ideal_response(p) for p in prompts]
    baselines = ["w01", responses[1], "w05 w06 w07"]
    proxy = build_proxy(ProxySpec(reward_model=JudgeConfig(type="reward_model", model=directory)), ExperimentConfig().models, "cpu")
    assert isinstance(proxy, RewardModelProxy)
    scores = RewardModelJudge(directory, device="cpu").scores(prompts * 2, responses + baselines)
    probabilities = proxy.preference_probabilities(prompts, responses, [True] * 3, baselines, [True] * 3)
    for i in range(3):
        assert probabilities[i] == pytest.approx(1 / (1 + math.exp(-(scores[i] - scores[3 + i]))))
    assert probabilities[1] == pytest.approx(0.5)


def test_which_proxy_a_config_gets(tmp_path):
    synthetic = ExperimentConfig()
    spec = proxy_spec(synthetic)
    assert spec == ProxySpec(labeller=synthetic.data.synthetic.labeller, task=synthetic.data.synthetic.task) and spec.name == "labeller"
    assert isinstance(build_proxy(spec, synthetic.models), LabellerProxy)
    real = ROOT / "configs" / "local_tldr.yaml"  # real pairs (TL;DR comparisons)
    assert proxy_spec(load_config(real)) is None  # real pairs, no proxy reward model: no proxy column
    with_model = load_config(real, ["evaluation.proxy_judge.type=reward_model", "evaluation.proxy_judge.model=rm-dir"])
    assert proxy_spec(with_model).reward_model.model == "rm-dir"
    assert build_proxy(None, synthetic.models) is None
    path = tmp_path / "bad.yaml"
    path.write_text("evaluation:\n  proxy_judge:\n    type: gold\n")
    with pytest.raises(ConfigError, match="proxy_judge must be type reward_model"):
        load_config(path)


def test_rows_carry_the_proxy_win_rate_beside_the_judges_and_nan_without_a_proxy(task, tokenizer, tiny_model):
    from overopt.evaluate.judges import GoldJudge

    prompts = task.prompts(6, seed=5)
    references = [task.ideal_response(p) for p in prompts]
    labeller = Labeller(task, **LabellerConfig(length_bias=0.3).model_dump())
    rows = {}
    for name, proxy in (("with", LabellerProxy(labeller)), ("without", None)):
        records = score_samples(
            tiny_model,
            models_scorer(tiny_model, tiny_model, tokenizer.pad_token_id),
            tokenizer,
            HFGenerator(5),
            GoldJudge(task),
            [tokenizer(p)["input_ids"] for p in prompts],
            prompts,
            references,
            [True] * 6,
            seed=0,
            proxy=proxy,
        )
        rows[name] = (summarize(records), records)
    row, records = rows["with"]
    expected = [
        labeller.probability_first_preferred(p, Response(r, bool(f)), Response(b, True))
        for p, r, f, b in zip(prompts, records["response"], records["finished"], references)
    ]
    assert records["proxy_probability"] == pytest.approx(expected)
    assert row["proxy_win_rate"] == pytest.approx(np.mean(expected)) and row["proxy_win_rate_low"] <= row["proxy_win_rate"]
    row, records = rows["without"]
    assert "proxy_probability" not in records
    assert all(math.isnan(row[key]) for key in ("proxy_win_rate", "proxy_win_rate_low", "proxy_win_rate_high"))
