"""Figures: score histograms, DET curves, calibration plots and training curves (PNG, PDF or SVG
by extension).

Figures are built on matplotlib's object API with the Agg canvas, never through pyplot, so no
global figure state is created or left open, and no display is needed. Files are written
atomically (temporary file, then rename) and parent folders are created.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from xvec.calibration import act_dcf
from xvec.errors import XvecError
from xvec.files import atomic_write
from xvec.metrics import compute_metrics, det_curve

__all__ = [
    "bayes_error_curves",
    "plot_calibration",
    "plot_det",
    "plot_histogram",
    "plot_training",
    "probit",
    "reliability_points",
]

TARGET_COLOR = "tab:blue"
NONTARGET_COLOR = "tab:red"
DET_TICKS_PERCENT = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40, 60, 80, 90, 95, 99)
DET_LIMITS_PERCENT = (0.05, 60.0)
DET_WIDE_LIMIT_PERCENT = 99.5  # the upper limit once an EER passes DET_WIDE_ABOVE_EER
DET_WIDE_ABOVE_EER = 20.0
_DET_GRID = 2000  # curve points kept per axis length (about a pixel at 300 dpi)

# Acklam's rational approximation of the inverse normal CDF (relative error < 1.2e-9).
_A = (-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269,
      -30.66479806614716, 2.506628277459239)  # fmt: skip
_B = (-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972,
      -13.28068155288572, 1.0)  # fmt: skip
_C = (-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734,
      4.374664141464968, 2.938163982698783)  # fmt: skip
_D = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416, 1.0)
_P_LOW = 0.02425


def probit(probability: ArrayLike) -> np.ndarray:
    """Inverse of the standard normal CDF (normal deviate), vectorised; 0 -> -inf, 1 -> +inf."""
    p = np.asarray(probability, dtype=np.float64)
    result = np.full(p.shape, np.nan)
    central = (p >= _P_LOW) & (p <= 1 - _P_LOW)
    q = p[central] - 0.5
    r = q * q
    result[central] = q * np.polyval(_A, r) / np.polyval(_B, r)
    with np.errstate(divide="ignore"):
        low = (p > 0) & (p < _P_LOW)
        q = np.sqrt(-2 * np.log(p[low]))
        result[low] = np.polyval(_C, q) / np.polyval(_D, q)
        high = (p > 1 - _P_LOW) & (p < 1)
        q = np.sqrt(-2 * np.log1p(-p[high]))
        result[high] = -np.polyval(_C, q) / np.polyval(_D, q)
    result[p == 0] = -np.inf
    result[p == 1] = np.inf
    return result


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path) -> None:
    """Save by the file's extension (PNG when it has none), atomically."""

    path = Path(path)
    file_format = path.suffix.lstrip(".").lower() or "png"
    supported = figure.canvas.get_supported_filetypes()
    if file_format not in supported:
        raise XvecError(
            f"{path}: cannot write a '.{file_format}' figure; use one of "
            + ", ".join(f".{ext}" for ext in sorted(supported))
        )
    atomic_write(path, lambda handle: figure.savefig(handle, format=file_format, dpi=150))


def _scores_and_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    mask = np.asarray(labels).reshape(-1)
    if values.size != mask.size:
        raise XvecError(f"{values.size} scores but {mask.size} labels; they must pair up")
    if values.size == 0:
        raise XvecError("no scores to plot")
    if not np.isfinite(values).all():
        raise XvecError("scores contain NaN or infinite values; cannot plot them")
    return values, mask.astype(bool)


def plot_histogram(
    scores: ArrayLike,
    labels: ArrayLike,
    path: str | Path,
    threshold: float | None = None,
    title: str | None = None,
) -> None:
    """Overlaid target / non-target score densities on shared bins, with the EER threshold."""
    values, is_target = _scores_and_labels(scores, labels)
    n_bins = int(np.clip(np.sqrt(values.size), 20, 100))
    low, high = float(values.min()), float(values.max())
    edges = np.linspace(low, high, n_bins + 1) if high > low else np.array([low - 0.5, low + 0.5])
    figure = _new_figure(7, 4.5)
    axes = figure.add_subplot()
    for name, selected, color in (
        ("non-target", values[~is_target], NONTARGET_COLOR),
        ("target", values[is_target], TARGET_COLOR),
    ):
        if selected.size:
            density, _ = np.histogram(selected, bins=edges, density=True)
            axes.stairs(
                density, edges, fill=True, alpha=0.45, color=color,
                label=f"{name} ({selected.size:,})",
            )  # fmt: skip
            axes.stairs(density, edges, color=color, linewidth=1.0)
    if threshold is not None and np.isfinite(threshold):
        axes.axvline(
            threshold, color="black", linestyle="--", linewidth=1.2,
            label=f"EER threshold {threshold:.4f}",
        )  # fmt: skip
    axes.set_xlabel("score")
    axes.set_ylabel("density")
    axes.set_ylim(bottom=0)
    axes.legend(loc="upper left", frameon=False)
    if title:
        axes.set_title(title)
    _save(figure, path)


def _thin_curve(x: np.ndarray, y: np.ndarray, span: float) -> tuple[np.ndarray, np.ndarray]:
    """Drop consecutive points that fall on the same cell of a fine grid (keeps the shape)."""
    cell_x = np.floor(x * _DET_GRID / span)
    cell_y = np.floor(y * _DET_GRID / span)
    keep = np.r_[True, (cell_x[1:] != cell_x[:-1]) | (cell_y[1:] != cell_y[:-1])]
    keep[-1] = True
    return x[keep], y[keep]


def plot_det(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], path: str | Path) -> Any:
    """DET curves on normal-deviate axes, one per system, with each EER point marked.

    ``curves`` maps a system name to its ``(scores, labels)``; the legend, below the axes so it
    never covers a curve, shows each EER. The axes reach 60 %, or 99.5 % once an EER passes 20 %.
    Returns the matplotlib figure.
    """

    if not curves:
        raise XvecError("no score sets given for the DET plot")
    systems = []
    for name, (scores, labels) in curves.items():
        values, is_target = _scores_and_labels(scores, labels)
        systems.append((name, det_curve(values, is_target), compute_metrics(values, is_target).eer))
    low, high = (p / 100 for p in DET_LIMITS_PERCENT)
    if max(eer for _, _, eer in systems) > DET_WIDE_ABOVE_EER:
        high = DET_WIDE_LIMIT_PERCENT / 100
    limits = probit([low, high])
    span = float(limits[1] - limits[0])
    figure = _new_figure(6, 6.6)
    axes = figure.add_subplot()
    axes.plot(limits, limits, color="0.6", linestyle=":", linewidth=1)
    for name, (fpr, fnr, _), eer in systems:
        # keep off-axis points just outside the frame, so lines leave it where they should
        x, y = probit(np.clip(np.c_[fpr, fnr], low / 4, 1 - (1 - high) / 4)).T
        x, y = _thin_curve(x, y, span)
        (line,) = axes.plot(x, y, linewidth=1.6, label=f"{name} (EER {eer:.2f} %)")
        eer_point = probit(eer / 100) if eer > 0 else -np.inf
        axes.plot(eer_point, eer_point, "o", color=line.get_color(), markersize=6)
    wide = high * 100 > DET_LIMITS_PERCENT[1]
    shown = [t for t in DET_TICKS_PERCENT if t <= high * 100 and not (wide and t in (0.2, 80))]
    ticks = probit(np.asarray(shown) / 100)
    labels_text = [f"{tick:g}" for tick in shown]
    axes.set_xticks(ticks, labels_text)
    axes.set_yticks(ticks, labels_text)
    axes.set_xlim(*limits)
    axes.set_ylim(*limits)
    axes.set_aspect("equal")
    axes.grid(True, color="0.85", linewidth=0.8)
    axes.set_xlabel("false acceptance rate (%)")
    axes.set_ylabel("false rejection rate (%)")
    axes.set_title("DET curve")
    figure.legend(loc="outside lower center", frameon=False)  # laid out: the title stays in
    _save(figure, path)
    return figure


def _series(records: Sequence[Mapping[str, Any]], kind: str, *keys: str) -> np.ndarray:
    """Rows ``[step, value]`` of the records of ``kind`` having the first present of ``keys``."""
    rows = []
    for record in records:
        if record.get("kind") != kind or record.get("step") is None:
            continue
        value = next((record[key] for key in keys if record.get(key) is not None), None)
        if value is not None:
            rows.append((float(record["step"]), float(value)))
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def _step_to_epoch(records: Sequence[Mapping[str, Any]]) -> Any:
    """A function mapping steps to fractional epochs (epoch ``e`` spans ``(e - 1, e]``), or None.

    Epoch ends are the last step logged in each epoch; the last, unfinished epoch is assumed as
    long as the one before it. None when the records carry no epoch numbers.
    """
    last_step: dict[int, float] = {}
    for record in records:
        if record.get("kind") in ("train", "eval") and record.get("step") is not None:
            if record.get("epoch") is None:
                return None
            epoch = int(record["epoch"])
            last_step[epoch] = max(last_step.get(epoch, 0.0), float(record["step"]))
    if not last_step:
        return None
    epochs = sorted(last_step)
    ends = np.array([last_step[e] for e in epochs])
    starts = np.r_[0.0, ends[:-1]]
    lengths = ends - starts
    if len(epochs) > 1 and not any(
        r.get("kind") == "eval" and r.get("epoch") == epochs[-1] for r in records
    ):
        lengths[-1] = max(lengths[-1], lengths[-2])  # the running epoch is not over yet
    first = np.array(epochs, dtype=np.float64) - 1

    def convert(steps: np.ndarray) -> np.ndarray:
        index = np.clip(np.searchsorted(ends, steps, side="left"), 0, len(epochs) - 1)
        return first[index] + (steps - starts[index]) / np.maximum(lengths[index], 1.0)

    return convert


def plot_training(records: Sequence[Mapping[str, Any]], path: str | Path) -> Any:
    """Loss, accuracy and EER versus epoch from a run's JSON-lines log records.

    ``records`` are ``{"kind": "train", "epoch", "step", "loss", "acc" (or "accuracy"), "lr"}``
    and ``{"kind": "eval", "epoch", "step", "eer", "min_dcf", ...}``; the x axis is in epochs
    (steps when the records have no epoch). The learning rate is drawn on the loss panel's right
    axis, minDCF on the EER panel's, each with a legend. Without evaluations the EER panel is
    left out; a loss that reports no accuracy (the key absent or null in every record) gets
    "n/a" in its accuracy panel; an accuracy of zero is drawn. Returns the matplotlib figure.
    """
    loss = _series(records, "train", "loss")
    accuracy = _series(records, "train", "acc", "accuracy")
    learning_rate = _series(records, "train", "lr")
    eer = _series(records, "eval", "eer")
    min_dcf = _series(records, "eval", "min_dcf")
    if len(loss) and not len(accuracy):  # no accuracy to show: the panel says n/a
        panels = [("loss", loss), ("accuracy (%)", accuracy)]
    else:
        panels = [(n, d) for n, d in (("loss", loss), ("accuracy (%)", accuracy)) if len(d)]
    if len(eer):
        panels.append(("EER (%)", eer))
    figure = _new_figure(8, 1.0 + 2.6 * max(len(panels), 1))
    if not panels:
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no training or evaluation records yet", ha="center", va="center")
        _save(figure, path)
        return figure
    to_epoch = _step_to_epoch(records)

    def x_of(data: np.ndarray) -> np.ndarray:
        return to_epoch(data[:, 0]) if to_epoch is not None else data[:, 0]

    all_axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    extra = {"loss": (learning_rate, "learning rate"), "EER (%)": (min_dcf, "minDCF")}
    for axes, (name, data) in zip(all_axes, panels, strict=True):
        axes.grid(True, color="0.9")
        axes.set_ylabel(name, color="tab:blue")
        if not len(data):
            axes.text(
                0.5, 0.5, "n/a: this loss reports no accuracy", transform=axes.transAxes,
                ha="center", va="center", color="0.4",
            )  # fmt: skip
            axes.set_yticks([])
            continue
        evaluation = name.startswith("EER")
        handles = axes.plot(
            x_of(data), data[:, 1], color="tab:blue", linewidth=1.2, label=name.split(" (")[0],
            marker="o" if evaluation else None, markersize=5,
        )  # fmt: skip
        second, second_name = extra.get(name, (np.empty((0, 2)), ""))
        if len(second):
            twin = axes.twinx()
            handles += twin.plot(
                x_of(second), second[:, 1], color="tab:orange", linestyle="--", linewidth=1.0,
                marker="s" if evaluation else None, markersize=10, markerfacecolor="none",
                markeredgewidth=1.5, label=second_name,
            )  # fmt: skip
            twin.set_ylabel(second_name, color="tab:orange")
            if second_name == "learning rate" and (second[:, 1] > 0).all():
                twin.set_yscale("log")
        if evaluation or len(second):
            axes.legend(handles=handles, loc="upper right", frameon=True)
        if name.startswith("accuracy"):  # from 0, so an accuracy of 0 sits on the axis
            axes.set_ylim(0.0, max(1.0, float(data[:, 1].max()) * 1.05))
    all_axes[-1].set_xlabel("epoch" if to_epoch is not None else "step")
    all_axes[0].set_title("training curves")
    _save(figure, path)
    return figure


PRIOR_LOG_ODDS_RANGE = (-6.0, 6.0)  # x axis of the normalised Bayes error-rate plot
_PRIOR_POINTS = 121  # 0.1 steps of prior log-odds
_RELIABILITY_BINS = 10
BAYES_PLOT_TOP = 1.5  # normalised DCF shown; the default system costs 1


def bayes_error_curves(
    llrs: ArrayLike, scores: ArrayLike, labels: ArrayLike, prior_log_odds: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised actual DCF of ``llrs`` and minimum DCF of ``scores`` at each prior log-odds.

    Actual: the trials decided at the Bayes threshold ``-prior log-odds``; minimum: the best
    threshold of the scores (any monotone calibration of them). C_miss = C_fa = 1.
    """
    values, is_target = _scores_and_labels(scores, labels)
    calibrated, _ = _scores_and_labels(llrs, labels)
    priors = 1.0 / (1.0 + np.exp(-np.asarray(prior_log_odds, dtype=np.float64)))
    actual = act_dcf(calibrated[is_target], calibrated[~is_target], list(priors))
    fpr, fnr, _ = det_curve(values, is_target)
    minimum = [float(np.min(p * fnr + (1 - p) * fpr) / min(p, 1 - p)) for p in priors.tolist()]
    return np.array(list(actual.values())), np.array(minimum)


def reliability_points(
    llrs: ArrayLike, labels: ArrayLike, bins: int = _RELIABILITY_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted against observed target posteriors at equal priors, per bin of prediction.

    The predicted posterior is ``sigmoid(llr)``; the observed one weighs each target by
    ``1 / N_target`` and each non-target by ``1 / N_non-target`` (equal priors, whatever the
    trial list's proportion). Returns ``(mean predicted, observed, trials)`` of the non-empty
    bins of ``bins`` equal-width bins over [0, 1].
    """
    values, is_target = _scores_and_labels(llrs, labels)
    predicted = 1.0 / (1.0 + np.exp(-values))
    which = np.minimum((predicted * bins).astype(int), bins - 1)
    n_target, n_nontarget = max(int(is_target.sum()), 1), max(int((~is_target).sum()), 1)
    targets = np.bincount(which[is_target], minlength=bins) / n_target
    nontargets = np.bincount(which[~is_target], minlength=bins) / n_nontarget
    counts = np.bincount(which, minlength=bins)
    sums = np.bincount(which, weights=predicted, minlength=bins)
    used = counts > 0
    observed = targets[used] / np.maximum(targets[used] + nontargets[used], 1e-300)
    return sums[used] / counts[used], observed, counts[used]


def plot_calibration(
    scores: ArrayLike,
    labels: ArrayLike,
    path: str | Path,
    llrs: ArrayLike | None = None,
    title: str | None = None,
) -> Any:
    """A normalised Bayes error-rate plot and a reliability plot, side by side.

    Left: normalised actual DCF of the LLRs (``llrs``, or the scores themselves taken as LLRs)
    and the minimum DCF of the scores over prior log-odds -6..6, with the default system's
    cost 1 (always decide the likelier class a priori, "no decision" from the scores). Right:
    predicted against observed target posterior at equal priors. Returns the figure.
    """
    values, is_target = _scores_and_labels(scores, labels)
    calibrated = values if llrs is None else _scores_and_labels(llrs, labels)[0]
    log_odds = np.linspace(*PRIOR_LOG_ODDS_RANGE, _PRIOR_POINTS)
    actual, minimum = bayes_error_curves(calibrated, values, is_target, log_odds)
    which = "calibrated LLRs" if llrs is not None else "scores taken as LLRs"
    figure = _new_figure(11, 4.6)
    bayes, reliability = figure.subplots(1, 2)
    bayes.plot(log_odds, actual, color=TARGET_COLOR, linewidth=1.6, label=f"actual ({which})")
    bayes.plot(log_odds, minimum, color="black", linestyle="--", linewidth=1.3, label="minimum")
    bayes.axhline(1.0, color="0.5", linestyle=":", linewidth=1.2, label="default (no decision)")
    bayes.set_xlim(*PRIOR_LOG_ODDS_RANGE)
    bayes.set_ylim(0.0, BAYES_PLOT_TOP)  # a badly calibrated curve leaves the frame
    bayes.set_xlabel("prior log-odds  logit(p_target)")
    bayes.set_ylabel("normalised DCF")
    bayes.set_title("normalised Bayes error rate")
    bayes.grid(True, color="0.9")
    bayes.legend(loc="upper right", frameon=False)
    predicted, observed, counts = reliability_points(calibrated, is_target)
    reliability.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="perfect")
    reliability.plot(
        predicted, observed, marker="o", color=NONTARGET_COLOR, linewidth=1.4,
        label=f"{which} ({int(counts.sum()):,} trials)",
    )  # fmt: skip
    reliability.set_xlim(0, 1)
    reliability.set_ylim(0, 1)
    reliability.set_aspect("equal")
    reliability.set_xlabel("predicted P(target), equal priors")
    reliability.set_ylabel("observed P(target), equal priors")
    reliability.set_title("reliability")
    reliability.grid(True, color="0.9")
    reliability.legend(loc="upper left", frameon=False)
    if title:
        figure.suptitle(title)
    _save(figure, path)
    return figure
