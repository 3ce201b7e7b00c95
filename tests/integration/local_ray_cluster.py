"""Real Ray clusters on this machine for the integration tests: `ray start` nodes of their own.

Each node runs `ray start --block` with its own ports and --temp-dir, so it never meets another Ray
instance on the machine (the ray.init() of the other integration tests in the same pytest session
included), and token authentication on, as docs/clusters.md sets a cluster up.

Stopping only what a test started: `ray stop` has no address option and ends every Ray process of
the user on the machine, so it is never called. On SIGTERM, `ray start --block` stops the processes of
its node itself; whatever is left afterwards of the processes recorded under the `ray start`
processes (or naming the cluster's temp dir on their command line: the nodes an autoscaler launched
included) is killed by PID.

    cluster = LocalCluster(Path(tempfile.mkdtemp(dir="/tmp")), cpus_per_node=5, nodes=2)
    cluster.start(); ...; cluster.stop()
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]

RAY = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else shutil.which("ray")
OBJECT_STORE_BYTES = 1 << 30  # per node; the smoke sweep moves a few MB


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
    """A head and ``nodes - 1`` worker nodes started with `ray start --block`, token authentication on.

    ``gpus_per_node`` declares GPUs that need not exist (scheduling tests). ``head_cpus`` (default
    ``cpus_per_node``) and ``head_args`` / ``head_env`` shape the head: an
    autoscaling head has 0 CPUs, ``--autoscaling-config`` and ``RAY_FAKE_CLUSTER=1`` (Ray's fake
    multi-node provider: the autoscaler starts its worker nodes as processes on this machine)."""

    def __init__(
        self,
        base: Path,
        cpus_per_node: int = 5,
        nodes: int = 2,
        gpus_per_node: int = 0,
        head_cpus: int | None = None,
        head_args: tuple[str, ...] = (),
        head_env: dict[str, str] | None = None,
    ):
        self.base, self.cpus_per_node, self.nodes, self.gpus_per_node = base, cpus_per_node, nodes, gpus_per_node
        self.head_cpus = cpus_per_node if head_cpus is None else head_cpus
        self.head_args, self.head_env = list(head_args), dict(head_env or {})
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

    def _start(self, name: str, args: list[str], cpus: int, env: dict[str, str]) -> None:
        temp_dir = self.base / name[0]  # short: Ray's unix sockets live under it (108-byte path limit)
        # Ray ends idle worker processes once a node has more workers than CPUs; a smoke trial's actors alone
        # are that many on these 5-6 CPU nodes, so each evaluation's tasks would start processes that import
        # torch again (20-45 s an evaluation on 2 cores instead of ~2 s). What the sweep sets on a local
        # instance (sweep/run.py), set here on the node's raylet; large cloud nodes never reach the limit.
        env = {"RAY_num_workers_soft_limit": str(max(4 * cpus, 24)), **env}  # >= 24: also a 0-CPU head's
        with open(self.base / f"{name}.log", "w") as log:  # the child keeps its own copy of the descriptor
            self.processes[name] = subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--block",
                    f"--temp-dir={temp_dir}",
                    f"--num-cpus={cpus}",
                    f"--num-gpus={self.gpus_per_node}",  # declared, not real: Ray schedules on them all the same
                    f"--object-store-memory={OBJECT_STORE_BYTES}",
                    "--disable-usage-stats",
                    *self._node_ports(),
                    *args,
                ],
                env=env,
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

    def start(self, gcs_port: int | None = None) -> None:
        gcs, dashboard, client = free_ports(3)
        self.dashboard = f"http://127.0.0.1:{dashboard}"
        self._start(
            "head",
            [
                "--head",
                f"--port={gcs_port or gcs}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                f"--ray-client-server-port={client}",
                *self.head_args,
            ],
            self.head_cpus,
            {**self.env, **self.head_env},
        )
        if self.nodes == 2:
            self._start("worker", [f"--address={self.gcs_address}"], self.cpus_per_node, self.env)
        deadline = time.time() + 120
        while True:
            nodes = self.alive_nodes() or []
            if len(nodes) == self.nodes:
                break
            if time.time() > deadline:
                raise RuntimeError(f"the cluster has {len(nodes)} alive nodes, expected {self.nodes}:\n{self.log('head')}")
            time.sleep(2)
        self.node_ids = {("head" if node["is_head_node"] else "worker"): node["node_id"] for node in nodes}

    def alive_nodes(self, timeout: float = 60) -> list[dict] | None:
        """The cluster's alive nodes from its own node list (`ray list nodes`), or None when the list did
        not come back (an error, or nothing within ``timeout`` seconds): on a busy 2-core machine the
        dashboard that answers it can be minutes late, which says nothing about the nodes, so callers poll again."""
        return self.alive("nodes", timeout)

    def alive(self, kind: str, timeout: float = 60) -> list[dict] | None:
        """The cluster's alive ``kind`` (nodes, actors, ...) from `ray list`, or None when it did not come back in time."""
        try:
            done = run_ray(["list", kind, "--address", self.gcs_address, "--format", "json", "--filter", "state=ALIVE"], self.env, timeout)
        except subprocess.TimeoutExpired:
            return None
        return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else None

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
