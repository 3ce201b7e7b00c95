"""benchmarks/gpu_check.py runs on CPU (a tiny shape, gloo, fp32): the prepared GPU check cannot rot
while no GPU is at hand to run it."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_runs_on_cpu_and_prints_its_table(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--work", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    table = done.stdout[done.stdout.index("GPU CHECK") :].splitlines()
    assert table[1:3] == ["| check | result |", "|---|---|"]
    rows = {name: value for name, value in (line.strip("| ").split(" | ", 1) for line in table[3:] if line.startswith("| "))}
    assert rows["device"].startswith("CPU (gloo, process group of 1)")
    assert "fp32, ZeRO-3, RMSprop" in rows["model"]
    assert "8 pairs of 24 + 8 tokens in micro-batches of 4" in rows["DPO step"]
    assert float(rows["training tokens/s"]) > 0
    assert rows["peak memory"].startswith("not measured on CPU (the plan: ")
    assert rows["vLLM generation"].startswith("skipped: ") and rows["HF vs vLLM log-probs"].startswith("skipped: ")
    assert (tmp_path / "policy" / "model.safetensors").exists()  # the trained policy, consolidated for vLLM
