"""The synthetic task: determinism, the gold judge, demonstrations and the biased labeller."""

import math

import numpy as np
import pytest

from overopt.data.synthetic import (
    SEP,
    Labeller,
    Response,
    SyntheticTask,
    demonstration_sampler,
    make_preference_pairs,
)


def test_prompts_are_deterministic_and_well_formed(task):
    assert task.prompts(20, seed=5) == task.prompts(20, seed=5)
    assert task.prompts(20, seed=5) != task.prompts(20, seed=6)
    for prompt in task.prompts(200, seed=1):
        words = prompt.split()
        assert words[-1] == SEP
        assert task.prompt_words[0] <= len(words) - 1 <= task.prompt_words[1]
        n_salient = len(task.ideal_response(prompt).split())
        assert task.salient_per_prompt[0] <= n_salient <= task.salient_per_prompt[1]


def test_salient_subset_follows_the_task_seed():
    assert SyntheticTask(seed=0).salient_words == SyntheticTask(seed=0).salient_words
    assert SyntheticTask(seed=0).salient_words != SyntheticTask(seed=1).salient_words
    assert len(SyntheticTask().salient_words) == 10


def test_ideal_response_scores_the_maximum(task):
    for prompt in task.prompts(100, seed=2):
        assert task.gold_reward(prompt, task.ideal_response(prompt)) == 1.0


def test_gold_on_a_hand_computed_example():
    task = SyntheticTask(seed=0)
    a, b, c = sorted(task.salient_words)[:3]
    prompt = f"w99 {a} w98 {b} {c} {SEP}".replace("w99", "x").replace("w98", "y")
    # response "a b z": matched 2 of 3 words, recall 2/3, precision 2/3 -> F1 2/3; LCS 2/3; excess 0
    expected = 0.7 * (2 / 3) + 0.3 * (2 / 3)
    assert task.gold_reward(prompt, f"{a} {b} zzz") == pytest.approx(expected)


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda w: w[1:], id="missing word"),
        pytest.param(lambda w: w + ["w39"], id="extra word"),
        pytest.param(lambda w: w + [w[0]], id="repeated word"),
        pytest.param(lambda w: [w[1], w[0]] + w[2:], id="out of order"),
        pytest.param(lambda w: w + ["w39", "w38", "w37", "w36"], id="much longer"),
    ],
)
def test_each_corruption_lowers_the_score(task, corrupt):
    lowered = 0
    prompts = task.prompts(50, seed=4)
    for prompt in prompts:
        ideal = task.ideal_response(prompt).split()
        corrupted = " ".join(corrupt(ideal))
        assert task.gold_reward(prompt, corrupted) < 1.0 or corrupted == " ".join(ideal)
        lowered += task.gold_reward(prompt, corrupted) < 1.0
    assert lowered == len(prompts)


def test_missing_eos_and_more_junk_lower_the_score_further(task):
    prompt = task.prompts(1, seed=0)[0]
    ideal = task.ideal_response(prompt)
    assert task.gold_reward(prompt, ideal, finished=False) == pytest.approx(0.75)
    scores = [task.gold_reward(prompt, ideal + " w39" * k) for k in range(4)]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4


def test_demonstrations_are_noisy_but_informative(task):
    rows = task.demonstrations(500, seed=0)
    assert rows == task.demonstrations(500, seed=0)
    gold = np.array([task.gold_reward(r["prompt"], r["response"]) for r in rows])
    assert 0.4 < gold.mean() < 0.95  # imperfect ...
    assert (gold == 1.0).mean() > 0.03  # ... sometimes exactly right ...
    junk = [task.gold_reward(r["prompt"], " ".join(task.content_words[:4])) for r in rows]
    assert gold.mean() > np.mean(junk) + 0.3  # ... and far better than arbitrary words
    assert all(len(r["response"].split()) < task.max_response_words for r in rows)


def test_labels_follow_the_labeller_at_its_noise_rate(task):
    labeller = Labeller(task, length_bias=0.08, temperature=0.1)
    prompts = task.prompts(4000, seed=7)
    rows, skipped = make_preference_pairs(prompts, demonstration_sampler(task, seed=1), labeller, seed=0)
    assert len(rows) + sum(skipped.values()) == len(prompts) and skipped["identical"] > 0
    # Chosen should have the higher labeller score exactly as often as Bradley-Terry predicts.
    expected, agree = [], []
    for row in rows:
        chosen = labeller.score(row["prompt"], Response(row["chosen"], True))
        rejected = labeller.score(row["prompt"], Response(row["rejected"], True))
        if chosen == rejected:
            continue
        gap = abs(chosen - rejected)
        expected.append(1 / (1 + math.exp(-gap / labeller.temperature)))
        agree.append(chosen > rejected)
    n = len(agree)
    standard_error = math.sqrt(np.mean(expected) * (1 - np.mean(expected)) / n)
    assert abs(np.mean(agree) - np.mean(expected)) < 4 * standard_error
    assert 0.6 < np.mean(agree) < 0.95  # noisy, not deterministic


def test_deterministic_labeller_always_picks_the_higher_score(task):
    labeller = Labeller(task, length_bias=0.0, temperature=0.0)
    rows, _ = make_preference_pairs(task.prompts(500, seed=8), demonstration_sampler(task, 2), labeller, seed=0)
    assert all(r["chosen_gold"] >= r["rejected_gold"] for r in rows)


def _longer_chosen_rate(task, length_bias):
    labeller = Labeller(task, length_bias=length_bias, temperature=0.1)
    rows, _ = make_preference_pairs(task.prompts(3000, seed=9), demonstration_sampler(task, 3), labeller, seed=0)
    unequal = [r for r in rows if len(r["chosen"].split()) != len(r["rejected"].split())]
    return np.mean([len(r["chosen"].split()) > len(r["rejected"].split()) for r in unequal]), len(unequal)


def test_length_bias_shows_in_the_labels(task):
    unbiased, n = _longer_chosen_rate(task, 0.0)
    biased, _ = _longer_chosen_rate(task, 0.1)
    # Binomial SE on ~2000 unequal pairs is ~0.011; the bias moves the rate by far more.
    assert biased - unbiased > 0.1, (unbiased, biased, n)
    assert unbiased < 0.5  # gold alone dislikes extra length


def test_truncated_and_identical_responses_are_skipped(task):
    prompts = task.prompts(3, seed=0)
    sampler = lambda ps: [Response("w01", True), Response("w02", False), Response("w03", True)]  # noqa: E731
    rows, skipped = make_preference_pairs(prompts, sampler, Labeller(task), seed=0)
    assert rows == [] and skipped == {"unfinished": 1, "identical": 2}


def test_bad_task_parameters_are_errors():
    with pytest.raises(ValueError, match="salient_per_prompt"):
        SyntheticTask(salient_per_prompt=(3, 20))
    with pytest.raises(ValueError, match="temperature"):
        Labeller(temperature=-1)


def test_trailing_junk_goes_after_the_complete_answer():
    rambling = SyntheticTask(seed=0, drop_prob=0, duplicate_prob=0, insertion_rate=0, swap_prob=0, trailing_rate=2.0)
    rng = np.random.default_rng(0)
    extra = []
    for prompt in rambling.prompts(200, seed=1):
        ideal = rambling.ideal_response(prompt).split()
        words = rambling.demonstration(prompt, rng).split()
        assert words[: len(ideal)] == ideal  # the whole answer first, in order
        extra.append(len(words) - len(ideal))
    assert 1.7 < np.mean(extra) < 2.3  # then Poisson(2) junk words (truncation aside)


def test_early_stops_end_a_demonstration_before_its_answer_is_complete():
    stopping = SyntheticTask(
        seed=0,
        salient_per_prompt=(3, 3),
        drop_prob=0,
        duplicate_prob=0,
        insertion_rate=0,
        swap_prob=0,
        trailing_rate=2.0,
        stop_early_prob=0.7,
    )
    rng = np.random.default_rng(0)
    early = 0
    for prompt in stopping.prompts(400, seed=1):
        ideal = stopping.ideal_response(prompt).split()
        words = stopping.demonstration(prompt, rng).split()
        if len(words) < len(ideal):
            early += 1
            assert words == ideal[: len(words)] and words  # a proper, non-empty prefix of the answer, nothing after it
        else:
            assert words[: len(ideal)] == ideal  # complete: the whole answer, then its junk
    assert 0.63 < early / 400 < 0.77  # stop_early_prob of them
