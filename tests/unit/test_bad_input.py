"""Bad input stops `jobs/scale_sweep.py` before anything starts, with what is wrong and where (file and
line, or the config field), and leaves what an earlier run wrote to the storage exactly as it was."""

import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("scale_sweep", ROOT / "jobs" / "scale_sweep.py")
scale_sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scale_sweep)

SMALL = ["sweep.seeds=[0]", "data.synthetic.demonstrations=200", "data.synthetic.eval_prompts=32"]  # quick input checks


@pytest.fixture
def storage(tmp_path):
    """A storage location holding an earlier run's files, which no refused run may touch."""
    store = tmp_path / "runs"
    for relative, text in {
        "embedded-0123456789ab/results.parquet": "earlier results",
        "embedded-0123456789ab/rows/t/step_000000.json": "{}",
        "cache/reference/tiny-abc/_COMPLETE": "built",
    }.items():
        (store / relative).parent.mkdir(parents=True, exist_ok=True)
        (store / relative).write_text(text)
    return store


def snapshot(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(store.rglob("*")) if p.is_file()}


def refused(capsys, store: Path, config: Path | None, *overrides: str) -> str:
    """Run the CLI; it must exit 2 with nothing written, and return what it printed to stderr."""
    before = snapshot(store)
    argv = ["--config", str(config or ROOT / "configs" / "smoke.yaml"), "--no-analysis"]
    for item in (f"storage={store}", *SMALL, *overrides):
        argv += ["--set", item]
    assert scale_sweep.main(argv) == 2
    assert snapshot(store) == before
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_malformed_yaml_names_the_file_and_line(tmp_path, storage, capsys):
    path = config(tmp_path, "train:\n  lr: [1.0e-4\n  epochs: 1\n")
    err = refused(capsys, storage, path)
    assert f"{path}: not valid YAML" in err and "line 3" in err


def test_unknown_key_and_wrong_type_name_the_line_and_key(tmp_path, storage, capsys):
    err = refused(capsys, storage, config(tmp_path, "name: smoke\ntrain:\n  learning_rate: 1.0e-4\n  batch_size: many\n"))
    assert "bad.yaml:3: train.learning_rate: Extra inputs are not permitted" in err
    assert "bad.yaml:4: train.batch_size: Input should be a valid integer" in err


def test_a_beta_that_is_not_positive_and_an_objective_that_does_not_exist(tmp_path, storage, capsys):
    err = refused(capsys, storage, config(tmp_path, "train:\n  objectives: [dpo]\n  betas:\n    dpo: [0.1, 0.0]\n"))
    assert "bad.yaml:3: train.betas: Value error, dpo: beta must be a positive number, got 0.0" in err
    err = refused(capsys, storage, None, "train.objectives=[dpo, kto]")
    assert "--set override: train.objectives" in err and "unknown objective 'kto'; valid choices:" in err


@pytest.fixture
def model_dirs(tmp_path, tiny_model, tokenizer):
    """A directory without weights, one with only pickle weights, and a model whose vocabulary is too small."""
    good = tmp_path / "good"
    tiny_model.save_pretrained(good)
    no_weights, pickled = tmp_path / "no_weights", tmp_path / "pickled"
    for directory in (no_weights, pickled):
        directory.mkdir()
        (directory / "config.json").write_text((good / "config.json").read_text())
    torch.save(tiny_model.state_dict(), pickled / "pytorch_model.bin")
    from overopt.models import load_model

    narrow = tmp_path / "narrow"
    load_model("tiny", vocab_size=len(tokenizer) - 5, seed=0).save_pretrained(narrow)
    return no_weights, pickled, narrow


def test_model_directories_without_usable_weights_or_with_another_vocabulary(storage, capsys, model_dirs):
    no_weights, pickled, narrow = model_dirs
    err = refused(capsys, storage, None, f"sft.checkpoints={{tiny: {no_weights}}}")
    assert f"error: sft.checkpoints.tiny: model directory '{no_weights}' holds no weights (*.safetensors)" in err
    err = refused(capsys, storage, None, f"sft.checkpoints={{tiny: {pickled}}}")
    assert "sft.checkpoints.tiny:" in err and "only pickle weights (pytorch_model.bin)" in err and "models.allow_pickle: true" in err
    err = refused(capsys, storage, None, f"sft.checkpoints={{tiny: {narrow}}}")
    assert "sft.checkpoints.tiny: models.tokenizer 'synthetic' has" in err and "they do not belong together" in err


def test_a_defective_data_file_names_its_path_line_and_field(tmp_path, storage, capsys, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "w01 w02 <sep>", "chosen": "w01", "rejected": "w02"}\n{"prompt": "w03 <sep>", "chosen": "w03"}\n')
    err = refused(capsys, storage, None, f"models.tokenizer={tmp_path / 'tokenizer'}", "data.pairs.source=file", f"data.pairs.path={pairs}")
    assert f"{pairs}:2: rejected" in err


def test_an_experiment_directory_that_is_not_an_overopt_experiment_is_neither_resumed_nor_written(tmp_path, storage, capsys):
    """The sweep resumes what its experiment directory holds (Tuner.restore unpickles it): a directory of
    someone else's files, or with the config.yaml of another config, is refused before anything is written."""
    from overopt.config import load_config
    from overopt.sweep.run import experiment_name

    overrides = [f"storage={storage}", *SMALL]
    name = experiment_name(load_config(ROOT / "configs" / "smoke.yaml", overrides))
    foreign = storage / name / "tune" / "experiment_state-2026.json"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("not ours")
    err = refused(capsys, storage, None)
    assert f"{storage / name} holds files but no config.yaml: it is not an overopt experiment" in err

    other = load_config(ROOT / "configs" / "smoke.yaml", [*overrides, "train.lr=0.5"])
    (storage / name / "config.yaml").write_text(other.to_yaml())
    err = refused(capsys, storage, None)
    assert f"{storage / name}/config.yaml describes another experiment ({experiment_name(other)})" in err

    from overopt.storage import Storage
    from overopt.sweep.run import check_experiment_directory

    ours = load_config(ROOT / "configs" / "smoke.yaml", [*overrides, "sweep.max_concurrent_trials=1"])  # speed is not in the hash
    (storage / name / "config.yaml").write_text(ours.to_yaml())
    check_experiment_directory(ours, Storage(str(storage)), name)  # the same experiment: resumed
