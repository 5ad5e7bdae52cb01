"""lorakit's core: models, counting, attaching, training, recording, analysis, adapter files
and serving, on torch, transformers, PEFT and bitsandbytes. Never plotly or ipywidgets, and
nothing from ``lorakit.view``, ``lorakit.files`` or ``lorakit.app`` (``make lint`` checks it).
"""

# first, before any core module: raises ImportError (found vs needed) if transformers or PEFT
# are below lorakit's floors
from . import _compat  # noqa: F401

__version__ = "0.1.0"
