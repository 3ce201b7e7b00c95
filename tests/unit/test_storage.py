"""Storage: one location (a local path or a pyarrow filesystem URI) for everything a sweep writes."""

import pyarrow as pa
import pytest

from overopt.analysis.results import collect_results, load_results
from overopt.storage import Storage, local_directory


@pytest.fixture(params=["path", "uri"])
def store(request, tmp_path):
    location = str(tmp_path / "runs") if request.param == "path" else f"file://{tmp_path / 'runs'}"
    return Storage(location)


def test_files_round_trip_and_list(store):
    store.write_text("exp/config.yaml", "a: 1\n")
    store.write_text("exp/rows/t1/step_000002.json", "{}")
    store.write_text("exp/rows/t1/step_000000.json", "{}")
    store.write_parquet("exp/results.parquet", pa.table({"x": [1, 2]}))
    assert store.read_text("exp/config.yaml") == "a: 1\n"
    assert store.list("exp/rows", ".json", recursive=True) == ["exp/rows/t1/step_000000.json", "exp/rows/t1/step_000002.json"]
    assert store.read_parquet("exp/results.parquet").column("x").to_pylist() == [1, 2]
    assert store.exists("exp") and not store.exists("exp/nothing") and store.list("exp/nothing") == []


def test_atomic_writes_leave_no_temporary_files(store, tmp_path):
    for i in range(3):
        store.write_text("exp/results.json", str(i))
    assert store.read_text("exp/results.json") == "2"
    assert [p.name for p in (tmp_path / "runs" / "exp").iterdir()] == ["results.json"]


def test_directories_upload_and_come_back_as_local_copies(store, tmp_path):
    local = tmp_path / "model"
    local.mkdir()
    (local / "config.json").write_text("{}")
    (local / "weights.safetensors").write_bytes(b"\0" * 100)
    store.upload_dir(local, "cache/reference/tiny-1")
    copy = local_directory(store.uri("cache/reference/tiny-1"))
    assert sorted(p.name for p in __import__("pathlib").Path(copy).iterdir() if not p.name.startswith(".")) == [
        "config.json",
        "weights.safetensors",
    ]
    assert local_directory("EleutherAI/pythia-1b") == "EleutherAI/pythia-1b"  # hub names pass through


def test_uris_are_what_ray_takes(tmp_path):
    assert Storage(str(tmp_path)).uri("exp/tune") == f"{tmp_path}/exp/tune"
    assert Storage(f"file://{tmp_path}").uri("exp/tune") == f"file://{tmp_path}/exp/tune"
    assert Storage("relative/runs").uri() == str(__import__("pathlib").Path.cwd() / "relative/runs")


def _row(trial, step, epoch, **extra):
    return {
        "trial_name": trial,
        "objective": "dpo",
        "beta": 0.1,
        "size": "tiny",
        "seed": 0,
        "step": step,
        "epoch_fraction": epoch,
        "win_rate": 0.5,
        "planned_epochs": 1.0,
        **extra,
    }


def test_results_carry_stop_reasons_from_what_happened(store):
    import json

    rows = {"done": [(0, 0.0), (8, 1.0)], "stopped": [(0, 0.0), (2, 0.25), (4, 0.5)], "cut": [(0, 0.0), (2, 0.25)], "failed": [(0, 0.0)]}
    for trial, points in rows.items():
        for step, epoch in points:
            store.write_text(f"exp/rows/{trial}/step_{step:06d}.json", json.dumps(_row(trial, step, epoch)))
    store.write_text("exp/stops/stopped.json", json.dumps({"trial_name": "stopped", "step": 2, "reason": "degraded: ..."}))
    store.write_text("exp/errors/failed.json", json.dumps({"trial_name": "failed", "message": "RuntimeError: boom"}))
    frame = collect_results(store, "exp")
    reasons = frame.groupby("trial_name")["stop_reason"].first().to_dict()
    assert reasons == {"done": "completed", "stopped": "degraded: ...", "cut": "unfinished", "failed": "error: RuntimeError: boom"}
    assert len(frame) == 8
    # 184 of 184 planned steps is 1.496 of 1.5 epochs at 123 steps an epoch: finished, by the loop's own count.
    store.write_text(
        "exp/rows/rounded/step_000184.json", json.dumps(_row("rounded", 184, 184 / 123, planned_epochs=1.5, planned_steps=184))
    )
    store.write_text("exp/rows/short/step_000100.json", json.dumps(_row("short", 100, 100 / 123, planned_epochs=1.5, planned_steps=184)))
    reasons = collect_results(store, "exp").groupby("trial_name")["stop_reason"].first()
    assert reasons["rounded"] == "completed" and reasons["short"] == "unfinished"


def test_newer_rows_win_over_a_stale_results_file(store):
    import json

    store.write_text("exp/rows/a/step_000000.json", json.dumps(_row("a", 0, 0.0)))
    store.write_parquet("exp/results.parquet", pa.Table.from_pandas(collect_results(store, "exp")))
    store.write_text("exp/rows/a/step_000008.json", json.dumps(_row("a", 8, 1.0)))
    assert len(load_results(store.uri("exp"))) == 2


def test_analysing_a_directory_that_is_not_an_experiment_is_a_clear_error(tmp_path):
    """jobs/analyze.py on a directory scale_sweep did not write: exit 2 naming it, and nothing written there."""
    import subprocess
    import sys
    from pathlib import Path

    foreign = tmp_path / "my-project"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    done = subprocess.run(
        [sys.executable, "jobs/analyze.py", str(foreign)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert done.returncode == 2 and f"'{foreign}' is not an overopt experiment" in done.stderr and "Traceback" not in done.stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_a_restarted_trial_finds_its_reported_steps_and_its_complete_unevaluated_checkpoints(tmp_path):
    """What the trial driver reads at a restart: rows in storage are reported steps; a handed-over
    checkpoint counts only once its training row (written last) is in, and only without a row."""
    import json

    from overopt.storage import Storage
    from overopt.sweep.trial import _stored_rows, _unevaluated_checkpoints

    store = Storage(str(tmp_path))
    for step in (0, 3):
        store.write_text(f"rows/t/step_{step:06d}.json", json.dumps({"step": step}))
    for step, complete in ((3, True), (6, True), (9, False), (12, True)):
        store.write_text(f"checkpoints/t/step_{step:06d}/model.safetensors", "weights")
        if complete:
            store.write_text(f"checkpoints/t/step_{step:06d}/train_row.json", json.dumps({"step": step, "loss": step / 10}))
    reported = {row["step"] for row in _stored_rows(store, "t")}
    assert reported == {0, 3}
    found = _unevaluated_checkpoints(store, "t", reported)
    assert [(step, row["loss"]) for step, _, row in found] == [(6, 0.6), (12, 1.2)]
    assert found[0][1] == store.uri("checkpoints/t/step_000006")
    assert _stored_rows(store, "other") == [] and _unevaluated_checkpoints(store, "other", set()) == []


def _sweep_cli(*sets: str):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, "jobs/scale_sweep.py", "--config", "configs/smoke.yaml", *(f"--set={s}" for s in sets)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        check=False,
    )


def test_storage_that_is_not_writable_or_too_small_is_refused_before_anything_starts(tmp_path):
    blocker = tmp_path / "a-file"  # a path under a file cannot be created (as root too)
    blocker.write_text("x")
    done = _sweep_cli(f"storage={blocker}/runs")
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"storage '{blocker}/runs' is not writable" in done.stderr and "Traceback" not in done.stderr
    assert "started a local Ray instance" not in done.stdout
    # Room for far fewer checkpoints than checkpointing.keep asks for; what the storage held stays.
    storage = tmp_path / "runs"
    storage.mkdir()
    (storage / "earlier-results.txt").write_text("kept")
    done = _sweep_cli(f"storage={storage}", "checkpointing.enabled=true", "checkpointing.keep=100000000")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "free but the sweep's checkpoints may take" in done.stderr and "checkpointing.keep=100000000" in done.stderr
    assert "started a local Ray instance" not in done.stdout
    assert sorted(p.name for p in storage.iterdir()) == ["earlier-results.txt"] and (storage / "earlier-results.txt").read_text() == "kept"


def test_the_checkpoint_storage_plan_counts_evaluation_and_engine_checkpoints():
    from overopt.checkpoint_storage import checkpoint_storage_bytes
    from overopt.config import ExperimentConfig
    from overopt.model_shapes import ModelShape
    from overopt.worker_memory import estimate_worker_memory

    cfg = ExperimentConfig.model_validate(
        {"train": {"objectives": ["dpo"], "betas": {"dpo": [0.1, 0.3, 1.0]}, "num_workers": 2}, "sweep": {"max_concurrent_trials": 2}}
    )
    shape = ModelShape(total_params=1_000_000, largest_layer_params=100_000)
    plan = estimate_worker_memory(shape, num_workers=2, zero_stage=3, precision="fp32", optimizer="rmsprop")
    # fp32 weights, 1 evaluation slot + 1 being written, 2 trials at once: 2 x 2 x 4 MB.
    assert checkpoint_storage_bytes(cfg, {"tiny": plan}) == 2 * 2 * 4_000_000
    on = cfg.model_copy(update={"checkpointing": cfg.checkpointing.model_copy(update={"enabled": True, "keep": 2})})
    # + (2 kept + 1 being written) x (4 MB of weights + RMSprop's 4 MB of squared-gradient averages over both workers).
    assert checkpoint_storage_bytes(on, {"tiny": plan}) == 2 * (2 * 4_000_000 + 3 * (4_000_000 + plan.optimizer_state * 2))
    assert plan.optimizer_state * 2 == 4_000_000
