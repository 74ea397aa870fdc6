"""What the CLI prints: results tables that keep every number whole at any terminal width."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from rich.console import Console

from xvec import report
from xvec.metrics import compute_metrics
from xvec.report import FileProgress, metrics_table, shorten_left
from xvec.report_training import (
    ConsoleTrainingObserver,
    EpochProgress,
    training_outcome_text,
    training_start_text,
)
from xvec.training.events import EpochStats, TrainingOutcome, TrainingStart

from conftest import ROOT, run_cli

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


def test_epoch_progress_shows_no_numbers_before_the_first_step_and_an_eta_after_two() -> None:
    stats = EpochStats(1, 3, 10, 0)
    progress = EpochProgress(Console(file=io.StringIO()), stats)
    assert progress.text() == "" and stats.seconds_left() is None
    stats.add(2.5, 0.0, 64)
    assert progress.text().startswith("loss 2.5000 acc 0.00%") and "left" not in progress.text()
    time.sleep(0.02)
    stats.add(2.3, 10.0, 64)
    left = stats.seconds_left()
    assert left is not None and 0.1 < left < 1.0  # 8 steps of ~20 ms to go
    assert "0:00:00 left" in progress.text() and "acc 5.00%" in progress.text()
    progress.close()


def test_epoch_progress_in_a_log_prints_plain_lines(monkeypatch) -> None:
    monkeypatch.setattr(report, "LOG_PROGRESS_SECONDS", 0.0)
    buffer = io.StringIO()
    observer = ConsoleTrainingObserver(Console(file=buffer, width=200))  # a file: no terminal
    stats = EpochStats(2, 5, 3, 0)
    observer.epoch_started(stats)
    assert buffer.getvalue() == ""
    for step in range(3):
        stats.add(1.0 - step / 10, 50.0, 32)
        observer.step_done(stats)
    observer.epoch_ended(stats)
    lines = buffer.getvalue().splitlines()
    assert lines[0].startswith("epoch 2/5 step 1/3 loss 1.0000 acc 50.00%")
    assert lines[-1].startswith("epoch 2/5 step 3/3 loss 0.9000")
    assert len(lines) == 4  # one per step, then the end of the epoch


def training_start(tmp_path, **changes) -> TrainingStart:
    fields = dict(
        model="ResNetSE34L",
        parameters=1_437_080,
        loss="amsoftmax",
        classes=45,
        utterances=900,
        trials=2588,
        device="cpu",
        threads=2,
        threads_follow_free_cores=True,
        loader_workers=1,
        run_dir=tmp_path,
        resumed=False,
    )
    return TrainingStart(**{**fields, **changes})


def test_training_start_text_names_model_data_device_and_folder(tmp_path) -> None:
    lines = training_start_text(training_start(tmp_path)).splitlines()
    assert lines == [
        "training ResNetSE34L (1.44 M parameters) with amsoftmax",
        "  data: 45 speakers, 900 utterances; 2588 test trials",
        "  compute: cpu, 1-2 threads following the free cores, 1 loader worker",
        f"  run folder: {tmp_path}",
    ]


def test_training_start_text_for_fixed_threads_a_gpu_and_a_resumed_run(tmp_path) -> None:
    fixed = training_start_text(
        training_start(tmp_path, threads=4, threads_follow_free_cores=False, trials=None)
    )
    assert "  compute: cpu, 4 threads, 1 loader worker" in fixed.splitlines()
    assert "  data: 45 speakers, 900 utterances; no trial list" in fixed.splitlines()
    gpu = training_start_text(
        training_start(tmp_path, device="cuda:0", threads=None, loader_workers=4, resumed=True)
    )
    assert gpu.startswith("resuming ResNetSE34L")
    assert "  compute: cuda:0, 4 loader workers" in gpu.splitlines()
    in_process = training_start_text(training_start(tmp_path, threads=1, loader_workers=0))
    assert "  compute: cpu, 1 thread, no loader workers" in in_process.splitlines()
    layout = training_start_text(training_start(tmp_path, channels_last=True)).splitlines()
    assert (
        "  compute: cpu, 1-2 threads following the free cores, 1 loader worker, "
        "channels-last convolutions"
    ) in layout
    small = training_start_text(training_start(tmp_path, parameters=190_456))
    assert small.startswith("training ResNetSE34L (190,456 parameters)")


def test_training_outcome_names_only_the_models_the_run_wrote(tmp_path) -> None:
    (tmp_path / "last.safetensors").touch()
    plain = training_outcome_text(TrainingOutcome(tmp_path, evaluated=False)).splitlines()
    assert plain == [f"run folder: {tmp_path}", f"model: {tmp_path / 'last.safetensors'}"]
    (tmp_path / "best.safetensors").touch()
    (tmp_path / "avg.safetensors").touch()
    scored = training_outcome_text(TrainingOutcome(tmp_path, evaluated=True)).splitlines()
    assert scored[1:4] == [
        f"model: {tmp_path / 'last.safetensors'} (best: {tmp_path / 'best.safetensors'})",
        f"averaged model: {tmp_path / 'avg.safetensors'} (scored)",
        f"scores: {tmp_path / 'scores.txt'}",
    ]


def test_file_progress_rate_counts_from_the_start_and_logs_plain_lines(monkeypatch) -> None:
    monkeypatch.setattr(report, "LOG_PROGRESS_SECONDS", 0.0)
    buffer = io.StringIO()
    with FileProgress("  evaluating", Console(file=buffer, width=200)) as progress:
        time.sleep(0.05)
        progress(10, 30)  # the first batch: its time counts (no absurd rate)
        progress(10, 30)
        progress(10, 30)  # the end: no line, the caller reports the result
    lines = buffer.getvalue().splitlines()
    assert [line.split(" files,")[0] for line in lines] == [
        "  evaluating 10/30",
        "  evaluating 20/30",
    ]
    first_rate = float(lines[0].split(", ")[1].split()[0])
    assert 0 < first_rate < 10 / 0.05 * 1.01


def test_training_prints_a_summary_first_and_whole_numbers_at_80_columns(
    tmp_path, tone_corpus, tiny_model_dist
) -> None:
    """The trainer's output in an 80-column log: summary, progress lines, the final table."""
    from test_train import recipe_file

    from xvec.config import load_recipe
    from xvec.training import train

    buffer = io.StringIO()
    console = Console(file=buffer, width=80, color_system=None)
    recipe = load_recipe(recipe_file(tmp_path, tone_corpus), ["train.max_epoch=1"])
    train(recipe, observer=ConsoleTrainingObserver(console))
    lines = buffer.getvalue().splitlines()
    run = tmp_path / "run"
    assert lines[0].startswith("training TinyModel (") and lines[0].endswith("with softmax")
    assert lines[1].startswith("  data: ") and lines[1].endswith(" test trials")
    assert lines[2].startswith("  compute: cpu, ")
    assert lines[3] == f"  run folder: {run}"  # whole, however long
    progress = [line for line in lines if line.startswith("epoch 1/1 step")]
    assert progress and all(" utt/s" in line for line in progress)
    assert not any("loss 0.0000" in line for line in lines)
    result = json.loads((run / "result.json").read_text())
    text = buffer.getvalue()
    assert f"{result['eer']:.4f}" in text
    for value in result["min_dcf"].values():
        assert f"{value:.4f}" in text
    table = [line for line in lines if line[:1] in "┏┃┡│└"]
    assert table and max(len(line) for line in table) <= 80


@pytest.mark.parametrize("width", [80, 60])
def test_eval_in_process_keeps_numbers_and_paths_whole(tmp_path, monkeypatch, width) -> None:
    """``xvec eval --scores`` at 80 and 60 columns: EER and minDCF whole, paths unfolded."""
    from xvec import cli

    monkeypatch.setattr(cli, "out", Console(width=width, color_system=None))
    monkeypatch.setattr(cli, "err", Console(width=width, color_system=None, stderr=True))
    rng = np.random.default_rng(0)
    lines = [line.split() for line in TRIALS.read_text().splitlines() if line.strip()]
    folder = tmp_path / "a_folder_with_a_long_name_so_that_paths_pass_the_width"
    folder.mkdir()
    scores = folder / "scores.txt"
    scores.write_text(
        "".join(f"{rng.normal(float(lab) * 0.4, 0.2):.5f} {a} {b}\n" for lab, a, b in lines)
    )
    out_dir = folder / "results"
    done = run_cli("eval", "--scores", scores, "--trials", TRIALS, "--out-dir", out_dir)
    assert done.returncode == 0, done.stderr
    result = json.loads(next(out_dir.rglob("result.json")).read_text())
    assert f"{result['eer']:.4f}" in done.stdout
    for value in result["min_dcf"].values():
        assert f"{value:.4f}" in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= width
    written = next(out_dir.rglob("result.json"))
    assert any(str(written) in line for line in done.stderr.splitlines())  # on one line


def test_file_progress_writes_nothing_into_a_log():
    """Redirected output (a log, CI) gets no progress bar and no blank line in its place."""
    log = io.StringIO()
    with FileProgress("embedding", Console(file=log)) as bar:
        bar(2, 4)
        bar(2, 4)
    assert log.getvalue() == ""
