"""Sphinx configuration of the course website (``make site``; docs/site/build.py stages it).

Why Sphinx + MyST-NB (and not Jupyter Book 2 / mystmd): MyST-NB renders the notebooks' stored
outputs without executing them (``nb_execution_mode = "off"``), takes any ``text/html`` output
as is (build.py gives each plotly figure a ``<div>`` + ``Plotly.newPlot`` from plotly's own
``to_html``, so animations keep their frames and Play button), folds cells by tag into plain
``<details>`` dropdowns (no JavaScript), and serves plotly.js, MathJax and its search index from
``_static``, so the built folder works with no network. mystmd's web themes fetch their
JavaScript, fonts and MathJax from CDNs unless one builds the theme from source, and its
plotly support goes through widget rendering, which needs a running kernel or CDN scripts.
Saved widget state is not rendered (ipywidgets' HTML manager comes from a CDN): a panel shows
the static snapshot stored beside it.
"""

project = "lorakit: LoRA, hands on"
author = "lorakit developers"
copyright = "lorakit developers, Apache-2.0"

extensions = ["myst_nb", "sphinx.ext.mathjax"]
exclude_patterns = ["downloads", "_static", "_templates", ".doctrees", "**/.ipynb_checkpoints"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# MyST: $...$ and $$...$$ in Markdown cells become math nodes for MathJax
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # a notebook's sub-headings need not start at level 2

# MyST-NB: show what the notebooks stored; never start a kernel
nb_execution_mode = "off"
nb_merge_streams = True
nb_ipywidgets_js = {}  # no widget manager from a CDN; panels show their stored snapshot
nb_mime_priority_overrides = [
    ("html", "application/vnd.jupyter.widget-view+json", None),
    ("html", "application/vnd.jupyter.widget-state+json", None),
]

# plotly.js (copied from the installed plotly package): _templates/page.html loads it in
# <head> of each page with figures, before any figure's script runs
templates_path = ["_templates"]
html_static_path = ["_static"]
html_css_files = ["site.css"]
# MathJax 3, TeX to SVG in one file (npm's mathjax, copied in by build.py): no fonts to fetch
mathjax_path = "mathjax/tex-svg-full.js"

html_theme = "furo"
html_title = "lorakit: LoRA, hands on"
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None
