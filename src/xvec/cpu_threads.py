"""CPU training threads that follow the cores actually free.

torch's intra-op threads meet at a barrier after every parallel kernel. On a quiet machine
two threads on two cores beat one, but when other jobs share the cores one of ours is often
descheduled and the other waits for it, so each kernel takes as long as the slowest thread's
turn: measured on 2 cores with two other 2-thread torch jobs, 2-thread training fell to 6-10 %
of its quiet speed. :class:`ThreadTuner` times training steps at each candidate thread count
and keeps the fastest, probing again every ``retune_seconds`` as the load changes
(``bench/loaded_training.py`` measures it).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch


def thread_candidates(max_threads: int) -> list[int]:
    """The thread counts worth probing: all cores, half of them, one (largest first)."""
    return sorted({max(1, max_threads), max(1, max_threads // 2), 1}, reverse=True)


class ThreadTuner:
    """Pick torch's intra-op thread count from measured step times; call :meth:`step_done`.

    Training starts on one thread. A probe times ``probe_steps`` steps with the count in use,
    then with each other candidate (after one untimed step, which absorbs the switch), and
    keeps the count with the lowest median step time; the count in use is kept unless another
    is at least ``margin`` faster. A candidate whose step takes over ``abort_ratio`` times the
    current median is dropped at once: under heavy load a step on all cores can take ten
    times one on a single core, and a probe then spends one such step, on a quiet machine a
    few steps at ~0.7x speed. Larger counts are not probed at all when less than
    ``min_idle_cpus`` cores stayed idle during the steps with the count in use (read from
    ``/proc/stat`` where there is one): without a free core more threads only wait for each
    other. Probes repeat after ``retune_seconds``, doubling up to ``max_retune_seconds`` while
    they keep the count in use. Between probes, while fewer threads than cores run, the idle
    cores are read every ``watch_seconds``: when at least ``freed_cpus`` more stay idle than
    during the last probe (the other jobs have ended), the next probe starts at once instead
    of up to ``max_retune_seconds`` later.
    """

    def __init__(
        self,
        max_threads: int,
        probe_steps: int = 3,
        retune_seconds: float = 30.0,
        max_retune_seconds: float = 480.0,
        margin: float = 0.05,
        abort_ratio: float = 1.5,
        min_idle_cpus: float = 0.5,
        watch_seconds: float = 15.0,
        freed_cpus: float = 0.5,
        clock: Callable[[], float] = time.perf_counter,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        idle_cpus: Callable[[], tuple[float, float] | None] | None = None,
    ) -> None:
        self.candidates = thread_candidates(max_threads)
        self.probe_steps = probe_steps
        self.min_retune_seconds = retune_seconds
        self.max_retune_seconds = max_retune_seconds
        self.margin = margin
        self.abort_ratio = abort_ratio
        self.min_idle_cpus = min_idle_cpus
        self.watch_seconds = watch_seconds
        self.freed_cpus = freed_cpus
        self._clock = clock
        self._idle_cpus = idle_cpus or machine_cpu_times
        self._idle_at_start: tuple[float, float] | None = None
        self._idle_during_probe: float | None = None  # idle cores while the incumbent ran
        self._watch_from: tuple[float, tuple[float, float] | None] | None = None
        self._set_threads = set_threads
        self.threads = self.candidates[-1]
        self._set_threads(self.threads)
        self._last = clock()
        self._retune_seconds = retune_seconds
        self._next_probe = self._last  # probe from the first steps on
        self._queue: list[int] = []  # candidates still to probe, the one being probed first
        self._times: dict[int, list[float]] = {}
        self._incumbent = self.threads  # the count in use when the probe started
        self._untimed = False  # the next step is the first after a switch
        self.history: list[tuple[float, int]] = []  # (time, chosen threads) after each probe

    def restart_clock(self) -> None:
        """Start timing afresh after work that is not a training step (an evaluation, a save)."""
        self._last = self._clock()

    def step_done(self) -> None:
        """Record the step that just ended; switch threads when a probe needs it."""
        now = self._clock()
        elapsed, self._last = now - self._last, now
        if len(self.candidates) == 1:
            return
        if not self._queue:
            if now < self._next_probe and self._cores_freed(now):
                self._next_probe, self._retune_seconds = now, self.min_retune_seconds
            if now >= self._next_probe:
                self._incumbent = self.threads
                others = [n for n in self.candidates if n != self.threads]
                self._queue = [self.threads, *others]
                self._times = {n: [] for n in self._queue}
                self._idle_at_start = self._idle_cpus()
            return
        probing = self._queue[0]
        baseline = self._times[self._incumbent]
        if probing != self._incumbent and elapsed > self.abort_ratio * _median(baseline):
            self._times[probing] = [elapsed]  # clearly slower: no more steps spent on it
            self._next_candidate(now)
        elif self._untimed:
            self._untimed = False
        else:
            self._times[probing].append(elapsed)
            if len(self._times[probing]) >= self.probe_steps:
                self._next_candidate(now)

    def _next_candidate(self, now: float) -> None:
        if self._queue.pop(0) == self._incumbent and self._no_free_core():
            self._queue = [n for n in self._queue if n < self._incumbent]
        if self._queue:
            self._use(self._queue[0])
            self._untimed = True
        else:
            self._choose(now)

    def _no_free_core(self) -> bool:
        """Whether fewer than ``min_idle_cpus`` cores were idle since the probe started."""
        self._idle_during_probe = _idle_cores(self._idle_at_start, self._idle_cpus())
        return self._idle_during_probe is not None and self._idle_during_probe < self.min_idle_cpus

    def _cores_freed(self, now: float) -> bool:
        """Between probes, below the largest count: whether, over the last ``watch_seconds``,
        at least ``freed_cpus`` more cores stayed idle than during the last probe."""
        if self._idle_during_probe is None or self.threads >= self.candidates[0]:
            return False
        if self._watch_from is None or now - self._watch_from[0] < self.watch_seconds:
            if self._watch_from is None:
                self._watch_from = (now, self._idle_cpus())
            return False
        reading = self._idle_cpus()
        idle = _idle_cores(self._watch_from[1], reading)
        self._watch_from = (now, reading)
        return idle is not None and idle >= self._idle_during_probe + self.freed_cpus

    def _use(self, threads: int) -> None:
        if threads != self.threads:
            self._set_threads(threads)
            self.threads = threads

    def _choose(self, now: float) -> None:
        medians = {n: _median(times) for n, times in self._times.items()}
        best = min(medians, key=medians.__getitem__)
        chosen = self._incumbent
        if medians[best] < (1.0 - self.margin) * medians[chosen]:
            chosen = best
        self._use(chosen)
        if self.history and chosen == self.history[-1][1]:
            self._retune_seconds = min(2 * self._retune_seconds, self.max_retune_seconds)
        else:
            self._retune_seconds = self.min_retune_seconds
        self.history.append((now, chosen))
        self._next_probe = now + self._retune_seconds
        self._watch_from = None


def machine_cpu_times() -> tuple[float, float] | None:
    """(idle, total) CPU time of the whole machine so far, in clock ticks (``/proc/stat``).

    None where there is no ``/proc/stat`` (not Linux): the tuner then probes every count.
    """
    try:
        with open("/proc/stat") as handle:
            ticks = [int(value) for value in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle, iowait = ticks[3], ticks[4]  # after user, nice, system; before irq, softirq, steal
    return float(idle + iowait), float(sum(ticks))


def _idle_cores(start: tuple[float, float] | None, end: tuple[float, float] | None) -> float | None:
    """Cores idle on average between two :func:`machine_cpu_times` readings (None: unknown)."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return (end[0] - start[0]) / (end[1] - start[1]) * (os.cpu_count() or 1)


def _median(times: list[float]) -> float:
    return statistics.median(times) if times else float("inf")
