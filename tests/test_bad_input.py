"""The bad-input matrix: every user mistake gives one line on stderr, exit != 0, no traceback.

Each case drives the real ``xvec`` command in a subprocess and checks that the message names the
file (and line or field) and that no partial output is left looking like a good one.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import write_tone_corpus

RECIPE = """\
[data]
train_list = "{root}/train_list.txt"
train_path = "{root}/audio"
test_list = "{root}/trials.txt"
test_path = "{root}/audio"
max_frames = 50

[model]
name = "{model}"

[loss]
name = "softmax"

[train]
max_epoch = 1
batch_size = 4
num_workers = 0
output_dir = "{out}"
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_tone_corpus(tmp_path_factory.mktemp("corpus"), speakers=4, utterances=3)


@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory) -> Path:
    """A test distribution with TinyModel, visible to subprocesses through PYTHONPATH."""
    from conftest import TINY_MODEL_SOURCE, make_distribution

    return make_distribution(
        tmp_path_factory.mktemp("site"),
        "xvec-tiny",
        {"xvec.models": {"TinyModel": "xvec_tiny:TinyModel"}},
        {"xvec_tiny": TINY_MODEL_SOURCE},
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_site) -> Path:
    """An xvec checkpoint of TinyModel, written by a subprocess that sees the test plugin."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    code = (
        "import torch; from xvec import registry; from xvec.checkpoint import save_checkpoint;"
        "torch.manual_seed(0);"
        f"save_checkpoint({str(path)!r}, registry.build('model', 'TinyModel', {{}}), 'TinyModel')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(tiny_site))
    return path


def _env(site: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def xvec(*args: str, site: Path | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "xvec", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(site),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def eval_model(model, trials, root, out=None, site=None):
    """``xvec eval --model M --trials T --audio-root R [-o OUT]`` in a subprocess."""
    extra = ["-o", out] if out is not None else []
    return xvec(
        "eval", "--model", model, "--trials", trials, "--audio-root", root, *extra, site=site
    )


def one_line_error(result, *fragments: str) -> str:
    """Assert exit != 0, exactly one non-empty stderr line, no traceback, all fragments in it."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def recipe(tmp_path: Path, corpus: Path, model: str = "TinyModel", extra: str = "") -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE.format(root=corpus, model=model, out=tmp_path / "run") + extra)
    return path


# 1-5, 14: recipes ------------------------------------------------------------------------


def test_recipe_toml_syntax_error_names_line_and_column(tmp_path, corpus):
    path = recipe(tmp_path, corpus)
    path.write_text(path.read_text().replace("max_frames = 50", "max_frames = = 50"))
    one_line_error(xvec("train", path), "recipe.toml", "line 6", "column")
    assert not (tmp_path / "run").exists()


def test_recipe_unknown_field_lists_allowed(tmp_path, corpus, tiny_site):
    path = recipe(tmp_path, corpus, extra="nLcasses = 20\n")
    one_line_error(xvec("train", path, site=tiny_site), "recipe.toml", "nLcasses")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("section", "line", "field"),
    [
        ("[optim]", "lr = -0.1", "lr"),
        ("[train]", "batch_size = 0", "batch_size"),
        ("[data]", "eval_frames = -5", "eval_frames"),
        ("[train]", 'max_epoch = "many"', "max_epoch"),
    ],
)
def test_recipe_bad_value_names_the_field(tmp_path, corpus, tiny_site, section, line, field):
    path = recipe(tmp_path, corpus)
    text = path.read_text()
    text = (
        text.replace(f"{section}\n", f"{section}\n{line}\n")
        if section in text
        else text + f"\n{section}\n{line}\n"
    )
    # A key given twice is a TOML error, so drop the default line the template had.
    key = line.split(" = ")[0]
    kept = [ln for ln in text.splitlines() if not (ln.startswith(f"{key} = ") and ln != line)]
    path.write_text("\n".join(kept) + "\n")
    one_line_error(xvec("train", path, site=tiny_site), "recipe.toml", field)


def test_unknown_model_and_loss_list_available_names(tmp_path, corpus):
    message = one_line_error(xvec("train", recipe(tmp_path, corpus, model="ResNet34L")))
    assert "ResNet34L" in message and "ResNetSE34L" in message
    path = recipe(tmp_path, corpus, model="ResNetSE34L")
    path.write_text(path.read_text().replace('name = "softmax"', 'name = "amsoftmx"'))
    message = one_line_error(xvec("train", path), "amsoftmx")
    assert "amsoftmax" in message and "angleproto" in message


def test_metric_loss_with_one_utterance_per_speaker(tmp_path, corpus, tiny_site):
    path = recipe(tmp_path, corpus, extra="nPerSpeaker = 1\n")
    path.write_text(path.read_text().replace('name = "softmax"', 'name = "angleproto"'))
    one_line_error(xvec("train", path, site=tiny_site), "angleproto", "nPerSpeaker")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.max_epoch", "SECTION.FIELD=VALUE"),
        ("trian.max_epoch=3", "trian"),
        ("train.max_epoch=abc", "max_epoch"),
    ],
)
def test_bad_set_override(tmp_path, corpus, tiny_site, override, fragment):
    result = xvec("train", recipe(tmp_path, corpus), "--set", override, site=tiny_site)
    one_line_error(result, fragment)
    assert not (tmp_path / "run").exists()


# 6-7: lists ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "train.txt: train list not found"),
        ("", "train.txt: train list is empty"),
        ("id1 a.wav\nid2\n", "train.txt:2:"),
        ("id1 a.wav\nid2 a.wav\n", "train.txt:2:"),
    ],
)
def test_train_list_errors(tmp_path, content, fragment):
    path = tmp_path / "train.txt"
    if content is not None:
        path.write_text(content)
    one_line_error(xvec("count-classes", path), fragment)


def _scores_for(trials: Path, tmp_path: Path) -> Path:
    rows = [line.split() for line in trials.read_text().splitlines() if line.strip()]
    scores = tmp_path / "scores.txt"
    scores.write_text("".join(f"{0.1 * i:.3f} {r[-2]} {r[-1]}\n" for i, r in enumerate(rows)))
    return scores


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("1 a.wav b.wav\n2 a.wav c.wav\n", ["trials.txt:2:", "label"]),
        ("1 a.wav b.wav\na.wav c.wav\n", ["trials.txt:2:", "3 columns"]),
        ("1 a.wav b.wav\n1 a.wav c.wav\n", ["trials.txt", "all 2 trials are target"]),
        ("0 a.wav b.wav\n0 a.wav c.wav\n", ["trials.txt", "all 2 trials are non-target"]),
    ],
)
def test_trial_list_errors(tmp_path, content, fragments):
    trials = tmp_path / "trials.txt"
    trials.write_text(content)
    scores = _scores_for(trials, tmp_path)
    one_line_error(xvec("eval", "--scores", scores, "--trials", trials), *fragments)


# 8-9: audio ------------------------------------------------------------------------------


def test_missing_audio_root_and_files_reported_together(
    tmp_path, corpus, tiny_checkpoint, tiny_site
):
    trials = corpus / "trials.txt"
    one_line_error(
        eval_model(tiny_checkpoint, trials, tmp_path / "nowhere", site=tiny_site),
        "nowhere",
    )
    partial_root = tmp_path / "partial"
    (partial_root / "spk2").mkdir(parents=True)
    first = sorted((corpus / "audio" / "spk2").iterdir())[0]
    (partial_root / "spk2" / first.name).write_bytes(first.read_bytes())
    message = one_line_error(
        eval_model(tiny_checkpoint, trials, partial_root, out=tmp_path / "out", site=tiny_site),
        "missing",
    )
    expected_missing = (
        len({p for line in trials.read_text().split("\n") for p in line.split()[1:]}) - 1
    )
    assert str(expected_missing) in message
    assert not (tmp_path / "out" / "scores.txt").exists()


def _corpus_with(tmp_path: Path, corpus: Path, name: str, writer) -> tuple[Path, Path]:
    """A copy of the trial setup where one trial file is replaced by ``writer(path)``."""
    root = tmp_path / "audio"
    for wav in (corpus / "audio").rglob("*.wav"):
        target = root / wav.relative_to(corpus / "audio")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wav.read_bytes())
    trials = tmp_path / "trials.txt"
    lines = (corpus / "trials.txt").read_text().splitlines()
    first = lines[0].split()
    lines[0] = f"{first[0]} {name} {first[2]}"
    trials.write_text("\n".join(lines) + "\n")
    writer(root / name)
    return root, trials


@pytest.mark.parametrize(
    ("writer", "fragment"),
    [
        (lambda p: soundfile.write(str(p), np.zeros(0, np.float32), 16000), "empty"),
        (lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt "), "cannot read audio"),
        (lambda p: p.write_text("this is not audio\n"), "cannot read audio"),
        (
            lambda p: soundfile.write(
                str(p),
                np.r_[np.zeros(8000), np.nan, np.zeros(8000)].astype(np.float32),
                16000,
                subtype="FLOAT",
            ),
            "NaN",
        ),
    ],
    ids=["zero-length", "truncated", "text", "nan"],
)
def test_bad_audio_is_named(tmp_path, corpus, tiny_checkpoint, tiny_site, writer, fragment):
    root, trials = _corpus_with(tmp_path, corpus, "bad.wav", writer)
    one_line_error(
        eval_model(tiny_checkpoint, trials, root, out=tmp_path / "out", site=tiny_site),
        "bad.wav",
        fragment,
    )
    assert not (tmp_path / "out" / "scores.txt").exists()


def test_length_tolerance_out_of_range_is_refused(tmp_path, corpus, tiny_checkpoint, tiny_site):
    result = xvec(
        "eval", "--model", tiny_checkpoint, "--trials", corpus / "trials.txt",
        "--audio-root", corpus / "audio", "--length-tolerance", "1.5", site=tiny_site,
    )  # fmt: skip
    one_line_error(result, "length tolerance", "1.5")


def test_odd_but_valid_audio_is_accepted_with_notes(tmp_path, corpus, tiny_checkpoint, tiny_site):
    t = np.arange(int(1.2 * 44100)) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) * 0.3
    root, trials = _corpus_with(
        tmp_path, corpus, "odd.wav", lambda p: soundfile.write(str(p), stereo, 44100)
    )
    short = root / "short.wav"
    soundfile.write(str(short), 0.1 * np.random.default_rng(0).standard_normal(3200), 16000)
    with trials.open("a") as handle:
        handle.write(f"0 short.wav {trials.read_text().split()[2]}\n")
    result = eval_model(tiny_checkpoint, trials, root, out=tmp_path / "out", site=tiny_site)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    notes = result.stdout + result.stderr
    assert "resampled" in notes and "downmixed" in notes and "shorter" in notes
    assert (tmp_path / "out" / "scores.txt").is_file()


# 10-11: checkpoints ----------------------------------------------------------------------


def _eval_with(model: Path, corpus: Path, site: Path | None = None):
    return eval_model(model, corpus / "trials.txt", corpus / "audio", site=site)


def test_bad_checkpoints(tmp_path, corpus, tiny_checkpoint, tiny_site):
    text = tmp_path / "model.safetensors"
    text.write_text("not a checkpoint")
    one_line_error(_eval_with(text, corpus), "model.safetensors", "safetensors")

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:-100])
    one_line_error(_eval_with(truncated, corpus, tiny_site), "truncated.safetensors")

    import torch
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    one_line_error(_eval_with(bare, corpus), "bare.safetensors", "xvec")

    # The checkpoint's model comes from the xvec-tiny test distribution: without it, say so.
    one_line_error(_eval_with(tiny_checkpoint, corpus), "TinyModel", "xvec-tiny")


def test_voxceleb_trainer_import_errors(tmp_path):
    import torch

    wrong = tmp_path / "wrong.model"
    torch.save({"__S__.conv1.weight": torch.zeros(3, 3)}, wrong)
    one_line_error(
        xvec("import-vt", wrong, "-o", tmp_path / "out.safetensors", "--model", "ResNetSE34L"),
        "wrong.model",
        "conv1.weight",
    )
    assert not (tmp_path / "out.safetensors").exists()

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.model"
    with evil.open("wb") as handle:
        pickle.dump({"__S__.w": Payload()}, handle)
    one_line_error(
        xvec("import-vt", evil, "-o", tmp_path / "evil.safetensors", "--model", "ResNetSE34L"),
        "evil.model",
        "refused",
    )
    assert not marker.exists()


# 12-13: outputs and embeddings -------------------------------------------------------------


def test_unwritable_output_folder(tmp_path, corpus):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    trials = corpus / "trials.txt"
    scores = _scores_for(trials, tmp_path)
    one_line_error(
        xvec("plot", "hist", scores, "--trials", trials, "-o", blocker / "hist.png"),
        "hist.png",
        "cannot write",
    )


def test_embeddings_lacking_trial_files(tmp_path, corpus, tiny_checkpoint, tiny_site):
    listing = tmp_path / "files.txt"
    files = sorted(
        p.relative_to(corpus / "audio").as_posix() for p in (corpus / "audio").rglob("*.wav")
    )
    listing.write_text("\n".join(files[:3]) + "\n")
    store = tmp_path / "emb.safetensors"
    result = xvec(
        "embed",
        "--model",
        tiny_checkpoint,
        "--list",
        listing,
        "--audio-root",
        corpus / "audio",
        "-o",
        store,
        site=tiny_site,
    )
    assert result.returncode == 0, result.stderr
    one_line_error(
        xvec(
            "score",
            "--embeddings",
            store,
            "--trials",
            corpus / "trials.txt",
            "-o",
            tmp_path / "scores.txt",
        ),
        "emb.safetensors",
        "trials.txt",
    )
    assert not (tmp_path / "scores.txt").exists()
