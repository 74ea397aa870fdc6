"""Training: ``train`` runs a recipe (``loop``) and tells a :class:`TrainingObserver` what
happens (``events``); the run folder, optimiser and schedule, signals and the distributed
launcher are one module each."""

from xvec.training.distributed import launch_distributed
from xvec.training.events import TrainingObserver, TrainingOutcome, TrainingStart
from xvec.training.loop import SpeakerNet, train
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
