"""Embedding speed on CPU: PyTorch vs onnxruntime (exported with `xvec export`), same weights.

For ResNetSE34L and ECAPA-TDNN (voxceleb_trainer / paper sizes, untrained weights: speed does
not depend on them), batches of 4-second waveforms.

    python bench/export_speed.py [--batch 8] [--seconds 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _best_of(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import onnxruntime

    from xvec import registry
    from xvec.export import export_model

    torch.set_num_threads(2)
    wave = 0.1 * np.random.default_rng(0).standard_normal((args.batch, int(args.seconds * 16000)))
    wave = wave.astype(np.float32)
    print(f"batch {args.batch} x {args.seconds:.1f} s, best of {args.repeats}, 2 threads")
    for name in ("ResNetSE34L", "ECAPA-TDNN"):
        model = registry.build("model", name, {}).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            report = export_model(model, path, "onnx")
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 2
            session = onnxruntime.InferenceSession(str(path), options, ["CPUExecutionProvider"])

            def run_torch(model=model) -> None:
                with torch.inference_mode():
                    model(torch.from_numpy(wave))

            def run_onnx(session=session) -> None:
                session.run(None, {"waveform": wave})

            seconds_torch = _best_of(run_torch, args.repeats)
            seconds_onnx = _best_of(run_onnx, args.repeats)
        audio = args.batch * args.seconds
        print(
            f"{name:12s} PyTorch {seconds_torch:.3f} s ({audio / seconds_torch:.0f}x real time)  "
            f"onnxruntime {seconds_onnx:.3f} s ({audio / seconds_onnx:.0f}x real time)  "
            f"max |diff| {report.max_abs_diff:.1e}"
        )


if __name__ == "__main__":
    main()
