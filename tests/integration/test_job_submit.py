"""configs/smoke.yaml submitted with `ray job submit` to a real two-node Ray cluster on this machine.

The cluster is the one docs/clusters.md has a newcomer start by hand: `ray start --head` with the
dashboard on 127.0.0.1 and token authentication, plus a second node (`ray start --address`), each
with its own ports and --temp-dir so it never meets another Ray instance on the machine (the
ray.init() of the other integration tests in the same pytest session included). Each node declares
5 logical CPUs: one whole trial (its driver, 2 Train workers and 2 evaluation tasks) and not two,
so the smoke sweep's 2 trials train on different nodes.

Stopping only what the test started: `ray stop` has no address option and ends every Ray process of
the user on the machine, so it is never called. Each `ray start` runs with --block instead: it owns
the processes of its node and, on SIGTERM, stops them itself. Whatever is left afterwards of the
processes recorded under those two `ray start` processes (or naming this cluster's temp dir on their
command line) is killed by PID.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else shutil.which("ray")
CPUS_PER_NODE = 5  # one trial: its driver (1) + 2 Train workers (1 each) + 2 evaluation tasks (1 each)
OBJECT_STORE_BYTES = 1 << 30  # per node; the smoke sweep moves a few MB
JOB_TIMEOUT_S = 1200
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def storage_override(storage: Path) -> str:
    """The one place the sweep's storage location is set (the config key `storage`)."""
    return f"storage={storage}"


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def base_env(home: Path | None = None) -> dict[str, str]:
    """This process's environment without any Ray address or authentication setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"))}
    env["PATH"] = f"{Path(RAY).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` in the entrypoint = this venv's
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if home is not None:
        env["HOME"] = str(home)
    return env


def run_ray(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


class LocalCluster:
    """A head and one worker node started with `ray start --block`, token authentication on."""

    def __init__(self, base: Path, cpus_per_node: int = CPUS_PER_NODE, nodes: int = 2):
        self.base, self.cpus_per_node, self.nodes = base, cpus_per_node, nodes
        token = base / "auth_token"  # a fresh token of our own: ~/.ray/auth_token is never read or written
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {**base_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        self.env["TORCH_EXTENSIONS_DIR"] = os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
        self.env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # nothing to drain at teardown
        self.processes: dict[str, subprocess.Popen] = {}
        self.gcs_address = self.dashboard = ""
        self.node_ids: dict[str, str] = {}  # "head" / "worker" -> Ray node id

    def _node_ports(self) -> list[str]:
        names = [
            "node-manager-port",
            "object-manager-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        ]
        return [f"--{name}={port}" for name, port in zip(names, free_ports(len(names)))]

    def _start(self, name: str, args: list[str]) -> None:
        temp_dir = self.base / name[0]  # short: Ray's unix sockets live under it (108-byte path limit)
        with open(self.base / f"{name}.log", "w") as log:  # the child keeps its own copy of the descriptor
            self.processes[name] = subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--block",
                    f"--temp-dir={temp_dir}",
                    f"--num-cpus={self.cpus_per_node}",
                    "--num-gpus=0",
                    f"--object-store-memory={OBJECT_STORE_BYTES}",
                    "--disable-usage-stats",
                    *self._node_ports(),
                    *args,
                ],
                env=self.env,
                cwd=self.base,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        address_file = temp_dir / "ray_current_cluster"  # written by `ray start` once the node is up
        deadline = time.time() + 180
        while not address_file.exists():
            if self.processes[name].poll() is not None or time.time() > deadline:
                raise RuntimeError(f"`ray start` ({name}) did not come up:\n{self.log(name)}")
            time.sleep(1)
        self.gcs_address = self.gcs_address or address_file.read_text().strip()

    def log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text(errors="replace")[-8000:]

    def start(self) -> None:
        gcs, dashboard, client = free_ports(3)
        self.dashboard = f"http://127.0.0.1:{dashboard}"
        self._start(
            "head",
            [
                "--head",
                f"--port={gcs}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                f"--ray-client-server-port={client}",
            ],
        )
        if self.nodes == 2:
            self._start("worker", [f"--address={self.gcs_address}"])
        deadline = time.time() + 120
        while True:
            nodes = self.alive_nodes()
            if len(nodes) == self.nodes:
                break
            if time.time() > deadline:
                raise RuntimeError(f"the cluster has {len(nodes)} alive nodes, expected {self.nodes}:\n{self.log('head')}")
            time.sleep(2)
        self.node_ids = {("head" if node["is_head_node"] else "worker"): node["node_id"] for node in nodes}

    def alive_nodes(self) -> list[dict]:
        done = run_ray(["list", "nodes", "--address", self.gcs_address, "--format", "json", "--filter", "state=ALIVE"], self.env)
        return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []

    def _ours(self) -> list[psutil.Process]:
        """Every live process of this cluster: under our `ray start`s, or naming our temp dir."""
        found = {}
        for popen in self.processes.values():
            try:
                root = psutil.Process(popen.pid)
                for proc in [root, *root.children(recursive=True)]:
                    found[proc.pid] = proc
            except psutil.NoSuchProcess:
                pass
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.base) in " ".join(proc.info["cmdline"] or []):
                found.setdefault(proc.pid, proc)
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> list[str]:
        """Stop both nodes; returns what had to be killed by PID afterwards (empty when `ray start` cleaned up)."""
        ours = self._ours()
        for name in ("worker", "head"):  # SIGTERM: `ray start --block` stops the processes it started
            popen = self.processes.get(name)
            if popen and popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
                try:
                    popen.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait()
        _, alive = psutil.wait_procs(ours, timeout=15)
        leftovers = [f"{p.pid} {' '.join(p.cmdline()[:2])}" for p in alive if p.is_running()]
        for proc in alive:
            try:
                proc.kill()  # psutil checks the PID still names the process recorded above
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=15)
        return leftovers


@pytest.fixture(scope="module")
def cluster():
    base = Path(tempfile.mkdtemp(prefix="ovr-", dir="/tmp"))  # short path for Ray's unix sockets
    started = LocalCluster(base)
    try:
        started.start()
        yield started
    finally:
        leftovers = started.stop()
        if leftovers:
            print(f"killed by PID after `ray start` had stopped its node: {leftovers}")
        shutil.rmtree(base, ignore_errors=True)


def submit_smoke(cluster: LocalCluster, storage: Path, timeout_s: float = JOB_TIMEOUT_S) -> dict:
    """configs/smoke.yaml submitted as a user would, waited for (at most ``timeout_s``): status, logs, seconds."""
    job_id = f"overopt-smoke-{uuid.uuid4().hex[:8]}"
    started = time.time()
    submitted = run_ray(
        [
            "job",
            "submit",
            "--address",
            cluster.dashboard,
            "--submission-id",
            job_id,
            "--no-wait",
            "--working-dir",
            ".",
            "--",
            "python",
            "jobs/scale_sweep.py",
            "--config",
            "configs/smoke.yaml",
            "--set",
            storage_override(storage),
        ],
        cluster.env,
    )
    assert submitted.returncode == 0, f"submission failed:\n{submitted.stdout}\n{submitted.stderr}"
    status = job_status(cluster, job_id)
    while status not in TERMINAL and time.time() - started < timeout_s:
        time.sleep(5)
        status = job_status(cluster, job_id)
    logs = job_logs(cluster, job_id)
    if status not in TERMINAL:
        run_ray(["job", "stop", "--address", cluster.dashboard, job_id], cluster.env)
    print(f"smoke job {job_id}: {status} after {time.time() - started:.0f} s")
    return {"id": job_id, "status": status, "logs": logs, "storage": storage, "seconds": time.time() - started}


def job_status(cluster: LocalCluster, job_id: str) -> str:
    done = run_ray(["job", "status", "--address", cluster.dashboard, "--log-color", "false", job_id], cluster.env)
    text = done.stdout + done.stderr
    # Terminal states print as "Job 'ID' succeeded" / "... failed" / "... was stopped", others as "Status for job 'ID': X".
    final = re.search(rf"Job '{re.escape(job_id)}' (succeeded|failed|was stopped)", text)
    if final:
        return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[final.group(1)]
    running = re.search(rf"Status for job '{re.escape(job_id)}': (\w+)", text)
    return running.group(1) if running else f"UNKNOWN ({text.strip()[-2000:]})"


def job_logs(cluster: LocalCluster, job_id: str) -> str:
    done = run_ray(["job", "logs", "--address", cluster.dashboard, job_id], cluster.env)
    return (done.stdout + done.stderr)[-20000:]


@pytest.fixture(scope="module")
def smoke_job(cluster, tmp_path_factory):
    """configs/smoke.yaml submitted as a user would, waited for; its status, logs and storage location."""
    return submit_smoke(cluster, tmp_path_factory.mktemp("smoke-storage").resolve())


def test_submission_without_the_token_is_refused(cluster, tmp_path):
    env = base_env(home=tmp_path)  # no RAY_AUTH_* and an empty HOME: no ~/.ray/auth_token either
    done = run_ray(["job", "submit", "--address", cluster.dashboard, "--no-wait", "--", "echo", "must-not-run"], env)
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"a submission without the token was accepted:\n{output}"
    assert re.search(r"authentication|unauthorized", output, re.IGNORECASE), output


def test_smoke_sweep_succeeds_as_a_job(smoke_job):
    assert smoke_job["status"] == "SUCCEEDED", f"job {smoke_job['id']} ended {smoke_job['status']}; its logs:\n{smoke_job['logs']}"


def test_results_are_at_the_storage_location(smoke_job):
    found = sorted(Path(smoke_job["storage"]).glob("smoke-*/results.parquet"))
    assert len(found) == 1, f"expected one {smoke_job['storage']}/smoke-*/results.parquet, found {found}; job logs:\n{smoke_job['logs']}"
    results = pd.read_parquet(found[0])
    assert results["trial_name"].nunique() == 2 and sorted(results["beta"].unique()) == [0.1, 1.0]
    assert (results["step"] == 0).sum() == 2, "each trial evaluates the reference at step 0"


def test_the_two_trials_trained_on_the_two_nodes(smoke_job, cluster):
    found = sorted(Path(smoke_job["storage"]).glob("smoke-*/results.parquet"))
    assert found, f"no results; job logs:\n{smoke_job['logs']}"
    results = pd.read_parquet(found[0])
    assert "train_node_id" in results.columns, f"results have no train_node_id column: {list(results.columns)}"
    per_trial = results.groupby("trial_name")["train_node_id"].unique()
    assert all(len(ids) == 1 for ids in per_trial), f"a trial's rank 0 moved between nodes: {per_trial.to_dict()}"
    nodes = {ids[0] for ids in per_trial}
    assert nodes == set(cluster.node_ids.values()), (
        f"trials trained on {nodes}; the cluster's nodes are {cluster.node_ids}; job logs:\n{smoke_job['logs']}"
    )


@pytest.mark.parametrize("cpus", [2, 4, 6])
def test_a_sweep_on_a_small_cluster_finishes_or_says_why_it_cannot_never_hangs(cpus, tmp_path):
    """One-node `ray start` clusters of 2, 4 and 6 CPUs. A smoke trial holds 5 CPUs (its driver and 2
    evaluation bundles, reserved together, + 2 Train workers): on 2 and 4 CPUs it can never be placed and
    the job fails within a minute saying so; on 6, where two trials at once would each reserve 3 CPUs
    and wait forever for their workers, the sweep runs one trial at a time and finishes."""
    base = Path(tempfile.mkdtemp(prefix="ovs-", dir="/tmp"))
    small = LocalCluster(base, cpus_per_node=cpus, nodes=1)
    try:
        small.start()
        job = submit_smoke(small, tmp_path.resolve(), timeout_s=90 if cpus < 5 else JOB_TIMEOUT_S)
    finally:
        small.stop()
        shutil.rmtree(base, ignore_errors=True)
    if cpus < 5:
        assert job["status"] == "FAILED" and job["seconds"] < 90, f"{job['status']} after {job['seconds']:.0f} s:\n{job['logs']}"
        assert f"one trial needs CPU 5 (the cluster has {cpus})" in job["logs"], job["logs"]
        assert not list(tmp_path.glob("cache/*")), "nothing was built before the refusal"
    else:
        assert job["status"] == "SUCCEEDED", f"{job['status']} after {job['seconds']:.0f} s:\n{job['logs']}"
        results = pd.read_parquet(next(tmp_path.glob("smoke-*/results.parquet")))
        assert results["trial_name"].nunique() == 2
        # One trial at a time: the second started after the first's last row.
        spans = results.groupby("trial_name").agg(started=("trial_started_at", "min"), ended=("reported_at", "max")).sort_values("started")
        assert spans["started"].iloc[1] >= spans["ended"].iloc[0], spans
