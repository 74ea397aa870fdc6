"""What ``xvec train`` prints: the start summary, a bar (or log lines) per epoch, evaluations,
the final table and where the outputs are, rendered from the loop's events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from xvec import report
from xvec.report import FileProgress, metrics_table, print_warning
from xvec.training.averaging import AVERAGE_FILE
from xvec.training.events import EpochStats, TrainingObserver, TrainingOutcome, TrainingStart

if TYPE_CHECKING:
    from xvec.evaluate import EvalResult
    from xvec.training.state import Position


class EpochProgress:
    """One epoch's progress, shown once a step has run: loss, accuracy, utterances/s and the
    time left (from :class:`~xvec.training.events.EpochStats`). On a terminal a live bar; in
    a log file one plain line every :data:`LOG_PROGRESS_SECONDS` and at the end of the epoch."""

    def __init__(self, console: Console, stats: EpochStats) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        self.console = console
        self.stats = stats
        self.label = f"epoch {stats.epoch}/{stats.max_epoch}"
        self._last_line = time.perf_counter()
        self.live = getattr(console, "is_terminal", False)
        self.progress = Progress(
            TextColumn(self.label),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[stats]}"),
            console=console,
            disable=not self.live,
        )
        self.task = self.progress.add_task(
            "train", total=stats.total, completed=stats.done, stats=""
        )
        self.progress.__enter__()

    def close(self) -> None:
        """End the bar; in a log, the epoch's last line."""
        self.progress.__exit__(None, None, None)
        if not self.live and self.stats.steps:
            self._print_line()

    def text(self) -> str:
        """``loss .. acc ..% .. utt/s [h:mm:ss left]``; empty before the first step."""
        stats = self.stats
        if not stats.steps:
            return ""
        left = stats.seconds_left()
        eta = "" if left is None else f" {_clock(left)} left"
        return (
            f"loss {stats.mean_loss:.4f} acc {stats.mean_accuracy:.2f}% {stats.rate:.1f} utt/s{eta}"
        )

    def advance(self) -> None:
        """A step was added to the stats."""
        self.progress.update(self.task, advance=1, stats=self.text())
        now = time.perf_counter()
        if not self.live and now - self._last_line >= report.LOG_PROGRESS_SECONDS:
            self._print_line()

    def _print_line(self) -> None:
        self._last_line = time.perf_counter()
        self.console.print(
            f"{self.label} step {self.stats.done}/{self.stats.total} {self.text()}",
            highlight=False,
        )


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def training_start_text(start: TrainingStart) -> str:
    """The start-of-training summary, short lines: model and loss, data, compute, run folder."""
    verb = "resuming" if start.resumed else "training"
    trials = f"{start.trials} test trials" if start.trials is not None else "no trial list"
    workers = {0: "no loader workers", 1: "1 loader worker"}.get(
        start.loader_workers, f"{start.loader_workers} loader workers"
    )
    if start.threads is None:
        compute = f"{start.device}, {workers}"
    elif start.threads_follow_free_cores and start.threads > 1:
        compute = f"{start.device}, 1-{start.threads} threads following the free cores, {workers}"
    else:
        threads = f"{start.threads} thread{'s' if start.threads != 1 else ''}"
        compute = f"{start.device}, {threads}, {workers}"
    if start.channels_last:
        compute += ", channels-last convolutions"
    # A stage of a multi-stage recipe ([init] from) says which checkpoint it starts from and
    # whether the loss head came with it or is new (another loss or other speakers).
    stage = start.init
    init = [f"  starts from: {stage.checkpoint} (its model weights; {stage.loss})"] if stage else []
    return "\n".join(
        [
            f"{verb} {start.model} ({_parameter_count(start.parameters)} parameters) "
            f"with {start.loss}",
            *init,
            f"  data: {start.classes} speakers, {start.utterances} utterances; {trials}",
            f"  compute: {compute}",
            f"  run folder: {start.run_dir}",
        ]
    )


def training_outcome_text(outcome: TrainingOutcome) -> str:
    """Where a finished run's outputs are, one line each."""
    run_dir = outcome.run_dir
    best, average = run_dir / "best.safetensors", run_dir / AVERAGE_FILE
    model = f"model: {run_dir / 'last.safetensors'}"
    lines = [f"run folder: {run_dir}", model + (f" (best: {best})" if best.is_file() else "")]
    if average.is_file():
        lines.append(f"averaged model: {average}" + (" (scored)" if outcome.evaluated else ""))
    if outcome.evaluated:
        lines += [f"scores: {run_dir / 'scores.txt'}", f"histogram: {run_dir / 'hist.png'}"]
    if (run_dir / "curves.png").is_file():
        lines.append(f"training curves: {run_dir / 'curves.png'}")
    return "\n".join(lines)


class ConsoleTrainingObserver(TrainingObserver):
    """Renders a training run's events on ``console``: the start summary, a bar per epoch
    (plain lines in a log), evaluations and the final table."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._epoch: EpochProgress | None = None
        self._files: FileProgress | None = None

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def started(self, start: TrainingStart) -> None:
        self._say(training_start_text(start))

    def resumed(self, run_dir: Path, position: Position) -> None:
        pending = position.pending_eval
        first = f"; evaluating epoch {pending} first" if pending is not None else ""
        self._say(
            f"resuming {run_dir} at epoch {position.epoch}, batch {position.batch} "
            f"(step {position.step}){first}"
        )

    def stale_lock(self, lock: Path, pid: int) -> None:
        print_warning(self.console, f"{lock}: taking over a stale lock (pid {pid} is not running)")

    def stop_requested(self) -> None:
        self._say(
            "stop requested: the run is saved at the next step (an evaluation in progress "
            "stops and is redone on --resume); Ctrl-C again stops at once"
        )

    def epoch_started(self, stats: EpochStats) -> None:
        self._epoch = EpochProgress(self.console, stats)

    def step_done(self, stats: EpochStats) -> None:
        if self._epoch is not None:
            self._epoch.advance()

    def epoch_ended(self, stats: EpochStats) -> None:
        if self._epoch is not None:
            self._epoch.close()
            self._epoch = None

    def evaluation_started(self, epoch: int) -> None:
        self._files = FileProgress("  evaluating", self.console).__enter__()

    def evaluation_progress(self, advance: int, total: int) -> None:
        if self._files is not None:
            self._files(advance, total)

    def evaluated(self, epoch: int, result: EvalResult | None, p_target: float) -> None:
        if self._files is not None:
            self._files.__exit__(None, None, None)
            self._files = None
        if result is not None:
            metrics = result.metrics
            self.console.print(
                f"  eval: EER {metrics.eer:.3f} %  minDCF({p_target}) "
                f"{metrics.min_dcf[p_target]:.4f}  ({result.seconds:.1f} s)"
            )

    def averaged(self, output: Path, sources: list[Path]) -> None:
        """One line: how many epochs' models were averaged, and where the average went."""
        self._say(f"averaged the last {len(sources)} epochs' models -> {output}")

    def final_evaluation(self, result: EvalResult, trials: int) -> None:
        title = f"final evaluation ({trials} trials)"
        self.console.print(metrics_table(result.rows(), title, width=self.console.width))

    def completing(self, run_dir: Path, missing: tuple[str, ...]) -> None:
        if missing:
            self._say(f"{run_dir}: training is done; writing the missing {', '.join(missing)}")
        else:
            self._say(f"{run_dir}: the run is complete; nothing to do")


def _parameter_count(count: int) -> str:
    """``1.44 M`` from a million on, else the count with thousands separators."""
    return f"{count / 1e6:.2f} M" if count >= 1_000_000 else f"{count:,}"
