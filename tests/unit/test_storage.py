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
    assert sorted(p.name for p in __import__("pathlib").Path(copy).iterdir() if not p.name.startswith(".")) == ["config.json", "weights.safetensors"]
    assert local_directory("EleutherAI/pythia-1b") == "EleutherAI/pythia-1b"  # hub names pass through


def test_uris_are_what_ray_takes(tmp_path):
    assert Storage(str(tmp_path)).uri("exp/tune") == f"{tmp_path}/exp/tune"
    assert Storage(f"file://{tmp_path}").uri("exp/tune") == f"file://{tmp_path}/exp/tune"
    assert Storage("relative/runs").uri() == str((__import__("pathlib").Path.cwd() / "relative/runs"))


def _row(trial, step, epoch, **extra):
    return {"trial_name": trial, "objective": "dpo", "beta": 0.1, "size": "tiny", "seed": 0, "step": step,
            "epoch_fraction": epoch, "win_rate": 0.5, "planned_epochs": 1.0, **extra}


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


def test_newer_rows_win_over_a_stale_results_file(store):
    import json

    store.write_text("exp/rows/a/step_000000.json", json.dumps(_row("a", 0, 0.0)))
    store.write_parquet("exp/results.parquet", pa.Table.from_pandas(collect_results(store, "exp")))
    store.write_text("exp/rows/a/step_000008.json", json.dumps(_row("a", 8, 1.0)))
    assert len(load_results(store.uri("exp"))) == 2
