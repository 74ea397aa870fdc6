"""What the CLI prints: results tables that keep every number whole at any terminal width."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from rich.console import Console

from xvec.metrics import compute_metrics
from xvec.report import metrics_table, shorten_left

from conftest import ROOT

TRIALS = ROOT / "lists" / "demo_trials.txt"


def summary(name: str, seed: int) -> dict:
    """A results row as evaluate writes it, from real metrics of random scores."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(labels * 1.3, 1.0)
    metrics = compute_metrics(scores, labels, p_targets=(0.05, 0.01))
    return {
        "name": name,
        "n_trials": 500,
        "n_target": int(labels.sum()),
        "n_nontarget": int(500 - labels.sum()),
        "eer": metrics.eer,
        "min_dcf": {str(p): value for p, value in metrics.min_dcf.items()},
        "eer_threshold": metrics.eer_threshold,
        "seconds": 12.5,
        "files_per_second": 41.0,
    }


def render(renderable, width: int) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None).print(renderable)
    return buffer.getvalue()


@pytest.mark.parametrize("width", [160, 80, 60, 40])
def test_numbers_are_whole_at_every_width(width: int) -> None:
    results = [
        summary("runs/experiments/resnet34l_amsoftmax_long_name/best.safetensors", 1),
        summary("runs/exp2/best.safetensors", 2),
    ]
    text = render(metrics_table(results, "lists/demo_trials.txt (500 trials)", width), width)
    assert max(len(line) for line in text.splitlines()) <= width
    for r in results:
        assert f"{r['eer']:.4f}" in text
        for value in r["min_dcf"].values():
            assert f"{value:.4f}" in text
        assert "best.safetensors" in text  # the informative end of the name is kept


def test_the_wide_table_is_kept_when_it_fits() -> None:
    results = [summary("a.safetensors", 1)]
    wide = render(metrics_table(results, "t"), 200)
    assert "non-targets" in wide and "files/s" in wide
    assert render(metrics_table(results, "t", width=200), 200) == wide


def test_shorten_left_keeps_the_end() -> None:
    assert shorten_left("runs/demo/best.safetensors", 14) == "…t.safetensors"
    assert len(shorten_left("x" * 50, 10)) == 10
    assert shorten_left("short", 10) == "short"


@pytest.mark.slow
def test_eval_at_80_columns_shows_eer_and_min_dcf_whole(tmp_path) -> None:
    """The real command in an 80-column terminal (COLUMNS) prints the EER and minDCF whole."""
    rng = np.random.default_rng(0)
    lines = [line.split() for line in TRIALS.read_text().splitlines() if line.strip()]
    scores = tmp_path / "scores.txt"
    scores.write_text(
        "".join(f"{rng.normal(float(lab) * 0.4, 0.2):.5f} {a} {b}\n" for lab, a, b in lines)
    )
    out = tmp_path / "a_long_output_folder_name_for_the_results"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "xvec",
            "eval",
            "--scores",
            str(scores),
            "--trials",
            str(TRIALS),
            "--out-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        check=True,
    )
    result = json.loads(next(out.rglob("result.json")).read_text())
    assert f"{result['eer']:.4f}" in done.stdout
    for value in result["min_dcf"].values():
        assert f"{value:.4f}" in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    assert str(out) in done.stderr.replace("\n", "")  # paths printed whole, not folded
