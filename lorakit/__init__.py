"""lorakit: learn and do LoRA fine-tuning on a real model, in Jupyter.

``import lorakit as lk`` gives the public API (docs/architecture.md says where each part
lives). The core never imports plotly or ipywidgets; figures and widgets load them when first
used.
"""

# first: raises ImportError (found vs needed) if transformers/PEFT are below lorakit's floors
from . import _compat  # noqa: F401, I001
from . import tasks
from .attach import attach, attach_adalora, detach, find_target_parameters, find_targets
from .experiments import compare_variants
from .models import generate, load_model
from .params import (
    BUILTIN_CONFIGS,
    Budget,
    ParamCounts,
    builtin_config,
    count_params,
    estimate,
    linear_modules,
    lora_param_count,
)
from .record import Recorder, Recording
from .settings import LoraSettings, TrainSettings
from .tasks import Task
from .train import NonFiniteLossError, TrainResult, train

__version__ = "0.1.0"

# View and serving modules load on first use (PEP 562), so `import lorakit` stays light:
# lk.figures.param_bars(...), lk.LoRAPanel(model), lk.export_html(fig, path), lk.merge(pm).
# Slides and handouts: lk.export_gif / export_mp4 / export_svg / export_pdf / export_pack.
_LAZY_MODULES = {"figures", "widgets", "export", "serve", "analysis", "scratch", "cli", "tour",
                 "experiments", "adapters", "animate", "pack", "notebook", "explorers"}
_LAZY_NAMES = {
    "LoRAPanel": "widgets", "TrainPanel": "widgets", "AdapterPanel": "widgets",
    "set_display_mode": "widgets", "get_display_mode": "widgets",
    "export_html": "export", "export_png": "export",
    "export_gif": "animate", "export_mp4": "animate", "export_svg": "animate",
    "export_pdf": "animate", "export_pack": "pack",
    "merge": "serve", "merge_in_place": "serve", "unmerge": "serve", "is_merged": "serve",
    "save_adapter": "adapters", "load_adapter": "adapters", "AdapterBank": "serve",
    "latency": "serve", "MergeCheck": "serve",
    "setup_notebook": "notebook", "show": "notebook",
    "DeltaScaleExplorer": "explorers", "PhiGridExplorer": "explorers",
}


def __getattr__(name):
    import importlib

    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'lorakit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _LAZY_MODULES | set(_LAZY_NAMES))

__all__ = [
    "BUILTIN_CONFIGS", "Budget", "LoraSettings", "NonFiniteLossError", "ParamCounts",
    "Recorder", "Recording", "Task", "TrainResult", "TrainSettings", "attach", "attach_adalora",
    "builtin_config", "compare_variants", "count_params",
    "detach", "estimate", "find_target_parameters", "find_targets", "generate", "linear_modules", "load_model",
    "lora_param_count", "tasks", "train",
]
