"""Mixed precision: what "auto" picks, autocast in lk.train with fp32 master weights, the fp16
scaler, and the precisions a device refuses (lorakit/core/precision.py)."""

import importlib
import warnings

import pytest
import torch
from faults import assert_intact, case, raises, refused, snap, train_quiet

import lorakit as lk
from lorakit.core import _compat, precision
from lorakit.core.loss import answer_loss
from lorakit.core.precision import Plan

train_mod = importlib.import_module("lorakit.core.train")  # lk.train is the function


def _losses(pm, tok, task, **kw):
    return train_quiet(pm, tok, task, steps=4, batch_size=4, **kw)


@pytest.fixture(autouse=True)
def auto_unforced(monkeypatch):
    """What "auto" picks is tested with LORAKIT_PRECISION unset (a suite run may set it)."""
    monkeypatch.delenv(precision.ENV_VAR, raising=False)


@pytest.fixture
def fast_cpu(monkeypatch):
    """A CPU with native bf16 (the CI machine has it; pinned so the tests run anywhere)."""
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)


@pytest.fixture
def slow_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(precision, "cpu_bf16_ratio", lambda: 3.4)


# -- what "auto" picks -----------------------------------------------------------------------
def test_cpu_flags_decide_fast_bf16(monkeypatch):
    for flags, fast in ((set(), False), ({"avx2", "avx512f"}, False), ({"avx512_bf16"}, True),
                        ({"amx_bf16", "amx_tile"}, True)):
        monkeypatch.setattr(precision, "cpu_flags", lambda f=flags: frozenset(f))
        assert precision.cpu_has_fast_bf16.__wrapped__() is fast, flags


def test_auto_on_the_cpu(fast_cpu, monkeypatch):
    assert precision.plan("auto", "cpu") == Plan("bf16", "cpu")
    assert precision.fast_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert precision.plan("auto", "cpu") == Plan("fp32", "cpu")
    assert precision.plan("fp32", "cpu").autocast().__class__.__name__ == "nullcontext"


@case("LORAKIT_PRECISION set to an unknown value", "ValueError: unknown LORAKIT_PRECISION "
      "'half'; allowed: 'fp32', 'bf16', 'fp16'", "model untouched")
def test_precision_environment_variable(fast_cpu, pm, tok, task, monkeypatch):
    monkeypatch.setenv(precision.ENV_VAR, "fp32")       # what "auto" means, process-wide
    assert precision.plan("auto", "cpu") == Plan("fp32", "cpu")
    assert precision.fast_dtype("cpu") == torch.float32
    assert precision.plan("bf16", "cpu") == Plan("bf16", "cpu")   # an explicit choice wins
    monkeypatch.setenv(precision.ENV_VAR, "half")
    refused(pm, ValueError, "unknown LORAKIT_PRECISION 'half'; allowed: 'fp32', 'bf16', 'fp16'",
            train_quiet, pm, tok, task, steps=1)


def test_auto_on_cuda_cards(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))  # A100
    assert precision.plan("auto", "cuda").name == "bf16"
    # a T4 (7.5): recent torch's is_bf16_supported() says True there (emulated bf16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))
    p = precision.plan("auto", "cuda")
    assert p.name == "fp16" and p.scaler() is not None
    assert precision.plan("auto", "mps").name == "fp32"


# -- training under autocast -----------------------------------------------------------------
def test_bf16_trains_under_autocast_with_fp32_master_weights(fast_cpu, tok, task, monkeypatch):
    from tiny_models import make_tiny

    seen = []
    original = torch.optim.AdamW.step

    def step(self, *a, **k):   # what the optimizer holds: fp32 parameters, gradients and state
        out = original(self, *a, **k)
        seen.extend((p.dtype, p.grad.dtype, *(v.dtype for v in self.state[p].values()
                                              if v.dim())) for g in self.param_groups
                    for p in g["params"])
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    runs = {}
    for prec in ("fp32", "bf16"):
        pm = lk.attach(make_tiny(tok), r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0)
        runs[prec] = _losses(pm, tok, task, precision=prec)
        assert {p.dtype for p in pm.parameters()} == {torch.float32}
        assert not pm.training
    assert {d for row in seen for d in row} == {torch.float32}
    assert runs["fp32"].precision == "fp32" and runs["bf16"].precision == "bf16"
    assert "bf16" in str(runs["bf16"])
    # autocast really ran: close to fp32, but not the same numbers
    assert runs["bf16"].losses != runs["fp32"].losses
    assert runs["bf16"].losses == pytest.approx(runs["fp32"].losses, rel=1e-2)


def _frozen_state(model):
    return {n: (p.dtype, p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()
            if not p.requires_grad}


def test_frozen_weights_cast_once_per_run_change_no_bit(fast_cpu, tok, task, monkeypatch):
    """A bf16 CPU run points the frozen Linear weights at bf16 copies for each step: the losses
    and the adapter are bit for bit those of autocast's per-step casts, and afterwards every
    frozen weight is its float32 self again (same storage, same values)."""
    from tiny_models import make_tiny

    seen = []

    def runs(cached: bool):
        if not cached:
            monkeypatch.setattr(train_mod, "FrozenBf16",
                                lambda model, plan: precision.FrozenBf16(model, plan, max_bytes=0))
        pm = lk.attach(make_tiny(tok), r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0)
        k_proj = pm.base_model.model.model.layers[0].self_attn.k_proj
        hook = k_proj.register_forward_hook(lambda m, i, o: seen.append((cached, m.weight.dtype)))
        before = _frozen_state(pm)
        res = _losses(pm, tok, task, precision="bf16")
        hook.remove()
        after = _frozen_state(pm)
        assert after.keys() == before.keys()
        for n, (dtype, ptr, value) in before.items():
            assert after[n][:2] == (dtype, ptr) == (torch.float32, ptr), n
            assert torch.equal(after[n][2], value), n
        adapter = {n: p.detach().clone() for n, p in pm.named_parameters() if p.requires_grad}
        return res.losses, adapter

    (cached_losses, cached_adapter), (plain_losses, plain_adapter) = runs(True), runs(False)
    assert {d for c, d in seen if c} == {torch.bfloat16}       # the copies were in use
    assert {d for c, d in seen if not c} == {torch.float32}    # autocast cast them instead
    assert cached_losses == plain_losses
    assert all(torch.equal(cached_adapter[n], plain_adapter[n]) for n in plain_adapter)


@case("an error inside a bf16 step (the frozen weights on their bf16 copies)",
      "the error itself (here RuntimeError from a forward hook)",
      "every frozen weight back on its float32 tensor; adapter as after the last good step")
def test_error_mid_step_restores_the_float32_weights(fast_cpu, pm, tok, task):
    layer = pm.base_model.model.model.layers[1].mlp.down_proj
    calls = []

    def fail(module, inputs, output):
        calls.append(module.weight.dtype)
        if len(calls) == 2:
            raise RuntimeError("failure inside the forward pass")

    before_frozen = _frozen_state(pm)
    before = snap(pm)
    hook = layer.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="failure inside"):
        _losses(pm, tok, task, precision="bf16")
    hook.remove()
    assert calls == [torch.bfloat16, torch.bfloat16]
    assert {n: v[:2] for n, v in _frozen_state(pm).items()} == {
        n: v[:2] for n, v in before_frozen.items()}
    assert all(torch.equal(p.detach(), before["params"][n][0]) for n, p in pm.named_parameters()
               if not p.requires_grad)


def test_frozen_copies_leave_out_tied_trainable_dora_and_other_devices(tok):
    from tiny_models import tiny_llama

    model = tiny_llama(tok, layers=1)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    pm = lk.attach(model, r=4, alpha=8, targets=["q_proj"], seed=0)
    names = {id(p): n for n, p in pm.named_parameters()}
    picked = {names[id(w)] for w in precision.frozen_linear_weights(pm)}
    layer = "base_model.model.model.layers.0."
    assert picked == {layer + x + ".weight" for x in (
        "self_attn.q_proj.base_layer", "self_attn.k_proj", "self_attn.v_proj",
        "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}   # no lm_head
    assert len(precision.FrozenBf16(pm, Plan("bf16", "cpu")).pairs) == 7
    assert precision.FrozenBf16(pm, Plan("fp32", "cpu")).pairs == []
    assert precision.FrozenBf16(pm, Plan("bf16", "cpu"), max_bytes=10).pairs == []
    dora = lk.attach(tiny_llama(tok, layers=1), r=4, alpha=8, targets=["q_proj"], seed=0,
                     variant="dora")
    names = {id(p): n for n, p in dora.named_parameters()}
    assert not any("q_proj" in names[id(w)] for w in precision.frozen_linear_weights(dora))


def test_cpu_attention_stays_fp32_under_bf16_autocast():
    """torch's CPU bf16 attention is several times slower than fp32's: the plan keeps it fp32
    (output cast back to bf16), and every other product bf16."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=g) for _ in range(3))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True).to(torch.bfloat16)
    with Plan("bf16", "cpu").autocast():
        got = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        kw = F.scaled_dot_product_attention(query=q, key=k, value=v, is_causal=True)
        assert (q @ k.transpose(-1, -2)).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert got.dtype == kw.dtype == plain.dtype == torch.bfloat16
    assert torch.equal(got, want) and torch.equal(kw, want) and not torch.equal(plain, want)


def test_gradient_checkpointing_under_bf16(fast_cpu, tiny, tok, task):
    """Checkpointing recomputes the forward pass during backward, where torch restores autocast
    but not the fp32-attention mode: the recomputed attention must match the saved one."""
    tiny.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        pm = lk.attach(tiny, r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0)
        res = lk.train(pm, tok, task, steps=2, lr=1e-3, batch_size=2, precision="bf16",
                       progress=False)
        assert res.precision == "bf16" and res.steps_done == 2
        lk.detach(pm)
    finally:
        tiny.gradient_checkpointing_disable()


def test_the_loss_is_fp32_under_autocast(pm, tok, task):
    batch = task.encode(tok, task.train[:3])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = answer_loss(pm, batch)
    assert loss.dtype == torch.float32


def test_recorder_lora_plus_and_ctrl_c_under_bf16(fast_cpu, pm, tok, task):
    rec = lk.Recorder(pm)

    def stop_at_3(info):
        if info.step == 3:
            raise KeyboardInterrupt

    res = _losses(pm, tok, task, precision="bf16", loraplus_ratio=16, recorder=rec,
                  callbacks=[stop_at_3])
    assert res.interrupted and res.steps_done == 3 and res.precision == "bf16"
    assert rec.recording.steps == [0, 1, 2, 3]
    assert all(torch.isfinite(m.norm_B).all() for m in rec.recording.data.values())
    assert not pm.training


def test_fp16_with_a_gradient_scaler(pm, tok, task, monkeypatch):
    """The fp16 path (CUDA only in use) runs here on the CPU, through a plan given directly."""
    monkeypatch.setattr(train_mod, "precision_plan", lambda p, d: Plan("fp16", "cpu"))
    before = {n: p.detach().clone() for n, p in pm.named_parameters() if p.requires_grad}
    res = _losses(pm, tok, task)
    assert res.precision == "fp16" and res.skipped_steps < res.steps_done
    assert {p.dtype for p in pm.parameters()} == {torch.float32}
    assert any(not torch.equal(p, before[n]) for n, p in pm.named_parameters() if n in before)


@case("fp16 run whose gradient overflows on every step (the scaler skips them all)",
      "NonFiniteLossError: training stopped at step 10: in fp16 the gradient overflowed on 10 "
      "steps in a row … Use precision='bf16'", "adapter exactly as before (no step was taken)")
def test_fp16_overflow_on_every_step_stops(pm, tok, task, monkeypatch):
    monkeypatch.setattr(train_mod, "precision_plan",
                        lambda p, d: Plan("fp16", "cpu", init_scale=2.0 ** 120))
    before = snap(pm)
    err = raises(lk.NonFiniteLossError, "step 10: in fp16 the gradient overflowed on 10 steps in "
                 "a row.*precision='bf16'", train_quiet, pm, tok, task, steps=30, batch_size=2)
    assert err.result.skipped_steps == 10 and err.result.steps_done == 9  # as the NaN guard
    assert_intact(pm, before)
    assert not pm.training


# -- bad input -------------------------------------------------------------------------------
@case("precision='bf17' (unknown)", "ValueError: unknown precision 'bf17'; allowed: 'auto', "
      "'fp32', 'bf16', 'fp16'", "model untouched (refused before training)")
def test_unknown_precision(pm, tok, task):
    refused(pm, ValueError, "unknown precision 'bf17'; allowed: 'auto', 'fp32', 'bf16', 'fp16'",
            train_quiet, pm, tok, task, steps=1, precision="bf17")
    raises(ValueError, "allowed: 'auto'", lk.TrainSettings, precision="half")


@case("precision='fp16' on the CPU", "ValueError: precision='fp16' is not offered on the CPU: … "
      "use 'bf16' …", "model untouched")
def test_fp16_on_the_cpu_is_refused(pm, tok, task):
    refused(pm, ValueError, "'fp16' is not offered on the CPU.*slow.*'bf16'", train_quiet,
            pm, tok, task, steps=1, precision="fp16")


@case("precision='bf16' on a CUDA card without bf16 (T4, V100)", "ValueError: precision='bf16' "
      "is not supported on <card> (cuda) … choose 'fp16' …, 'fp32' or 'auto'", "nothing runs")
def test_bf16_on_a_card_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))  # T4
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    raises(ValueError, r"'bf16' is not supported on Tesla T4 \(cuda\).*'fp16'.*'fp32'.*'auto'",
           precision.plan, "bf16", "cuda")
    raises(ValueError, "not supported on device 'mps'.*'fp32' or 'auto'", precision.plan,
           "bf16", "mps")


@case("precision='bf16' on a CPU without native bf16", "UserWarning: … bf16 is emulated here, a "
      "matrix product takes 3.4× its fp32 time; 'auto' would pick fp32", "trains as asked")
def test_bf16_on_a_slow_cpu_warns_with_the_ratio(slow_cpu, pm, tok, task):
    with pytest.warns(UserWarning, match=r"emulated here.*3\.4× its fp32 time"):
        res = _losses(pm, tok, task, precision="bf16")
    assert res.precision == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _losses(pm, tok, task).precision == "fp32"   # auto: fp32, no warning


def test_measured_bf16_ratio_is_a_positive_number():
    ratio = precision.cpu_bf16_ratio.__wrapped__(n=64, reps=2)
    assert ratio > 0


# -- every front end passes it on ------------------------------------------------------------
def test_cli_tour_and_panel_pass_precision_on():
    from lorakit.app import cli, train_cli
    from lorakit.app.tour import TourSettings

    parser = cli.build_parser()
    args = parser.parse_args(["train", "--precision", "fp32", "--out", "x"])
    assert train_cli.command_from_args(args).train.precision == "fp32"
    assert cli.tour_settings(parser.parse_args(["tour", "--precision", "bf16"])).train.precision \
        == "bf16"
    assert TourSettings().train.precision == "auto"
    assert TourSettings.of(precision="fp32", steps=3).train.precision == "fp32"
    with pytest.raises(SystemExit):
        parser.parse_args(["tour", "--precision", "half"])


def test_train_panel_passes_precision_on(pm, tok, task):
    panel = lk.TrainPanel(pm, tok, task, precision="fp32", measure_accuracy=False)
    assert panel.settings.precision == "fp32"
    assert lk.TrainPanel(pm, tok, task, measure_accuracy=False).settings.precision == "auto"


# -- the embedded model ----------------------------------------------------------------------
@pytest.mark.slow
def test_auto_follows_fp32_on_smollm2(fresh, fast_cpu, one_thread):
    """A few steps on the real model: auto (bf16) tracks fp32's loss curve."""
    model, tok = fresh
    task = lk.tasks.get("iso_dates", n_train=32, n_test=4)
    runs = {}
    for prec in ("fp32", "auto"):   # lk.detach gives the base back bit-identical
        pm = lk.attach(model, r=8, alpha=16, targets=["q_proj", "v_proj"], seed=0)
        with one_thread():
            runs[prec] = lk.train(pm, tok, task, steps=6, lr=3e-3, batch_size=8,
                                  precision=prec, progress=False)
        model = lk.detach(pm)
    assert runs["auto"].precision == "bf16"
    assert runs["auto"].losses == pytest.approx(runs["fp32"].losses, rel=0.05)
    assert runs["auto"].losses[-1] < runs["auto"].losses[0]


# -- CUDA (make gpu-check) ----------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("prec", ["bf16", "fp16", "auto"])
def test_cuda_mixed_precision_trains_with_fp32_master_weights(prec, tok, task):
    """bf16 autocast, and fp16 autocast with a gradient scaler, on the CUDA card."""
    from tiny_models import make_tiny

    if prec == "bf16" and not precision.cuda_has_bf16():
        pytest.skip("this card has no bf16 (test_bf16_on_a_card_without_it covers the error)")
    pm = lk.attach(make_tiny(tok).cuda(), r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0)
    res = train_quiet(pm, tok, task, steps=12, batch_size=4, lr=1e-2, precision=prec)
    expected = prec if prec != "auto" else ("bf16" if precision.cuda_has_bf16() else "fp16")
    assert res.precision == expected and res.steps_done == 12
    assert {p.dtype for p in pm.parameters() if p.requires_grad} == {torch.float32}
    assert res.losses[-1] < res.losses[0]
    if expected == "fp16":   # the scaler may skip a few steps while it finds its scale
        assert res.skipped_steps < 6
    else:
        assert res.skipped_steps == 0


@pytest.mark.slow
@pytest.mark.skipif(not _compat.cpu_quantization_supported(),
                    reason="this bitsandbytes has no CPU 4-bit backend")
def test_qlora_on_the_cpu_computes_in_the_auto_dtype(fast_cpu, one_thread):
    """QLoRA's 4-bit layers compute in the dtype "auto" trains in (bf16 on a bf16 CPU)."""
    model, tok = lk.load_model(quantize="nf4", progress=False)
    assert model.model.layers[0].self_attn.q_proj.compute_dtype == torch.bfloat16
    pm = lk.attach(model, r=8, alpha=16, targets=["q_proj", "v_proj"], seed=0)
    with one_thread():
        res = lk.train(pm, tok, lk.tasks.get("iso_dates"), steps=4, lr=3e-3, progress=False)
    assert res.precision == "bf16" and res.losses[-1] < res.losses[0]
    assert all(p.dtype == torch.float32 for p in pm.parameters() if p.requires_grad)
