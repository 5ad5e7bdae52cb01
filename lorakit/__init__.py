"""lorakit: learn and do LoRA fine-tuning on a real model, in Jupyter.

``import lorakit as lk`` gives the public API listed in DESIGN.md. The core never imports
plotly or ipywidgets; figures and widgets load them when first used.
"""

from . import data as tasks
from .attach import attach, detach, find_targets
from .data import Task
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
from .settings import LoraSettings
from .train import NonFiniteLossError, TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_CONFIGS", "Budget", "LoraSettings", "NonFiniteLossError", "ParamCounts",
    "Recorder", "Recording", "Task", "TrainResult", "attach", "builtin_config", "count_params",
    "detach", "estimate", "find_targets", "generate", "linear_modules", "load_model",
    "lora_param_count", "tasks", "train",
]
