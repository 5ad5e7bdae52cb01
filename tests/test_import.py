"""The core stays light: `import lorakit` pulls in neither plotly nor ipywidgets."""

import subprocess
import sys


def test_import_lorakit_does_not_import_views():
    code = ("import sys, lorakit as lk; lk.LoraSettings(); "
            "bad = [m for m in ('plotly', 'ipywidgets', 'anywidget') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
