"""What a sweep prints on the console, and where everything else goes.

By default ``jobs/scale_sweep.py`` prints only the sweep's own lines: the experiment, where its logs go,
the stages (a line as each starts and ends, from the driver), a line per evaluation (sweep/progress.py),
failed trials with their causes, and the summary. What Ray, Ray Train, Tune, Ray Data and DeepSpeed
print goes to the run's log directory, ``<experiment>/logs/<run>/`` (``<run>`` is the name of the run's
record under ``invocations/``, without ``.json``):

    workers.log  the stdout and stderr of every process of the job on every node (Ray Train's workers
                 and controllers, the trial drivers, the evaluations' tasks, Ray Data), the raylet's
                 messages and the autoscaler's events, one line each, as Ray would print it:
                 ``(RayTrainWorker pid=123) ...``
    driver.log   this process's loggers: Ray's (ray, ray.tune, ray.train, ray.data), DeepSpeed's, and
                 Python warnings

``--verbose`` prints all of it on the console as well, the way Ray prints it, and turns Tune's status
tables on; the files are written either way. On a URI storage the files are written to a local temporary
directory and uploaded when the sweep ends (the console says where they are until then).

How, with Ray's own switches where it has them:

- Worker output reaches this driver because ``ray.init(log_to_driver=True)`` (sweep/run.py start_ray;
  under ``ray job submit`` too): Ray's log subscriber hands each batch of lines to the handlers of its
  stdout/stderr dispatcher, and ``ray.init`` registers the one that prints them ("ray_print_logs").
  Quiet, that handler is replaced by one that writes workers.log. ``log_to_driver=False`` would leave
  the lines in each node's ``/tmp/ray/session_*/logs``, not with the experiment. Ray prints the raylet's
  error messages (e.g. "N PYTHON worker processes have been started") from another thread through
  ``ray._private.worker.print_to_stdstream``: that is routed the same way while the run lasts.
- Ray Data's progress bars and their logged form (``logging_progress.py``) are off in every process of
  the job: ``RAY_DATA_DISABLE_PROGRESS_BARS`` in the job's runtime env (start_ray).
- Tune: ``RunConfig(verbose=0)`` still prints the experiment table, a block per failed trial and a final
  status table through Tune's current output engine; ``RAY_AIR_NEW_OUTPUT=0`` (Tune's switch to its
  legacy engine) makes verbose 0 print nothing. Set only while the run lasts, and only when quiet.
- Loggers: the console handlers of ``ray``, ``ray.data`` and ``DeepSpeed`` (the ones that print in this
  process) are swapped for driver.log's while the run lasts; warnings go to the ``py.warnings`` logger.
  Not ``ray.LoggingConfig``: it adds a console handler in every process and filters by level, so any
  level above INFO would drop lines rather than move them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

WORKERS_LOG, DRIVER_LOG = "workers.log", "driver.log"
CONSOLE_LOGGERS = ("ray", "ray.data", "DeepSpeed")  # the loggers that print in the driver (ray.tune, ray.train propagate to ray)
RAY_PRINTER = "ray_print_logs"  # the name ray.init gives the dispatcher handler that prints worker output
_WORKERS_LOG_HANDLER = "overopt_workers_log"
_QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's legacy output engine, silent at verbose 0 (above)
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",  # ray.init's usage-stats notice
}


def tune_verbosity(verbose: bool) -> int:
    """Tune's RunConfig(verbose=...): 1 (status tables, trial starts and ends) only with --verbose."""
    return 1 if verbose else 0


def worker_line_prefix(data: dict) -> str:
    """The prefix Ray prints before a worker's line: ``(RayTrainWorker pid=123)``, ``(raylet, ip=10.0.0.2)``."""
    pid = data.get("pid")
    ip = data.get("ip")
    where = f", ip={ip}" if ip and ip != data.get("localhost") else ""
    if pid in ("raylet", "autoscaler", "gcs_server", "runtime_env"):
        return f"({pid}{where})"
    name = data.get("actor_name") or data.get("task_name")
    return f"({name + ' ' if name else ''}pid={pid}{where})"


def autoscaler_events(lines: list[str]):
    """What Ray prints of the autoscaler's log: its events (the ``:event_summary:`` lines of autoscaler v1,
    the JSON event records of v2), not the status report it writes every few seconds."""
    for line in lines:
        if ":event_summary:" in line:
            yield line.split(":event_summary:", 1)[1]
        elif line.startswith("{"):
            try:
                message = json.loads(line).get("message")
            except (ValueError, AttributeError):
                continue
            if message:
                yield message


class WorkerLog:
    """Writes the batches of worker lines Ray hands to the driver into a file, one line per line,
    with the time it arrived and Ray's prefix. Called from Ray's log and error threads at once."""

    def __init__(self, path: Path):
        self.path = path
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    def write(self, data: dict) -> None:
        lines = data.get("lines") or []
        if data.get("pid") == "autoscaler":
            lines = list(autoscaler_events(lines))
        if not lines:
            return
        prefix = worker_line_prefix(data)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self._lock:
            if self._file is None:  # opened on the first line: a run that starts no Ray leaves no empty file
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            for line in lines:
                # Ray marks some lines as plain messages (":info_message:"): printed without the marker.
                self._file.write(f"{stamp} {prefix} {line.split(':info_message:', 1)[-1]}\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


@contextmanager
def worker_output_to(target: WorkerLog, verbose: bool):
    """While inside: every line Ray forwards to this driver from its workers (and the raylet's messages)
    is written to ``target``; Ray prints it on the console too only when ``verbose``. Enter after
    ``ray.init``: it registers the handler that prints them. Yields False, and changes nothing, on a Ray
    whose driver-side routing is not where this expects it (the console then stays as Ray makes it)."""
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        original = ray_worker.print_to_stdstream
        handlers = list(dispatcher.handlers)
    except (ImportError, AttributeError) as error:
        logging.getLogger(__name__).warning("worker output stays on the console: Ray's log routing is not where expected (%s)", error)
        yield False
        return
    removed = [] if verbose else [(name, handler) for name, handler in handlers if name == RAY_PRINTER]
    if removed:
        dispatcher.remove_handler(RAY_PRINTER)
    dispatcher.add_handler(_WORKERS_LOG_HANDLER, target.write)

    def print_to_stdstream(data, ignore_prefix=False):  # what Ray's error-listener thread calls
        target.write(data)
        if verbose:
            original(data, ignore_prefix)

    ray_worker.print_to_stdstream = print_to_stdstream
    try:
        yield True
    finally:
        ray_worker.print_to_stdstream = original
        dispatcher.remove_handler(_WORKERS_LOG_HANDLER)
        # Ray's printer back, unless ray.shutdown came first (it removes the printer; ray.init adds a new one).
        if ray_worker.global_worker.connected:
            for name, handler in removed:
                dispatcher.add_handler(name, handler)


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


@contextmanager
def loggers_to(handler: logging.Handler, verbose: bool):
    """While inside: Ray's, Ray Data's and DeepSpeed's loggers in this process write to ``handler``
    (and the root logger: anything else that propagates, Python warnings among it); their console
    handlers stay only when ``verbose``."""
    moved: list[tuple[logging.Logger, logging.Handler]] = []
    root = logging.getLogger()
    # Each named logger that does not propagate gets the handler itself; the others reach it through root.
    loggers = [logger for logger in map(logging.getLogger, CONSOLE_LOGGERS) if not logger.propagate] + [root]
    for logger in loggers:
        if not verbose and logger is not root:  # root's own handlers (if any) are someone else's choice
            for console in [h for h in logger.handlers if _is_console(h)]:
                logger.removeHandler(console)
                moved.append((logger, console))
        logger.addHandler(handler)
    capture_warnings = not verbose and getattr(logging, "_warnings_showwarning", None) is None
    if capture_warnings:
        logging.captureWarnings(True)
    try:
        yield
    finally:
        if capture_warnings:
            logging.captureWarnings(False)
        for logger in loggers:
            logger.removeHandler(handler)
        for logger, console in moved:
            logger.addHandler(console)


@contextmanager
def environment(values: dict[str, str]):
    """``values`` in os.environ while inside (a variable already set is left as it is)."""
    added = {key: value for key, value in values.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


class RunLogs:
    """The log directory of one run of a sweep, and the console routing while the run lasts.

    ``with RunLogs(store, f"{experiment}/logs/{run}", verbose) as logs:`` routes this process's loggers
    at once (enter it before ``ray.init``: its own lines go there too); ``logs.capture_workers()`` after
    ``ray.init`` routes the workers' output. Leaving restores the console and (URI storage) uploads the files.
    """

    def __init__(self, store, relative: str, verbose: bool = False):
        self.store, self.relative, self.verbose = store, relative, verbose
        self.location = store.uri(relative)  # where the files end up
        self._temporary: str | None = None if store.local else tempfile.mkdtemp(prefix="overopt-logs-")
        # where they are written
        self.directory = Path(self._temporary) if self._temporary is not None else Path(store.path(relative))
        self.workers = WorkerLog(self.directory / WORKERS_LOG)
        self._stack = ExitStack()

    def describe(self) -> str:
        """The console's line about them."""
        where = f"{self.location}/"
        if not self.store.local:
            where += f" (uploaded when the sweep ends; until then {self.directory}/)"
        shown = "printed here too (--verbose)" if self.verbose else "--verbose prints them here too"
        return f"logs: {where} ({WORKERS_LOG}: what every Ray worker printed; {DRIVER_LOG}: Ray's, Tune's, DeepSpeed's loggers); {shown}"

    def __enter__(self) -> RunLogs:
        self.directory.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.directory / DRIVER_LOG, encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d -- %(message)s"))
        self._stack.callback(handler.close)
        self._stack.enter_context(loggers_to(handler, self.verbose))
        if not self.verbose:
            self._stack.enter_context(environment(_QUIET_ENV))
        return self

    def capture_workers(self) -> None:
        self._stack.enter_context(worker_output_to(self.workers, self.verbose))

    def __exit__(self, *exc) -> None:
        try:
            self._stack.close()
        finally:
            self.workers.close()
            if self._temporary is not None:
                self._upload()

    def _upload(self) -> None:
        if not any(self.directory.iterdir()):
            shutil.rmtree(self.directory, ignore_errors=True)
            return
        try:
            self.store.upload_dir(self.directory, self.relative)
        except Exception as error:  # best effort, and never in place of the sweep's own exception
            print(f"the logs could not be uploaded to {self.location} ({error}); they are in {self.directory}", file=sys.stderr)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)
