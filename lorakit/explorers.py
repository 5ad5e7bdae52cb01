"""Small ipywidgets explorers for the tutorials: one knob, one view (a view module).

Each explorer is driven from Python like the panels in ``lorakit.widgets``: set
``explorer.slider.value`` and the view is up to date when the call returns (observers run
synchronously). Each also has a plain-text ``summary`` for a notebook's static output, so a
reader who does not run the cell still sees what the knob does. The core never imports this
module.
"""

from __future__ import annotations

try:
    import ipywidgets as W
    import plotly.graph_objects as go
except ImportError as e:  # pragma: no cover - exercised only without the viz extra
    raise ImportError("lorakit's explorers need ipywidgets and plotly: "
                      "pip install 'lorakit[viz]'") from e

import html

import torch


class _Explorer:
    """Shows ``self.widget`` in Jupyter (ipywidgets 8 and 7), plain text elsewhere."""

    widget: W.Box

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        root = self.widget
        if hasattr(root, "_repr_mimebundle_"):            # ipywidgets 8
            data = dict(root._repr_mimebundle_(include=include, exclude=exclude, **kwargs))
        else:                                             # ipywidgets 7
            data = {"application/vnd.jupyter.widget-view+json": {
                "version_major": 2, "version_minor": 0, "model_id": root.model_id}}
        data["text/plain"] = repr(self)
        return data


# ============================================================================================
# Adapters (tutorials 05 and 06): the ΔW scale slider and the φ-grid step slider.
# ============================================================================================
def _lora_scalings(peft_model, adapter: str) -> dict:
    """Every LoRA layer of ``peft_model`` with its current scale (α/r or α/√r) for ``adapter``."""
    layers = {m: m.scaling[adapter] for m in peft_model.modules()
              if isinstance(getattr(m, "scaling", None), dict) and adapter in m.scaling}
    if not layers:
        raise ValueError(f"the model has no LoRA layers with an adapter named {adapter!r}: "
                         "pass a PeftModel from lk.attach / lk.load_adapter")
    return layers


class DeltaScaleExplorer(_Explorer):
    """A slider that scales every layer's ΔW from 0 (the base model) to 2× the trained adapter.

    ``replies(scale)`` greedy-generates the ``prompts`` with every LoRA layer's scale multiplied
    by ``scale`` (PEFT's ``scaling[adapter]``), then puts the scales back, so the model is never
    left changed. Moving ``slider`` shows the replies at that scale in ``view`` (an HTML table).
    Replies are cached per scale.
    """

    def __init__(self, peft_model, tok, prompts, *, adapter: str = "default",
                 max_new_tokens: int = 24, max_scale: float = 2.0, step: float = 0.25):
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise ValueError("prompts must be a non-empty list of non-empty strings")
        if not 0 < step <= max_scale:
            raise ValueError(f"need 0 < step <= max_scale, got step={step}, max_scale={max_scale}")
        self.model, self.tok, self.prompts = peft_model, tok, list(prompts)
        self.adapter, self.max_new_tokens = adapter, max_new_tokens
        self._scalings = _lora_scalings(peft_model, adapter)
        self._cache: dict[float, list[str]] = {}
        self.slider = W.FloatSlider(value=1.0, min=0.0, max=max_scale, step=step,
                                    description="ΔW ×", continuous_update=False)
        self.view = W.HTML()
        self.widget = W.VBox([self.slider, self.view])
        self.slider.observe(lambda _: self._update(), names="value")
        self._update()

    def replies(self, scale: float) -> list[str]:
        """The greedy replies with ΔW multiplied by ``scale`` (0: the base model)."""
        from .models import generate

        scale = round(float(scale), 6)
        if scale < 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        if scale not in self._cache:
            try:
                for layer, s in self._scalings.items():
                    layer.scaling[self.adapter] = s * scale
                self._cache[scale] = generate(self.model, self.tok, self.prompts,
                                              max_new_tokens=self.max_new_tokens)
            finally:
                for layer, s in self._scalings.items():
                    layer.scaling[self.adapter] = s
        return self._cache[scale]

    def _update(self) -> None:
        rows = "".join(f"<tr><td>{html.escape(p)}</td><td><code>{html.escape(r)}</code></td></tr>"
                       for p, r in zip(self.prompts, self.replies(self.slider.value), strict=True))
        self.view.value = (f"<b>ΔW × {self.slider.value:g}</b><table><tr><th>prompt</th>"
                           f"<th>reply</th></tr>{rows}</table>")

    def summary(self, scales=(0.0, 0.5, 1.0, 2.0), width: int = 40) -> str:
        """A text table of the replies at a few scales (the cell's static output)."""
        lines = []
        for p in self.prompts:
            lines.append(p)
            lines += [f"  ΔW × {s:<4g} → {self.replies(s)[self.prompts.index(p)][:width]!r}"
                      for s in scales]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"DeltaScaleExplorer(scale={self.slider.value:g}, prompts={len(self.prompts)})"


class PhiGridExplorer(_Explorer):
    """A step slider over the LoRA paper's φ(i, j) grid between two adapters during training.

    ``history1``, ``history2``: A matrices (r × d_in) of the two adapters at steps 0, 1, …, n
    (same length). With ``learned=True`` (default) φ compares what training added,
    ``A_t − A_0``; step 0 is then undefined and the slider starts at 1. ``baseline`` (a grid
    of the same shape, e.g. two random subspaces) is shown beside it.
    """

    def __init__(self, history1, history2, *, learned: bool = True, baseline=None,
                 labels=("i", "j"), title: str = "φ(i, j)"):
        from . import analysis

        if len(history1) != len(history2) or len(history1) < 2:
            raise ValueError("history1 and history2 need the same number of snapshots (≥ 2), "
                             f"got {len(history1)} and {len(history2)}")
        first = 1 if learned else 0
        self.grids = {}
        for t in range(first, len(history1)):
            a1, a2 = history1[t], history2[t]
            if learned:
                a1, a2 = a1 - history1[0], a2 - history2[0]
            self.grids[t] = analysis.similarity_grid(a1, a2)
        self.baseline, self.labels, self.title = baseline, labels, title
        self.slider = W.IntSlider(value=max(self.grids), min=first, max=max(self.grids),
                                  description="step", continuous_update=False)
        self.label = W.HTML()
        self.output = W.Output()
        self.figure: go.Figure | None = None
        self.widget = W.VBox([self.slider, self.label, self.output])
        self.slider.observe(lambda _: self._update(), names="value")
        self._update()

    @property
    def grid(self) -> torch.Tensor:
        """The φ grid at the slider's step."""
        return self.grids[self.slider.value]

    def _update(self) -> None:
        from IPython.display import display

        from . import figures

        g = self.grid
        self.label.value = (f"step {self.slider.value}: φ(1, 1) = {g[0, 0]:.3f}, "
                            f"φ({g.shape[0]}, {g.shape[1]}) = {g[-1, -1]:.3f}")
        self.figure = figures.similarity_heatmap(g, baseline=self.baseline, labels=self.labels,
                                                 title=f"{self.title}, step {self.slider.value}")
        self.output.clear_output(wait=True)
        with self.output:
            display(self.figure)

    def summary(self) -> str:
        """φ(1, 1) and φ(r1, r2) at every step, one line each (the cell's static output)."""
        return "\n".join(f"step {t:>3}: φ(1, 1) = {g[0, 0]:.3f}   φ({g.shape[0]}, {g.shape[1]}) "
                         f"= {g[-1, -1]:.3f}" for t, g in self.grids.items())

    def __repr__(self) -> str:
        return f"PhiGridExplorer(step={self.slider.value}, steps={len(self.grids)})"
