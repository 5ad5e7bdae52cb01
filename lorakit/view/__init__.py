"""lorakit's view layer: plotly figures, ipywidgets panels and explorers, notebook set-up,
and rendering figures to images. Imports ``lorakit.core``; never ``lorakit.files`` or
``lorakit.app``.
"""
