"""The README's quickstart runs as written and prints what its comments promise."""

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart() -> str:
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_quickstart_runs():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(quickstart(), "README quickstart", "exec"), {})
    printed = out.getvalue()
    assert "trainable 460,800 of 134,975,808 = 0.341%" in printed
    assert "down_proj" in printed
    acc = re.search(r"(\d+)/50 = (\d+)%", printed)
    assert acc and int(acc.group(1)) >= 45, printed
