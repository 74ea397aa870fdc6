"""Messages that name the fix: parser errors in one line, and the mistakes new users make.

The command line runs in-process (``xvec.cli.run``), as the console script runs it.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile

from xvec.cli import run

from conftest import ROOT

TRIALS = ROOT / "lists" / "demo_trials.txt"


def xvec(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``xvec ARGS`` in-process: (exit code, stdout, stderr)."""
    code = run([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["eval", "--out", "x"], "xvec eval: No such option: --out (Possible options: --out-dir)"),
        (["eval"], "xvec eval: Missing option '--trials'"),
        (["eval", "-t", TRIALS, "--batch-size", "many"], "Invalid value for '--batch-size'"),
        (["count-classes"], "xvec count-classes: Missing argument"),
    ],
)
def test_parser_errors_are_one_line_with_exit_2(capsys, args, expected) -> None:
    code, out, err = xvec(capsys, *args)
    assert code == 2 and out == ""
    line = one_line_error(err)
    assert expected in line and "--help" in line


def test_set_with_a_separate_value_says_how_to_write_it(capsys) -> None:
    code, _, err = xvec(
        capsys, "train", ROOT / "recipes" / "demo.toml", "--set", "train.max_epoch", "3"
    )
    assert code == 2
    assert "--set train.max_epoch=3" in one_line_error(err)


def test_help_shows_readable_metavars(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # help lines unwrapped
    for command in (["eval"], ["train"], ["embed"], ["plot", "hist"], ["prepare", "folder"]):
        code, out, _ = xvec(capsys, *command, "--help")
        assert code == 0
        assert "<" not in out and "list[" not in out, out  # no <path>, <bool>, <list[Path]>
        assert not re.search(r"\w \.(\s|$)", out)  # no word cut off before a full stop
    _, out, _ = xvec(capsys, "eval", "--help")
    assert "PATH" in out and "FLOAT" in out and "INTEGER" in out and "[full|vt-crops]" in out
    assert "(default: 0.05 and 0.01)" in out


def test_recipe_with_missing_lists_hints_at_set(capsys) -> None:
    code, _, err = xvec(capsys, "train", ROOT / "recipes" / "resnet34l_amsoftmax.toml")
    assert code == 1
    line = one_line_error(err)
    assert "train list not found" in line and "--set data.train_list=" in line


def test_trial_list_given_as_train_list(capsys) -> None:
    code, _, err = xvec(
        capsys, "train", ROOT / "recipes" / "demo.toml", "--set", f"data.train_list={TRIALS}"
    )
    assert code == 1
    line = one_line_error(err)
    assert f"{TRIALS}:1: this looks like a trial list" in line
    assert "'SPEAKER relative/path'" in line


def test_folder_given_as_a_list(capsys) -> None:
    code, _, err = xvec(capsys, "count-classes", ROOT / "lists")
    assert code == 1
    line = one_line_error(err)
    assert "is a folder, not a train list file" in line and "train_list.txt" in line
    code, _, err = xvec(capsys, "eval", "--scores", TRIALS, "--trials", ROOT / "lists")
    assert code == 1 and "is a folder, not a trial list file" in one_line_error(err)


def test_run_folder_given_as_model_names_its_checkpoint(capsys, tmp_path) -> None:
    run_dir = tmp_path / "demo"
    run_dir.mkdir()
    (run_dir / "best.safetensors").write_bytes(b"")
    code, _, err = xvec(capsys, "eval", "--model", run_dir, "--trials", TRIALS)
    assert code == 1
    assert f"is a run folder, not a checkpoint file; give {run_dir / 'best.safetensors'}" in (
        one_line_error(err)
    )


def write_tree(root, speakers: dict[str, int]) -> None:
    """SPEAKER/utt.wav files of 0.1 s of noise."""
    rng = np.random.default_rng(0)
    for speaker, count in speakers.items():
        (root / speaker).mkdir(parents=True)
        for i in range(count):
            soundfile.write(root / speaker / f"u{i}.wav", rng.normal(0, 0.1, 1600), 16000)


def test_prepare_folder_excludes_and_warns_about_trial_speakers(capsys, tmp_path) -> None:
    audio, lists = tmp_path / "audio", tmp_path / "lists"
    write_tree(audio, {"alice": 2, "bob": 2, "carol": 2, "dave": 2})
    lists.mkdir()
    trials = lists / "trials.txt"
    trials.write_text("1 carol/u0.wav carol/u1.wav\n0 carol/u0.wav dave/u0.wav\n")
    output = lists / "train_list.txt"
    code, out, err = xvec(capsys, "prepare", "folder", audio, "-o", output)
    assert code == 0
    assert "warning: 2 speaker(s) of" in err and f"--exclude-trials {trials}" in err
    assert "carol" in output.read_text()
    code, out, err = xvec(
        capsys, "prepare", "folder", audio, "-o", output, "--force", "--exclude-trials", trials
    )
    assert code == 0 and err == ""
    assert "2 speakers, 4 files" in out and "2 speaker(s) of the trial list(s) left out" in out
    written = output.read_text()
    assert "alice/u0.wav" in written and "carol" not in written and "dave" not in written
    elsewhere = lists / "other_trials.txt"
    elsewhere.write_text("1 x/a.wav x/b.wav\n0 x/a.wav y/c.wav\n")
    code, _, err = xvec(
        capsys, "prepare", "folder", audio, "-o", output, "--force", "--exclude-trials", elsewhere
    )
    assert code == 1 and "none of its speakers is a folder of" in one_line_error(err)
