"""The sweep's progress line: one line per evaluation, with the proxy's win rate when the row has one."""

from types import SimpleNamespace

from overopt.sweep.progress import SweepProgress


def test_an_evaluation_line_shows_kl_win_proxy_and_length(capsys):
    progress = SweepProgress(total_trials=2, evaluations_per_trial=3)
    row = {
        "objective": "dpo",
        "beta": 0.1,
        "size": "tiny",
        "seed": 0,
        "epoch_fraction": 0.5,
        "kl": 1.234,
        "win_rate": 0.61,
        "mean_length": 4.86,
    }
    progress.on_trial_result(0, [], SimpleNamespace(trial_id="a"), {**row, "proxy_win_rate": 0.8512})
    progress.on_trial_result(0, [], SimpleNamespace(trial_id="b"), {**row, "proxy_win_rate": float("nan")})  # real pairs, no proxy
    with_proxy, without = capsys.readouterr().out.splitlines()
    assert with_proxy.startswith("[dpo beta=0.1 tiny seed=0] epoch 0.500: KL 1.23 win 0.610 proxy 0.851 len 4.9  || trials 0 done")
    assert without.startswith("[dpo beta=0.1 tiny seed=0] epoch 0.500: KL 1.23 win 0.610 len 4.9  || ")
