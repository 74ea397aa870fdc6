"""The quickstart in a reduced form: synth -> recipes/demo.toml -> evaluation, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_demo_recipe_runs_end_to_end_on_a_small_synthetic_corpus(tmp_path):
    corpus = tmp_path / "demo"
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "xvec",
            "synth",
            str(corpus),
            "--speakers",
            "8",
            "--utterances",
            "4",
        ],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    run = tmp_path / "run"
    overrides = {
        "data.train_list": corpus / "train_list.txt",
        "data.test_list": corpus / "trials.txt",
        "data.train_path": corpus / "audio",
        "data.test_path": corpus / "audio",
        "train.max_epoch": 2,
        "train.test_interval": 1,
        "train.output_dir": run,
    }
    command = [sys.executable, "-m", "xvec", "train", str(ROOT / "recipes" / "demo.toml")]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    trained = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert trained.returncode == 0, trained.stderr
    for name in ("last.safetensors", "best.safetensors", "scores.txt", "hist.png", "curves.png"):
        assert (run / name).is_file(), name
    result = json.loads((run / "result.json").read_text())
    assert 0 <= result["eer"] <= 100 and result["n_trials"] > 0
    output = trained.stdout + trained.stderr
    assert "EER" in output and str(run / "hist.png") in output
