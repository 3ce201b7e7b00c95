"""Objectives compared at matched d (overopt/analysis/matched.py) on hand-built curves whose answer is known."""

import math

import numpy as np
import pandas as pd
import pytest

from overopt.analysis.matched import compare_at_matched_d, matched_verdict, pooled_curves, trial_curve, trial_curves


def _trial(objective, d, win, beta=0.1, size="tiny", seed=0, proxy=None):
    frame = pd.DataFrame(
        {
            "objective": objective,
            "beta": beta,
            "size": size,
            "seed": seed,
            "step": np.arange(len(d)) * 10,
            "d": d,
            "kl": np.square(d),
            "win_rate": win,
        }
    )
    if proxy is not None:
        frame["proxy_win_rate"] = proxy
    return frame


# At beta 0.1 "short" moves only to d = 1 and falls 0.1 from its peak at d = 0.5; "far" travels to d = 3 and
# falls 0.25 in all, but only after d = 1, where it is still at its peak. At equal beta "short" falls less;
# at matched d (the common range is d <= 1) "short" drops 0.1 and "far" not at all.
SHORT = _trial("short", [0.0, 0.5, 1.0], [0.5, 0.7, 0.6])
FAR = _trial("far", [0.0, 1.0, 2.0, 3.0], [0.5, 0.7, 0.6, 0.45])


def test_the_smaller_fall_at_equal_beta_is_the_larger_fall_at_matched_d():
    both = pd.concat([SHORT, FAR], ignore_index=True)
    nominal = {o: rows["win_rate"].max() - rows["win_rate"].iloc[-1] for o, rows in both.groupby("objective")}
    assert nominal["short"] < nominal["far"]  # the reading at equal beta
    table = compare_at_matched_d(both).set_index("objective")
    assert table.loc["short", "common_d_high"] == pytest.approx(1.0) and table.loc["far", "common_d_low"] == 0.0
    assert table.loc["short", "drop"] == pytest.approx(0.1) and table.loc["far", "drop"] == pytest.approx(0.0)
    assert table.loc["short", "d_at_pooled_peak"] == pytest.approx(0.5)
    assert table.loc["far", "d_at_pooled_peak"] == pytest.approx(1.0) and table.loc["far", "at_common_end"] == pytest.approx(0.7)
    assert table.loc["far", "falls_least"] and not table.loc["short", "falls_least"]
    assert table.loc["far", "own_d_max"] == pytest.approx(3.0) and table.loc["far", "d_at_own_peak"] == pytest.approx(1.0)
    verdict = matched_verdict(compare_at_matched_d(both))
    assert verdict.startswith("tiny: over d 0.00 to 1.00") and "the gold win rate of far falls least" in verdict
    assert verdict.index("far peaks") < verdict.index("short peaks")  # smallest drop first


def test_a_trial_is_never_extrapolated_beyond_its_own_range():
    grid = np.array([0.0, 0.25, 0.5, 0.8, 1.5])
    curve = trial_curve([0.0, 0.5], [0.5, 0.7], grid)
    assert curve[:3] == pytest.approx([0.5, 0.6, 0.7]) and np.isnan(curve[3:]).all()
    # d need not grow with the step: the curve is read along d, equal d averaged, NaN points left out
    dipped = trial_curve([0.0, 1.0, 0.5, 1.0, 2.0], [0.5, 0.8, 0.6, 0.6, math.nan], [0.75, 1.0, 1.5])
    assert dipped[:2] == pytest.approx([0.65, 0.7]) and np.isnan(dipped[2])
    assert np.isnan(trial_curve([], [], [0.0])).all()


def test_the_pooled_curve_averages_only_the_trials_that_reach_each_d():
    near = _trial("dpo", [0.0, 1.0], [0.5, 0.7], beta=1.0)
    far = _trial("dpo", [0.0, 2.0], [0.5, 0.5], beta=0.1)
    pooled = pooled_curves(pd.concat([near, far]), n_grid=5)  # grid 0, 0.5, 1, 1.5, 2
    assert list(pooled["d"]) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert list(pooled["win_rate"]) == pytest.approx([0.5, 0.55, 0.6, 0.5, 0.5])
    assert list(pooled["trials"]) == [2, 2, 2, 1, 1]
    per_trial = trial_curves(pd.concat([near, far]), n_grid=5)
    assert per_trial.groupby("beta")["win_rate"].count().to_dict() == {0.1: 5, 1.0: 3}


def test_the_common_range_is_per_size_and_only_over_the_compared_objectives():
    small = pd.concat([_trial("short", [0.0, 2.0], [0.5, 0.6], size="small"), _trial("far", [0.0, 4.0], [0.5, 0.9], size="small")])
    alone = _trial("rdpo", [0.0, 0.2], [0.5, 0.5])  # would shorten tiny's range if it were compared
    table = compare_at_matched_d(pd.concat([SHORT, FAR, small, alone]), objectives=("short", "far"))
    assert set(table["objective"]) == {"short", "far"}
    assert table.groupby("size")["common_d_high"].first().to_dict() == pytest.approx({"tiny": 1.0, "small": 2.0})
    with_rdpo = compare_at_matched_d(pd.concat([SHORT, FAR, alone]))
    assert with_rdpo["common_d_high"].iloc[0] == pytest.approx(0.2)


def test_proxy_columns_are_read_the_same_way_and_their_absence_gives_empty_tables():
    with_proxy = pd.concat(
        [_trial("short", [0.0, 1.0], [0.5, 0.6], proxy=[0.5, 0.9]), _trial("far", [0.0, 1.0], [0.5, 0.6], proxy=[0.5, 0.6])]
    )
    table = compare_at_matched_d(with_proxy, metric="proxy_win_rate").set_index("objective")
    assert (table["metric"] == "proxy_win_rate").all() and table.loc["short", "pooled_peak"] == pytest.approx(0.9)
    assert compare_at_matched_d(pd.concat([SHORT, FAR]), metric="proxy_win_rate").empty
    nan_proxy = pd.concat([SHORT, FAR]).assign(proxy_win_rate=math.nan)
    assert compare_at_matched_d(nan_proxy, metric="proxy_win_rate").empty and pooled_curves(nan_proxy, "proxy_win_rate").empty
    assert matched_verdict(compare_at_matched_d(SHORT)).startswith("No size has two objectives")  # one objective: no comparison
