"""The tour pipeline: the whole LoRA story headless, end to end, ending in an HTML report.

On the embedded SmolLM2-135M-Instruct (offline) the tour runs what the notebooks teach, in
named phases (each a function below, called in order by ``run_tour``):

1. ``load``: load the model (``quantize="nf4"`` for a QLoRA base) and count its parameters;
2. ``evaluate``: held-out exact-match accuracy of the base model on a built-in task, and its
   greedy replies to a few prompts;
3. ``attach_adapter``: attach LoRA (``LoraSettings``: r, alpha, targets), count what trains;
4. ``train_adapter``: ``lk.train`` (``TrainSettings``) with a ``Recorder`` watching ‖ΔW‖ and
   the singular values of ΔW = (α/r)·B·A; then ``evaluate`` again;
5. ``summarise``: the measured numbers as one ``TourResult``;
6. ``write_report``: one standalone HTML report with settings, counts, memory, accuracy, the
   loss curve, the recorded modules and the generations, plus the wall time of each phase. It
   works offline (plotly.js inlined once; ``cdn=True``: from its CDN, a much smaller file) and
   shows the ΔW animation as a GIF too; with ``pack=DIR`` the figure pack
   (``lk.export_pack``: PNG, SVG, HTML, GIF, MP4, index.md/index.html) goes into ``DIR``.

``run_tour`` returns the ``TourResult``; progress lines go to the ``log`` callable it is
given. The console script (``lorakit tour``, app/cli.py) builds ``TourSettings`` from its
flags, which are generated from the fields below. References: LoRA (Hu et al. 2021) for
ΔW = (α/r)·B·A; QLoRA (Dettmers et al. 2023) for the NF4 base; PEFT's
``print_trainable_parameters`` for the count line.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..core.params import ParamCounts
from ..core.quiet import quiet_transformers
from ..core.record import Recording
from ..core.settings import (
    POSITIVE_INT,
    QUANTIZE,
    Check,
    LoraSettings,
    Quantize,
    TrainSettings,
    check_choice,
    check_fields,
    settings_with,
    split_fields,
)
from ..core.task import Accuracy, Task
from ..core.tasks import names
from ..core.train import TrainResult

DEFAULT_OUT = "lorakit-tour.html"
SHOWN_PROMPTS = 3   # held-out prompts whose replies the report shows before/after


# --------------------------------------------------------------------------- settings


def _out_file(text: str) -> str:
    check_out(text)
    return text


def _pack_folder(text: str) -> str:
    """The ``--pack`` folder, refused before any work unless it is new or empty and writable."""
    from ..files.pack import check_folder

    try:
        check_folder(text, overwrite=False)
    except OSError as err:    # the flag's message (argparse reports ValueErrors of a parse)
        raise ValueError(str(err)) from None
    return text


def eval_n_field(default: int, check: Check, help: str) -> Any:
    """The ``eval_n`` field (how many held-out examples are scored) of a command's settings."""
    return field(default=default, metadata={"check": check, "help": help})


def threads_field(help: str) -> Any:
    """The ``threads`` field (CPU threads torch may use) of a command's settings."""
    return field(default=None, metadata={"check": POSITIVE_INT.or_none(), "help": (
        "CPU threads torch may use" + help)})


# 40 steps at 3e-3: the README quickstart's and notebook 03's run (49/50 after, 0/50 before);
# lk.train's own defaults (60 at 2e-3) reach 50/50 in 1.5x the time.
TOUR_TRAINING = TrainSettings(steps=40, lr=3e-3)


@dataclass(frozen=True)
class TourSettings:
    """Everything ``lorakit tour`` can be told: the adapter (``lora``), the training run
    (``train``) and the tour's own fields. The CLI flags are generated from all of them."""

    task: str = field(default="iso_dates", metadata={"choices": names, "help": (
        "Built-in task to learn and score (exact match on held-out examples).")})
    quantize: Quantize | None = field(default=None, metadata={"choices": QUANTIZE, "help": (
        "Quantize the frozen base through bitsandbytes: nf4 is QLoRA's 4-bit NormalFloat. "
        "Default: full precision (float32 on CPU).")})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"nested": True})
    train: TrainSettings = field(default=TOUR_TRAINING, metadata={"nested": True})
    eval_n: int = eval_n_field(50, POSITIVE_INT, "Held-out examples scored before and after "
                                                 "training.")
    out: str = field(default=DEFAULT_OUT, metadata={
        "parse": _out_file, "flags": ("--out", "-o"), "metavar": "FILE", "help": (
            "Where to write the HTML report (a file; its folder must exist).")})
    threads: int | None = threads_field(
        " during the tour (restored afterwards). Default: torch's choice, one per core. 1 is "
        "often faster on a machine busy with other jobs.")
    prompts: tuple[str, ...] = field(default=(), metadata={
        "flags": ("--prompt",), "append": True, "metavar": "TEXT", "help": (
            "A prompt of your own whose replies before/after training the report shows, next "
            "to the first three held-out prompts of the task (repeatable).")})
    cdn: bool = field(default=False, metadata={"help": (
        "Load plotly.js from its CDN in the report (a small file for the web that needs a "
        "network). Default: plotly.js inlined once, so the report works offline.")})
    pack: str | None = field(default=None, metadata={
        "parse": _pack_folder, "metavar": "DIR", "help": (
            "Also write the figure pack (lk.export_pack: every figure as PNG, SVG and HTML, the "
            "animations as GIF and MP4, index.md/index.html) into this new or empty folder.")})

    def __post_init__(self):
        if self.task not in names():
            raise ValueError(f"unknown task {self.task!r}; built-in tasks: {', '.join(names())}")
        if self.quantize is not None:
            check_choice("quantize", self.quantize, QUANTIZE)
        check_fields(self)
        for name, cls in (("lora", LoraSettings), ("train", TrainSettings)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"{name} must be a {cls.__name__}, got "
                                f"{type(getattr(self, name)).__name__}")
        prompts = (self.prompts,) if isinstance(self.prompts, str) else tuple(self.prompts)
        if not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"prompts must be non-empty strings, got {self.prompts!r}")
        object.__setattr__(self, "prompts", prompts)
        check_out(self.out)
        if not isinstance(self.cdn, bool):
            raise ValueError(f"cdn must be True or False, got {self.cdn!r}")
        if self.pack is not None:
            from ..files.pack import check_folder

            check_folder(self.pack, overwrite=False)

    @classmethod
    def of(cls, **given) -> TourSettings:
        """TourSettings from flat keywords: the tour's own fields, and any field of
        ``LoraSettings`` (``r``, ``alpha``, ...) or ``TrainSettings`` (``steps``, ``lr``, ...),
        which change ``lora`` / ``train`` (``TourSettings.of(steps=3, eval_n=4)``)."""
        own, lora_fields, train_fields = split_fields(given, cls, LoraSettings, TrainSettings)
        lora = settings_with(LoraSettings, own.pop("lora", None), **lora_fields)
        train = settings_with(TrainSettings, own.pop("train", TOUR_TRAINING), **train_fields)
        return cls(**own, lora=lora, train=train)


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
    pack: Path | None = None           # index.md of the figure pack (``pack=DIR``), if written

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


# --------------------------------------------------------------------------- the phases


@contextmanager
def _timed(times: dict[str, float], name: str):
    """Store the wall time of the ``with`` block in ``times[name]`` (seconds)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        times[name] = time.perf_counter() - t0


@dataclass
class TourRun:
    """What the phases share: the settings, the log, the phase times, and what each phase
    measured (filled in as they run: ``load``, ``evaluate``, ``attach_adapter``,
    ``train_adapter``; ``summarise`` reads them into a ``TourResult``)."""

    s: TourSettings
    say: Callable[[str], object]
    task: Task
    times: dict[str, float] = field(default_factory=dict)   # phase -> wall seconds, in order
    t_start: float = field(default_factory=time.perf_counter)
    model_name: str = ""                                     # load
    base_memory: int = 0
    shown: list[tuple[str, str | None]] = field(default_factory=list)   # evaluate
    accuracy: dict[str, Accuracy] = field(default_factory=dict)         # "before" / "after"
    replies: dict[str, list[str]] = field(default_factory=dict)
    counts: ParamCounts | None = None                        # attach_adapter
    memory: int = 0
    adapter_bytes: int = 0
    result: TrainResult | None = None                        # train_adapter
    recording: Recording | None = None


def load(run: TourRun):
    """Phase 1: load the model, check the targets against it, count its parameters."""
    from ..core.attach import check_targets
    from ..core.models import load_model
    from ..core.params import count_params

    s = run.s
    with _timed(run.times, "load model"):
        model, tok = load_model(quantize=s.quantize, progress=False)
    name = _model_name(model)
    check_targets(model, s.lora.targets)   # a misspelt target fails now, not after the eval
    base_counts = count_params(model)
    run.model_name, run.base_memory = name, int(model.get_memory_footprint())
    run.say(f"[1/7] loaded {name}{f' ({s.quantize})' if s.quantize else ''} in "
            f"{run.times['load model']:.1f} s: {base_counts.total:,} parameters, "
            f"{run.base_memory / 2**20:,.1f} MiB")
    return model, tok


def evaluate(run: TourRun, model, tok, when: str):
    """Phase 2 (and 5): accuracy on held-out examples, then replies to the shown prompts."""
    s, task = run.s, run.task
    shown: list[tuple[str, str | None]] = (
        [(e.prompt, e.answer) for e in task.test[:SHOWN_PROMPTS]]
        + [(p, None) for p in s.prompts])
    with _timed(run.times, f"accuracy {when}"):
        acc = task.accuracy(model, tok, n=s.eval_n)
    if when == "before":
        run.say(f"[2/7] base accuracy on {s.task}: {acc} ({run.times['accuracy before']:.1f} s)")
    else:
        run.say(f"[5/7] accuracy after training: {acc} ({run.times['accuracy after']:.1f} s)")
    with _timed(run.times, f"generations {when}"):
        replies = _replies(model, tok, task, shown, acc)
    run.accuracy[when], run.replies[when], run.shown = acc, replies, shown


def attach_adapter(run: TourRun, model):
    """Phase 3: attach LoRA with the tour's ``LoraSettings``; count what trains."""
    from ..core.attach import attach
    from ..core.params import count_params

    lora = run.s.lora
    with _timed(run.times, "attach"):
        peft_model = attach(model, lora, seed=run.s.train.seed)
    run.counts = count_params(peft_model)
    run.memory = int(peft_model.get_memory_footprint())
    run.adapter_bytes = int(sum(p.numel() * p.element_size()
                                for p in peft_model.parameters() if p.requires_grad))
    run.say(f"[3/7] attached LoRA r={lora.r}, alpha={lora.alpha:g} to "
            f"{_targets_text(lora.targets, ',')}: {run.counts}")
    return peft_model


def train_adapter(run: TourRun, peft_model, tok):
    """Phase 4: ``lk.train`` with the tour's ``TrainSettings`` and a ``Recorder``."""
    from ..core.record import Recorder
    from ..core.train import train

    s = run.s.train
    recorder = Recorder(peft_model, every=1)
    every = max(1, s.steps // 10)

    def progress(info):
        if info.step % every == 0 or info.step == info.steps:
            run.say(f"      step {info.step:>{len(str(info.steps))}}/{info.steps}  "
                    f"loss {info.loss:.4f}  lr {info.lr:.2e}")

    run.say(f"[4/7] training {s.steps} steps, batch {s.batch_size}, lr {s.lr:g} ...")
    with _timed(run.times, "train"):
        result = train(peft_model, tok, run.task, s, recorder=recorder, callbacks=[progress],
                       progress=False)
    stop = " (interrupted: evaluating the adapter as it is)" if result.interrupted else ""
    run.say(f"      {result}{stop}")
    run.result, run.recording = result, recorder.recording


def summarise(run: TourRun, out: Path) -> TourResult:
    """Phase 6: the measured numbers as one ``TourResult`` (its report not written yet)."""
    s = run.s
    generations = [Generation(p, e, b, a) for (p, e), b, a in
                   zip(run.shown, run.replies["before"], run.replies["after"], strict=True)]
    run.say(f"[6/7] replies to {len(generations)} prompts before → after training:")
    for g in generations:
        run.say(f"      {g.prompt!r}: {g.before!r} → {g.after!r}")
    recording, result, counts = run.recording, run.result, run.counts
    assert recording is not None and result is not None and counts is not None
    acc_before, acc_after = run.accuracy["before"], run.accuracy["after"]
    modules = [ModuleSummary(
        name=m.name, d_in=m.d_in, d_out=m.d_out, r=m.r, scaling=m.scaling,
        norm_delta_first=float(m.norm_delta[0]), norm_delta_last=float(m.norm_delta[-1]),
        norm_delta=[float(v) for v in m.norm_delta], top_sv=[float(v) for v in m.sv[-1]])
        for m in recording.data.values() if len(m)]
    return TourResult(
        settings=s, report=out.resolve(), model_name=run.model_name,
        total_params=counts.total, trainable_params=counts.trainable,
        frozen_params=counts.frozen, base_memory_bytes=run.base_memory,
        memory_bytes=run.memory, adapter_bytes=run.adapter_bytes,
        correct_before=acc_before.correct, correct_after=acc_after.correct,
        eval_total=acc_after.total, losses=list(result.losses),
        step_times=list(result.step_times), steps_done=result.steps_done,
        interrupted=result.interrupted, train_seconds=result.elapsed,
        tokens_per_s=result.tokens_per_s, recorded_steps=list(recording.steps),
        modules=modules, generations=generations,
        errors_after=[r for r in acc_after.rows if not run.task.check(r[2], r[1])],
        timings=run.times, wall_seconds=0.0, recording=recording)


def write_report(run: TourRun, tour: TourResult, out: Path, threads: int) -> None:
    """Phase 7: write the HTML report, then the figure pack if asked (``pack``); the whole
    tour's wall time includes them."""
    import torch

    with _timed(run.times, "report"):
        tour.wall_seconds = time.perf_counter() - run.t_start
        tour.report = tour_report(tour, versions=_versions(torch, threads)).write(out)
    if run.s.pack is not None:
        from ..files.pack import export_pack

        with _timed(run.times, "figure pack"):
            tour.pack = export_pack(run.result, run.s.pack, recording=tour.recording,
                                    progress=False, title="lorakit tour: figure pack",
                                    settings=_settings_rows(tour)).index
    tour.wall_seconds = time.perf_counter() - run.t_start
    run.say(f"[7/7] wrote {tour.report}"
            + (f" and the figure pack {tour.pack}" if tour.pack else ""))


def _replies(model, tok, task, examples, acc) -> list[str]:
    """Greedy replies to ``examples`` ((prompt, expected) pairs): taken from the accuracy rows
    ``acc`` when that prompt was scored there (same model, same greedy decoding), else
    generated now (own prompts get up to 32 new tokens)."""
    from ..core.models import generate

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
        settings: a ``TourSettings``; or leave it out and pass its fields, or those of its
            ``lora`` and ``train`` settings, as keywords
            (``run_tour(steps=3, eval_n=4, out="tour.html")``: ``TourSettings.of``).
        log: called with each progress line (the CLI passes ``print``); None: silent.
    """
    if settings is None:
        settings = TourSettings.of(**kwargs)
    elif kwargs:
        raise TypeError("pass either settings or keyword settings, not both")
    out = check_out(settings.out)

    import torch

    from ..core import tasks

    run = TourRun(settings, log or (lambda line: None), tasks.get(settings.task))
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        with quiet_transformers():
            model, tok = load(run)
            evaluate(run, model, tok, "before")
            peft_model = attach_adapter(run, model)
            train_adapter(run, peft_model, tok)
            evaluate(run, peft_model, tok, "after")
            used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    tour = summarise(run, out)
    write_report(run, tour, out, used_threads)
    return tour



def _model_name(model) -> str:
    """A readable model name: the embedded model's, or the folder name, not a cache path."""
    from ..core.models import EMBEDDED_NAME

    name = str(getattr(model.config, "name_or_path", "") or type(model).__name__)
    if Path(name).is_dir():
        name = Path(name).name
    return "SmolLM2-135M-Instruct (embedded)" if name.startswith(EMBEDDED_NAME) else name


def _versions(torch, threads: int) -> dict[str, str]:
    import peft
    import transformers

    from ..core import __version__

    return {"lorakit": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version(),
            "device": (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                       else f"CPU ({platform.machine()}, {threads} torch threads)")}


# --------------------------------------------------------------------------- the report


# the embedded model is a Q4_1 GGUF dequantized to float32 (core/models.py)
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
    """The run's settings as (label, value) rows: the report's Settings and the pack's index."""
    s, lora, t = tour.settings, tour.settings.lora, tour.settings.train
    return [("model", tour.model_name), ("base weights", _WEIGHTS.get(s.quantize, s.quantize)),
            ("task", s.task), ("LoRA rank r", lora.r), ("alpha", f"{lora.alpha:g}"),
            ("scaling alpha/r", f"{lora.scaling:g}"), ("targets", _targets_text(lora.targets)),
            ("steps", t.steps), ("learning rate", f"{t.lr:g}"), ("batch size", t.batch_size),
            ("held-out examples scored", s.eval_n), ("seed", t.seed)]


def _targets_text(targets, sep: str = ", ") -> str:
    return targets if isinstance(targets, str) else sep.join(targets)


def tour_report(tour: TourResult, versions: dict[str, str] | None = None):
    """The tour's ``Report`` (files/report.py): tables and sparklines, all text escaped."""
    from ..files.report import Report, Table

    s = tour.settings
    rep = Report(
        "lorakit tour",
        subtitle=(f"LoRA on {tour.model_name}, task {s.task}: held-out accuracy "
                  f"{tour.correct_before}/{tour.eval_total} → "
                  f"{tour.correct_after}/{tour.eval_total} after {tour.steps_done} steps"),
        footer=(f"Written by `lorakit tour` on {datetime.now().isoformat(timespec='seconds')}"
                + (" · " + ", ".join(f"{k} {v}" for k, v in versions.items())
                   if versions else "")))
    _report_settings(rep, tour)
    _report_training(rep, tour)
    _report_learned(rep, tour)
    figures = _figures(tour)
    if figures:
        rep.add("Figures (plotly; interactive, plotly.js from its CDN: needs a network)"
                if s.cdn else "Figures (plotly; interactive, works offline)", *figures)
    _report_replies(rep, tour)
    rows = [[phase, f"{sec:.1f}"] for phase, sec in tour.timings.items()]
    rows.append(["whole tour", f"{tour.wall_seconds:.1f}"])
    rep.add("Wall time per phase (seconds)", Table(["phase", "seconds"], rows))
    return rep


def _report_settings(rep, tour: TourResult) -> None:
    """Sections: settings; parameters and memory; held-out accuracy."""
    from ..files.report import KeyValues, Table

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


def _report_training(rep, tour: TourResult) -> None:
    """Section: training summary, loss sparkline and loss table."""
    from ..files.report import KeyValues, Sparkline, Table

    summary = [("steps done", f"{tour.steps_done} of {tour.settings.train.steps}"
                + (" (interrupted)" if tour.interrupted else "")),
               ("training time (sum of step times)", f"{tour.train_seconds:.1f} s"),
               ("tokens per second", f"{tour.tokens_per_s:,.0f}")]
    blocks = []
    if tour.losses:
        summary.append(("loss first → last", f"{tour.loss_first:.4f} → {tour.loss_last:.4f}"))
        summary.append(("lowest loss", f"{min(tour.losses):.4f}"))
        blocks = [
            Sparkline(tour.losses, label="loss", x=range(1, tour.steps_done + 1), log=True),
            Table(["step", "loss", "step time (s)"], _loss_rows(tour), caption="Loss by step")]
    rep.add("Training", KeyValues(summary), *blocks)


def _report_learned(rep, tour: TourResult) -> None:
    """Section: what the Recorder saw in each module (‖ΔW‖ and singular values)."""
    from ..files.report import Sparkline, Table, Text

    if not tour.modules:
        return
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


def _report_replies(rep, tour: TourResult) -> None:
    """Sections: replies before/after, and the held-out items still wrong."""
    from ..files.report import Table

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


def _figures(tour: TourResult) -> list:
    """Loss curve, ΔW animation and norms from view/figures.py, when plotly is installed;
    plotly.js once, with the first figure (inlined, or from the CDN with ``cdn``); then the ΔW
    animation as a GIF ``<img>`` (pack.delta_gif_blocks)."""
    import importlib.util

    if importlib.util.find_spec("plotly") is None or tour.recording is None \
            or not len(tour.recording):
        return []
    from ..files.report import Html
    from ..view import figures

    figs = [figures.loss_curve(tour.losses)] if tour.losses else []
    figs += [figures.matrix_evolution(tour.recording, tour.recording.modules[0], which="all"),
             figures.norms_over_time(tour.recording)]
    first = "cdn" if tour.settings.cdn else True        # plotly.js once, with the first figure
    blocks = [Html(f.to_html(full_html=False, include_plotlyjs=first if i == 0 else False,
                             auto_play=False)) for i, f in enumerate(figs)]
    from ..files.pack import delta_gif_blocks

    return blocks + delta_gif_blocks(tour.recording)


