"""The sweep end to end: stages per size -> Ray Tune over objective x beta x size x seed -> results.

    python jobs/scale_sweep.py --config configs/embedded.yaml [--set key=value ...]

The experiment directory is ``<output_dir>/<name>-<config hash>``: the same config always maps to
the same directory, so re-running a finished sweep only redoes the analysis and an interrupted one
restarts its unfinished and failed trials from step 0 (``Tuner.restore``). It holds config.yaml (resolved), rows/ (one JSONL
per trial, written as evaluations happen), stops.jsonl, results.parquet and the report.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import ray
from ray import tune

from overopt.config import ExperimentConfig
from overopt.evaluate.schedule import evaluation_fractions
from overopt.sweep.progress import SweepProgress
from overopt.sweep.stages import content_key, prepare_size
from overopt.sweep.stopper import DegradationStopper
from overopt.sweep.trial import alignment_trial

RESULT_COLUMNS_FIRST = ["objective", "beta", "size", "seed", "step", "epoch_fraction", "samples_seen", "kl", "kl_se", "d", "win_rate"]


def experiment_directory(cfg: ExperimentConfig) -> Path:
    return Path(cfg.output_dir).resolve() / f"{cfg.name}-{content_key(cfg.model_dump(mode='json'))}"


def planned_trials(cfg: ExperimentConfig) -> list[dict]:
    """Every (objective, beta, size, seed) the config asks for, smallest size first."""
    trials = []
    for size in cfg.models.sizes:
        for objective in cfg.sweep.size_objectives.get(size, cfg.train.objectives):
            for beta in cfg.train.betas[objective]:
                for seed in cfg.sweep.seeds:
                    trials.append({"objective": objective, "beta": beta, "size": size, "seed": seed})
    return trials


def start_ray(cfg: ExperimentConfig, log=print) -> None:
    """Connect to a cluster (RAY_ADDRESS, as under `ray job submit`) or start a local instance."""
    env_vars = {
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(".torch_extensions").resolve())),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    }
    if not cfg.train.use_gpu:
        env_vars["DS_ACCELERATOR"] = "cpu"  # skip DeepSpeed's accelerator probing on CPU workers
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env={"env_vars": env_vars}, log_to_driver=True)
        log(f"connected to the Ray cluster at {os.environ['RAY_ADDRESS']}")
        return
    # Local: a trial holds 1 CPU for its driver and 1 per Train worker, and its 2 evaluation tasks ask
    # for 1 CPU each while the workers wait for them. Declare enough *logical* CPUs for that (Ray does
    # not pin processes to cores), so a 2-core laptop runs the resource requests a cluster would.
    needed = max(cfg.sweep.max_concurrent_trials * (1 + cfg.train.num_workers + 2), cfg.sft.cpus_per_worker)
    num_cpus = max(os.cpu_count() or 1, needed)
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", runtime_env={"env_vars": env_vars}, log_to_driver=True)
    log(f"started a local Ray instance ({num_cpus} logical CPUs on {os.cpu_count()} cores)")


def run_sweep(cfg: ExperimentConfig, log=print) -> Path:
    """Run (or resume) the sweep described by ``cfg``; returns the experiment directory."""
    experiment = experiment_directory(cfg)
    rows_dir = experiment / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(experiment / "config.yaml")
    log(f"experiment directory: {experiment}")
    if (experiment / "results.parquet").exists():
        log("this exact config has already been swept: reusing its results")
        return experiment

    started = time.time()
    start_ray(cfg, log)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per dataset execution is noise here
    ray_storage = str(experiment / "ray")

    log("preparing reference models, preference pairs and eval sets")
    sizes = {size: asdict(prepare_size(cfg, size, ray_storage, log)) for size in cfg.models.sizes}
    fractions = evaluation_fractions(
        cfg.train.epochs, cfg.evaluation.early_fractions, cfg.evaluation.fractions_per_epoch_1, cfg.evaluation.fractions_after_epoch_1
    )
    settings = {
        "sizes": sizes,
        "train": {**cfg.train.model_dump(), "eval_fractions": fractions},
        "eval_settings": {
            "backend": cfg.evaluation.backend,
            "judge": cfg.evaluation.judge,
            "max_new_tokens": cfg.evaluation.max_new_tokens,
            "temperature": cfg.evaluation.temperature,
            "batch_size": cfg.evaluation.batch_size,
            "use_gpu": cfg.train.use_gpu,
            "task": asdict(cfg.task),
        },
        "rows_dir": str(rows_dir),
        "collective_timeout_s": 4 * 3600,
        "train_storage": ray_storage,
    }
    trials = planned_trials(cfg)
    log(f"stages ready in {time.time() - started:.0f} s; sweeping {len(trials)} trials x {len(fractions)} evaluations")

    stopper = DegradationStopper(cfg.sweep.stopper.margin, cfg.sweep.stopper.patience, cfg.sweep.stopper.kl_budget, experiment / "stops.jsonl")
    progress = SweepProgress(len(trials), len(fractions), stopper)
    trainable = tune.with_resources(tune.with_parameters(alignment_trial, settings=settings), {"cpu": 1})
    tune_dir = experiment / "tune"
    if tune.Tuner.can_restore(str(tune_dir)):
        log("resuming the unfinished sweep in this directory")
        tuner = tune.Tuner.restore(str(tune_dir), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(trials)},
            tune_config=tune.TuneConfig(max_concurrent_trials=cfg.sweep.max_concurrent_trials),
            run_config=tune.RunConfig(
                name=tune_dir.name, storage_path=str(experiment), stop=stopper, callbacks=[progress], verbose=0
            ),
        )
    grid = tuner.fit()
    errors = {(r.metrics or {}).get("trial_name") or Path(r.path).name: str(r.error).strip().splitlines()[-1] for r in grid if r.error}
    if errors:
        log(f"{len(errors)} trial(s) FAILED (their logs are under {tune_dir}):")
        for name, message in errors.items():
            log(f"  {name}: {message}")
    results = collect_results(experiment, errors)
    # results.parquet marks a finished sweep; with failures the rows go to results.partial.parquet and
    # a rerun of the same command resumes the failed trials (Tuner.restore(resume_errored=True)).
    results.to_parquet(experiment / ("results.partial.parquet" if errors else "results.parquet"), index=False)
    log(f"sweep finished in {time.time() - started:.0f} s: {len(results)} evaluations of {results['trial_name'].nunique()} trials")
    if errors:
        raise SweepFailed(f"{len(errors)} of {len(trials)} trials failed; rerun the same command to retry them")
    return experiment


class SweepFailed(RuntimeError):
    """Some trials failed; what the others evaluated is kept (rows/, results.partial.parquet)."""


def collect_results(experiment: Path, errors: dict[str, str] | None = None) -> pd.DataFrame:
    """All evaluation rows of the experiment, one per row, with each trial's stop reason."""
    rows = []
    for path in sorted((experiment / "rows").glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise RuntimeError(f"{experiment / 'rows'} holds no evaluation rows: no trial reported an evaluation")
    frame = pd.DataFrame(rows)
    steps = frame.groupby("trial_name")["step"].apply(sorted).to_dict()
    stops = {}
    if (experiment / "stops.jsonl").exists():
        for line in (experiment / "stops.jsonl").read_text().splitlines():
            stop = json.loads(line)
            trial_steps = steps.get(stop["trial_name"], [])
            # The stop ended these rows if at most one evaluation came after it (the one already in
            # flight when Tune stopped the trial); more means a restored trial ran again since.
            if stop["step"] in trial_steps and len(trial_steps) - trial_steps.index(stop["step"]) <= 2:
                stops[stop["trial_name"]] = stop["reason"]
    errors = errors or {}
    frame["stop_reason"] = [stops.get(t) or (f"error: {errors[t]}" if t in errors else "completed") for t in frame["trial_name"]]
    first = [c for c in RESULT_COLUMNS_FIRST if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]].sort_values(["size", "objective", "beta", "seed", "step"])
