"""Stopping a Lightning fit at a step boundary, with its checkpoint kept.

Lightning handles SIGTERM itself (its signal connector raises ``SIGTERMException`` at
the next step); :class:`StopAtStep` honours any stop request (``stopping.STOP``:
Ctrl-C, SIGHUP, code) the same way, at the next batch. Both end the same way:
:func:`fit_or_interrupted` raises one ``RunInterrupted`` that names the checkpoint a
re-run resumes from. That is ``last.ckpt`` of the last finished epoch: Lightning
resumes cleanly from an epoch's end, not from a checkpoint taken inside an epoch with
a shuffling data loader.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from rsscgeo.errors import RunInterrupted
from rsscgeo.stopping import STOP, stop_signal

# What ends a fit early on purpose, as opposed to a failure.
INTERRUPTIONS = (RunInterrupted, KeyboardInterrupt, SIGTERMException)


class StopAtStep(Callback):
    """Stop at the next training or validation batch once a stop is requested."""

    def on_train_batch_start(self, *_: Any, **__: Any) -> None:
        """A safe point: the previous optimizer step is done."""
        STOP.check("interrupted")

    def on_validation_batch_start(self, *_: Any, **__: Any) -> None:
        """A safe point between validation batches."""
        STOP.check("interrupted")


def fit_or_interrupted(trainer: L.Trainer, fit: Callable[[], None], checkpoint: Path) -> None:
    """Run ``fit``; a stop becomes one ``RunInterrupted`` naming the kept checkpoint.

    Raises:
        RunInterrupted: If a signal or a stop request ended the fit early.
    """
    try:
        fit()
    except INTERRUPTIONS as err:
        signum = signal.SIGTERM if isinstance(err, SIGTERMException) else stop_signal(err)
        raise RunInterrupted(
            f"training interrupted in epoch {trainer.current_epoch + 1} at step "
            f"{trainer.global_step} ({_kept(checkpoint)})",
            "call again with the same config to resume.",
            cli_fix="rerun the same command to resume (--restart starts over)",
            signum=signum,
        ) from None


def _kept(checkpoint: Path) -> str:
    if not checkpoint.exists():
        return "no epoch finished, so no checkpoint to resume from"
    state = torch.load(checkpoint, weights_only=True, map_location="cpu", mmap=True)
    return f"{checkpoint} of epoch {state['epoch'] + 1} kept"
