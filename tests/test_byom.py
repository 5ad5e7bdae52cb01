"""Bring your own model and data: target forms, model kinds, plain prompts, files and datasets,
a BERT classifier trained on the built-in sentiment task, and refusals before any change."""

import json

import pytest
import torch
from families import FAMILIES
from torch import nn

import lorakit as lk
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
    with pytest.raises(ValueError, match=r"cannot train a BertModel.*causal LMs.*sequence "
                                         r"classifiers.*seq2seq"):
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
