"""Tests for overopt.metrics: KL estimate, win rate with Wilson interval, length regression."""

import json
import math

import numpy as np
import pytest
import torch

from overopt.metrics import (
    Z_95,
    judge_outcome,
    kl_to_reference,
    length_regression,
    wilson_interval,
    win_rate,
)

# ---------------------------------------------------------------- KL


def test_kl_hand_computed_mean_and_standard_error():
    estimate = kl_to_reference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert estimate.kl == pytest.approx(2.0, abs=1e-12)
    # ratios 1,2,3: sample std (ddof=1) = 1, so se = 1/sqrt(3)
    assert estimate.kl_se == pytest.approx(1.0 / math.sqrt(3.0), abs=1e-12)
    assert estimate.d == pytest.approx(math.sqrt(2.0), abs=1e-12)
    assert estimate.negative is False
    assert estimate.n == 3


def test_kl_uses_the_difference_not_the_policy_alone():
    estimate = kl_to_reference([-10.0, -12.0], [-11.0, -11.0])  # ratios +1, -1
    assert estimate.kl == pytest.approx(0.0, abs=1e-12)
    assert estimate.kl_se == pytest.approx(math.sqrt(2.0) / math.sqrt(2.0), abs=1e-12)


def test_kl_identical_policy_and_reference_is_zero():
    logps = np.array([-5.0, -7.5, -3.25, -12.0])
    estimate = kl_to_reference(logps, logps.copy())
    assert (estimate.kl, estimate.kl_se, estimate.d, estimate.negative) == (0.0, 0.0, 0.0, False)


def test_kl_negative_estimate_is_flagged_and_d_clipped():
    estimate = kl_to_reference([0.0, 0.0, 0.0], [0.5, 1.0, 1.5])
    assert estimate.kl == pytest.approx(-1.0, abs=1e-12)
    assert estimate.negative is True
    assert estimate.d == 0.0


def test_kl_accepts_torch_tensors():
    estimate = kl_to_reference(torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3))
    assert estimate.kl == pytest.approx(2.0)


@pytest.mark.parametrize(
    "policy, reference, message",
    [
        ([1.0, 2.0], [1.0, 2.0, 3.0], "shape mismatch"),
        ([1.0], [0.0], "at least 2"),
        ([1.0, float("nan")], [0.0, 0.0], "policy_logps"),
        ([1.0, 2.0], [0.0, float("-inf")], "reference_logps"),
        ([[1.0, 2.0]], [[0.0, 0.0]], "1-dimensional"),
    ],
)
def test_kl_rejects_bad_input(policy, reference, message):
    with pytest.raises(ValueError, match=message):
        kl_to_reference(policy, reference)


def test_kl_to_dict_is_json_safe():
    as_dict = kl_to_reference(np.array([1.0, 2.0, 3.0], dtype=np.float32), np.zeros(3)).to_dict()
    assert set(as_dict) == {"kl", "kl_se", "d", "negative", "n"}
    assert all(type(value) in (float, int, bool) for value in as_dict.values())
    json.dumps(as_dict)


# ---------------------------------------------------------------- win rate


def test_win_rate_hand_example_with_invalid_judgement():
    result = win_rate([1, 0.5, 0, None])
    assert result.rate == pytest.approx(0.5)
    assert (result.n_valid, result.n_invalid) == (3, 1)
    assert (result.n_wins, result.n_ties, result.n_losses) == (1, 1, 1)


def test_invalid_judgements_are_not_losses():
    with_invalid = win_rate([1, 1, None, float("nan")])
    assert with_invalid.rate == 1.0
    assert with_invalid.n_invalid == 2 and with_invalid.n_losses == 0


def test_win_rate_accepts_numpy_and_torch():
    assert win_rate(np.array([1.0, np.nan, 0.0])).n_invalid == 1
    assert win_rate(torch.tensor([1.0, 0.5, 0.5, 0.0])).rate == pytest.approx(0.5)


def test_wilson_interval_matches_hand_computation():
    n, wins = 100, 60
    p = wins / n
    z = 1.959963984540054
    center = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    result = win_rate([1] * wins + [0] * (n - wins))
    assert Z_95 == pytest.approx(z, abs=1e-12)
    assert result.low == pytest.approx(center - half, abs=1e-9)
    assert result.high == pytest.approx(center + half, abs=1e-9)
    # Known textbook value for 60/100: about (0.502, 0.691).
    assert result.low == pytest.approx(0.5020, abs=1e-4)
    assert result.high == pytest.approx(0.6906, abs=1e-4)


def test_wilson_interval_contains_rate_and_narrows_with_n():
    widths = []
    for n in (10, 100, 1000):
        result = win_rate([1, 0.5, 0, 1, 1] * (n // 5))  # rate 0.7 at every n
        assert result.low < result.rate < result.high
        widths.append(result.high - result.low)
    assert widths[0] > widths[1] > widths[2]


def test_wilson_interval_at_the_edges_stays_in_unit_interval():
    all_wins = win_rate([1] * 20)
    assert all_wins.rate == 1.0 and all_wins.high == pytest.approx(1.0) and 0.0 < all_wins.low < 1.0
    all_losses = win_rate([0] * 20)
    assert all_losses.low == pytest.approx(0.0, abs=1e-12) and 0.0 < all_losses.high < 1.0
    assert all(math.isnan(bound) for bound in wilson_interval(0.5, 0))


def test_invalid_judgements_do_not_enter_the_interval_sample_size():
    assert win_rate([1, 0, 1, None, None, None]).to_dict() == {
        **win_rate([1, 0, 1]).to_dict(),
        "n_invalid": 3,
    }


def test_results_are_frozen():
    result = win_rate([1, 0])
    with pytest.raises(AttributeError):
        result.rate = 1.0


@pytest.mark.parametrize("bad", [2, -1, 0.25, "win", 0.7])
def test_win_rate_rejects_values_outside_the_outcome_set(bad):
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
        win_rate([1, 0, bad])


def test_all_invalid_gives_nan_rate_without_raising():
    result = win_rate([None, float("nan"), None])
    assert math.isnan(result.rate) and math.isnan(result.low) and math.isnan(result.high)
    assert (result.n_valid, result.n_invalid) == (0, 3)
    as_dict = result.to_dict()
    assert all(type(value) in (float, int) for value in as_dict.values())


def test_empty_outcomes_gives_nan_rate():
    result = win_rate([])
    assert math.isnan(result.rate) and result.n_valid == 0 and result.n_invalid == 0


@pytest.mark.parametrize(
    "policy_score, reference_score, expected",
    [
        (2.0, 1.0, 1.0),
        (1.0, 2.0, 0.0),
        (1.0, 1.0, 0.5),
        (1.0, 1.0 + 1e-12, 0.5),
        (np.float32(3.0), torch.tensor(1.0), 1.0),
        (None, 1.0, None),
        (1.0, None, None),
        (float("nan"), 1.0, None),
        (1.0, np.nan, None),
    ],
)
def test_judge_outcome(policy_score, reference_score, expected):
    assert judge_outcome(policy_score, reference_score) == expected


def test_judge_outcome_tolerance_and_round_trip_into_win_rate():
    assert judge_outcome(1.0, 1.05, tie_tolerance=0.1) == 0.5
    assert judge_outcome(1.0, 1.05, tie_tolerance=0.01) == 0.0
    outcomes = [judge_outcome(p, r) for p, r in [(2, 1), (1, 1), (0, 1), (None, 1)]]
    assert win_rate(outcomes).to_dict()["rate"] == pytest.approx(0.5)


# ---------------------------------------------------------------- length regression


def test_length_regression_recovers_exact_linear_relation():
    lengths = np.arange(10, 60, dtype=float)
    result = length_regression(0.5 * lengths - 3.0, lengths)
    assert result.slope == pytest.approx(0.5, abs=1e-12)
    assert result.intercept == pytest.approx(-3.0, abs=1e-9)
    assert result.r2 == pytest.approx(1.0, abs=1e-12)
    assert result.n == 50


def test_length_regression_r2_near_zero_for_independent_noise():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=2000)
    result = length_regression(rng.normal(size=2000), lengths)
    assert 0.0 <= result.r2 < 0.01
    assert abs(result.slope) < 0.01


@pytest.mark.parametrize(
    "log_ratios, lengths",
    [([1.0, 2.0], [3, 4]), ([1.0, 2.0, 3.0], [7, 7, 7]), ([], [])],
)
def test_length_regression_degenerate_inputs_give_nan(log_ratios, lengths):
    result = length_regression(log_ratios, lengths)
    assert math.isnan(result.slope) and math.isnan(result.intercept) and math.isnan(result.r2)
    assert result.n == len(lengths)
    json.dumps(result.to_dict())  # nan is allowed by json.dumps' default allow_nan=True


def test_length_regression_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        length_regression([1.0, 2.0, 3.0], [1, 2])
