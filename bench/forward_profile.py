"""Where an extraction forward pass spends its time, against the CPU's own float32 peak.

For one model as ``xvec eval`` runs it (``prepare_for_inference``: BatchNorm folded,
channels-last convolutions) on a batch of random waveforms (default: voxceleb_trainer's 10
crops of 4 s), prints: ms per forward on one thread and as two one-thread streams (how
``xvec eval`` uses two cores), the model's GFLOP (torch's flop counter), the share of time in
convolutions (torch profiler), the convolutions' GFLOP/s, and a large float32 matrix product's
GFLOP/s on one thread (what this core can do). Convolutions near that peak leave the exact
fp32 path little to gain; what is left is the other ops' share.

    python bench/forward_profile.py [--model ResNetSE34L] [--batch 10] [--seconds 4.0]
        [--precision fp32|bf16] [--repeats 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from xvec import registry
from xvec.inference import prepare_for_inference

CONV_OPS = (
    "aten::mkldnn_convolution",
    "aten::_slow_conv2d_forward",
    "aten::convolution_overrideable",
)


def _forward_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int, bf16: bool) -> float:
    """Median ms of one forward on the calling thread."""
    times = []
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """One thread's float32 GFLOP/s on a square matrix product (the core's practical peak)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ResNetSE34L")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    bf16 = args.precision == "bf16"
    model = prepare_for_inference(registry.build("model", args.model, {}), torch.device("cpu"))
    x = torch.randn(args.batch, int(args.seconds * 16000))

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    gflop = counter.get_total_flops() / 1e9
    by_op = counter.get_flop_counts()["Global"]
    conv_gflop = sum(n for op, n in by_op.items() if "convolution" in str(op)) / 1e9
    one = _forward_ms(model, x, args.repeats, bf16)
    with ThreadPoolExecutor(2, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        start = time.perf_counter()
        list(pool.map(lambda _: _forward_ms(model, x, args.repeats, bf16), range(2)))
        # each stream ran repeats + 1 forwards; two streams at once
        two = (time.perf_counter() - start) / (2 * (args.repeats + 1)) * 1000
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=bf16)
    with torch.inference_mode(), autocast, profile() as prof:
        for _ in range(3):
            model(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if e.key in CONV_OPS)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]
    peak = _matmul_gflops()
    conv_ms = one * conv / total
    print(
        f"{args.model}, batch {args.batch} x {args.seconds:g} s, {args.precision}, "
        f"prepared for inference; {torch.__version__}"
    )
    print(f"model GFLOP per forward: {gflop:.2f}, of which convolutions {conv_gflop:.2f}")
    print(f"forward ms, one thread: {one:.1f}; two one-thread streams, per forward: {two:.1f}")
    share = f"{100 * conv / total:.1f} % of the time"
    print(f"convolutions: {share}, {conv_gflop / conv_ms * 1000:.0f} GFLOP/s")
    print(f"float32 matrix product, one thread: {peak:.0f} GFLOP/s")
    print("largest ops (self time %): " + ", ".join(
        f"{e.key} {100 * e.self_cpu_time_total / total:.1f}" for e in top
    ))  # fmt: skip


if __name__ == "__main__":
    main()
