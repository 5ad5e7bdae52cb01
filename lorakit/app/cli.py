"""``lorakit``: the console script. ``lorakit tour`` runs the headless tour (``app/tour.py``),
``lorakit train`` attaches and trains an adapter (``app/train_cli.py``).

The flags are generated from the settings objects' fields (``core.settings.add_flags``): the
tour's own, ``LoraSettings``' and ``TrainSettings``'; their names, types, checks, defaults and
help text are the fields'; a ``bool`` field is an on/off switch (``--cdn``). ``main`` is the
one place in lorakit that prints.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from typing import TypeVar

from ..core.settings import LoraSettings, TrainSettings, add_flags, from_flags
from ..core.train import NonFiniteLossError
from . import train_cli
from .tour import TourSettings, run_tour

T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    """The ``lorakit`` argument parser; the tour's flags come from ``TourSettings``' fields."""
    from ..core import __version__

    parser = argparse.ArgumentParser(
        prog="lorakit", description="lorakit: learn LoRA fine-tuning on a real model.")
    parser.add_argument("--version", action="version", version=f"lorakit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    tour = sub.add_parser(
        "tour", help="train LoRA end to end on the embedded model and write an HTML report",
        description=(
            "Headless LoRA tour on the embedded SmolLM2-135M-Instruct (offline): base accuracy, "
            "attach LoRA, train with a Recorder, accuracy after, before/after replies, and an "
            "HTML report with the wall time of each phase."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = TourSettings()
    switches = [f for f in fields(TourSettings) if f.type in ("bool", bool)]
    add_flags(tour, defaults, names=[f.name for f in fields(TourSettings) if f not in switches])
    for f in switches:                  # on/off: present or not (add_flags' flags take a value)
        tour.add_argument("--" + f.name.replace("_", "-"), dest=f.name, action="store_true",
                          help=f.metadata["help"].replace("%", "%%"))
    add_flags(tour.add_argument_group("LoRA adapter (LoraSettings)"), defaults.lora)
    add_flags(tour.add_argument_group("training (TrainSettings)"), defaults.train)
    train_cli.add_parser(sub)   # lorakit train (app/train_cli.py)
    return parser


def tour_settings(args) -> TourSettings:
    """The ``TourSettings`` of parsed ``lorakit tour`` flags (ValueError on a bad value)."""
    own = {f.name: getattr(args, f.name) for f in fields(TourSettings)
           if not f.metadata.get("nested") and hasattr(args, f.name)}
    own["prompts"] = tuple(own.get("prompts", ()))
    return TourSettings(**own, lora=from_flags(LoraSettings, args),
                        train=from_flags(TrainSettings, args))


def _print(line: str) -> None:
    print(line, flush=True)


def _flat(values: dict) -> str:
    """``k=v, ...`` with nested settings spelled out in place (``r=8, alpha=16, ...``)."""
    return ", ".join(_flat(v) if isinstance(v, dict) else f"{k}={v}" for k, v in values.items())


def _busy_hint(settings: TourSettings) -> str | None:
    """A hint when other jobs already use the CPU: torch's threads then wait on each other."""
    import torch

    cores = os.cpu_count() or 1
    if settings.threads is not None or torch.cuda.is_available():
        return None
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):   # not on Windows
        return None
    if load < max(1.0, cores / 2) or torch.get_num_threads() < 2:
        return None
    return (f"note: other jobs are using the CPU (1-minute load {load:.1f} on {cores} cores); "
            f"if the tour runs slowly, try --threads 1")


def usage_error(parser: argparse.ArgumentParser, err: ValueError) -> int:
    """Print ``err`` as argparse's usage error and return its exit status (2)."""
    try:
        parser.error(str(err))
    except SystemExit as exit_:
        return int(exit_.code or 2)
    return 2


def run_guarded(command: str, work: Callable[[], T]) -> tuple[T | None, int]:
    """Run ``work()`` for ``lorakit <command>``: ``(value, 0)``, or ``(None, code)`` after one
    clear line on stderr: 130 when interrupted, 1 for what a user can fix (a missing file, a
    bad value, a missing package, a diverging run)."""
    try:
        return work(), 0
    except KeyboardInterrupt:
        print(f"lorakit {command}: interrupted", file=sys.stderr, flush=True)
        return None, 130
    except (OSError, ValueError, ImportError, NonFiniteLossError) as err:
        print(f"lorakit {command}: error: {err}", file=sys.stderr, flush=True)
        return None, 1


def main(argv: Sequence[str] | None = None) -> int:
    """The ``lorakit`` console script. Returns the exit code (0 on success, 2 on bad flags)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:   # --help/--version (0) or a usage error (2, message printed)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    if args.command == "train":
        try:
            command = train_cli.command_from_args(args)
        except ValueError as err:     # what the option types cannot see alone
            return usage_error(parser, err)
        _, code = run_guarded("train", lambda: train_cli.run_train(command, log=_print))
        return code
    if args.command == "tour":
        try:
            settings = tour_settings(args)
        except ValueError as err:     # what the option types cannot see alone
            return usage_error(parser, err)
        _print(f"lorakit tour: {_flat(asdict(settings))}")
        hint = _busy_hint(settings)
        if hint:
            _print(hint)
        tour, code = run_guarded("tour", lambda: run_tour(settings, log=_print))
        if tour is None:
            return code
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in tour.timings.items())
        _print(f"wall time per phase: {phases}; total {tour.wall_seconds:.1f} s")
        _print(f"accuracy {tour.correct_before}/{tour.eval_total} → "
               f"{tour.correct_after}/{tour.eval_total}; report: {tour.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
