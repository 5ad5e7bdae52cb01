"""Two runs of the whole suite side by side: wall time and per-file times from their JUnit files.

Made for ``make test`` with ``precision="auto"`` against the same suite with
``LORAKIT_PRECISION=fp32`` (what "auto" means, process-wide), back to back in one clone:

    PYTEST_ARGS="--junitxml=/tmp/auto.xml" make test
    LORAKIT_PRECISION=fp32 PYTEST_ARGS="--junitxml=/tmp/fp32.xml" make test
    python benchmarks/suite_compare.py /tmp/auto.xml /tmp/fp32.xml --labels auto fp32 \\
        [--note TEXT ...]

Wall time is each JUnit file's session time (the items' own times overlap on two workers).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_section  # noqa: E402
from suite_time import summarise  # noqa: E402


def compare(a: dict[str, float], b: dict[str, float], labels: tuple[str, str],
            floor: float = 20.0) -> list[str]:
    """A table of the files that took ``floor`` s or more in either run, longest first."""
    keys = sorted((k for k in a.keys() | b.keys() if max(a.get(k, 0), b.get(k, 0)) >= floor),
                  key=lambda k: -b.get(k, 0))
    lines = [f"| file | {labels[0]} s | {labels[1]} s | {labels[0]} shorter by |", "|---|---|---|---|"]
    for k in keys:
        x, y = a.get(k, 0.0), b.get(k, 0.0)
        lines.append(f"| `{k}` | {x:.0f} | {y:.0f} | {1 - x / y:.0%} |" if y else
                     f"| `{k}` | {x:.0f} | {y:.0f} | — |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("junit", type=Path, nargs=2, help="the two runs' JUnit XML files")
    p.add_argument("--labels", nargs=2, default=["auto", "fp32"])
    p.add_argument("--note", action="append", default=[], metavar="TEXT")
    args = p.parse_args(argv)
    runs = [summarise(path) for path in args.junit]
    files = [per_file for _, per_file, _ in runs]
    (la, lb), (wa, wb) = args.labels, [counts["time"] for counts, _, _ in runs]
    outcome = [f"{c['tests'] - c['failures'] - c['errors'] - c['skipped']} passed, "
               f"{c['failures']} failed, {c['skipped']} skipped" for c, _, _ in runs]
    total = [sum(f.values()) for f in files]
    lines = [f"## The whole suite, {la} vs {lb}, back to back", "",
             f"- pytest wall time: {la} **{wa / 60:.1f} min**, {lb} **{wb / 60:.1f} min**: "
             f"{la} shorter by **{1 - wa / wb:.1%}**.",
             f"- items' own times: {la} {total[0]:.0f} s, {lb} {total[1]:.0f} s "
             f"({1 - total[0] / total[1]:.1%} shorter).",
             f"- outcome: {la} {outcome[0]}; {lb} {outcome[1]}.",
             *[f"- {n}" for n in args.note], ""]
    lines += compare(files[0], files[1], (la, lb))
    text = "\n".join(lines)
    print(text)
    write_section("suite_compare", text)


if __name__ == "__main__":
    main()
