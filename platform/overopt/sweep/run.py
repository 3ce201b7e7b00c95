"""The sweep end to end: stages per size -> Ray Tune over objective x beta x size x seed -> results.

    python jobs/scale_sweep.py --config configs/embedded.yaml [--set key=value ...]
    python jobs/scale_sweep.py --config configs/embedded.yaml --set storage=s3://bucket/overopt

Everything goes to the ``storage`` location (a local path or a pyarrow filesystem URI): stage caches
under ``cache/``, and the experiment ``<name>-<hash of what changes results>/``: config.yaml (resolved),
rows/ and audit/ (one file per evaluation, written as evaluations happen), stops/, errors/,
Tune's and Ray Train's own files (tune/, ray/), logs/ (what Ray, Tune and DeepSpeed print, and every
worker's output: sweep/console.py), results.parquet (written atomically: it marks a finished sweep) and
the report. The same config always maps to the same experiment, so re-running a
finished sweep only redoes the analysis and an interrupted one restarts its unfinished and failed
trials from step 0 (``Tuner.restore``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pyarrow as pa
import ray
import yaml
from ray import tune

from overopt.analysis.results import collect_results
from overopt.config import ConfigError, ExperimentConfig
from overopt.evaluate.proxy import proxy_spec
from overopt.paths import resolve_paths
from overopt.storage import Storage, is_uri
from overopt.sweep.capacity import fit_to_cluster
from overopt.sweep.console import RunLogs, tune_verbosity
from overopt.sweep.failures import failure_cause, trial_name_of
from overopt.sweep.progress import SweepProgress
from overopt.sweep.resume import NOT_IN_EXPERIMENT_HASH, invocation_record, refusal_message, resume_differences
from overopt.sweep.stage_keys import content_key
from overopt.sweep.stages import prepare_size
from overopt.sweep.stopper import DegradationStopper
from overopt.sweep.tracking import tracking_callbacks
from overopt.sweep.trial import SweepSettings, alignment_trial, trial_resources
from overopt.trial_plan import planned_fractions, planned_trials, resources_per_trial


def experiment_name(cfg: ExperimentConfig) -> str:
    return f"{cfg.name}-{content_key(cfg.model_dump(mode='json', exclude=NOT_IN_EXPERIMENT_HASH))}"


def open_storage(cfg: ExperimentConfig) -> Storage:
    """The run's storage; a relative path under `ray job submit` is refused (the job's working
    directory is a temporary copy that no other node sees and Ray deletes)."""
    if not is_uri(cfg.storage) and not os.path.isabs(os.path.expanduser(cfg.storage)) and "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        raise ValueError(
            f"storage {cfg.storage!r} is a relative path, and this is a Ray job whose working directory is a temporary "
            "copy: pass --set storage=/shared/absolute/path or a URI (s3://..., gs://...)"
        )
    return Storage(cfg.storage)


def experiment_location(cfg: ExperimentConfig) -> str:
    return open_storage(cfg).uri(experiment_name(cfg))


def start_ray(cfg: ExperimentConfig, log=print) -> None:
    """Connect to a cluster (RAY_ADDRESS, as under `ray job submit`) or start a local instance."""
    env_vars = {
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(".torch_extensions").resolve())),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        # Ray Train's controller polls its workers every 2 s by default, so every fit() (one per trial and
        # stage) idles up to that long at each transition; 0.2 s took 5-9 s off each fit on 2 cores
        # (docs/benchmarks.md). The polls are a few small remote calls.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"),
        # Ray Data's progress bars (and, without a terminal, their logged form: logging_progress.py blocks)
        # in every process: the trial drivers' and tasks' evaluations as well as this driver's stages.
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    }
    if not cfg.train.use_gpu:
        env_vars["DS_ACCELERATOR"] = "cpu"  # skip DeepSpeed's accelerator probing on CPU workers
    if ray.is_initialized():
        return
    # log_to_driver: every worker's stdout and stderr, on every node, reaches this driver, which writes
    # them to the run's logs/ (and prints them only with --verbose): sweep/console.py.
    if os.environ.get("RAY_ADDRESS"):
        # Under `ray job submit` Ray merges these env_vars into the job's runtime env (its working_dir stays).
        context = ray.init(runtime_env={"env_vars": env_vars}, log_to_driver=True)
        log(f"connected to the Ray cluster at {os.environ['RAY_ADDRESS']}{_dashboard(context)}")
        place_ray_data_actors_on_this_node(log)
        return
    # Local: a trial holds 1 CPU for its driver, its evaluation tasks' CPUs and its Train workers' CPUs
    # (overopt/trial_plan.py resources_per_trial). Declare enough *logical* CPUs for that (Ray does not pin
    # processes to cores), so a 2-core laptop runs the resource requests a cluster would.
    per_trial = resources_per_trial(cfg)["CPU"]
    needed = max(int(cfg.sweep.max_concurrent_trials * per_trial + 0.999), cfg.sft.cpus_per_worker)
    num_cpus = max(os.cpu_count() or 1, needed)
    # Ray kills idle worker processes once more workers than the number of CPUs exist, and a trial's
    # actors alone (its driver, Ray Train's controller and workers, the checkpoint hand-over) are that many: every
    # evaluation then started its scoring tasks in fresh processes that import torch and transformers
    # again (~7-9 s instead of ~1.5 s). Keeping idle workers saved 8.5 s per trial (docs/benchmarks.md).
    # Given to this instance only (not os.environ, which every process started from here would inherit);
    # a RAY_num_workers_soft_limit already in the environment wins.
    system_config = {} if "RAY_num_workers_soft_limit" in os.environ else {"num_workers_soft_limit": 4 * num_cpus}
    context = ray.init(
        address="local",  # a new instance, even when a `ray start` cluster runs on this machine (RAY_ADDRESS picks that one)
        _system_config=system_config,
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        # Every trial here was checked to fit (sweep/capacity.py): a Ray Train worker group that is slow to start is
        # starting (its workers importing torch, transformers and DeepSpeed on busy cores), not waiting for
        # resources. Ray Train's 60 s default then fails it and starts it again, in a loop, on a loaded 2-core
        # machine; a value already in the environment wins.
        runtime_env={
            "env_vars": {
                "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600"),
                # Ray Train starts a preemption watcher actor per fit (per trial and stage) that polls Ray Core for
                # nodes being drained; one machine is never drained, and the actor's process cost ~5 s of each
                # fit here (docs/benchmarks.md). Clusters keep it; a value already in the environment wins.
                "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
                **env_vars,
            }
        },
        log_to_driver=True,
    )
    log(f"started a local Ray instance ({num_cpus} logical CPUs on {os.cpu_count()} cores{_dashboard(context)})")
    gpus_needed, gpus_here = resources_per_trial(cfg).get("GPU", 0), ray.cluster_resources().get("GPU", 0)
    if gpus_needed > gpus_here:
        # A local instance never grows: a trial that cannot fit would wait forever.
        ray.shutdown()
        raise ConfigError(
            f"one trial needs {gpus_needed:g} GPUs (train.use_gpu, evaluation.gpus_per_task) but this machine has {gpus_here:g}; "
            "set evaluation.gpus_per_task: 0 and train.use_gpu: false, or connect to a cluster (RAY_ADDRESS)"
        )


def place_ray_data_actors_on_this_node(log=print) -> None:
    """Create Ray Data's cluster-wide bookkeeping actors from this driver, so that they live on its node.

    Ray Data keeps a few named, detached actors per cluster (dataset stats, usage, actor locations, the
    autoscaling requester and coordinator) and creates each on the node of the first process that needs
    it. In a sweep that process is a trial on a worker node, whose dataset pipelines (training shards,
    evaluations) are the first on the cluster when the stages come from the cache. A detached actor lives
    as long as the cluster, and a node with a live actor is never idle: the autoscaler would keep that
    worker node, and pay for it, after the sweep has ended. Created here first, they stay on the driver's
    node (the head, under ``ray job submit``). They are Ray Data internals: if a Ray version renames them,
    the sweep runs as before and says so.
    """
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import get_or_create_autoscaling_coordinator
        from ray.data._internal.execution.autoscaling_requester import get_or_create_autoscaling_requester_actor
        from ray.data._internal.execution.node_trackers.actor_location import get_or_create_actor_location_tracker
        from ray.data._internal.stats import get_or_create_stats_actor
        from ray.data._internal.stats_summary_actor import _get_or_create_stats_summary_actor
        from ray.data._internal.usage.actor import get_or_create_usage_collection_actor

        for create in (
            get_or_create_stats_actor,
            get_or_create_usage_collection_actor,
            _get_or_create_stats_summary_actor,
            get_or_create_actor_location_tracker,
            get_or_create_autoscaling_requester_actor,
            get_or_create_autoscaling_coordinator,
        ):
            create()
    except (ImportError, AttributeError) as error:
        log(
            f"could not place Ray Data's bookkeeping actors on this node ({type(error).__name__}: {error}): an autoscaler "
            "may keep a worker node that hosts one of them after the sweep"
        )


def _dashboard(context) -> str:
    """Where ray.init says its dashboard is (its own line goes to the run's driver.log)."""
    url = getattr(context, "dashboard_url", None)  # host:port; empty without a dashboard
    return f"; dashboard {url if '://' in url else 'http://' + url}" if url else ""


def check_storage(cfg: ExperimentConfig, store: Storage) -> None:
    """Before anything starts: the storage takes a file, and (local disks) has room for the checkpoints
    the plan says the sweep may hold at once (checkpoint_storage.checkpoint_storage_bytes)."""
    from overopt.checkpoint_storage import storage_problem

    probe = f".write-probe-{os.getpid()}"  # at the storage root: a refused sweep leaves no experiment behind
    try:
        store.write_text(probe, "overopt")
        store.fs.delete_file(store.path(probe))
    except OSError as error:
        raise ConfigError(
            f"storage {cfg.storage!r} is not writable ({type(error).__name__}: {error}): set storage to a writable path or URI"
        ) from None
    problem = storage_problem(cfg, store.free_bytes())
    if problem:
        raise ConfigError(problem)


def check_experiment_directory(cfg: ExperimentConfig, store: Storage, experiment: str) -> None:
    """A sweep resumes whatever its experiment directory holds (``Tuner.restore`` unpickles Tune's
    state there): refuse, before writing or unpickling anything, a directory that holds files but is not
    an overopt experiment of this very config (no config.yaml, or one of another config)."""
    if not store.list(experiment, recursive=True):
        return  # new, or empty
    where = store.uri(experiment)
    if not store.exists(f"{experiment}/config.yaml"):
        raise ConfigError(
            f"{where} holds files but no config.yaml: it is not an overopt experiment, so nothing there is "
            "resumed or overwritten; move it away or choose another storage or name"
        )
    text = store.read_text(f"{experiment}/config.yaml")
    try:
        stored = ExperimentConfig.model_validate(yaml.safe_load(text) or {})
    except (yaml.YAMLError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise ConfigError(f"{where}/config.yaml is not an overopt config ({first}): nothing there is resumed or overwritten") from None
    if experiment_name(stored) != experiment.rsplit("/", 1)[-1]:
        raise ConfigError(
            f"{where}/config.yaml describes another experiment ({experiment_name(stored)}): nothing there is resumed or overwritten"
        )


def run_sweep(cfg: ExperimentConfig, log=print, invocation: dict | None = None, verbose: bool = False) -> str:
    """Run (or resume) the sweep described by ``cfg``; returns the experiment's location (path or URI).

    ``invocation``: what the command line said (config file, overrides), kept in the experiment's
    record of this run (sweep/resume.py). ``verbose``: what Ray, Tune, DeepSpeed and the workers print
    reaches the console too, not only the run's logs/ (sweep/console.py)."""
    cfg = resolve_paths(cfg)  # relative paths against this directory, before any reaches a worker (idempotent)
    store = open_storage(cfg)
    experiment = experiment_name(cfg)
    check_storage(cfg, store)
    check_experiment_directory(cfg, store, experiment)
    log(f"experiment: {store.uri(experiment)}")
    finished = store.exists(f"{experiment}/results.parquet")
    restorable = tune.Tuner.can_restore(store.path(f"{experiment}/tune"), storage_filesystem=store.fs)
    applied: dict = {}
    if store.exists(f"{experiment}/config.yaml"):  # written by the first run, never changed after it
        first_run = ExperimentConfig.model_validate(yaml.safe_load(store.read_text(f"{experiment}/config.yaml")))
        refused, applied = resume_differences(first_run, cfg)
        if refused and restorable and not finished:
            raise ConfigError(refusal_message(store.uri(experiment), refused))
        if refused:  # nothing of the first run's Tune state is restored: they apply as well
            applied = {**applied, **refused}
    else:
        store.write_text(f"{experiment}/config.yaml", cfg.to_yaml())
    action = "results reused" if finished else "resumed" if restorable else "new"
    record_name, record = invocation_record(action, {} if finished else applied, invocation)
    store.write_text(f"{experiment}/invocations/{record_name}", record)
    if finished:
        log("this exact config has already been swept: reusing its results")
        return store.uri(experiment)
    for key, (first, now) in applied.items():
        log(f"  {key}: {now!r} (the first run had {first!r}); recorded in invocations/{record_name}")
    owns_ray = not ray.is_initialized()  # a caller's Ray (tests, notebooks) stays up
    # The run's logs are named like its record under invocations/.
    with RunLogs(store, f"{experiment}/logs/{record_name.removesuffix('.json')}", verbose) as logs:
        log(logs.describe())
        try:
            return _sweep(cfg, store, experiment, restorable, logs, log)
        finally:
            if owns_ray and ray.is_initialized():
                # Here rather than at exit: the last lines of exiting workers still go to the logs, not
                # to the console of the analysis that follows, which also gets the CPUs back.
                ray.shutdown()


def _sweep(cfg: ExperimentConfig, store: Storage, experiment: str, restorable: bool, logs: RunLogs, log) -> str:
    """run_sweep from starting Ray on, with this process's and the workers' output going to ``logs``."""
    started = time.time()
    start_ray(cfg, log)
    logs.capture_workers()  # after ray.init, which sets up how worker output reaches this driver
    concurrency = fit_to_cluster(cfg, log)  # nothing that can never be placed waits in silence (sweep/capacity.py)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per dataset execution is noise here
    ray_storage = store.uri(f"{experiment}/ray")  # Ray Train's own files (checkpoints)

    log("preparing reference models, preference pairs and eval sets")
    prepared = {size: prepare_size(cfg, size, store, ray_storage, log) for size in cfg.models.sizes}
    # What each stage read, kept and skipped: the report's "Data" section (skips are never silent).
    store.write_text(
        f"{experiment}/data_summary.json", json.dumps({size: stats for size, (_, stats) in prepared.items()}, indent=2, default=str)
    )
    settings = SweepSettings(
        train=cfg.train,
        evaluation=cfg.evaluation,
        load_options=cfg.models,
        synthetic_task=cfg.data.synthetic.task if cfg.evaluation.judge.type == "gold" else None,
        proxy=proxy_spec(cfg),
        eval_fractions=planned_fractions(cfg),
        sizes={size: data for size, (data, _) in prepared.items()},
        experiment=store.uri(experiment),
        train_storage=ray_storage,
        experiment_seed=cfg.seed,
        stopper=cfg.sweep.stopper,
        reference_mode=cfg.reference.mode,
        checkpointing=cfg.checkpointing,
    )
    fractions = settings.eval_fractions
    trials = planned_trials(cfg)
    log(f"stages ready in {time.time() - started:.0f} s; sweeping {len(trials)} trials x {len(fractions)} evaluations")

    def stored_rows(trial_name: str) -> list[dict]:  # what a resumed trial reported before the restart
        return [json.loads(store.read_text(path)) for path in store.list(f"{experiment}/rows/{trial_name}", ".json")]

    # The trial drivers decide, enact and record their stops (sweep/trial.py); Tune's stopper applies the
    # same rule to the same rows as the cluster-wide backstop, and the progress line reads its reasons.
    stopper = DegradationStopper(
        cfg.sweep.stopper.margin, cfg.sweep.stopper.patience_epochs, cfg.sweep.stopper.kl_budget, history=stored_rows
    )
    progress = SweepProgress(len(trials), len(fractions), stopper)
    # Each trial reserves its driver and its evaluations' resources up front (sweep/trial.py).
    trainable = tune.with_resources(
        tune.with_parameters(alignment_trial, settings=settings), tune.PlacementGroupFactory(trial_resources(settings))
    )
    tune_location = store.uri(f"{experiment}/tune")
    if restorable:
        log("resuming the unfinished sweep in this experiment")
        tuner = tune.Tuner.restore(
            store.path(f"{experiment}/tune"), trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=store.fs
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(trials)},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
            run_config=tune.RunConfig(
                name="tune",
                **store.ray_storage(experiment),
                stop=stopper,
                callbacks=[progress, *tracking_callbacks(cfg, store.uri(experiment), log)],  # MLflow, W&B, TensorBoard: sweep/tracking.py
                # A trial whose driver was lost (its node went away) is started again; it resumes from
                # its checkpoints and reports no step twice (sweep/trial.py).
                failure_config=tune.FailureConfig(max_failures=cfg.checkpointing.max_failures),
                verbose=tune_verbosity(logs.verbose),  # without --verbose progress.py's lines are all there is
            ),
        )
    store.delete_dir(f"{experiment}/errors")  # about the last run only: a trial that failed before and succeeds now is not an error
    grid = tuner.fit()
    errors = {}
    for result in grid:  # type: ignore[attr-defined]  # ResultGrid iterates through __getitem__ and __len__, no __iter__
        if result.error:
            name = (result.metrics or {}).get("trial_name") or trial_name_of(result.path)
            errors[name] = failure_cause(result.error)
            store.write_text(f"{experiment}/errors/{name}.json", json.dumps({"trial_name": name, "message": errors[name]}))
    if errors:
        log(f"{len(errors)} trial(s) FAILED (Tune's record of each under {tune_location}; their output in {logs.location}/):")
        for name, message in errors.items():
            log(f"  {name}: {message}")
    store.delete_dir(f"{experiment}/checkpoints")  # what stopped trials handed over and nobody will evaluate
    results = collect_results(store, experiment)
    if not errors:  # nothing will resume: the stopped trials' engine checkpoints go (finished ones removed their own)
        for trial_name in results["trial_name"].unique():
            store.delete_dir(f"{experiment}/ray/{trial_name}")
    # results.parquet marks a finished sweep; with failures the rows go to results.partial.parquet and
    # a rerun of the same command resumes the failed trials (Tuner.restore(resume_errored=True)).
    name = "results.partial.parquet" if errors else "results.parquet"
    store.write_parquet(f"{experiment}/{name}", pa.Table.from_pandas(results, preserve_index=False))
    log(f"sweep finished in {time.time() - started:.0f} s: {len(results)} evaluations of {results['trial_name'].nunique()} trials")
    if errors:
        raise SweepFailed(f"{len(errors)} of {len(trials)} trials failed; rerun the same command to retry them")
    return store.uri(experiment)


class SweepFailed(RuntimeError):
    """Some trials failed; what the others evaluated is kept (rows/, results.partial.parquet)."""
