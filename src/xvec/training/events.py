"""What a training run tells the outside: plain data handed to a :class:`TrainingObserver`.

The loop never prints. It calls its observer at each event (started, resumed, a step done, an
epoch ended, an evaluation, the end); :mod:`xvec.report` renders them on a terminal or in a log,
a notebook or scheduler may watch them, and the default observer ignores them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xvec.evaluate import EvalResult
    from xvec.training.state import Position


@dataclass(frozen=True)
class StageInit:
    """A run that starts from another run's checkpoint (``[init] from``): its model weights,
    and the loss's when they fit."""

    checkpoint: Path
    loss: str  # "loss weights from the checkpoint (...)", or "a fresh loss head: " and why


@dataclass(frozen=True)
class TrainingStart:
    """What a training call is about to do, told before the first step."""

    model: str
    parameters: int
    loss: str
    classes: int
    utterances: int
    trials: int | None  # test trials; None without a trial list
    device: str
    threads: int | None  # CPU threads computing (the most, when they follow the free cores)
    threads_follow_free_cores: bool
    loader_workers: int
    run_dir: Path
    resumed: bool
    channels_last: bool = False  # the 2-D convolutions run in channels-last memory
    init: StageInit | None = None  # [init] from, applied at this start (never on a resume)


class EpochStats:
    """One epoch's steps in this call: running mean loss and accuracy, utterances/s, time left.

    The time left is the mean step time after the first step (which pays for warm-up) times
    the steps to go; None before two steps.
    """

    def __init__(self, epoch: int, max_epoch: int, total: int, done: int) -> None:
        self.epoch, self.max_epoch = epoch, max_epoch
        self.total, self.done = total, done
        self.steps = 0
        self.mean_loss = self.mean_accuracy = self.rate = 0.0
        self._utterances = 0
        self._start = time.perf_counter()
        self._first_step_end: float | None = None

    def add(self, loss: float, accuracy: float, utterances: int) -> None:
        """Count one optimiser step."""
        now = time.perf_counter()
        self.steps += 1
        self.done += 1
        if self.steps == 1:
            self._first_step_end = now
        self.mean_loss += (loss - self.mean_loss) / self.steps
        self.mean_accuracy += (accuracy - self.mean_accuracy) / self.steps
        self._utterances += utterances
        self.rate = self._utterances / max(now - self._start, 1e-9)

    def seconds_left(self) -> float | None:
        """The epoch's remaining time, or None before two steps."""
        if self._first_step_end is None or self.steps < 2:
            return None
        per_step = (time.perf_counter() - self._first_step_end) / (self.steps - 1)
        return per_step * (self.total - self.done)


@dataclass(frozen=True)
class TrainingOutcome:
    """A training call that ran to the end (or found its run complete): where its outputs are."""

    run_dir: Path
    evaluated: bool  # a trial list was given: scores, result.json and a histogram exist


class TrainingObserver:
    """Receives a training run's events; each method does nothing here (a silent run).

    Only the main process (rank 0) reports. Subclass and override what you want to see.
    """

    def started(self, start: TrainingStart) -> None:
        """Before the first step of this call."""

    def resumed(self, run_dir: Path, position: Position) -> None:
        """A saved state was restored; ``position.pending_eval`` is evaluated first."""

    def stale_lock(self, lock: Path, pid: int) -> None:
        """The run folder's lock was left by a process that is gone; it is taken over."""

    def stop_requested(self) -> None:
        """Ctrl-C or SIGTERM: the run saves at the next step boundary."""

    def epoch_started(self, stats: EpochStats) -> None:
        """An epoch (or the rest of one) begins."""

    def step_done(self, stats: EpochStats) -> None:
        """An optimiser step ended."""

    def epoch_ended(self, stats: EpochStats) -> None:
        """The epoch's steps in this call are over (also when stopping inside it)."""

    def evaluation_started(self, epoch: int) -> None:
        """A periodic or final evaluation begins."""

    def evaluation_progress(self, advance: int, total: int) -> None:
        """``advance`` more of ``total`` files were embedded."""

    def evaluated(self, epoch: int, result: EvalResult | None, p_target: float) -> None:
        """The evaluation ended (``result`` None when a stop cut it short)."""

    def averaged(self, output: Path, sources: list[Path]) -> None:
        """``[train] average_last``: the mean of ``sources`` was written to ``output``; the
        final evaluation (if any) is of it."""

    def final_evaluation(self, result: EvalResult, trials: int) -> None:
        """The last epoch's evaluation, whose scores and histogram are the run's outputs."""

    def completing(self, run_dir: Path, missing: tuple[str, ...]) -> None:
        """A finished run was resumed; ``missing`` outputs are written (none: nothing to do)."""
