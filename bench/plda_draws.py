"""What fitting the PLDA back end on fewer files a speaker costs (``eval.plda_files_per_speaker``).

Embeds every dev-trial and training file once (whole, float32, as the final evaluation of
``xvec train`` does), then scores the trials with cosine and with a PLDA back end (LDA to
``--lda-dim``) fitted on every training file and on the fixed draws of at most N files a
speaker that ``plda_files_per_speaker = N`` takes. Prints one row per scoring.

    python bench/plda_draws.py runs/x/last.safetensors [--draws 16 10 4] [--lda-dim 124]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from xvec.checkpoint import load_model
from xvec.data import read_train_list, read_trials
from xvec.embed import embed_files
from xvec.evaluate import draw_per_speaker
from xvec.metrics import compute_metrics
from xvec.plda import fit_backend

SPEECHOCEAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "speechocean762"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--draws", type=int, nargs="*", default=[16, 10, 4])
    parser.add_argument("--lda-dim", type=int, default=124)
    parser.add_argument("--train-list", default=str(SPEECHOCEAN / "lists" / "train_list.txt"))
    parser.add_argument("--trials", default=str(SPEECHOCEAN / "lists" / "dev_trials.txt"))
    parser.add_argument("--audio", default=str(SPEECHOCEAN / "audio"))
    args = parser.parse_args()

    model = load_model(args.model)
    train_list, trials = read_train_list(args.train_list), read_trials(args.trials)
    start = time.perf_counter()
    vectors = embed_files(model, args.audio, [*trials.files, *train_list.files], device="cpu")
    count = len(set(trials.files) | set(train_list.files))
    print(f"embedded {count} files in {time.perf_counter() - start:.0f} s")
    dev = np.stack([vectors[f] for f in trials.files])
    unit = dev / np.linalg.norm(dev, axis=1, keepdims=True)
    rows = [("cosine", None, np.sum(unit[trials.enroll] * unit[trials.test], axis=1))]
    for draw in [None, *args.draws]:
        members = draw_per_speaker(train_list.labels, draw)
        fitted = np.stack([vectors[train_list.files[i]] for i in members])
        backend = fit_backend(fitted, train_list.labels[members], lda_dim=args.lda_dim)
        name = f"PLDA LDA {args.lda_dim}, {draw or 'every'} file{'s a speaker' if draw else ''}"
        rows.append((name, len(members), backend.score_trials(dev, trials.enroll, trials.test)))
    print("| scoring | files fitted | EER % | minDCF 0.05 / 0.01 |\n|---|---|---|---|")
    for name, fitted_files, scores in rows:
        m = compute_metrics(scores, trials.labels)
        print(
            f"| {name} | {fitted_files or ''} | {m.eer:.2f} | "
            f"{m.min_dcf[0.05]:.3f} / {m.min_dcf[0.01]:.3f} |"
        )


if __name__ == "__main__":
    main()
