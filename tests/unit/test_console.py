"""The sweep's console (sweep/console.py): without --verbose what Ray's workers, the raylet, Ray's and
DeepSpeed's loggers print goes to the run's log files only; with --verbose Ray prints it as well. Ray's
real routing objects are used (its stdout/stderr dispatcher, print_to_stdstream, its loggers), without
starting Ray."""

import functools
import importlib.util
import io
import logging
import os
import warnings
from pathlib import Path

import pytest
from ray._private import worker as ray_worker
from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

from overopt.storage import Storage
from overopt.sweep.console import DRIVER_LOG, RAY_PRINTER, WORKERS_LOG, RunLogs, WorkerLog, tune_verbosity, worker_line_prefix

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ray_printer(monkeypatch):
    """The dispatcher as ray.init(log_to_driver=True) leaves it: Ray's printer registered, the driver connected."""
    monkeypatch.setattr(ray_worker.global_worker, "_is_connected", True)
    monkeypatch.setattr(dispatcher, "handlers", [(RAY_PRINTER, functools.partial(ray_worker.print_to_stdstream, ignore_prefix=False))])
    return dispatcher


def batch(pid, line, **extra) -> dict:
    return {"pid": pid, "ip": "10.0.0.1", "localhost": "10.0.0.1", "job": "01000000", "is_err": False, "lines": [line], **extra}


def test_worker_lines_are_prefixed_as_ray_prints_them():
    assert worker_line_prefix(batch(12, "x", actor_name="RayTrainWorker")) == "(RayTrainWorker pid=12)"
    assert worker_line_prefix(batch(12, "x", task_name="_sample_batch", ip="10.0.0.2")) == "(_sample_batch pid=12, ip=10.0.0.2)"
    assert worker_line_prefix(batch("raylet", "x")) == "(raylet)"


def test_of_the_autoscalers_log_only_its_events_are_kept_as_ray_prints_only_those(tmp_path):
    log = WorkerLog(tmp_path / WORKERS_LOG)
    status = ["======== Autoscaler status: 2026-12-07 04:23:41 ========", "Node status", " (no pending nodes)"]
    log.write(batch("autoscaler", "", lines=[*status, "INFO autoscaler.py:470 -- :event_summary:Resized to 10 CPUs."]))
    log.write(batch("autoscaler", "", lines=['{"message": "Adding 1 node(s) of type worker.", "severity": "INFO"}']))
    log.close()
    assert [line.split(" ", 2)[2] for line in (tmp_path / WORKERS_LOG).read_text().splitlines()] == [
        "(autoscaler) Resized to 10 CPUs.",
        "(autoscaler) Adding 1 node(s) of type worker.",
    ]


@pytest.mark.parametrize("verbose", [False, True])
def test_worker_output_and_raylet_messages_go_to_workers_log_and_reach_the_console_only_when_verbose(
    tmp_path, capsys, ray_printer, verbose
):
    store = Storage(str(tmp_path))
    line = f"DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully ({verbose})"  # distinct: Ray deduplicates
    warning = f"WARNING: 8 PYTHON worker processes have been started on node ({verbose})"
    with RunLogs(store, "exp/logs/run", verbose) as logs:
        logs.capture_workers()
        dispatcher.emit(batch(4242, line, actor_name="RayTrainWorker"))  # what Ray's log thread does with a batch
        ray_worker.print_to_stdstream({"lines": [warning], "pid": "raylet", "is_err": False}, ignore_prefix=False)  # its error thread
        console = capsys.readouterr()
    written = (tmp_path / "exp/logs/run" / WORKERS_LOG).read_text()
    assert f"(RayTrainWorker pid=4242) {line}" in written and f"(raylet) {warning}" in written
    shown = console.out + console.err
    if verbose:
        assert "RayTrainWorker pid=4242" in shown and line in shown and warning in shown
    else:
        assert shown == ""
    # Afterwards Ray prints again, as ray.init set it up.
    assert [name for name, _ in dispatcher.handlers] == [RAY_PRINTER]
    assert ray_worker.print_to_stdstream.__module__ == "ray._private.worker"


def test_after_ray_shutdown_rays_printer_is_not_put_back(tmp_path, ray_printer, monkeypatch):
    with RunLogs(Storage(str(tmp_path)), "exp/logs/run") as logs:
        logs.capture_workers()
        monkeypatch.setattr(ray_worker.global_worker, "_is_connected", False)  # ray.shutdown removes Ray's printer itself
    assert dispatcher.handlers == []


@pytest.fixture
def consoles():
    """Ray's, Ray Data's and DeepSpeed's loggers as they are in a driver (a console handler each, not
    propagating), their consoles StringIOs to read."""
    streams, saved = {}, {}
    for name in ("ray", "ray.data", "DeepSpeed"):
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers, logger.propagate, logger.level)
        streams[name] = io.StringIO()
        logger.handlers, logger.propagate = [logging.StreamHandler(streams[name])], False
        logger.setLevel(logging.INFO)
    yield streams
    for name, (handlers, propagate, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = handlers, propagate
        logger.setLevel(level)


@pytest.mark.parametrize("verbose", [False, True])
def test_rays_and_deepspeeds_loggers_and_warnings_go_to_driver_log(tmp_path, consoles, verbose):
    handlers = {name: logging.getLogger(name).handlers[:] for name in consoles}
    with RunLogs(Storage(str(tmp_path)), "exp/logs/run", verbose):
        logging.getLogger("ray.tune").info("tune says %s", verbose)
        logging.getLogger("ray.data").warning("ray data says %s", verbose)
        logging.getLogger("DeepSpeed").warning("deepspeed says %s", verbose)
        if not verbose:
            warnings.warn(f"a warning {verbose}", UserWarning, stacklevel=1)
    written = (tmp_path / "exp/logs/run" / DRIVER_LOG).read_text()
    for name, said in (("ray", "tune says"), ("ray.data", "ray data says"), ("DeepSpeed", "deepspeed says")):
        assert f"{said} {verbose}" in written
        assert (f"{said} {verbose}" in consoles[name].getvalue()) == verbose
    if not verbose:
        assert f"a warning {verbose}" in written
    assert {name: logging.getLogger(name).handlers for name in consoles} == handlers  # the console handlers are back


def test_quiet_runs_tune_on_its_silent_output_engine_only_while_they_last(tmp_path, monkeypatch):
    from ray.tune.experimental.output import get_air_verbosity

    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    assert get_air_verbosity(0) is not None  # Tune's current engine: prints tables even at verbose 0
    with RunLogs(Storage(str(tmp_path)), "exp/logs/run", verbose=False):
        assert get_air_verbosity(tune_verbosity(False)) is None  # the legacy engine, silent at verbose 0
    assert "RAY_AIR_NEW_OUTPUT" not in os.environ
    with RunLogs(Storage(str(tmp_path)), "exp/logs/run", verbose=True):
        assert "RAY_AIR_NEW_OUTPUT" not in os.environ and tune_verbosity(True) == 1


def test_the_console_line_says_where_the_logs_are(tmp_path):
    logs = RunLogs(Storage(str(tmp_path)), "exp/logs/20260101T000000.000000-1")
    line = logs.describe()
    assert line.startswith(f"logs: {tmp_path}/exp/logs/20260101T000000.000000-1/") and "--verbose" in line


def test_on_a_remote_storage_the_logs_are_written_locally_and_uploaded_at_the_end(tmp_path):
    store = Storage(str(tmp_path / "remote"))
    store.local = False  # as for s3://...: no appending there
    with RunLogs(store, "exp/logs/run") as logs:
        local = logs.directory
        assert not str(local).startswith(str(tmp_path / "remote")) and "uploaded when the sweep ends" in logs.describe()
        logs.workers.write(batch(7, "a worker line", actor_name="TrainController"))
    assert "(TrainController pid=7) a worker line" in (tmp_path / "remote/exp/logs/run" / WORKERS_LOG).read_text()
    assert not local.exists()


def test_scale_sweep_passes_verbose_to_the_sweep(tmp_path, monkeypatch):
    import overopt.sweep.run as run

    spec = importlib.util.spec_from_file_location("scale_sweep", ROOT / "jobs" / "scale_sweep.py")
    scale_sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale_sweep)
    asked = []

    def run_sweep(cfg, log=print, invocation=None, verbose=False):
        asked.append(verbose)
        return str(tmp_path)

    monkeypatch.setattr(run, "run_sweep", run_sweep)
    argv = ["--config", str(ROOT / "configs/smoke.yaml"), "--set", f"storage={tmp_path}", "--no-analysis"]
    assert scale_sweep.main(argv) == 0 and scale_sweep.main([*argv, "--verbose"]) == 0
    assert asked == [False, True]
