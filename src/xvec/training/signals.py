"""Ctrl-C and SIGTERM during training: a flag the loop checks at each step, and the error
that says how to resume."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from xvec.errors import XvecError


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves at the next step boundary (an evaluation stops
    after its batch in hand) and exits 130."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        if os.environ.get("RANK", "0") == "0":  # said at once, before the step or batch ends
            print(
                "stop requested: the run is saved at the next step (an evaluation in progress "
                "stops and is redone on --resume); Ctrl-C again stops at once",
                file=sys.stderr,
                flush=True,
            )

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(XvecError):
    """Training stopped on request after saving its state."""

    exit_code = 130
