"""benchmarks/peers.py --quick: a row per configuration with positive pairs/s, and the first-step DPO loss
of overopt's step (ZeRO-0 and ZeRO-3) equal to the plain PyTorch loop's (and TRL's, where installed)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration  # starts a local Ray instance and one Ray Train fit (DeepSpeed ZeRO-0 and ZeRO-3)
def test_the_quick_peer_benchmark_prints_a_row_per_configuration_and_the_losses_agree(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--quick", "--work", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    out = done.stdout

    losses = {line.split()[1].rstrip(":"): line.split() for line in out.splitlines() if line.startswith("LOSS ")}
    trl_installed = importlib.util.find_spec("trl") is not None
    assert set(losses) == {"plain", "overopt-1-0", "overopt-1-3"} | ({"trl"} if trl_installed else set())
    for key, words in losses.items():
        assert float(words[-1]) <= 1e-5, f"{key}: first-step loss {words[2]} differs from the plain loop's by {words[-1]}"

    table = out[out.index("| config |") :].splitlines()
    assert table[1] == "|---|---|---|---|---|"
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table[2:] if line.startswith("| "))}
    assert set(rows) == {"plain PyTorch loop", "TRL DPOTrainer", "overopt ZeRO-0, 1 worker", "overopt ZeRO-3, 1 worker"}
    for name, cells in rows.items():
        if name == "TRL DPOTrainer" and not trl_installed:
            assert cells[1] == "-" and cells[2] == "not installed (pip install -e '.[bench]')"
            continue
        assert float(cells[1]) > 0, f"{name}: {cells}"
    assert rows["plain PyTorch loop"][3] == "1.00"
    assert "command: python benchmarks/peers.py --quick" in out
