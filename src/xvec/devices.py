"""Device names given by users (``--device``, ``train.device``): one parser, one-line errors;
and the CPUs this process may use."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from xvec.errors import XvecError

if TYPE_CHECKING:
    import torch

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def check_device_name(text: str, what: str = "--device") -> str:
    """Check the syntax of a device name (no torch import); return it stripped and lowered."""
    name = str(text).strip().lower()
    if not DEVICE_PATTERN.fullmatch(name):
        raise XvecError(f"{what} '{text}': unknown device; use {DEVICE_CHOICES}")
    return name


def parse_device(text: str, what: str = "--device") -> torch.device:
    """The torch device for ``text``; ``auto`` is CUDA when available, else CPU.

    An invalid name, or a CUDA/MPS device this machine does not have, is one XvecError.
    """
    import torch

    name = check_device_name(text, what)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise XvecError(f"{what} '{text}': CUDA is not available here; use cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise XvecError(
                f"{what} '{text}': this machine has {count} CUDA device(s) (cuda:0.."
                f"cuda:{count - 1})"
            )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise XvecError(f"{what} '{text}': MPS is not available here; use cpu or auto")
    return device
