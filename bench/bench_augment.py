"""Per-utterance augmentation time for 2 s training crops: xvec's Augmenter vs a naive baseline.

The naive baseline does what voxceleb_trainer's AugmentWAV does: read each noise file whole, then
crop it; read the RIR from disk on every call and convolve it directly (``numpy.convolve``, and
``scipy.signal.convolve`` as VT calls it, when scipy is installed). Both sides mix at the same
SNRs, so only I/O and convolution differ. Files are in the OS page cache after the warm-up, so
the numbers are decode and compute time, not disk time. The first reverb row still loads RIRs
into the (per-process) cache; the scipy row runs with it warm, as training does.

Uses the shared Speech Commands noise and simulated RIRs; the "speech" (babble) row symlinks the
noise files into a MUSAN-shaped temporary folder.

    python bench/bench_augment.py [--repeats 40] [--frames 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile

from xvec.audio import crop_samples
from xvec.augment import NOISE_COUNTS, NOISE_SNR_DB, Augmenter, mix_at_snr

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
NOISE_DIR = SHARED / "noise" / "speech_commands"
RIR_DIR = SHARED / "rir" / "simulated"


def naive_noise(files: list[str], category: str, clean: np.ndarray, rng: np.random.Generator):
    """VT-style additive noise: every chosen file is decoded whole, then cropped."""
    low, high = NOISE_COUNTS[category]
    count = min(int(rng.integers(low, high + 1)), len(files))
    noises = []
    for index in rng.choice(len(files), size=count, replace=False):
        whole, _ = soundfile.read(files[index], dtype="float32")
        whole = np.pad(whole, (0, max(0, clean.size - whole.size + 1)), mode="wrap")
        start = int(rng.random() * (whole.size - clean.size))
        noises.append(whole[start : start + clean.size])
    snrs = rng.uniform(*NOISE_SNR_DB[category], size=count)
    return mix_at_snr(clean, np.stack(noises), snrs)


def naive_reverb(files: list[str], clean: np.ndarray, rng: np.random.Generator, convolve):
    """VT-style reverb: read and normalise the RIR on every call, direct convolution."""
    rir, _ = soundfile.read(files[rng.integers(len(files))], dtype="float64")
    rir = rir / np.sqrt(np.sum(rir**2))
    return convolve(clean.astype(np.float64), rir)[: clean.size].astype(np.float32)


def per_call_ms(function: Callable[[np.random.Generator], np.ndarray], repeats: int) -> float:
    """Median wall time of one call in ms, after two warm-up calls (page cache, RIR cache)."""
    rng = np.random.default_rng(0)
    for _ in range(2):
        function(rng)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(rng)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--frames", type=int, default=200, help="crop length in 10 ms frames")
    args = parser.parse_args()
    if not (NOISE_DIR.is_dir() and RIR_DIR.is_dir()):
        raise SystemExit(f"needs {NOISE_DIR} and {RIR_DIR}")
    length = crop_samples(args.frames)
    t = np.arange(length) / 16000
    clean = (0.2 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    noise_files = sorted(str(p) for p in NOISE_DIR.glob("*.flac"))
    rir_files = sorted(str(p) for p in RIR_DIR.glob("*.flac"))

    with tempfile.TemporaryDirectory() as tmp:
        musan = Path(tmp) / "musan"
        for category in ("speech", "noise"):
            (musan / category).mkdir(parents=True)
            for path in noise_files:
                (musan / category / Path(path).name).symlink_to(path)
        augmenter = Augmenter(musan, RIR_DIR, speed_perturb=True, probability=1.0)
        rows = [
            (
                "noise (1 file)",
                lambda rng: augmenter.apply("noise", clean, rng),
                lambda rng: naive_noise(noise_files, "noise", clean, rng),
            ),
            (
                "speech babble (3-7 files)",
                lambda rng: augmenter.apply("speech", clean, rng),
                lambda rng: naive_noise(noise_files, "speech", clean, rng),
            ),
            (
                "reverb vs numpy.convolve",
                lambda rng: augmenter.apply("reverb", clean, rng),
                lambda rng: naive_reverb(rir_files, clean, rng, np.convolve),
            ),
        ]
        try:
            from scipy import signal

            rows.append(
                (
                    "reverb vs scipy (VT)",
                    lambda rng: augmenter.apply("reverb", clean, rng),
                    lambda rng: naive_reverb(rir_files, clean, rng, signal.convolve),
                )
            )
        except ImportError:
            pass
        rows.append(("speed 0.9x/1.1x", lambda rng: augmenter.apply("speed", clean, rng)))
        rows.append(("one random kind (p=1)", lambda rng: augmenter(clean, rng)))

        print(f"{args.frames}-frame crops ({length} samples), median of {args.repeats} calls")
        print(f"{'augmentation':32s} {'xvec ms':>9s} {'naive ms':>9s} {'speed-up':>9s}")
        for name, ours, *naive in rows:
            ours_ms = per_call_ms(ours, args.repeats)
            if naive:
                naive_ms = per_call_ms(naive[0], args.repeats)
                print(f"{name:32s} {ours_ms:9.2f} {naive_ms:9.2f} {naive_ms / ours_ms:8.1f}x")
            else:
                print(f"{name:32s} {ours_ms:9.2f} {'-':>9s} {'-':>9s}")


if __name__ == "__main__":
    main()
