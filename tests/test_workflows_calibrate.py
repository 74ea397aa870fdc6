"""``xvec calibrate fit/apply``, ``xvec eval --calibration`` and minCllr in every result: the
workflows and the CLI, one-line errors for bad input, and calibration on real speech."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from xvec.calibration import Calibration, act_dcf, min_cllr
from xvec.errors import XvecError
from xvec.metrics import compute_metrics
from xvec.report import calibration_table
from xvec.scoring import read_scores, write_scores
from xvec.workflows.calibrate import (
    apply_calibration_file,
    fit_calibration_files,
    read_calibration,
)
from xvec.workflows.eval import run_eval

from conftest import SPEECHOCEAN, requires_speechocean, run_cli


def write_trials(path: Path, labels, enroll, test) -> Path:
    path.write_text(
        "".join(f"{int(lab)} {a} {b}\n" for lab, a, b in zip(labels, enroll, test, strict=True))
    )
    return path


@pytest.fixture
def scored(tmp_path):
    """1500 distinct trials, 30 % targets; two noisy score files of them, not calibrated."""
    rng = np.random.default_rng(11)
    files = [f"spk{i // 10}/u{i % 10}.wav" for i in range(200)]
    pairs = np.array([(a, b) for a in range(200) for b in range(a + 1, 200)])
    enroll_index, test_index = pairs[rng.choice(len(pairs), 1500, replace=False)].T
    enroll = [files[i] for i in enroll_index]
    test = [files[i] for i in test_index]
    labels = rng.random(1500) < 0.3
    first = 0.15 * rng.normal(size=1500) + np.where(labels, 0.7, 0.25)  # cosine-like
    second = first + 0.15 * rng.normal(size=1500)
    trials = write_trials(tmp_path / "trials.txt", labels, enroll, test)
    write_scores(tmp_path / "a.txt", first, enroll, test)
    write_scores(tmp_path / "b.txt", second, enroll, test)
    return trials, tmp_path / "a.txt", tmp_path / "b.txt", first, second, labels


def one_error_line(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_fit_apply_and_eval_through_the_cli(scored, tmp_path) -> None:
    trials, first_file, _, first, _, labels = scored
    calibration_file = tmp_path / "calib.json"
    fitted = run_cli(
        "calibrate", "fit", "--scores", first_file, "-t", trials, "-o", calibration_file
    )
    assert fitted.returncode == 0, fitted.stderr
    assert f"-> {calibration_file}" in fitted.stdout and "calibrated" in fitted.stdout
    calibration = read_calibration(calibration_file)
    assert calibration.inputs == ("score",) and calibration.p_target == 0.05
    assert calibration.weights[0] > 0

    llr_file = tmp_path / "llr.txt"
    applied = run_cli("calibrate", "apply", calibration_file, first_file, "-o", llr_file)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith(f"1500 LLRs (score) -> {llr_file}")
    llrs, enroll, _ = read_scores(llr_file)
    assert np.array_equal(llrs, calibration.apply(first))
    assert enroll == read_scores(first_file)[1]

    out = tmp_path / "eval"
    evaluated = run_cli(
        "eval", "-t", trials, "--scores", first_file, "--calibration", calibration_file, "-o", out
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "actDCF" in evaluated.stdout and "minCllr" in evaluated.stdout
    result = json.loads((out / "result.json").read_text())
    targets, nontargets = first[labels], first[~labels]
    assert result["min_cllr"] == pytest.approx(min_cllr(targets, nontargets))
    entry = result["calibration"]
    assert entry["file"] == str(calibration_file)
    assert entry["act_dcf"]["0.05"] == pytest.approx(
        act_dcf(llrs[labels], llrs[~labels], 0.05), abs=1e-12
    )
    thresholds = calibration.thresholds([0.05, 0.01])
    assert [entry["thresholds"]["0.05"], entry["thresholds"]["0.01"]] == pytest.approx(thresholds)
    assert f"{thresholds[0]:.4f}" in evaluated.stdout  # the table shows the thresholds
    # the threshold in raw score units takes the same decisions as the LLRs at the Bayes threshold
    assert np.array_equal(first >= thresholds[0], llrs >= -np.log(0.05 / 0.95))


def test_min_cllr_is_always_in_the_result(scored, tmp_path) -> None:
    trials, first_file, _, first, _, labels = scored
    run = run_eval(trials, score_files=[first_file], out_dir=tmp_path / "out")
    summary = run.summaries[0]
    assert summary["min_cllr"] == pytest.approx(min_cllr(first[labels], first[~labels]))
    assert "calibration" not in summary
    assert "min_cllr" in json.loads((tmp_path / "out" / "result.json").read_text())


def test_fit_measures_before_and_after(scored, tmp_path) -> None:
    trials, first_file, *_, labels = scored
    fit = fit_calibration_files([first_file], trials, tmp_path / "c.json", p_target=0.01)
    assert (fit.n_trials, fit.n_target) == (1500, int(labels.sum()))
    assert list(fit.after.act_dcf) == [0.01, 0.05]
    (before,) = fit.before
    # cosine-like scores taken as LLRs decide badly; calibrated ones come close to the minimum
    assert before.act_dcf[0.01] > before.min_dcf[0.01] + 0.2
    assert fit.after.min_dcf[0.01] <= fit.after.act_dcf[0.01] < before.act_dcf[0.01]
    assert fit.after.cllr < before.cllr and fit.after.min_cllr == pytest.approx(before.min_cllr)
    assert json.loads((tmp_path / "c.json").read_text())["p_target"] == 0.01


def test_fusion_of_two_score_files(scored, tmp_path) -> None:
    trials, first_file, second_file, first, second, _ = scored
    output = tmp_path / "fusion.json"
    fit = fit_calibration_files([first_file, second_file], trials, output)
    assert fit.calibration.inputs == ("score1", "score2") and len(fit.before) == 2
    applied = apply_calibration_file(output, [first_file, second_file], tmp_path / "llr.txt")
    expected = fit.calibration.apply(np.stack([first, second], axis=1))
    assert applied.count == 1500
    assert np.array_equal(read_scores(tmp_path / "llr.txt")[0], expected)
    # one file for a fusion of two: a one-line error naming the calibration
    line = one_error_line(
        run_cli("calibrate", "apply", output, first_file, "-o", tmp_path / "x.txt")
    )
    assert str(output) in line and "2 score file(s)" in line and "1 were given" in line
    # nor can eval calibrate one system with a fusion
    line = one_error_line(
        run_cli("eval", "-t", trials, "--scores", first_file, "--calibration", output)
    )
    assert "2 inputs" in line and "xvec calibrate apply" in line


def test_score_files_with_different_trials_are_refused(scored, tmp_path) -> None:
    trials, first_file, second_file, *_ = scored
    lines = second_file.read_text().splitlines()
    score, enroll, test = lines[6].split()
    lines[6] = f"{score} {test} {enroll}"  # the pair swapped on the 7th line
    lines.insert(0, "# a comment line: the line number counts it")
    moved = tmp_path / "moved.txt"
    moved.write_text("\n".join(lines) + "\n")
    line = one_error_line(
        run_cli(
            "calibrate", "fit", "--scores", first_file, "--scores", moved, "-t", trials,
            "-o", tmp_path / "c.json",
        )
    )  # fmt: skip
    assert f"{moved}:8:" in line and "trial 7 of" in line and str(trials) in line
    assert not (tmp_path / "c.json").exists()
    # apply compares the score files with the first one
    fit_calibration_files([first_file, second_file], trials, tmp_path / "f.json")
    line = one_error_line(
        run_cli("calibrate", "apply", tmp_path / "f.json", first_file, moved, "-o", tmp_path / "x")
    )
    assert f"{moved}:8:" in line and f"of {first_file}" in line


def test_a_calibration_of_another_kind_is_refused(scored, tmp_path) -> None:
    _, first_file, *_ = scored
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"kind": "xvec-plda", "version": 1}))
    for wrong in (other, first_file):
        line = one_error_line(
            run_cli("calibrate", "apply", wrong, first_file, "-o", tmp_path / "x")
        )
        assert line.startswith(f"error: {wrong}: ") and "calibration" in line
    line = one_error_line(
        run_cli("calibrate", "apply", tmp_path / "none.json", first_file, "-o", "x")
    )
    assert "calibration file not found" in line


def durations_corpus(root: Path, files: list[str]) -> Path:
    """Silent-ish WAV files of 0.5 to 3 s, named as the trial list names them."""
    import soundfile

    rng = np.random.default_rng(3)
    for index, name in enumerate(files):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        seconds = 0.5 + (index % 6) * 0.5
        soundfile.write(str(path), 0.01 * rng.standard_normal(int(seconds * 16000)), 16000)
    return root


def test_quality_calibration_reads_durations(tmp_path) -> None:
    rng = np.random.default_rng(4)
    files = [f"spk{i // 4}/u{i % 4}.wav" for i in range(48)]
    audio = durations_corpus(tmp_path / "audio", files)
    seconds = {name: 0.5 + (i % 6) * 0.5 for i, name in enumerate(files)}
    pairs = [(a, b) for a in range(48) for b in range(a + 1, 48)]
    labels = rng.random(len(pairs)) < 0.4
    enroll = [files[a] for a, _ in pairs]
    test = [files[b] for _, b in pairs]
    shortest = np.array([min(seconds[a], seconds[b]) for a, b in zip(enroll, test, strict=True)])
    # short trials score lower: duration carries information a QMF can use
    scores = rng.normal(size=len(pairs)) + np.where(labels, 2.0, 0.0) + np.log(shortest)
    trials = write_trials(tmp_path / "trials.txt", labels, enroll, test)
    write_scores(tmp_path / "s.txt", scores, enroll, test)
    qmf = tmp_path / "qmf.json"
    line = one_error_line(
        run_cli(
            "calibrate", "fit", "--scores", tmp_path / "s.txt", "-t", trials, "--quality", "-o", qmf
        )
    )
    assert "--audio-root" in line and not qmf.exists()
    done = run_cli(
        "calibrate", "fit", "--scores", tmp_path / "s.txt", "-t", trials, "--quality",
        "--audio-root", audio, "-o", qmf,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    calibration = read_calibration(qmf)
    assert calibration.inputs == ("score", "log_min_duration", "log_max_duration")
    assert calibration.weights[1] < 0  # a short trial's score is raised
    plain = fit_calibration_files([tmp_path / "s.txt"], trials, tmp_path / "plain.json")
    quality = fit_calibration_files(
        [tmp_path / "s.txt"], trials, tmp_path / "q2.json", quality=True, audio_root=audio
    )
    assert quality.after.cllr < plain.after.cllr
    line = one_error_line(run_cli("calibrate", "apply", qmf, tmp_path / "s.txt", "-o", "x.txt"))
    assert "--audio-root" in line
    applied = run_cli(
        "calibrate",
        "apply",
        qmf,
        tmp_path / "s.txt",
        "-o",
        tmp_path / "llr.txt",
        "--audio-root",
        audio,
    )
    assert applied.returncode == 0, applied.stderr
    side = np.log(np.stack([shortest, shortest * 0 + 1], axis=1))
    side[:, 1] = np.log([max(seconds[a], seconds[b]) for a, b in zip(enroll, test, strict=True)])
    expected = calibration.apply(np.column_stack([scores, side]))
    assert np.allclose(read_scores(tmp_path / "llr.txt")[0], expected)


def test_bad_fit_options_are_one_line_errors(scored, tmp_path) -> None:
    trials, first_file, *_ = scored
    line = one_error_line(
        run_cli(
            "calibrate", "fit", "--scores", first_file, "-t", trials, "--p-target", "1.5", "-o", "c"
        )
    )
    assert "--p-target" in line
    with pytest.raises(XvecError, match="score_files"):
        fit_calibration_files([], trials, tmp_path / "c.json")


@pytest.mark.parametrize("width", [160, 80, 60, 40])
def test_calibration_table_keeps_numbers_whole(width: int) -> None:
    entry = {
        "file": "runs/dev_half/calib.json",
        "cllr": 0.41234,
        "act_dcf": {"0.05": 0.61234, "0.01": 0.81234},
        "thresholds": {"0.05": 0.71234, "0.01": None},
    }
    results = [
        {
            "name": "eval_out/a_rather_long_folder_name/scores.txt",
            "min_cllr": 0.3,
            "calibration": entry,
        },
        {"name": "b.txt", "min_cllr": 0.35, "calibration": entry},
    ]
    import io

    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None).print(calibration_table(results, width))
    text = buffer.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width
    for number in ("0.4123", "0.6123", "0.8123", "0.7123", "0.3000"):
        assert number in text


# ---------------------------------------------------------------- real speech


def speaker_of(path: str) -> str:
    return path.split("/", 1)[0]


@pytest.mark.slow
@requires_speechocean
def test_calibrating_on_half_the_dev_speakers_carries_over_to_the_other_half(tmp_path) -> None:
    """Cosine scores of mean log-mel statistics on speechocean762's dev trials: taken as LLRs
    they decide worse than their minimum; calibrated on half of the speakers, the other half's
    actDCF comes close to its minDCF."""
    from test_calibration import mel_statistics

    lines = (SPEECHOCEAN / "lists" / "dev_trials.txt").read_text().splitlines()[:900]
    trials = [line.split() for line in lines]
    speakers = sorted({speaker_of(p) for _, *pair in trials for p in pair})
    first_half = set(speakers[::2])
    halves: dict[str, list[list[str]]] = {"fit": [], "test": []}
    for trial in trials:
        sides = {speaker_of(trial[1]) in first_half, speaker_of(trial[2]) in first_half}
        if len(sides) == 1:
            halves["fit" if sides.pop() else "test"].append(trial)
    embeddings = mel_statistics(sorted({p for _, *pair in trials for p in pair}))
    matrix = np.stack(list(embeddings.values()))
    centre, spread = matrix.mean(0), matrix.std(0)

    def unit(vector: np.ndarray) -> np.ndarray:
        standard = (vector - centre) / spread
        return standard / np.linalg.norm(standard)

    files = {}
    for half, rows in halves.items():
        labels = np.array([label == "1" for label, _, _ in rows])
        assert labels.any() and not labels.all()
        scores = np.array([unit(embeddings[a]) @ unit(embeddings[b]) for _, a, b in rows])
        trial_file = write_trials(
            tmp_path / f"{half}_trials.txt", labels, [r[1] for r in rows], [r[2] for r in rows]
        )
        write_scores(tmp_path / f"{half}.txt", scores, [r[1] for r in rows], [r[2] for r in rows])
        files[half] = (trial_file, tmp_path / f"{half}.txt", scores, labels)

    fit_trials, fit_scores, *_ = files["fit"]
    calibration_file = tmp_path / "calib.json"
    fitted = run_cli(
        "calibrate", "fit", "--scores", fit_scores, "-t", fit_trials, "-o", calibration_file,
        "--p-target", "0.05",
    )  # fmt: skip
    assert fitted.returncode == 0, fitted.stderr
    test_trials, test_scores, raw, labels = files["test"]
    # mis-calibrated: raw cosine scores taken as LLRs
    raw_min_dcf = compute_metrics(raw, labels, (0.05,)).min_dcf[0.05]
    raw_act_dcf = act_dcf(raw[labels], raw[~labels], 0.05)
    assert raw_act_dcf > raw_min_dcf + 0.25
    llr_file = tmp_path / "test_llr.txt"
    assert (
        run_cli("calibrate", "apply", calibration_file, test_scores, "-o", llr_file).returncode == 0
    )
    llrs = read_scores(llr_file)[0]
    calibrated = act_dcf(llrs[labels], llrs[~labels], 0.05)
    # about 400 trials a half: the minimum, picked on these very trials, is optimistic
    assert raw_min_dcf <= calibrated < raw_min_dcf + 0.2
    assert calibrated - raw_min_dcf < 0.5 * (raw_act_dcf - raw_min_dcf)
    run = run_eval(test_trials, score_files=[test_scores], calibration=calibration_file)
    entry = run.summaries[0]["calibration"]
    assert entry["act_dcf"]["0.05"] == pytest.approx(calibrated)
    assert isinstance(read_calibration(calibration_file), Calibration)
