"""Print pip pins (``name==floor``) for lorakit's declared floors, for ``make test-lowest``.

Reads pyproject.toml: every ``name>=X`` of the core dependencies, the ``viz`` and ``qlora``
extras and ``accelerate`` (dev) becomes ``name==X``. torch is left out: constraints.txt pins
the local CPU build (Colab keeps its own). An upper bound (``<9``) is kept as is.
"""

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"torch"}
EXTRA_PACKAGES = {"viz": None, "qlora": None, "dev": {"accelerate"}}


def pins(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra, only in EXTRA_PACKAGES.items():
        reqs += [r for r in project["optional-dependencies"][extra]
                 if only is None or re.split(r"[<>=!\[ ]", r)[0] in only]
    out = []
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)>=([0-9][0-9A-Za-z.]*)(,.*)?", req.strip())
        if m is None:
            sys.exit(f"lowest_pins: no '>=' floor in {req!r}; every product dependency needs one")
        if m.group(1) not in SKIP:
            out.append(f"{m.group(1)}=={m.group(2)}")
    return out


if __name__ == "__main__":
    print("\n".join(pins()))
