"""Bring your own model: every family in tests/families.py, end to end, from a tiny config.

Each case: find_targets, attach (PEFT task type from the model), counts == PEFT, analytic
count == PEFT, default targets and "all-linear" == PEFT's own, detach bit-identical, a few
training steps where the kind is trainable (first loss == the model's own
``model(**batch).loss`` with realistic logit sizes), Recorder + figures, merge == unmerged.
No hub: configs only; SmolLM2's tokenizer from the local cache.
"""

import copy
import warnings
from pathlib import Path

import pytest
import torch
from families import FAMILIES, readme_table

import lorakit as lk
from lorakit.core.loss import answer_positions
from lorakit.core.modelkind import TRAINABLE_KINDS, default_inputs, main_output, model_kind
from lorakit.core.naming import peft_target_lists, strip_prefix, tuner_layers
from lorakit.core.params import plan_targets

R = 4
LOGIT_SCALE = 60.0   # random init gives |logits| ≈ 0.5; ×60 gives trained-model sizes (tens)


@pytest.fixture(scope="module")
def tasks():
    return {"causal_lm": lk.tasks.get("iso_dates", n_train=32, n_test=4),
            "seq2seq": lk.tasks.get("iso_dates", n_train=32, n_test=4),
            "seq_cls": lk.tasks.get("sentiment", n_train=32, n_test=4),
            "token_cls": lk.tasks.get("ner", n_train=32, n_test=4)}


@torch.no_grad()
def _out(model, inputs) -> torch.Tensor:
    return main_output(model(**inputs)).detach().clone()


def _perturb_lora_B(pm) -> None:
    """Give the adapter an effect without training (B starts at 0)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _attach(fam, model):
    return lk.attach(model, r=R, alpha=2 * R, targets=list(fam.targets), seed=0,
                     target_parameters=list(fam.target_parameters) or None)


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
def test_family_end_to_end(fam, tok, tasks, one_thread):
    with one_thread():
        model = fam.build(len(tok), tok.pad_token_id, logit_scale=LOGIT_SCALE)
        kind = model_kind(model)
        assert kind == fam.kind
        inputs = default_inputs(model)
        base_out = _out(model, inputs)
        base_state = {k: v.clone() for k, v in model.state_dict().items()}
        assert set(fam.targets) <= set(lk.find_targets(model).names)

        # detach gives the base model back bit for bit, even after the adapter changed outputs
        pm = _attach(fam, model)
        _perturb_lora_B(pm)
        assert not torch.equal(_out(pm, inputs), base_out)
        restored = lk.detach(pm)
        assert restored is model and torch.equal(_out(model, inputs), base_out)
        state = model.state_dict()
        assert state.keys() == base_state.keys()
        assert all(torch.equal(state[k], v) for k, v in base_state.items())

        # counts: lorakit == PEFT; from the config (head and experts included) == PEFT
        pm = _attach(fam, model)
        counts = lk.count_params(pm)
        peft_trainable, peft_total = pm.get_nb_trainable_parameters()
        assert (counts.trainable, counts.total) == (peft_trainable, peft_total)
        head = sum(p.numel() for n, p in pm.named_parameters()
                   if "modules_to_save" in n and p.requires_grad)
        assert (head > 0) == (kind in ("seq_cls", "token_cls"))  # a classifier's head trains
        analytic = lk.lora_param_count(model.config, r=R, targets=list(fam.targets),
                                       target_parameters=list(fam.target_parameters) or None)
        assert analytic == peft_trainable

        rec = lk.Recorder(pm)
        if kind in TRAINABLE_KINDS:
            task = tasks[kind]
            batch = next(task.batches(tok, 4, seed=0, kind=kind))
            with torch.no_grad():
                own = pm(**batch)
            res = lk.train(pm, tok, task, steps=3, lr=1e-2, batch_size=4, recorder=rec,
                           precision="fp32", progress=False)   # the fp32 loss, to 1e-4
            assert res.losses[0] == pytest.approx(own.loss.item(), rel=1e-4)
            if kind == "causal_lm":   # realistic logit sizes, where a skipped transform shows
                assert own.logits.abs().max() > 3   # (random init: < 1)
        else:
            rec.on_step(0, None)
            _perturb_lora_B(pm)
            rec.on_step(1, None)
            rec.on_end(1, None)
        recording = rec.recording
        assert len(recording) >= 2 and recording.modules
        for module in recording.modules:
            frames = recording.frames(module)
            assert frames.full_name.split(".")[-1] in fam.targets
        fig = lk.figures.matrix_evolution(recording, recording.modules[-1])
        assert len(fig.frames) == len(recording)
        assert len(lk.figures.norms_over_time(recording).data) >= len(recording.modules)

        # merge: the merged model's main output equals the unmerged one's
        unmerged = _out(pm, inputs)
        merged = lk.merge(pm)
        check = merged.merge_check
        assert check.ok and check.adapter_effect > 100 * check.max_abs_diff
        torch.testing.assert_close(_out(merged, inputs), unmerged, rtol=1e-4,
                                   atol=1e-5 * unmerged.abs().max().item())


def _wrapped(model) -> set[str]:
    return {strip_prefix(n) for n, _ in tuner_layers(model)}


def _peft_own(model, targets):
    """PEFT's own get_peft_model on a copy: (wrapped modules, trainable), None where PEFT
    refuses (no default for the family; a head it cannot both wrap and train)."""
    from peft import LoraConfig, get_peft_model

    from lorakit.core.modelkind import peft_task_type

    config = LoraConfig(r=R, lora_alpha=2 * R, target_modules=targets,
                        task_type=peft_task_type(model))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = get_peft_model(copy.deepcopy(model), config)
    except (ValueError, TypeError):
        return None
    return _wrapped(ref), ref.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
def test_default_and_all_linear_are_peft_own(fam, tok, one_thread):
    """Acceptance: with no targets lk.attach adapts PEFT's per-architecture default (where PEFT
    has one), "all-linear" PEFT's module set (minus modules too small for r, with a note);
    lora_param_count (model and config) and estimate == PEFT's trainable count for default,
    "all-linear" and the family's explicit targets; the config is unchanged; detach gives
    the model back bit for bit."""
    with one_thread():
        model = fam.build(len(tok), tok.pad_token_id)
        before = model.config.to_dict()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        own_default = peft_target_lists().get(model.config.model_type)
        for targets in (None, "all-linear", list(fam.targets)):
            plan = plan_targets(model, targets, R)
            if targets is None and own_default and set(own_default) <= set(
                    lk.find_targets(model).names):
                assert plan.targets == tuple(own_default)
            ref = _peft_own(model, targets if targets is not None else own_default)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pm = lk.attach(model, r=R, alpha=2 * R, targets=targets, seed=0)
            trainable = pm.get_nb_trainable_parameters()[0]
            if ref is not None:
                skipped = {i.name for i in plan.skipped}
                assert _wrapped(pm) == ref[0] - skipped
                if not skipped:
                    assert trainable == ref[1]
            assert lk.lora_param_count(model, r=R, targets=targets) == trainable
            assert lk.lora_param_count(model.config, r=R, targets=targets) == trainable
            assert lk.estimate(model.config, r=R, targets=targets).lora_params == trainable
            assert lk.detach(pm) is model
        assert model.config.to_dict() == before
        after = model.state_dict()
        assert after.keys() == state.keys()
        assert all(torch.equal(after[k], v) for k, v in state.items())


def _naive_loss(model, batch) -> torch.Tensor:
    """The loss lorakit computed before: backbone + output head, skipping the model's own
    logit transform (what Gemma-2's soft-capping / Cohere's logit_scale do)."""
    hidden = model.base_model(input_ids=batch["input_ids"],
                              attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    learned = targets != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][learned])
    return torch.nn.functional.cross_entropy(logits.float(), targets[learned])


@pytest.mark.parametrize("name", ["Gemma-2", "Cohere", "Granite"])
def test_first_step_loss_is_the_models_own_where_logits_are_transformed(name, tok, tasks,
                                                                        one_thread):
    """Acceptance: logits ×60; the first training step's loss == model(**batch).loss, and the
    backbone + head shortcut would not have been (so this test can tell them apart)."""
    fam = next(f for f in FAMILIES if f.name == name)
    model = fam.build(len(tok), tok.pad_token_id, logit_scale=LOGIT_SCALE)
    task = tasks["causal_lm"]
    batch = next(task.batches(tok, 8, seed=0))
    with torch.no_grad():
        own = model(**batch).loss.item()
        naive = _naive_loss(model, batch).item()
    assert abs(naive - own) > 0.05 * own
    pm = lk.attach(model, r=R, alpha=2 * R, seed=0)
    with one_thread():
        res = lk.train(pm, tok, task, steps=1, batch_size=8, precision="fp32", progress=False)
    assert res.losses[0] == pytest.approx(own, rel=1e-4)


def test_answer_positions_are_the_union_over_rows():
    labels = torch.full((2, 6), -100)
    labels[0, 3:5] = 1
    labels[1, 2] = 1
    assert answer_positions(labels).tolist() == [1, 2, 3]


def test_readme_table_is_generated_from_the_families():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert readme_table() in readme, "regenerate it: python -m tests.families"


def _recorder_names(fam, tok, targets):
    model = fam.build(len(tok), tok.pad_token_id)
    pm = lk.attach(model, r=R, alpha=2 * R, targets=targets, seed=0)
    return lk.Recorder(pm), lk.count_params(pm)


def test_same_suffix_modules_are_told_apart_and_all_recorded(tok):
    """GPT-2's attn.c_proj and mlp.c_proj are two kinds; the default recording has both."""
    rec, _ = _recorder_names(FAMILIES[0], tok, ["c_attn", "c_proj"])
    assert rec.modules == ["layers.0.c_attn", "layers.0.attn.c_proj", "layers.0.mlp.c_proj",
                           "layers.1.c_attn", "layers.1.attn.c_proj", "layers.1.mlp.c_proj"]
    rec.on_step(0, None)
    types = {m.module_type for m in rec.recording.data.values()}
    assert types == {"c_attn", "attn.c_proj", "mlp.c_proj"}


def test_encoder_and_decoder_stacks_are_named_apart(tok):
    """T5 (block.N in encoder and decoder): distinct short names and block numbers, and the
    default recording covers the decoder's self- and cross-attention too."""
    t5 = next(f for f in FAMILIES if f.name == "T5")
    rec, counts = _recorder_names(t5, tok, ["q"])
    assert rec.modules == ["encoder.layers.0.SelfAttention.q", "encoder.layers.1.SelfAttention.q",
                           "decoder.layers.0.SelfAttention.q",
                           "decoder.layers.0.EncDecAttention.q",
                           "decoder.layers.1.SelfAttention.q",
                           "decoder.layers.1.EncDecAttention.q"]
    assert [k for k in counts.by_layer if k is not None] == [0, 1, 2, 3]   # enc 0-1, dec 2-3
    lora = [c.trainable for k, c in counts.by_layer.items() if k is not None]
    assert lora == [R * 128] * 2 + [2 * R * 128] * 2   # decoder blocks: self + cross q
