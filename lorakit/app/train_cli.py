"""``lorakit train``: attach LoRA, train it with ``lk.train`` and a Recorder, score, save.

One process (``lorakit train --task iso_dates``) or several, with no script of your own:

    accelerate launch --num_processes 2 -m lorakit train --task iso_dates --batch-size 8
    torchrun --nproc_per_node 2 -m lorakit train --data pairs.jsonl --model ./my-model

Under a launcher every rank runs this same command: ``lk.train`` splits each global batch of
``--batch-size`` examples across the ranks (core/distributed.py), the Recorder gathers on
every rank and keeps frames on rank 0, and rank 0 alone scores the held-out examples and
writes ``--out`` (``adapter/``, ``recording.safetensors``, ``result.json``). The flags are
generated from the fields of ``TrainCommand`` and of the settings objects it holds
(``core.settings.add_flags``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..core.settings import (
    NON_NEGATIVE_INT,
    LoraSettings,
    RecordSettings,
    TrainSettings,
    add_flags,
    check_fields,
    from_flags,
)
from ..core.tasks import names
from .tour import eval_n_field, threads_field


def _data_file(text: str) -> str:
    if not Path(text).expanduser().is_file():
        raise ValueError(f"no data file at {text!r} (a JSONL file of "
                         f'{{"prompt": ..., "answer": ...}} lines, or a CSV file with prompt '
                         f"and answer columns)")
    return text


@dataclass(frozen=True)
class TrainCommand:
    """What ``lorakit train`` is told: data, model, the adapter (``lora``), the training run
    (``train``), what the Recorder keeps (``record``), and where the results go."""

    task: str | None = field(default=None, metadata={"choices": names, "help": (
        "Built-in task to learn (default iso_dates unless --data is given).")})
    data: str | None = field(default=None, metadata={"parse": _data_file, "metavar": "FILE",
                                                     "help": (
        'A JSONL file of {"prompt": ..., "answer": ...} lines (or a CSV file with prompt and '
        "answer columns) to learn instead of a built-in task (20% of the rows are held out "
        "for scoring).")})
    model: str | None = field(default=None, metadata={"metavar": "PATH", "help": (
        "A local model folder (config.json + weights). Default: the embedded "
        "SmolLM2-135M-Instruct.")})
    tokenizer: str | None = field(default=None, metadata={"metavar": "PATH", "help": (
        "Tokenizer folder. Default: the model folder's own, or the embedded SmolLM2's when the "
        "folder has none.")})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"nested": True})
    train: TrainSettings = field(default_factory=TrainSettings, metadata={"nested": True})
    record: RecordSettings = field(default_factory=RecordSettings, metadata={"nested": True})
    eval_n: int = eval_n_field(50, NON_NEGATIVE_INT, "Held-out examples rank 0 scores after "
                                                     "training (0: skip).")
    out: str | None = field(default=None, metadata={"metavar": "DIR", "flags": ("--out", "-o"),
                                                    "help": (
        "Folder rank 0 writes adapter/, recording.safetensors and result.json to (created).")})
    threads: int | None = threads_field(" per process.")

    def __post_init__(self):
        check_fields(self)
        if self.task is not None and self.data is not None:
            raise ValueError("give --task or --data, not both")
        if self.task is not None and self.task not in names():
            raise ValueError(f"unknown task {self.task!r}; built-in tasks: {', '.join(names())}")
        for name, cls in (("lora", LoraSettings), ("train", TrainSettings),
                          ("record", RecordSettings)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"{name} must be a {cls.__name__}, got "
                                f"{type(getattr(self, name)).__name__}")


# the Recorder's settings that ``lorakit train`` offers as --record-* flags
RECORD_FLAGS = ("every", "max_frames")


def add_parser(sub) -> None:
    """Add the ``train`` sub-command to the ``lorakit`` parser's sub-parsers."""
    import argparse

    p = sub.add_parser(
        "train", help="attach LoRA and train it (one process, or under accelerate / torchrun)",
        description=__doc__.split("\n\n")[0] + " Runs under accelerate launch / torchrun too.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_flags(p, TrainCommand)
    add_flags(p.add_argument_group("LoRA adapter (LoraSettings)"), LoraSettings)
    add_flags(p.add_argument_group("training (TrainSettings)"), TrainSettings)
    add_flags(p.add_argument_group("recording (RecordSettings)"), RecordSettings,
              names=RECORD_FLAGS, prefix="record_")


def command_from_args(args) -> TrainCommand:
    """The ``TrainCommand`` of parsed ``lorakit train`` flags (ValueError on a bad value)."""
    given = vars(args)
    own = {f.name: given[f.name] for f in fields(TrainCommand)
           if not f.metadata.get("nested") and f.name in given}
    return TrainCommand(**own, lora=from_flags(LoraSettings, args),
                        train=from_flags(TrainSettings, args),
                        record=from_flags(RecordSettings, args, prefix="record_"))


def _load(cmd: TrainCommand, device):
    """(model, tokenizer) from ``--model`` / ``--tokenizer`` or the embedded SmolLM2."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..core.guards import regular_file
    from ..core.models import embedded_model_dir, load_model

    if cmd.model is None and cmd.tokenizer is None:
        return load_model(device=str(device), progress=False)
    folder = Path(cmd.model).expanduser() if cmd.model else embedded_model_dir(progress=False)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no model folder at {str(folder)!r} (config.json missing)")
    for weights in folder.glob("*.safetensors"):   # a FIFO would block the load for good
        regular_file(weights, "weights file")
    tok_dir = cmd.tokenizer or (folder if (folder / "tokenizer_config.json").is_file()
                                else embedded_model_dir(progress=False))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
    except Exception as err:  # SafetensorError, OSError, ...: a truncated or incomplete folder
        raise OSError(f"could not load the model folder {str(folder)!r} "
                      f"({type(err).__name__}: {err}). Check that it holds a complete model: "
                      "save it again with model.save_pretrained(folder), or copy it again."
                      ) from err
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tok) > vocab:
        raise ValueError(f"the tokenizer ({tok_dir}) has {len(tok)} tokens but the model's "
                         f"embedding only {vocab} rows: pass the model's own --tokenizer")
    return model, tok


RUN_FILES = ("adapter", "recording.safetensors", "result.json")  # what --out receives


def check_out(text: str) -> Path:
    """The ``--out`` folder, checked before any work: not a file, writable, and not holding an
    earlier run (its files are never replaced; the folder's other files are left alone)."""
    from ..core.guards import check_writable

    out = Path(os.path.abspath(Path(text).expanduser()))
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file; give a folder")
    earlier = [n for n in RUN_FILES if os.path.lexists(out / n)]
    if earlier:
        raise FileExistsError(
            f"--out {str(out)!r} already holds a run ({', '.join(earlier)}); lorakit train "
            "never replaces one: choose a new --out folder, or move that run away first")
    check_writable(out / RUN_FILES[-1])
    return out


def write_run(out: Path, pm, recording, summary: dict) -> None:
    """Write a run into ``out`` through lorakit's guarded, atomic saves: the adapter folder,
    the recording and result.json (each refused rather than replacing an existing one)."""
    from ..core.adapters import save_adapter
    from ..core.guards import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    check_out(str(out))   # nothing appeared there while training
    save_adapter(pm, out / "adapter")
    recording.save(out / "recording.safetensors")
    write_atomic(out / "result.json", json.dumps(summary, indent=1))


def run_train(cmd: TrainCommand, log: Callable[[str], object] = print) -> dict:
    """Do the work of ``lorakit train``; returns the summary rank 0 writes to result.json."""
    import torch

    from ..core import tasks
    from ..core.attach import attach
    from ..core.distributed import launched_world_size
    from ..core.record import Recorder
    from ..core.train import train

    out = check_out(cmd.out) if cmd.out else None   # before any work
    world = launched_world_size()
    on_cpu = not torch.cuda.is_available()
    if world > 1:  # set up the process group now (lk.train's Accelerator reuses it)
        from accelerate import PartialState

        state = PartialState(cpu=on_cpu)
        device, is_main = state.device, state.is_main_process
    else:
        device, is_main = torch.device("cpu" if on_cpu else "cuda"), True
    if cmd.threads:
        torch.set_num_threads(cmd.threads)
    say = log if is_main else (lambda _line: None)
    ts = cmd.train
    try:
        if cmd.data is not None:
            task = tasks.from_file(cmd.data, seed=ts.seed)
        else:
            task = tasks.get(cmd.task or "iso_dates", seed=ts.seed)
        model, tok = _load(cmd, device)
        pm = attach(model, cmd.lora, seed=ts.seed)
        rec = Recorder(pm, cmd.record)
        say(f"lorakit train: {task.name} on {world} process(es), global batch "
            f"{ts.batch_size} ({ts.batch_size // world} per process), {ts.steps} steps")
        result = train(pm, tok, task, ts, recorder=rec, progress=is_main)
        say(f"trained: {result}")
        summary = {"world_size": world, "task": task.name, "losses": result.losses,
                   "tokens": result.tokens, "steps_done": result.steps_done,
                   "tokens_per_s": result.tokens_per_s, "frames": len(rec), "accuracy": None,
                   "settings": asdict(cmd)}
        if is_main and cmd.eval_n:
            acc = task.accuracy(pm, tok, n=cmd.eval_n)
            summary["accuracy"] = acc.score
            say(f"held-out accuracy: {acc}")
        if is_main and out is not None:
            write_run(out, pm, rec.recording, summary)
            say(f"wrote {out}/adapter, recording.safetensors, result.json")
        if world > 1:
            import torch.distributed as dist

            dist.barrier()   # the other ranks wait for rank 0's scoring and writing
        return summary
    finally:
        if os.environ.get("WORLD_SIZE", "1") != "1":
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
