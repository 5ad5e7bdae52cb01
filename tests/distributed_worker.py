"""Helper for tests/core/test_distributed.py: one ``torchrun --nproc_per_node 2`` launch that runs
every 2-process scenario in one process group (torch's import costs seconds per process):

  fsdp2  a tiny Llama + lorakit adapter, ``fully_shard`` on each decoder layer and the root,
         a Recorder made BEFORE sharding, a few AdamW steps, ``on_step`` after each;
  fsdp1  the same with ``FullyShardedDataParallel`` (one unit per decoder layer);
  ddp    the same model wrapped in ``DistributedDataParallel``;
  train  ``lk.train`` (accelerate, DDP) on iso_dates with a Recorder;
  bad    a Recorder naming other modules on rank 1 than on rank 0 (under FSDP2), and
         ``lk.train`` with a global batch the world size does not divide.

Rank 0 saves its recordings; each rank writes ``OUT/rank{i}.json`` (frames held, losses, the
errors it saw). ``run_loop`` is also what the test runs in one process for the reference.

Usage: torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port PORT \
    tests/distributed_worker.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import lorakit as lk

STEPS = 3          # optimizer steps of the hand-written fsdp2 / ddp loops
GLOBAL_BATCH = 4   # rows per step, split over the ranks
TRAIN_STEPS = 4    # lk.train steps
VOCAB = 256


def tiny_peft(vocab: int = VOCAB, pad: int | None = None):
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=vocab,
                         pad_token_id=pad)
    return lk.attach(LlamaForCausalLM(config), r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0)


def global_batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (GLOBAL_BATCH, 16), generator=g) for _ in range(STEPS)]


def run_loop(model, rec, rank: int = 0, world: int = 1) -> list[float]:
    """STEPS AdamW steps on this rank's rows of each global batch; the Recorder after each.

    Loss of rank k: Σ_k CE / N · world (N: tokens of the global batch), so the gradient
    average over ranks (DDP, FSDP) equals the one-process gradient of the global mean.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    rec.on_step(0, None)
    losses = []
    n = GLOBAL_BATCH // world
    for step, ids in enumerate(global_batches(), start=1):
        mine = ids[rank * n:(rank + 1) * n]
        n_items = ids[:, 1:].numel()
        loss = model(input_ids=mine, labels=mine, num_items_in_batch=n_items).loss
        (loss * world).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        total = loss.detach().clone()   # this rank's share of the global mean
        if world > 1:
            torch.distributed.all_reduce(total)
        rec.on_step(step, total.item())
        losses.append(total.item())
    rec.on_end(STEPS)
    return losses


def main(out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    report: dict = {"rank": rank, "world": world}

    # (a) FSDP2: the Recorder is made before sharding and follows the DTensor parameters
    pm = tiny_peft()
    rec = lk.Recorder(pm, every=1)
    mesh = init_device_mesh("cpu", (world,))
    for layer in pm.base_model.model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(pm, mesh=mesh)
    report["fsdp2_dtensor"] = type(pm.base_model.model.model.layers[0].self_attn.q_proj
                                   .lora_A["default"].weight).__name__
    run_loop(pm, rec, rank, world)
    report["fsdp2_frames"] = len(rec)
    # a Recorder made AFTER sharding reads the same DTensors: its one frame is the last one
    late = lk.Recorder(pm)
    late.on_end(STEPS)
    if rank == 0:
        rec.recording.save(out / "fsdp2.safetensors")
        late.recording.save(out / "fsdp2_late.safetensors")

    # (bad) a Recorder that names other modules on rank 1: the same error on both, no hang
    names = ["layers.0.q_proj"] if rank == 0 else ["layers.1.q_proj"]
    try:
        lk.Recorder(pm, modules=names).on_step(0, None)
        report["names_error"] = None
    except ValueError as err:
        report["names_error"] = str(err)

    # (a') FSDP1 as accelerate's TRANSFORMER_BASED_WRAP sets it up (use_orig_params=True)
    import functools

    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    pm = tiny_peft()
    rec = lk.Recorder(pm, every=1)
    policy = functools.partial(transformer_auto_wrap_policy,
                               transformer_layer_cls={LlamaDecoderLayer})
    fsdp1 = FullyShardedDataParallel(pm, auto_wrap_policy=policy, use_orig_params=True,
                                     device_id=torch.device("cpu"))
    report["fsdp1_piece"] = list(pm.base_model.model.model.layers[0].self_attn.q_proj
                                 .lora_A["default"].weight.shape)
    run_loop(fsdp1, rec, rank, world)
    report["fsdp1_frames"] = len(rec)
    try:   # a Recorder made AFTER FSDP1 wrapping: a clear error, the same on both ranks
        lk.Recorder(pm)
        report["fsdp1_late_error"] = None
    except ValueError as err:
        report["fsdp1_late_error"] = str(err)
    if rank == 0:
        rec.recording.save(out / "fsdp1.safetensors")

    # (b) DDP
    pm = tiny_peft()
    rec = lk.Recorder(pm, every=1)
    ddp = DistributedDataParallel(pm)
    run_loop(ddp, rec, rank, world)
    report["ddp_frames"] = len(rec)
    if rank == 0:
        rec.recording.save(out / "ddp.safetensors")

    # (c) lk.train on both ranks (accelerate, DDP); the same TrainResult everywhere
    from transformers import AutoTokenizer

    from lorakit.core.models import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir(progress=False))
    task = lk.tasks.get("iso_dates")
    pm = tiny_peft(len(tok), tok.pad_token_id)
    rec = lk.Recorder(pm, every=2)
    res = lk.train(pm, tok, task, steps=TRAIN_STEPS, lr=3e-3, batch_size=4, recorder=rec,
                   precision="fp32", progress=False)   # compared at 1e-5 with one process
    report["train"] = {"losses": res.losses, "tokens": res.tokens, "lrs": res.lrs,
                       "step_times": res.step_times, "frames": len(rec)}
    if rank == 0:
        rec.recording.save(out / "train.safetensors")

    # (bad) a global batch the world size does not divide: refused before any change
    before = [p.detach().clone() for p in pm.parameters() if p.requires_grad]
    rec = lk.Recorder(pm)
    try:
        lk.train(pm, tok, task, steps=2, batch_size=3, recorder=rec, progress=False)
        report["batch_error"] = None
    except ValueError as err:
        report["batch_error"] = str(err)
    after = [p.detach() for p in pm.parameters() if p.requires_grad]
    report["batch_error_unchanged"] = all(torch.equal(a, b) for a, b in zip(before, after,
                                                                            strict=True))
    report["batch_error_recorder_steps"] = rec.last_step

    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
