"""Which policies a sweep keeps: per trial, the checkpoint of its best evaluation (by win rate) and of its last.

The trial driver (sweep/trial.py) calls ``keep_evaluated_checkpoint`` once each handed-over checkpoint
(checkpoints/<trial>/step_X, a consolidated Hugging Face directory in the training dtype) has its row:
it moves to models/<trial>/step_X, and every kept step that is now neither the best nor the last is
deleted, so a trial holds at most two. ``models/<trial>/kept.json`` says which is which:

    {"best": {"step": 6, "win_rate": 0.61}, "last": {"step": 12, "win_rate": 0.55}}

The best is the first evaluation with the highest win rate (a later tie does not replace it); rows
arrive in step order, so the last is the latest evaluated. jobs/export.py turns a kept step into a
``save_pretrained`` directory with a model card:

    python jobs/export.py runs/smoke-<hash> --trial <trial name> --step best --out exported/
"""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow.fs as pafs

from overopt.storage import Storage

KEPT_FILE = "kept.json"  # in models/<trial>/: the best and the last step


def models_folder(trial: str) -> str:
    return f"models/{trial}"


def step_folder(trial: str, step: int) -> str:
    return f"{models_folder(trial)}/step_{step:06d}"


def kept_steps(experiment: Storage, trial: str) -> dict[str, dict[str, Any]]:
    """{"best": {...}, "last": {...}} of ``trial`` ({} before its first evaluation)."""
    path = f"{models_folder(trial)}/{KEPT_FILE}"
    return json.loads(experiment.read_text(path)) if experiment.exists(path) else {}


def _win_rate(entry: dict[str, Any]) -> float | None:
    value = entry.get("win_rate")
    return None if value is None or math.isnan(float(value)) else float(value)


def _better(row: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Whether ``row`` replaces ``best``: a higher win rate (one without a win rate never replaces one with)."""
    if best is None:
        return True
    new, old = _win_rate(row), _win_rate(best)
    return new is not None and (old is None or new > old)


def _move_dir(experiment: Storage, source: str, target: str) -> None:
    experiment.delete_dir(target)  # a restarted trial evaluated this step before: the new copy wins
    if experiment.local:
        experiment.makedirs(target.rsplit("/", 1)[0])
        experiment.fs.move(experiment.path(source), experiment.path(target))  # a rename
        return
    # Object stores have no directory rename: copy, then delete.
    pafs.copy_files(experiment.path(source), experiment.path(target), source_filesystem=experiment.fs, destination_filesystem=experiment.fs)
    experiment.delete_dir(source)


def keep_evaluated_checkpoint(experiment: Storage, trial: str, step: int, row: dict[str, Any]) -> None:
    """Move the evaluated checkpoint of ``step`` (its row: ``row``) into models/<trial>/ and delete the
    kept steps that are neither the best nor the last any more. A checkpoint no longer in storage
    (evaluated before a restart) leaves what is kept as it is."""
    source = f"checkpoints/{trial}/step_{step:06d}"
    if not experiment.exists(source):
        return
    kept = kept_steps(experiment, trial)
    _move_dir(experiment, source, step_folder(trial, step))
    entry = {"step": step, "win_rate": _win_rate(row)}
    kept = {"best": entry if _better(row, kept.get("best")) else kept["best"], "last": entry}
    experiment.write_text(
        f"{models_folder(trial)}/{KEPT_FILE}", json.dumps(kept)
    )  # before deleting: a crash leaves extra steps, never too few
    keep = {step_folder(trial, kept[which]["step"]) for which in ("best", "last")}
    for info in experiment.fs.get_file_info(pafs.FileSelector(experiment.path(models_folder(trial)))):
        relative = f"{models_folder(trial)}/{info.base_name}"
        if info.type == pafs.FileType.Directory and info.base_name.startswith("step_") and relative not in keep:
            experiment.delete_dir(relative)
