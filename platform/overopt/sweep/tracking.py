"""Experiment trackers for a sweep, through Ray Tune's own logger callbacks: MLflow, W&B, TensorBoard.

    python jobs/scale_sweep.py --config configs/smoke.yaml --set tracking.mlflow.tracking_uri=http://127.0.0.1:5000
    python jobs/scale_sweep.py --config configs/smoke.yaml --set tracking.wandb.project=overopt --set tracking.tensorboard=true

The config's ``tracking`` section (config.py TrackingConfig; all off by default) picks them; sweep/run.py
adds ``tracking_callbacks(...)`` to the Tuner's callbacks. What each receives (docs/tracking.md):

    MLflow       one run per experiment (its config as parameters; report.md, the plots, fits.json and
                 results.parquet as artifacts once jobs/analyze.py has run) with one nested run per trial:
                 the trial's config as parameters, every numeric column of every evaluation row as a
                 metric at the row's training step, the stop reason as the tag ``stop_reason``
    W&B          one run per trial in ``project``, grouped by experiment, the same metrics at the same steps
    TensorBoard  one event directory per trial under <experiment>/tensorboard, scalars at the training step

Tune's callbacks log a result at Tune's count of reports (``training_iteration``); here it is replaced by
the row's training step before they see it, so every tracker's x axis is the step the row was measured
at (0 = the reference).

Trackers only get copies: each row is in storage (rows/<trial>/step_X.json) before Tune sees it. So a
tracker that cannot be reached fails the sweep before anything starts (``tracker_problems``, checked
with the inputs, and again when the callbacks are built), and one that fails mid-sweep is reported once
and turned off for the rest of the sweep: no row is lost, and the sweep goes on.

Credentials come from the environment only (MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME +
MLFLOW_TRACKING_PASSWORD; WANDB_API_KEY or `wandb login`): nothing here takes or writes one, and Tune
pickles its callbacks into the experiment (tune/tuner.pkl), so none may hold one.

One module: the three trackers share one base (``_Tracker``: rows at their step, turned off on a failure),
and the MLflow experiment run (``MLFLOW_RECORD``) that the checks probe, the trial runs nest under and
``publish_analysis`` fills.
"""

from __future__ import annotations

import contextlib
import json
import netrc
import os
import tempfile
from typing import TYPE_CHECKING, Any

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback  # imports without wandb installed; building one needs it
from ray.tune.logger import TBXLoggerCallback
from ray.tune.result import TRAINING_ITERATION

from overopt.config import ConfigError, ExperimentConfig, dotted_items
from overopt.storage import Storage

STEP = "step"  # the row's training step: every tracker's x axis
MLFLOW_RECORD = "tracking/mlflow.json"  # in the experiment: the MLflow experiment and run that stand for it
TENSORBOARD_DIR = "tensorboard"  # in the experiment (local storage): one event directory per trial
WANDB_DIR = "wandb"  # in the experiment (local storage): W&B's files (offline runs, logs)
EXPERIMENT_TAG = "overopt.experiment"  # on every MLflow run: the experiment's location
ROLE_TAG = "overopt.role"  # "experiment" (the parent run) or "trial"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the trial runs are nested under the experiment's
# What the experiment's MLflow run receives after the analysis (files at the experiment's top level).
ANALYSIS_ARTIFACTS = ("report.md", "fits.json", "config.yaml", "results.parquet", "data_summary.json", "toy_mdp.json")
# The probe before a sweep: no retries (MLflow's default of 7 with backoff would take minutes to say
# the server is down) and a short timeout; the server either answers now or the sweep does not start.
PROBE_ENVIRONMENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# During the sweep Tune's event loop waits for every tracker call: 2 retries (a few seconds) before a
# call counts as failed and the tracker turns itself off, instead of holding every trial's rows for minutes.
# setdefault: a value already in the environment wins.
SWEEP_ENVIRONMENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
MLFLOW_BATCH = 100  # params per log_batch request: the most MLflow's REST API takes
MLFLOW_PARAM_CHARS = 6000  # the longest param value MLflow stores
MLFLOW_TAG_CHARS = 5000  # a stop reason holding an error's text is cut to this (MLflow stores up to 8000)


def _say(line: str) -> None:
    print(line, flush=True)  # a module function, not a stored callable: Tune pickles its callbacks


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """``values`` set in os.environ for the block, the previous values put back after it."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ----------------------------------------------------------------------------------------------
# Before the sweep


def mlflow_experiment_name(cfg: ExperimentConfig) -> str:
    return cfg.tracking.mlflow.experiment_name or cfg.name


def tracker_problems(cfg: ExperimentConfig) -> list[str]:
    """Why a tracker the config turns on cannot be used now (MLflow: the server answers), or []."""
    problems = []
    uri = cfg.tracking.mlflow.tracking_uri
    if uri is not None:
        try:
            _mlflow_experiment_id(uri, mlflow_experiment_name(cfg), create=False)  # a probe: a dry run creates nothing
        except ConfigError as error:
            problems.append(str(error))
    if cfg.tracking.wandb.project is not None:
        problems += _wandb_problems(cfg)
    return problems


def _mlflow_experiment_id(uri: str, name: str, create: bool = True) -> str | None:
    """The id of MLflow experiment ``name`` at ``uri`` (created if new and ``create``, else None); ConfigError
    naming the URI if the server does not answer or refuses."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("tracking.mlflow is set but the mlflow package is not installed: pip install mlflow-skinny") from None
    try:
        with _environment(PROBE_ENVIRONMENT):
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            return client.create_experiment(name) if create else None
    except Exception as error:  # noqa: BLE001 - whatever the client raises (connection, HTTP, auth), the sweep must not start
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"tracking.mlflow.tracking_uri {uri}: the MLflow tracking server does not answer ({type(error).__name__}: {first[:300]}); "
            "start it (mlflow server --host 127.0.0.1 --port 5000), fix the URI, or unset tracking.mlflow.tracking_uri"
        ) from None


def _wandb_problems(cfg: ExperimentConfig) -> list[str]:
    try:
        import wandb  # noqa: F401
    except ImportError:
        return ["tracking.wandb is set but the wandb package is not installed: pip install wandb"]
    if cfg.tracking.wandb.mode == "offline" or os.environ.get("WANDB_API_KEY"):
        return []
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://", 1)[-1].split("/", 1)[0]
    try:
        if netrc.netrc().authenticators(host):  # where `wandb login` keeps the key
            return []
    except (OSError, netrc.NetrcParseError):
        pass
    return [
        f"tracking.wandb.mode online needs an API key for {host}: set WANDB_API_KEY in the environment, run `wandb login`, "
        "or set tracking.wandb.mode=offline (files only, `wandb sync` later)"
    ]


def tracking_callbacks(cfg: ExperimentConfig, experiment: str, log=print) -> list:
    """The Tune callbacks of the trackers ``cfg.tracking`` turns on, for the experiment at ``experiment``
    (its location). Checks each tracker first (ConfigError naming what is wrong), opens the MLflow run
    that stands for the experiment, and prints where to follow the sweep."""
    problems = tracker_problems(cfg)
    if problems:
        raise ConfigError("\n".join(problems))
    store = Storage(experiment)
    callbacks: list = []
    log(f"follow the sweep: rows as they land in {store.uri('rows')}; Ray's dashboard at the address above")
    settings = cfg.tracking
    if settings.tensorboard:
        directory = store.uri(TENSORBOARD_DIR) if store.local else f"{store.uri('tune')} (each trial's directory)"
        callbacks.append(TensorBoardTracker(experiment))
        log(f"  TensorBoard: tensorboard --logdir {directory}")
    else:
        log(
            f"  TensorBoard (Tune's own event files, x axis = report count; tracking.tensorboard=true: by step): tensorboard --logdir {store.uri('tune')}"
        )
    if settings.mlflow.tracking_uri is not None:
        record = open_experiment_run(cfg, experiment)
        callbacks.append(MLflowTracker(experiment, record))
        page = f"{record['tracking_uri'].rstrip('/')}/#/experiments/{record['experiment_id']}/runs/{record['run_id']}"
        where = page if record["tracking_uri"].startswith("http") else f"{record['tracking_uri']} run {record['run_id']}"
        log(f"  MLflow: experiment {record['experiment_name']!r}, run {record['run_name']!r} (one nested run per trial): {where}")
    if settings.wandb.project is not None:
        callbacks.append(wandb_tracker(cfg, experiment))
        where = (
            f"offline files in {store.uri(WANDB_DIR) if store.local else 'each trial directory under ' + store.uri('tune')}; "
            "send them with `wandb sync --sync-all` there"
            if settings.wandb.mode == "offline"
            else "online"
        )
        log(f"  W&B: project {settings.wandb.project!r}, group {store.path().rsplit('/', 1)[-1]!r} ({where})")
    return callbacks


def open_experiment_run(cfg: ExperimentConfig, experiment: str) -> dict[str, str]:
    """The MLflow run that stands for the experiment: the one its record (tracking/mlflow.json) names on
    the same server if it still exists, else a new one with the experiment's config as parameters."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    uri, name = cfg.tracking.mlflow.tracking_uri, mlflow_experiment_name(cfg)
    assert uri is not None  # called only with tracking.mlflow.tracking_uri set
    experiment_id = _mlflow_experiment_id(uri, name)
    assert experiment_id is not None  # created when new
    store = Storage(experiment)
    client = MlflowClient(tracking_uri=uri)
    if store.exists(MLFLOW_RECORD):
        record = json.loads(store.read_text(MLFLOW_RECORD))
        if record.get("tracking_uri") == uri and record.get("experiment_id") == experiment_id:
            with contextlib.suppress(Exception), _environment(PROBE_ENVIRONMENT):
                if client.get_run(record["run_id"]).info.lifecycle_stage == "active":
                    return record
    run_name = store.path().rsplit("/", 1)[-1]  # <name>-<hash>
    run = client.create_run(experiment_id, run_name=run_name, tags={EXPERIMENT_TAG: store.uri(), ROLE_TAG: "experiment"})
    params = [Param(key, str(value)[:MLFLOW_PARAM_CHARS]) for key, value in sorted(dotted_items(cfg.model_dump(mode="json")).items())]
    for start in range(0, len(params), MLFLOW_BATCH):
        client.log_batch(run.info.run_id, params=params[start : start + MLFLOW_BATCH])
    record = {"tracking_uri": uri, "experiment_name": name, "experiment_id": experiment_id, "run_id": run.info.run_id, "run_name": run_name}
    store.write_text(MLFLOW_RECORD, json.dumps(record, indent=2))
    return record


# ----------------------------------------------------------------------------------------------
# During the sweep: Tune's callbacks, each with the same three additions


if TYPE_CHECKING:  # what _Tracker is mixed into: its super() calls reach a LoggerCallback
    from ray.tune.logger import LoggerCallback as _TrackerBase
else:
    _TrackerBase = object


class _Tracker(_TrackerBase):
    """Mixed into a Tune logger callback: rows logged at their training step, the trial's stop reason
    at its end, and a failure reported once, after which the tracker is off for the rest of the sweep."""

    tracker = ""  # its name in messages

    def _init_tracker(self, experiment: str) -> None:
        self.experiment = experiment  # the experiment's location: stops/ and rows/
        self.failed = False
        self.last_rows: dict[Any, dict] = {}  # trial -> its last row (the stop reason needs it)

    def _guarded(self, what: str, call, *args, **kwargs) -> None:
        if self.failed:
            return
        try:
            call(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - a tracker never fails the sweep once it runs
            self.failed = True
            _say(
                f"tracking: {self.tracker} failed while {what} ({type(error).__name__}: {str(error)[:300]}); it is off for the rest "
                f"of this sweep. No row is lost: every row is in {Storage(self.experiment).uri('rows')} and, at the end, results.parquet"
            )

    def setup(self, *args, **kwargs):
        self._guarded("starting", super().setup, *args, **kwargs)

    def log_trial_start(self, trial):
        self._guarded(f"opening the run of {trial}", super().log_trial_start, trial)

    def log_trial_result(self, iteration, trial, result):
        if STEP in result:  # Tune's integrations log at training_iteration: the row's step instead
            self.last_rows[trial] = result
            result = {**result, TRAINING_ITERATION: result[STEP]}
        self._guarded(f"logging a row of {trial}", super().log_trial_result, iteration, trial, result)

    def log_trial_end(self, trial, failed: bool = False):
        self._guarded(f"closing the run of {trial}", self._end, trial, failed)

    def _end(self, trial, failed: bool) -> None:
        super().log_trial_end(trial, failed)

    def stop_reason(self, trial, failed: bool) -> str:
        """What ended the trial, as results.parquet will say (analysis/results.py stop_reason)."""
        import pandas as pd

        from overopt.analysis.results import stop_reason
        from overopt.sweep.failures import failure_cause

        last = self.last_rows.get(trial)
        name = (last or {}).get("trial_name", str(trial))
        store = Storage(self.experiment)
        stop = json.loads(store.read_text(f"stops/{name}.json")) if store.exists(f"stops/{name}.json") else None
        error = None
        if failed:
            cause = trial.get_pickled_error() or trial.get_error()
            error = {"message": failure_cause(cause) if cause is not None else "unknown"}
        if last is None:
            return stop["reason"] if stop else f"error: {error['message']}" if error else "no evaluation"
        return stop_reason(pd.DataFrame([last]), stop, error)


class MLflowTracker(_Tracker, MLflowLoggerCallback):
    """Tune's MLflowLoggerCallback, its trial runs nested under the experiment's run (open_experiment_run)."""

    tracker = "MLflow"

    def __init__(self, experiment: str, record: dict[str, str]):
        super().__init__(
            record["tracking_uri"],
            experiment_name=record["experiment_name"],
            tags={PARENT_TAG: record["run_id"], EXPERIMENT_TAG: Storage(experiment).uri(), ROLE_TAG: "trial"},
        )
        self._init_tracker(experiment)
        self.record = record

    def setup(self, *args, **kwargs):
        for key, value in SWEEP_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
        super().setup(*args, **kwargs)

    def log_trial_start(self, trial):
        # A trial restarted (Tune's retry, or a resumed sweep) logs on into the run it already has.
        if not self.failed and trial not in self._trial_runs:
            self._guarded(f"looking up the run of {trial}", self._find_run, trial)
        super().log_trial_start(trial)

    def _find_run(self, trial) -> None:
        experiment_id = self.mlflow_util.experiment_id
        assert experiment_id is not None  # set by setup
        runs = self.mlflow_util._get_client().search_runs(
            [experiment_id],
            filter_string=f"tags.trial_name = '{trial}' and tags.`{PARENT_TAG}` = '{self.record['run_id']}'",
            max_results=1,
        )
        if runs:
            self._trial_runs[trial] = runs[0].info.run_id

    def _end(self, trial, failed: bool) -> None:
        reason = self.stop_reason(trial, failed)
        self.mlflow_util._get_client().set_tag(self._trial_runs[trial], "stop_reason", reason[:MLFLOW_TAG_CHARS])
        super()._end(trial, failed)

    def on_experiment_end(self, trials, **info):
        failed = any(trial.status == "ERROR" for trial in trials)
        self._guarded(
            "closing the experiment's run",
            self.mlflow_util._get_client().set_terminated,
            self.record["run_id"],
            "FAILED" if failed else "FINISHED",
        )
        super().on_experiment_end(trials, **info)


class TensorBoardTracker(_Tracker, TBXLoggerCallback):
    """Tune's TBXLoggerCallback; on local storage each trial's events go to <experiment>/tensorboard/<trial>
    (one run per trial in TensorBoard, named by the trial), elsewhere to the trial's Tune directory,
    which Tune copies to storage. Being a TBXLoggerCallback, it replaces the one Tune adds by itself."""

    tracker = "TensorBoard"

    def __init__(self, experiment: str):
        super().__init__()
        self._init_tracker(experiment)

    def log_trial_start(self, trial):
        store = Storage(self.experiment)
        if not store.local:
            return super().log_trial_start(trial)
        self._guarded(f"opening the event file of {trial}", self._open, trial, store.path(f"{TENSORBOARD_DIR}/{trial}"))

    def _open(self, trial, directory: str) -> None:
        if trial in self._trial_writer:
            self._trial_writer[trial].close()
        os.makedirs(directory, exist_ok=True)
        self._trial_writer[trial] = self._summary_writer_cls(directory, flush_secs=30)
        self._trial_result[trial] = {}

    def _end(self, trial, failed: bool) -> None:
        if trial in self._trial_writer:
            self._trial_writer[trial].add_text("stop_reason", self.stop_reason(trial, failed))
        super()._end(trial, failed)


class WandbTracker(_Tracker, WandbLoggerCallback):
    """Tune's WandbLoggerCallback (a logging actor per trial runs wandb; its step is the row's step)."""

    tracker = "W&B"

    def setup(self, *args, **kwargs):
        # Ray's setup asks for an API key unless WANDB_MODE says offline (the mode given to wandb.init is
        # not read there): say it for the setup only, so this process's environment is left as it was.
        offline = {"WANDB_MODE": "offline"} if self.kwargs.get("mode") == "offline" else {}
        with _environment(offline):
            super().setup(*args, **kwargs)


def wandb_tracker(cfg: ExperimentConfig, experiment: str) -> WandbTracker:
    """A run per trial in ``tracking.wandb.project``, grouped by experiment (its <name>-<hash>)."""
    store = Storage(experiment)
    options: dict[str, Any] = {"mode": cfg.tracking.wandb.mode, "resume": "allow"}  # allow: a restarted trial logs on into its run
    if store.local:
        options["dir"] = store.path(WANDB_DIR)
        os.makedirs(options["dir"], exist_ok=True)
    tracker = WandbTracker(project=cfg.tracking.wandb.project, group=store.path().rsplit("/", 1)[-1], **options)
    tracker._init_tracker(experiment)
    return tracker


# ----------------------------------------------------------------------------------------------
# After the analysis


def publish_analysis(experiment: str, log=print) -> str | None:
    """Log the experiment's report, plots and tables as artifacts of its MLflow run (the one its record
    names); None if the experiment has no MLflow run. A server that is down is reported, never raised:
    the report is in storage either way."""
    store = Storage(experiment)
    if not store.exists(MLFLOW_RECORD):
        return None
    record = json.loads(store.read_text(MLFLOW_RECORD))
    names = [name for name in ANALYSIS_ARTIFACTS if store.exists(name)]
    names += [path.rsplit("/", 1)[-1] for path in store.list("", ".png")]
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=record["tracking_uri"])
        with tempfile.TemporaryDirectory(prefix="overopt-analysis-") as scratch, _environment(SWEEP_ENVIRONMENT):
            for name in names:
                path = os.path.join(scratch, name) if not store.local else store.path(name)
                if not store.local:
                    with open(path, "wb") as file:
                        file.write(store.read_bytes(name))
                client.log_artifact(record["run_id"], path)
    except Exception as error:  # noqa: BLE001 - the analysis is in storage: a tracker never fails it
        log(
            f"tracking: the report was not sent to MLflow at {record['tracking_uri']} ({type(error).__name__}: {str(error)[:300]}); "
            f"it is in {store.uri('report.md')}; run jobs/analyze.py again to send it"
        )
        return None
    log(f"report and plots sent to MLflow: {record['tracking_uri']} run {record['run_id']}")
    return record["run_id"]
