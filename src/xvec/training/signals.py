"""Ctrl-C and SIGTERM during training: a flag the loop checks at each step, and the error
that says where the state was saved."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xvec.errors import XvecError


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves at the next step boundary (an evaluation stops
    after its batch in hand) and exits 130."""

    def __init__(self, on_request: Callable[[], None] | None = None) -> None:
        self.requested = False
        self._on_request = on_request
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
        if self._on_request is not None and os.environ.get("RANK", "0") == "0":
            self._on_request()  # said at once, before the step or batch ends

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(XvecError):
    """Training stopped on request after saving its state at ``epoch``, ``step``."""

    exit_code = 130

    def __init__(self, epoch: int, step: int, state_path: Path) -> None:
        super().__init__(f"interrupted at epoch {epoch}, step {step}; state saved in {state_path}")
        self.epoch, self.step, self.state_path = epoch, step, state_path
