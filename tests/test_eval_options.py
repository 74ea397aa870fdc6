"""xvec eval's quick-check subset and minDCF options, and the metrics table's caption."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from xvec.cli import app
from xvec.data import read_trials
from xvec.evaluate import subsample_trials
from xvec.metrics import compute_metrics
from xvec.scoring import write_scores

runner = CliRunner()


@pytest.fixture
def scored(tmp_path):
    """1000 trials, 20 % targets, over 200 files, with scores that separate them imperfectly."""
    rng = np.random.default_rng(5)
    labels = (rng.random(1000) < 0.2).astype(int)
    files = [f"spk{i // 10}/u{i % 10}.wav" for i in range(200)]
    pairs = np.array([(a, b) for a in range(200) for b in range(a + 1, 200)])
    enroll, test = pairs[rng.choice(len(pairs), 1000, replace=False)].T  # distinct pairs
    trials = tmp_path / "trials.txt"
    trials.write_text(
        "".join(
            f"{lab} {files[a]} {files[b]}\n" for lab, a, b in zip(labels, enroll, test, strict=True)
        )
    )
    scores = rng.normal(size=1000) + labels * 1.5
    score_file = tmp_path / "scores.txt"
    write_scores(score_file, scores, [files[a] for a in enroll], [files[b] for b in test])
    return trials, score_file, scores, labels


def test_subset_is_stratified_seeded_and_lists_only_its_files(scored) -> None:
    trials_path, _, _, labels = scored
    trials = read_trials(trials_path)
    subset, keep = subsample_trials(trials, 100)
    assert len(subset) == 100 and int(subset.labels.sum()) == round(100 * labels.mean())
    assert np.array_equal(subset.labels, trials.labels[keep]) and (np.diff(keep) > 0).all()
    assert subset.enroll_names() == [trials.files[i] for i in trials.enroll[keep]]
    assert subset.test_names() == [trials.files[i] for i in trials.test[keep]]
    assert set(subset.files) == set(subset.enroll_names()) | set(subset.test_names())
    assert np.array_equal(subsample_trials(trials, 100)[1], keep)  # fixed seed
    assert not np.array_equal(subsample_trials(trials, 100, seed=1)[1], keep)
    whole, every = subsample_trials(trials, 5000)
    assert whole is trials and len(every) == 1000


def test_eval_max_trials_scores_the_subset(scored, tmp_path) -> None:
    trials_path, score_file, scores, labels = scored
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["eval", "-t", str(trials_path), "--scores", str(score_file), "--max-trials", "200",
         "-o", str(out)],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "200 of 1000 trials, stratified" in result.output
    written = json.loads((out / "result.json").read_text())
    _, keep = subsample_trials(read_trials(trials_path), 200)
    assert written["n_trials"] == 200
    assert written["subset"] == {"trials": 200, "of": 1000, "seed": 0}
    assert written["eer"] == compute_metrics(scores[keep], labels[keep]).eer
    assert written["eer"] != compute_metrics(scores, labels).eer
    bad = runner.invoke(app, ["eval", "-t", str(trials_path), "--scores", str(score_file),
                              "--max-trials", "1"])  # fmt: skip
    assert bad.exit_code == 1 and "--max-trials must be at least 2" in bad.output


def test_eval_p_target_and_costs_reach_the_metrics_and_result(scored, tmp_path) -> None:
    trials_path, score_file, scores, labels = scored
    out = tmp_path / "out"
    args = ["eval", "-t", str(trials_path), "--scores", str(score_file), "-o", str(out)]
    result = runner.invoke(
        app, [*args, "--p-target", "0.1", "--p-target", "0.001", "--c-miss", "10", "--c-fa", "2"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = json.loads((out / "result.json").read_text())
    expected = compute_metrics(scores, labels, p_targets=(0.1, 0.001), c_miss=10, c_fa=2)
    assert written["min_dcf"] == {"0.1": expected.min_dcf[0.1], "0.001": expected.min_dcf[0.001]}
    assert written["c_miss"] == 10 and written["c_fa"] == 2
    text = " ".join(result.output.split())
    assert "minDCF 0.1" in text and "minDCF 0.001" in text and "minDCF 0.05" not in text
    assert "p_target = 0.1, 0.001; C_miss = 10, C_fa = 2" in text

    default = runner.invoke(app, args, terminal_width=200)
    text = " ".join(default.output.split())
    assert "minDCF 0.05" in text and "minDCF 0.01" in text
    assert "p_target = 0.05, 0.01; C_miss = C_fa = 1" in text
    for bad, message in (
        (["--p-target", "1.5"], "--p-target must lie strictly between 0 and 1"),
        (["--c-fa", "0"], "--c-fa must be positive"),
    ):
        refused = runner.invoke(app, [*args, *bad])
        assert refused.exit_code == 1 and message in refused.output


def test_a_constant_score_system_reports_eer_100() -> None:
    labels = np.r_[np.ones(50), np.zeros(150)]
    metrics = compute_metrics(np.full(200, 0.3), labels)
    assert metrics.eer == 100.0
    assert metrics.min_dcf == {0.05: 1.0, 0.01: 1.0}  # no better than the trivial system
