"""The terminal: our own progress bars and one-line messages, and libraries kept quiet."""
from __future__ import annotations

import os
import sys
import warnings

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def quiet_libraries() -> None:
    """Our own progress bars and messages only: no per-load bars or deprecation chatter (also in workers)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*non-writable tensors.*")
    # We want n-gram blocking on the new tokens only: the prompt is visual embeddings, not text.
    warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*inputs_embeds.*")
    if "transformers" in sys.modules or "huggingface_hub" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    else:  # not loaded yet (importing it costs ~1 s): the same two settings, read by them when they load
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # an explicit 0 wins, as it does over the call


def progress_bars():
    """The bars of `run-all` and `train`: description, bar, done of total, elapsed, ETA."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)
