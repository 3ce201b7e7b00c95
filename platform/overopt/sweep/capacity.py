"""Will the sweep fit the cluster it runs on? Checked before any stage starts, so nothing waits in silence.

A stage or a trial whose resources the cluster can never provide would wait forever for a placement
group; two trials whose reservations (driver and evaluation bundles, sweep/trial.py) fill the cluster
would each wait forever for their Train workers (a placement group of Ray Train's own). So before the
stages start, what one trial holds (overopt/trial_plan.py ``resources_per_trial``) and what the SFT stage holds
are compared with the cluster's capacity: on an autoscaling cluster the most its node types can
provide (the cluster config the cluster publishes, where its autoscaler reports one, else the
autoscaler's own config file, read where its monitor runs: the head, where `ray job submit` runs this
driver), otherwise the resources of the nodes that are up. What can never fit is a ``ConfigError`` naming what it asks
and what the cluster has; the trials run at once are capped at what fits, reservations and workers
counted together; a trial that only the autoscaler can place is announced.

    concurrency = fit_to_cluster(cfg, log=print)    # after ray.init, before the stages
"""

from __future__ import annotations

import math
import os

import ray

from overopt.config import ConfigError, ExperimentConfig
from overopt.trial_plan import bundles_per_trial, resources_per_trial


def stage_resources(cfg: ExperimentConfig) -> dict[str, float]:
    """What the SFT stage's Ray Train workers hold at once (the other stages take one task slot)."""
    if not cfg.sft.enabled or set(cfg.models.sizes) <= set(cfg.sft.checkpoints):
        return {"CPU": 1.0}
    if cfg.train.use_gpu:
        return {"GPU": float(cfg.sft.num_workers), "CPU": float(cfg.sft.num_workers)}
    return {"CPU": float(cfg.sft.num_workers * cfg.sft.cpus_per_worker)}


def _shortfalls(needs: dict[str, float], capacity: dict[str, float]) -> list[str]:
    return [
        f"{name} {amount:g} (the cluster has {capacity.get(name, 0):g})"
        for name, amount in needs.items()
        if amount > capacity.get(name, 0) + 1e-9
    ]


def concurrency_that_fits(cfg: ExperimentConfig, capacity: dict[str, float]) -> tuple[int, list[str]]:
    """(trials that can run at once, problems): pure arithmetic on a capacity {resource: amount}."""
    per_trial = resources_per_trial(cfg)
    problems = []
    short = _shortfalls(stage_resources(cfg), capacity)
    if short:
        problems.append(f"the SFT stage needs {', '.join(short)}: lower sft.num_workers or sft.cpus_per_worker, or use a larger cluster")
    short = _shortfalls(per_trial, capacity)
    if short:
        problems.append(
            f"one trial needs {', '.join(short)} (its driver, {bundles_per_trial(cfg.evaluation)} evaluation bundles and "
            f"{cfg.train.num_workers} Train workers): lower train.num_workers, evaluation.tasks or evaluation.max_in_flight, "
            "or use a larger cluster"
        )
        return 0, problems
    fits = min(math.floor(capacity.get(name, 0) / amount + 1e-9) for name, amount in per_trial.items() if amount > 0)
    return max(1, min(cfg.sweep.max_concurrent_trials, fits)), problems


def node_types_capacity(autoscaling_config: dict) -> dict[str, float]:
    """The most a cluster-launcher config's node types provide at once: the head's resources plus each
    worker type's times its ``max_workers`` (pure arithmetic on the parsed YAML)."""
    types = autoscaling_config.get("available_node_types", {})
    head = autoscaling_config.get("head_node_type")
    total: dict[str, float] = {}
    for name, node_type in types.items():
        count = 1 if name == head else int(node_type.get("max_workers", 0))
        for resource, amount in (node_type.get("resources") or {}).items():
            if resource != "object_store_memory":
                total[resource] = total.get(resource, 0.0) + float(amount) * count
    return total


def _monitor_config_here(gcs_address: str) -> dict | None:
    """The config file of the autoscaler monitoring the cluster at ``gcs_address``, when its monitor
    process runs on this machine: the head, where `ray job submit` runs the driver. Ray's autoscaler
    (v1 and v2, cluster launcher and `ray start --autoscaling-config`) does not publish its node types
    to the cluster, but its monitor names the file on its command line."""
    import psutil
    import yaml

    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if not any(part.endswith("monitor.py") for part in command) or f"--gcs-address={gcs_address}" not in command:
            continue
        for part in command:
            if part.startswith("--autoscaling-config="):
                try:
                    with open(os.path.expanduser(part.split("=", 1)[1])) as f:
                        return yaml.safe_load(f)
                except (OSError, yaml.YAMLError):
                    return None
    return None


def cluster_capacity() -> tuple[dict[str, float], bool]:
    """(capacity, autoscaling): the most an autoscaling cluster's node types provide, or the resources
    of the nodes that are up. The node types come from the cluster config the cluster publishes
    (KubeRay's, where its autoscaler reports one), else from the autoscaler's own config file when its
    monitor runs on this machine."""
    from ray._private.state import state

    maximum = state.get_max_resources_from_cluster_config()
    if maximum:
        return {name: float(amount) for name, amount in maximum.items()}, True
    config = _monitor_config_here(ray.get_runtime_context().gcs_address)
    if config and config.get("available_node_types"):
        return node_types_capacity(config), True
    return dict(ray.cluster_resources()), False


def fit_to_cluster(cfg: ExperimentConfig, log=print) -> int:
    """The number of trials to run at once on the connected cluster; ConfigError if any part can never run."""
    capacity, autoscaling = cluster_capacity()
    concurrency, problems = concurrency_that_fits(cfg, capacity)
    where = "this cluster's node types at their largest" if autoscaling else "this cluster"
    if problems:
        raise ConfigError(f"the sweep can never run on {where} ({_describe(capacity)}):\n  " + "\n  ".join(problems))
    if concurrency < cfg.sweep.max_concurrent_trials:
        log(
            f"running {concurrency} trial(s) at once, not sweep.max_concurrent_trials={cfg.sweep.max_concurrent_trials}: "
            f"each holds {_describe(resources_per_trial(cfg))} and {where} has {_describe(capacity)}"
        )
    up = dict(ray.cluster_resources())
    if autoscaling and _shortfalls(resources_per_trial(cfg), up):
        log(f"waiting for the autoscaler: a trial needs {_describe(resources_per_trial(cfg))}, the nodes up now have {_describe(up)}")
    return concurrency


def _describe(resources: dict[str, float]) -> str:
    return (
        ", ".join(f"{name} {amount:g}" for name, amount in sorted(resources.items()) if name in ("CPU", "GPU") and amount)
        or "no CPU or GPU"
    )
