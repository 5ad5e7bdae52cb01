"""Bring your own model and data: target forms, model kinds, plain prompts, files and datasets,
a BERT classifier trained on the built-in sentiment task, and refusals before any change."""

import json
import warnings

import pytest
import torch
from families import FAMILIES
from faults import case, refused, snap
from torch import nn

import lorakit as lk
from lorakit.core.attach import settings_of
from lorakit.core.modelkind import peft_task_type
from lorakit.core.naming import tuner_layers

R = 4


def fam(name):
    return next(f for f in FAMILIES if f.name == name)


@pytest.fixture
def plain_tok(tok):
    """The same tokenizer without a chat template, as a pretrained-only checkpoint has."""
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = None
    return t


def _flags(model):
    return {n: p.requires_grad for n, p in model.named_parameters()}


# -- target forms ----------------------------------------------------------------------------
def test_all_linear_and_regex_targets_count_like_peft(tok):
    llama = fam("Llama").build(len(tok), tok.pad_token_id)
    for targets in ("all-linear", r".*\.(q_proj|v_proj)", r"model\.layers\.1\.mlp\..*_proj"):
        pm = lk.attach(llama, r=R, alpha=2 * R, targets=targets, seed=0)
        trainable, total = pm.get_nb_trainable_parameters()
        assert lk.count_params(pm).trainable == trainable
        assert lk.lora_param_count(llama.config, r=R, targets=targets) == trainable
        wrapped = {n.removeprefix("base_model.model.") for n, _ in tuner_layers(pm)}
        assert "lm_head" not in wrapped and wrapped
        llama = lk.detach(pm)
    # the regex picks exactly the modules the list picks
    as_list = lk.lora_param_count(llama, r=R, targets=["q_proj", "v_proj"])
    assert lk.lora_param_count(llama, r=R, targets=r".*\.(q_proj|v_proj)") == as_list


def test_regex_matching_nothing_lists_real_names_and_changes_nothing(tok):
    llama = fam("Llama").build(len(tok), tok.pad_token_id)
    flags = _flags(llama)
    with pytest.raises(ValueError, match=r"match no Linear module.*model\.layers\.0\.self_attn"):
        lk.attach(llama, targets=r".*\.query")
    assert not tuner_layers(llama) and _flags(llama) == flags


class _HeadOnly(nn.Module):
    """A model whose only Linear is its output head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.lm_head = nn.Linear(8, 10)

    def get_output_embeddings(self):
        return self.lm_head


def test_all_linear_on_a_head_only_model_is_refused():
    model = _HeadOnly()
    with pytest.raises(ValueError, match="'all-linear' finds no Linear.*output head 'lm_head'"):
        lk.attach(model, targets="all-linear", task_type=None)
    assert not tuner_layers(model)


def test_moe_experts_through_target_parameters_and_bad_names(tok):
    mixtral = fam("Mixtral").build(len(tok), tok.pad_token_id)
    offered = lk.find_target_parameters(mixtral)    # router and experts: not Linear modules
    assert offered == {"mlp.gate.weight": (4, 64), "mlp.experts.gate_up_proj": (4, 256, 64),
                       "mlp.experts.down_proj": (4, 64, 128)}
    with pytest.raises(ValueError, match=r"match no parameter.*experts\.gate_up_proj"):
        lk.attach(mixtral, targets=["q_proj"], target_parameters=["mlp.experts.nope"])
    assert not tuner_layers(mixtral)
    pm = lk.attach(mixtral, r=R, targets=["q_proj"],
                   target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    trainable = pm.get_nb_trainable_parameters()[0]
    assert lk.count_params(pm).trainable == trainable
    experts = sum(R * p.shape[0] * (p.shape[1] + p.shape[2])
                  for n, p in mixtral.named_parameters() if n.endswith("_proj") and p.ndim == 3)
    assert trainable == lk.lora_param_count(mixtral, r=R, targets=["q_proj"]) + experts


# -- model kinds -----------------------------------------------------------------------------
def test_task_type_follows_the_model_and_can_be_overridden(tok):
    expected = {"BERT": "FEATURE_EXTRACTION", "BERT classifier": "SEQ_CLS", "T5": "SEQ_2_SEQ_LM",
                "ViT": None, "Llama": "CAUSAL_LM"}
    for name, task_type in expected.items():
        model = fam(name).build(len(tok), tok.pad_token_id)
        assert peft_task_type(model) == task_type
    bert = fam("BERT").build(len(tok), tok.pad_token_id)
    pm = lk.attach(bert, targets=["query"], task_type=None)
    assert type(pm).__name__ == "PeftModel"


def test_train_refuses_a_kind_it_cannot_train_before_any_change(tok):
    bert = fam("BERT").build(len(tok), tok.pad_token_id)
    pm = lk.attach(bert, r=R, targets=["query", "value"], seed=0)
    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    with pytest.raises(ValueError, match=r"cannot train a BertModel.*load it with a head.*"
                                         r"AutoModelForSequenceClassification.*causal LMs and "
                                         r"seq2seq.*sequence classifiers.*token classifiers"):
        lk.train(pm, tok, lk.tasks.get("sentiment"), steps=2, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in pm.named_parameters())


def test_a_classifier_needs_a_classification_task(tok):
    clf = fam("BERT classifier").build(len(tok), tok.pad_token_id)
    pm = lk.attach(clf, r=R, targets=["query", "value"], seed=0)
    with pytest.raises(ValueError, match="needs a classification task.*sentiment"):
        lk.train(pm, tok, lk.tasks.get("iso_dates"), steps=2, progress=False)


def test_bert_classifier_learns_sentiment_from_chance(tok, one_thread):
    """Acceptance: a (random-init, tiny) BERT classifier with LoRA on query/value and its head
    trained (modules_to_save) goes from chance to clearly better held-out accuracy."""
    task = lk.tasks.get("sentiment")
    clf = fam("BERT classifier").build(len(tok), tok.pad_token_id)
    pm = lk.attach(clf, r=8, alpha=16, targets=["query", "value"], seed=0)
    head = lk.count_params(pm).by_type["classifier"]
    assert head.trainable == 64 * 2 + 2       # the head's copy is trainable and counted
    before = task.accuracy(pm, tok, n=100)
    with one_thread():
        lk.train(pm, tok, task, steps=150, lr=1e-2, batch_size=16, progress=False)
    after = task.accuracy(pm, tok, n=100)
    print(f"sentiment held-out accuracy: {before} -> {after} (chance {task.chance():.0%})")
    assert before.score <= task.chance() + 0.05
    assert after.score >= 0.8


def test_seq2seq_trains_with_prompt_in_encoder_and_answer_in_decoder(tok, one_thread):
    t5 = fam("T5").build(len(tok), tok.pad_token_id)
    task = lk.tasks.get("iso_dates", n_train=32, n_test=4)
    batch = task.encode(tok, task.train[:2], "seq2seq")
    answer = tok(task.train[0].answer, add_special_tokens=False)["input_ids"]
    assert batch["labels"][0, :len(answer)].tolist() == answer     # the decoder learns the answer
    assert task.train[0].prompt in tok.decode(batch["input_ids"][0])  # the encoder: the prompt
    pm = lk.attach(t5, r=R, targets=["q", "v"], seed=0)
    with one_thread():
        res = lk.train(pm, tok, task, steps=20, lr=1e-2, batch_size=8, progress=False)
    assert res.losses[-1] < res.losses[0]
    acc = task.accuracy(pm, tok, n=4)      # generation through the decoder only
    assert acc.total == 4 and all(isinstance(reply, str) for *_, reply in acc.rows)


# -- plain-text prompts ----------------------------------------------------------------------
def test_a_tokenizer_without_chat_template_gets_plain_prompts(tok, plain_tok, one_thread):
    task = lk.tasks.get("iso_dates", n_train=16, n_test=2)
    ex = task.train[0]
    # the built-in task's short system message opens the plain prompt too
    assert task.prompt_text(plain_tok, ex.prompt) == f"{task.system}\n\n{ex.prompt}\nAnswer: "
    batch = task.encode(plain_tok, [ex])
    learned = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert plain_tok.decode(learned) == ex.answer + plain_tok.eos_token   # answer-only labels
    # selectable on a tokenizer that has a template
    plain = lk.tasks.from_pairs("p", [(e.prompt, e.answer) for e in task.train], prompt_format="plain")
    assert plain.prompt_text(tok, ex.prompt) == f"{ex.prompt}\nAnswer: "
    with pytest.raises(ValueError, match="prompt_format.*'auto', 'chat', 'plain'"):
        lk.tasks.from_pairs("p", [("a", "b"), ("c", "d")], prompt_format="markdown")
    llama = fam("Llama").build(len(tok), tok.pad_token_id)
    pm = lk.attach(llama, r=R, seed=0)
    with one_thread():
        res = lk.train(pm, plain_tok, task, steps=2, batch_size=4, progress=False)
    assert res.steps_done == 2
    assert task.accuracy(pm, plain_tok, n=2).total == 2


# -- your own data ---------------------------------------------------------------------------
ROWS = [{"q": f"Convert to ISO date: May {d}, 2020", "a": f"2020-05-{d:02d}"} for d in range(1, 11)]


def test_from_file_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "dates.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    csv_file = tmp_path / "dates.csv"
    csv_file.write_text("q,a\n" + "".join(f"\"{r['q']}\",{r['a']}\n" for r in ROWS))
    for path in (jsonl, csv_file):
        task = lk.tasks.from_file(path, prompt="q", answer="a", test_fraction=0.2)
        assert task.name == "dates" and len(task.train) == 8 and len(task.test) == 2
        assert {(e.prompt, e.answer) for e in task.train + task.test} == {
            (r["q"], r["a"]) for r in ROWS}


@pytest.mark.parametrize("lines, match", [
    (['{"q": "a", "a": "b"}', '{"q": "c"}'], r"line 2 has no column\(s\) \['a'\]"),
    (['{"q": "a", "a": "b"}', '{"q": "c", "a": 7}'], r"line 2, column 'a' is int 7, not a string"),
    (['{"q": "a", "a": "b"}', '{"q": " ", "a": "d"}'], r"line 2, column 'q' is empty"),
    (['{"q": "a", "a": "b"}', ''], r"line 2 is empty"),
    (['{"q": "a", "a": "b"}', '{"q": "c", "a": "d"}', '{"q": "e", "a": "f"}'],
     r"more than max_rows=2"),
])
def test_from_file_bad_rows_name_the_row(tmp_path, lines, match):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=match):
        lk.tasks.from_file(path, prompt="q", answer="a", max_rows=2)


def test_from_file_csv_missing_column_and_unknown_suffix(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question,reply\nx,y\nz,w\n")
    with pytest.raises(ValueError, match=r"row 1 has no column\(s\) \['prompt', 'answer'\]; "
                                         r"columns there: \['question', 'reply'\]"):
        lk.tasks.from_file(path)
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="use .jsonl .* or .csv"):
        lk.tasks.from_file(tmp_path / "d.txt")


def test_from_dataset():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    task = lk.tasks.from_dataset(ds, prompt="q", answer="a", name="mine")
    assert task.name == "mine" and len(task.train) + len(task.test) == len(ROWS)
    with pytest.raises(ValueError, match=r"no column\(s\) \['prompt'\]; its columns: \['q', 'a'\]"):
        lk.tasks.from_dataset(ds, answer="a")
    with pytest.raises(ValueError, match="10 rows, more than max_rows=5"):
        lk.tasks.from_dataset(ds, prompt="q", answer="a", max_rows=5)
    bad = datasets.Dataset.from_list([*ROWS[:3], {"q": "x", "a": ""}])
    with pytest.raises(ValueError, match="row 4, column 'a' is empty"):
        lk.tasks.from_dataset(bad, prompt="q", answer="a")


# -- the long tail: kinds, heads, MoE names, defaults, a class lorakit has never seen ---------
@pytest.mark.parametrize("name, kind, task_type, advice", [
    ("CLIP text", "feature", None, "load it with a head"),
    ("Swin", "feature", None, "vision model"),
    ("Marian", "seq2seq", "SEQ_2_SEQ_LM", None),
    ("BART", "seq2seq", "SEQ_2_SEQ_LM", None),
    ("BERT token classifier", "token_cls", "TOKEN_CLS", None),
])
def test_kind_and_task_type_of_the_long_tail(tok, name, kind, task_type, advice):
    from lorakit.core.modelkind import check_trainable_kind, model_kind

    model = fam(name).build(len(tok), tok.pad_token_id)
    assert (model_kind(model), peft_task_type(model)) == (kind, task_type)
    if advice is None:
        assert check_trainable_kind(model) == kind
    else:
        with pytest.raises(ValueError, match=advice):
            check_trainable_kind(model)


def test_an_encoder_decoder_without_head_is_told_to_load_seq2seq(tok):
    from transformers import MarianConfig, MarianModel

    from lorakit.core.modelkind import check_trainable_kind

    model = MarianModel(MarianConfig(d_model=16, encoder_layers=1, decoder_layers=1,
                                     encoder_attention_heads=2, decoder_attention_heads=2,
                                     encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=100,
                                     pad_token_id=0, decoder_start_token_id=0))
    with pytest.raises(ValueError, match="encoder-decoder without its LM head.*"
                                         "AutoModelForSeq2SeqLM"):
        check_trainable_kind(model)


def test_counting_an_encoder_decoder_config_leaves_it_and_the_model_intact(tok):
    marian = fam("Marian").build(len(tok), tok.pad_token_id)
    before = marian.config.to_dict()
    pm = lk.attach(marian, r=R, targets=["q_proj", "v_proj"])
    trainable = pm.get_nb_trainable_parameters()[0]
    lk.detach(pm)
    assert lk.estimate(marian.config, r=R, targets=["q_proj", "v_proj"]).lora_params == trainable
    assert lk.lora_param_count(marian.config, r=R, targets=["q_proj", "v_proj"]) == trainable
    assert marian.config.to_dict() == before and marian.config.is_encoder_decoder
    out = marian.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 1


def test_default_targets_are_pefts_and_find_targets_says_why(tok):
    bloom = fam("BLOOM").build(len(tok), tok.pad_token_id)
    table = lk.find_targets(bloom)
    assert table.default == (("query_key_value",), "PEFT's default for model_type 'bloom'")
    assert "default targets (lk.attach without targets): ('query_key_value',)" in repr(table)
    pm = lk.attach(bloom, r=R)
    assert settings_of(pm).targets == ("query_key_value",)
    assert {n.rsplit(".", 1)[-1] for n, _ in tuner_layers(pm)} == {"query_key_value"}
    lk.detach(pm)
    cohere = fam("Cohere").build(len(tok), tok.pad_token_id)   # PEFT has no default for it
    targets, why = lk.find_targets(cohere).default
    assert targets == ("q_proj", "v_proj") and "PEFT has no default" in why


@case("attach a DistilBERT classifier with targets naming its pre_classifier",
      "ValueError: target 'pre_classifier' is in the classifier head … PEFT trains in full "
      "(modules_to_save) … Leave it out of targets", "model untouched (no raw PEFT TypeError)")
def test_a_target_inside_the_trained_head_is_refused(tok):
    clf = fam("DistilBERT classifier").build(len(tok), tok.pad_token_id)
    refused(clf, ValueError, r"target 'pre_classifier' is in the classifier head.*modules_to_save",
            lk.attach, clf, r=R, targets=["q_lin", "pre_classifier"])


def test_all_linear_leaves_heads_to_modules_to_save_and_skips_small_modules(tok):
    clf = fam("BERT token classifier").build(len(tok), tok.pad_token_id)
    pm = lk.attach(clf, r=R, targets="all-linear")       # PEFT alone: a raw TypeError
    assert not any(n.endswith("classifier") for n, _ in tuner_layers(pm))
    assert lk.count_params(pm).trainable == lk.lora_param_count(clf, r=R, targets="all-linear")
    lk.detach(pm)
    moe = fam("Qwen2-MoE").build(len(tok), tok.pad_token_id)
    with pytest.warns(UserWarning, match=r"leaves out 2 module\(s\) too small for r=4.*"
                                         r"shared_expert_gate \(64→1\)"):
        pm = lk.attach(moe, r=R, targets="all-linear")
    assert not any("shared_expert_gate" in n for n, _ in tuner_layers(pm))
    lk.detach(pm)
    with pytest.raises(ValueError, match=r"exceeds min\(d_in, d_out\).*shared_expert_gate"):
        lk.attach(moe, r=R, targets=["q_proj", "shared_expert_gate"])   # named: refused


@pytest.mark.parametrize("targets", [["w1", "w2", "w3"], ["experts"], ["gate_up_proj"]])
@case("attach(mixtral, targets=['w1', 'w2', 'w3'] / ['experts'] / ['gate_up_proj'])",
      "ValueError: … MoE expert weights … target_parameters=['mlp.experts.gate_up_proj', "
      "'mlp.experts.down_proj']", "model untouched")
def test_moe_expert_names_say_what_to_pass(tok, targets):
    mixtral = fam("Mixtral").build(len(tok), tok.pad_token_id)
    refused(mixtral, ValueError, r"MoE expert weights.*target_parameters=\["
                                 r"'mlp.experts.gate_up_proj', 'mlp.experts.down_proj'\]",
            lk.attach, mixtral, r=R, targets=targets)


class _Net(nn.Module):
    """A model class lorakit has never seen: no config, its own forward."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.v_proj, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.v_proj(self.q_proj(x)))


@case("lk.merge of a model class lorakit has never seen (no config, forward(x))",
      "TypeError: lorakit cannot make a probe batch for a _Net … merge_and_unload()",
      "the PeftModel and its adapter")
def test_a_class_never_seen_attaches_counts_and_refuses_merge_clearly():
    net = _Net()
    pm = lk.attach(net, r=2)                       # PEFT's generic path, PeftModel
    assert settings_of(pm).targets == ("q_proj", "v_proj")
    assert lk.lora_param_count(net, r=2) == pm.get_nb_trainable_parameters()[0] == 64
    refused(pm, TypeError, "cannot make a probe batch for a _Net.*merge_and_unload", lk.merge, pm)
    x = torch.randn(3, 8)
    with torch.no_grad():
        before = net.out(net.v_proj.base_layer(net.q_proj.base_layer(x)))
        assert torch.equal(lk.detach(pm)(x), before)


def test_albert_shared_layers_have_a_layer_number(tok):
    clf = fam("ALBERT classifier").build(len(tok), tok.pad_token_id)
    pm = lk.attach(clf, r=R, targets=["query", "value"])
    counts = lk.count_params(pm)
    assert 0 in counts.by_layer and counts.by_layer[0].trainable == 2 * R * (64 + 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert lk.Recorder(pm).modules == ["layers.0.query", "layers.0.value"]
    assert snap(pm)["adapters"] == ["default"]


def test_gpt2_conv1d_attaches_without_peft_warning_and_output_is_unchanged(tok):
    """GPT-2's Conv1D stores W as (d_in, d_out): lorakit tells PEFT so (fan_in_fan_out), no
    warning, and the fresh adapter (B = 0) leaves the output as it was."""
    gpt2 = fam("GPT-2").build(len(tok), tok.pad_token_id)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = gpt2(input_ids=ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pm = lk.attach(gpt2, r=R, targets="all-linear", seed=0)
    assert pm.peft_config["default"].fan_in_fan_out is True
    assert lk.count_params(pm).trainable == pm.get_nb_trainable_parameters()[0]
    with torch.no_grad():
        assert torch.allclose(pm(input_ids=ids).logits, before)
