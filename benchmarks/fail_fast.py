"""Fail-fast times: refusals that used to hang, OOM-kill or retry for a minute.

On the real SmolLM2-135M (embedded, offline), each bad call is timed once in a fresh process
state (PEFT not imported yet, as in a new notebook): ``attach(r=10**6)`` (target < 5 s, used to
allocate ~430 GB and get the kernel OOM-killed), ``attach(r=10**6, allow_large_r=True)`` (the
memory estimate refuses it), ``tasks.get("iso_dates", n_train=50000)`` (used to loop forever),
an 18,000-token prompt (used to generate for 154 s and return ''), and
``load_model("org/name")`` with ``HF_HUB_OFFLINE=1`` (used to retry the network ~60 s).

Run: ``.venv/bin/python benchmarks/fail_fast.py`` (well under a minute).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402

import lorakit as lk  # noqa: E402

TARGET_S = 5.0


def timed(fn, *args, **kwargs) -> tuple[float, str]:
    t = time.perf_counter()
    try:
        fn(*args, **kwargs)
    except Exception as e:  # the refusal is the point
        return time.perf_counter() - t, f"{type(e).__name__}: {e}"
    raise SystemExit(f"{fn.__name__} did not refuse")


def main() -> None:
    model, tok = lk.load_model(progress=False)
    os.environ["HF_HUB_OFFLINE"] = "1"
    rows = [
        ("`attach(model, r=10**6)`", *timed(lk.attach, model, r=10**6)),
        ("`attach(model, r=10**6, allow_large_r=True)`",
         *timed(lk.attach, model, r=10**6, allow_large_r=True)),
        ('`tasks.get("iso_dates", n_train=50000)`',
         *timed(lk.tasks.get, "iso_dates", n_train=50000)),
        ("`generate` with an 18,000-token prompt", *timed(lk.generate, model, tok, "x " * 18000)),
        ('`load_model("org/name")`, offline', *timed(lk.load_model, "org/name", progress=False)),
    ]
    lines = ["## Fail-fast refusals", "",
             "Each bad call once, on SmolLM2-135M; target: every refusal < 5 s.", "",
             "| call | seconds | target | error (start) |", "|---|---:|---|---|"]
    for call, seconds, error in rows:
        ok = "PASS" if seconds < TARGET_S else "FAIL"
        lines.append(f"| {call} | {seconds:.3f} | {ok} | {error[:160].replace('|', '/')}… |")
    print("\n".join(lines))
    write_section("fail_fast", "\n".join(lines))


if __name__ == "__main__":
    main()
