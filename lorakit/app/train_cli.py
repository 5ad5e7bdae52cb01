"""``lorakit train``: attach LoRA, train it with ``lk.train`` and a Recorder, score, save.

One process (``lorakit train --task iso_dates``) or several, with no script of your own:

    accelerate launch --num_processes 2 -m lorakit train --task iso_dates --batch-size 8
    torchrun --nproc_per_node 2 -m lorakit train --data pairs.jsonl --model ./my-model

Under a launcher every rank runs this same command: ``lk.train`` splits each global batch of
``--batch-size`` examples across the ranks (lorakit/distributed.py), the Recorder gathers on
every rank and keeps frames on rank 0, and rank 0 alone scores the held-out examples and
writes ``--out`` (``adapter/``, ``recording.safetensors``, ``result.json``). The flags are
generated from ``TrainCommand``'s fields and ``TrainSettings``' (``lorakit.settings.add_flags``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..core.settings import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    LoraSettings,
    RecordSettings,
    TrainSettings,
    add_flags,
    check_fields,
)
from .tour import _like, _names, _tasks


def _data_file(text: str) -> str:
    if not Path(text).expanduser().is_file():
        raise ValueError(f"no data file at {text!r} (a JSONL file of "
                         f'{{"prompt": ..., "answer": ...}} lines)')
    return text


def read_pairs(path) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from a JSONL file: one ``{"prompt": ..., "answer": ...}`` a line.

    Raises ValueError naming the line for invalid JSON or a line without both strings.
    """
    pairs = []
    for no, line in enumerate(Path(path).expanduser().read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {no}: not JSON ({err.msg})") from None
        if not (isinstance(row, dict) and isinstance(row.get("prompt"), str)
                and isinstance(row.get("answer"), str)):
            raise ValueError(f'{path}, line {no}: expected {{"prompt": "...", "answer": '
                             f'"..."}} (two strings), got {line[:80]!r}')
        pairs.append((row["prompt"], row["answer"]))
    return pairs


@dataclass(frozen=True)
class TrainCommand:
    """What ``lorakit train`` needs besides ``TrainSettings``: data, model, adapter, outputs."""

    task: str | None = field(default=None, metadata={"choices": _tasks, "help": (
        "Built-in task to learn (default iso_dates unless --data is given).")})
    data: str | None = field(default=None, metadata={"parse": _data_file, "metavar": "FILE",
                                                     "help": (
        'A JSONL file of {"prompt": ..., "answer": ...} lines to learn instead of a built-in '
        "task (20% of the lines are held out for scoring).")})
    model: str | None = field(default=None, metadata={"metavar": "PATH", "help": (
        "A local model folder (config.json + weights). Default: the embedded "
        "SmolLM2-135M-Instruct.")})
    tokenizer: str | None = field(default=None, metadata={"metavar": "PATH", "help": (
        "Tokenizer folder. Default: the model folder's own, or the embedded SmolLM2's when the "
        "folder has none.")})
    rank: int = _like(LoraSettings, "r", label="rank", flags=("--rank", "-r"))
    alpha: float = _like(LoraSettings, "alpha")
    targets: tuple[str, ...] = field(default=("q_proj", "v_proj"), metadata={
        "parse": _names, "metavar": "NAMES", "help": (
            "Comma-separated names of the Linear modules that get an adapter.")})
    record_every: int = _like(RecordSettings, "every", check=POSITIVE_INT)
    eval_n: int = field(default=50, metadata={"check": NON_NEGATIVE_INT, "help": (
        "Held-out examples rank 0 scores after training (0: skip).")})
    out: str | None = field(default=None, metadata={"metavar": "DIR", "flags": ("--out", "-o"),
                                                    "help": (
        "Folder rank 0 writes adapter/, recording.safetensors and result.json to (created).")})
    threads: int | None = field(default=None, metadata={
        "check": POSITIVE_INT.or_none(), "help": "CPU threads torch may use per process."})

    def __post_init__(self):
        check_fields(self)
        if self.task is not None and self.data is not None:
            raise ValueError("give --task or --data, not both")
        if self.task is not None and self.task not in _tasks():
            raise ValueError(f"unknown task {self.task!r}; built-in tasks: {', '.join(_tasks())}")


def add_parser(sub) -> None:
    """Add the ``train`` sub-command to the ``lorakit`` parser's sub-parsers."""
    import argparse

    p = sub.add_parser(
        "train", help="attach LoRA and train it (one process, or under accelerate / torchrun)",
        description=__doc__.split("\n\n")[0] + " Runs under accelerate launch / torchrun too.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_flags(p, TrainCommand)
    add_flags(p, TrainSettings)


def settings_from_args(args) -> tuple[TrainCommand, TrainSettings]:
    """Split parsed flags into the two settings objects (ValueError on a bad combination)."""
    given = vars(args)
    pick = {cls: {f.name: given[f.name] for f in fields(cls) if f.name in given}
            for cls in (TrainCommand, TrainSettings)}
    return TrainCommand(**pick[TrainCommand]), TrainSettings(**pick[TrainSettings])


def _load(cmd: TrainCommand, device):
    """(model, tokenizer) from ``--model`` / ``--tokenizer`` or the embedded SmolLM2."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..core.models import embedded_model_dir, load_model

    if cmd.model is None and cmd.tokenizer is None:
        return load_model(device=str(device), progress=False)
    folder = Path(cmd.model).expanduser() if cmd.model else embedded_model_dir(progress=False)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no model folder at {str(folder)!r} (config.json missing)")
    tok_dir = cmd.tokenizer or (folder if (folder / "tokenizer_config.json").is_file()
                                else embedded_model_dir(progress=False))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tok) > vocab:
        raise ValueError(f"the tokenizer ({tok_dir}) has {len(tok)} tokens but the model's "
                         f"embedding only {vocab} rows: pass the model's own --tokenizer")
    return model, tok


def run_train(cmd: TrainCommand, ts: TrainSettings, log: Callable[[str], object] = print) -> dict:
    """Do the work of ``lorakit train``; returns the summary rank 0 writes to result.json."""
    import torch

    from ..core import tasks
    from ..core.attach import attach
    from ..core.distributed import launched_world_size
    from ..core.record import Recorder
    from ..core.train import train

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

    if cmd.data is not None:
        task = tasks.from_pairs(Path(cmd.data).stem, read_pairs(cmd.data), seed=ts.seed)
    else:
        task = tasks.get(cmd.task or "iso_dates", seed=ts.seed)
    model, tok = _load(cmd, device)
    pm = attach(model, r=cmd.rank, alpha=cmd.alpha, targets=list(cmd.targets), seed=ts.seed)
    rec = Recorder(pm, every=cmd.record_every)
    say(f"lorakit train: {task.name} on {world} process(es), global batch {ts.batch_size} "
        f"({ts.batch_size // world} per process), {ts.steps} steps")
    result = train(pm, tok, task, recorder=rec, progress=is_main, **ts.kwargs())
    say(f"trained: {result}")
    summary = {"world_size": world, "task": task.name, "losses": result.losses,
               "tokens": result.tokens, "steps_done": result.steps_done,
               "tokens_per_s": result.tokens_per_s, "frames": len(rec), "accuracy": None,
               "settings": {**asdict(cmd), **asdict(ts)}}
    if is_main and cmd.eval_n:
        acc = task.accuracy(pm, tok, n=cmd.eval_n)
        summary["accuracy"] = acc.score
        say(f"held-out accuracy: {acc}")
    if is_main and cmd.out:
        out = Path(cmd.out).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        pm.save_pretrained(out / "adapter")
        rec.recording.save(out / "recording.safetensors")
        (out / "result.json").write_text(json.dumps(summary, indent=1))
        say(f"wrote {out}/adapter, recording.safetensors, result.json")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()   # the other ranks wait for rank 0's scoring and writing
    return summary


def main(args, parser) -> int:
    """``lorakit train`` from parsed ``args``; returns the exit code."""
    from .cli import run_guarded, usage_error

    try:
        cmd, ts = settings_from_args(args)
    except ValueError as err:
        return usage_error(parser, err)
    try:
        _, code = run_guarded("train", lambda: run_train(
            cmd, ts, log=lambda line: print(line, flush=True)))
    finally:
        if os.environ.get("WORLD_SIZE", "1") != "1":
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return code
