"""benchmarks/train_speed.py compares trainers on the same tokens: every baseline's tokenized
training examples are lorakit's, the task's system message included."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny

import lorakit as lk

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def bench(name: str):
    """benchmarks/<name>.py as a module (its folder on sys.path while it imports)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.fixture(scope="module")
def speed():
    return bench("train_speed")


@pytest.fixture(scope="module")
def small():
    return lk.tasks.get("iso_dates", n_train=12, n_test=2)


def test_trl_trains_on_lorakits_tokens(speed, small, tok, tmp_path):
    pytest.importorskip("trl")
    trainer = speed.trl_trainer(make_tiny(tok), tok, small, 1, False, str(tmp_path))
    theirs, ours = speed.trl_tokens(trainer.train_dataset), speed.lorakit_tokens(small, tok)
    assert small.system and tok.encode(small.system)[0] in ours[0][0]   # "Be brief." is there
    assert speed.same_tokens("TRL", theirs, ours) == sum(len(i) for i, _ in ours)
    assert theirs == ours


def test_same_tokens_catches_a_baseline_without_the_system_message(speed, small, tok):
    ours = speed.lorakit_tokens(small, tok)
    no_system = []
    for e in small.train:   # what a chat row without "Be brief." tokenizes to
        p = tok.apply_chat_template([{"role": "user", "content": e.prompt}],
                                    add_generation_prompt=True, tokenize=False)
        ids = tok(p + e.answer + tok.eos_token)["input_ids"]
        n_prompt = len(tok(p)["input_ids"])
        no_system.append((ids, [0] * n_prompt + [1] * (len(ids) - n_prompt)))
    with pytest.raises(AssertionError, match="tokens vs lorakit's"):
        speed.same_tokens("TRL", no_system, ours)
    one_off = [(ids, mask[:-1] + [0]) for ids, mask in ours]   # the last token not learned
    with pytest.raises(AssertionError, match="example 0 is tokenized differently"):
        speed.same_tokens("TRL", one_off, ours)


def test_plain_loop_uses_lorakits_batches(speed, small, tok):
    mine, ref = speed.plain_batches(small, tok), small.batches(tok, speed.BATCH, seed=0)
    for _ in range(3):
        a, b = next(mine), next(ref)
        assert all(torch.equal(a[k], b[k]) for k in ("input_ids", "attention_mask", "labels"))


def test_step_flops_count_the_answer_head_only(speed, small, tok):
    pm = lk.attach(make_tiny(tok), r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0)
    base, lora, (d, vocab) = speed.linear_shapes(pm)
    assert len(lora) == 2 * 2 * 2 and d == 64 and vocab >= tok.vocab_size
    batch = small.encode(tok, small.train[:4])
    full = dict(batch, labels=torch.where(batch["attention_mask"] == 1, batch["input_ids"], -100))
    assert speed.step_flops(pm, full) > speed.step_flops(pm, batch) > 0


def test_step_profile_groups_the_ops_a_step_runs():
    """benchmarks/step_profile.py puts each profiled op in one group: a product counted as
    element-wise work (or a cast as a product) would move the shares it reports."""
    module = bench("step_profile")
    expect = {"aten::mm": "matrix products", "aten::addmm": "matrix products",
              "aten::bmm": "matrix products", "aten::_to_copy": "casts and copies",
              "aten::copy_": "casts and copies",
              "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
              "aten::_foreach_addcdiv_": "optimizer and gradient norm",
              "aten::mul": "element-wise and rest", "aten::silu": "element-wise and rest",
              "aten::rsqrt": "element-wise and rest"}
    assert {op: module.group_of(op) for op in expect} == expect


def test_suite_compare_lists_each_file_once_with_its_saving():
    """benchmarks/suite_compare.py: files from either run at or over the floor, longest (second
    run) first, with how much shorter the first run was."""
    module = bench("suite_compare")
    rows = module.compare({"a.py": 30, "nb.ipynb": 75, "tiny.py": 1},
                          {"a.py": 40, "nb.ipynb": 100, "new.py": 25}, ("auto", "fp32"))
    assert rows[2:] == ["| `nb.ipynb` | 75 | 100 | 25% |", "| `a.py` | 30 | 40 | 25% |",
                        "| `new.py` | 0 | 25 | 100% |"]
