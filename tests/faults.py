"""The fault cases' registry and state snapshots, shared by the test modules that hold them.

A fault case is a test that feeds a bad input or injects a fault and checks both the error (type
and key phrase) and that nothing was changed. Each one sits in the test module of the library
module it breaks and is registered with ``@case(fault, error, intact)``; ``docs/reliability.py``
collects the cases of every test module that imports ``case`` from here into
``docs/reliability.md`` (``tests/test_reliability.py`` keeps the two equal). The tiny models and
adapters they run on are fixtures in tests/conftest.py (``tok``, ``tiny``, ``plain``, ``pm``,
``saved``, ``task``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lorakit as lk


def case(fault: str, error: str, intact: str):
    """Register a test as one row of docs/reliability.md."""
    def deco(fn):
        fn.fault_case = (fault, error, intact)
        return fn
    return deco


def cases_in(module) -> list[tuple[str, str, str, str]]:
    """(test name, fault, error, what stays intact) of each case ``module`` registers, in the
    order its tests are defined."""
    return [(name, *fn.fault_case) for name, fn in vars(module).items()
            if name.startswith("test") and getattr(fn, "__name__", None) == name
            and hasattr(fn, "fault_case")]


# -- state snapshots -----------------------------------------------------------------------
def snap(model):
    """Everything a failure must not change: module tree, parameters, flags, adapters."""
    return {"tree": [(n, type(m).__name__) for n, m in model.named_modules()],
            "ids": [id(m) for m in model.modules()],
            "params": {n: (p.detach().clone(), p.requires_grad)
                       for n, p in model.named_parameters()},
            "adapters": sorted(getattr(model, "peft_config", {}) or {}),
            "active": getattr(model, "active_adapter", None)}


def assert_intact(model, before):
    after = snap(model)
    assert after["tree"] == before["tree"]
    assert after["ids"] == before["ids"]
    assert after["adapters"] == before["adapters"]
    assert after["active"] == before["active"]
    assert after["params"].keys() == before["params"].keys()
    for n, (t, flag) in before["params"].items():
        t2, flag2 = after["params"][n]
        assert flag2 == flag, n
        assert torch.equal(t2, t), n


def files(folder: Path) -> dict[str, bytes]:
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()} if folder.exists() else {}


# -- raising and injecting faults ----------------------------------------------------------
def raises(kind, phrase, fn, *args, **kwargs):
    with pytest.raises(kind, match=phrase) as info:
        fn(*args, **kwargs)
    return info.value


def refused(model, kind, phrase, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` raises ``kind`` matching ``phrase``, and ``model`` is exactly as
    before the call (what every refusal must show)."""
    before = snap(model)
    error = raises(kind, phrase, fn, *args, **kwargs)
    assert_intact(model, before)
    return error


def fail_after(monkeypatch, target, attr, calls, exc=None):
    """Make ``target.attr`` raise ``exc`` (default: a MemoryError) on its ``calls``-th call:
    a failure half-way."""
    exc = exc if exc is not None else MemoryError("simulated: out of memory")
    original = getattr(target, attr)
    count = {"n": 0}

    def wrapper(*a, **k):
        count["n"] += 1
        if count["n"] >= calls:
            raise exc
        return original(*a, **k)

    monkeypatch.setattr(target, attr, wrapper)


def edit_config(folder: Path, **changes):
    """Change fields of a saved adapter's adapter_config.json."""
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def train_quiet(model, tok, task, **kw):
    """``lk.train`` on one torch thread, without a progress bar."""
    from lorakit.core.record import _one_thread

    kw.setdefault("progress", False)
    with _one_thread():
        return lk.train(model, tok, task, **kw)
