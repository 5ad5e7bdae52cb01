"""lorakit: learn and do LoRA fine-tuning on a real model, in Jupyter.

``import lorakit as lk`` gives the public API; ``dir(lk)`` lists exactly it (``__all__``).
The packages are the layers (docs/architecture.md; ``make lint`` checks them):

* ``lorakit.core``: models, counting, attaching, training, recording, analysis, adapter files
  and serving (torch, transformers, PEFT; never plotly or ipywidgets);
* ``lorakit.view``: figures, panels, explorers and notebook set-up (plotly, ipywidgets);
* ``lorakit.files``: HTML, PNG, SVG, PDF, GIF and MP4 files, figure packs, reports;
* ``lorakit.app``: the ``lorakit`` command (``tour``, ``train``).

The view and files names load on first use (PEP 562), so ``import lorakit`` never imports
plotly or ipywidgets.
"""

from .core import __version__, scratch, tasks  # noqa: F401  (__version__: lk.__version__)
from .core.adapters import load_adapter, save_adapter
from .core.attach import attach, attach_adalora, detach, find_target_parameters, find_targets
from .core.experiments import compare_methods
from .core.models import generate, load_model
from .core.params import (
    BUILTIN_CONFIGS,
    Budget,
    ParamCounts,
    builtin_config,
    count_params,
    estimate,
    linear_modules,
    lora_param_count,
)
from .core.record import Recorder, Recording
from .core.serve import AdapterBank, MergeCheck, is_merged, latency, merge, merge_in_place, unmerge
from .core.settings import LoraSettings, RecordSettings, TrainSettings
from .core.tasks import Task
from .core.train import NonFiniteLossError, TrainResult, train

# name -> the module that defines it, imported on first use (plotly / ipywidgets / kaleido)
_LAZY = {
    "figures": "view.figures", "explorers": "view.explorers",
    "LoRAPanel": "view.widgets", "TrainPanel": "view.widgets", "AdapterPanel": "view.widgets",
    "set_display_mode": "view.widgets", "get_display_mode": "view.widgets",
    "DeltaScaleExplorer": "view.explorers", "PhiGridExplorer": "view.explorers",
    "setup_notebook": "view.notebook", "show": "view.notebook", "set_theme": "view.figures",
    "export_html": "files.export", "export_png": "files.export", "export_svg": "files.export",
    "export_pdf": "files.export", "export_gif": "files.animate", "export_mp4": "files.animate",
    "export_pack": "files.pack",
}


def __getattr__(name):
    import importlib

    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return module if _LAZY[name].endswith(f".{name}") else getattr(module, name)
    raise AttributeError(f"module 'lorakit' has no attribute {name!r}")


__all__ = [
    "BUILTIN_CONFIGS", "AdapterBank", "AdapterPanel", "Budget", "DeltaScaleExplorer",
    "LoRAPanel", "LoraSettings", "MergeCheck", "NonFiniteLossError", "ParamCounts",
    "PhiGridExplorer", "RecordSettings", "Recorder", "Recording", "Task", "TrainPanel",
    "TrainResult", "TrainSettings", "attach", "attach_adalora", "builtin_config",
    "compare_methods", "count_params", "detach", "estimate", "explorers", "export_gif",
    "export_html", "export_mp4", "export_pack", "export_pdf", "export_png", "export_svg",
    "figures", "find_target_parameters", "find_targets", "generate", "get_display_mode",
    "is_merged", "latency", "linear_modules", "load_adapter", "load_model", "lora_param_count",
    "merge", "merge_in_place", "save_adapter", "scratch", "set_display_mode", "set_theme",
    "setup_notebook", "show", "tasks", "train", "unmerge",
]


def __dir__():
    """The public API only: the layer packages (``core``, ``view``, ...) are not part of it."""
    return sorted([*__all__, "__version__"])
