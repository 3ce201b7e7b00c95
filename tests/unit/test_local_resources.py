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


WARM_WORKERS = """
import os, tempfile, time
import ray
from overopt.config import load_config
from overopt.sweep.run import start_ray
start_ray(load_config(None, []), log=lambda line: None)
print("LEAKED", "RAY_num_workers_soft_limit" in os.environ)
cpus = int(ray.cluster_resources()["CPU"])
tasks = cpus + 2  # more than the instance's CPUs (Ray's default soft limit), half a CPU each: all run at once

@ray.remote(num_cpus=0.5)
def pid(barrier):
    # Each waits until all tasks run, so no task can reuse a worker another finished with (a loaded
    # machine starts workers slowly).
    open(os.path.join(barrier, str(os.getpid())), "w").close()
    deadline = time.time() + 120
    while len(os.listdir(barrier)) < tasks and time.time() < deadline:
        time.sleep(0.1)
    return os.getpid()

def batch():
    with tempfile.TemporaryDirectory() as barrier:
        return set(ray.get([pid.remote(barrier) for _ in range(tasks)]))

first = batch()
time.sleep(4)  # Ray kills workers above the soft limit after 1 s idle
second = batch()
print("TASKS", tasks, "WORKERS", len(first), "REUSED", len(first & second), "CPUS", cpus)
watcher = ray.get(ray.remote(lambda: os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")).remote())
print("PREEMPTION_WATCHER", watcher, "IN_DRIVER", os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"))
"""


def test_a_local_instance_keeps_idle_workers_warm_without_changing_the_environment():
    """Idle workers above the CPU count survive between evaluations (docs/benchmarks.md), Ray Train's
    preemption watcher is off, and both are the instance's own: processes started from the driver
    (tests' subprocess sweeps) inherit nothing."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_ADDRESS", "RAY_num_workers_soft_limit", "RAY_TRAIN_ENABLE_PREEMPTION"))
    }
    done = subprocess.run([sys.executable, "-c", WARM_WORKERS], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert "LEAKED False" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    # One machine is never drained: the instance's workers (Ray Train's controllers) start no preemption
    # watcher, and the setting is the instance's runtime env's, not this process's environment.
    assert "PREEMPTION_WATCHER 0 IN_DRIVER None" in done.stdout, done.stdout[-2000:]
    words = done.stdout.split("TASKS", 1)[1].split()
    tasks, workers, reused, cpus = int(words[0]), int(words[2]), int(words[4]), int(words[6])
    assert workers == tasks > cpus  # more workers than Ray's default soft limit would keep
    assert reused == tasks
