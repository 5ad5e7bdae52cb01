"""How long the whole test suite takes: total, per notebook (nbval), slowest tests.

The target: the whole suite (pytest + nbval over every notebook, as `make test` runs
it) ≤ 17 min on the 2-core CI machine. Either run the suite here, or summarise a run that
already wrote a JUnit XML file (e.g. the CI entry point on a fresh clone):

    python benchmarks/suite_time.py                     # runs pytest -m "not gpu" itself
    PYTEST_ARGS="--junitxml=/tmp/suite.xml" bash .ci/run
    python benchmarks/suite_time.py --junit /tmp/suite.xml [--wall SECONDS] [--workers N]
        [--note TEXT ...]

``--workers`` says how many pytest-xdist workers that run had (make test: 2). ``--wall`` adds
the end-to-end wall time of that run (set-up included) to the section.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_suite(junit: Path, workers: int) -> float:
    """pytest as ``make test`` runs it (``workers`` pytest-xdist workers, one file each, the
    longest files first)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-m", "not gpu", "-q", "-n", str(workers),
                    "--dist", "loadfile", "--no-loadscope-reorder", f"--junitxml={junit}"],
                   cwd=ROOT, check=False)
    return time.perf_counter() - t


def summarise(junit: Path) -> tuple[dict, dict[str, float], list[tuple[float, str]]]:
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["time"] = float(suite.get("time", 0))
    per_file: dict[str, float] = defaultdict(float)
    cases = []
    for case in suite.iter("testcase"):
        seconds = float(case.get("time", 0))
        cls, name = case.get("classname", ""), case.get("name", "")
        if cls.startswith("notebooks"):        # nbval items (a browser test may name one)
            nb = (cls + "." + name) if ".ipynb" not in cls else cls
            key = next((part for part in nb.replace("::", ".").split(".")
                        if part[:2].isdigit()), nb)
            per_file[f"notebooks/{key}.ipynb"] += seconds
        else:
            per_file[cls.replace(".", "/") + ".py"] += seconds
        cases.append((seconds, f"{cls}::{name}"))
    return counts, dict(per_file), sorted(cases, reverse=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--junit", type=Path, help="summarise this JUnit XML instead of running")
    p.add_argument("--wall", type=float, help="end-to-end wall seconds of that run")
    p.add_argument("--workers", type=int, default=2,
                   help="pytest-xdist workers of the run (make test: 2; 0 = one process)")
    p.add_argument("--note", action="append", default=[], metavar="TEXT",
                   help="a bullet of context for the section (repeatable), e.g. an earlier run")
    args = p.parse_args(argv)
    wall = args.wall
    if args.junit is None:
        args.junit = Path(tempfile.mkdtemp()) / "suite.xml"
        wall = run_suite(args.junit, args.workers)
    counts, per_file, cases = summarise(args.junit)
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    notebooks = sorted((k, v) for k, v in per_file.items() if k.startswith("notebooks/"))
    nb_total = sum(v for _, v in notebooks)
    busy = sum(s for s, _ in cases)
    how = (f"on {args.workers} pytest-xdist workers (one test file or notebook each at a time, "
           "each with its share of the cores as torch threads)" if args.workers
           else "in one process")
    lines = ["## Whole test suite (`make test`: pytest + nbval, `gpu` tests skipped)", "",
             f"- pytest wall time: **{counts['time'] / 60:.1f} min** ({counts['time']:.0f} s) "
             f"for {counts['tests']} items, {how}: {passed} passed, {counts['skipped']} skipped, "
             f"{counts['failures']} failed, {counts['errors']} errors (target ≤ 17 min).",
             f"- the items' own times add up to {busy:.0f} s ({busy / 60:.1f} min)."
             + (" With two workers on two cores each item runs slower than it would alone "
                "(one thread instead of two, memory shared): the times below are as measured in "
                "this run." if args.workers else "")]
    if wall:
        lines.append(f"- end to end, set-up included: **{wall / 60:.1f} min** ({wall:.0f} s).")
    lines += [f"- {note}" for note in args.note]
    lines += [f"- the {len(notebooks)} notebooks under nbval: {nb_total:.0f} s in all.", "",
              "| notebook | nbval s |", "|---|---|"]
    lines += [f"| `{k}` | {v:.0f} |" for k, v in notebooks]
    lines += ["", "Slowest ten items:", "", "| s | test |", "|---|---|"]
    lines += [f"| {s:.0f} | `{name}` |" for s, name in cases[:10]]
    write_section("suite_time", "\n".join(lines))
    print("\n".join(lines))
    print("\nFILE_SECONDS for tests/workers.py (files of 20 s or more, this run):")
    for k, v in sorted(per_file.items(), key=lambda kv: -kv[1]):
        if v >= 20:
            print(f'    "{k}": {v:.0f},')
    return 0 if counts["failures"] == counts["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
