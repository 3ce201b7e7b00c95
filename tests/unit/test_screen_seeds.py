"""jobs/screen.py chooses recipes on screening seeds only: seeds below 100 are for reported runs."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _screen():
    spec = importlib.util.spec_from_file_location("screen", ROOT / "jobs" / "screen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_screen_on_reported_seeds_is_refused_before_anything_runs(capsys, tmp_path):
    screen = _screen()
    config = str(ROOT / "configs" / "embedded.yaml")
    assert screen.main(["--config", config, "--set", f"storage={tmp_path}"]) == 2  # the config's seed 0, trial seed 0
    error = capsys.readouterr().err
    assert "seed=0, trial seed 0" in error and "--set seed=100 --seeds 100" in error
    assert screen.main(["--config", config, "--set", "seed=100", "--seeds", "7", "--set", f"storage={tmp_path}"]) == 2
    assert "(trial seed 7)" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was built or written


def test_screening_seeds_pass_and_the_rule_can_be_lifted():
    screen = _screen()
    assert screen.reported_seeds_problem(100, [100, 101]) is None
    assert screen.reported_seeds_problem(0, [0]) is not None
