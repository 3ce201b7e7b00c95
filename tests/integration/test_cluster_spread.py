"""Scheduling on a two-node ``ray.cluster_utils.Cluster`` with declared (fake) GPUs: trials whose
evaluations need GPUs reserve them with the trial (sweep/trial.py ``trial_resources``), so training
workers can never starve an evaluation, the sweep runs to the end without deadlock, and as many trials
run at once as the GPUs allow.

Each node: 6 CPUs and 1 GPU. A trial: its driver (1 CPU) + 2 evaluation tasks (1 CPU + 0.5 GPU each)
reserved in its placement group, and 2 Train workers (1 CPU each, placed by Ray Train); Ray Data's
own tasks need a free CPU besides. So a node holds exactly one trial; configs/smoke.yaml with 3 betas (3 trials, all 3 allowed at once) must run
2 at a time, one per node, every evaluation on the GPU it reserved.
"""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NODE = {"num_cpus": 6, "num_gpus": 1}  # one trial (5 CPUs) per node, not two


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args=NODE)
    cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def test_trials_with_gpu_evaluations_run_two_at_a_time_one_per_node(cluster, tmp_path, smoke_stages):
    smoke_stages.seed(tmp_path)  # scheduling trials is the point here: the stages may come from another module
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "TORCH_EXTENSIONS_DIR": str(ROOT / ".torch_extensions")}
    overrides = [
        f"storage={tmp_path}",
        "train.betas={dpo: [0.1, 0.3, 1.0]}",
        "sweep.max_concurrent_trials=3",
        "evaluation.gpus_per_task=0.5",
    ]
    sweep = subprocess.run(
        [sys.executable, "jobs/scale_sweep.py", "--config", "configs/smoke.yaml", "--no-analysis", *(f"--set={o}" for o in overrides)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    smoke_stages.keep(tmp_path)
    [results] = tmp_path.glob("smoke-*/results.parquet")
    frame = pd.read_parquet(results)
    assert frame["trial_name"].nunique() == 3 and (frame["stop_reason"] == "completed").all()  # no deadlock: all ran to the end
    per_trial = frame.groupby("trial_name").agg(
        started=("trial_started_at", "first"),
        ended=("reported_at", "max"),
        node=("train_node_id", "unique"),
        eval_nodes=("evaluation_node_ids", "unique"),
        gpus=("evaluation_gpu_ids", "unique"),
    )
    assert max_overlap(list(zip(per_trial["started"], per_trial["ended"]))) == 2  # the GPUs allow 2, and 2 ran at once
    assert all(len(nodes) == 1 for nodes in per_trial["node"])  # a trial trains where it started
    # Every evaluation block ran on a GPU Ray assigned it, on the node its trial reserved it on.
    assert all(g and all(ids for ids in g) for g in per_trial["gpus"])
    all_nodes = {node.node_id for node in cluster.list_all_nodes()}
    assert {n for nodes in per_trial["eval_nodes"] for ids in nodes for n in ids.split(",")} <= all_nodes
    assert {nodes[0] for nodes in per_trial["node"]} == all_nodes  # both nodes trained
