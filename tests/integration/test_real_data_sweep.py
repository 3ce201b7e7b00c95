"""The README's real-data commands, run as written: jobs/make_local_example.py (a saved GPT-NeoX and
TL;DR-format files), jobs/serve_local_judge.py (an OpenAI-compatible judge on 127.0.0.1) and
jobs/scale_sweep.py --config configs/local_tldr.yaml, with a planted API key that must appear in no file.

    .venv/bin/python -m pytest -q tests/integration/test_real_data_sweep.py

Every command runs in a directory of its own holding links to the repository's jobs/ and configs/,
so each relative path of configs/local_tldr.yaml (runs/local-example/..., storage runs) names a file
in there and nothing points the sweep at an absolute path. The one change to the README's commands:
the judge listens on a free port instead of 8765 (a fixed port may be taken on a shared machine), so
the sweep gets `--set evaluation.judge.base_url=` that port. The sweeps share that directory's
storage, so the outage sweep reuses the first one's stages.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from local_ray_cluster import free_ports

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PLANTED_KEY = "sk-overopt-test-PLANTED-7d1f0c9e"
EVAL_PROMPTS = 64  # configs/local_tldr.yaml data.eval.limit
REQUESTS_PER_EVALUATION = 2 * EVAL_PROMPTS  # the LLM judge asks about each prompt in both orders


def command_env() -> dict[str, str]:
    # The config's api_key_env carries the planted key. DeepSpeed's compiled CPU ops are kept with the
    # repository (sweep/run.py defaults them to the working directory's .torch_extensions/).
    return {
        **os.environ,
        "LOCAL_JUDGE_API_KEY": PLANTED_KEY,
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions")),
    }


def run_command(work: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``python <args>`` in ``work``, in a session of its own: past ``timeout`` it is killed with
    everything it started (a sweep's Ray instance) and the test fails with what it printed."""
    command = [sys.executable, *args]
    process = subprocess.Popen(
        command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=command_env(), start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(args)} ran past {timeout:.0f} s; its output:\n{stdout[-4000:]}\n{stderr[-6000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The directory the README's commands run in, its inputs written by the README's first command."""
    work = tmp_path_factory.mktemp("real")
    for name in ("jobs", "configs"):
        (work / name).symlink_to(ROOT / name)
    made = run_command(work, "jobs/make_local_example.py", timeout=120)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    return work


def run_local_tldr(work: Path, base_url: str, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The README's sweep command, pointed at the judge's port (a sweep takes a few minutes here)."""
    sets = [f"--set=evaluation.judge.base_url={base_url}", *(f"--set={item}" for item in overrides)]
    return run_command(work, "jobs/scale_sweep.py", "--config", "configs/local_tldr.yaml", *sets, timeout=timeout)


@pytest.fixture(scope="module")
def judge_url(work):
    """jobs/serve_local_judge.py, as the README starts it, until the module's tests are done."""
    port = free_ports(1)[0]
    server = subprocess.Popen(
        [sys.executable, "jobs/serve_local_judge.py", "--port", str(port)],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=command_env(),
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as answer:
                assert json.load(answer)["data"][0]["id"] == "local-judge"  # the model configs/local_tldr.yaml asks for
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                if server.poll() is None:
                    os.killpg(server.pid, signal.SIGKILL)
                pytest.fail(f"jobs/serve_local_judge.py did not answer on port {port}:\n{server.communicate()[0][-3000:]}")
            time.sleep(0.2)
    yield base_url
    os.killpg(server.pid, signal.SIGINT)  # what Ctrl-C does: the script stops its server and exits 0
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.fixture(scope="module")
def sweep(work, judge_url):
    result = run_local_tldr(work, judge_url)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [experiment] = (work / "runs").glob("local-tldr-*")
    return experiment, result


def test_the_readme_checks_run_as_written_in_the_example_directory(work):
    """The README's `jobs/check_data.py data/comparisons.jsonl --format tldr` (on the example's
    comparisons, put where the command names them) and the --dry-run of the local config: both read
    relative paths from the directory they run in, and neither writes anything."""
    (work / "data").mkdir(exist_ok=True)
    (work / "data" / "comparisons.jsonl").write_bytes((work / "runs" / "local-example" / "comparisons.jsonl").read_bytes())
    checked = run_command(work, "jobs/check_data.py", "data/comparisons.jsonl", "--format", "tldr", timeout=120)
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert checked.stdout.startswith("OK pairs table from data/comparisons.jsonl") and "3000 pairs kept" in checked.stdout, checked.stdout
    before = sorted(str(p) for p in (work / "runs").rglob("*"))
    planned = run_command(work, "jobs/scale_sweep.py", "--config", "configs/local_tldr.yaml", "--dry-run", timeout=300)
    assert planned.returncode == 0, planned.stdout[-3000:] + planned.stderr[-3000:]
    assert "2 trials" in planned.stdout and "Traceback" not in planned.stderr
    assert sorted(str(p) for p in (work / "runs").rglob("*")) == before


def test_relative_paths_resolve_in_the_directory_the_command_ran_in(work, sweep):
    experiment, _ = sweep
    example = work.resolve() / "runs" / "local-example"
    assert experiment.parent == work / "runs"  # storage: runs, under the command's directory
    saved = yaml.safe_load((experiment / "config.yaml").read_text())
    assert saved["models"]["sizes"] == [str(example / "model")]
    assert saved["data"]["sft"]["path"] == str(example / "tldr_sft" / "train.jsonl")
    assert saved["data"]["pairs"]["path"] == str(example / "comparisons.jsonl")
    assert saved["data"]["eval"]["path"] == str(example / "tldr_sft" / "validation.jsonl")
    assert saved["storage"] == str(work.resolve() / "runs")


def test_two_trials_evaluated_by_the_http_judge(sweep):
    experiment, _ = sweep
    results = pd.read_parquet(experiment / "results.parquet")
    assert sorted(results["beta"].unique()) == [0.1, 1.0] and results["trial_name"].nunique() == 2
    assert (results["judged"] + results["invalid_judgements"] == EVAL_PROMPTS).all()
    # Two requests per prompt (both orders), every one answered in the end (the outage test counts them at the
    # server): on a loaded machine a request can pass the config's 10 s timeout and be retried, which adds a
    # request and loses no judgement.
    assert (results["judge_requests"] == REQUESTS_PER_EVALUATION + results["judge_retries"]).all()
    assert (results["judge_failures"] == 0).all()
    assert results["kl"].iloc[0] == pytest.approx(0.0, abs=1e-6)  # step 0: the policy is the reference


def test_audit_files_hold_every_judgement(sweep):
    experiment, _ = sweep
    results = pd.read_parquet(experiment / "results.parquet")
    for trial, rows in results.groupby("trial_name"):
        files = sorted((experiment / "audit" / trial).glob("step_*.parquet"))
        assert len(files) == len(rows)
        audit = pd.read_parquet(files[-1])
        assert len(audit) == EVAL_PROMPTS
        assert {"prompt", "response", "reference_response", "raw_judgement", "outcome"} <= set(audit.columns)
        assert audit["raw_judgement"].str.contains("Preferred:").all()
        assert audit["reference_response"].str.strip().str.len().gt(0).all()  # the dataset's summaries


def test_report_shows_the_data_and_judged_examples(sweep):
    experiment, _ = sweep
    report = (experiment / "report.md").read_text()
    assert "## Data" in report and "comparisons.jsonl" in report and "0 skipped" in report
    assert "## Judged examples" in report and report.count("Preferred:") >= 2
    assert (experiment / "config.yaml").exists()


def test_the_api_key_is_written_nowhere(sweep):
    experiment, result = sweep
    assert PLANTED_KEY not in result.stdout + result.stderr
    leaked = [path for path in experiment.parent.parent.rglob("*") if path.is_file() and PLANTED_KEY.encode() in path.read_bytes()]
    assert leaked == []
    assert "LOCAL_JUDGE_API_KEY" in (experiment / "config.yaml").read_text()  # only the variable's name


def test_a_judge_outage_mid_sweep_fails_its_trials_visibly_and_never_becomes_a_win_rate(work, sweep):
    """The judge answers one evaluation (64 prompts x both orders), then every request gets 503: the
    evaluations that follow fail their trials with the endpoint and the cause in errors/, the results'
    stop reasons and the report; no row is written for them. The stages come from the first sweep's cache."""
    from overopt.evaluate.local_judge import JudgeServer, always

    judge = JudgeServer(answer=always("A")).start()

    def outage_after_one_evaluation():
        while len(judge.records) < REQUESTS_PER_EVALUATION and not stopped.is_set():
            time.sleep(0.05)
        judge.outage(True)

    stopped = threading.Event()
    watcher = threading.Thread(target=outage_after_one_evaluation, daemon=True)
    watcher.start()
    try:
        result = run_local_tldr(
            work, judge.base_url, "name=local-tldr-outage", "evaluation.judge.max_retries=1", "evaluation.judge.timeout_s=5"
        )
    finally:
        stopped.set()
        judge.stop()
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    [experiment] = (work / "runs").glob("local-tldr-outage-*")
    results = pd.read_parquet(experiment / "results.partial.parquet")
    assert len(results) == 1 and results["win_rate"].notna().all()  # the one evaluation the judge answered
    assert (results["judge_requests"] == REQUESTS_PER_EVALUATION).all() and (results["judge_failures"] == 0).all()
    # The key reached the server as a bearer token, and the rows count what the server answered.
    assert all(record.authorization == f"Bearer {PLANTED_KEY}" for record in judge.records)
    errors = {e["trial_name"]: e["message"] for e in (json.loads(p.read_text()) for p in (experiment / "errors").glob("*.json"))}
    assert len(errors) == 2  # both trials: the first after its step-0 row, the second at its step 0
    for message in errors.values():
        assert "JudgeUnavailable" in message and judge.base_url in message and "HTTP 503" in message
    assert results["stop_reason"].iloc[0] == f"error: {errors[results['trial_name'].iloc[0]]}"
    report = (experiment / "report.md").read_text()
    assert "## Failed trials" in report and report.count("JudgeUnavailable") >= 2
    statuses = judge.statuses()
    assert statuses[:REQUESTS_PER_EVALUATION] == [200] * REQUESTS_PER_EVALUATION and set(statuses[REQUESTS_PER_EVALUATION:]) == {503}
