"""``xvec average``: the mean of a run's last N per-epoch models, written as a checkpoint.

The workflow behind the verb: it finds the run's newest per-epoch models (kept with
``[train] keep_epoch_models``), checks the output is none of them, and averages them with
:func:`xvec.training.averaging.average_checkpoints` (weights and BatchNorm statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xvec.errors import check_at_least
from xvec.outputs import check_outputs
from xvec.training.averaging import AVERAGE_FILE, average_checkpoints, last_saved_models


@dataclass(frozen=True)
class Averaged:
    """What :func:`average_run` wrote: the averaged checkpoint and its inputs, oldest first."""

    output: Path
    sources: list[Path]


def average_run(
    run_dir: Path, last: int, output: Path | None = None, force: bool = False
) -> Averaged:
    """Average the last ``last`` models of ``run_dir`` into ``output`` (default: its
    ``avg.safetensors``); an XvecError before anything is written when they cannot be. An
    input is never replaced; an existing file that is not a checkpoint only with ``force``."""
    run_dir = Path(run_dir)
    check_at_least("last", last, 1)
    sources = last_saved_models(run_dir, last)
    output = Path(output) if output is not None else run_dir / AVERAGE_FILE
    check_outputs({output: "checkpoint"}, sources, force)
    average_checkpoints(sources, output)
    return Averaged(output=output, sources=sources)
