"""lk.train on the real SmolLM2: loss, determinism, LoRA+, Ctrl-C, NaN, errors, accuracy."""

import importlib
import re
import sys

import pytest
import torch
from faults import assert_intact, case, raises, refused, snap, train_quiet

import lorakit as lk
from lorakit.core.train import NonFiniteLossError, answer_loss

train_mod = importlib.import_module("lorakit.core.train")  # lk.train is the function


@pytest.fixture
def peft_pair(fresh):
    model, tok = fresh
    return lk.attach(model, r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0), tok


def lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


TASK = lk.tasks.get("iso_dates")


def test_answer_loss_equals_transformers_loss(peft_pair):
    pm, tok = peft_pair
    with torch.no_grad():
        for p in (p for n, p in pm.named_parameters() if "lora_B" in n):
            p.normal_(std=0.02)  # non-zero B, so the adapter is in the computation
        batch = TASK.encode(tok, TASK.train[:3])
        assert answer_loss(pm, batch).item() == pytest.approx(pm(**batch).loss.item(), abs=1e-5)


def test_answer_scores_per_example_loss_and_greedy_exact_match(smol):
    from lorakit.core.loss import answer_scores

    model, tok = smol
    batch = TASK.encode(tok, TASK.train[:4])
    loss, exact = answer_scores(model, batch)
    n = (batch["labels"][:, 1:] != -100).sum(dim=1)
    assert loss.shape == exact.shape == (4,)
    with torch.no_grad():   # the answer-token weighted mean is the batch's answer loss
        assert (loss * n).sum() / n.sum() == pytest.approx(answer_loss(model, batch).item(),
                                                           abs=1e-5)
    # an answer that is the model's own greedy continuation: exact; one token changed: not
    one = TASK.encode(tok, TASK.test[:1])
    start = int((one["labels"][0] != -100).nonzero()[0])
    prompt = one["input_ids"][:, :start]
    full = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                          max_new_tokens=5, pad_token_id=tok.pad_token_id)[0]
    ids = torch.stack([full, full])
    labels = ids.clone()
    labels[:, :start] = -100
    greedy = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    assert answer_scores(model, greedy)[1].tolist() == [True, True]
    wrong = {k: v.clone() for k, v in greedy.items()}
    wrong["labels"][1, -1] = wrong["input_ids"][1, -1] = (int(ids[1, -1]) + 1) % 1000
    assert answer_scores(model, wrong)[1].tolist() == [True, False]
    with pytest.raises(ValueError, match="no answer tokens"):
        answer_scores(model, {**greedy, "labels": torch.full_like(labels, -100)})


@pytest.mark.slow
def test_training_lowers_loss_and_is_deterministic(fresh):
    model, tok = fresh
    runs = []
    for _ in range(2):
        pm = lk.attach(model, r=4, alpha=8, seed=0)
        res = lk.train(pm, tok, TASK, steps=6, lr=3e-3, batch_size=4, progress=False)
        runs.append((res.losses, lora_state(pm)))
    (l1, s1), (l2, s2) = runs
    assert l1 == l2 and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert l1[-1] < l1[0]
    assert not pm.training  # left in eval mode


@pytest.mark.slow
def test_result_fields(peft_pair):
    pm, tok = peft_pair
    res = lk.train(pm, tok, TASK, steps=3, lr=1e-3, batch_size=2, warmup=0, progress=False)
    assert res.steps_done == 3 and res.steps_planned == 3 and not res.interrupted
    assert len(res.lrs) == len(res.step_times) == len(res.tokens) == 3
    assert res.lrs[0] == pytest.approx(1e-3) and res.lrs[-1] < res.lrs[0]  # linear decay
    assert res.tokens_per_s > 0 and all(t > 0 for t in res.tokens)
    assert "3/3 steps" in str(res)


def test_loraplus_gives_b_a_larger_lr(peft_pair, monkeypatch):
    pm, tok = peft_pair
    seen = {}
    real = torch.optim.AdamW

    def spy(groups, **kw):
        seen["groups"] = groups
        return real(groups, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    lk.train(pm, tok, TASK, steps=1, lr=1e-4, batch_size=1, loraplus_ratio=16, progress=False)
    rest, b = seen["groups"]
    names = {id(p): n for n, p in pm.named_parameters()}
    assert all("lora_B" in names[id(p)] for p in b["params"]) and b["lr"] == pytest.approx(16e-4)
    assert all("lora_A" in names[id(p)] for p in rest["params"]) and rest["lr"] == 1e-4


@pytest.mark.slow
def test_keyboard_interrupt_keeps_progress(peft_pair):
    pm, tok = peft_pair
    rec = lk.Recorder(pm, every=1)
    snapshot = {}

    def stop_at_3(info):
        if info.step == 3:
            snapshot.update(lora_state(info.model))
            raise KeyboardInterrupt

    res = lk.train(pm, tok, TASK, steps=10, lr=2e-3, batch_size=2, recorder=rec,
                   callbacks=[stop_at_3], progress=False)
    assert res.interrupted and res.steps_done == 3 and len(res.losses) == 3
    assert rec.recording.steps == [0, 1, 2, 3]
    assert all(torch.equal(v, lora_state(pm)[k]) for k, v in snapshot.items())
    assert not pm.training and all(p.grad is None for p in pm.parameters())
    assert lk.generate(pm, tok, "Convert to ISO date: May 1, 2000", max_new_tokens=4)  # usable


@pytest.mark.slow
def test_callback_can_stop(peft_pair):
    pm, tok = peft_pair
    res = lk.train(pm, tok, TASK, steps=10, batch_size=1, callbacks=[lambda i: i.step >= 2],
                   progress=False)
    assert res.steps_done == 2 and not res.interrupted


@pytest.mark.slow
def test_nan_loss_stops_naming_step_and_keeps_finite_weights(peft_pair, monkeypatch):
    pm, tok = peft_pair
    calls = {"n": 0}
    real = train_mod.answer_loss

    def poisoned(model, batch):
        calls["n"] += 1
        loss = real(model, batch)
        return loss * float("nan") if calls["n"] == 3 else loss

    # the step's loss comes from lorakit.core.loss (train re-exports it for readers)
    monkeypatch.setattr(sys.modules["lorakit.core.loss"], "answer_loss", poisoned)
    after_2 = {}
    rec = lk.Recorder(pm)
    with pytest.raises(NonFiniteLossError, match="stopped at step 3: loss is nan") as err:
        lk.train(pm, tok, TASK, steps=6, lr=2e-3, batch_size=1, recorder=rec, progress=False,
                 callbacks=[lambda i: after_2.update(lora_state(i.model)) if i.step == 2 else None])
    assert err.value.result.steps_done == 2
    state = lora_state(pm)
    assert all(torch.equal(after_2[k], state[k]) for k in state)
    assert all(torch.isfinite(v).all() for v in state.values())
    assert rec.recording.steps == [0, 1, 2]


@pytest.mark.slow
def test_continuing_training_continues_recording(peft_pair):
    pm, tok = peft_pair
    rec = lk.Recorder(pm, every=1)
    lk.train(pm, tok, TASK, steps=2, batch_size=1, recorder=rec, progress=False)
    lk.train(pm, tok, TASK, steps=2, batch_size=1, recorder=rec, progress=False)
    assert rec.recording.steps == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps must be a positive integer"),
    (dict(steps=2.5), "steps must be a positive integer"),
    (dict(lr=0), "lr must be a finite number > 0"),
    (dict(lr=float("inf")), "lr must be a finite number > 0"),
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(loraplus_ratio=-1), "loraplus_ratio must be > 0"),
])
def test_bad_arguments(peft_pair, kwargs, message):
    pm, tok = peft_pair
    before = lora_state(pm)
    with pytest.raises(ValueError, match=message):
        lk.train(pm, tok, TASK, progress=False, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in lora_state(pm).items())


def test_no_trainable_parameters(fresh):
    model, tok = fresh
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters: attach an adapter first"):
        lk.train(model, tok, TASK, steps=1, progress=False)


def test_task_type_checked(peft_pair):
    pm, tok = peft_pair
    with pytest.raises(TypeError, match="task must be a lorakit Task"):
        lk.train(pm, tok, "iso_dates", steps=1, progress=False)


# The iso_dates acceptance (base ≤ 10%; r=8 q,v, 40 steps → ≥ 90% on 50 held-out items) is
# asserted once, through the product's main job: tests/test_cli.py::test_default_tour_learns_
# iso_dates runs `lorakit tour`, whose defaults are exactly these settings (checked there).


# -- bad input and faults: a clear error, nothing changed (docs/reliability.md) --------------------
@case("train a model with no adapter (forgot lk.attach)", "ValueError: the model has no LoRA "
      "adapter … pass full_finetune=True", "base weights untouched (it used to fine-tune all)")
def test_train_without_adapter(tiny, tok, task):
    refused(tiny, ValueError, "no LoRA adapter.*full_finetune=True", train_quiet,
            tiny, tok, task, steps=1)


@case("train(full_finetune=True) on a model with no adapter", "none: trains the whole model "
      "(explicit)", "—")
def test_train_full_finetune_is_explicit(tiny, tok, task):
    before = snap(tiny)
    train_quiet(tiny, tok, task, steps=1, batch_size=2, full_finetune=True)
    changed = [n for n, (t, _) in before["params"].items()
               if not torch.equal(dict(tiny.named_parameters())[n], t)]
    assert changed


def _history(pm):
    hist = []

    def keep(info):
        hist.append({n: p.detach().clone() for n, p in pm.named_parameters() if p.requires_grad})
    return hist, keep


@case("diverging run on SmolLM2: lr=1e3, no clipping (max_grad_norm=None), with a Recorder",
      "NonFiniteLossError: training stopped at step N … keeps its weights from step N-1",
      "adapter finite and equal to the last good step; Recorder frames finite (no LinAlgError)")
@pytest.mark.slow
def test_divergence_without_clipping_restores_last_good(fresh):
    model, tok = fresh
    task = lk.tasks.get("iso_dates", n_train=16, n_test=4)
    pm = lk.attach(model, r=8, alpha=16, seed=0)
    rec = lk.Recorder(pm)
    hist, keep = _history(pm)
    err = raises(lk.NonFiniteLossError, "keeps its weights from step", train_quiet, pm, tok, task,
                 steps=30, lr=1e3, batch_size=2, max_grad_norm=None, recorder=rec,
                 callbacks=[keep])
    good = err.result.steps_done
    assert good >= 1 and f"from step {good} " in str(err) and len(hist) == good
    for n, p in pm.named_parameters():
        if p.requires_grad:
            assert torch.isfinite(p).all() and torch.equal(p, hist[-1][n]), n
    recording = rec.recording
    assert recording.steps[-1] == good
    for m in recording.modules:
        assert all(torch.isfinite(t).all() for t in recording.frames(m).tensors().values())


def _nan_at_step(pm, step: int):
    """A hook that turns lora_A's gradient into NaN from the ``step``-th backward on."""
    calls = {"n": 0}
    p = next(p for n, p in pm.named_parameters() if "lora_A" in n)

    def hook(g):
        calls["n"] += 1
        return g * float("nan") if calls["n"] >= step else g
    p.register_hook(hook)


@case("NaN gradient at step 3 with clipping on (max_grad_norm=1)", "NonFiniteLossError: "
      "training stopped at step 3: the gradient is not finite", "adapter equal to step 2's")
def test_divergence_with_clipping_restores_last_good(pm, tok, task):
    hist, keep = _history(pm)
    _nan_at_step(pm, 3)
    err = raises(lk.NonFiniteLossError, "stopped at step 3: the gradient is not finite",
                 train_quiet, pm, tok, task, steps=10, batch_size=2, callbacks=[keep])
    assert err.result.steps_done == 2 == len(hist)
    for n, p in pm.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, hist[-1][n]), n


@case("weights that become inf in the optimizer step (finite loss and gradient)",
      "NonFiniteLossError: the updated weights are not finite", "adapter equal to the step "
      "before")
def test_inf_weights_after_step_restored(pm, tok, task, monkeypatch):
    before = snap(pm)
    original = torch.optim.AdamW.step

    def bad_step(self, *a, **k):
        out = original(self, *a, **k)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return out
    monkeypatch.setattr(torch.optim.AdamW, "step", bad_step)
    raises(lk.NonFiniteLossError, "updated weights are not finite", train_quiet, pm, tok, task,
           steps=3, batch_size=2)
    assert_intact(pm, before)


@case("NaN gradient (a hook injects NaN) without clipping", "NonFiniteLossError: the gradient "
      "is not finite", "adapter bit-identical to before the step")
def test_nan_gradient_detected_without_clipping(pm, tok, task):
    before = snap(pm)
    p = next(p for n, p in pm.named_parameters() if "lora_A" in n)
    p.register_hook(lambda g: g * float("nan"))
    raises(lk.NonFiniteLossError, "gradient is not finite", train_quiet, pm, tok, task, steps=3,
           max_grad_norm=None, batch_size=2)
    assert_intact(pm, before)


@case("NaN loss at the first step", "NonFiniteLossError: loss is nan", "adapter bit-identical")
def test_nan_loss_first_step(pm, tok, task, monkeypatch):
    loss_module = sys.modules["lorakit.core.loss"]   # the loss lk.train's step calls

    before = snap(pm)
    monkeypatch.setattr(loss_module, "answer_loss",
                        lambda m, b: torch.tensor(float("nan"), requires_grad=True))
    raises(lk.NonFiniteLossError, "loss is nan", train_quiet, pm, tok, task, steps=3, batch_size=2)
    assert_intact(pm, before)


@case("two trainings of one model at once (TrainPanel + lk.train)", "RuntimeError: this model "
      "is already training", "the first training goes on; the flag is cleared after")
def test_second_concurrent_training_refused(pm, tok, task):
    errors = []

    def second(info):
        try:
            train_quiet(pm, tok, task, steps=1, batch_size=2)
        except RuntimeError as e:
            errors.append(str(e))

    res = train_quiet(pm, tok, task, steps=2, batch_size=2, callbacks=[second])
    assert res.steps_done == 2 and len(errors) == 2 and "already training" in errors[0]
    train_quiet(pm, tok, task, steps=1, batch_size=2)  # free again afterwards


BAD_TRAIN = [
    ("steps=0", dict(steps=0), "steps must be a positive integer"),
    ("batch_size=0", dict(batch_size=0), "batch_size must be a positive integer"),
    ("lr=nan", dict(lr=float("nan")), "lr must be a finite number"),
    ("lr=-1", dict(lr=-1), "lr must be a finite number"),
    ("warmup=-1", dict(warmup=-1), "warmup must be an integer"),
    ("max_grad_norm=0", dict(max_grad_norm=0), "max_grad_norm must be > 0"),
    ("loraplus_ratio=-1", dict(loraplus_ratio=-1), "loraplus_ratio must be > 0"),
]


def _train_case(label, kwargs, phrase):
    def test(pm, tok, task):
        refused(pm, ValueError, phrase, train_quiet, pm, tok, task, **kwargs)

    test.__name__ = "test_train_refuses_" + re.sub(r"\W+", "_", label).strip("_")
    return case(f"train({label})", f"ValueError: {phrase}", "adapter bit-identical")(test)


for _label, _kw, _phrase in BAD_TRAIN:
    _t = _train_case(_label, _kw, _phrase)
    globals()[_t.__name__] = _t


@case("train(task='iso_dates') (a name, not a Task)", "TypeError: task must be a lorakit Task",
      "adapter bit-identical")
def test_train_task_not_task(pm, tok):
    refused(pm, TypeError, "task must be a lorakit Task", train_quiet, pm, tok, "iso_dates",
            steps=1)


@case("batch_size larger than the training examples", "UserWarning (once): batch_size=64 is "
      "larger than the task's 16 training examples", "trains on full batches of 16")
def test_batch_larger_than_data_warns(pm, tok, task):
    with pytest.warns(UserWarning, match="batch_size=64 is larger than the task's 16") as w:
        res = train_quiet(pm, tok, task, steps=2, batch_size=64)
    assert len([x for x in w if "larger than" in str(x.message)]) == 1
    whole = int(task.encode(tok, task.train)["attention_mask"].sum())
    assert res.tokens == [whole, whole]  # every step sees all 16 examples, none repeated


@case("Ctrl-C in a callback during training", "none: returns interrupted=True",
      "adapter keeps that step's weights, model in eval mode")
def test_interrupt_keeps_weights(pm, tok, task):
    hist, keep = _history(pm)

    def stop(info):
        keep(info)
        raise KeyboardInterrupt

    res = train_quiet(pm, tok, task, steps=5, batch_size=2, callbacks=[stop])
    assert res.interrupted and res.steps_done == 1 and not pm.training
    assert all(torch.equal(p, hist[-1][n]) for n, p in pm.named_parameters() if p.requires_grad)


def test_train_takes_a_train_settings_object(tiny, tok, task):
    """train(..., TrainSettings(...)) is the keyword call; a keyword changes one field."""
    s = lk.TrainSettings(steps=2, lr=1e-3, batch_size=2, seed=3)
    calls = [((s,), {}), ((), dict(steps=2, lr=1e-3, batch_size=2, seed=3)),
             ((lk.TrainSettings(steps=5, lr=1e-3, batch_size=2, seed=3),), dict(steps=2))]
    runs = []
    for args, kwargs in calls:
        pm = lk.attach(tiny, r=2, targets=["q_proj"], seed=0)
        res = lk.train(pm, tok, task, *args, **kwargs, progress=False)
        runs.append((res.losses, res.lrs, res.tokens))
        lk.detach(pm)
    assert runs[0] == runs[1] == runs[2] and len(runs[0][0]) == 2
    pm = lk.attach(tiny, r=2, targets=["q_proj"], seed=0)
    before = snap(pm)
    raises(TypeError, "settings must be a TrainSettings", lk.train, pm, tok, task, {"steps": 1})
    raises(ValueError, "steps must be a positive integer", lk.train, pm, tok, task, s, steps=0)
    assert_intact(pm, before)


# -- Ctrl-C inside a step: the model as before that step -----------------------------------------
def _interrupt_in(phase: str, pm, monkeypatch, recorder):
    """Raise KeyboardInterrupt in ``phase`` of step 2 (the optimizer step: after it updated half
    of the adapter's tensors). Returns a dict whose "after" the recorder phase fills with the
    model as its completed step left it."""
    calls = {"n": 0, "after": None}

    def second() -> bool:
        calls["n"] += 1
        return calls["n"] == 2

    if phase == "forward":      # half-way through the forward pass (after the first layer)
        layer = pm.base_model.model.model.layers[0]
        layer.register_forward_hook(lambda *a: (_ for _ in ()).throw(KeyboardInterrupt())
                                    if second() else None)
    elif phase == "backward":   # half-way through the backward pass (one gradient computed)
        p = next(p for n, p in pm.named_parameters() if "lora_B" in n)
        p.register_hook(lambda g: (_ for _ in ()).throw(KeyboardInterrupt()) if second() else g)
    elif phase == "clip":       # after the gradients were clipped in place
        clip = torch.nn.utils.clip_grad_norm_

        def clip_then_stop(*a, **k):
            norm = clip(*a, **k)
            if second():
                raise KeyboardInterrupt
            return norm
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_then_stop)
    elif phase == "optimizer":  # AdamW updates tensors one by one: stop after half of them
        step = torch.optim.AdamW.step

        def half_a_step(self, *a, **k):
            if not second():
                return step(self, *a, **k)
            group = self.param_groups[0]
            everything = group["params"]
            group["params"] = everything[: len(everything) // 2]
            try:
                step(self, *a, **k)
            finally:
                group["params"] = everything
            raise KeyboardInterrupt
        monkeypatch.setattr(torch.optim.AdamW, "step", half_a_step)
    else:                       # the recorder, after the step
        on_step = recorder.on_step

        def record_then_stop(step, loss):
            on_step(step, loss)
            if step == 2:
                calls["after"] = snap(pm)
                raise KeyboardInterrupt
        monkeypatch.setattr(recorder, "on_step", record_then_stop)
    return calls


@case("Ctrl-C (KeyboardInterrupt) inside lk.train's step 2: in the forward pass, the backward "
      "pass, the clipping, half-way through AdamW's update (half the tensors updated), or in "
      "the Recorder", "none: returns interrupted=True",
      "every parameter bit-identical to after step 1 (the Recorder: to after step 2, the "
      "step it was recording); model in eval mode (AdamW's half update used to stay)")
@pytest.mark.parametrize("phase", ["forward", "backward", "clip", "optimizer", "recorder"])
def test_interrupt_inside_a_step_rolls_it_back(pm, tok, task, monkeypatch, phase):
    rec = lk.Recorder(pm)
    after_step_1 = {}

    def keep(info):
        if info.step == 1:
            after_step_1["snap"] = snap(pm)
    calls = _interrupt_in(phase, pm, monkeypatch, rec)
    res = train_quiet(pm, tok, task, steps=3, batch_size=2, max_grad_norm=1.0, recorder=rec,
                      callbacks=[keep])
    assert res.interrupted and not pm.training
    if phase == "recorder":
        assert res.steps_done == 2
        assert_intact(pm, calls["after"])
    else:
        assert res.steps_done == 1
        assert_intact(pm, after_step_1["snap"])
    assert rec.recording.steps[-1] == res.steps_done


@case("train a merged adapter (after lk.merge_in_place)", "ValueError: the adapter is merged "
      "into the base weights … call lk.unmerge(model) first", "model unchanged, still merged")
def test_train_a_merged_adapter(pm, tok, task):
    lk.merge_in_place(pm)
    refused(pm, ValueError, r"merged into the base weights.*lk.unmerge\(model\)", train_quiet,
            pm, tok, task, steps=1, batch_size=2)
    assert lk.is_merged(pm)


@case("a training example longer than the model's context (300 tokens vs 256)", "ValueError: "
      "training example I of task … is N tokens, more than the model's context length of 256 "
      "tokens … Shorten or drop", "refused before step 1: model unchanged (it trained on "
      "garbage positions, or crashed with an IndexError on GPT-2)")
def test_train_example_longer_than_the_context(pm, tok):
    long = lk.tasks.from_pairs("long", [("short question", "a")] * 8
                               + [("word " * 300, "b")] * 2, test_fraction=0.2, seed=0)
    i = next(i for i, e in enumerate(long.train) if len(e.prompt) > 1000)
    refused(pm, ValueError, f"training example {i} of task 'long'.*context length of 256 "
            "tokens.*Shorten or drop", train_quiet, pm, tok, long, steps=1, batch_size=2)


@case("diverging run with clipping on (lr=1e3, max_grad_norm=1)", "NonFiniteLossError: … Try a "
      "lower learning rate than lr=1000 (no advice to turn on the clipping that is on)",
      "adapter equal to the last good step")
def test_divergence_hint_with_clipping_on(pm, tok, task):
    _nan_at_step(pm, 2)
    err = raises(lk.NonFiniteLossError, "lower learning rate than lr=1000", train_quiet, pm, tok,
                 task, steps=3, lr=1e3, batch_size=2, max_grad_norm=1.0)
    assert "clipping" not in str(err)
    _nan_at_step(pm, 1)
    raises(lk.NonFiniteLossError, "or gradient clipping", train_quiet, pm, tok, task,
           steps=3, batch_size=2, max_grad_norm=None)
