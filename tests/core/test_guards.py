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


@case("an atomic overwrite of an existing 0600 file (export_html, Report.write, "
      "Recording.save, packs all write through it)", "none: replaced atomically",
      "the file's mode stays 0600 (not widened to 0644)")
def test_write_atomic_keeps_the_mode(tmp_path):
    from lorakit.core.guards import write_atomic

    target = tmp_path / "private.html"
    target.write_text("old")
    target.chmod(0o600)
    write_atomic(target, "new")
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == 0o600


def test_write_atomic_new_file_follows_the_umask(tmp_path):
    from lorakit.core.guards import write_atomic

    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o600


@case("a write into a folder that does not exist", "FileNotFoundError: cannot write PATH: the "
      "folder … does not exist (create it first, e.g. os.makedirs(…))", "nothing created")
def test_write_atomic_missing_folder(tmp_path):
    from lorakit.core.guards import write_atomic

    raises(FileNotFoundError, "does not exist .create it first", write_atomic,
           tmp_path / "nope" / "a.txt", "x")
    assert list(tmp_path.iterdir()) == []


@case("a FIFO, a folder or nothing where a file to read should be", "ValueError: the file PATH "
      "is a FIFO (named pipe) / a folder, not a regular file; FileNotFoundError: no file at PATH",
      "returns at once: the pipe is never opened")
def test_regular_file(tmp_path):
    from lorakit.core.guards import regular_file

    os.mkfifo(tmp_path / "pipe")
    raises(ValueError, "is a FIFO .named pipe., not a regular file", regular_file,
           tmp_path / "pipe")
    raises(ValueError, "is a folder", regular_file, tmp_path)
    raises(FileNotFoundError, "no weights at", regular_file, tmp_path / "x", "weights")
    (tmp_path / "f").write_text("x")
    assert regular_file(tmp_path / "f") == tmp_path / "f"


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


@case("a temporary file left by a write that was killed (SIGKILL, power loss)", "none: the "
      "next write to that path removes it", "a temporary of a write still running in another "
      "process is left alone")
def test_write_atomic_cleans_killed_writes_temporaries(tmp_path):
    from lorakit.core.guards import write_atomic

    dead = tmp_path / f".fig.html.{_dead_pid()}.abcd.tmp"
    live = tmp_path / f".fig.html.{os.getppid()}.efgh.tmp"
    dead.write_text("half")
    live.write_text("half")
    write_atomic(tmp_path / "fig.html", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fig.html", live.name])
