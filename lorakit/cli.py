"""``lorakit tour``: the whole LoRA story headless, end to end, ending in an HTML report.

On the embedded SmolLM2-135M-Instruct (offline) the tour runs what the notebooks teach:

1. load the model (``--quantize nf4`` for a QLoRA base) and count its parameters;
2. measure held-out exact-match accuracy of the base model on a built-in task (``iso_dates``);
3. attach LoRA (``--rank``, ``--alpha``, ``--targets``) and count the trainable parameters;
4. train with a ``Recorder`` watching ‖ΔW‖ and the singular values of ΔW = (α/r)·B·A;
5. measure accuracy again, and compare greedy replies to three held-out prompts before/after;
6. write one standalone HTML report (``--out``) with settings, counts, memory, accuracy, the
   loss curve, the recorded modules and the generations, plus the wall time of each phase.

``run_tour`` does the work and returns a ``TourResult`` (plain numbers, the report's path);
progress lines go to the ``log`` callable it is given. ``main`` is the console script: the one
place in lorakit that prints. References: LoRA (Hu et al. 2021) for ΔW = (α/r)·B·A; QLoRA
(Dettmers et al. 2023) for the NF4 base; PEFT's ``print_trainable_parameters`` for the count line.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path

from .record import Recording
from .settings import QUANTIZE
from .train import NonFiniteLossError

DEFAULT_OUT = "lorakit-tour.html"
SHOWN_PROMPTS = 3   # held-out prompts whose replies the report shows before/after


# --------------------------------------------------------------------------- settings


def _tasks() -> list[str]:
    from .data import names

    return names()


@dataclass(frozen=True)
class TourSettings:
    """Everything ``lorakit tour`` can be told; the CLI flags are built from these fields."""

    task: str = field(default="iso_dates", metadata={"help": (
        "Built-in task to learn and score (exact match on held-out examples).")})
    quantize: str | None = field(default=None, metadata={"help": (
        "Quantize the frozen base through bitsandbytes: nf4 is QLoRA's 4-bit NormalFloat. "
        "Default: full precision (float32 on CPU).")})
    rank: int = field(default=8, metadata={"help": (
        "LoRA rank r: A is (r, d_in), B is (d_out, r).")})
    alpha: float = field(default=16.0, metadata={"help": (
        "LoRA alpha: the update B·A is scaled by alpha/r.")})
    targets: tuple[str, ...] = field(default=("q_proj", "v_proj"), metadata={"help": (
        "Comma-separated names of the Linear modules that get an adapter, e.g. "
        "q_proj,k_proj,v_proj,o_proj.")})
    steps: int = field(default=60, metadata={"help": "Optimizer steps to train."})
    lr: float = field(default=2e-3, metadata={"help": "Peak AdamW learning rate."})
    batch_size: int = field(default=8, metadata={"help": "Training examples per step."})
    eval_n: int = field(default=50, metadata={"help": (
        "Held-out examples scored before and after training.")})
    seed: int = field(default=0, metadata={"help": (
        "Seed of the adapter's initialisation and the data order.")})
    out: str = field(default=DEFAULT_OUT, metadata={"help": (
        "Where to write the HTML report (a file; its folder must exist).")})
    threads: int | None = field(default=None, metadata={"help": (
        "CPU threads torch may use during the tour (restored afterwards). Default: torch's "
        "choice, one per core. 1 is often faster on a machine busy with other jobs.")})
    prompts: tuple[str, ...] = field(default=(), metadata={"help": (
        "A prompt of your own whose replies before/after training the report shows, next to "
        "the first three held-out prompts of the task (repeatable).")})
    cdn: bool = field(default=False, metadata={"help": (
        "Load plotly.js from its CDN in the report (a small file for the web that needs a "
        "network). Default: plotly.js inlined once, so the report works offline.")})
    pack: str | None = field(default=None, metadata={"help": (
        "Also write the figure pack (lk.export_pack: every figure as PNG, SVG and HTML, the "
        "animations as GIF and MP4, index.md/index.html) into this new or empty folder.")})

    def __post_init__(self):
        if self.task not in _tasks():
            raise ValueError(f"unknown task {self.task!r}; built-in tasks: {', '.join(_tasks())}")
        if self.quantize is not None and self.quantize not in QUANTIZE:
            raise ValueError(f"quantize must be None or one of {', '.join(QUANTIZE)}, "
                             f"got {self.quantize!r}")
        for name in ("rank", "steps", "batch_size", "eval_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("alpha", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.threads is not None and (isinstance(self.threads, bool)
                                         or not isinstance(self.threads, int) or self.threads <= 0):
            raise ValueError(f"threads must be None or a positive integer, got {self.threads!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        targets = tuple(t.strip() for t in targets if isinstance(t, str) and t.strip()) \
            if all(isinstance(t, str) for t in targets) else ()
        if not targets:
            raise ValueError(f"targets must name at least one module, e.g. q_proj,v_proj; "
                             f"got {self.targets!r}")
        object.__setattr__(self, "targets", targets)
        prompts = (self.prompts,) if isinstance(self.prompts, str) else tuple(self.prompts)
        if not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"prompts must be non-empty strings, got {self.prompts!r}")
        object.__setattr__(self, "prompts", prompts)
        check_out(self.out)
        if self.pack is not None:
            from .pack import check_folder

            check_folder(self.pack, overwrite=False)


def check_out(out) -> Path:
    """The report path, refused early (before minutes of work) if it cannot be written."""
    path = Path(out).expanduser()
    if str(out).strip() == "":
        raise ValueError("out must be a file name, e.g. lorakit-tour.html")
    if path.is_dir():
        raise ValueError(f"out {str(out)!r} is a folder; give a file name such as "
                         f"{str(path / DEFAULT_OUT)!r}")
    if not path.resolve().parent.is_dir():
        raise ValueError(f"the folder of out {str(out)!r} does not exist: "
                         f"{str(path.resolve().parent)!r}")
    return path


# --------------------------------------------------------------------------- results


@dataclass
class Generation:
    """One prompt's greedy reply before and after training (``expected`` None: own prompt)."""

    prompt: str
    expected: str | None
    before: str
    after: str


@dataclass
class ModuleSummary:
    """What the Recorder saw in one adapted module: ΔW = s·B·A at the first and last frame."""

    name: str              # e.g. "layers.0.q_proj"
    d_in: int
    d_out: int
    r: int
    scaling: float         # s = alpha / r
    norm_delta_first: float    # ‖ΔW‖_F at the first recorded step (0 with B = 0 at init)
    norm_delta_last: float     # ‖ΔW‖_F at the last recorded step
    norm_delta: list[float]    # ‖ΔW‖_F at each recorded step (``TourResult.recorded_steps``)
    top_sv: list[float]        # largest singular values of ΔW at the end, descending


@dataclass
class TourResult:
    """What ``run_tour`` measured. Times are wall-clock seconds."""

    settings: TourSettings
    report: Path                       # the HTML report written
    model_name: str
    total_params: int                  # with the adapter attached (4-bit weights unpacked)
    trainable_params: int              # the adapter's parameters
    frozen_params: int
    base_memory_bytes: int             # model.get_memory_footprint() before attach
    memory_bytes: int                  # the same with the adapter attached
    adapter_bytes: int                 # bytes of the trainable parameters
    correct_before: int
    correct_after: int
    eval_total: int
    losses: list[float]                # per step
    step_times: list[float]            # per step
    steps_done: int
    interrupted: bool                  # training stopped early by Ctrl-C
    train_seconds: float               # sum of step times
    tokens_per_s: float
    recorded_steps: list[int]
    modules: list[ModuleSummary]
    generations: list[Generation]
    errors_after: list[tuple[str, str, str]]   # (prompt, expected, reply) still wrong
    timings: dict[str, float]          # phase -> seconds, in order
    wall_seconds: float                # the whole tour, report included
    recording: Recording | None = field(default=None, repr=False)  # the Recorder's frames
    pack: Path | None = None           # index.md of the figure pack (``--pack``), if written

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0

    @property
    def accuracy_before(self) -> float:
        return self.correct_before / self.eval_total if self.eval_total else 0.0

    @property
    def accuracy_after(self) -> float:
        return self.correct_after / self.eval_total if self.eval_total else 0.0

    @property
    def loss_first(self) -> float | None:
        return self.losses[0] if self.losses else None

    @property
    def loss_last(self) -> float | None:
        return self.losses[-1] if self.losses else None


# --------------------------------------------------------------------------- the tour


@contextmanager
def _timed(times: dict[str, float], name: str):
    """Store the wall time of the ``with`` block in ``times[name]`` (seconds)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        times[name] = time.perf_counter() - t0


def _quiet_transformers():
    """Silence transformers' progress bars and info logs for a headless run; returns undo."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    def undo():
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

    return undo


def _replies(model, tok, task, examples, acc) -> list[str]:
    """Greedy replies to ``examples`` ((prompt, expected) pairs): taken from the accuracy rows
    ``acc`` when that prompt was scored there (same model, same greedy decoding), else
    generated now (own prompts get up to 32 new tokens)."""
    from .models import generate

    known = {p: reply for p, _, reply in acc.rows}
    todo = [p for p, _ in examples if p not in known]
    if todo:
        new_tokens = max(task.max_new_tokens, 32)
        known.update(zip(todo, generate(model, tok, todo, max_new_tokens=new_tokens,
                                        system=task.system), strict=True))
    return [known[p] for p, _ in examples]


def run_tour(settings: TourSettings | None = None, *, log: Callable[[str], object] | None = None,
             **kwargs) -> TourResult:
    """Run the tour and write its HTML report; return the measured ``TourResult``.

    Args:
        settings: a ``TourSettings``; or leave it out and pass its fields as keywords
            (``run_tour(steps=3, eval_n=4, out="tour.html")``).
        log: called with each progress line (the CLI passes ``print``); None: silent.
    """
    if settings is None:
        settings = TourSettings(**kwargs)
    elif kwargs:
        raise TypeError("pass either settings or keyword settings, not both")
    say = log or (lambda line: None)
    s = settings
    out = check_out(s.out)
    times: dict[str, float] = {}   # phase -> wall seconds, in order
    t_start = time.perf_counter()

    import torch

    from . import data
    from .attach import attach, check_targets
    from .models import load_model
    from .params import count_params
    from .record import Recorder
    from .train import train

    task = data.get(s.task)
    undo = _quiet_transformers()
    threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        with _timed(times, "load model"):
            model, tok = load_model(quantize=s.quantize, progress=False)
        name = _model_name(model)
        check_targets(model, s.targets)   # a misspelt target fails now, not after the eval
        base_counts = count_params(model)
        base_memory = int(model.get_memory_footprint())
        say(f"[1/7] loaded {name}{f' ({s.quantize})' if s.quantize else ''} in "
            f"{times['load model']:.1f} s: {base_counts.total:,} parameters, "
            f"{base_memory / 2**20:,.1f} MiB")

        shown = ([(e.prompt, e.answer) for e in task.test[:SHOWN_PROMPTS]]
                 + [(p, None) for p in s.prompts])
        with _timed(times, "accuracy before"):
            acc_before = task.accuracy(model, tok, n=s.eval_n)
        say(f"[2/7] base accuracy on {s.task}: {acc_before} "
            f"({times['accuracy before']:.1f} s)")
        with _timed(times, "generations before"):
            before = _replies(model, tok, task, shown, acc_before)

        with _timed(times, "attach"):
            peft_model = attach(model, r=s.rank, alpha=s.alpha, targets=list(s.targets),
                                seed=s.seed)
        counts = count_params(peft_model)
        memory = int(peft_model.get_memory_footprint())
        adapter_bytes = sum(p.numel() * p.element_size()
                            for p in peft_model.parameters() if p.requires_grad)
        say(f"[3/7] attached LoRA r={s.rank}, alpha={s.alpha:g} to {','.join(s.targets)}: "
            f"{counts}")

        recorder = Recorder(peft_model, every=1)
        every = max(1, s.steps // 10)

        def progress(info):
            if info.step % every == 0 or info.step == info.steps:
                say(f"      step {info.step:>{len(str(info.steps))}}/{info.steps}  "
                    f"loss {info.loss:.4f}  lr {info.lr:.2e}")

        say(f"[4/7] training {s.steps} steps, batch {s.batch_size}, lr {s.lr:g} ...")
        with _timed(times, "train"):
            result = train(peft_model, tok, task, steps=s.steps, lr=s.lr,
                           batch_size=s.batch_size, recorder=recorder, callbacks=[progress],
                           seed=s.seed, progress=False)
        stop = " (interrupted: evaluating the adapter as it is)" if result.interrupted else ""
        say(f"      {result}{stop}")

        with _timed(times, "accuracy after"):
            acc_after = task.accuracy(peft_model, tok, n=s.eval_n)
        say(f"[5/7] accuracy after training: {acc_after} "
            f"({times['accuracy after']:.1f} s)")
        with _timed(times, "generations after"):
            after = _replies(peft_model, tok, task, shown, acc_after)
        generations = [Generation(p, e, b, a)
                       for (p, e), b, a in zip(shown, before, after, strict=True)]
        say(f"[6/7] replies to {len(generations)} prompts before → after training:")
        for g in generations:
            say(f"      {g.prompt!r}: {g.before!r} → {g.after!r}")
        used_threads = torch.get_num_threads()
    finally:
        undo()
        torch.set_num_threads(threads)

    recording = recorder.recording
    modules = [ModuleSummary(
        name=m.name, d_in=m.d_in, d_out=m.d_out, r=m.r, scaling=m.scaling,
        norm_delta_first=float(m.norm_delta[0]), norm_delta_last=float(m.norm_delta[-1]),
        norm_delta=[float(v) for v in m.norm_delta], top_sv=[float(v) for v in m.sv[-1]])
        for m in recording.data.values() if len(m)]
    tour = TourResult(
        settings=s, report=out.resolve(), model_name=name,
        total_params=counts.total, trainable_params=counts.trainable,
        frozen_params=counts.frozen, base_memory_bytes=base_memory, memory_bytes=memory,
        adapter_bytes=int(adapter_bytes), correct_before=acc_before.correct,
        correct_after=acc_after.correct, eval_total=acc_after.total,
        losses=list(result.losses), step_times=list(result.step_times),
        steps_done=result.steps_done, interrupted=result.interrupted,
        train_seconds=result.elapsed, tokens_per_s=result.tokens_per_s,
        recorded_steps=list(recording.steps), modules=modules, generations=generations,
        errors_after=[r for r in acc_after.rows if not task.check(r[2], r[1])],
        timings=times, wall_seconds=0.0, recording=recording)
    with _timed(times, "report"):
        tour.wall_seconds = time.perf_counter() - t_start
        tour.report = tour_report(tour, versions=_versions(torch, used_threads)).write(out)
    if s.pack is not None:
        from .pack import export_pack

        with _timed(times, "figure pack"):
            tour.pack = export_pack(result, s.pack, recording=recording, progress=False,
                                    title="lorakit tour: figure pack",
                                    settings=_settings_rows(tour)).index
    tour.wall_seconds = time.perf_counter() - t_start
    say(f"[7/7] wrote {tour.report}" + (f" and the figure pack {tour.pack}" if tour.pack else ""))
    return tour


def _model_name(model) -> str:
    """A readable model name: the embedded model's, or the folder name, not a cache path."""
    from .models import EMBEDDED_NAME

    name = str(getattr(model.config, "name_or_path", "") or type(model).__name__)
    if Path(name).is_dir():
        name = Path(name).name
    return "SmolLM2-135M-Instruct (embedded)" if name.startswith(EMBEDDED_NAME) else name


def _versions(torch, threads: int) -> dict[str, str]:
    import peft
    import transformers

    from . import __version__

    return {"lorakit": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version(),
            "device": (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                       else f"CPU ({platform.machine()}, {threads} torch threads)")}


# --------------------------------------------------------------------------- the report


# the embedded model is a Q4_1 GGUF dequantized to float32 (lorakit.models)
_GGUF = "dequantized from a Q4_1 GGUF: Linear weights hold 4-bit values, embeddings Q8_0"
_WEIGHTS = {None: f"float32, {_GGUF}", "nf4": f"4-bit NF4 (QLoRA), from float32 {_GGUF}",
            "fp4": f"4-bit FP4, from float32 {_GGUF}",
            "int8": f"8-bit LLM.int8(), from float32 {_GGUF}"}


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _loss_rows(tour: TourResult) -> list[list[str]]:
    """Every ~10 steps (every step for short runs, ≤ ~20 rows for long ones), first and last."""
    n = tour.steps_done
    every = 1 if n < 20 else 10 * math.ceil(n / 200)
    keep = sorted({1, n, *range(every, n + 1, every)} - {0}) if n else []
    return [[str(i), f"{tour.losses[i - 1]:.4f}", f"{tour.step_times[i - 1]:.2f}"] for i in keep]


def _settings_rows(tour: TourResult) -> list[tuple[str, object]]:
    s = tour.settings
    return [("model", tour.model_name), ("base weights", _WEIGHTS.get(s.quantize, s.quantize)),
            ("task", s.task), ("LoRA rank r", s.rank), ("alpha", f"{s.alpha:g}"),
            ("scaling alpha/r", f"{s.alpha / s.rank:g}"), ("targets", ", ".join(s.targets)),
            ("steps", s.steps), ("learning rate", f"{s.lr:g}"), ("batch size", s.batch_size),
            ("held-out examples scored", s.eval_n), ("seed", s.seed)]


def tour_report(tour: TourResult, versions: dict[str, str] | None = None):
    """The tour's ``Report`` (lorakit.report): tables and sparklines, all text escaped."""
    from .report import KeyValues, Report, Sparkline, Table, Text

    s = tour.settings
    rep = Report(
        "lorakit tour",
        subtitle=(f"LoRA on {tour.model_name}, task {s.task}: held-out accuracy "
                  f"{tour.correct_before}/{tour.eval_total} → "
                  f"{tour.correct_after}/{tour.eval_total} after {tour.steps_done} steps"),
        footer=(f"Written by `lorakit tour` on {datetime.now().isoformat(timespec='seconds')}"
                + (" · " + ", ".join(f"{k} {v}" for k, v in versions.items())
                   if versions else "")))
    rep.add("Settings", KeyValues(_settings_rows(tour)))

    def pct(n):
        return f"{100 * n / tour.total_params:.3f}%" if tour.total_params else "n/a"

    rep.add("Parameters and memory", Table(
        ["", "parameters", "share"],
        [["trainable (adapter)", f"{tour.trainable_params:,}", pct(tour.trainable_params)],
         ["frozen (base)", f"{tour.frozen_params:,}", pct(tour.frozen_params)],
         ["total", f"{tour.total_params:,}", "100%"]]),
        KeyValues([("model memory before attach (get_memory_footprint)",
                    _mib(tour.base_memory_bytes)),
                   ("model memory with the adapter", _mib(tour.memory_bytes)),
                   ("adapter weights", f"{tour.adapter_bytes:,} B ({_mib(tour.adapter_bytes)})")]))

    rep.add("Held-out accuracy (exact match)", Table(
        ["", "correct", "of", "accuracy"],
        [["base model", tour.correct_before, tour.eval_total, f"{tour.accuracy_before:.0%}"],
         ["after LoRA training", tour.correct_after, tour.eval_total,
          f"{tour.accuracy_after:.0%}"]]))

    summary = [("steps done", f"{tour.steps_done} of {s.steps}"
                + (" (interrupted)" if tour.interrupted else "")),
               ("training time (sum of step times)", f"{tour.train_seconds:.1f} s"),
               ("tokens per second", f"{tour.tokens_per_s:,.0f}")]
    train_blocks = []
    if tour.losses:
        summary.append(("loss first → last", f"{tour.loss_first:.4f} → {tour.loss_last:.4f}"))
        summary.append(("lowest loss", f"{min(tour.losses):.4f}"))
        train_blocks = [
            Sparkline(tour.losses, label="loss", x=range(1, tour.steps_done + 1), log=True),
            Table(["step", "loss", "step time (s)"], _loss_rows(tour), caption="Loss by step")]
    rep.add("Training", KeyValues(summary), *train_blocks)

    if tour.modules:
        m0 = tour.modules[0]
        rep.add(
            "What the adapter learned (Recorder)",
            Text(f"ΔW = (alpha/r)·B·A of each recorded module, at {len(tour.recorded_steps)} "
                 f"recorded steps ({tour.recorded_steps[0]}..{tour.recorded_steps[-1]}). B starts "
                 f"at 0, so ‖ΔW‖ starts at 0; at most r = {m0.r} singular values are non-zero."),
            Table(["module", "d_in → d_out", "‖ΔW‖ first → last", "top singular values at end"],
                  [[m.name, f"{m.d_in} → {m.d_out}",
                    f"{m.norm_delta_first:.4g} → {m.norm_delta_last:.4g}",
                    ", ".join(f"{v:.3g}" for v in m.top_sv)] for m in tour.modules],
                  numeric=[1, 2]),
            *[Sparkline(m.norm_delta, label=f"‖ΔW‖ {m.name}", x=tour.recorded_steps)
              for m in tour.modules])

    figures = _figures(tour)
    if figures:
        rep.add("Figures (plotly; interactive, plotly.js from its CDN: needs a network)"
                if s.cdn else "Figures (plotly; interactive, works offline)", *figures)

    if tour.generations:
        rows = [[g.prompt, "" if g.expected is None else g.expected, g.before, g.after]
                for g in tour.generations]
        rep.add("Replies before and after training (greedy)",
                Table(["prompt", "expected", "base model", "after LoRA"], rows, numeric=[]))
    if tour.errors_after:
        shown = tour.errors_after[:10]
        rep.add(f"Still wrong after training ({len(tour.errors_after)})",
                Table(["prompt", "expected", "reply"], [list(r) for r in shown], numeric=[],
                      caption=None if len(shown) == len(tour.errors_after)
                      else f"first {len(shown)} of {len(tour.errors_after)}"))

    rows = [[phase, f"{sec:.1f}"] for phase, sec in tour.timings.items()]
    rows.append(["whole tour", f"{tour.wall_seconds:.1f}"])
    rep.add("Wall time per phase (seconds)", Table(["phase", "seconds"], rows))
    return rep


def _figures(tour: TourResult) -> list:
    """Loss curve, ΔW animation and norms from lorakit.figures, when plotly is installed."""
    import importlib.util

    if importlib.util.find_spec("plotly") is None or tour.recording is None \
            or not len(tour.recording):
        return []
    from . import figures
    from .report import Html

    figs = [figures.loss_curve(tour.losses)] if tour.losses else []
    figs += [figures.matrix_evolution(tour.recording, tour.recording.modules[0], which="all"),
             figures.norms_over_time(tour.recording)]
    first = "cdn" if tour.settings.cdn else True        # plotly.js once, with the first figure
    blocks = [Html(f.to_html(full_html=False, include_plotlyjs=first if i == 0 else False,
                             auto_play=False)) for i, f in enumerate(figs)]
    from .pack import delta_gif_blocks

    return blocks + delta_gif_blocks(tour.recording)


# --------------------------------------------------------------------------- the CLI


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _targets(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated module names such as q_proj,v_proj; got {text!r}")
    return names


def _out_file(text: str) -> str:
    try:
        check_out(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _pack_folder(text: str) -> str:
    from .pack import check_folder

    try:
        check_folder(text, overwrite=False)
    except (OSError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    """The ``lorakit`` argument parser; option help comes from ``TourSettings``' fields."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="lorakit", description="lorakit: learn LoRA fine-tuning on a real model.")
    parser.add_argument("--version", action="version", version=f"lorakit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    tour = sub.add_parser(
        "tour", help="train LoRA end to end on the embedded model and write an HTML report",
        description=(
            "Headless LoRA tour on the embedded SmolLM2-135M-Instruct (offline): base accuracy, "
            "attach LoRA, train with a Recorder, accuracy after, before/after replies, and an "
            "HTML report with the wall time of each phase."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = {f.name: f for f in fields(TourSettings)}
    helps = {name: f.metadata["help"] for name, f in d.items()}
    tour.add_argument("--task", choices=_tasks(), default=d["task"].default, help=helps["task"])
    tour.add_argument("--quantize", choices=QUANTIZE, default=None, help=helps["quantize"])
    tour.add_argument("--rank", "-r", type=_positive_int, default=d["rank"].default,
                      help=helps["rank"])
    tour.add_argument("--alpha", type=_positive_float, default=d["alpha"].default,
                      help=helps["alpha"])
    tour.add_argument("--targets", type=_targets, default=",".join(d["targets"].default),
                      metavar="NAMES", help=helps["targets"])
    tour.add_argument("--steps", type=_positive_int, default=d["steps"].default,
                      help=helps["steps"])
    tour.add_argument("--lr", type=_positive_float, default=d["lr"].default, help=helps["lr"])
    tour.add_argument("--batch-size", type=_positive_int, default=d["batch_size"].default,
                      help=helps["batch_size"])
    tour.add_argument("--eval-n", type=_positive_int, default=d["eval_n"].default,
                      help=helps["eval_n"])
    tour.add_argument("--threads", type=_positive_int, default=None, help=helps["threads"])
    tour.add_argument("--seed", type=int, default=d["seed"].default, help=helps["seed"])
    tour.add_argument("--out", "-o", type=_out_file, default=d["out"].default, metavar="FILE",
                      help=helps["out"])
    tour.add_argument("--prompt", dest="prompts", action="append", default=argparse.SUPPRESS,
                      metavar="TEXT", help=helps["prompts"])
    tour.add_argument("--cdn", action="store_true", help=helps["cdn"])
    tour.add_argument("--pack", type=_pack_folder, default=None, metavar="DIR",
                      help=helps["pack"])
    return parser


def _print(line: str) -> None:
    print(line, flush=True)


def _busy_hint(settings: TourSettings) -> str | None:
    """A hint when other jobs already use the CPU: torch's threads then wait on each other."""
    import torch

    cores = os.cpu_count() or 1
    if settings.threads is not None or torch.cuda.is_available():
        return None
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):   # not on Windows
        return None
    if load < max(1.0, cores / 2) or torch.get_num_threads() < 2:
        return None
    return (f"note: other jobs are using the CPU (1-minute load {load:.1f} on {cores} cores); "
            f"if the tour runs slowly, try --threads 1")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``lorakit`` console script. Returns the exit code (0 on success, 2 on bad flags)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:   # --help/--version (0) or a usage error (2, message printed)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    if args.command == "tour":
        options = {k: v for k, v in vars(args).items() if k != "command"}
        options["prompts"] = tuple(options.get("prompts", ()))
        try:
            settings = TourSettings(**options)
        except ValueError as err:     # what the option types cannot see alone
            try:
                parser.error(str(err))
            except SystemExit as exit_:
                return int(exit_.code or 2)
        _print(f"lorakit tour: {', '.join(f'{k}={v}' for k, v in asdict(settings).items())}")
        hint = _busy_hint(settings)
        if hint:
            _print(hint)
        try:
            tour = run_tour(settings, log=_print)
        except KeyboardInterrupt:
            print("lorakit tour: interrupted", file=sys.stderr, flush=True)
            return 130
        except (OSError, ValueError, ImportError, NonFiniteLossError) as err:
            print(f"lorakit tour: error: {err}", file=sys.stderr, flush=True)
            return 1
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in tour.timings.items())
        _print(f"wall time per phase: {phases}; total {tour.wall_seconds:.1f} s")
        _print(f"accuracy {tour.correct_before}/{tour.eval_total} → "
               f"{tour.correct_after}/{tour.eval_total}; report: {tour.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
