"""Helper for tests/core/test_record.py: a tiny Trainer run with the Recorder callback, meant to be
started by ``accelerate launch --num_processes 2 --cpu``. Each rank writes
``OUT_DIR/rank{i}.json`` with how many frames its Recorder holds; only rank 0 should have any.

Usage (accelerate 1.x: ``--cpu`` alone starts ONE process unless mpirun is configured, so the
two CPU processes come from the torchrun launcher that ``--multi_gpu`` selects):
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --main_process_port PORT tests/accelerate_record_script.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

import lorakit
from lorakit.core.record import Recorder

STEPS = 4


def main(out_dir: Path) -> None:
    args = TrainingArguments(
        output_dir=str(out_dir / "trainer"), max_steps=STEPS, per_device_train_batch_size=2,
        learning_rate=1e-2, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, seed=0)
    rank = args.process_index  # set up by accelerate's PartialState from the launcher's env
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=256)
    model = lorakit.attach(LlamaForCausalLM(config), r=4, alpha=8, targets=["q_proj", "v_proj"],
                           seed=0)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids}
            for ids in torch.randint(0, 256, (32, 16), generator=g)]
    rec = Recorder(model, every=1)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[rec.trainer_callback()])
    trainer.train()
    # The Recorder's own rank check, without the callback's is_world_process_zero guard:
    direct = Recorder(model)
    with torch.no_grad():
        direct.on_step(0, None)
        direct.on_end(STEPS, 1.0)
    result = {"rank": rank, "world_size": args.world_size, "frames": len(rec.recording),
              "steps": rec.recording.steps, "direct_frames": len(direct.recording)}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
