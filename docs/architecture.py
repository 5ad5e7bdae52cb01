"""Regenerate the generated blocks of docs/architecture.md from the code.

The layout (packages, modules and each module's job), the public face (``lorakit.__all__``)
and the layer contract (quoted from pyproject.toml's import-linter configuration) are written
between ``<!-- generated: NAME -->`` and ``<!-- /generated: NAME -->`` markers; the prose
around them is edited by hand. Run ``python docs/architecture.py`` after adding a module or a
contract; ``tests/test_layout.py`` fails while the page is stale.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("app", "files", "view", "core")   # top layer first


def _summary(path: Path) -> str:
    """The first sentence of a module's docstring, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text("utf-8"))) or ""
    para = " ".join(doc.split("\n\n")[0].split())
    cut = re.search(r"(?<=[.])\s", para)
    sentence = para[:cut.start()] if cut else para
    return sentence.rstrip(":").replace("|", "\\|")


def layout() -> str:
    lines = []
    for pkg in PACKAGES:
        folder = ROOT / "lorakit" / pkg
        lines += [f"### `lorakit/{pkg}/`: {_summary(folder / '__init__.py')}", "",
                  "| module | job |", "|---|---|"]
        for p in sorted(folder.glob("*.py")):
            if p.name != "__init__.py":
                lines.append(f"| `{pkg}/{p.name}` | {_summary(p)} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def public_face() -> str:
    sys.path.insert(0, str(ROOT))
    import lorakit

    names = sorted(lorakit.__all__, key=str.lower)
    return ("`import lorakit as lk` gives these names, and `dir(lk)` lists exactly them "
            "(`tests/test_layout.py` pins them):\n\n" + ", ".join(f"`{n}`" for n in names) + ".")


def contracts() -> str:
    text = (ROOT / "pyproject.toml").read_text("utf-8")
    start = text.index("[tool.importlinter]")
    end = text.find("\n[", text.rindex("[[tool.importlinter.contracts]]") + 1)
    block = text[start:end if end != -1 else None].strip()
    return f"```toml\n{block}\n```"


BLOCKS = {"layout": layout, "public": public_face, "contracts": contracts}


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n).*?(<!-- /generated: {name} -->)",
                             re.S)
        if not pattern.search(text):
            raise ValueError(f"docs/architecture.md has no '<!-- generated: {name} -->' block")
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), text)
    return text


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text("utf-8")), "utf-8")
    print(f"wrote {DOC.relative_to(ROOT)}")
