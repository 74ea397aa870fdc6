"""Scale: `xvec score` + metrics on 3.7 M trials over 50,000 files, and `xvec embed` memory.

Prints wall time and peak resident memory (from /proc) of each command:
- `xvec score` then `xvec eval --scores` on 3.7 M synthetic trials over 50,000 random 256-dim
  embeddings (the VoxCeleb1-H scale): the goal is under 1 GB;
- `xvec embed` of N short files with a small TDNN: memory sampled over the run stays flat
  (audio is streamed batch by batch, never held all at once).

    python bench/scale.py [--trials 3700000] [--files 50000] [--embed-files 10000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from _proctree import run_measured, tree_rss_mib


def _score_at_scale(tmp: Path, n_trials: int, n_files: int) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    names = [f"id{i // 10:05d}/{i:06d}.wav" for i in range(n_files)]
    vectors = rng.standard_normal((n_files, 256)).astype(np.float32)
    save_file({n: vectors[i] for i, n in enumerate(names)}, str(tmp / "emb.safetensors"))
    enroll = rng.integers(0, n_files, n_trials)
    test = rng.integers(0, n_files, n_trials)
    labels = rng.integers(0, 2, n_trials)
    rows = zip(labels, enroll, test, strict=True)
    lines = [f"{label} {names[e]} {names[t]}\n" for label, e, t in rows]
    (tmp / "trials.txt").write_text("".join(lines))
    del lines
    score = [sys.executable, "-m", "xvec", "score", "--embeddings", str(tmp / "emb.safetensors")]
    score += ["--trials", str(tmp / "trials.txt"), "-o", str(tmp / "scores.txt")]
    measured = run_measured(score)
    print(
        f"xvec score: {n_trials:,} trials over {n_files:,} files: {measured['seconds']:.1f} s, "
        f"peak {measured['main_mib']:.0f} MiB"
    )
    metrics = [sys.executable, "-m", "xvec", "eval", "--scores", str(tmp / "scores.txt")]
    metrics += ["--trials", str(tmp / "trials.txt")]
    measured = run_measured(metrics, stdout=subprocess.DEVNULL)
    print(
        f"xvec eval --scores (EER, minDCF): {measured['seconds']:.1f} s, "
        f"peak {measured['main_mib']:.0f} MiB"
    )


def _embed_memory(tmp: Path, n_files: int) -> None:
    import soundfile

    from xvec import registry
    from xvec.checkpoint import save_checkpoint

    rng = np.random.default_rng(1)
    audio = tmp / "audio"
    audio.mkdir()
    names = []
    for i in range(n_files):
        name = f"f{i:05d}.wav"
        length = int(rng.integers(8000, 32000))
        soundfile.write(str(audio / name), 0.1 * rng.standard_normal(length), 16000)
        names.append(name)
    (tmp / "files.txt").write_text("\n".join(names) + "\n")
    model = save_checkpoint(
        tmp / "tdnn.safetensors",
        registry.build("model", "TDNN", {"hidden": 128, "stats_dim": 256, "embedding_size": 64}),
        "TDNN",
    )
    command = [sys.executable, "-m", "xvec", "embed", "--model", str(model), "--list"]
    command += [str(tmp / "files.txt"), "--audio-root", str(audio), "-o", str(tmp / "e.st")]
    start = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    samples: list[tuple[float, float]] = []

    def sample() -> None:
        while process.poll() is None:
            samples.append((time.perf_counter() - start, tree_rss_mib(process.pid)[0]))
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    process.wait()
    thread.join()
    seconds = time.perf_counter() - start
    rss = np.array([s[1] for s in samples if s[1] > 0])
    quarter = max(1, len(rss) // 4)
    print(
        f"xvec embed: {n_files:,} files in {seconds:.1f} s ({n_files / seconds:.0f} files/s); "
        f"RSS in the 2nd quarter of the run {rss[quarter : 2 * quarter].max():.0f} MiB, "
        f"in the last quarter {rss[-quarter:].max():.0f} MiB, peak {rss.max():.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=3_700_000)
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--embed-files", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        _score_at_scale(Path(tmp), args.trials, args.files)
    with tempfile.TemporaryDirectory() as tmp:
        _embed_memory(Path(tmp), args.embed_files)


if __name__ == "__main__":
    main()
