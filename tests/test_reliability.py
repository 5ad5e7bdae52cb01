"""docs/reliability.md is the table of every fault case the test modules register with ``@case``
(tests/faults.py), as docs/reliability.py renders it."""

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "reliability", Path(__file__).resolve().parents[1] / "docs" / "reliability.py")
_reliability = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_reliability)
CASES = _reliability.cases()  # (test, fault, error, intact), collected from every test module


def test_reliability_doc_is_in_sync():
    """docs/reliability.md is generated from CASES: regenerate with python docs/reliability.py."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
    try:
        import reliability
    finally:
        sys.path.pop(0)
    doc = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
    assert len(CASES) >= 60
    assert doc.read_text() == reliability.render(CASES), \
        "docs/reliability.md is stale: run python docs/reliability.py"
