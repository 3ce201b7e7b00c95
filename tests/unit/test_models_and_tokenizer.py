"""Built-in model sizes, save/reload through the real from_pretrained paths, and the tokenizer."""

import platform
import subprocess
import sys

import pytest
import torch

from overopt.data.tokenizer import SPECIAL_TOKENS
from overopt.models import BUILTIN_SIZES, builtin_config, load_model, load_tokenizer


def test_platform_folder_does_not_shadow_the_standard_library():
    import overopt

    assert platform.system() in {"Linux", "Darwin", "Windows"}
    assert hasattr(platform, "python_version") and overopt.__version__
    # A fresh interpreter (as pytest's rootdir sits beside platform/) must agree.
    out = subprocess.run(
        [sys.executable, "-c", "import platform, overopt; print(platform.system(), overopt.__name__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split()[1] == "overopt" and out.stdout.split()[0] == platform.system()


def test_builtin_sizes_span_eight_times_and_keep_head_dim_32(tokenizer):
    counts = {}
    for size in BUILTIN_SIZES:
        model = load_model(size, vocab_size=len(tokenizer))
        assert model.config.model_type == "gpt_neox"
        assert model.config.hidden_size // model.config.num_attention_heads >= 32
        counts[size] = sum(p.numel() for p in model.parameters())
    assert counts["tiny"] < counts["small"] < counts["medium"]
    assert counts["medium"] >= 8 * counts["tiny"]


def test_fresh_weights_are_reproducible(tokenizer):
    a = load_model("tiny", vocab_size=len(tokenizer), seed=3)
    b = load_model("tiny", vocab_size=len(tokenizer), seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_save_and_reload_through_from_pretrained(tmp_path, tiny_model, tokenizer, task):
    # The same code path as a hub name: from_pretrained on a directory written by save_pretrained.
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    model = load_model(str(tmp_path)).eval()
    reloaded_tokenizer = load_tokenizer(str(tmp_path))
    prompt = task.prompts(1, seed=0)[0]
    ids = torch.tensor([reloaded_tokenizer(prompt)["input_ids"]])
    assert ids.tolist() == [tokenizer(prompt)["input_ids"]]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, tiny_model(ids).logits, atol=1e-6)


def test_tokenizer_specials_and_round_trip(tokenizer, task):
    assert tokenizer.convert_ids_to_tokens(list(range(len(SPECIAL_TOKENS)))) == SPECIAL_TOKENS
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    prompt = task.prompts(1, seed=0)[0]
    ids = tokenizer(prompt)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == len(prompt.split()) + 1
    response = "w03 w17 w05"
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(response_ids + [tokenizer.eos_token_id], skip_special_tokens=True) == response


def test_unknown_size_and_missing_directory_are_clear_errors():
    with pytest.raises(ValueError, match="valid sizes: tiny, small, medium"):
        builtin_config("huge", vocab_size=10)
    with pytest.raises(FileNotFoundError, match="model not found"):
        load_model("./no/such/model")
    with pytest.raises(ValueError, match="needs vocab_size"):
        load_model("tiny")
