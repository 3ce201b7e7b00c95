"""Judges without HTTP: the verdict rules on hand cases, the gold judge, the reward-model judge.

The llm judge over real HTTP (retries, faults, usage counts, the key) is tests/unit/test_llm_judge.py.
"""

import math
from pathlib import Path

import pytest
import torch

from overopt.config import DEFAULT_JUDGE_TEMPLATE, JudgeConfig
from overopt.evaluate.judges import USAGE_KEYS, GoldJudge, Judgement, LLMJudge, RewardModelJudge, build_judge
from overopt.evaluate.llm_judge import Completion
from overopt.evaluate.verdicts import combine, pairwise_prompts, parse_preference, render
from overopt.metrics import win_rate

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------------------------
# verdicts: parsing


@pytest.mark.parametrize(
    "answer, choice",
    [
        ("Comparison: A is more precise.\nPreferred: A", "A"),
        ('Comparison: B covers the point.\nPreferred: "B"', "B"),
        ("Preferred: 'A'", "A"),
        ("Preferred: “B”", "B"),
        ("   Preferred:   B   ", "B"),
        ("Preferred:A", "A"),
        ("Preferred: A\nComparison: on reflection B.\nPreferred: B", "B"),  # the last verdict line counts
        ("Preferred: B\nThat is my answer.", "B"),  # text after the verdict line is allowed
    ],
)
def test_verdict_lines_parse(answer, choice):
    assert parse_preference(answer) == choice


@pytest.mark.parametrize(
    "answer",
    [
        None,
        "",
        "I like both.",
        "A",  # a bare letter is not the requested format
        'Preferred: <"A" or "B">',  # the template echoed back
        "Preferred: A or B",
        "Preferred: AB",
        "Preferred: both",
        "Preferred: C",
        "preferred: A",  # strict: the keyword as the template writes it
        "Preferred: a",
        "Preferred: A.",
        "Preferred: \"A'",  # unmatched quotes
        "Comparison: fine. Preferred: A",  # the verdict must be its own line
        "**Preferred:** A",
    ],
)
def test_anything_else_is_unparseable(answer):
    assert parse_preference(answer) is None


# ------------------------------------------------------------------------------------------------
# verdicts: position swap


@pytest.mark.parametrize(
    "first, second, outcome",
    [
        ("A", "B", 1.0),  # policy chosen as A and as B: win
        ("B", "A", 0.0),  # baseline chosen in both orders: loss
        ("A", "A", 0.5),  # always the first position: the preference follows the order -> tie
        ("B", "B", 0.5),  # always the second position -> tie
        (None, "B", None),  # an unparseable answer makes the judgement invalid, never a loss
        ("A", None, None),
        (None, None, None),
    ],
)
def test_combination_of_both_orders(first, second, outcome):
    verdict = combine(first, second)
    assert verdict.outcome == outcome
    assert (verdict.first, verdict.second) == (first, second)
    assert verdict.unparseable == (first is None) + (second is None)


def test_invalid_judgements_are_excluded_from_the_win_rate_not_counted_as_losses():
    outcomes = [combine("A", "B").outcome, combine(None, "A").outcome, combine("A", None).outcome]
    result = win_rate(outcomes)
    assert (result.rate, result.n_valid, result.n_invalid) == (1.0, 1, 2)


def test_render_substitutes_once_and_leaves_other_braces():
    template = 'P={prompt} | A={response_a} | B={response_b} | json {"k": 1} {other}'
    text = render(template, "x {response_b} {}", "resp {a}", "r2")
    assert text == 'P=x {response_b} {} | A=resp {a} | B=r2 | json {"k": 1} {other}'


def test_pairwise_prompts_swap_the_positions():
    first, second = pairwise_prompts(DEFAULT_JUDGE_TEMPLATE, "the post", "POLICY", "BASELINE")
    assert "Summary A:\nPOLICY\n\nSummary B:\nBASELINE" in first
    assert "Summary A:\nBASELINE\n\nSummary B:\nPOLICY" in second
    assert "Post:\nthe post" in first and "Post:\nthe post" in second
    # The default template ends by showing the format; that example is not itself a verdict.
    assert DEFAULT_JUDGE_TEMPLATE.rstrip().endswith('Preferred: <"A" or "B">')
    assert parse_preference(first) is None


# ------------------------------------------------------------------------------------------------
# llm judge composition (a fake transport; the real one is tested over HTTP)


class FakeTransport:
    def __init__(self, answer):
        self.answer, self.sent = answer, []

    def complete_all(self, texts):
        self.sent.extend(texts)
        return [Completion(self.answer(t), "stop", 1, 1) for t in texts]

    def usage(self):
        return {key: 0 for key in USAGE_KEYS} | {"requests": len(self.sent)}


def test_llm_judge_keeps_both_raw_answers_and_counts_unparseable_ones():
    def answer(text):  # prefers the summary saying "good"; garbage when a summary says "weird"
        if "weird" in text:
            return "I like both."
        a = text.split("Summary A:\n")[1].split("\n\n")[0]
        return "Preferred: A" if "good" in a else "Preferred: B"

    judge = LLMJudge(DEFAULT_JUDGE_TEMPLATE, FakeTransport(answer))
    judgements = judge.judge(["p1", "p2", "p3"], ["good one", "bad", "weird"], [True] * 3, ["bad", "good", "fine"], [True] * 3)
    assert [j.outcome for j in judgements] == [1.0, 0.0, None]
    assert judgements[0].raw == ("Preferred: A", "Preferred: B")  # policy as A, then as B
    assert judgements[2].raw == ("I like both.", "I like both.")
    assert all(j.policy_score is None and j.reference_score is None for j in judgements)
    usage = judge.usage()
    assert set(usage) == set(USAGE_KEYS)
    assert usage["invalid"] == 2 and usage["requests"] == 6


# ------------------------------------------------------------------------------------------------
# gold


def test_gold_judge_compares_gold_rewards(task):
    prompts = task.prompts(3, seed=1)
    ideal = [task.ideal_response(p) for p in prompts]
    junk = [" ".join(task.content_words[:8]) for _ in prompts]
    judge = build_judge(JudgeConfig(), task)
    assert isinstance(judge, GoldJudge)
    judgements = judge.judge(prompts, ideal, [True] * 3, junk, [True] * 3)
    for prompt, response, reference, j in zip(prompts, ideal, junk, judgements):
        assert j.policy_score == task.gold_reward(prompt, response, True)
        assert j.reference_score == task.gold_reward(prompt, reference, True)
        assert j.outcome == (1.0 if j.policy_score > j.reference_score else 0.0)
        assert j.raw == ()
    ties = judge.judge(prompts, ideal, [True] * 3, ideal, [True] * 3)
    assert [j.outcome for j in ties] == [0.5] * 3
    unfinished = judge.judge(prompts[:1], ideal[:1], [False], ideal[:1], [True])  # missing EOS costs gold
    assert unfinished[0].outcome == 0.0
    assert judge.usage() == {key: 0 for key in USAGE_KEYS}


def test_gold_needs_the_task_and_unknown_names_are_refused():
    with pytest.raises(ValueError, match="needs the synthetic task"):
        build_judge(JudgeConfig(), None)
    with pytest.raises(ValueError):
        build_judge("nonsense")


# ------------------------------------------------------------------------------------------------
# reward model


@pytest.fixture(scope="module")
def last_token_reward_model(tmp_path_factory, tokenizer, tiny_reward_model, save_reward_model):
    """A reward model whose score is a known function of the last real token only.

    With the layers' output projections zeroed, each residual block adds nothing, so the final
    hidden state at a position is the token's embedding: score = w . LayerNorm(E[last token]).
    """
    model = tiny_reward_model()
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            for linear in (layer.attention.dense, layer.mlp.dense_4h_to_h):
                linear.weight.zero_()
                linear.bias.zero_()
    directory = save_reward_model(model, tmp_path_factory.mktemp("rm_last_token"))
    with torch.no_grad():
        per_token = model.score(model.gpt_neox.final_layer_norm(model.gpt_neox.embed_in.weight)).squeeze(-1)
    return directory, per_token


def test_reward_model_scores_are_the_known_function_of_the_last_token(last_token_reward_model, task, tokenizer):
    directory, per_token = last_token_reward_model
    judge = build_judge(JudgeConfig(type="reward_model", model=directory, batch_size=3), device="cpu")
    assert isinstance(judge, RewardModelJudge)
    words = task.content_words
    prompts = task.prompts(5, seed=2)
    # Different lengths in one batch: right padding must not move the scored position onto a pad.
    responses = [
        words[0],
        f"{words[3]} {words[4]} {words[1]}",
        f"{words[5]} {words[2]}",
        words[6],
        f"{words[7]} {words[7]} {words[8]} {words[9]}",
    ]
    baselines = [f"{words[9]} {words[1]}", words[1], f"{words[2]} {words[2]}", f"{words[8]} {words[6]}", words[3]]
    judgements = judge.judge(prompts, responses, [True] * 5, baselines, [True] * 5)
    for response, baseline, j in zip(responses, baselines, judgements):
        expected_policy = per_token[tokenizer.convert_tokens_to_ids(response.split()[-1])].item()
        expected_baseline = per_token[tokenizer.convert_tokens_to_ids(baseline.split()[-1])].item()
        assert j.policy_score == pytest.approx(expected_policy, abs=1e-5)
        assert j.reference_score == pytest.approx(expected_baseline, abs=1e-5)
        if response.split()[-1] == baseline.split()[-1]:
            assert j.outcome == 0.5  # same last token -> same score -> tie (pairs 2, 3 and 4)
        else:
            assert j.outcome == (1.0 if expected_policy > expected_baseline else 0.0)
    assert [j.outcome for j in judgements].count(0.5) == 3
    assert judge.usage() == {key: 0 for key in USAGE_KEYS}


def test_reward_model_batches_score_like_single_unpadded_sequences(random_reward_model, task, tokenizer):
    directory, model = random_reward_model
    judge = RewardModelJudge(directory, batch_size=2, device="cpu")
    prompts = task.prompts(4, seed=5)
    words = task.content_words
    responses = [" ".join(words[i : i + n]) for i, n in [(0, 1), (2, 6), (9, 3), (4, 9)]]
    scores = judge.scores(prompts, responses)
    with torch.no_grad():
        for prompt, response, score in zip(prompts, responses, scores):
            ids = tokenizer(prompt, response, return_tensors="pt")["input_ids"]  # the same pair encoding, no padding
            assert score == pytest.approx(model(input_ids=ids).logits.item(), abs=1e-5)


def test_identical_responses_tie_with_equal_scores(random_reward_model, task):
    directory, _ = random_reward_model
    judge = RewardModelJudge(directory, batch_size=4, device="cpu")
    prompts = task.prompts(6, seed=7)
    responses = [task.ideal_response(p) for p in prompts]
    judgements = judge.judge(prompts, responses, [True] * 6, responses, [False] * 6)
    assert all(j.outcome == 0.5 and j.policy_score == j.reference_score for j in judgements)
    assert all(isinstance(j, Judgement) and math.isfinite(j.policy_score) for j in judgements)


@pytest.mark.parametrize("model_pad", [None, 2])  # none: the model adopts the tokenizer's; <eos>: the tokenizer adopts it
def test_model_and_tokenizer_are_made_to_agree_on_the_pad_token(tmp_path, tokenizer, task, model_pad, tiny_reward_model, save_reward_model):
    model = tiny_reward_model(pad_token_id=model_pad, seed=4)
    directory = save_reward_model(model, tmp_path / "pad")
    judge = RewardModelJudge(directory, batch_size=8, device="cpu")
    prompts = task.prompts(3, seed=9)
    responses = [task.content_words[0], " ".join(task.content_words[:7]), " ".join(task.content_words[3:5])]
    scores = judge.scores(prompts, responses)  # would be wrong (or fail) if pads were taken for content
    with torch.no_grad():
        for prompt, response, score in zip(prompts, responses, scores):
            ids = tokenizer(prompt, response, return_tensors="pt")["input_ids"]
            assert score == pytest.approx(model(input_ids=ids).logits.item(), abs=1e-5)


def test_a_classifier_with_two_outputs_is_not_a_reward_model(tmp_path, tiny_reward_model, save_reward_model):
    directory = save_reward_model(tiny_reward_model(num_labels=2), tmp_path / "two")
    with pytest.raises(ValueError, match="has 2 outputs"):
        RewardModelJudge(directory, device="cpu")


# ------------------------------------------------------------------------------------------------
# llm over vLLM engines (the engines themselves: tests/integration/test_vllm_generation.py)


def test_the_vllm_transport_is_configured_apart_from_http():
    judge = JudgeConfig(type="llm", transport="vllm", model="/models/judge")
    assert judge.served_by_vllm and not JudgeConfig(type="llm", model="m", base_url="http://127.0.0.1:1/v1").served_by_vllm
    with pytest.raises(ValueError, match="transport vllm"):
        JudgeConfig(type="llm", transport="vllm")  # no model
    with pytest.raises(ValueError, match="base_url and api_key_env are for transport 'http'"):
        JudgeConfig(type="llm", transport="vllm", model="/m", base_url="http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="transport 'vllm' is for judge type 'llm'"):
        JudgeConfig(type="reward_model", transport="vllm", model="/m")
    with pytest.raises(ValueError, match="stage of the evaluation pipeline"):
        build_judge(judge)  # it is not a per-block judge


def test_a_vllm_judge_in_a_python_without_vllm_is_refused_before_anything_runs(tmp_path):
    """The main venv has no vLLM: the sweep refuses such a config up front, naming the field and the fix."""
    import subprocess
    import sys

    if __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("this Python has vLLM")
    from overopt.config import load_config
    from overopt.sweep.plan import vllm_problems

    cfg = load_config(
        ROOT / "configs/smoke.yaml",
        [
            "evaluation.judge.type=llm",
            "evaluation.judge.transport=vllm",
            f"evaluation.judge.model={tmp_path}",
            "data.eval.source=synthetic",
        ],
    )
    (problem,) = vllm_problems(cfg)
    assert problem.startswith("evaluation.judge.transport: vllm") and "make vllm" in problem
    done = subprocess.run(
        [sys.executable, "jobs/scale_sweep.py", "--config", "configs/smoke.yaml", "--set", "evaluation.generation.backend=vllm"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2 and "evaluation.generation.backend: vllm" in done.stderr and "make vllm" in done.stderr


def test_judge_prompts_use_the_chat_template_when_the_tokenizer_has_one(tokenizer):
    from overopt.evaluate.vllm_judge import judge_prompt_ids

    text = "w01 w02 w03"
    plain = judge_prompt_ids(tokenizer, text)
    assert plain == tokenizer(text)["input_ids"]
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %} w09{% endif %}"
    try:
        assert judge_prompt_ids(tokenizer, text) == tokenizer("w01 w02 w03 w09", add_special_tokens=False)["input_ids"]
    finally:
        tokenizer.chat_template = None


def test_scoring_without_a_judge_leaves_the_judgement_to_a_later_stage(task, tokenizer, tiny_model):
    from overopt.evaluate.generation import HFGenerator
    from overopt.evaluate.scoring import models_scorer, score_samples, summarize

    model = tiny_model
    prompts = task.prompts(3, seed=1)
    records = score_samples(
        model,
        models_scorer(model, model, tokenizer.pad_token_id),
        tokenizer,
        HFGenerator(5, 1.0, 8),
        None,
        [tokenizer(p)["input_ids"] for p in prompts],
        prompts,
        prompts,
        [True] * 3,
        seed=0,
    )
    assert "outcome" not in records and "raw_judgement" not in records and len(records["response"]) == 3
    with pytest.raises(KeyError, match="outcome"):
        summarize(records)  # a missing judge stage cannot pass unnoticed


def test_the_row_names_the_mean_score_for_the_judge_that_gave_it(task, tokenizer, tiny_model, random_reward_model):
    """gold_reward only ever holds the synthetic task's gold reward: a reward model's scores go to
    reward_model_score (a proxy, not ground truth), and a pairwise judge fills neither."""
    from overopt.evaluate.generation import HFGenerator
    from overopt.evaluate.scoring import SCORE_COLUMNS, models_scorer, score_samples, summarize

    prompts = task.prompts(4, seed=5)
    references = [task.ideal_response(p) for p in prompts]
    judges = {
        "gold_reward": GoldJudge(task),
        "reward_model_score": build_judge(JudgeConfig(type="reward_model", model=random_reward_model[0]), device="cpu"),
        None: LLMJudge(DEFAULT_JUDGE_TEMPLATE, FakeTransport(lambda text: "Preferred: A")),
    }
    for column, judge in judges.items():
        records = score_samples(
            tiny_model,
            models_scorer(tiny_model, tiny_model, tokenizer.pad_token_id),
            tokenizer,
            HFGenerator(5),
            judge,
            [tokenizer(p)["input_ids"] for p in prompts],
            prompts,
            references,
            [True] * 4,
            seed=0,
        )
        row = summarize(records)
        for name in SCORE_COLUMNS:
            if name == column:
                assert row[name] == pytest.approx(records["policy_score"].mean()) and math.isfinite(row[name])
            else:
                assert math.isnan(row[name]), (column, name)
    mixed = dict(records, score_name=records["score_name"].copy())
    mixed["score_name"][:2] = ["gold_reward", "reward_model_score"]
    with pytest.raises(ValueError, match="one evaluation's scores come from judges"):
        summarize(mixed)
