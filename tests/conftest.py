"""Shared fixtures: the real embedded SmolLM2 (loaded from the cached safetensors folder)."""

import pytest
import torch

import lorakit as lk


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smol():
    """(model, tok) shared by tests that do not change the model."""
    return lk.load_model(progress=False)


@pytest.fixture
def fresh():
    """A fresh (model, tok) for tests that attach, train or otherwise change the model."""
    return lk.load_model(progress=False)


@pytest.fixture(scope="session")
def probe(smol):
    """A small fixed batch of real token ids to compare outputs on."""
    _, tok = smol
    return tok(["The quick brown fox jumps over", "LoRA adds a low-rank update"],
               return_tensors="pt", padding=True)
