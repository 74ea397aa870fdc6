"""Messages that name the fix: parser errors in one line, and the mistakes new users make.

The command line runs in-process: ``CliRunner`` on ``xvec.cli.app``, and once through
``xvec.cli.main`` as the console script runs it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import typer
from typer.testing import CliRunner, Result

from xvec.cli import app, main

from conftest import ROOT

runner = CliRunner()


def xvec(*args: object) -> Result:
    """Run ``xvec ARGS`` in-process on a 200-column terminal."""
    return runner.invoke(app, [str(arg) for arg in args], env={"COLUMNS": "200"})


def one_line_error(result: Result) -> str:
    """The only line of stderr, which starts with ``error: ``; stdout is empty."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert result.stdout == "", result.stdout
    return lines[0]


@pytest.fixture
def trials(tmp_path: Path) -> Path:
    path = tmp_path / "trials.txt"
    path.write_text("1 a/1.wav a/2.wav\n0 a/1.wav b/1.wav\n")
    return path


# --------------------------------------------------------------------------- parser errors


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["eval", "--out", "x"], "xvec eval: No such option: --out (Possible options: --out-dir)"),
        (["eval"], "xvec eval: Missing option '--trials'"),
        (["eval", "-t", "{trials}", "--batch-size", "many"], "Invalid value for '--batch-size'"),
        (["count-classes"], "xvec count-classes: Missing argument 'TRAIN_LIST'"),
        (["count-classes", "{trials}", "extra"], "Got unexpected extra argument(s) (extra)"),
        (["prepare", "folder", "--bogus"], "xvec prepare folder: No such option: --bogus"),
    ],
)
def test_parser_errors_are_one_line_with_exit_2(trials, args, expected) -> None:
    result = xvec(*(arg.format(trials=trials) for arg in args))
    assert result.exit_code == 2
    line = one_line_error(result)
    assert expected in line and line.endswith("--help'"), line


def test_console_script_prints_the_same_line(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["xvec", "eval", "--out", "x"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "error: xvec eval: No such option: --out (Possible options: --out-dir); "
        "see 'xvec eval --help'\n"
    )


def test_set_with_a_separate_value_says_how_to_write_it() -> None:
    result = xvec("train", ROOT / "recipes" / "demo.toml", "--set", "train.max_epoch", "3")
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "--set takes section.field=value" in line and "--set train.max_epoch=3" in line
    # another mistake after a lone --set field is reported as itself, with no made-up value
    result = xvec("train", ROOT / "recipes" / "demo.toml", "--set", "train.max_epoch", "--bogus")
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "No such option: --bogus" in line and "train.max_epoch=--bogus" not in line


# --------------------------------------------------------------------------- help


def command_paths(command: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """``()`` for ``xvec`` itself, then every command and group under it."""
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += command_paths(sub, (*prefix, name))
    return paths


def test_every_help_shows_readable_metavars() -> None:
    paths = command_paths(typer.main.get_command(app))
    assert ("eval",) in paths and ("prepare", "folder") in paths and len(paths) >= 18
    for path in paths:
        result = xvec(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        text = result.stdout
        assert "Usage: xvec" in text, (path, text)
        assert "<" not in text and "list[" not in text, (path, text)  # no <path>, <list[Path]>
        assert not re.search(r"\w \.(\s|$)", text), (path, text)  # no "several ."
    text = xvec("eval", "--help").stdout
    for metavar in ("PATH", "FLOAT", "INTEGER", "TEXT", "[full|vt-crops]"):
        assert metavar in text, metavar
    assert "repeat for several (default: 0.05 and 0.01)" in text
    text = xvec("import", "--help").stdout
    assert all(f"│ {fmt} " in text for fmt in ("vt", "wespeaker", "speechbrain"))
    assert "xvec import vt [OPTIONS] {SOURCE}" in xvec("import", "vt", "--help").stdout


# --------------------------------------------------------------------------- lists


def test_default_recipe_without_lists_hints_at_set() -> None:
    result = xvec("train", ROOT / "recipes" / "resnet34l_amsoftmax.toml")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "voxceleb2_train_list.txt: train list not found" in line
    assert "--set data.train_list=LIST --set data.train_path=AUDIO_DIR" in line
    assert "xvec prepare voxceleb" in line


def test_trial_list_given_as_train_list(trials) -> None:
    result = xvec("train", ROOT / "recipes" / "demo.toml", "--set", f"data.train_list={trials}")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert f"{trials}:1: this looks like a trial list ('LABEL enroll test')" in line
    assert "data.train_list) needs 'SPEAKER relative/path' lines" in line


def test_folder_given_as_a_list(tmp_path, trials) -> None:
    folder = tmp_path  # holds trials.txt
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")
    cases = [
        (["count-classes", folder], "give the train list itself (it holds trials.txt)"),
        (["eval", "--scores", trials, "--trials", folder], "give the trial list itself"),
        (["embed", "-m", model, "-o", tmp_path / "e", "-r", folder, "--list", folder], "file list"),
        (["plot", "hist", folder, "--trials", trials], "not a score file"),
        (["score", "-e", folder, "-t", trials, "-o", tmp_path / "s.txt"], "embeddings file"),
    ]
    for args, expected in cases:
        result = xvec(*args)
        assert result.exit_code == 1, args
        line = one_line_error(result)
        assert f"error: {folder}: is a folder, not " in line and expected in line, line


@pytest.mark.parametrize("command", ["eval", "embed", "export"])
def test_run_folder_given_as_model_names_its_checkpoint(tmp_path, trials, command) -> None:
    run_dir = tmp_path / "demo"  # what xvec train writes
    run_dir.mkdir()
    for name in ("best.safetensors", "last.safetensors", "recipe.json"):
        (run_dir / name).write_bytes(b"")
    files = tmp_path / "files.txt"
    files.write_text("a/1.wav\n")
    args = {
        "eval": ["eval", "--model", run_dir, "--trials", trials],
        "embed": ["embed", "-m", run_dir, "-o", tmp_path / "e", "-r", tmp_path, "--list", files],
        "export": ["export", run_dir, "-o", tmp_path / "model.onnx"],
    }[command]
    result = xvec(*args)
    assert result.exit_code == 1
    line = one_line_error(result)
    assert line == (
        f"error: {run_dir}: is a run folder, not a checkpoint file; "
        f"give {run_dir / 'best.safetensors'}"
    )
    (run_dir / "avg.safetensors").write_bytes(b"")  # a run that averages scored its average
    line = one_line_error(xvec(*args))
    assert line.endswith(f"; give {run_dir / 'avg.safetensors'}")


# --------------------------------------------------------------------------- prepare folder


def write_tree(root: Path, speakers: dict[str, int]) -> None:
    """SPEAKER/uN.wav files of 0.1 s of noise."""
    rng = np.random.default_rng(0)
    for speaker, count in speakers.items():
        (root / speaker).mkdir(parents=True)
        for i in range(count):
            soundfile.write(root / speaker / f"u{i}.wav", rng.normal(0, 0.1, 1600), 16000)


def test_prepare_folder_excludes_and_warns_about_trial_speakers(tmp_path) -> None:
    audio, lists = tmp_path / "audio", tmp_path / "lists"
    write_tree(audio, {"alice": 2, "bob": 2, "carol": 2, "dave": 2})
    lists.mkdir()
    trials = lists / "trials.txt"
    trials.write_text("1 carol/u0.wav carol/u1.wav\n0 carol/u0.wav dave/u0.wav\n")
    output = lists / "train_list.txt"
    result = xvec("prepare", "folder", audio, "-o", output)
    assert result.exit_code == 0
    warning = result.stderr.strip()
    assert warning.startswith("warning: 2 speaker(s) of") and "\n" not in warning
    assert warning.endswith(f"pass --exclude-trials {trials}")
    assert "carol carol/u0.wav" in output.read_text()  # warned, not left out

    result = xvec("prepare", "folder", audio, "-o", output, "--force", "--exclude-trials", trials)
    assert result.exit_code == 0 and result.stderr == ""
    assert "2 speakers, 4 files" in result.stdout
    assert "2 speaker(s) of the trial list(s) left out" in result.stdout
    written = output.read_text()
    assert "alice alice/u0.wav" in written and "carol" not in written and "dave" not in written

    elsewhere = tmp_path / "other_trials.txt"
    elsewhere.write_text("1 x/a.wav x/b.wav\n0 x/a.wav y/c.wav\n")
    result = xvec(
        "prepare", "folder", audio, "-o", output, "--force", "--exclude-trials", elsewhere
    )
    assert result.exit_code == 1
    assert "none of its speakers is a folder of" in one_line_error(result)
