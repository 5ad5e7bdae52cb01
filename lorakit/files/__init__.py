"""lorakit's files layer: figures, panels and runs written to HTML, PNG, SVG, PDF, GIF and MP4
files, figure packs and HTML reports. Imports ``lorakit.view`` and ``lorakit.core``.
"""
