"""A training run's JSON-lines log (``log.jsonl``): written by the trainer, read by the plots.

One record per line: ``{"kind": "train" | "epoch" | "eval", "epoch", "step", ..., "time"}``,
``time`` in seconds since the run (or its resumption) started.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from xvec.errors import XvecError

LOG_FILE = "log.jsonl"


class RunLog:
    """Append-only JSON-lines log (flushed per record); ``path`` None writes nothing (the
    other ranks of a distributed run)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.start = time.time()

    def write(self, **record: Any) -> None:
        if self.path is None:
            return
        record["time"] = round(time.time() - self.start, 3)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run folder's log; a missing log or a bad line is an error naming it.

    A last line cut short by a crash is dropped.
    """
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        raise XvecError(f"{run_dir}: no {LOG_FILE} here; is this a training run folder?")
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise XvecError(f"{path}:{number}: not a JSON record") from exc
    return records
