"""Shared fixtures: a tiny synthetic tokenizer and GPT-NeoX model built locally (no hub access)."""

import pytest
import torch

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
