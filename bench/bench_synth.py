"""Benchmark the synthetic corpus: time to make the quickstart corpus, and how hard it is.

Prints wall and CPU time of ``make_corpus`` (60 speakers x 20 utterances by default, the
``xvec synth`` default) and the EERs of the trivial baselines on its trials (pitch, loudness,
mean MFCC cosine), which a trained model should clearly beat.

    python bench/bench_synth.py [--speakers 60] [--utterances 20] [--workers N] [--seed 0]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from synth_baselines import baseline_eers

from xvec.synth import make_corpus


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker pool)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=60)
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "synth"
        wall, cpu = time.perf_counter(), cpu_seconds()
        info = make_corpus(out, args.speakers, args.utterances, args.seed, workers=args.workers)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        print(f"make_corpus: {info}")
        print(
            f"  wall {wall:.1f} s, CPU {cpu:.1f} s, "
            f"{info.seconds / cpu:.0f}x real time per CPU second"
        )
        started = time.perf_counter()
        eers = baseline_eers(out)
        print(f"baselines on {info.trials} trials ({time.perf_counter() - started:.1f} s):")
        for name, eer in eers.items():
            print(f"  {name:<9} EER {eer:5.1f} %")


if __name__ == "__main__":
    main()
