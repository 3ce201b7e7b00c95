"""DegradationStopper: stops on a real decline, not on judge noise; patience is counted in epochs."""

import numpy as np
import pytest

from overopt.metrics import win_rate
from overopt.schedule import evaluation_fractions

N_PROMPTS = 128  # a real-judge evaluation: 64-128 prompts
# The embedded schedule: 0, 1/32, 1/16, then every 1/8 to 1, then every half epoch to 2 (13 evaluations).
FRACTIONS = evaluation_fractions(2.0, [1 / 32, 1 / 16], 8, 0.5)


def _stopper(**kwargs):
    from overopt.sweep.stopper import DegradationStopper

    return DegradationStopper(**{"margin": 0.05, "patience_epochs": 0.25, **kwargs})


def _row(name, epoch, win, low=None, high=None, kl=1.0, step=None):
    row = {
        "trial_name": name,
        "epoch_fraction": epoch,
        "win_rate": win,
        "kl": kl,
        "step": step if step is not None else round(epoch * 64),
        "judged": N_PROMPTS,
    }
    if low is not None:
        row.update(win_rate_low=low, win_rate_high=high)
    return row


def _simulated_rows(name, true_win, rng):
    """One evaluation per scheduled fraction: N_PROMPTS Bernoulli judgements, Wilson interval."""
    for epoch in FRACTIONS:
        judged = win_rate(rng.random(N_PROMPTS) < true_win(epoch))
        yield _row(name, epoch, judged.rate, judged.low, judged.high)


def _run(stopper, rows):
    """Feed rows until the stopper says stop; return the epoch of the stop or None."""
    for row in rows:
        if stopper(row["trial_name"], row):
            return row["epoch_fraction"]
    return None


def test_noisy_flat_trajectories_are_not_stopped():
    rng = np.random.default_rng(0)
    stopper = _stopper()
    stops = [_run(stopper, _simulated_rows(f"flat{seed}", lambda e: 0.5, rng)) for seed in range(400)]
    stopped = [s for s in stops if s is not None]
    # Noise alone: 400 trials x 13 evaluations of 128 prompts (sd of one win rate ~0.044). About 0.3 %
    # of such trials stop (1 of 400 here); allow up to 1 %.
    assert len(stopped) <= 4, f"{len(stopped)} of 400 flat trials stopped on noise at epochs {stopped}"


def test_a_point_estimate_rule_would_stop_the_same_noise():
    """Why the intervals matter: 'below best - margin for 3 evaluations' stops many flat trials."""
    rng = np.random.default_rng(0)
    naive_stops = 0
    for _ in range(400):
        best, strikes = -1.0, 0
        for row in _simulated_rows("x", lambda e: 0.5, rng):
            best = max(best, row["win_rate"])
            strikes = strikes + 1 if row["win_rate"] < best - 0.05 else 0
            if strikes >= 3:
                naive_stops += 1
                break
    assert naive_stops > 40


def _decline(epoch):
    """0.5 -> 0.7 by 1/4 epoch, down to 0.4 by 3/4 epoch, then flat."""
    if epoch <= 0.25:
        return 0.5 + 0.2 * epoch / 0.25
    return max(0.4, 0.7 - 0.3 * (epoch - 0.25) / 0.5)


def test_a_real_decline_is_stopped_after_the_peak():
    rng = np.random.default_rng(1)
    stopper = _stopper()
    stops = [_run(stopper, _simulated_rows(f"decline{seed}", _decline, rng)) for seed in range(200)]
    stopped = [s for s in stops if s is not None]
    assert len(stopped) >= 190  # at least 95 %
    assert min(stopped) > 0.25  # never before the decline began
    assert np.median(stopped) <= 1.0  # and typically within the first epoch


def test_patience_is_measured_in_epochs_with_uneven_spacing():
    stopper = _stopper(patience_epochs=0.25)
    clear_drop = (0.30, 0.22, 0.38)  # far below the best's interval [0.62, 0.78]
    rows = [_row("t", 0.0, 0.50, 0.41, 0.59), _row("t", 1 / 64, 0.70, 0.62, 0.78)]
    # Three clearly-worse evaluations in quick succession span only 1/32 -> 1/8 = 0.09375 epochs: no stop.
    rows += [_row("t", e, *clear_drop) for e in (1 / 32, 1 / 16, 1 / 8)]
    assert not any(stopper("t", r) for r in rows)
    assert not stopper("t", _row("t", 2 / 8, *clear_drop))  # 0.21875 epochs since 1/32
    assert stopper("t", _row("t", 3 / 8, *clear_drop))  # 0.34375 >= 0.25: stop
    reason = stopper.reasons["t"]
    assert "0.300" in reason and "best 0.700" in reason and "since epoch 0.031" in reason

    # Widely spaced evaluations (every half epoch): two in a row are already 0.5 epochs apart.
    late = _stopper(patience_epochs=0.25)
    assert not late("u", _row("u", 1.0, 0.70, 0.62, 0.78))
    assert not late("u", _row("u", 1.5, *clear_drop))
    assert late("u", _row("u", 2.0, *clear_drop))

    # patience 0: the first clearly-worse evaluation stops.
    eager = _stopper(patience_epochs=0.0)
    assert not eager("v", _row("v", 0.0, 0.70, 0.62, 0.78))
    assert eager("v", _row("v", 0.125, *clear_drop))


def test_the_streak_needs_both_the_margin_and_separated_intervals_and_resets():
    stopper = _stopper(patience_epochs=0.2)
    assert not stopper("a", _row("a", 0.0, 0.70, 0.62, 0.78))
    # 0.60 is 0.10 below the best (more than the margin) but its interval [0.51, 0.68] overlaps: not worse.
    assert not stopper("a", _row("a", 0.125, 0.60, 0.51, 0.68))
    assert "a" not in stopper.streak_start
    # Separated intervals but within the margin (a tiny interval, e.g. many prompts): not worse either.
    assert not stopper("a", _row("a", 0.25, 0.67, 0.665, 0.675))
    assert "a" not in stopper.streak_start
    # Clearly worse, then a recovery that overlaps the best again: the streak restarts.
    assert not stopper("a", _row("a", 0.375, 0.40, 0.32, 0.49))
    assert stopper.streak_start["a"].epoch == 0.375
    assert not stopper("a", _row("a", 0.5, 0.66, 0.58, 0.74))
    assert "a" not in stopper.streak_start
    assert not stopper("a", _row("a", 0.625, 0.40, 0.32, 0.49))
    assert stopper("a", _row("a", 0.875, 0.40, 0.32, 0.49))  # 0.25 >= 0.2 epochs since 0.625
    # A new best resets the reference the intervals are compared with.
    rising = _stopper(patience_epochs=0.0)
    for epoch, win in ((0.0, 0.5), (0.1, 0.6), (0.2, 0.7), (0.3, 0.8)):
        assert not rising("b", _row("b", epoch, win, win - 0.08, win + 0.08))
    assert rising.best["b"].win_rate == 0.8


def test_rows_without_an_interval_use_the_point_value():
    stopper = _stopper(patience_epochs=0.0)
    assert not stopper("p", _row("p", 0.0, 0.70))
    assert stopper("p", _row("p", 0.125, 0.60))  # 0.10 below, zero-width intervals separate


def test_kl_budget_rows_without_evidence_and_bad_arguments():
    from overopt.sweep.stopper import DegradationStopper

    stopper = _stopper(kl_budget=5.0)
    assert not stopper("k", _row("k", 0.5, 0.7, 0.6, 0.8, kl=4.0))
    assert stopper("k", _row("k", 0.625, 0.7, 0.6, 0.8, kl=6.0, step=40))
    assert stopper.reasons == {"k": "kl budget: KL 6.00 > 5.0"}
    assert not stopper("x", {"loss": 1.0})  # no win rate: no evidence
    assert not stopper("y", {"trial_name": "y", "win_rate": float("nan"), "epoch_fraction": 0.5})
    assert stopper("z", {"trial_name": "z", "win_rate": float("nan"), "kl": 9.0})  # KL still counts
    assert not stopper.stop_all()
    with pytest.raises(ValueError, match="epoch_fraction"):
        stopper("e", {"trial_name": "e", "win_rate": 0.5})
    for bad in ({"margin": -1}, {"patience_epochs": -0.1}, {"kl_budget": 0.0}):
        with pytest.raises(ValueError):
            DegradationStopper(**{"margin": 0.05, "patience_epochs": 0.25, **bad})


def test_a_resumed_trial_continues_from_its_stored_history():
    """After the sweep's driver died, a resumed trial's earlier rows are not reported to Tune again:
    the stopper reads them back (history) and decides as if it had seen them."""
    earlier = [_row("t", 0.0, 0.50, 0.41, 0.59), _row("t", 0.25, 0.70, 0.62, 0.78), _row("t", 0.5, 0.30, 0.22, 0.38)]
    later = _row("t", 0.75, 0.30, 0.22, 0.38)  # still clearly below the best, for 0.25 epochs now
    uninterrupted = _stopper()
    assert [uninterrupted("id", row) for row in earlier + [later]] == [False, False, False, True]
    asked = []
    resumed = _stopper(history=lambda name: asked.append(name) or earlier + [later])  # a row at or after `later` is ignored
    assert resumed("id", later) is True and asked == ["t"]
    assert resumed.reasons["t"] == uninterrupted.reasons["t"]
    forgetful = _stopper()  # without the history the resumed trial would run on
    assert forgetful("id", later) is False
