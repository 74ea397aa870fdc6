"""Figures: files of the right format and size, the requested content, no pyplot state."""

from __future__ import annotations

import os
import statistics
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from xvec.errors import XvecError
from xvec.plots import plot_det, plot_histogram, plot_training, probit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def read_pixels(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    return imread(path)


@pytest.fixture(scope="module")
def trial_scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    labels = rng.random(3000) < 0.3
    return rng.normal(size=3000) * 0.15 + np.where(labels, 0.6, 0.2), labels


def assert_no_pyplot_figures() -> None:
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


def test_histogram_png_and_threshold_line(tmp_path, trial_scores) -> None:
    scores, labels = trial_scores
    plain, marked = tmp_path / "plain.png", tmp_path / "sub" / "marked.png"
    plot_histogram(scores, labels, plain, title="demo")
    plot_histogram(scores, labels, marked, threshold=0.4, title="demo")
    assert png_size(plain) == png_size(marked) == (1050, 675)  # 7 x 4.5 in at 150 dpi
    assert plain.stat().st_size > 10_000
    without, with_line = read_pixels(plain), read_pixels(marked)
    changed = np.abs(without - with_line).sum(axis=2) > 0.1
    assert changed.any()
    # the dashed line is vertical: the pixels it changes crowd into a few columns
    columns = np.flatnonzero(changed.sum(axis=0) > 50)
    assert columns.size and columns.max() - columns.min() < 12
    assert sorted(os.listdir(tmp_path)) == ["plain.png", "sub"]  # no temporary files left
    assert_no_pyplot_figures()


@pytest.mark.parametrize(("suffix", "magic"), [(".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_format_follows_the_extension(tmp_path, trial_scores, suffix: str, magic: bytes) -> None:
    path = tmp_path / f"hist{suffix}"
    plot_histogram(*trial_scores, path, threshold=0.4)
    assert path.read_bytes().startswith(magic)


def test_unknown_extension_is_an_error(tmp_path, trial_scores) -> None:
    with pytest.raises(XvecError, match=r"\.bmpx"):
        plot_histogram(*trial_scores, tmp_path / "hist.bmpx")
    assert list(tmp_path.iterdir()) == []


def test_histogram_rejects_mismatched_labels(tmp_path) -> None:
    with pytest.raises(XvecError, match="pair up"):
        plot_histogram([0.1, 0.2, 0.3], [0, 1], tmp_path / "h.png")


def test_det_plot(tmp_path, trial_scores) -> None:
    scores, labels = trial_scores
    path = tmp_path / "det.png"
    rounded = np.round(scores, 1)  # ties
    plot_det({"system A": (scores, labels), "rounded": (rounded, labels)}, path)
    assert png_size(path) == (900, 990)
    pixels = read_pixels(path)
    assert (pixels[..., :3].std(axis=2) > 0.2).sum() > 500  # coloured curves were drawn
    assert_no_pyplot_figures()
    with pytest.raises(XvecError, match="no score sets"):
        plot_det({}, tmp_path / "empty.png")


def test_probit_matches_the_normal_quantile() -> None:
    p = np.r_[1e-9, 1e-4, 0.02425, np.linspace(0.01, 0.99, 99), 0.999]
    expected = [statistics.NormalDist().inv_cdf(x) for x in p]
    np.testing.assert_allclose(probit(p), expected, rtol=2e-9, atol=1e-12)
    assert probit([0.0, 1.0]).tolist() == [-np.inf, np.inf]


def training_records(with_eval: bool) -> list[dict]:
    records = [
        {"kind": "train", "epoch": 1 + step // 50, "step": step, "loss": 5.0 / step,
         "acc": 100 - 100 / step, "lr": 0.001 * 0.97 ** (step // 10)}
        for step in range(1, 101)
    ]  # fmt: skip
    records.insert(0, {"kind": "start", "time": 0.0})
    if with_eval:
        records += [
            {"kind": "eval", "epoch": 1, "step": 50, "eer": 12.0, "min_dcf": 0.8},
            {"kind": "eval", "epoch": 2, "step": 100, "eer": 8.5, "min_dcf": 0.6},
        ]
    return records


def test_training_curves_have_a_panel_per_available_series(tmp_path) -> None:
    full, train_only = tmp_path / "full.png", tmp_path / "train.png"
    plot_training(training_records(with_eval=True), full)
    plot_training(training_records(with_eval=False), train_only)
    full_width, full_height = png_size(full)
    width, height = png_size(train_only)
    assert full_width == width == 1200
    assert full_height - height == round(2.6 * 150)  # the EER panel is left out without evals
    # the log writes "accuracy"; "acc" is accepted as well
    renamed = [
        {("accuracy" if key == "acc" else key): value for key, value in record.items()}
        for record in training_records(with_eval=False)
    ]
    plot_training(renamed, tmp_path / "renamed.png")
    assert png_size(tmp_path / "renamed.png") == (width, height)
    assert_no_pyplot_figures()


def test_training_curves_without_data_still_write_a_figure(tmp_path) -> None:
    path = tmp_path / "curves.png"
    plot_training([{"kind": "start"}], path)
    assert png_size(path)[0] > 0


def test_det_axes_cover_high_error_rates_and_the_legend_sits_below(tmp_path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(3000) < 0.5
    poor = rng.normal(size=3000) + labels * 0.3  # EER about 44 %
    good = rng.normal(size=3000) + labels * 3.0
    figure = plot_det({"poor": (poor, labels), "good": (good, labels)}, tmp_path / "det.png")
    (axes,) = figure.axes
    low, high = axes.get_xlim()
    assert high == pytest.approx(probit(0.995)) and axes.get_ylim()[1] == high
    assert low == pytest.approx(probit(0.0005))
    assert [t.get_text() for t in axes.get_xticklabels()][-3:] == ["90", "95", "99"]
    (legend,) = figure.legends
    assert [t.get_text()[:4] for t in legend.get_texts()] == ["poor", "good"]
    renderer = figure.canvas.get_renderer()
    assert legend.get_window_extent(renderer).y1 < axes.get_window_extent(renderer).y0
    assert axes.title.get_window_extent(renderer).y1 <= figure.bbox.y1  # the title is not cut
    figure = plot_det({"good": (good, labels)}, tmp_path / "det_good.png")
    assert figure.axes[0].get_xlim()[1] == pytest.approx(probit(0.6))  # a good system: 60 %


def test_training_curves_are_in_epochs_with_both_eval_metrics_visible(tmp_path) -> None:
    records = training_records(with_eval=True)[:-1]  # a single evaluation, after epoch 1
    figure = plot_training(records, tmp_path / "curves.png")
    loss_axes, accuracy_axes, eer_axes = figure.axes[:3]
    assert eer_axes.get_xlabel() == "epoch"
    assert loss_axes.get_xlim()[1] == pytest.approx(2.1, abs=0.1)  # 2 epochs, not 100 steps
    assert [t.get_text() for t in eer_axes.get_legend().get_texts()] == ["EER", "minDCF"]
    (eer_line,) = eer_axes.get_lines()
    (dcf_axes,) = [a for a in figure.axes if a.get_ylabel() == "minDCF"]
    (dcf_line,) = dcf_axes.get_lines()
    assert dcf_line.get_xdata().tolist() == eer_line.get_xdata().tolist()
    (eer_x,) = eer_line.get_xdata()
    assert eer_x == pytest.approx(1.0)  # the evaluation at the end of epoch 1
    # same position, but a filled circle inside a larger hollow square: both show
    assert eer_line.get_marker() == "o" and dcf_line.get_marker() == "s"
    assert dcf_line.get_markersize() > eer_line.get_markersize()
    assert dcf_line.get_markerfacecolor() == "none"
    assert loss_axes.get_legend() is not None
    assert len(accuracy_axes.get_lines()) == 1 and not accuracy_axes.texts


def test_training_curves_say_na_for_a_loss_without_accuracy(tmp_path) -> None:
    records = [
        {**r, "acc": None} if r.get("kind") == "train" else r  # reports_accuracy = False
        for r in training_records(with_eval=True)
    ]
    figure = plot_training(records, tmp_path / "curves.png")
    accuracy_axes = figure.axes[1]
    assert accuracy_axes.get_ylabel() == "accuracy (%)"
    assert not accuracy_axes.get_lines()  # no flat line at 0
    assert [t.get_text() for t in accuracy_axes.texts] == ["n/a: this loss reports no accuracy"]
    no_accuracy = [{k: v for k, v in r.items() if k != "acc"} for r in records]
    figure = plot_training(no_accuracy, tmp_path / "absent.png")
    assert figure.axes[1].texts and not figure.axes[1].get_lines()


def test_training_curves_draw_an_accuracy_of_zero(tmp_path) -> None:
    """AM-softmax's accuracy is 0 for the first epochs: drawn, not called n/a."""
    records = [
        {**r, "acc": 0.0} if r.get("kind") == "train" else r
        for r in training_records(with_eval=True)
    ]
    accuracy_axes = plot_training(records, tmp_path / "curves.png").axes[1]
    assert not accuracy_axes.texts
    (line,) = accuracy_axes.get_lines()
    assert set(line.get_ydata()) == {0.0}
    steps_only = [{k: v for k, v in r.items() if k != "epoch"} for r in records]
    assert plot_training(steps_only, tmp_path / "steps.png").axes[2].get_xlabel() == "step"


def test_run_log_with_am_softmax_accuracy_of_zero_is_drawn_from_zero(tmp_path) -> None:
    """A log.jsonl as the trainer writes it: AM-softmax's accuracy is 0.0 in the first epochs,
    then rises; the panel draws it (no "n/a") on an axis that starts at 0."""
    import json

    from xvec.runlog import read_log
    from xvec.workflows.plot import plot_run

    records = [
        {"kind": "train", "epoch": epoch, "step": 10 * epoch, "loss": 10.0 - epoch,
         "accuracy": 0.0 if epoch < 3 else 2.5 * (epoch - 2), "lr": 0.002, "time": 4.0 * epoch}
        for epoch in range(1, 6)
    ]  # fmt: skip
    records += [
        {"kind": "epoch", "epoch": 1, "step": 15, "loss": 9.5, "accuracy": 0.0, "time": 5.8},
        {"kind": "eval", "epoch": 5, "step": 50, "eer": 40.0, "min_dcf": 0.99, "time": 21.0},
    ]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert png_size(plot_run(tmp_path)) == (1200, round((1.0 + 2.6 * 3) * 150))
    accuracy_axes = plot_training(read_log(tmp_path), tmp_path / "again.png").axes[1]
    assert accuracy_axes.get_ylabel() == "accuracy (%)" and not accuracy_axes.texts
    (line,) = accuracy_axes.get_lines()
    assert list(line.get_ydata()) == [0.0, 0.0, 2.5, 5.0, 7.5]
    bottom, top = accuracy_axes.get_ylim()
    assert bottom == 0.0 and top > 7.5
    assert_no_pyplot_figures()


# ---------------------------------------------------------------- calibration plots


def calibrated_trials(n: int = 4000, seed: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian LLRs that are calibrated by construction: N(+-d^2/2, d^2) with d = 2."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    llrs = 2.0 * rng.normal(size=n) + np.where(labels, 2.0, -2.0)
    return llrs, labels


def test_bayes_error_curves_bound_and_meet() -> None:
    from xvec.calibration import act_dcf
    from xvec.plots import bayes_error_curves

    llrs, labels = calibrated_trials()
    log_odds = np.linspace(-6, 6, 25)
    actual, minimum = bayes_error_curves(llrs, llrs, labels, log_odds)
    assert (minimum <= actual + 1e-12).all() and (minimum <= 1 + 1e-12).all()
    priors = 1 / (1 + np.exp(-log_odds))
    assert actual[12] == pytest.approx(act_dcf(llrs[labels], llrs[~labels], float(priors[12])))
    assert np.abs(actual - minimum)[6:19].max() < 0.1  # calibrated: close to the minimum
    shifted, _ = bayes_error_curves(llrs + 3.0, llrs, labels, log_odds)
    assert (shifted[6:19] > actual[6:19]).any() and shifted.max() > 1.2  # worse than default


def test_reliability_points_follow_the_diagonal_when_calibrated() -> None:
    from xvec.plots import reliability_points

    llrs, labels = calibrated_trials(20000)
    predicted, observed, counts = reliability_points(llrs, labels)
    assert counts.sum() == 20000 and (np.diff(predicted) > 0).all()
    assert np.abs(predicted - observed).max() < 0.05
    over, observed_over, _ = reliability_points(3 * llrs, labels)  # over-confident
    assert observed_over[0] > over[0] and observed_over[-1] < over[-1]


def test_calibration_plot_png_and_cli(tmp_path) -> None:
    from xvec.calibration import fit_calibration
    from xvec.plots import plot_calibration
    from xvec.scoring import write_scores

    from conftest import run_cli

    llrs, labels = calibrated_trials()
    scores = 0.1 * llrs + 0.5  # cosine-like: the same order, not LLRs
    figure = plot_calibration(scores, labels, tmp_path / "raw.png")
    assert png_size(tmp_path / "raw.png") == (1650, 690)  # 11 x 4.6 in at 150 dpi
    bayes, reliability = figure.axes
    assert bayes.get_xlim() == (-6.0, 6.0) and len(bayes.get_lines()) == 3
    assert reliability.get_title() == "reliability"
    assert_no_pyplot_figures()

    names = [f"f{i}.wav" for i in range(len(labels) + 1)]
    trials = tmp_path / "trials.txt"
    trials.write_text(
        "".join(f"{int(y)} {names[i]} {names[i + 1]}\n" for i, y in enumerate(labels))
    )
    write_scores(tmp_path / "s.txt", scores, names[:-1], names[1:])
    calibration = fit_calibration(scores, labels)
    (tmp_path / "c.json").write_text(calibration.to_json())
    output = tmp_path / "calibration.png"
    done = run_cli(
        "plot", "calibration", "--scores", tmp_path / "s.txt", "-t", trials,
        "--calibration", tmp_path / "c.json", "-o", output,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"calibration plot -> {output} (calibrated LLRs: Cllr 0.")
    assert png_size(output) == (1650, 690)
    raw = run_cli("plot", "calibration", "--scores", tmp_path / "s.txt", "-t", trials, "-o", output)
    assert raw.returncode == 0 and "scores as LLRs" in raw.stdout
