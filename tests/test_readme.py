"""The README's quickstart runs as written and prints what its comments promise.

The block trains for 40 steps and its comment promises ≥ 90% after them. Notebook 03 makes
the same calls (the same model, adapter with seed 0, task, 40 training steps with seed 0 and
50 held-out examples) and asserts ≥ 90% under nbval in ``make test``, so training them a second
time here would only repeat that run (60-100 s of CPU time in make test). This test therefore
checks that the calls are the same, argument for argument with the defaults filled in, and
runs the block with 2 training steps: every line executes and prints what it promises.
"""

import ast
import contextlib
import dataclasses
import inspect
import io
import re
from pathlib import Path

import pytest
from notebook_source import notebook_code

import lorakit as lk
from lorakit.core.settings import settings_with
from lorakit.core.task import Task

README = Path(__file__).resolve().parents[1] / "README.md"
NOTEBOOK_03 = "03_train_and_watch.ipynb"
STEPS = "steps=40"


def quickstart() -> str:
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


# The calls that decide what is trained and how it is scored. lk.Recorder only reads the
# weights (its snapshot interval differs: 03 keeps every second step), generate only reads.
FUNCTIONS = {"lk.load_model": lk.load_model, "lk.attach": lk.attach,
             "lk.tasks.get": lk.tasks.get, "lk.train": lk.train, ".accuracy": Task.accuracy}


def _called(func: ast.expr) -> str | None:
    """The key of ``FUNCTIONS`` that a call's function is, if any (``.accuracy``: the method
    on any task)."""
    if isinstance(func, ast.Attribute) and func.attr == "accuracy":
        return ".accuracy"
    dotted = ast.unparse(func)
    return dotted if dotted in FUNCTIONS else None


VARIABLE = object()  # an argument that is a variable of the code (a model, a tokenizer, ...)
SETTINGS = {"lk.attach": lk.LoraSettings, "lk.train": lk.TrainSettings}


def calls(source: str, params: dict) -> dict[str, list[dict]]:
    """Each call of ``FUNCTIONS`` in ``source``, its arguments bound to the function's
    parameters with the defaults applied. Names from ``params`` become their value, other
    variables (the model, the tokenizer, the recorder) ``"<parameter name>"``."""
    def value(arg):
        if isinstance(arg, ast.Name):
            return params.get(arg.id, VARIABLE)
        return ast.literal_eval(arg)

    found: dict[str, list[dict]] = {name: [] for name in FUNCTIONS}
    for node in ast.walk(ast.parse(source)):
        name = _called(node.func) if isinstance(node, ast.Call) else None
        if name is None:
            continue
        args = [value(a) for a in node.args]
        if name == ".accuracy":
            args = [VARIABLE, *args]  # a method: called on the task
        bound = inspect.signature(FUNCTIONS[name]).bind(
            *args, **{k.arg: value(k.value) for k in node.keywords})
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        if name in SETTINGS:   # keywords change fields of a settings object: compare the object
            cls = SETTINGS[name]
            given = {f.name: arguments.pop(f.name) for f in dataclasses.fields(cls)}
            arguments["settings"] = settings_with(cls, arguments["settings"], **given)
        found[name].append({k: f"<{k}>" if v is VARIABLE else v for k, v in arguments.items()})
    return found


def test_quickstart_trains_what_notebook_03_trains_and_asserts():
    code, params = notebook_code(NOTEBOOK_03)
    readme, nb = calls(quickstart(), {}), calls(code, params)
    for name in FUNCTIONS:
        assert readme[name], f"the quickstart no longer calls {name}"
    # the quickstart's calls, each made by 03 with the same arguments (03 calls accuracy twice:
    # before and after training, both with n=N_EVAL)
    for name, made in readme.items():
        for arguments in made:
            assert arguments in nb[name], (name, arguments, nb[name])
    assert readme["lk.train"][0]["settings"].steps == 40 and readme[".accuracy"][0]["n"] == 50
    # 03 asserts the comment's promise after that training
    assert params["MAX_STEPS"] == 40 and params["N_EVAL"] == 50
    assert "if MAX_STEPS >= 40:\n    assert after.score >= 0.9" in code
    assert "≥ 90% after" in quickstart()


def test_calls_sees_a_different_argument():
    """The comparison above would catch a quickstart that drifts from 03."""
    drifted = quickstart().replace("lr=3e-3", "lr=2e-3").replace("seed=0", "seed=1")
    nb = calls(*notebook_code(NOTEBOOK_03))
    assert calls(drifted, {})["lk.train"][0] not in nb["lk.train"]
    assert calls(drifted, {})["lk.attach"][0] not in nb["lk.attach"]


@pytest.mark.slow
def test_quickstart_runs():
    block = quickstart()
    assert block.count(STEPS) == 1
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block.replace(STEPS, "steps=2"), "README quickstart", "exec"), {})
    printed = out.getvalue()
    assert "trainable 460,800 of 134,975,808 = 0.341%" in printed
    assert "down_proj" in printed
    acc = re.search(r"(\d+)/50 = (\d+)%", printed)  # the score itself: notebook 03, 40 steps
    assert acc, printed
    assert printed[acc.end():].strip(), printed  # the reply generate printed after it
