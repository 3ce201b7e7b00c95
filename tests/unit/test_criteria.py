"""The demo's per-trial criteria (overopt/analysis/criteria.py) on hand-made experiments."""

import math

import numpy as np
import pandas as pd

from overopt.analysis.criteria import check_criteria

EPOCHS = [0.0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0, 1.5]


def _trial(objective, beta, win_rates, kls, size="tiny", seed=0, proxy=None, lengths=None):
    return pd.DataFrame(
        {
            "objective": objective,
            "beta": beta,
            "size": size,
            "seed": seed,
            "step": [round(e * 120) for e in EPOCHS],
            "epoch_fraction": EPOCHS,
            "win_rate": win_rates,
            "kl": kls,
            "d": np.sqrt(kls),
            "proxy_win_rate": PROXY_RISING if proxy is None else proxy,
            "proxy_win_rate_low": np.subtract(PROXY_RISING if proxy is None else proxy, 0.02),
            "proxy_win_rate_high": np.add(PROXY_RISING if proxy is None else proxy, 0.02),
            "mean_length": GROWING_LENGTH if lengths is None else lengths,
        }
    )


HUMP = [0.50, 0.58, 0.66, 0.70, 0.62, 0.55, 0.45, 0.40]
RISING = [0.50, 0.52, 0.55, 0.57, 0.60, 0.62, 0.63, 0.64]
GROWING_KL = [0.0, 0.3, 0.8, 1.4, 2.1, 2.9, 3.6, 4.5]
PROXY_RISING = [0.50, 0.60, 0.70, 0.75, 0.80, 0.82, 0.85, 0.86]
PROXY_OVERSHOT = [0.50, 0.60, 0.70, 0.75, 0.70, 0.65, 0.60, 0.55]  # falls below its 0.75 at gold's peak (epoch 0.5)
GROWING_LENGTH = [4.0, 4.1, 4.3, 4.6, 5.0, 5.4, 5.9, 6.5]
SHRINKING_LENGTH = [4.0, 3.9, 3.8, 3.7, 3.6, 3.5, 3.4, 3.3]


def _experiment(dpo_small_beta=HUMP, first_kls=GROWING_KL, ipo_win=RISING, changed=None):
    """DPO, SLiC, IPO and R-DPO at betas 0.03, 0.1 and 1 on size tiny; ``changed`` maps (objective, beta)
    to the _trial arguments that differ."""
    trials = []
    for objective in ("dpo", "slic", "ipo", "rdpo"):
        for beta, scale in ((0.03, 1.0), (0.1, 0.8), (1.0, 0.2)):
            win = dpo_small_beta if (objective, beta) == ("dpo", 0.03) else HUMP if beta < 1 else RISING
            if objective in ("ipo", "rdpo"):  # R-DPO without a hump: points 2 and 4 are not about it
                win = ipo_win
            kls = first_kls if (objective, beta) == ("dpo", 0.03) else [k * scale for k in GROWING_KL]
            arguments = {"win_rates": win, "kls": kls, **(changed or {}).get((objective, beta), {})}
            trials.append(_trial(objective, beta, **arguments))
    return pd.concat(trials, ignore_index=True)


def test_humps_gradual_kl_ordering_and_pooled_fall_all_hold():
    report = check_criteria(_experiment())
    assert report.shortfalls == [], report.text()
    assert report.humps == 4 and report.trials == 12
    assert "dpo beta=0.03 tiny seed=0: rise +0.200 fall +0.300 peak at epoch 0.500 -> hump" in report.findings
    assert report.text().endswith("0 shortfalls; per-trial humps 4; trials 12")
    assert any(f.startswith("matched d: tiny: over d 0.00 to 2.12") and "of ipo falls least" in f for f in report.findings)
    # 5: the four DPO/SLiC trials whose gold fell, each with a proxy that held
    held = [f for f in report.findings if f.endswith("-> proxy held while gold fell")]
    assert len(held) == 4 and held[0].startswith("dpo beta=0.03 tiny seed=0: gold falls +0.300; proxy 0.750 at gold's peak, 0.860")
    # 6: DPO, IPO and SLiC at betas 0.03 and 0.1; not R-DPO, not beta 1
    grown = [f for f in report.findings if f.endswith("-> grows")]
    assert len(grown) == 6 and not any(f.startswith(("rdpo", "dpo beta=1 ")) for f in grown)
    assert "dpo beta=0.03 tiny seed=0: mean length 4.00 at step 0, 6.50 at KL 4.50 -> grows" in grown


def test_each_criterion_reports_its_own_shortfall():
    flat = check_criteria(_experiment(dpo_small_beta=RISING))  # no fall in one trial
    assert flat.humps == 3 and any(s.startswith("no hump in dpo beta=0.03") for s in flat.shortfalls)
    jump = check_criteria(_experiment(first_kls=[0.0, 3.0, 3.2, 3.4, 3.6, 3.8, 4.0, 4.5]))  # most of the KL at 1/6 epoch
    assert any(s.startswith("KL jumps in ('dpo', 0.03") for s in jump.shortfalls)
    falling_ipo = check_criteria(_experiment(ipo_win=[0.5, 0.7, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1]))
    assert any(s.startswith("IPO does not fall least at matched d on tiny") for s in falling_ipo.shortfalls)
    reversed_kl = check_criteria(_experiment(first_kls=[0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07]))
    assert any(s.startswith("KL order dpo/tiny") for s in reversed_kl.shortfalls)
    rdpo_reversed = check_criteria(_experiment(changed={("rdpo", 0.03): {"kls": [k * 0.01 for k in GROWING_KL]}}))
    assert [s for s in rdpo_reversed.shortfalls if s.startswith("KL order")] == [
        "KL order rdpo/tiny: smallest beta reaches 0.04, largest 0.90"
    ]


def _ipo_against_dpo_and_slic(ipo_kls, ipo_win):
    """One beta each: DPO and SLiC travel to KL 4.5 with a hump (per-trial fall 0.30)."""
    return pd.concat(
        [
            _trial("dpo", 0.1, HUMP, GROWING_KL),
            _trial("slic", 0.1, HUMP, GROWING_KL),
            _trial("ipo", 0.1, ipo_win, ipo_kls),
        ],
        ignore_index=True,
    )


def test_ipo_falling_least_is_read_at_matched_d_not_at_equal_beta():
    # IPO moves only to d 0.67 and falls 0.15 there: less than DPO's 0.30 per trial, yet at d <= 0.67 DPO and
    # SLiC are still rising, so at matched d IPO falls most.
    short = check_criteria(_ipo_against_dpo_and_slic([k * 0.1 for k in GROWING_KL], [0.5, 0.6, 0.65, 0.7, 0.66, 0.6, 0.57, 0.55]))
    shortfall = [s for s in short.shortfalls if s.startswith("IPO does not fall least")]
    assert shortfall == ["IPO does not fall least at matched d on tiny (drop up to d 0.67: dpo 0.000, ipo 0.150, slic 0.000)"]
    # IPO travels to d 4.24 and falls 0.42 per trial (more than DPO), but only beyond d 2.12, where DPO and SLiC end
    far = check_criteria(_ipo_against_dpo_and_slic([k * 4 for k in GROWING_KL], [0.5, 0.55, 0.6, 0.65, 0.7, 0.72, 0.5, 0.3]))
    assert not any(s.startswith("IPO does not fall least") for s in far.shortfalls), far.text()
    assert any(f.startswith("matched d: tiny: over d 0.00 to 2.12") and "of ipo falls least" in f for f in far.findings)


def test_a_proxy_that_falls_with_gold_over_shot_its_own_labels():
    overshot = check_criteria(_experiment(changed={("dpo", 0.03): {"proxy": PROXY_OVERSHOT}}))
    assert overshot.shortfalls == ["no Goodhart signature in dpo beta=0.03 tiny seed=0: the proxy fell too (over-shot its own labels)"]
    assert (
        "dpo beta=0.03 tiny seed=0: gold falls +0.300; proxy 0.750 at gold's peak, 0.550 at the last evaluation -> over-shot its own labels"
        in overshot.findings
    )
    # a trial whose gold did not fall is not held to it (IPO's rising gold with a falling proxy)
    assert check_criteria(_experiment(changed={("ipo", 0.03): {"proxy": PROXY_OVERSHOT}})).shortfalls == []


def test_without_a_proxy_or_a_length_the_criteria_are_skipped_with_a_finding():
    for without in (
        _experiment().drop(columns=["proxy_win_rate", "proxy_win_rate_low", "proxy_win_rate_high", "mean_length"]),
        _experiment().assign(proxy_win_rate=math.nan, mean_length=math.nan),
    ):
        report = check_criteria(without)
        assert report.shortfalls == [], report.text()
        assert "Goodhart signature not checked: no proxy in this experiment (no proxy_win_rate)" in report.findings
        assert "length growth not checked: no mean_length in the rows" in report.findings
    one_trial = _experiment(changed={("slic", 0.03): {"proxy": [math.nan] * len(EPOCHS)}})
    report = check_criteria(one_trial)
    assert report.shortfalls == [] and any(
        f.startswith("slic beta=0.03 tiny seed=0") and f.endswith("not checked (no proxy value)") for f in report.findings
    )


def test_length_growth_is_asked_of_dpo_ipo_and_slic_on_tiny_at_their_two_smallest_betas():
    shrinking = {"lengths": SHRINKING_LENGTH}
    report = check_criteria(_experiment(changed={("ipo", 0.1): shrinking}))
    assert report.shortfalls == ["no length growth in ipo beta=0.1 tiny seed=0"]
    assert "ipo beta=0.1 tiny seed=0: mean length 4.00 at step 0, 3.30 at KL 3.60 -> SHORT" in report.findings
    not_asked = {("rdpo", 0.03): shrinking, ("dpo", 1.0): shrinking, ("slic", 1.0): shrinking}
    assert check_criteria(_experiment(changed=not_asked)).shortfalls == []
    small = _experiment().assign(size="small")
    assert "length growth not checked: no DPO, IPO or SLiC trial on size tiny" in check_criteria(small).findings
    # the largest-KL evaluation, not the last: a trial whose KL dips at the end is read where it went furthest
    dipping = _experiment(changed={("dpo", 0.03): {"lengths": [4.0, 4.1, 4.3, 4.6, 5.0, 5.4, 5.9, 3.0]}})
    dipping.loc[(dipping["objective"] == "dpo") & (dipping["beta"] == 0.03) & (dipping["step"] == 180), ["kl", "d"]] = [3.0, math.sqrt(3.0)]
    assert not any(s.startswith("no length growth") for s in check_criteria(dipping).shortfalls)
