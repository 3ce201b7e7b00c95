"""Faults with measured outcomes: a trial resumes from its last checkpoint, never from step 0, and its
rows equal those of a run without the fault (docs/reliability.md records what these runs measured).

Sweeps of configs/smoke.yaml (2 trials, ~10 optimizer steps each, evaluated at step 0 and every quarter
epoch, DeepSpeed checkpoints at each evaluation), run as a user runs them (``python jobs/scale_sweep.py``,
each in a session of its own):
  clean         no fault: the recorded values the others are compared with;
  faulted       trials one after the other, with two faults. Worker kill: SIGKILL of one Ray Train
                worker after the first trial's second row; Ray Train restarts the worker group from
                the trial's last checkpoint (checkpointing.max_failures). Driver kill: SIGKILL of the
                driver and all it started once the second trial has its first trained evaluation,
                then the same command again: the finished trial is not rerun, the cut one continues
                from its checkpoint, no step reaches Tune twice;
  node removal  ray.cluster_utils.Cluster.remove_node under the node training the trial.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "checkpointing.enabled=true",
    "checkpointing.max_failures=2",
    "data.synthetic.preference_pairs=192",
    "data.synthetic.eval_prompts=64",
    "evaluation.fractions_per_epoch_1=4",
]
ONE_AT_A_TIME = "sweep.max_concurrent_trials=1"  # the driver kill: one trial is finished when the second is cut
COMPARED = ["loss", "chosen_log_ratio", "rejected_log_ratio", "kl", "win_rate"]


def start(storage: Path, name: str, log: Path, *extra: str, analysis: bool = False) -> subprocess.Popen:
    """The sweep as a user starts it, in a session of its own (so that it and all it starts can be killed)."""
    sets = [f"--set={o}" for o in [f"storage={storage}", f"name={name}", *OVERRIDES, *extra]]
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(ROOT / ".torch_extensions")}
    env.pop("RAY_ADDRESS", None)
    # --verbose: the workers' "resumed <trial> from its checkpoint at step N" lines on the console (log), as
    # the assertions read them; without it they are in <experiment>/logs/<run>/workers.log (sweep/console.py).
    options = ["--verbose"] + ([] if analysis else ["--no-analysis"])
    return subprocess.Popen(
        [sys.executable, "jobs/scale_sweep.py", "--config", "configs/smoke.yaml", *options, *sets],
        cwd=ROOT,
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, log: Path, timeout: float = 900) -> float:
    started = time.time()
    assert process.wait(timeout) == 0, log.read_text()[-5000:]
    return time.time() - started


def sweep_seconds(log: Path) -> list[int]:
    """What each run in ``log`` said its sweep (stages excluded) took."""
    return [int(s) for s in re.findall(r"sweep finished in (\d+) s", log.read_text())]


def experiment(storage: Path, name: str) -> Path:
    (found,) = storage.glob(f"{name}-*")
    return found


def wait_for(condition, what: str, process: subprocess.Popen, log: Path, timeout: float = 600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        assert process.poll() is None, f"the sweep ended before {what}:\n{log.read_text()[-5000:]}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-5000:]}")


def session_processes(session: int) -> dict[int, str]:
    """pid -> command line of the processes in a session."""
    listing = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in listing.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and int(parts[1]) == session:
            found[int(parts[0])] = parts[2] if len(parts) == 3 else ""
    return found


def rows(path: Path) -> pd.DataFrame:
    """Every row file of an experiment (not results.parquet: the files are what was reported)."""
    frame = pd.DataFrame([json.loads(p.read_text()) for p in sorted(path.glob("rows/*/*.json"))])
    return frame.sort_values(["beta", "step"]).reset_index(drop=True)


def assert_same_rows(faulted: pd.DataFrame, clean: pd.DataFrame) -> None:
    """The same steps, each once, and the uninterrupted run's values (none lost, none duplicated)."""
    assert faulted.groupby("beta")["step"].apply(list).to_dict() == clean.groupby("beta")["step"].apply(list).to_dict()
    assert len(clean) == 2 * 5  # both trials, evaluated at 0, 1/4, 1/2, 3/4 and 1 epoch
    for column in COMPARED:  # recorded values of the uninterrupted run, to floating-point tolerance
        pd.testing.assert_series_equal(faulted[column], clean[column], rtol=1e-5, atol=1e-6, check_names=False)


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("resume")  # shared: the later sweeps reuse the first one's stages


@pytest.fixture(scope="module")
def clean(storage):
    log = storage / "clean.log"
    seconds = finish(start(storage, "resume-clean", log), log)
    seconds = sweep_seconds(log)[-1]
    print(f"clean sweep: {seconds} s (its stages included)")
    return rows(experiment(storage, "resume-clean")), seconds


@pytest.fixture(scope="module")
def faulted(storage, clean):
    """One sweep, trials one after the other, with two faults: a Ray Train worker of the first trial is
    SIGKILLed after that trial's second row; the driver and all it started are SIGKILLed once the second
    trial has its first trained evaluation, and the same command is run again."""
    log = storage / "faulted.log"
    name = "resume-faulted"
    process = start(storage, name, log, ONE_AT_A_TIME)
    started = time.time()
    last = f"step_{clean[0]['step'].max():06d}.json"

    def trials() -> list[Path]:
        return sorted(storage.glob(f"{name}-*/rows/*"), key=lambda d: min(p.stat().st_mtime for p in d.glob("*.json")))

    # Once the first trial has a second row, it has an engine checkpoint past step 0 (saved before the hand-over).
    wait_for(lambda: (t := trials()) and len(list(t[0].glob("*.json"))) >= 2, "a second row of the first trial", process, log)
    workers = wait_for(
        lambda: [pid for pid, args in session_processes(process.pid).items() if "RayTrainWorker" in args],
        "a Ray Train worker",
        process,
        log,
    )
    os.kill(workers[0], signal.SIGKILL)
    worker_killed_at = time.time() - started

    def second_trial_cut():
        found = trials()
        finished = [d for d in found if (d / last).exists()]
        cut = [d for d in found if len(list(d.glob("*.json"))) >= 2 and d not in finished]
        return (finished[0], cut[0]) if finished and cut else None

    finished, cut = wait_for(second_trial_cut, "the second trial's first trained evaluation", process, log, timeout=900)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and all it started (its local Ray instance)
    process.wait()
    driver_killed_at = time.time() - started
    first_run = log.read_text()
    deadline = time.time() + 60
    while session_processes(process.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not session_processes(process.pid), session_processes(process.pid)
    before = {p: p.read_bytes() for p in sorted((finished.parent).glob("*/*.json"))}

    rerun = finish(start(storage, name, log, ONE_AT_A_TIME), log)
    print(
        f"worker kill at {worker_killed_at:.0f} s, driver kill at {driver_killed_at:.0f} s (stages included); "
        f"rerun {rerun:.0f} s (sweep {sweep_seconds(log)[-1]} s) vs clean sweep {clean[1]} s"
    )
    return {
        "path": experiment(storage, name),
        "first_run": first_run,
        "rerun": log.read_text()[len(first_run) :],
        "finished": finished,
        "cut": cut,
        "before": before,
    }


def test_a_killed_training_worker_resumes_from_the_last_checkpoint(faulted, clean):
    first = faulted["finished"].name  # the trial whose worker was killed, finished before the driver kill
    resumed = [int(s) for s in re.findall(rf"resumed {re.escape(first)} from its checkpoint at step (\d+)", faulted["first_run"])]
    assert resumed and min(resumed) > 0, faulted["first_run"][-5000:]  # from its checkpoint, not from step 0
    mine = rows(faulted["path"])
    beta = json.loads(next(faulted["finished"].glob("*.json")).read_text())["beta"]
    pd.testing.assert_frame_equal(
        mine[mine["beta"] == beta][COMPARED].reset_index(drop=True),
        clean[0][clean[0]["beta"] == beta][COMPARED].reset_index(drop=True),
        rtol=1e-5,
        atol=1e-6,
    )


def test_a_killed_driver_and_rerun_continue_the_sweep_without_reporting_a_step_twice(faulted, clean):
    path, output, cut = faulted["path"], faulted["rerun"], faulted["cut"]
    # Rows written before the kill are untouched (not reported again, not recomputed).
    assert all(p.read_bytes() == data for p, data in faulted["before"].items())
    assert f"resumed {faulted['finished'].name} " not in output  # the finished trial did not train again
    resumed = [int(s) for s in re.findall(rf"resumed {re.escape(cut.name)} from its checkpoint at step (\d+)", output)]
    assert resumed and resumed[0] > 0, output[-5000:]
    # Tune saw each step once: the trials' Tune results, across both runs.
    for result_file in (path / "tune").glob("*/result.json"):
        steps = [json.loads(line)["step"] for line in result_file.read_text().splitlines() if line.strip()]
        assert len(steps) == len(set(steps)), (result_file, steps)
    assert_same_rows(rows(path), clean[0])
    assert sorted(pd.read_parquet(path / "results.parquet")["step"]) == sorted(clean[0]["step"])


def test_a_removed_node_moves_its_trial_to_the_remaining_node(storage, clean):
    """ray.cluster_utils.Cluster: a head without CPUs and two 6-CPU nodes (one trial fits a node). The
    node training the trial is removed after its second row: the trial resumes on the other node."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=6)
        cluster.wait_for_nodes()
        log = storage / "node-removal.log"
        env = {**os.environ, "RAY_ADDRESS": cluster.address, "TORCH_EXTENSIONS_DIR": str(ROOT / ".torch_extensions")}
        sets = [f"--set={o}" for o in [f"storage={storage}", "name=resume-node-removal", "train.betas={dpo: [0.1]}", *OVERRIDES]]
        process = subprocess.Popen(
            # --verbose: the "resumed ... from its checkpoint" lines are read from the console (see start()).
            [sys.executable, "jobs/scale_sweep.py", "--config", "configs/smoke.yaml", "--verbose", "--no-analysis", *sets],
            cwd=ROOT,
            env=env,
            stdout=log.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        row_files = wait_for(
            lambda: [fs for d in storage.glob("resume-node-removal-*/rows/*") if len(fs := sorted(d.glob("*.json"))) >= 2],
            "a second row",
            process,
            log,
        )
        training_node = json.loads(row_files[0][-1].read_text())["train_node_id"]
        (node,) = [n for n in cluster.list_all_nodes() if n.node_id == training_node]
        assert node is not cluster.head_node
        cluster.remove_node(node)
        finish(process, log)
        output = log.read_text()
        resumed = [int(s) for s in re.findall(r"resumed \S+ from its checkpoint at step (\d+)", output)]
        assert resumed and min(resumed) > 0, output[-5000:]
        faulted = rows(experiment(storage, "resume-node-removal"))
        assert set(faulted["train_node_id"]) == {
            training_node,
            next(n.node_id for n in cluster.list_all_nodes() if n is not cluster.head_node),
        }
        reference = clean[0][clean[0]["beta"] == 0.1].reset_index(drop=True)
        assert faulted["step"].tolist() == reference["step"].tolist()
        for column in COMPARED:
            pd.testing.assert_series_equal(faulted[column], reference[column], rtol=1e-5, atol=1e-6, check_names=False)
        print(f"node removal: resumed at step(s) {resumed}; sweep {sweep_seconds(log)[-1]} s (stages from the cache)")
    finally:
        cluster.shutdown()


def test_a_trial_whose_loss_is_not_finite_fails_alone_and_the_report_says_why(storage):
    """beta = 1e300 overflows float32 (beta * h is inf or NaN from the first step): that trial fails naming
    the step and its diagnostics; the other trial completes; the sweep ends FAILED with both in the report.
    With checkpointing.max_failures 2, Ray Train and Tune retry the failed trial, and each retry raises the
    recorded divergence again before loading a model (it would diverge again from the same checkpoint)."""
    log = storage / "nan.log"
    process = start(storage, "resume-nan", log, "train.betas={dpo: [0.1, 1.0e300]}", "checkpointing.enabled=false", analysis=True)
    assert process.wait(900) == 1, log.read_text()[-5000:]
    path = experiment(storage, "resume-nan")
    results = pd.read_parquet(path / "results.partial.parquet")
    reasons = results.groupby("beta")["stop_reason"].first()
    assert reasons[0.1] == "completed" and results[results["beta"] == 0.1]["step"].max() > 0
    assert reasons[1e300].startswith("error:") and re.search(r"step 1: loss( and \w+)* not finite", reasons[1e300]), reasons[1e300]
    assert reasons[1e300].endswith("(not trained again: from the same checkpoint it would diverge again)"), reasons[1e300]
    assert results[results["beta"] == 1e300]["step"].tolist() == [0]  # its step-0 evaluation, nothing after
    report = (path / "report.md").read_text()
    assert "## Failed trials" in report and re.search(r"step 1: loss( and \w+)* not finite", report)
