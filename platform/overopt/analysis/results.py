"""An experiment's evaluation rows, read from its storage location (a local path or a URI).

    frame = load_results("runs/embedded-3f2a1b")              # or "s3://bucket/overopt/embedded-3f2a1b"

Layout written by the sweep (sweep/run.py, train/worker.py), one small file per fact, so that object
stores (no append) and crashes (no half-written line) are both fine:
    rows/<trial>/step_XXXXXX.json   one evaluation row; a re-run of a step replaces its file
    stops/<trial>.json              the trial driver's stop decision: the row it was based on (step), the
                                    reason, and where training ended (trained_steps)
    errors/<trial>.json             the last error of a failed trial
    results.parquet                 all rows with their stop reasons: written atomically, marks a finished sweep

``collect_results`` rebuilds the table from rows/ (an interrupted sweep has no results.parquet yet);
``load_results`` prefers results.parquet unless rows/ holds rows newer than it. No Ray here.
"""

from __future__ import annotations

import json

import pandas as pd

from overopt.storage import Storage

RESULT_COLUMNS_FIRST = ["objective", "beta", "size", "seed", "step", "epoch_fraction", "samples_seen", "kl", "kl_se", "d", "win_rate"]


def _trial_files(store: Storage, folder: str) -> dict[str, dict]:
    return {path.rsplit("/", 1)[1][: -len(".json")]: json.loads(store.read_text(path)) for path in store.list(folder, ".json")}


def stop_reason(trial_rows: pd.DataFrame, stop: dict | None, error: dict | None) -> str:
    """What ended a trial, read from what was recorded: its stop record (written by its trial driver
    when it decided the stop), its error, or, with neither, completed or unfinished by its last row."""
    if stop is not None:
        return stop["reason"]
    if error is not None:
        return f"error: {error['message']}"
    last = trial_rows.iloc[trial_rows["step"].argmax()]  # the first row of the largest step, as idxmax
    planned_steps = last.get("planned_steps")
    if planned_steps is not None and pd.notna(planned_steps):  # the training loop's own count: no rounding to undo
        return "completed" if last["step"] >= planned_steps else "unfinished"
    planned = last.get("planned_epochs")
    if planned is not None and pd.notna(planned) and last["epoch_fraction"] < float(planned) - 1e-9:
        return "unfinished"
    return "completed"


def collect_results(store: Storage, experiment: str = "") -> pd.DataFrame:
    """Every evaluation row of the experiment at ``experiment`` (relative to ``store``), with stop reasons."""
    prefix = f"{experiment}/" if experiment else ""
    rows = [json.loads(store.read_text(path)) for path in store.list(f"{prefix}rows", ".json", recursive=True)]
    if not rows:
        raise RuntimeError(f"{store.uri(prefix + 'rows')} holds no evaluation rows: no trial reported an evaluation")
    frame = pd.DataFrame(rows).drop_duplicates(["trial_name", "step"], keep="last")
    stops, errors = _trial_files(store, f"{prefix}stops"), _trial_files(store, f"{prefix}errors")
    reasons = {name: stop_reason(trial, stops.get(str(name)), errors.get(str(name))) for name, trial in frame.groupby("trial_name")}
    frame["stop_reason"] = frame["trial_name"].map(reasons)
    # Where a stopped trial's training ended, and the evaluation its stop was decided on (NaN: not stopped).
    frame["stopped_at_step"] = frame["trial_name"].map({name: stop["step"] for name, stop in stops.items()})
    frame["trained_steps"] = frame["trial_name"].map({name: stop.get("trained_steps") for name, stop in stops.items()})
    first = [c for c in RESULT_COLUMNS_FIRST if c in frame.columns]
    frame = frame[first + [c for c in frame.columns if c not in first]]
    return frame.sort_values(["size", "objective", "beta", "seed", "step"]).reset_index(drop=True)


class NotAnExperiment(FileNotFoundError):
    """A location that jobs/scale_sweep.py did not write (nothing there is read further)."""


def load_results(location: str) -> pd.DataFrame:
    """The experiment at ``location``: results.parquet when it holds every row, else rebuilt from rows/."""
    store = Storage(location)
    if not (store.exists("rows") or store.exists("results.parquet")):
        raise NotAnExperiment(
            f"{location!r} is not an overopt experiment (neither rows/ nor results.parquet): "
            "pass the <storage>/<name>-<hash> directory that jobs/scale_sweep.py printed"
        )
    if store.exists("results.parquet"):
        results = store.read_parquet("results.parquet").to_pandas()
        on_disk = len(store.list("rows", ".json", recursive=True))
        if on_disk <= len(results):
            return results
    return collect_results(store)
