"""Peak resident memory of a process tree, sampled from /proc (Linux), for the benchmarks."""

from __future__ import annotations

import resource
import subprocess
import threading
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mib(pid: int) -> tuple[float, float]:
    """(resident MiB of ``pid`` itself, of ``pid`` and all its descendants)."""
    own = _rss_kib(pid)
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += _rss_kib(current)
        stack += _children(current)
    return own / 1024, total / 1024


def run_measured(command: list[str], interval: float = 0.25, **kwargs) -> dict[str, float]:
    """Run ``command``; return wall seconds, CPU seconds (user + system of the finished
    process tree) and peak RSS (main process and whole tree) in MiB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(command, **kwargs)
    peak = {"main_mib": 0.0, "tree_mib": 0.0}

    def sample() -> None:
        while process.poll() is None:
            own, tree = tree_rss_mib(process.pid)
            peak["main_mib"] = max(peak["main_mib"], own)
            peak["tree_mib"] = max(peak["tree_mib"], tree)
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    code = process.wait()
    thread.join()
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {code}")
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": seconds, "cpu_seconds": cpu, **peak}


def cpu_model() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo (benchmarks name the machine they ran on)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown CPU"
    names = (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return next(names, "unknown CPU")
