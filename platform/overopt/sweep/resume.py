"""Running an experiment again: which settings may differ from its first run, and the record of each run.

An experiment's directory is named by a hash of everything that changes what it measures
(sweep/run.py ``experiment_name``); the settings below are left out of that hash because they change
how a sweep runs, not what it computes. So the same experiment can be run again with other values of
them, and its ``config.yaml``, written by the first run, never changes. What happens to a differing
setting when the rerun resumes an unfinished sweep:

    applied   it takes effect for what runs from now on, and the invocation record says so
    refused   Tune's restored state keeps the first run's value (Tuner.restore unpickles the trials'
              resources, the concurrency limit and the failure policy), so the rows would come from
              settings other than those asked for: the rerun stops before anything runs, naming each key

Every invocation is appended to the experiment as its own file, ``invocations/<time>-<pid>.json``
(time, command line, overrides, what it did: new, resumed, results reused; what it applied).
No Ray here.

    refused, applied = resume_differences(stored_config, new_config)
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

from overopt.config import ExperimentConfig, dotted_items

# Settings that change how fast a sweep runs or where it is written, not what it measures: left out
# of the experiment's hash (a nested dict in pydantic's exclude format).
NOT_IN_EXPERIMENT_HASH: dict[str, Any] = {  # pydantic's IncEx
    "storage": True,
    "checkpointing": True,  # how a trial survives faults, not what it computes
    "sweep": {"max_concurrent_trials": True},
    "train": {"cpus_per_worker": True, "device_memory_gb": True},
    "evaluation": {"mode": True, "max_in_flight": True, "cpus_per_task": True, "gpus_per_task": True, "scoring_batch_size": True},
    # Trackers receive copies of the rows and the report (sweep/tracking.py). Not applied on resume: they
    # are Tune callbacks, and Tuner.restore unpickles the first run's callbacks with the rest of its state.
    "tracking": True,
}

# Of those, what a resumed sweep can take over: read afresh by each trial (or the plan) when it starts.
APPLIED_ON_RESUME = {
    "storage",  # where the experiment was found: its location now
    "train.device_memory_gb",  # the memory plan's check only
    "checkpointing.keep",  # each trial's Ray Train CheckpointConfig, built when the trial (re)starts
    "checkpointing.every_steps",  # read by the training workers when they start
    "evaluation.scoring_batch_size",  # sequences per forward pass when scoring: speed and memory, not the samples
}


def resume_differences(stored: ExperimentConfig, new: ExperimentConfig) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(refused, applied): the settings outside the experiment's hash whose values differ between the
    experiment's first run (``stored``) and this one, as {dotted key: (first run's value, this run's)}."""
    include = NOT_IN_EXPERIMENT_HASH
    before = dotted_items(stored.model_dump(mode="json", include=include))
    after = dotted_items(new.model_dump(mode="json", include=include))
    differing = {key: (before.get(key), after.get(key)) for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)}
    refused = {key: values for key, values in differing.items() if key not in APPLIED_ON_RESUME}
    applied = {key: values for key, values in differing.items() if key in APPLIED_ON_RESUME}
    return refused, applied


def refusal_message(location: str, refused: dict[str, tuple]) -> str:
    lines = [f"  {key}: {first!r} in its first run, {now!r} now" for key, (first, now) in refused.items()]
    return (
        f"{location} is an unfinished sweep of this experiment, and resuming it would keep the first run's value of "
        f"{'these settings' if len(refused) > 1 else 'this setting'} (Tune restores them):\n" + "\n".join(lines) + "\n"
        "Run it again with the first run's values to resume it, or start a new experiment with the new ones: "
        "--set name=<a new name> (or another storage)."
    )


def invocation_record(action: str, applied: dict[str, tuple], invocation: dict[str, Any] | None) -> tuple[str, str]:
    """(file name under invocations/, JSON text) of one run of the sweep command."""
    now = time.time()
    record = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "command": sys.argv,
        **(invocation or {}),
        "host": socket.gethostname(),
        "action": action,  # new | resumed | results reused
        "applied": {key: {"first_run": first, "now": value} for key, (first, value) in applied.items()},
    }
    name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now % 1 * 1e6):06d}-{os.getpid()}.json"  # sorts by time
    return name, json.dumps(record, indent=2, default=str)
