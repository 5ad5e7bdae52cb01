"""find_targets / attach / re-attach / detach on the real SmolLM2, and the errors."""

import re
import resource
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from faults import assert_intact, case, fail_after, raises, refused, snap
from peft import PeftModel

import lorakit as lk
from lorakit.core.attach import settings_of

SMOL_TARGETS = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192),
                "o_proj": (576, 576), "gate_proj": (576, 1536), "up_proj": (576, 1536),
                "down_proj": (1536, 576)}


def logits(model, probe):
    with torch.no_grad():
        return model(**probe).logits


def lora_names(model):
    return sorted({n.split(".")[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")})


def test_find_targets_lists_smollm2_projections(smol):
    model, _ = smol
    table = lk.find_targets(model)
    assert table.names == list(SMOL_TARGETS)
    for row in table:
        assert row.count == 30
        assert row.shapes == (SMOL_TARGETS[row.suffix],)
    assert table["down_proj"].weights == 30 * 1536 * 576
    assert "q_proj" in repr(table) and "576→192" in repr(table)
    with pytest.raises(KeyError, match="q_proj"):
        table["nope"]


def test_attach_freezes_base_and_counts(fresh, probe):
    model, _ = fresh
    before = logits(model, probe)
    pm = lk.attach(model, r=8, alpha=16, targets=["q_proj", "v_proj"])
    assert isinstance(pm, PeftModel)
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert pm.get_nb_trainable_parameters() == (460_800, 134_975_808)
    assert lora_names(pm) == ["q_proj", "v_proj"]
    # B starts at zero, so the output is unchanged
    assert torch.equal(logits(pm, probe), before)
    s = settings_of(pm)
    assert (s.r, s.alpha, s.targets) == (8, 16, ("q_proj", "v_proj"))


def test_reattach_replaces_adapter_without_reloading(fresh, probe):
    model, _ = fresh
    base_weight = model.model.layers[0].self_attn.q_proj.weight
    pm = lk.attach(model, r=8, targets=["q_proj", "v_proj"])
    pm2 = lk.attach(pm, r=4, alpha=8, targets=["k_proj", "o_proj", "down_proj"])
    assert lora_names(pm2) == ["down_proj", "k_proj", "o_proj"]
    assert pm2.get_nb_trainable_parameters()[0] == lk.lora_param_count(
        model, r=4, targets=["k_proj", "o_proj", "down_proj"])
    # the very same base tensors: nothing was reloaded or copied
    assert pm2.get_base_model().model.layers[0].self_attn.q_proj.weight is base_weight


def test_reattach_refused_when_asked(fresh):
    model, _ = fresh
    pm = lk.attach(model, r=8)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        lk.attach(pm, r=4, replace=False)
    assert lora_names(pm) == ["q_proj", "v_proj"]


def test_detach_is_bit_identical(fresh, probe):
    model, _ = fresh
    before = logits(model, probe)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    pm = lk.attach(model, r=16, alpha=32, targets=list(SMOL_TARGETS), variant="dora")
    with torch.no_grad():  # a trained-looking adapter: B non-zero
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.01)
    assert not torch.allclose(logits(pm, probe), before)
    base = lk.detach(pm)
    assert not isinstance(base, PeftModel) and lora_names(base) == []
    assert torch.equal(logits(base, probe), before)
    assert {n: p.requires_grad for n, p in base.named_parameters()} == flags


def test_detach_after_pissa_restores_base(fresh, probe):
    model, _ = fresh
    before = logits(model, probe)
    w0 = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    pm = lk.attach(model, r=4, targets=["q_proj"], init="pissa")
    assert not torch.equal(pm.get_base_model().model.layers[0].self_attn.q_proj.base_layer
                           .weight, w0)  # PiSSA moved the principal part into the adapter
    base = lk.detach(pm)
    assert torch.equal(base.model.layers[0].self_attn.q_proj.weight, w0)
    assert torch.equal(logits(base, probe), before)


def test_seed_makes_init_reproducible(fresh):
    model, _ = fresh
    a1 = lk.attach(model, r=4, seed=7).base_model.model.model.layers[0].self_attn.q_proj \
        .lora_A["default"].weight.detach().clone()
    state = torch.random.get_rng_state()
    a2 = lk.attach(model, r=4, seed=7).base_model.model.model.layers[0].self_attn.q_proj \
        .lora_A["default"].weight
    assert torch.equal(a1, a2)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


@pytest.mark.parametrize("variant", ["rslora", "dora"])
def test_variants_reach_peft(fresh, variant):
    model, _ = fresh
    pm = lk.attach(model, r=16, alpha=16, variant=variant)
    q = pm.base_model.model.model.layers[0].self_attn.q_proj
    expected = 16 / 16 ** 0.5 if variant == "rslora" else 1.0
    assert q.scaling["default"] == pytest.approx(expected)
    assert bool(q.use_dora["default"]) == (variant == "dora")


@pytest.mark.parametrize("kwargs, message", [
    (dict(r=0), "r \\(rank\\) must be a positive integer"),
    (dict(r=2.5), "r \\(rank\\) must be a positive integer"),
    (dict(r=True), "r \\(rank\\) must be a positive integer"),
    (dict(alpha=0), "alpha must be a finite number > 0"),
    (dict(dropout=1.0), "dropout must be in \\[0, 1\\)"),
    (dict(dropout=-0.1), "dropout must be in \\[0, 1\\)"),
    (dict(targets=["query"]), "Linear modules are: q_proj, k_proj, v_proj, o_proj, gate_proj"),
    (dict(targets=[]), "targets must be a non-empty list"),
    (dict(targets=["input_layernorm"]), "type LlamaRMSNorm, not Linear"),
    (dict(targets=["mlp"]), "type LlamaMLP, not Linear"),
    (dict(variant="qlora"), "allowed: 'lora', 'rslora', 'dora'"),
    (dict(init="zeros"), "allowed: 'default', 'gaussian', 'pissa', 'olora'"),
])
def test_bad_input_is_refused_before_any_change(fresh, kwargs, message):
    model, _ = fresh
    pm = lk.attach(model, r=8, targets=["q_proj", "v_proj"])
    with pytest.raises(ValueError, match=message):
        lk.attach(pm, **kwargs)
    assert lora_names(pm) == ["q_proj", "v_proj"]  # the old adapter is still there
    assert pm.get_nb_trainable_parameters()[0] == 460_800
    with pytest.raises(ValueError, match=message):
        lk.attach(lk.detach(pm), **kwargs)


def test_partial_targets_warn_naming_missing(fresh):
    model, _ = fresh
    with pytest.warns(UserWarning, match=r"targets \['qproj'\] match no module"):
        pm = lk.attach(model, targets=["q_proj", "qproj"])
    assert lora_names(pm) == ["q_proj"]


def test_rank_above_module_size_is_refused_unless_allowed(fresh):
    model, _ = fresh
    with pytest.raises(ValueError, match="exceeds min\\(d_in, d_out\\).*r ≤ 192"):
        lk.attach(model, r=256, targets=["k_proj"])
    assert not any("lora" in n for n, _ in model.named_modules())
    with pytest.warns(UserWarning, match="exceeds min\\(d_in, d_out\\)"):
        lk.attach(model, r=256, targets=["k_proj"], allow_large_r=True)


def test_lm_head_can_be_targeted_by_name(fresh):
    model, _ = fresh
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = lk.attach(model, r=2, targets=["lm_head"])
    assert pm.get_nb_trainable_parameters()[0] == 2 * (576 + 49152)


def test_detach_refuses_plain_model(smol):
    with pytest.raises(ValueError, match="has no LoRA adapter"):
        lk.detach(smol[0])


def test_rerunning_attach_on_the_base_variable_replaces(fresh, probe):
    # PEFT wraps layers in place, so a notebook cell `pm = lk.attach(model, ...)` run twice
    # passes a base model that already has an adapter: it must be replaced, not stacked.
    model, _ = fresh
    before = logits(model, probe)
    lk.attach(model, r=8, targets=["q_proj", "v_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # PEFT warns when it stacks adapters
        pm = lk.attach(model, r=4, targets=["k_proj"])
    assert lora_names(pm) == ["k_proj"]
    assert pm.get_nb_trainable_parameters()[0] == 30 * 4 * (576 + 192)
    base = lk.detach(model)
    assert lora_names(base) == [] and torch.equal(logits(base, probe), before)


# -- bad input and faults: a clear error, nothing changed (docs/reliability.md) --------------------
BAD_ATTACH = [
    ("r=0", dict(r=0), "r \\(rank\\) must be a positive integer"),
    ("r=2.5", dict(r=2.5), "r \\(rank\\) must be a positive integer"),
    ("r=True", dict(r=True), "r \\(rank\\) must be a positive integer"),
    ("alpha=inf", dict(alpha=float("inf")), "alpha must be a finite number > 0"),
    ("alpha=nan", dict(alpha=float("nan")), "alpha must be a finite number > 0"),
    ("alpha=1e40", dict(alpha=1e40), "alpha=1e\\+40 is too large"),
    ("alpha=-1", dict(alpha=-1), "alpha must be a finite number > 0"),
    ("dropout=1.0", dict(dropout=1.0), "dropout must be in \\[0, 1\\)"),
    ("targets=[]", dict(targets=[]), "targets must be a non-empty list"),
    ("targets=['nope']", dict(targets=["nope"]), "no Linear module matches"),
    ("targets=['embed_tokens'] (not Linear)", dict(targets=["embed_tokens"]),
     "of type Embedding, not Linear"),
    ("variant='lorax'", dict(variant="lorax"), "unknown variant 'lorax'"),
    ("init='zeros'", dict(init="zeros"), "unknown init 'zeros'"),
    ("r=65 > min(d_in, d_out)=32", dict(r=65), "exceeds min\\(d_in, d_out\\).*r ≤ 32"),
]


def _attach_case(label, kwargs, phrase):
    def test(tiny):
        refused(tiny, ValueError, phrase, lk.attach, tiny, **kwargs)

    test.__name__ = "test_attach_refuses_" + re.sub(r"\W+", "_", label.split(" ")[0]).strip("_")
    return case(f"attach({label})", f"ValueError: {phrase.replace(chr(92), '')}",
                "model: module tree, parameters, requires_grad")(test)


for _label, _kw, _phrase in BAD_ATTACH:
    _t = _attach_case(_label, _kw, _phrase)
    globals()[_t.__name__] = _t


@case("attach(model, r=10**6) (would need GBs)", "ValueError: exceeds min(d_in, d_out) … "
      "would need about N GB of memory", "model untouched; refused in < 5 s, nothing allocated")
def test_attach_huge_rank_refused_fast_with_memory(tiny):
    before = snap(tiny)
    err = raises(ValueError, "would need about [0-9.,]+ GB of memory", lk.attach, tiny, r=10**6)
    assert "r ≤ 32" in str(err)
    assert_intact(tiny, before)


@contextmanager
def address_space_limit(extra: int):
    """Cap this process's address space at its current size + ``extra`` bytes (restored after):
    a regression that allocates raises MemoryError instead of swapping or being OOM-killed."""
    used = int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmSize")).split()[1]) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (used + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@case("attach(r=10**6, allow_large_r=True) under a 2 GB address-space limit",
      "MemoryError: … would need N GB, but only M GB is available", "model untouched (run under "
      "RLIMIT_AS: a regression fails the test, it cannot kill the run)")
def test_attach_memory_estimate_refuses_before_allocating(tiny):
    before = snap(tiny)
    with address_space_limit(2 << 30):
        err = raises(MemoryError, "would need .* GB, but only .* is available", lk.attach, tiny,
                     r=10**6, allow_large_r=True)
    assert "nothing was changed" in str(err)
    assert_intact(tiny, before)


@case("attach(replace=False) on a model that has an adapter", "ValueError: already has a LoRA "
      "adapter", "the old adapter: weights, layers, requires_grad")
def test_attach_replace_false_keeps_old_adapter(pm):
    refused(pm, ValueError, "already has a LoRA adapter", lk.attach, pm, r=2, replace=False)


@case("re-attach with a bad value (r=-1) over a trained adapter", "ValueError: r (rank) must "
      "be a positive integer", "the old adapter and its trained weights")
def test_reattach_bad_value_keeps_old_adapter(pm):
    refused(pm, ValueError, "positive integer", lk.attach, pm, r=-1)


@case("out of memory half-way through attach (3rd layer)", "MemoryError (re-raised)",
      "model: no LoRA layer left, parameters and requires_grad as before (rolled back)")
def test_attach_memory_error_half_way_rolls_back(tiny, monkeypatch):
    from peft.tuners.lora.layer import LoraLayer

    before = snap(tiny)
    fail_after(monkeypatch, LoraLayer, "update_layer", 3)
    raises(MemoryError, "out of memory", lk.attach, tiny, r=4)
    assert_intact(tiny, before)
    monkeypatch.undo()
    assert lk.attach(tiny, r=4) is not None  # and the model still takes an adapter


@case("out of memory half-way through a re-attach", "MemoryError (re-raised)",
      "the previous adapter: its layers, trained weights and PeftModel still work")
def test_reattach_memory_error_keeps_old_adapter(pm, tok, monkeypatch):
    from peft.tuners.lora.layer import LoraLayer

    before = snap(pm)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        ref = pm(input_ids=ids).logits
    fail_after(monkeypatch, LoraLayer, "update_layer", 2)
    raises(MemoryError, "out of memory", lk.attach, pm, r=8)
    assert_intact(pm, before)
    with torch.no_grad():
        assert torch.equal(pm(input_ids=ids).logits, ref)


@case("Ctrl-C (KeyboardInterrupt) half-way through attach", "KeyboardInterrupt (re-raised)",
      "model rolled back: no LoRA layer, parameters and flags as before")
def test_attach_interrupt_rolls_back(tiny, monkeypatch):
    from peft.tuners.lora.layer import LoraLayer

    before = snap(tiny)
    fail_after(monkeypatch, LoraLayer, "update_layer", 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        lk.attach(tiny, r=4)
    assert_intact(tiny, before)


@case("failure half-way through a PiSSA attach (rewrites base weights)", "RuntimeError "
      "(re-raised)", "base weights bit-identical (the rewritten ones are put back)")
def test_pissa_failure_restores_base_weights(tiny, monkeypatch):
    from peft.tuners.lora.layer import LoraLayer

    before = snap(tiny)
    fail_after(monkeypatch, LoraLayer, "update_layer", 3, RuntimeError("simulated failure"))
    raises(RuntimeError, "simulated", lk.attach, tiny, r=4, init="pissa")
    assert_intact(tiny, before)


@case("attach_adalora(total_step=0)", "ValueError: AdaLoRA needs total_step > tinit + tfinal",
      "model untouched")
def test_adalora_bad_steps(tiny):
    refused(tiny, ValueError, "total_step > tinit", lk.attach_adalora, tiny, total_step=0)


@case("detach on a model without an adapter", "ValueError: this model has no LoRA adapter",
      "model untouched")
def test_detach_without_adapter(tiny):
    refused(tiny, ValueError, "has no LoRA adapter", lk.detach, tiny)


def test_attach_takes_a_lora_settings_object(tiny):
    """attach(model, LoraSettings(...)) is the keyword call; a keyword changes one field."""
    s = lk.LoraSettings(r=4, alpha=8, targets=("q_proj", "k_proj"), variant="rslora")
    pm = lk.attach(tiny, s, seed=0)
    first = {n: p.detach().clone() for n, p in pm.named_parameters() if "lora_A" in n}
    assert settings_of(pm) == s and len(first) == 4
    lk.detach(pm)
    pm = lk.attach(tiny, r=4, alpha=8, targets=["q_proj", "k_proj"], variant="rslora", seed=0)
    assert settings_of(pm) == s
    assert all(torch.equal(first[n], p) for n, p in pm.named_parameters() if "lora_A" in n)
    lk.detach(pm)
    pm = lk.attach(tiny, s, r=2)
    assert settings_of(pm) == lk.LoraSettings(r=2, alpha=8, targets=("q_proj", "k_proj"),
                                              variant="rslora")
    lk.detach(pm)
    before = snap(tiny)
    raises(TypeError, "settings must be a LoraSettings", lk.attach, tiny, {"r": 4})
    raises(ValueError, "r .rank. must be a positive integer", lk.attach, tiny, s, r=0)
    assert_intact(tiny, before)
