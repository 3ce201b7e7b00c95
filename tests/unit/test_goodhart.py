"""Proxy against gold, length growth and model size against the paper (overopt/analysis/goodhart.py),
on hand-built trials whose answer is known."""

import math

import numpy as np
import pandas as pd
import pytest

from overopt.analysis.goodhart import (
    length_growth,
    length_growth_lines,
    parameter_count,
    proxy_and_gold,
    proxy_and_gold_lines,
    size_vs_paper,
    trial_length_growth,
)


def _trial(objective="dpo", beta=0.1, size="tiny", seed=0, win=(0.5, 0.7, 0.6), proxy=None, half_width=0.02, lengths=None, kls=None):
    n = len(win)
    kls = np.linspace(0.0, 2.0, n) if kls is None else np.asarray(kls, float)
    frame = pd.DataFrame(
        {
            "objective": objective,
            "beta": beta,
            "size": size,
            "seed": seed,
            "step": np.arange(n) * 10,
            "epoch_fraction": np.arange(n) / (n - 1),
            "kl": kls,
            "d": np.sqrt(kls),
            "win_rate": win,
            "mean_length": np.linspace(4.0, 5.0, n) if lengths is None else lengths,
        }
    )
    if proxy is not None:
        frame["proxy_win_rate"] = proxy
        frame["proxy_win_rate_low"] = np.subtract(proxy, half_width)
        frame["proxy_win_rate_high"] = np.add(proxy, half_width)
    return frame


def test_proxy_kept_rising_where_gold_fell_and_over_shooting_is_read_against_the_interval():
    rows = pd.concat(
        [
            _trial(seed=0, win=[0.5, 0.8, 0.6], proxy=[0.5, 0.7, 0.9]),  # Goodhart: proxy climbs as gold falls
            _trial(seed=1, win=[0.5, 0.8, 0.6], proxy=[0.5, 0.9, 0.7]),  # proxy falls with gold, by 0.2 > 0.02
            _trial(seed=2, win=[0.5, 0.8, 0.75], proxy=[0.5, 0.71, 0.70]),  # gold falls 0.05 only; proxy dips within its interval
        ]
    )
    table = proxy_and_gold(rows).set_index("seed")
    assert (
        table.loc[0, "gold_peak"] == 0.8 and table.loc[0, "gold_peak_step"] == 10 and table.loc[0, "d_at_gold_peak"] == pytest.approx(1.0)
    )
    assert table.loc[0, "gold_fall"] == pytest.approx(0.2) and table.loc[0, "gold_fell"]
    assert table.loc[0, "proxy_at_gold_peak"] == 0.7 and table.loc[0, "proxy_last"] == 0.9
    assert table.loc[0, "proxy_kept_rising"] is True and table.loc[0, "overshot_own_labels"] is False
    assert table.loc[1, "proxy_kept_rising"] is False and table.loc[1, "overshot_own_labels"] is True
    assert not table.loc[2, "gold_fell"] and table.loc[2, "proxy_kept_rising"] is False
    assert table.loc[2, "proxy_half_width"] == pytest.approx(0.02) and table.loc[2, "overshot_own_labels"] is False
    lines = proxy_and_gold_lines(proxy_and_gold(rows))
    assert lines[0].startswith("Gold fell by at least 0.08 from its peak in 2 of 3 trials; in 1 of them the proxy")
    assert lines[1].startswith("1 of 3 trials end more than")


def test_without_a_proxy_the_table_is_empty_and_missing_values_compare_to_none():
    assert proxy_and_gold(_trial()).empty
    assert proxy_and_gold(_trial(proxy=[math.nan] * 3)).empty
    assert proxy_and_gold_lines(proxy_and_gold(_trial())) == ["No proxy in this experiment: the rows carry no proxy win rate."]
    gap = pd.concat([_trial(seed=0, proxy=[0.5, 0.6, 0.7]), _trial(seed=1, proxy=[0.5, math.nan, 0.7])])
    no_interval = _trial(proxy=[0.5, 0.6, 0.7]).drop(columns=["proxy_win_rate_low", "proxy_win_rate_high"])
    table = proxy_and_gold(gap).set_index("seed")
    assert table.loc[0, "proxy_kept_rising"] is True and table.loc[1, "proxy_kept_rising"] is None
    assert "(1 without a proxy value to compare)" in proxy_and_gold_lines(proxy_and_gold(gap))[0]
    assert proxy_and_gold(no_interval)["overshot_own_labels"].iloc[0] is None


def test_length_growth_reads_the_largest_kl_evaluation_and_averages_seeds():
    rows = pd.concat(
        [
            _trial(seed=0, lengths=[4.0, 6.0, 5.0], kls=[0.0, 3.0, 2.0]),  # KL dips at the end: read at step 10
            _trial(seed=1, lengths=[4.0, 4.5, 5.0], kls=[0.0, 1.0, 2.0]),
            _trial("rdpo", seed=0, lengths=[4.0, 4.1, 4.2], kls=[0.0, 1.0, 2.0]),
        ]
    )
    per_trial = trial_length_growth(rows).set_index(["objective", "seed"])
    assert per_trial.loc[("dpo", 0), "growth"] == pytest.approx(2.0) and per_trial.loc[("dpo", 0), "largest_kl"] == 3.0
    table = length_growth(rows).set_index("objective")
    assert table.loc["dpo", "trials"] == 2 and table.loc["dpo", "growth"] == pytest.approx(1.5)
    assert table.loc["dpo", "largest_kl"] == pytest.approx(2.5) and table.loc["rdpo", "growth"] == pytest.approx(0.2)
    assert length_growth_lines(length_growth(rows)) == [
        "tiny, beta 0.1: rdpo +0.20 tokens (step 0 to KL 2.00), dpo +1.50 tokens (to KL 2.50)."
    ]
    assert length_growth_lines(length_growth(_trial())) == ["No size and beta on which both rdpo and dpo ran."]
    assert length_growth(_trial().drop(columns=["mean_length"])).empty
    assert length_growth_lines(length_growth(_trial().drop(columns=["mean_length"]))) == ["No mean_length in the rows."]
    assert math.isnan(trial_length_growth(_trial().iloc[1:])["step0_length"].iloc[0])  # no step-0 row


def test_sizes_are_ordered_by_parameter_count():
    assert parameter_count("tiny") < parameter_count("small") < parameter_count("medium")
    assert parameter_count("EleutherAI/pythia-410m") == pytest.approx(410e6)
    assert parameter_count("EleutherAI/pythia-2.8b") == pytest.approx(2.8e9)
    assert parameter_count("EleutherAI/pythia-6.9b-deduped") == pytest.approx(6.9e9)
    assert parameter_count("runs/sft/model-4b2c") is None and parameter_count("gpt2") is None


def test_size_comparison_is_stated_either_way_from_the_experiments_numbers():
    # listed largest first (as results sorted by name would be): the order comes from the parameter counts
    larger = [_trial(size="small", seed=s, win=[0.5, 0.8, 0.75], kls=[0.0, 4.0, 5.0]) for s in (0, 1)]
    smaller = [_trial(size="tiny", seed=s, win=[0.5, 0.7, 0.5], kls=[0.0, 1.0, 2.0]) for s in (0, 1)]
    table, lines = size_vs_paper(pd.concat(larger + smaller))
    assert list(table["size"]) == ["tiny", "small"] and list(table["trials"]) == [2, 2]
    assert lines == [
        "dpo: small against tiny: median peak win rate 0.800 vs 0.700 (higher; the paper: higher), median fall 0.050 vs 0.200 "
        "(smaller; the paper: smaller), median peak at d 2.00 vs 1.00 (at a larger d; the paper: at a larger d)."
    ]
    swapped = pd.concat(larger + smaller).replace({"size": {"small": "tiny", "tiny": "small"}})
    _, lines = size_vs_paper(swapped)
    assert "(lower; the paper: higher)" in lines[0] and "(larger; the paper: smaller)" in lines[0] and "(at a smaller d;" in lines[0]
    _, lines = size_vs_paper(pd.concat(larger + smaller).replace({"size": {"small": "gpt2"}}))
    assert lines == ["Sizes not ordered by parameter count (no count known for gpt2): no size comparison."]
    assert size_vs_paper(pd.concat(smaller))[1] == ["One size only: no size comparison."]
