"""Training: ``train`` runs a recipe (``loop``) and tells a :class:`TrainingObserver` what
happens (``events``); the run folder, optimiser and schedule, averaging, signals and the
distributed launcher are one module each.

The loop (and torch) is imported on first use of ``train`` or ``SpeakerNet``, so the CLI and
:mod:`xvec.report`, which need only the events, start without torch.
"""

from typing import Any

from xvec.training.distributed import launch_distributed
from xvec.training.events import TrainingObserver, TrainingOutcome, TrainingStart
from xvec.training.signals import Interrupted

__all__ = [
    "Interrupted",
    "SpeakerNet",
    "TrainingObserver",
    "TrainingOutcome",
    "TrainingStart",
    "launch_distributed",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in ("SpeakerNet", "train"):
        from xvec.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
