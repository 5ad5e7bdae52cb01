"""What nbval runs of a tutorial notebook, read without running it (for tests that check a
claim made elsewhere is asserted there)."""

import json
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def notebook_code(name: str) -> tuple[str, dict]:
    """The code cells of ``notebooks/<name>`` that nbval runs (cells tagged ``nbval-skip`` left
    out), joined, and the values its ``parameters`` cell sets."""
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"
            and "nbval-skip" not in c.get("metadata", {}).get("tags", [])]
    params: dict = {}
    for c in cells:
        if "parameters" in c.get("metadata", {}).get("tags", []):
            exec("".join(c["source"]), {}, params)
    return "\n".join(code), params
