"""Shared fixtures: the real embedded SmolLM2 (loaded from the cached safetensors folder)."""

from contextlib import contextmanager

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


@contextmanager
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def one_thread():
    """``with one_thread(): ...`` trains on one torch thread and restores the count after.

    On a 2-core machine shared with other processes, two threads per process were 3-10x
    slower (every parallel region waits for a busy core); alone, one thread costs little.
    """
    return _one_thread
