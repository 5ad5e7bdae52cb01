"""Quieting transformers and PEFT: the one place lorakit hides their logs and warnings.

- ``quiet_transformers()``: transformers' progress bars and info logs off for the block (model
  loading, the headless tour), both put back as they were afterwards.
- ``quiet_gguf_progress()``: the GGUF conversion's progress bar off for the block.
- ``peft_quiet()``: hides the warnings PEFT raises on our behalf that are not the learner's
  concern: transformers' ``is_gradient_checkpointing`` deprecation (PEFT reads it; v5 renamed
  it) and, optionally, other messages (``also=``: regular expressions).
- Start-up noise: bitsandbytes (on CPUs with AVX512-BF16) asks the ``kernels`` package for a
  hub kernel when it is imported; offline (``HF_HUB_OFFLINE=1``) ``kernels`` logs "Skipping
  publisher trust check ..." and bitsandbytes "Failed to load CPU gemm_4bit_forward ...". Both
  are logging warnings whose loggers have no handler, so Python's last-resort handler prints
  them to stderr in every notebook; the pure-CPU path works without that kernel. A
  ``NullHandler`` on each of the two loggers (set when this module is imported, before lorakit
  imports bitsandbytes or PEFT) silences only that default: an application that configures
  logging still sees them.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

# Third-party loggers whose warnings at import are not the learner's concern (see above).
QUIET_LOGGERS = ("bitsandbytes", "kernels")
for _name in QUIET_LOGGERS:
    logging.getLogger(_name).addHandler(logging.NullHandler())

# PEFT calls a transformers property deprecated in v5; not the learner's concern.
PEFT_DEPRECATION = ".*is_gradient_checkpointing.*"


@contextlib.contextmanager
def quiet_transformers(quiet: bool = True) -> Iterator[None]:
    """Hide transformers' progress bars and info logs inside the block (unless not ``quiet``)."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_gguf_progress(quiet: bool = True) -> Iterator[None]:
    """Hide the progress bar transformers draws while it de-quantizes a GGUF file (unless not
    ``quiet``). That bar is tqdm's own, which ``quiet_transformers`` does not reach: the module
    that draws it gets a disabled tqdm for the block, its own put back afterwards."""
    if not quiet:
        yield
        return
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


@contextlib.contextmanager
def peft_quiet(*also: str) -> Iterator[None]:
    """Ignore PEFT's transformers-deprecation warning (and messages matching ``also``)."""
    with warnings.catch_warnings():
        for message in (PEFT_DEPRECATION, *also):
            warnings.filterwarnings("ignore", message=message)
        yield
