"""The CLI end to end: listings, count-classes, and one-line errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xvec.cli import app

from conftest import ROOT, SPEECHOCEAN, requires_speechocean, run_cli

runner = CliRunner()


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_lists_every_verb():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in (
        "train",
        "eval",
        "embed",
        "score",
        "plot",
        "count-classes",
        "models",
        "losses",
        "import-vt",
        "synth",
        "prepare",
    ):
        assert verb in result.output


def test_models_and_losses_tables():
    models = runner.invoke(app, ["models"], terminal_width=200)
    assert models.exit_code == 0
    for name in ("ResNetSE34L", "ResNetSE34V2", "VGGVox40", "RawNet3", "ECAPA-TDNN", "TDNN"):
        assert name in models.output
    assert "nOut" in models.output and "encoder_type" in models.output
    losses = runner.invoke(app, ["losses"], terminal_width=200)
    for name in (
        "softmax",
        "amsoftmax",
        "aamsoftmax",
        "ge2e",
        "proto",
        "triplet",
        "angleproto",
        "softmaxproto",
    ):
        assert name in losses.output
    assert "margin" in losses.output


@requires_speechocean
def test_count_classes_on_speechocean():
    table = runner.invoke(app, ["count-classes", str(SPEECHOCEAN / "lists" / "train_list.txt")])
    assert table.exit_code == 0 and "125" in table.output and "2500" in table.output
    plain = runner.invoke(
        app, ["count-classes", "--plain", str(SPEECHOCEAN / "lists" / "train_list.txt")]
    )
    assert plain.output.strip() == "125"


def test_count_classes_of_the_shipped_demo_list():
    result = runner.invoke(
        app, ["count-classes", "--plain", str(ROOT / "lists" / "train_list.txt")]
    )
    assert result.exit_code == 0, result.output
    assert int(result.output.strip()) > 1


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (None, ["train.txt: train list not found"]),
        ("", ["train.txt: train list is empty"]),
        ("id1 a.wav\nid2\n", ["train.txt:2: expected 2 columns"]),
    ],
)
def test_count_classes_errors_are_one_line(tmp_path, content, fragments):
    path = tmp_path / "train.txt"
    if content is not None:
        path.write_text(content)
    assert_one_line_error(run_cli("count-classes", path), *fragments)


@pytest.mark.parametrize("entry", ["-m", "script"])
def test_python_m_xvec_and_the_console_script_run_the_cli(tmp_path, entry):
    """The real entry points in a fresh process (count-classes loads no torch: fast)."""
    script = Path(sys.executable).with_name("xvec")
    if entry == "script" and not script.is_file():
        pytest.skip(f"no console script beside {sys.executable}")
    command = [sys.executable, "-m", "xvec"] if entry == "-m" else [str(script)]
    listing = tmp_path / "train.txt"
    listing.write_text("id1 a.wav\nid2 b.wav\nid1 c.wav\n")
    counted = subprocess.run(
        [*command, "count-classes", "--plain", str(listing)], capture_output=True, text=True
    )
    assert counted.returncode == 0 and counted.stdout.strip() == "2", counted.stderr
    missing = subprocess.run(
        [*command, "count-classes", str(tmp_path / "none.txt")], capture_output=True, text=True
    )
    assert_one_line_error(missing, "none.txt: train list not found")
    usage = subprocess.run([*command, "count-classes"], capture_output=True, text=True)
    assert usage.returncode == 2
    assert_one_line_error(usage, "xvec count-classes: Missing argument")


def test_losses_table_says_which_losses_need_several_utterances_per_speaker():
    losses = runner.invoke(app, ["losses"], terminal_width=250)
    assert losses.exit_code == 0 and "nPerSpeaker" in losses.output
    rows = {
        line.split("│")[1].strip(): line
        for line in losses.output.splitlines()
        if line.startswith("│") and line.split("│")[1].strip()
    }
    for name in ("angleproto", "ge2e", "proto", "softmaxproto", "triplet"):
        assert ">= 2" in rows[name], name
    for name in ("softmax", "amsoftmax", "aamsoftmax"):
        assert rows[name].rstrip("│ ").endswith("any"), name
