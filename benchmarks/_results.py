"""Shared by the benchmarks: write one section of benchmarks/RESULTS.md, keeping the others.

Each benchmark owns the block between ``<!-- name -->`` and ``<!-- /name -->``; running it
again replaces only that block, so results from separate runs sit side by side.
"""

from __future__ import annotations

import platform
import re
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = ("# Benchmark results\n\nWritten by the scripts in `benchmarks/` (`make bench`). "
          "Each section says the machine it ran on; ratios are measured side by side in one run.\n")


def machine() -> str:
    """One line naming the machine: CPU count, torch build, CUDA device if any."""
    import os

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {dev}, torch {torch.__version__},"
            f" Python {platform.python_version()}")


def write_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section ``name`` of RESULTS.md with ``markdown``."""
    text = path.read_text() if path.exists() else HEADER
    stamp = time.strftime("%Y-%m-%d")
    block = f"<!-- {name} -->\n{markdown.strip()}\n\n_{stamp}; {machine()}_\n<!-- /{name} -->"
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else (
        text.rstrip() + "\n\n" + block + "\n")
    path.write_text(text)


def timeit(fn, repeat: int = 20, warmup: int = 2) -> list[float]:
    """Wall times in seconds of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


median = statistics.median
