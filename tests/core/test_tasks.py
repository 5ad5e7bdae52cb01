"""Built-in tasks: deterministic splits, prompt-masked labels, custom tasks and their errors."""

import json

import pytest
from faults import case, raises, refused

import lorakit as lk
from lorakit.core.task import IGNORE_INDEX, Example


def test_names_and_unknown():
    assert {"iso_dates", "json_person"} <= set(lk.tasks.names())
    with pytest.raises(ValueError, match="unknown task 'dates'; built-in tasks: iso_dates"):
        lk.tasks.get("dates")


def test_iso_dates_split_is_fixed_and_disjoint():
    a, b = lk.tasks.get("iso_dates"), lk.tasks.get("iso_dates")
    assert a.train == b.train and a.test == b.test
    assert len(a.train) == 400 and len(a.test) == 100
    assert not {e.answer for e in a.train} & {e.answer for e in a.test}  # no date leaks
    assert lk.tasks.get("iso_dates", seed=1).test != a.test
    for e in a.train[:50]:
        assert e.prompt.startswith("Convert to ISO date: ")
        y, m, d = map(int, e.answer.split("-"))
        assert 1950 <= y <= 2049 and 1 <= m <= 12 and 1 <= d <= 31


def test_json_person_answers_are_valid_json():
    t = lk.tasks.get("json_person")
    for e in t.train[:30] + t.test[:30]:
        obj = json.loads(e.answer)
        assert set(obj) == {"name", "age", "city"} and obj["name"] in e.prompt
        assert str(obj["age"]) in e.prompt and obj["city"] in e.prompt


def test_labels_mask_the_prompt(smol):
    _, tok = smol
    task = lk.tasks.get("iso_dates")
    batch = task.encode(tok, task.train[:3])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape
    for i, ex in enumerate(task.train[:3]):
        learned = labels[i][labels[i] != IGNORE_INDEX]
        assert tok.decode(learned) == ex.answer + "<|im_end|>"
        n_prompt = int((labels[i] == IGNORE_INDEX).logical_and(mask[i] == 1).sum())
        prompt = tok.decode(ids[i, :n_prompt])
        assert prompt == task.prompt_text(tok, ex.prompt)
        assert (labels[i][mask[i] == 0] == IGNORE_INDEX).all()  # padding is never learned


def test_batches_cycle_all_examples_deterministically(smol):
    _, tok = smol
    task = lk.tasks.from_pairs("t", [(f"q{i}", f"a{i}") for i in range(10)], test_fraction=0.2)
    seen = [tok.decode(b["input_ids"][0]) for _, b in zip(range(8), task.batches(tok, 1, seed=3), strict=False)]
    again = [tok.decode(b["input_ids"][0]) for _, b in zip(range(8), task.batches(tok, 1, seed=3), strict=False)]
    assert seen == again and len(set(seen)) == 8  # one epoch covers every train example


def test_from_pairs_split():
    pairs = [(f"say {i}", str(i)) for i in range(20)]
    task = lk.tasks.from_pairs("echo", pairs, test_fraction=0.25, seed=1)
    assert len(task.test) == 5 and len(task.train) == 15
    assert {e.prompt for e in task.train} | {e.prompt for e in task.test} == {p for p, _ in pairs}
    assert isinstance(task.train[0], Example)


@pytest.mark.parametrize("pairs, message", [
    ([], "at least 2"),
    ([("a", "b")], "at least 2"),
    ([("a", "b"), ("c",)], "pair 1 must be \\(prompt, answer\\)"),
    ([("a", "b"), ("c", "")], "pair 1 must be"),
    ([("a", "b"), ("c", 3)], "pair 1 must be"),
    (["ab", "cd"], "pair 0 must be"),
])
def test_from_pairs_rejects_malformed(pairs, message):
    with pytest.raises(ValueError, match=message):
        lk.tasks.from_pairs("bad", pairs)


def test_accuracy_scores_exact_match(smol):
    model, tok = smol
    task = lk.tasks.from_pairs("capitals", [("What is the capital of France? One word.",
                                             "Paris"), ("x", "y")], test_fraction=0.5, seed=0)
    acc = task.accuracy(model, tok, n=1)
    assert acc.total == 1 and len(acc.rows) == 1
    prompt, expected, reply = acc.rows[0]
    assert acc.correct == int(reply.strip() == expected)
    assert 0 <= acc.score <= 1 and str(acc).startswith(f"{acc.correct}/1")


# -- bad input and faults: a clear error, nothing changed (docs/reliability.md) --------------------
@case("tasks.get('iso_dates', n_train=50000) (only 36,525 dates exist)", "ValueError: task "
      "'iso_dates' has at most 36,525 distinct examples", "refused at once (it used to loop "
      "forever)")
def test_task_impossible_size_refused_at_once():
    raises(ValueError, "at most 36,525 distinct examples", lk.tasks.get, "iso_dates",
           n_train=50000)


@case("tasks.get('json_person', n_train=10**6)", "ValueError: at most 146,000 distinct "
      "examples", "refused at once")
def test_task_json_impossible_size():
    raises(ValueError, "at most 146,000", lk.tasks.get, "json_person", n_train=10**6)


@case("tasks.get(n_test=-5)", "ValueError: n_test must be a positive integer",
      "(it used to swap train and test silently)")
def test_task_negative_size():
    raises(ValueError, "n_test must be a positive integer", lk.tasks.get, "iso_dates", n_test=-5)


@case("tasks.get(n_train=0)", "ValueError: n_train must be a positive integer", "—")
def test_task_zero_size():
    raises(ValueError, "n_train must be a positive integer", lk.tasks.get, "iso_dates", n_train=0)


@case("tasks.get('isodates') (unknown name)", "ValueError: unknown task 'isodates'; built-in "
      "tasks: …", "—")
def test_task_unknown_name():
    raises(ValueError, "unknown task 'isodates'", lk.tasks.get, "isodates")


@case("task.accuracy(n=0)", "ValueError: n must be a positive integer or None",
      "model untouched (it used to score everything)")
def test_accuracy_n_zero(pm, tok, task):
    refused(pm, ValueError, "n must be a positive integer or None", task.accuracy, pm, tok, n=0)


@case("task.accuracy(split='valid')", "ValueError: unknown split 'valid'; allowed: 'train', "
      "'test'", "model untouched")
def test_accuracy_unknown_split(pm, tok, task):
    refused(pm, ValueError, "unknown split 'valid'", task.accuracy, pm, tok, split="valid")


@case("tasks.from_pairs with an empty answer", "ValueError: pair 1 must be (prompt, answer), two "
      "non-empty strings", "—")
def test_from_pairs_empty_answer():
    raises(ValueError, "pair 1 must be", lk.tasks.from_pairs, "t", [("a", "b"), ("c", " ")])


@case("tasks.from_pairs(test_fraction=1.5)", "ValueError: test_fraction must be in (0, 1)", "—")
def test_from_pairs_bad_fraction():
    raises(ValueError, "test_fraction must be in", lk.tasks.from_pairs, "t",
           [("a", "b"), ("c", "d")], test_fraction=1.5)


@case("an answer containing '<|im_end|>'", "none: tokenized as text",
      "labels: exactly one end-of-sequence token, the real one at the end")
def test_answer_special_tokens_are_text(tok):
    t = lk.tasks.from_pairs("t", [("q", "a<|im_end|>b"), ("q2", "x<|im_end|>y")],
                            test_fraction=0.5)
    enc = t.encode(tok, t.train)
    labels = enc["labels"][0][enc["labels"][0] != -100].tolist()
    assert labels.count(tok.eos_token_id) == 1 and labels[-1] == tok.eos_token_id


# -- token tagging ---------------------------------------------------------------------------
def test_ner_tags_each_word_at_its_first_token(tok):
    task = lk.tasks.get("ner", n_train=20, n_test=5)
    assert isinstance(task, lk.tasks.TokenTask) and task.kinds == ("token_cls",)
    batch = task.encode(tok, task.train[:4])
    for i, ex in enumerate(task.train[:4]):
        labels = batch["labels"][i]
        tagged = labels[labels != IGNORE_INDEX].tolist()
        assert [task.classes[t] for t in tagged] == ex.answer.split()
        n = int(batch["attention_mask"][i].sum())
        assert tok.decode(batch["input_ids"][i, :n]) == ex.prompt
    again = lk.tasks.get("ner", n_train=20, n_test=5)
    assert again.train == task.train and not set(task.train) & set(task.test)


def test_from_tags_and_its_errors():
    task = lk.tasks.from_tags("pos", [(["the", "cat"], ["DET", "NOUN"]), ("a dog", "DET NOUN"),
                                      ("big cats", "ADJ NOUN")])
    assert task.classes == ("ADJ", "DET", "NOUN")
    with pytest.raises(ValueError, match="example .* has 2 words and 1 tags"):
        lk.tasks.from_tags("bad", [("a dog", "DET"), ("a cat", "DET NOUN")])
    with pytest.raises(ValueError, match=r"pair 1 must be \(words, tags\)"):
        lk.tasks.from_tags("bad", [("a dog", "DET NOUN"), ("a", 3)])


def test_a_token_classifier_needs_a_tagging_task():
    with pytest.raises(ValueError, match=r"needs a token-tagging task.*lk.tasks.get\('ner'\)"):
        lk.tasks.get("sentiment").check_kind("token_cls")
    with pytest.raises(ValueError, match="cannot train a causal_lm model"):
        lk.tasks.get("ner").check_kind("causal_lm")
