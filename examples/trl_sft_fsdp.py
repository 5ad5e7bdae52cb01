"""TRL's SFTTrainer with a lorakit adapter and the lorakit Recorder, under accelerate FSDP.

The Recorder is made from the PEFT model BEFORE the Trainer shards it; its Trainer callback
runs on every rank, every rank joins the gather of the recorded A/B factors on the recorded
steps, and only rank 0 keeps the frames and writes ``--out``/recording.safetensors.

CUDA, N GPUs, FSDP2 (add ``--quantize nf4`` for QLoRA: a 4-bit NF4 base stored as bf16 so
FSDP can shard it, bf16 compute):

    accelerate launch --num_processes N --use_fsdp --fsdp_version 2 \
        --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \
        --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer --mixed_precision bf16 \
        examples/trl_sft_fsdp.py [--quantize nf4] --model PATH --steps 60 --out /tmp/sft-run

CPU, 2 processes: accelerate (1.15) sets FSDP up only on accelerators (its FSDP branch covers
the MULTI_GPU-like types, not MULTI_CPU), so on the CPU the same script runs as DDP; the
summary's "fsdp" says which one ran. (FSDP on the CPU is tested with torch's own fully_shard
and FullyShardedDataParallel in tests/test_distributed.py.) ``--multi_gpu`` only selects
accelerate's torchrun launcher; ACCELERATE_USE_CPU keeps both processes on the CPU:

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 \
        examples/trl_sft_fsdp.py --steps 4 --out /tmp/sft-run

Without ``--model`` the embedded SmolLM2-135M-Instruct is used (offline); ``--model`` takes a
local folder. Then look at the recording in a notebook: ``lk.Recording.load(PATH)``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import lorakit as lk


def sft_dataset(task):
    """A conversational prompt-completion dataset: TRL learns the completion only."""
    from datasets import Dataset

    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": ex.prompt}],
         "completion": [{"role": "assistant", "content": ex.answer}]} for ex in task.train])


def load_qlora_for_fsdp(path):
    """QLoRA's NF4 base with ``bnb_4bit_quant_storage=bfloat16``: FSDP shards the packed 4-bit
    weights as bf16 storage, like the base's other (bf16) weights (needs CUDA)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from lorakit.core.models import embedded_model_dir

    if not torch.cuda.is_available():
        raise SystemExit("--quantize nf4 with FSDP needs CUDA GPUs (bitsandbytes + FSDP)")
    source = path or embedded_model_dir(progress=False)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16,
                                bnb_4bit_quant_storage=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=config,
                                                 dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="local model folder (default: embedded SmolLM2)")
    p.add_argument("--quantize", choices=["nf4"], default=None, help="QLoRA base (CUDA)")
    p.add_argument("--task", default="iso_dates", choices=lk.tasks.names())
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2, help="per process")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--out", default="sft-run", help="folder for output_dir and the recording")
    args = p.parse_args(argv)

    from trl import SFTConfig, SFTTrainer

    on_cuda = torch.cuda.is_available()
    if args.quantize:
        model, tok = load_qlora_for_fsdp(args.model)
    else:
        model, tok = lk.load_model(args.model, progress=False, device="cuda" if on_cuda else "cpu")
    pm = lk.attach(model, r=8, alpha=16, targets=["q_proj", "v_proj"], seed=0)
    rec = lk.Recorder(pm, every=1)          # before sharding: the Trainer wraps it later
    config = SFTConfig(
        output_dir=str(Path(args.out) / "trainer"), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, logging_steps=1,
        save_strategy="no", report_to=[], seed=0, use_cpu=not on_cuda, bf16=on_cuda,
        disable_tqdm=True, dataloader_num_workers=0, max_length=256)
    trainer = SFTTrainer(model=pm, args=config, train_dataset=sft_dataset(lk.tasks.get(args.task)),
                         processing_class=tok, callbacks=[rec.trainer_callback()])
    trainer.train()
    summary = {"rank": trainer.args.process_index, "world_size": trainer.args.world_size,
               "frames": len(rec), "steps": rec.recording.steps,
               "fsdp": bool(trainer.is_fsdp_enabled),
               "lora_A": type(next(p for n, p in pm.named_parameters() if "lora_A" in n)).__name__}
    if trainer.args.process_index == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rec.recording.save(out / "recording.safetensors")
        (out / "summary.json").write_text(json.dumps(summary))
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
