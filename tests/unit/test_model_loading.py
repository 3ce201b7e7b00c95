"""Model loading is safe by default: safetensors only, no remote code, clear errors; hub names are directory-safe."""

import pytest
import torch

from overopt.config import LoadOptions, load_config
from overopt.models import check_vocabulary, check_weights, load_model, size_label


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_model, tokenizer):
    directory = tmp_path_factory.mktemp("model")
    tiny_model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_pickle_only_weights_are_refused_unless_allowed(tmp_path, saved_model, tiny_model):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((saved_model / "config.json").read_text())
    torch.save(tiny_model.state_dict(), pickled / "pytorch_model.bin")  # what older checkpoints ship
    assert (pickled / "pytorch_model.bin").exists() and not list(pickled.glob("*.safetensors"))
    with pytest.raises(ValueError, match=r"only pickle weights \(pytorch_model\.bin\).*models\.allow_pickle"):
        load_model(str(pickled))
    model = load_model(str(pickled), options=LoadOptions(allow_pickle=True))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), tiny_model.parameters()))


def test_missing_directory_and_missing_weights_name_the_path(tmp_path, saved_model):
    with pytest.raises(FileNotFoundError, match="model not found: './nowhere'"):
        load_model("./nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((saved_model / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"holds no weights"):
        check_weights(str(empty))
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        check_weights(str(tmp_path / "noconfig"))


def test_dtype_comes_from_the_options(saved_model):
    assert load_model(str(saved_model), options=LoadOptions(dtype="bfloat16")).dtype == torch.bfloat16


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tokenizer):
    small = load_model("tiny", vocab_size=len(tokenizer) - 3)
    with pytest.raises(ValueError, match="do not belong together"):
        check_vocabulary(small, tokenizer, "models.sizes[x]")


def test_hub_names_and_paths_become_directory_names(tmp_path):
    assert size_label("EleutherAI/pythia-1b") == "EleutherAI--pythia-1b"
    assert size_label("tiny") == "tiny"
    assert size_label(str(tmp_path / "my model")) == "my--model"
    assert size_label("s3://bucket/runs/cache/reference/tiny-1a2b?endpoint_override=h:9&region=x") == "tiny-1a2b"


def test_loading_options_are_in_the_config():
    cfg = load_config(None, ["models.dtype=bfloat16", "train.precision=bf16", "models.trust_remote_code=true"])
    assert cfg.models.dtype == "bfloat16" and cfg.models.trust_remote_code and not cfg.models.allow_pickle
