"""lorakit on several processes: reading sharded LoRA factors, and ``lk.train`` under a launcher.

Two jobs, both only active when a ``torch.distributed`` process group with more than one rank
exists (``torchrun``, ``accelerate launch``); in one process nothing here changes anything.

**Reading the recorded factors** (``read_factors``, used by ``lk.Recorder``). Under data
parallelism the LoRA weights live in different forms:

==========================  ========================================  ===========================
scheme                      what ``layer.lora_A[adapter].weight`` is   how the full A / B is read
==========================  ========================================  ===========================
one process, DDP            the full (r, d_in) tensor on every rank    rank 0 reads it; no
                                                                       collective at all
FSDP2 (``fully_shard``)     a ``DTensor``, one row block per rank      ``DTensor.full_tensor()``:
                                                                       an all-gather every rank
                                                                       joins
FSDP1 (``FullyShared-       a 1-D view of this rank's piece of the     the pieces all-gathered
DataParallel``, as          unit's flat parameter (or empty)           and concatenated in rank
accelerate configures it,                                              order (two collectives
``use_orig_params=True``)                                              per recorded step)
DeepSpeed ZeRO-3            an empty placeholder with ``ds_id``        not read: a clear error
==========================  ========================================  ===========================

A collective only completes if every rank calls it, in the same order: so on a recorded step
every rank runs the same reads (the recorded modules in model order, only A and B, only on
recorded steps) and only rank 0 keeps the frames. Before the first gather the ranks compare
the step and the recorded module names (one small ``all_gather_object``); a mismatch raises
the same ``ValueError`` on every rank instead of a collective mismatch or a hang.

**Training** (``runner``, used by ``lk.train``). Launched with more than one process, the
model and optimizer go through ``accelerate.Accelerator.prepare`` (DDP by default, FSDP when
``accelerate launch --use_fsdp`` configured it). Every rank builds the same global batch of
``batch_size`` examples from the same seed and keeps its own contiguous ``batch_size / world``
rows. The loss of rank k is ``Σ_{answer tokens of k} CE / N · world`` with N the answer tokens
of the whole global batch, so DDP's/FSDP's gradient average equals the gradient of the
one-process mean loss; the logged loss is the all-reduced global mean, the same number one
process would log (up to float summation order).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import torch
from torch import nn

from .task import IGNORE_INDEX

SUPPORTED = "one process, DDP, FSDP2 (fully_shard) or FSDP1 (FullyShardedDataParallel)"


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """False on non-zero ranks of a distributed run (torch.distributed or accelerate): the
    process that keeps recordings and writes results."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return world()[0] == 0
    state = sys.modules.get("accelerate.state")
    if state is not None and getattr(state.PartialState, "_shared_state", None):
        return bool(state.PartialState().is_main_process)
    return True


def launched_world_size() -> int:
    """World size a launcher (torchrun / accelerate launch) set up: ``WORLD_SIZE``, else 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


# --------------------------------------------------------------------------- reading factors


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return isinstance(t, DTensor)


def _fsdp1_units(model: nn.Module) -> dict[int, nn.Module]:
    """id(submodule) -> the innermost FSDP1 unit (FullyShardedDataParallel) holding it."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:  # pragma: no cover
        return {}
    owner: dict[int, nn.Module] = {}
    # modules() is pre-order: an inner unit is visited after its parent and overrides it
    for unit in model.modules():
        if isinstance(unit, FSDP):
            for sub in unit.modules():
                owner[id(sub)] = unit
    return owner


def wrapped_hint(model: nn.Module) -> str | None:
    """Why a Recorder finds no LoRA layers in a model FSDP1 has already wrapped (else None)."""
    if not _fsdp1_units(model):
        return None
    return ("this model is already wrapped by FSDP1 (FullyShardedDataParallel): its LoRA "
            "factors are flat pieces a new Recorder cannot name or shape. Make the Recorder "
            "from the PEFT model BEFORE wrapping it (before accelerator.prepare / the Trainer); "
            "it then follows the sharded factors and gathers them on every rank.")


def factor_kind(weight, shape: tuple[int, int], where: str) -> str:
    """How to read one LoRA factor: ``"local"``, ``"dtensor"`` or ``"fsdp1"``.

    ``shape`` is the factor's full (rows, cols), taken when the Recorder was made. Raises
    ValueError for a layout none of the supported schemes produces (ZeRO-3 and others).
    """
    if hasattr(weight, "ds_id") or hasattr(weight, "ds_status"):
        raise ValueError(
            f"{where} is partitioned by DeepSpeed ZeRO-3, which lorakit's Recorder cannot read "
            f"(its parameters are empty placeholders outside deepspeed.zero.GatheredParameters)."
            f" Supported: {SUPPORTED}; with DeepSpeed use ZeRO stage 1 or 2, or record in a "
            f"separate one-process run.")
    if _is_dtensor(weight):
        if tuple(weight.shape) != tuple(shape):
            raise ValueError(f"{where} is a DTensor of global shape {tuple(weight.shape)}, "
                             f"expected {tuple(shape)}")
        return "dtensor"
    if tuple(weight.shape) == tuple(shape):
        return "local"
    if weight.ndim <= 1:  # FSDP1 (use_orig_params) keeps a flat view of this rank's piece
        return "fsdp1"
    raise ValueError(
        f"{where} has shape {tuple(weight.shape)} but the adapter's factor is {tuple(shape)}: "
        f"it is sharded in a way lorakit cannot read. Supported: {SUPPORTED}.")


def check_same_everywhere(step: int, names: list[str]) -> None:
    """Every rank must record the same modules on the same step before gathering them.

    One ``all_gather_object`` of ``(step, names)``; on a mismatch every rank raises the same
    ValueError (so none waits in a gather the others never join).
    """
    import torch.distributed as dist

    rank, size = world()
    if size == 1:
        return
    seen: list = [None] * size
    dist.all_gather_object(seen, (int(step), list(names)))
    if all(s == seen[0] for s in seen):
        return
    steps = {r: s[0] for r, s in enumerate(seen)}
    if len(set(steps.values())) > 1:
        raise ValueError(
            f"the Recorder was called for different steps on different ranks ({steps}): call "
            f"on_step/on_end (or let lk.train / the Trainer callback call them) on every rank "
            f"with the same step, so every rank joins the gather of the sharded factors.")
    ref = set(seen[0][1])
    diff = {r: sorted(ref ^ set(s[1])) for r, s in enumerate(seen) if set(s[1]) != ref}
    raise ValueError(
        f"the Recorder records different modules on different ranks: rank 0 records "
        f"{seen[0][1]}, and these names differ on ranks {diff}. Build the same model and "
        f"Recorder(modules=...) on every rank.")


def read_factors(model: nn.Module, targets, adapter: str, step: int,
                 keep: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor] | None]:
    """The full ``(A, B)`` of each target, in order; every rank must iterate to the end.

    Args:
        model: the model the Recorder was made from (searched for FSDP1 units).
        targets: objects with ``.layer`` (the LoRA layer), ``.name`` and ``.shape``
            ``(r, d_in, d_out)``. adapter: the adapter name. step: the step being recorded.
        keep: True on the rank that keeps frames; the others get None for each target after
            joining whatever collectives the read needs.

    With no sharded factor (one process, DDP) nothing is communicated and a rank with
    ``keep=False`` gets nothing at all. The kinds are checked on every rank before any
    collective, so an unreadable layout raises everywhere instead of hanging.
    """
    plan = []
    for t in targets:
        r, d_in, d_out = t.shape
        A = t.layer.lora_A[adapter].weight
        B = t.layer.lora_B[adapter].weight
        plan.append((factor_kind(A, (r, d_in), f"{t.name}.lora_A"),
                     factor_kind(B, (d_out, r), f"{t.name}.lora_B")))
    if all(k == ("local", "local") for k in plan):
        if keep:
            for t in targets:
                yield (t.layer.lora_A[adapter].weight.detach(),
                       t.layer.lora_B[adapter].weight.detach())
        return
    check_same_everywhere(step, [t.name for t in targets])
    flat = [(t, i) for t, kinds in zip(targets, plan, strict=True)
            for i, kind in enumerate(kinds) if kind == "fsdp1"]
    gathered = _gather_fsdp1(model, flat, adapter) if flat else {}
    for t, kinds in zip(targets, plan, strict=True):
        factors = []
        for i, kind in enumerate(kinds):
            w = (t.layer.lora_A, t.layer.lora_B)[i][adapter].weight
            if kind == "dtensor":
                w = w.full_tensor()                        # an all-gather every rank joins
            elif kind == "fsdp1":
                w = gathered[(id(t), i)]
            factors.append(w.detach())
        yield tuple(factors) if keep else None


def _gather_fsdp1(model: nn.Module, flat, adapter: str) -> dict:
    """Full FSDP1 factors from every rank's flat piece: {(id(target), 0 for A / 1 for B): tensor}.

    With ``use_orig_params=True`` FSDP1 leaves on each rank a 1-D view of the part of the
    parameter inside that rank's contiguous shard of the unit's flat parameter (empty when
    none is). Shards follow rank order, so the pieces concatenated in rank order are the
    flattened parameter. Two collectives for all factors: the piece sizes, then the pieces
    (padded to the longest). No unit is unsharded (the frozen base weights stay sharded).
    """
    import torch.distributed as dist

    units = _fsdp1_units(model)
    groups = {id(getattr(units.get(id((t.layer.lora_A, t.layer.lora_B)[i][adapter])),
                         "process_group", None)) for t, i in flat}
    unit = units.get(id(flat[0][0].layer.lora_A[adapter]))
    group = getattr(unit, "process_group", None) if len(groups) == 1 else None
    pieces = [(t.layer.lora_A, t.layer.lora_B)[i][adapter].weight.detach().reshape(-1)
              for t, i in flat]
    device = pieces[0].device
    size = dist.get_world_size(group)
    sizes = torch.tensor([p.numel() for p in pieces], dtype=torch.long, device=device)
    all_sizes = [torch.empty_like(sizes) for _ in range(size)]
    dist.all_gather(all_sizes, sizes, group=group)
    longest = max(int(s.sum()) for s in all_sizes)
    buf = torch.zeros(longest, dtype=pieces[0].dtype, device=device)
    mine = torch.cat(pieces)
    buf[:mine.numel()] = mine
    bufs = [torch.empty_like(buf) for _ in range(size)]
    dist.all_gather(bufs, buf, group=group)
    out = {}
    for k, (t, i) in enumerate(flat):
        parts = []
        for rank_sizes, rank_buf in zip(all_sizes, bufs, strict=True):
            start = int(rank_sizes[:k].sum())
            parts.append(rank_buf[start:start + int(rank_sizes[k])])
        r, d_in, d_out = t.shape
        shape = (r, d_in) if i == 0 else (d_out, r)
        full = torch.cat(parts)
        if full.numel() != shape[0] * shape[1]:
            raise ValueError(
                f"{t.name}.{('lora_A', 'lora_B')[i]}: the FSDP1 pieces of the ranks add up to "
                f"{full.numel()} values, not {shape[0]}·{shape[1]}: a sharding lorakit cannot "
                f"read (e.g. hybrid sharding with the FSDP root outside the model given to the "
                f"Recorder). Supported: {SUPPORTED}.")
        out[(id(t), i)] = full.reshape(shape)
    return out


# --------------------------------------------------------------------------- training


class LocalRunner:
    """One process: the plain loop (``answer_loss``, ``loss.backward()``, torch's clipping)."""

    world = 1
    rank = 0
    is_main = True

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def batch(self, global_batch: dict, device) -> dict:
        return {k: v.to(device) for k, v in global_batch.items()}

    kind = "causal_lm"  # the model kind being trained (lorakit.core.modelkind)

    def loss(self, batch: dict, global_batch: dict) -> tuple[torch.Tensor, float, int]:
        """(loss to backpropagate, the step's loss as a float, non-padding tokens).

        A causal LM: the model's own loss with the head only at answer positions
        (``lorakit.core.loss.answer_loss``); other kinds: ``model(**batch).loss``."""
        from .loss import answer_loss

        loss = (answer_loss(self.model, batch) if self.kind == "causal_lm"
                else self.model(**batch).loss)
        return loss, loss.item(), int(global_batch["attention_mask"].sum())

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip(self, params, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def finish(self, result):
        return result


class AccelerateRunner(LocalRunner):
    """Several processes through ``accelerate.Accelerator`` (see the module docstring)."""

    def __init__(self, model, optimizer, batch_size: int, device: torch.device):
        import torch.distributed as dist
        from accelerate import Accelerator

        # accelerate only sets up a multi-process CPU run (gloo) when told it is on the CPU
        self.accelerator = Accelerator(cpu=device.type == "cpu")
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        if batch_size % self.world:
            raise ValueError(
                f"batch_size={batch_size} is the global batch and must be divisible by the "
                f"number of processes ({self.world}), so every rank gets the same share; e.g. "
                f"batch_size={batch_size - batch_size % self.world or self.world}.")
        self.wrapped, optimizer = self.accelerator.prepare(model, optimizer)
        super().__init__(model, optimizer)
        self._dist = dist

    def batch(self, global_batch: dict, device) -> dict:
        n = next(iter(global_batch.values())).shape[0] // self.world
        rows = slice(self.rank * n, (self.rank + 1) * n)
        return {k: v[rows].to(self.accelerator.device) for k, v in global_batch.items()}

    def loss(self, batch: dict, global_batch: dict) -> tuple[torch.Tensor, float, int]:
        # N: answer tokens of the whole global batch (every rank holds it: no communication)
        n_items = int((global_batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        out = self.wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           labels=batch["labels"], num_items_in_batch=n_items)
        part = out.loss                                    # Σ_k CE / N: this rank's share
        total = part.detach().clone()
        self._dist.all_reduce(total)                       # Σ over ranks: the global mean
        return part * self.world, total.item(), int(global_batch["attention_mask"].sum())

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def clip(self, params, max_norm: float) -> torch.Tensor:
        # all the wrapped model's parameters (frozen ones have no gradient): accelerate's FSDP
        # path wants exactly those, and FSDP2's prepare replaced the objects in ``params``
        norm = self.accelerator.clip_grad_norm_(self.wrapped.parameters(), max_norm)
        return norm.full_tensor() if _is_dtensor(norm) else norm

    def finish(self, result):
        """Rank 0's TrainResult (step times included) on every rank."""
        box = [result]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]


def runner(model, optimizer, batch_size: int, device: torch.device) -> LocalRunner:
    """The loop's backend: ``AccelerateRunner`` when launched on several processes."""
    if launched_world_size() > 1:
        return AccelerateRunner(model, optimizer, batch_size, device)
    return LocalRunner(model, optimizer)


__all__ = ["AccelerateRunner", "LocalRunner", "SUPPORTED", "check_same_everywhere",
           "factor_kind", "is_main_process", "launched_world_size", "read_factors", "runner",
           "world", "wrapped_hint"]
