"""The training loss of each model kind, equal to the model's own ``model(**batch).loss``.

Causal LMs (``answer_loss``): only answer positions need the (vocab × d) output projection,
so the model is run with transformers' ``logits_to_keep`` set to the positions that predict an
answer token. The model's own forward then applies everything it does to its logits (Gemma-2's
final soft-capping ``c·tanh(z/c)``, Cohere's ``logit_scale``, Granite's ``1/logits_scaling``,
...), so the loss is the model's own, only cheaper. Models whose forward has no
``logits_to_keep`` fall back to ``model(**batch).loss`` (exact, full vocabulary projection).

Sequence classifiers and seq2seq models: ``model(**batch).loss`` (the head is small, the
decoder only sees the answer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .task import IGNORE_INDEX


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Sequence positions t whose next token t+1 is learned in any row: a 1-D index tensor."""
    learned = (labels[:, 1:] != IGNORE_INDEX).any(dim=0)      # (seq-1,)
    return learned.nonzero().flatten()


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens (labels != -100).

    Equal to ``model(**batch).loss``, but the output layer runs only at answer positions:
    ``logits: (batch, n_pos, vocab)`` with ``n_pos`` the positions that predict an answer token
    in some row, instead of ``(batch, seq, vocab)``.
    """
    from .attach import is_adalora
    from .modelkind import takes

    labels = batch["labels"]
    if is_adalora(model) or not takes(model, "logits_to_keep"):
        return model(**batch).loss  # AdaLoRA adds its orthogonality penalty in forward
    if answer_positions(labels).numel() == 0:
        return model(**batch).loss
    logits, targets = _answer_logits(model, batch)
    learned = targets != IGNORE_INDEX
    return F.cross_entropy(logits[learned].float(), targets[learned])


def _answer_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, targets)`` at the positions that predict an answer token in some row:
    ``logits (batch, n_pos, vocab)``, ``targets (batch, n_pos)`` (-100 where a row learns
    nothing). The output layer runs only there when the model takes ``logits_to_keep``."""
    from .modelkind import takes

    labels = batch["labels"]
    keep = answer_positions(labels).to(labels.device)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if takes(model, "logits_to_keep"):
        logits = model(**inputs, logits_to_keep=keep).logits
    else:
        logits = model(**inputs).logits[:, keep]
    return logits, labels[:, keep + 1]                        # token t+1 is predicted at t



def answer_scores(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example of a causal-LM ``batch``: its answer's mean token cross-entropy, and whether
    greedy decoding would reproduce the answer exactly.

    One forward pass (no generation loop, no gradient). Returns ``(loss, exact)``, each of shape
    ``(batch,)``: ``loss[i]`` the mean cross-entropy over row i's answer tokens (labels != -100),
    ``exact[i]`` True when every answer token is the model's top choice given the prompt and
    the answer before it (teacher forcing), which is when greedy decoding emits exactly those
    tokens, the end-of-answer token included. The answer-token weighted mean of ``loss`` is
    ``answer_loss`` (up to rounding).
    """
    labels = batch["labels"]
    if not (labels[:, 1:] != IGNORE_INDEX).any(dim=1).all():
        raise ValueError("answer_scores: a row of the batch has no answer tokens (all labels are "
                         f"{IGNORE_INDEX}); every example needs an answer to score")
    with torch.no_grad():
        logits, targets = _answer_logits(model, batch)
    logits = logits.float()
    learned = targets != IGNORE_INDEX
    # flat (rows × positions, vocab): the layout answer_loss uses (a (batch, vocab, positions)
    # layout rounds differently, by ~1e-4 on CPU)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.clamp(min=0).flatten(),
                         reduction="none").view(targets.shape)
    loss = (ce * learned).sum(dim=1) / learned.sum(dim=1)
    exact = ((logits.argmax(dim=-1) == targets) | ~learned).all(dim=1)
    return loss, exact
