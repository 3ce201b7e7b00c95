"""A local Ray instance never grows: a config whose trials need GPUs this machine lacks is refused at
start with the fields to change, instead of waiting forever for resources. (In a subprocess: this
test process may already hold the integration tests' Ray instance.)"""

import os
import subprocess
import sys

SCRIPT = """
import ray
from overopt.config import ConfigError, load_config
from overopt.sweep.run import start_ray
try:
    start_ray(load_config(None, ["evaluation.gpus_per_task=1"]), log=lambda line: None)
except ConfigError as error:
    print("REFUSED", error, "| still running:", ray.is_initialized())
"""


def test_a_trial_needing_missing_gpus_is_refused_on_a_local_instance():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert "REFUSED one trial needs 2 GPUs" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert "evaluation.gpus_per_task" in done.stdout
    assert done.stdout.strip().endswith("still running: False")  # nothing left running
