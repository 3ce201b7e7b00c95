"""Shared fixtures: a tiny synthetic tokenizer and GPT-NeoX model built locally (no hub access)."""

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForSequenceClassification

from overopt.data.synthetic import SyntheticTask
from overopt.data.tokenizer import build_synthetic_tokenizer
from overopt.models import load_model


@pytest.fixture(scope="session")
def task():
    return SyntheticTask(seed=0)


@pytest.fixture(scope="session")
def tokenizer(task):
    return build_synthetic_tokenizer(task)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    model = load_model("tiny", vocab_size=len(tokenizer), seed=0)
    return model.eval()


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_reward_model(tokenizer):
    """A builder of one-layer GPT-NeoX reward models over the synthetic tokenizer:
    ``tiny_reward_model(pad_token_id=0, num_labels=1, seed=0)`` -> the model, in eval mode."""

    def build(pad_token_id=0, num_labels=1, seed=0):
        torch.manual_seed(seed)
        config = GPTNeoXConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=num_labels,
            pad_token_id=pad_token_id,
        )
        return GPTNeoXForSequenceClassification(config).eval()

    return build


@pytest.fixture(scope="session")
def save_reward_model(tokenizer):
    """``save_reward_model(model, directory)``: the model and the synthetic tokenizer, saved; the directory as a string."""

    def save(model, directory):
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        return str(directory)

    return save


@pytest.fixture(scope="session")
def random_reward_model(tmp_path_factory, tiny_reward_model, save_reward_model):
    """A randomly initialised reward model, saved: (directory, model)."""
    model = tiny_reward_model(seed=3)
    return save_reward_model(model, tmp_path_factory.mktemp("rm_random")), model
