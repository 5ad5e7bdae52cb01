"""Quieting transformers and PEFT: the one place lorakit hides their logs and warnings.

- ``quiet_transformers()``: transformers' progress bars and info logs off for the block (model
  loading, the headless tour), both put back as they were afterwards.
- ``peft_quiet()``: hides the warnings PEFT raises on our behalf that are not the learner's
  concern: transformers' ``is_gradient_checkpointing`` deprecation (PEFT reads it; v5 renamed
  it) and, optionally, other messages (``also=``: regular expressions).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

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
def peft_quiet(*also: str) -> Iterator[None]:
    """Ignore PEFT's transformers-deprecation warning (and messages matching ``also``)."""
    with warnings.catch_warnings():
        for message in (PEFT_DEPRECATION, *also):
            warnings.filterwarnings("ignore", message=message)
        yield
