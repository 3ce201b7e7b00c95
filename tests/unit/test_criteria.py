"""The demo's per-trial criteria (overopt/analysis/criteria.py) on hand-made experiments."""

import numpy as np
import pandas as pd

from overopt.analysis.criteria import check_criteria

EPOCHS = [0.0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0, 1.5]


def _trial(objective, beta, win_rates, kls, size="tiny", seed=0):
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
        }
    )


HUMP = [0.50, 0.58, 0.66, 0.70, 0.62, 0.55, 0.45, 0.40]
RISING = [0.50, 0.52, 0.55, 0.57, 0.60, 0.62, 0.63, 0.64]
GROWING_KL = [0.0, 0.3, 0.8, 1.4, 2.1, 2.9, 3.6, 4.5]


def _experiment(dpo_small_beta=HUMP, first_kls=GROWING_KL, ipo_win=RISING):
    trials = []
    for objective in ("dpo", "slic", "ipo"):
        for beta, scale in ((0.03, 1.0), (0.1, 0.8), (1.0, 0.2)):
            win = dpo_small_beta if (objective, beta) == ("dpo", 0.03) else HUMP if beta < 1 else RISING
            if objective == "ipo":
                win = ipo_win
            kls = first_kls if (objective, beta) == ("dpo", 0.03) else [k * scale for k in GROWING_KL]
            trials.append(_trial(objective, beta, win, kls))
    return pd.concat(trials, ignore_index=True)


def test_humps_gradual_kl_ordering_and_pooled_fall_all_hold():
    report = check_criteria(_experiment())
    assert report.shortfalls == [], report.text()
    assert report.humps == 4 and report.trials == 9
    assert "dpo beta=0.03 tiny seed=0: rise +0.200 fall +0.300 peak at epoch 0.500 -> hump" in report.findings
    assert report.text().endswith("0 shortfalls; per-trial humps 4; trials 9")


def test_each_criterion_reports_its_own_shortfall():
    flat = check_criteria(_experiment(dpo_small_beta=RISING))  # no fall in one trial
    assert flat.humps == 3 and any(s.startswith("no hump in dpo beta=0.03") for s in flat.shortfalls)
    jump = check_criteria(_experiment(first_kls=[0.0, 3.0, 3.2, 3.4, 3.6, 3.8, 4.0, 4.5]))  # most of the KL at 1/6 epoch
    assert any(s.startswith("KL jumps in ('dpo', 0.03") for s in jump.shortfalls)
    falling_ipo = check_criteria(_experiment(ipo_win=[0.5, 0.7, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1]))
    assert any(s.startswith("IPO does not fall least") for s in falling_ipo.shortfalls)
    reversed_kl = check_criteria(_experiment(first_kls=[0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07]))
    assert any(s.startswith("KL order dpo/tiny") for s in reversed_kl.shortfalls)
