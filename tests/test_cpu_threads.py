"""ThreadTuner: the thread count follows measured step times, and follows them again later."""

from __future__ import annotations

import os

import pytest
import torch

from xvec.config import load_recipe
from xvec.cpu_threads import ThreadTuner, machine_cpu_times, thread_candidates
from xvec.errors import XvecError

from conftest import ROOT


class FakeMachine:
    """Steps take ``cost[threads]`` seconds of a fake clock; records thread switches.

    ``idle_cores`` of the machine's 2 cores stay idle while it runs (None: not measurable).
    """

    def __init__(self, cost: dict[int, float], idle_cores: float | None = None) -> None:
        self.cost = cost
        self.now = 0.0
        self.threads = 0
        self.switches: list[int] = []
        self.idle_cores = idle_cores
        self.idle_seconds = 0.0  # core-seconds idle so far
        self.reads = 0

    def clock(self) -> float:
        return self.now

    def cpu_times(self) -> tuple[float, float] | None:
        self.reads += 1
        if self.idle_cores is None:
            return None
        return self.idle_seconds, self.now * (os.cpu_count() or 1)

    def hooks(self) -> dict:
        """ThreadTuner's clock, thread setter and idle-core reader: this machine's, never the
        real machine's (whose load would decide the probes)."""
        return {"clock": self.clock, "set_threads": self.set_threads, "idle_cpus": self.cpu_times}

    def set_threads(self, threads: int) -> None:
        self.threads = threads
        self.switches.append(threads)

    def run(self, tuner: ThreadTuner, steps: int) -> None:
        for _ in range(steps):
            self.now += self.cost[self.threads]
            self.idle_seconds += self.cost[self.threads] * (self.idle_cores or 0.0)
            tuner.step_done()


def test_candidates_are_all_half_and_one_core() -> None:
    assert thread_candidates(2) == [2, 1]
    assert thread_candidates(8) == [8, 4, 1]
    assert thread_candidates(1) == [1]


def test_keeps_all_cores_on_a_quiet_machine_and_drops_to_one_under_load() -> None:
    machine = FakeMachine({2: 0.10, 1: 0.17})  # quiet: two threads are faster
    tuner = ThreadTuner(2, retune_seconds=5.0, **machine.hooks())
    machine.run(tuner, 20)
    assert tuner.history[0][1] == 2 and machine.threads == 2
    assert 1 in machine.switches  # one thread was probed
    machine.cost = {2: 1.2, 1: 0.4}  # other jobs arrive: the barrier waits dominate
    machine.run(tuner, 40)
    assert tuner.threads == 1 == machine.threads
    assert tuner.history[-1][1] == 1
    machine.cost = {2: 0.10, 1: 0.17}  # they leave again
    machine.run(tuner, 200)
    assert tuner.threads == 2 == machine.threads


def test_a_much_slower_count_costs_one_step_per_probe_and_probes_grow_rarer() -> None:
    machine = FakeMachine({2: 3.0, 1: 0.4})  # two threads under heavy load
    tuner = ThreadTuner(2, retune_seconds=10.0, **machine.hooks())
    slow_steps = 0
    for _ in range(2000):  # about 800 s
        slow_steps += machine.threads == 2
        machine.run(tuner, 1)
    assert slow_steps == len(tuner.history)  # each probe, the first too, spends one slow step
    assert 5 <= len(tuner.history) <= 9  # 10, 20, 40, ... s apart, capped at 480 s
    assert all(threads == 1 for _, threads in tuner.history)


def test_no_larger_count_is_tried_without_a_free_core() -> None:
    machine = FakeMachine({2: 3.0, 1: 0.4}, idle_cores=0.1)  # other jobs fill every core
    tuner = ThreadTuner(2, retune_seconds=10.0, **machine.hooks())
    machine.run(tuner, 2000)
    assert machine.switches == [1] and len(tuner.history) >= 5
    machine.idle_cores = 1.2  # a core is free again: two threads are probed and kept
    machine.cost = {2: 0.10, 1: 0.17}
    machine.run(tuner, 5000)
    assert tuner.threads == 2


def test_a_core_freed_between_probes_is_probed_within_the_watch_interval() -> None:
    machine = FakeMachine({2: 3.0, 1: 0.4}, idle_cores=0.1)  # other jobs fill every core
    tuner = ThreadTuner(2, retune_seconds=10.0, **machine.hooks())
    machine.run(tuner, 4000)  # 1600 s: probes now 480 s apart
    assert tuner._retune_seconds == 480.0 and machine.threads == 1
    last_probe = tuner.history[-1][0]
    while machine.now < last_probe + 50:  # the next scheduled probe is 430 s away
        machine.run(tuner, 1)
    machine.idle_cores = 1.0  # the other jobs end: a core is free
    machine.cost = {2: 0.10, 1: 0.17}
    freed_at = machine.now
    while machine.threads == 1 and machine.now < freed_at + 400:
        machine.run(tuner, 1)
    assert machine.threads == 2
    assert machine.now - freed_at <= 2 * tuner.watch_seconds + 1.0  # one window, then a probe
    machine.run(tuner, 2000)
    assert tuner.threads == 2


def test_a_quiet_machine_that_keeps_one_thread_is_not_probed_more_often() -> None:
    machine = FakeMachine({2: 0.30, 1: 0.17}, idle_cores=1.0)  # one thread wins on a free core
    tuner = ThreadTuner(2, retune_seconds=10.0, **machine.hooks())
    machine.run(tuner, 10000)  # 1700 s
    assert all(threads == 1 for _, threads in tuner.history)
    assert len(tuner.history) <= 9  # 10, 20, 40, ... s apart, capped at 480 s
    assert machine.reads > 100  # the idle cores were read between probes all along


def test_cpu_times_are_read_from_proc_stat() -> None:
    first = machine_cpu_times()
    if first is None:
        pytest.skip("no /proc/stat on this system")
    sum(range(2_000_000))  # some busy time passes
    second = machine_cpu_times()
    assert second is not None and second[1] > first[1] and second[0] >= first[0]
    assert 0 <= first[0] <= first[1]


def test_a_small_difference_does_not_switch() -> None:
    machine = FakeMachine({2: 0.098, 1: 0.100})  # 2 % faster: within the 5 % margin
    tuner = ThreadTuner(2, **machine.hooks())
    machine.run(tuner, 20)
    assert [threads for _, threads in tuner.history] == [1]
    assert machine.threads == 1


def test_time_outside_steps_is_not_counted() -> None:
    machine = FakeMachine({2: 0.10, 1: 0.17})
    tuner = ThreadTuner(2, **machine.hooks())
    machine.run(tuner, 3)  # probing two threads
    machine.now += 100.0  # an evaluation between epochs
    tuner.restart_clock()
    machine.run(tuner, 20)
    assert tuner.threads == 2


def test_recipe_threads_setting() -> None:
    demo = ROOT / "recipes" / "demo.toml"
    assert load_recipe(demo).train.threads == "auto"
    assert load_recipe(demo, ["train.threads=3"]).train.threads == 3
    with pytest.raises(XvecError, match=r"train\.threads"):
        load_recipe(demo, ["train.threads=0"])


def test_the_real_thread_count_is_set() -> None:
    before = torch.get_num_threads()
    try:
        tuner = ThreadTuner(1)
        assert tuner.candidates == [1] and torch.get_num_threads() == 1
        tuner.step_done()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
