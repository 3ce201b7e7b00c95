"""Trials spread over nodes by their resource requests: a two-node `ray.cluster_utils.Cluster` whose
nodes each fit exactly one trial (1 CPU trial driver + 2 Train workers + 2 evaluation tasks on rank 0's
node), and configs/smoke.yaml's two concurrent trials land one per node."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CPUS_PER_TRIAL = 1 + 2 + 2


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": CPUS_PER_TRIAL})
    cluster.add_node(num_cpus=CPUS_PER_TRIAL)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_two_trials_run_on_two_nodes(cluster, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "TORCH_EXTENSIONS_DIR": str(ROOT / ".torch_extensions")}
    sweep = subprocess.run(
        [sys.executable, "jobs/scale_sweep.py", "--config", "configs/smoke.yaml", "--set", f"storage={tmp_path}", "--no-analysis"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    [results] = tmp_path.glob("smoke-*/results.parquet")
    frame = pd.read_parquet(results)
    nodes = frame.groupby("trial_name")["train_node_id"].unique()
    assert all(len(n) == 1 for n in nodes)  # a trial stays where it started
    assert len({n[0] for n in nodes}) == 2  # and the two trials did not share a node
    assert {n[0] for n in nodes} == {node.node_id for node in cluster.list_all_nodes()}
