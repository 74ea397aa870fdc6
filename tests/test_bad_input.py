"""The bad-input matrix: every user mistake gives one line on stderr, exit != 0, no traceback.

Each case drives the real ``xvec`` command line (in-process, ``conftest.run_cli``) and checks that
the message names the file (and line or field) and that no partial output is left looking like a
good one.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile

from xvec.data import read_trials

from conftest import SPEECHOCEAN, plugin_on_path, requires_speechocean, run_cli, write_tone_corpus

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
    """A test distribution with TinyModel, on the path where a test passes ``site=tiny_site``."""
    from conftest import TINY_MODEL_SOURCE, make_distribution

    return make_distribution(
        tmp_path_factory.mktemp("site"),
        "xvec-tiny",
        {"xvec.models": {"TinyModel": "xvec_tiny:TinyModel"}},
        {"xvec_tiny": TINY_MODEL_SOURCE},
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_site) -> Path:
    """An xvec checkpoint of TinyModel, written while the test plugin is on the path."""
    import torch

    from xvec import registry
    from xvec.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    with plugin_on_path(tiny_site), torch.random.fork_rng():
        torch.manual_seed(0)
        save_checkpoint(path, registry.build("model", "TinyModel", {}), "TinyModel")
    return path


def xvec(*args: object, site: Path | None = None, cwd: Path | None = None):
    """``xvec ARGS`` in-process; ``site``: a test plugin's distribution on the path."""
    return run_cli(*args, site=site, cwd=cwd)


def eval_model(model, trials, root, out=None, site=None):
    """``xvec eval --model M --trials T --audio-root R [-o OUT]``."""
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
    one_line_error(result, "--length-tolerance must be in [0, 1)", "1.5")


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


# issue 15: red-team cases against eval, embed, score, export, models ----------------------


def _trial_files(corpus: Path) -> list[str]:
    return list(dict.fromkeys(w for ln in (corpus / "trials.txt").read_text().split("\n")
                              for w in ln.split()[1:]))  # fmt: skip


def _store(path: Path, vectors: dict[str, np.ndarray], meta: dict | None = None) -> Path:
    from xvec.embed import EmbeddingStore

    store = EmbeddingStore(meta or {"protocol": "full"})
    store.vectors = vectors
    return store.save(path)


def _good_vectors(corpus: Path, dim: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f: rng.standard_normal(dim).astype(np.float32) for f in _trial_files(corpus)}


def _score(store: Path, corpus: Path, tmp_path: Path, *extra: str):
    return xvec("score", "-e", store, "-t", corpus / "trials.txt", "-o", tmp_path / "s.txt", *extra)


def test_bom_is_stripped_from_every_list(tmp_path, corpus):
    bom = "\ufeff"
    train = tmp_path / "train.txt"
    train.write_text(bom + "id1 a.wav\nid2 b.wav\nid1 c.wav\n", encoding="utf-8")
    result = xvec("count-classes", train, "--plain")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"

    trials = tmp_path / "trials.txt"
    trials.write_text(bom + (corpus / "trials.txt").read_text(), encoding="utf-8")
    scores = _scores_for(corpus / "trials.txt", tmp_path)
    plain = xvec("eval", "--scores", scores, "--trials", corpus / "trials.txt")
    scores.write_text(bom + scores.read_text(), encoding="utf-8")
    result = xvec("eval", "--scores", scores, "--trials", trials)
    assert result.returncode == 0, result.stderr
    assert plain.returncode == 0 and plain.stdout.split("\n")[-3:] == result.stdout.split("\n")[-3:]

    from xvec.data import read_file_list

    listing = tmp_path / "files.txt"
    listing.write_text(bom + "spk0/utt0.wav\nspk0/utt1.wav\n", encoding="utf-8")
    assert read_file_list(listing) == ["spk0/utt0.wav", "spk0/utt1.wav"]


def test_speechocean_csv_with_bom(tmp_path):
    from xvec.prepare.speechocean762 import _speechocean_from_csv

    (tmp_path / "speakers.csv").write_text(
        "\ufeffspeaker,part,gender\nSPEAKER0001,train,m\nSPEAKER0002,test,f\n", encoding="utf-8"
    )
    table = _speechocean_from_csv(tmp_path)
    assert table.part == {"SPEAKER0001": "train", "SPEAKER0002": "dev"}


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_embedding_is_refused_by_score(tmp_path, corpus, bad):
    vectors = _good_vectors(corpus)
    key = next(iter(vectors))
    vectors[key][3] = bad
    store = _store(tmp_path / "emb.safetensors", vectors)
    one_line_error(_score(store, corpus, tmp_path), "emb.safetensors", key, "NaN or infinite")
    assert not (tmp_path / "s.txt").exists()


def test_model_producing_nan_is_refused_naming_the_file(corpus):
    import torch

    from xvec.embed import embed_files
    from xvec.errors import XvecError

    class NanModel(torch.nn.Module):
        def forward(self, waveform: torch.Tensor) -> torch.Tensor:
            out = waveform[:, :4].clone()
            out[0, 0] = float("nan")
            return out

    files = _trial_files(corpus)[:1]
    with pytest.raises(XvecError, match="NaN or infinite") as info:
        embed_files(NanModel(), corpus / "audio", files, device="cpu")
    assert files[0] in str(info.value)


def test_nan_score_file_is_refused(tmp_path, corpus):
    scores = _scores_for(corpus / "trials.txt", tmp_path)
    lines = scores.read_text().splitlines()
    lines[1] = "nan " + " ".join(lines[1].split()[1:])
    scores.write_text("\n".join(lines) + "\n")
    one_line_error(
        xvec("eval", "--scores", scores, "--trials", corpus / "trials.txt"), "scores.txt:2", "nan"
    )


def test_missing_or_folder_model_path(tmp_path, corpus):
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(_trial_files(corpus)) + "\n")
    for model in (tmp_path / "nonexistent.safetensors", tmp_path):
        common = ("--model", model, "--audio-root", corpus / "audio")
        one_line_error(
            xvec("embed", *common, "--list", listing, "-o", tmp_path / "e.safetensors"), str(model)
        )
        one_line_error(xvec("eval", *common, "--trials", corpus / "trials.txt"), str(model))
        one_line_error(xvec("export", model, "-o", tmp_path / "m.onnx"), str(model))
    assert not (tmp_path / "e.safetensors").exists()


@pytest.mark.parametrize("command", ["embed", "eval"])
def test_bad_device(tmp_path, corpus, tiny_checkpoint, tiny_site, command):
    import torch

    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(_trial_files(corpus)) + "\n")
    args = ["--list", listing, "-o", tmp_path / "e.safetensors"] if command == "embed" else []
    common = [command, "--model", tiny_checkpoint, "--audio-root", corpus / "audio"]
    if command == "eval":
        common += ["--trials", corpus / "trials.txt", "-o", tmp_path / "out"]
    result = xvec(*common, *args, "--device", "banana", site=tiny_site)
    one_line_error(result, "--device", "banana", "cpu")
    if not torch.cuda.is_available():
        result = xvec(*common, *args, "--device", "cuda", site=tiny_site)
        one_line_error(result, "cuda", "not available")
    assert not (tmp_path / "e.safetensors").exists() and not (tmp_path / "out").exists()


def test_parse_device():
    import torch

    from xvec.devices import parse_device
    from xvec.errors import XvecError

    assert parse_device("CPU") == torch.device("cpu")
    assert parse_device("auto").type in ("cpu", "cuda")
    for bad in ("banana", "cuda:", "cuda:-1", "cpu cuda", ""):
        with pytest.raises(XvecError, match="unknown device"):
            parse_device(bad)


def test_recipe_bad_device_names_the_field(tmp_path, corpus, tiny_site):
    path = recipe(tmp_path, corpus, extra='device = "banana"\n')
    one_line_error(xvec("train", path, site=tiny_site), "recipe.toml", "train.device", "banana")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("command", "option", "value", "fragment"),
    [
        ("eval", "--num-eval", "0", "--num-eval"),
        ("eval", "--eval-frames", "-5", "--eval-frames"),
        ("eval", "--max-seconds", "0.001", "--max-seconds"),
        ("eval", "--batch-size", "0", "--batch-size"),
        ("embed", "--num-eval", "0", "--num-eval"),
        ("embed", "--max-seconds", "0", "--max-seconds"),
        ("embed", "--batch-size", "-1", "--batch-size"),
    ],
)
def test_numeric_options_are_checked(
    tmp_path, corpus, tiny_checkpoint, tiny_site, command, option, value, fragment
):
    common = [command, "--model", tiny_checkpoint, "--audio-root", corpus / "audio"]
    if command == "eval":
        common += ["--trials", corpus / "trials.txt", "-o", tmp_path / "out"]
    else:
        common += ["--trials", corpus / "trials.txt", "-o", tmp_path / "e.safetensors"]
    if option in ("--num-eval", "--eval-frames"):
        common += ["--protocol", "vt-crops"]
    one_line_error(xvec(*common, option, value, site=tiny_site), fragment, value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "e.safetensors").exists()


def test_score_top_k_and_export_tolerance_are_checked(tmp_path, corpus):
    store = _store(tmp_path / "emb.safetensors", _good_vectors(corpus))
    result = _score(store, corpus, tmp_path, "--norm", "asnorm", "--cohort", store, "--top-k", "0")
    one_line_error(result, "--top-k", "0")
    one_line_error(xvec("export", store, "-o", tmp_path / "m.onnx", "--tolerance", "-1"),
                   "--tolerance")  # fmt: skip


def _resaved(source: Path, target: Path, raw: str) -> Path:
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(source)), str(target), metadata={"xvec": raw})
    return target


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "list"),
        ('{"format": "xvec-checkpoint", "format_version": 1}', "'model'"),
        ('{"format": "xvec-checkpoint", "model": {"name": 3}}', "'model'"),
    ],
    ids=["invalid-json", "list", "no-model", "bad-model"],
)
def test_bad_checkpoint_metadata(tmp_path, corpus, tiny_checkpoint, raw, fragment):
    bad = _resaved(tiny_checkpoint, tmp_path / "meta.safetensors", raw)
    one_line_error(_eval_with(bad, corpus), "meta.safetensors", fragment)
    one_line_error(xvec("export", bad, "-o", tmp_path / "m.onnx"), "meta.safetensors", fragment)


def test_bad_embeddings_metadata(tmp_path, corpus):
    from safetensors.numpy import save_file

    for raw, fragment in [("{oops", "not valid JSON"), ('"text"', "str")]:
        path = tmp_path / "emb.safetensors"
        save_file(_good_vectors(corpus), str(path), metadata={"xvec_embeddings": raw})
        one_line_error(_score(path, corpus, tmp_path), "emb.safetensors", fragment)


def test_score_with_mixed_dimensions_or_empty_cohort(tmp_path, corpus):
    vectors = _good_vectors(corpus)
    odd = list(vectors)[2]
    vectors[odd] = np.ones(5, np.float32)
    mixed = _store(tmp_path / "mixed.safetensors", vectors)
    one_line_error(_score(mixed, corpus, tmp_path), "mixed.safetensors", odd, "shape")

    good = _store(tmp_path / "good.safetensors", _good_vectors(corpus))
    empty = _store(tmp_path / "empty.safetensors", {})
    for norm in ("asnorm", "mean"):
        result = _score(good, corpus, tmp_path, "--norm", norm, "--cohort", empty)
        one_line_error(result, "empty.safetensors", "no embeddings")
    other = _store(tmp_path / "other.safetensors", _good_vectors(corpus, dim=4))
    result = _score(good, corpus, tmp_path, "--norm", "mean", "--cohort", other)
    one_line_error(result, "other.safetensors", "dimension 4")
    assert not (tmp_path / "s.txt").exists()


def test_plugin_exiting_on_import_is_a_warning(tmp_path):
    site = make_distribution_for(tmp_path, "import sys\nsys.exit(3)\n")
    result = xvec("models", site=site)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "ExitModel" in result.stderr and "xvec-exit" in result.stderr
    assert "SystemExit" in result.stderr
    assert "ResNetSE34L" in result.stdout


def make_distribution_for(tmp_path: Path, source: str) -> Path:
    from conftest import make_distribution

    return make_distribution(
        tmp_path / "site",
        "xvec-exit",
        {"xvec.models": {"ExitModel": "xvec_exit:ExitModel"}},
        {"xvec_exit": source},
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_audio_says_permission_denied(tmp_path, corpus, tiny_checkpoint, tiny_site):
    root, trials = _corpus_with(
        tmp_path, corpus, "locked.wav",
        lambda p: (soundfile.write(str(p), np.zeros(16000, np.float32), 16000), p.chmod(0)),
    )  # fmt: skip
    one_line_error(
        eval_model(tiny_checkpoint, trials, root, out=tmp_path / "out", site=tiny_site),
        "locked.wav",
        "permission denied",
    )


def test_permission_message_from_audio_reader(tmp_path, monkeypatch):
    from xvec import audio
    from xvec.errors import XvecError

    path = tmp_path / "locked.wav"
    soundfile.write(str(path), np.zeros(16000, np.float32), 16000)
    monkeypatch.setattr(audio.os, "access", lambda p, mode: False, raising=False)
    monkeypatch.setattr(audio.soundfile, "info", lambda p: (_ for _ in ()).throw(
        soundfile.LibsndfileError(2, "Error opening: ")))  # fmt: skip
    with pytest.raises(XvecError, match="permission denied") as info:
        audio.audio_info(path)
    assert "locked.wav" in str(info.value)


@pytest.mark.parametrize(
    ("package", "version", "hint"),
    [
        ("xvec-tiny'; touch /tmp/pwned; '", "0.1", None),
        ("xvec-tiny", "0.1'; touch /tmp/pwned; '", "pip install 'xvec-tiny'"),
        ("xvec-tiny", "0.1", "pip install 'xvec-tiny==0.1'"),
    ],
)
def test_install_hint_only_with_valid_names(tmp_path, corpus, tiny_checkpoint, package, version,
                                            hint):  # fmt: skip
    import json

    from safetensors import safe_open

    with safe_open(str(tiny_checkpoint), "pt") as handle:
        meta = json.loads(handle.metadata()["xvec"])
    meta["model"].update(package=package, package_version=version)
    bad = _resaved(tiny_checkpoint, tmp_path / "hint.safetensors", json.dumps(meta))
    message = one_line_error(_eval_with(bad, corpus), "hint.safetensors", "TinyModel")
    assert "touch" not in message
    if hint is None:
        assert "pip install" not in message
    else:
        assert hint in message


def test_eval_scores_writes_results_to_out_dir(tmp_path, corpus):
    import json

    scores = _scores_for(corpus / "trials.txt", tmp_path)
    result = xvec(
        "eval", "--scores", scores, "--trials", corpus / "trials.txt", "--out-dir", tmp_path / "D"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "D" / "result.json").read_text())
    assert summary["name"] == str(scores)
    assert f"{summary['eer']:.4f}" in result.stdout
    table = (tmp_path / "D" / "table.txt").read_text()
    assert f"{summary['eer']:.4f}" in table and "EER %" in table


def test_duplicate_and_self_trials_warn_once(tmp_path, corpus):
    lines = (corpus / "trials.txt").read_text().splitlines()
    first = lines[0].split()
    lines += [lines[0], lines[0], f"1 {first[1]} {first[1]}"]
    trials = tmp_path / "trials.txt"
    trials.write_text("\n".join(lines) + "\n")
    result = xvec("eval", "--scores", _scores_for(trials, tmp_path), "--trials", trials)
    assert result.returncode == 0, result.stderr
    warnings = [ln for ln in result.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 2, result.stderr
    assert any("2 trial(s) repeat" in w for w in warnings)
    assert any("1 trial(s) compare a file with itself" in w for w in warnings)
    clean = xvec("eval", "--scores", _scores_for(corpus / "trials.txt", tmp_path),
                 "--trials", corpus / "trials.txt")  # fmt: skip
    assert "warning" not in clean.stderr


def test_vt_crops_with_whole_files_embeds_files_of_different_lengths(corpus):
    import torch

    from xvec.embed import Protocol, embed_files

    class FirstSamples(torch.nn.Module):
        def forward(self, waveform: torch.Tensor) -> torch.Tensor:
            return torch.stack([waveform[:, :4].sum(1), waveform.abs().mean(1)], 1)

    files = _trial_files(corpus)
    lengths = {soundfile.info(str(corpus / "audio" / f)).frames for f in files}
    assert len(lengths) > 1
    proto = Protocol("vt-crops", eval_frames=0, num_eval=10)
    vectors = embed_files(FirstSamples(), corpus / "audio", files, proto, device="cpu")
    for name in files:
        audio = soundfile.read(str(corpus / "audio" / name), dtype="float32")[0]
        assert vectors[name].shape == (1, 2)
        assert np.isclose(vectors[name][0, 1], np.abs(audio).mean(), rtol=1e-4)


# damaged input named, not padded -------------------------------------------------------------


@requires_speechocean
@pytest.mark.parametrize("kept", [3000, 10000], ids=["3000-bytes", "first-page-only"])
def test_truncated_ogg_is_named_not_padded(tmp_path, corpus, tiny_checkpoint, tiny_site, kept):
    """A cut Ogg file used to embed as a short one, 'wrap-padded' with exit 0."""
    real = sorted((SPEECHOCEAN / "audio").glob("*/*.ogg"))[0].read_bytes()
    root, trials = _corpus_with(tmp_path, corpus, "cut.ogg", lambda p: p.write_bytes(real[:kept]))
    one_line_error(
        eval_model(tiny_checkpoint, trials, root, out=tmp_path / "out", site=tiny_site),
        "cut.ogg: audio file is damaged: decoded",
        "truncated?",
    )
    assert not (tmp_path / "out" / "scores.txt").exists()


def test_checkpoint_with_nan_weights_is_named_not_the_audio(
    tmp_path, corpus, tiny_checkpoint, tiny_site
):
    import torch
    from safetensors.torch import load_file, save_file

    from xvec.files import safetensors_metadata

    tensors = load_file(str(tiny_checkpoint))
    key = sorted(k for k in tensors if k.endswith("weight"))[0]
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    bad = tmp_path / "nan.safetensors"
    save_file(tensors, str(bad), metadata=safetensors_metadata(tiny_checkpoint.read_bytes()))
    line = one_line_error(_eval_with(bad, corpus, tiny_site), "nan.safetensors", f"'{key}'")
    assert "NaN or Inf" in line and ".wav" not in line


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        ("\n[loss]\nmargin = inf\n", ["'margin': inf is not a finite number"]),
        ("batch_size = 99999999999999999999\n", ["train.batch_size", "2147483647"]),
    ],
    ids=["margin-inf", "huge-batch"],
)
def test_recipe_numbers_that_would_fail_later(tmp_path, corpus, tiny_site, extra, fragments):
    path = recipe(tmp_path, corpus)
    text = path.read_text().replace("batch_size = 4\n", "")
    if extra.startswith("\n[loss]"):
        text = text.replace('name = "softmax"', 'name = "amsoftmax"\nmargin = inf')
    else:
        text = text.replace("[train]\n", f"[train]\n{extra}")
    path.write_text(text)
    one_line_error(xvec("train", path, site=tiny_site), "recipe.toml", *fragments)
    assert not (tmp_path / "run").exists()


def test_recipe_reports_every_mistake_at_once(tmp_path, corpus):
    path = recipe(tmp_path, corpus)
    text = path.read_text().replace("max_epoch = 1", "max_epoch = 1e400")
    path.write_text(text.replace('[model]\nname = "TinyModel"\n', ""))
    line = one_line_error(xvec("train", path), "recipe.toml: ", "field 'model': Field required")
    assert "field 'train.max_epoch'" in line


def test_list_encoding_error_line_and_repeated_lines(tmp_path):
    lines = [f"spk{i % 3} s/{i}.wav\n".encode() for i in range(60)]
    lines[40] = b"spk1 s/caf\xe9.wav\n"
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"".join(lines))
    one_line_error(xvec("count-classes", latin), "latin.txt:41:", "not UTF-8", "0xe9")

    repeated = tmp_path / "train.txt"
    repeated.write_text("id1 a.wav\nid2 b.wav\nid1 a.wav\nid2 b.wav\n")
    result = xvec("count-classes", repeated, "--plain")
    assert result.returncode == 0 and result.stdout.strip() == "2", result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"warning: {repeated}: 2 line(s) repeat an earlier line (first: line 3 repeats line 1);"
        " each file is used once"
    ]


def test_import_of_an_xvec_checkpoint_says_what_it_is(tmp_path, tiny_checkpoint):
    line = one_line_error(
        xvec("import", "vt", tiny_checkpoint, "-o", tmp_path / "out.safetensors"),
        f"{tiny_checkpoint}: is an xvec checkpoint (safetensors), not a PyTorch pickle",
        "use it directly",
    )
    assert "arbitrary code" not in line and not (tmp_path / "out.safetensors").exists()


def test_embeddings_of_the_wrong_rank_name_the_file(tmp_path, corpus):
    crops = {f: np.ones((3, 8), np.float32) for f in _trial_files(corpus)}
    store = _store(tmp_path / "crops.safetensors", crops)  # recorded as protocol "full"
    one_line_error(_score(store, corpus, tmp_path), "crops.safetensors:", "shape (3, 8)", "full")
    flat = _store(tmp_path / "flat.safetensors", _good_vectors(corpus), {"protocol": "vt-crops"})
    one_line_error(_score(flat, corpus, tmp_path), "flat.safetensors:", "shape (8,)", "vt-crops")


@pytest.mark.parametrize("kind", ["folder", "fifo", "symlink-loop"])
def test_listed_audio_that_is_not_a_regular_file(tmp_path, corpus, tiny_checkpoint, kind):
    root = tmp_path / "audio"
    root.mkdir()
    name = root / "x.wav"
    if kind == "folder":
        name.mkdir()
    elif kind == "fifo":
        os.mkfifo(name)  # reading it would block: refused before any audio is opened
    else:
        name.symlink_to(name)
    listing = tmp_path / "files.txt"
    listing.write_text("x.wav\n")
    result = xvec(
        "embed", "--model", tiny_checkpoint, "--audio-root", root, "--list", listing,
        "-o", tmp_path / "e.safetensors",
    )  # fmt: skip
    line = one_line_error(result, "files.txt", "x.wav is not a regular file")
    assert "not found" not in line


# --------------------------------------------------------------------------- outputs (issue 31)


def test_an_output_that_is_an_input_is_refused_before_any_work(
    tmp_path, corpus, tiny_checkpoint, tiny_site
):
    model = tmp_path / "m.safetensors"
    model.write_bytes(tiny_checkpoint.read_bytes())
    before = model.read_bytes()
    root, trials = corpus / "audio", corpus / "trials.txt"
    embed = ["embed", "-m", model, "--audio-root", root, "--trials", trials]
    one_line_error(xvec(*embed, "-o", model, site=tiny_site), str(model), "is also an input")
    one_line_error(
        xvec(*embed, "-o", model, "--force", site=tiny_site), "is also an input"
    )  # --force never replaces an input
    listed = read_trials(trials).files[0]
    one_line_error(
        xvec(*embed, "-o", root / listed, site=tiny_site), "is one of the listed input files"
    )
    one_line_error(
        xvec("export", model, "--format", "vt", "-o", model, site=tiny_site), "is also an input"
    )
    one_line_error(
        xvec("score", "-e", model, "-t", trials, "-o", trials, site=tiny_site), "is also an input"
    )
    assert model.read_bytes() == before
    assert read_trials(trials).files[0] == listed


def test_foreign_outputs_need_force(tmp_path, corpus, tiny_checkpoint, tiny_site):
    root, trials = corpus / "audio", corpus / "trials.txt"
    notes = tmp_path / "notes.safetensors"
    notes.write_text("my notes\n")
    embed = ["embed", "-m", tiny_checkpoint, "--audio-root", root, "--trials", trials, "-o", notes]
    line = one_line_error(xvec(*embed, site=tiny_site), "exists and is a file xvec did not write")
    assert "--force" in line
    assert notes.read_text() == "my notes\n"
    assert xvec(*embed, "--force", site=tiny_site).returncode == 0
    trained = tmp_path / "trained.safetensors"
    trained.write_bytes(tiny_checkpoint.read_bytes())
    vt_file = tmp_path / "x.model"
    assert xvec("export", tiny_checkpoint, "--format", "vt", "-o", vt_file, site=tiny_site)
    one_line_error(
        xvec("import", "vt", vt_file, "-o", trained, "--model", "TinyModel", site=tiny_site),
        "is an xvec checkpoint, not an imported xvec checkpoint",
    )
    assert trained.read_bytes() == tiny_checkpoint.read_bytes()
