"""lorakit/core/guards.py: the writes, checks and rollbacks the other modules build on."""

from __future__ import annotations

import os

from faults import case, raises


@case("a write failing at the rename (disk full, ...)", "OSError: cannot write PATH (the user's "
      "path, not .tmpXXXX)", "the old file byte-identical, no temporary file left")
def test_write_atomic_failure_names_user_path(tmp_path, monkeypatch):
    from lorakit.core.guards import write_atomic

    target = tmp_path / "fig.html"
    target.write_text("old")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "full")))
    err = raises(OSError, "cannot write", write_atomic, target, b"new")
    assert str(target) in str(err) and ".tmp" not in str(err)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["fig.html"]
