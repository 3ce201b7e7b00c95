"""Which evaluated policies a trial keeps (its best by win rate and its last, sweep/kept_models.py) and
how jobs/export.py names them, on a temporary storage (no Ray)."""

import json

import pytest

from overopt.storage import Storage


def _checkpoint(store: Storage, trial: str, step: int) -> None:
    store.write_text(f"checkpoints/{trial}/step_{step:06d}/model.safetensors", f"weights of step {step}")
    store.write_text(f"checkpoints/{trial}/step_{step:06d}/train_row.json", json.dumps({"step": step}))


def test_a_trial_keeps_its_best_and_its_last_evaluated_policy(tmp_path):
    from overopt.sweep.kept_models import keep_evaluated_checkpoint, kept_steps

    store = Storage(str(tmp_path / "exp"))
    trial = "alignment_trial_1_00000"

    def kept_dirs():
        return sorted(p.name for p in (tmp_path / f"exp/models/{trial}").iterdir() if p.is_dir())

    history = [(0, 0.50, [0]), (2, 0.58, [2]), (4, 0.61, [4]), (6, 0.61, [4, 6]), (8, float("nan"), [4, 8]), (10, 0.40, [4, 10])]
    for step, win_rate, expected in history:
        _checkpoint(store, trial, step)
        keep_evaluated_checkpoint(store, trial, step, {"step": step, "win_rate": win_rate})
        assert kept_dirs() == [f"step_{s:06d}" for s in expected], step
        assert not store.exists(f"checkpoints/{trial}/step_{step:06d}")
    assert kept_steps(store, trial) == {"best": {"step": 4, "win_rate": 0.61}, "last": {"step": 10, "win_rate": 0.40}}
    assert store.read_text(f"models/{trial}/step_000004/model.safetensors") == "weights of step 4"
    keep_evaluated_checkpoint(store, trial, 12, {"step": 12, "win_rate": 0.9})  # no checkpoint (evaluated before a restart)
    assert kept_steps(store, trial)["last"]["step"] == 10


def test_export_names_what_is_kept_when_asked_for_something_else(tmp_path):
    from overopt.export import ExportError, resolve_step
    from overopt.sweep.kept_models import keep_evaluated_checkpoint

    store = Storage(str(tmp_path / "exp"))
    for step, win_rate in ((0, 0.5), (3, 0.7), (6, 0.6)):
        _checkpoint(store, "t", step)
        keep_evaluated_checkpoint(store, "t", step, {"step": step, "win_rate": win_rate})
        store.write_text(f"rows/t/step_{step:06d}.json", json.dumps({"objective": "dpo", "beta": 0.1, "size": "tiny", "seed": 0}))
    assert (resolve_step(store, "t", "best"), resolve_step(store, "t", "last"), resolve_step(store, "t", "3")) == (3, 6, 3)
    with pytest.raises(ExportError, match=r"keeps steps \[3, 6\] \(best 3, last 6\), not '0'"):
        resolve_step(store, "t", "0")
    with pytest.raises(ExportError, match="t: dpo beta=0.1 tiny seed=0, best step 3, last step 6"):
        resolve_step(store, "other", "best")
