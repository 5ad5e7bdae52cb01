"""What a task is: (prompt, answer) examples split into train and test, prompt-masked labels,
batching and held-out exact-match accuracy; ``ClassificationTask`` for (text, label) examples.

A ``Task`` is a list of (prompt, answer) pairs split into ``train`` and ``test`` by a seed,
plus the chat formatting shared by training and evaluation: the prompt goes through the model's
chat template as a user message, the answer follows as the assistant reply and ends with the
end-of-turn token. Labels are the token ids with every prompt (and padding) position set to
-100 (``IGNORE_INDEX``), the ignore index of ``torch.nn.functional.cross_entropy``, so the loss
is the answer's alone (as in TRL's "completion only" training).

A ``ClassificationTask`` holds (text, label) examples: a sequence classifier
(``AutoModelForSequenceClassification``, e.g. BERT) learns the label index through its head; a
causal LM or seq2seq model learns the label word as its answer.

``lorakit.core.tasks`` (``lk.tasks``) makes them: the built-in tasks, ``from_pairs``,
``from_file``, ``from_dataset``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .settings import POSITIVE_INT, check_choice

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


@dataclass
class Accuracy:
    """Exact-match accuracy of greedy replies on held-out examples."""

    correct: int
    total: int
    rows: list[tuple[str, str, str]] = field(repr=False)  # (prompt, expected, reply)

    @property
    def score(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.correct}/{self.total} = {self.score:.0%}"


@dataclass
class Task:
    """A supervised chat task: train/test examples and how to format, batch and score them."""

    name: str
    description: str
    train: list[Example]
    test: list[Example]
    system: str | None = None      # optional system message (None: the template's default)
    max_new_tokens: int = 24       # enough for the longest answer plus the end-of-turn token
    prompt_format: str = "auto"    # "chat", "plain" (no template), "auto": chat if there is one

    def __post_init__(self):
        for split in ("train", "test"):
            if not getattr(self, split):
                raise ValueError(f"task {self.name!r} has no {split} examples")
        from .models import PROMPT_FORMATS
        from .settings import check_choice

        check_choice("prompt_format", self.prompt_format, PROMPT_FORMATS)

    # model kinds (lorakit.core.modelkind) this task can train
    kinds: ClassVar[tuple[str, ...]] = ("causal_lm", "seq2seq")

    def check_kind(self, kind: str) -> str:
        """``kind`` if this task can train that model kind, else a ValueError saying which."""
        if kind not in self.kinds:
            raise ValueError(
                f"task {self.name!r} is a {type(self).__name__} for {' / '.join(self.kinds)} "
                f"models; a {kind} model needs a classification task (lk.tasks.get('sentiment') "
                "or lk.tasks.from_labels(...))" if kind == "seq_cls" else
                f"task {self.name!r} is a {type(self).__name__} for {' / '.join(self.kinds)} "
                f"models; a token classifier needs a token-tagging task, a tag per word "
                "(lk.tasks.get('ner') or lk.tasks.from_tags(...))" if kind == "token_cls" else
                f"task {self.name!r} cannot train a {kind} model; it trains "
                f"{' / '.join(self.kinds)} models")
        return kind

    # -- formatting ---------------------------------------------------------------------
    def prompt_text(self, tok, prompt: str) -> str:
        """The chat-formatted prompt, ending where the assistant's reply starts."""
        from .models import chat_prompt

        return chat_prompt(tok, prompt, self.system, self.prompt_format)

    def encode(self, tok, examples: Sequence[Example],
               kind: str = "causal_lm") -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``labels``: (batch, seq).

        Prompt and answer are tokenized separately and concatenated, so the answer's tokens are
        exactly those greedy generation must produce after the prompt. For a seq2seq model
        (``kind="seq2seq"``) the prompt is the encoder's input and the labels are the answer
        alone (the model shifts them into its decoder inputs).
        """
        if kind == "seq2seq":
            return self._encode_seq2seq(tok, examples)
        from .guards import literal_ids
        from .models import chat_prompt_ids, pad_id

        rows = []
        for ex in examples:  # user text is literal: "<|im_end|>" in it is text, not a token
            p = chat_prompt_ids(tok, ex.prompt, self.system, self.prompt_format)
            a = literal_ids(tok, ex.answer) + [tok.eos_token_id]
            rows.append((p, a))
        seq = max(len(p) + len(a) for p, a in rows)
        ids = torch.full((len(rows), seq), pad_id(tok), dtype=torch.long)
        labels = torch.full((len(rows), seq), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), seq), dtype=torch.long)
        for i, (p, a) in enumerate(rows):
            n = len(p) + len(a)
            ids[i, :n] = torch.tensor(p + a)
            labels[i, len(p):n] = torch.tensor(a)  # only the answer is learned
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def _encode_seq2seq(self, tok, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        from .guards import literal_ids
        from .models import chat_prompt_ids, pad_id

        # user text is literal, as in ``encode``
        prompts = [chat_prompt_ids(tok, ex.prompt, self.system, self.prompt_format)
                   for ex in examples]
        answers = [literal_ids(tok, ex.answer) + [tok.eos_token_id] for ex in examples]
        enc = _pad(prompts, pad_id(tok))
        return {"input_ids": enc, "attention_mask": (_pad(prompts, -1) != -1).long(),
                "labels": _pad(answers, IGNORE_INDEX)}

    def batches(self, tok, batch_size: int, seed: int = 0,
                kind: str = "causal_lm") -> Iterator[dict[str, torch.Tensor]]:
        """Endless shuffled training batches (a new permutation each epoch, seeded)."""
        rng = random.Random(seed)
        order: list[int] = []
        while True:
            if len(order) < batch_size:
                perm = list(range(len(self.train)))
                rng.shuffle(perm)
                order += perm
            take, order = order[:batch_size], order[batch_size:]
            yield self.encode(tok, [self.train[i] for i in take], kind)

    # -- evaluation ---------------------------------------------------------------------
    def check(self, reply: str, answer: str) -> bool:
        """Exact match after stripping surrounding whitespace."""
        return reply.strip() == answer.strip()

    def accuracy(self, model, tok, n: int | None = 50, batch_size: int = 25,
                 split: str = "test") -> Accuracy:
        """Greedy-generate replies for the first ``n`` examples of ``split`` and score them.

        ``n=None`` scores the whole split; ``n`` must otherwise be a positive integer.
        """
        check_choice("split", split, ("train", "test"))
        POSITIVE_INT.or_none()("n", n)  # None: the whole split
        POSITIVE_INT("batch_size", batch_size)
        examples = getattr(self, split)[:n]
        was_training = model.training
        model.eval()
        rows = []
        try:
            for i in range(0, len(examples), batch_size):
                chunk = examples[i:i + batch_size]
                replies = self._replies(model, tok, chunk)
                rows += [(e.prompt, e.answer, r) for e, r in zip(chunk, replies, strict=True)]
        finally:
            model.train(was_training)
        correct = sum(self.check(reply, answer) for _, answer, reply in rows)
        return Accuracy(correct, len(rows), rows)

    def _replies(self, model, tok, chunk: Sequence[Example]) -> list[str]:
        """Greedy replies to ``chunk``'s prompts, formatted as in training."""
        from .models import generate

        # formatted by generate (chat template or plain), the user's text taken literally
        return generate(model, tok, [e.prompt for e in chunk], max_new_tokens=self.max_new_tokens,
                        system=self.system, prompt_format=self.prompt_format)


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad lists of ids into one (batch, longest) tensor."""
    out = torch.full((len(rows), max(map(len, rows))), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def from_pairs(name: str, pairs: Sequence[tuple[str, str]], *, test_fraction: float = 0.2,
               seed: int = 0, system: str | None = None, description: str = "",
               prompt_format: str = "auto", max_new_tokens: int | None = None) -> Task:
    """Make a task from your own (prompt, answer) pairs, split into train/test by ``seed``.

    ``prompt_format``: "auto" (the chat template if the tokenizer has one, else plain text),
    "chat" or "plain" (``Prompt\nAnswer: `` for base models without a chat template).
    ``max_new_tokens``: how long a reply ``accuracy`` generates; None: the longest answer's
    UTF-8 bytes + 8 (a token is at least one byte, so every answer fits, however long)."""
    pairs = list(pairs)
    if len(pairs) < 2:
        raise ValueError(f"a task needs at least 2 (prompt, answer) pairs, got {len(pairs)}")
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2
                and all(isinstance(s, str) and s.strip() for s in pair)):
            raise ValueError(f"pair {i} must be (prompt, answer), two non-empty strings; "
                             f"got {pair!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = random.Random(seed)
    rng.shuffle(pairs)
    n_test = max(1, round(len(pairs) * test_fraction))
    examples = [Example(p, a) for p, a in pairs]
    if max_new_tokens is None:
        max_new_tokens = 8 + max(len(a.encode("utf-8")) for _, a in pairs)
    POSITIVE_INT("max_new_tokens", max_new_tokens)
    return Task(name, description, examples[n_test:], examples[:n_test], system=system,
                max_new_tokens=max_new_tokens, prompt_format=prompt_format)



@dataclass
class ClassificationTask(Task):
    """A task whose answers are class labels (``classes``: all labels, in index order)."""

    classes: tuple[str, ...] = ()

    kinds = ("causal_lm", "seq2seq", "seq_cls")

    def __post_init__(self):
        super().__post_init__()
        if len(self.classes) < 2:
            raise ValueError(f"a classification task needs at least 2 classes, got "
                             f"{list(self.classes)}")
        unknown = {e.answer for e in self.train + self.test} - set(self.classes)
        if unknown:
            raise ValueError(f"labels {sorted(unknown)} are not among classes "
                             f"{list(self.classes)}")

    def encode(self, tok, examples: Sequence[Example], kind: str = "causal_lm"):
        """For a sequence classifier: the text with the tokenizer's special tokens ([CLS] …
        [SEP] for BERT), right-padded, and ``labels`` = class index, (batch,)."""
        if kind != "seq_cls":
            return super().encode(tok, examples, kind)
        side = tok.padding_side
        tok.padding_side = "right"
        try:
            enc = tok([e.prompt for e in examples], padding=True, return_tensors="pt")
        finally:
            tok.padding_side = side
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([self.classes.index(e.answer) for e in examples])}

    def _replies(self, model, tok, chunk: Sequence[Example]) -> list[str]:
        from .modelkind import model_kind

        if model_kind(model) != "seq_cls":
            return super()._replies(model, tok, chunk)
        batch = self.encode(tok, chunk, "seq_cls")
        device = next(model.parameters()).device
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
        return [self.classes[i] for i in logits.argmax(-1).tolist()]

    def chance(self) -> float:
        """Accuracy of always answering the most common test label."""
        counts = [sum(e.answer == c for e in self.test) for c in self.classes]
        return max(counts) / len(self.test)


def from_labels(name: str, pairs: Sequence[tuple[str, str]], *, classes: Sequence[str] | None
                = None, test_fraction: float = 0.2, seed: int = 0,
                description: str = "") -> ClassificationTask:
    """A classification task from (text, label) pairs (``classes`` default: labels sorted)."""
    task = from_pairs(name, pairs, test_fraction=test_fraction, seed=seed,
                      description=description)
    labels = tuple(classes) if classes is not None else tuple(sorted({a for _, a in pairs}))
    return ClassificationTask(task.name, task.description, task.train, task.test,
                              max_new_tokens=task.max_new_tokens, classes=labels)


@dataclass
class TokenTask(Task):
    """A token-tagging task (named entities, parts of speech): each example's ``prompt`` is
    words separated by spaces, its ``answer`` one tag per word, from ``classes``.

    A token classifier (``AutoModelForTokenClassification``) learns the tag of each word at
    the word's first token; the other tokens of the word, special tokens and padding are
    ``IGNORE_INDEX`` (as in transformers' token-classification examples). ``accuracy`` is
    exact match of the whole tag sequence.
    """

    classes: tuple[str, ...] = ()

    kinds = ("token_cls",)

    def __post_init__(self):
        super().__post_init__()
        if len(self.classes) < 2:
            raise ValueError(f"a token-tagging task needs at least 2 tags, got "
                             f"{list(self.classes)}")
        for i, e in enumerate(self.train + self.test):
            words, tags = e.prompt.split(), e.answer.split()
            if len(words) != len(tags):
                raise ValueError(f"example {i} has {len(words)} words and {len(tags)} tags; "
                                 f"give one tag per word: {e.prompt!r} -> {e.answer!r}")
            unknown = set(tags) - set(self.classes)
            if unknown:
                raise ValueError(f"example {i}: tags {sorted(unknown)} are not among classes "
                                 f"{list(self.classes)}")

    def encode(self, tok, examples: Sequence[Example], kind: str = "token_cls"):
        """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (batch, seq): the tag
        index at each word's first token, ``IGNORE_INDEX`` elsewhere; the tokenizer's special
        tokens ([CLS] … [SEP] for BERT) around the words."""
        from .guards import literal_ids
        from .models import pad_id

        prefix, suffix = _special_tokens(tok)
        rows = []
        for e in examples:
            ids: list[int] = []
            labels: list[int] = []
            for n, (word, tag) in enumerate(zip(e.prompt.split(), e.answer.split(), strict=True)):
                piece = literal_ids(tok, word if n == 0 else " " + word) or [pad_id(tok)]
                ids += piece
                labels += [self.classes.index(tag)] + [IGNORE_INDEX] * (len(piece) - 1)
            rows.append((prefix + ids + suffix, [IGNORE_INDEX] * len(prefix) + labels
                         + [IGNORE_INDEX] * len(suffix)))
        return {"input_ids": _pad([r for r, _ in rows], pad_id(tok)),
                "attention_mask": (_pad([r for r, _ in rows], -1) != -1).long(),
                "labels": _pad([lab for _, lab in rows], IGNORE_INDEX)}

    def _replies(self, model, tok, chunk: Sequence[Example]) -> list[str]:
        batch = self.encode(tok, chunk)
        device = next(model.parameters()).device
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
        best = logits.argmax(-1).cpu()
        words = batch["labels"] != IGNORE_INDEX
        return [" ".join(self.classes[i] for i in best[row][words[row]].tolist())
                for row in range(len(chunk))]


def _special_tokens(tok) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text ([CLS] and [SEP] for BERT; none for
    most decoder tokenizers), found by encoding one word with and without them."""
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a", add_special_tokens=True)["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1)
                  if full[i:i + len(plain)] == plain), 0)
    return list(full[:start]), list(full[start + len(plain):])


def from_tags(name: str, pairs: Sequence[tuple], *, classes: Sequence[str] | None = None,
              test_fraction: float = 0.2, seed: int = 0, description: str = "") -> TokenTask:
    """A token-tagging task from (words, tags) pairs: each a list of strings, or one string
    separated by spaces, one tag per word (``classes`` default: the tags, sorted)."""
    joined: list[tuple[str, str]] = []
    for i, pair in enumerate(pairs):
        parts = pair if isinstance(pair, (tuple, list)) and len(pair) == 2 else None
        if parts is None or not all(isinstance(p, str) or (
                isinstance(p, (tuple, list)) and all(isinstance(w, str) for w in p))
                for p in parts):
            raise ValueError(f"pair {i} must be (words, tags): two lists of strings or two "
                             f"strings separated by spaces; got {pair!r}")
        words, tags = (p if isinstance(p, str) else " ".join(p) for p in parts)
        joined.append((words, tags))
    task = from_pairs(name, joined, test_fraction=test_fraction, seed=seed,
                      description=description)
    labels = tuple(classes) if classes is not None else tuple(sorted(
        {t for _, a in joined for t in a.split()}))
    return TokenTask(task.name, task.description, task.train, task.test, max_new_tokens=1,
                     classes=labels)
