"""What one loader worker delivers: training utterances/s of xvec's data pipeline alone.

Runs the training loader's work (read a random crop, augment, batch) in this process, the
way one DataLoader worker does, on speechocean762's training list, with no model. A GPU that
trains at R utt/s needs about R / (this rate) workers (``train.num_workers``).

    python bench/loader_speed.py [--batches 20] [--batch-size 100] [--max-frames 200]

Rows: Opus files as they are; the decode cache (``data.decode_cache``) while the pass fills it
and once filled; the Opus files with noise + reverberation + speed perturbation on 60 % of
the crops (``../shared/data``'s noise and RIR folders standing in for MUSAN and RIRS_NOISES).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch

from xvec.augment import Augmenter
from xvec.data import EpochBatches, TrainDataset, read_train_list

from _proctree import cpu_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPUS = DATA / "speechocean762"


def utterances_per_second(dataset: TrainDataset, keys: list, warm: bool = True) -> float:
    """Crops/s over the batch ``keys``, after one untimed batch (file handles) if ``warm``."""
    if warm:
        dataset[keys[0]]
    start = time.perf_counter()
    done = sum(dataset[key][0].shape[:2].numel() for key in keys)  # rows x per speaker
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--max-frames", type=int, default=200, help="crop, 10 ms frames")
    parser.add_argument("--cache", type=Path, help="decode cache folder (default: a temp one)")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        raise SystemExit(f"needs {CORPUS}")
    torch.set_num_threads(1)  # a loader worker computes on one thread
    train_list = read_train_list(CORPUS / "lists" / "train_list.txt")
    batches = EpochBatches(train_list.labels, args.batch_size, 1, 500, True, seed=0)
    audio = CORPUS / "audio"
    print(f"CPU: {cpu_model()}; one process, 1 thread, batch {args.batch_size}, "
          f"{args.max_frames * 10} ms crops, {args.batches} timed batches")  # fmt: skip
    keys = list(itertools.islice(iter(batches), args.batches))
    plain = TrainDataset(audio, train_list, args.max_frames, 0)
    print(f"Opus, no augmentation: {utterances_per_second(plain, keys):.0f} utt/s")
    with tempfile.TemporaryDirectory() as temp:
        cache = args.cache or Path(temp) / "cache"
        cached = TrainDataset(audio, train_list, args.max_frames, 0, decode_cache=cache)
        filling = utterances_per_second(cached, keys, warm=False)
        rate = utterances_per_second(cached, keys)
        print(f"decode cache: {filling:.0f} utt/s while it fills, {rate:.0f} utt/s filled")
    augmenter = Augmenter(
        musan_path=DATA / "noise", rir_path=DATA / "rir" / "simulated", speed_perturb=True,
        probability=0.6,
    )  # fmt: skip
    augmented = TrainDataset(audio, train_list, args.max_frames, 0, augmenter)
    rate = utterances_per_second(augmented, keys)
    print(f"Opus, noise + RIR + speed on 60 %: {rate:.0f} utt/s")


if __name__ == "__main__":
    main()
