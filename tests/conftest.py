"""Shared fixtures: the real embedded SmolLM2 (loaded from the cached safetensors folder), its
tokenizer alone, and the tiny random models and adapters of the fault cases (tests/faults.py)."""

import copy
import os
from contextlib import contextmanager

import pytest
import torch
from tiny_models import make_tiny, tiny_llama
from workers import longest_first, worker_threads

import lorakit as lk


def pytest_configure(config):
    """Under pytest-xdist (make test): this worker's share of the cores, as torch threads here
    and, through OMP_NUM_THREADS, in what it starts (nbval's kernels, CLI subprocesses)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and "OMP_NUM_THREADS" not in os.environ:
        n = worker_threads(int(workers), len(os.sched_getaffinity(0)))
        os.environ["OMP_NUM_THREADS"] = str(n)
        torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    # longest files first (make test passes --no-loadscope-reorder so that xdist keeps it)
    items[:] = [items[i] for i in longest_first([item.nodeid for item in items])]
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


@pytest.fixture(scope="session")
def _pristine():
    """A (model, tok) that no test touches: ``fresh`` copies it."""
    return lk.load_model(progress=False)


@pytest.fixture
def fresh(_pristine):
    """A fresh (model, tok) for tests that attach, train or otherwise change the model: a deep
    copy of a model loaded once per session, equal to a new ``lk.load_model()`` (checked by
    test_models) and several times faster to make."""
    model, tok = _pristine
    return copy.deepcopy(model), tok


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


@pytest.fixture(scope="session")
def tiny_recording(smol, one_thread):
    """61 frames (steps 0..60) of a real LoRA run (r=8 on q, v) on a tiny Llama whose hidden
    size is 64, so ΔW is exactly 64 × 64; SmolLM2's tokenizer, lk.train, a real lk.Recorder.
    Shared by the export tests and the browser animation test (trained once per session)."""
    _, tok = smol
    pm = lk.attach(tiny_llama(tok, layers=1), r=8, alpha=16, targets=["q_proj", "v_proj"],
                   seed=0)
    rec = lk.Recorder(pm, every=1)
    with one_thread():
        lk.train(pm, tok, lk.tasks.get("iso_dates"), steps=60, lr=2e-3, batch_size=4,
                 recorder=rec, progress=False)
    return rec.recording


@pytest.fixture(scope="session")
def recording_subset():
    """``recording_subset(recording, keep)``: the recording at frame indices ``keep`` only
    (real recorded values, fewer frames: cheaper to render as GIF/MP4)."""
    import dataclasses

    def subset(recording, keep):
        data = {k: dataclasses.replace(m, **{t: getattr(m, t)[keep] for t in (
            "A", "B", "delta", "norm_A", "norm_B", "norm_delta", "sv")})
            for k, m in recording.data.items()}
        return dataclasses.replace(recording, steps=[recording.steps[i] for i in keep],
                                   losses=[recording.losses[i] for i in keep], data=data)

    return subset


# -- SmolLM2's tokenizer and the tiny models of the fault cases ------------------------------
@pytest.fixture(scope="session")
def tok():
    """The embedded SmolLM2's tokenizer alone (no model load), with a pad token."""
    from transformers import AutoTokenizer

    from lorakit.core.models import embedded_model_dir

    t = AutoTokenizer.from_pretrained(embedded_model_dir(progress=False))
    t.pad_token = t.pad_token or t.eos_token
    return t


@pytest.fixture
def tiny(tok):
    """A new tiny random Llama (hidden 64, 2 layers, 256-token context; SmolLM2's vocabulary),
    in eval mode, without an adapter."""
    return make_tiny(tok)


@pytest.fixture
def plain(tok):
    """A second tiny model with no adapter (the ``saved`` fixture wraps ``tiny``)."""
    return make_tiny(tok)


@pytest.fixture
def pm(tiny):
    """A tiny model with a LoRA adapter whose B is non-zero (as after training)."""
    p = lk.attach(tiny, r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for n, prm in p.named_parameters():
            if "lora_B" in n:
                prm.normal_(0, 0.02)
    return p


@pytest.fixture
def saved(pm, tmp_path):
    """``pm``'s adapter saved to a folder."""
    folder = tmp_path / "adapter"
    lk.save_adapter(pm, folder)
    return folder


@pytest.fixture(scope="module")
def task():
    """A small iso_dates task (16 training, 4 test examples)."""
    return lk.tasks.get("iso_dates", n_train=16, n_test=4)
