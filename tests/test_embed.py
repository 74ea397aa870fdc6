"""Embedding extraction: batched results equal one-by-one results; an interrupted run resumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from xvec import registry
from xvec.checkpoint import save_checkpoint
from xvec.embed import EmbedStats, Protocol, embed_files
from xvec.errors import XvecError

from conftest import run_cli


def _voices(folder, lengths):
    rng = np.random.default_rng(3)
    names = []
    for index, seconds in enumerate(lengths):
        t = np.arange(int(seconds * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (110 + 30 * index) * t) + 0.02 * rng.standard_normal(t.size)
        name = f"v{index}.wav"
        soundfile.write(str(folder / name), wave.astype(np.float32), 16000)
        names.append(name)
    return names


def _model():
    torch.manual_seed(0)
    return registry.build("model", "TDNN", {"hidden": 32, "stats_dim": 64, "embedding_size": 16})


def test_batches_equal_single_files_and_done_files_are_not_recomputed(tmp_path):
    names = _voices(tmp_path, [1.0, 1.0, 1.0, 2.0, 0.3])
    model = _model().eval()
    exact = Protocol(length_tolerance=0.0)
    batched = embed_files(model, tmp_path, names, exact, batch_size=8, device="cpu")
    for name in names:
        alone = embed_files(model, tmp_path, [name], exact, batch_size=1, device="cpu")
        np.testing.assert_allclose(batched[name], alone[name], rtol=1e-5, atol=1e-6)
    stats = EmbedStats()
    again = embed_files(
        model,
        tmp_path,
        names,
        exact,
        device="cpu",
        done={n: batched[n] for n in names[:3]},
        stats=stats,
    )
    assert stats.computed == 2 and set(again) == set(names)
    assert stats.short_files == 1 and "0.5 s" in " ".join(stats.notes)


def test_length_tolerance_trims_within_a_batch_and_zero_keeps_files_whole(tmp_path):
    names = _voices(tmp_path, [1.0, 0.98])  # 2 % apart: batched together (trimmed) at 0.05
    model = _model().eval()
    whole = embed_files(model, tmp_path, names[:1], Protocol(length_tolerance=0.0), device="cpu")
    exact = embed_files(model, tmp_path, names, Protocol(length_tolerance=0.0), device="cpu")
    trimmed = embed_files(model, tmp_path, names, Protocol(length_tolerance=0.05), device="cpu")
    np.testing.assert_allclose(exact[names[0]], whole[names[0]], rtol=1e-5, atol=1e-6)
    assert np.abs(trimmed[names[0]] - whole[names[0]]).max() > 1e-4  # last 0.02 s dropped
    with pytest.raises(XvecError, match=r"length_tolerance must be in \[0, 1\)"):
        Protocol(length_tolerance=1.0)


def test_bf16_is_an_opt_in_near_the_exact_embedding_and_recorded(tmp_path):
    names = _voices(tmp_path, [1.0, 2.0])
    model = _model().eval()
    exact = embed_files(model, tmp_path, names, Protocol(), device="cpu")
    fast = embed_files(model, tmp_path, names, Protocol(precision="bf16"), device="cpu")
    for name in names:
        a, b = exact[name], fast[name]
        cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert cosine > 0.999 and not np.array_equal(a, b)
    with pytest.raises(XvecError, match="precision 'fp16': choose one of fp32, bf16"):
        Protocol(precision="fp16")  # type: ignore[arg-type]
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(names) + "\n")
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", model, "TDNN")
    output = tmp_path / "emb.safetensors"
    done = run_cli(
        "embed", "--model", checkpoint, "--list", listing, "--audio-root", tmp_path,
        "-o", output, "--precision", "bf16",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    from xvec.embed import EmbeddingStore

    stored = EmbeddingStore.load(output)
    assert stored.meta["precision"] == "bf16"
    np.testing.assert_array_equal(stored.vectors[names[1]], fast[names[1]])


def test_interrupted_embed_keeps_its_work_and_resumes(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    names = _voices(audio, [3.0, 2.5, 2.0, 1.5])
    bad = audio / "bad.wav"  # valid header, NaN samples: fails when read, after the others
    soundfile.write(str(bad), np.full(9000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join([*names, "bad.wav"]) + "\n")
    model = save_checkpoint(tmp_path / "m.safetensors", _model(), "TDNN")
    output = tmp_path / "emb.safetensors"
    command = ["embed", "--model", model, "--list", listing]
    command += ["--audio-root", audio, "-o", output, "--batch-size", "1"]
    failed = run_cli(*command)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "bad.wav" in failed.stderr and "4 embeddings computed so far are kept" in failed.stderr
    assert not output.exists() and output.with_name("emb.safetensors.partial").is_file()
    soundfile.write(str(bad), 0.1 * np.ones(9000, dtype=np.float32), 16000)
    resumed = run_cli(*command)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: 4 embeddings" in resumed.stderr and "(1 computed" in resumed.stdout
    assert not output.with_name("emb.safetensors.partial").exists()
    from xvec.embed import EmbeddingStore

    assert set(EmbeddingStore.load(output).vectors) == {*names, "bad.wav"}


def test_vt_crops_compute_repeated_crops_once_with_the_same_embeddings(tmp_path):
    # 0.5 s is shorter than a 1 s crop: padded one sample past it (as VT does), its 4 crops
    # start at samples 0, 0, 0, 1, so 2 are distinct; 3 s gives 4 distinct crops
    names = _voices(tmp_path, [0.5, 3.0])
    model = _model().eval()
    crops = Protocol("vt-crops", eval_frames=100, num_eval=4)
    rows = []
    hook = model.register_forward_hook(lambda _m, args, _o: rows.append(args[0].shape[0]))
    result = embed_files(model, tmp_path, names, crops, batch_size=8, device="cpu")
    hook.remove()
    assert sum(rows) == 2 + 4  # not 8: the short file's repeated crops ran once
    for name in names:
        audio, _ = soundfile.read(str(tmp_path / name), dtype="float32")
        direct = crops.file_input(audio)[0]
        with torch.inference_mode():
            expected = model(torch.from_numpy(direct)).numpy()
        assert result[name].shape == (4, 16)
        np.testing.assert_allclose(result[name], expected, rtol=1e-5, atol=1e-6)


def test_cpu_streams_give_the_embeddings_of_one_stream(tmp_path, monkeypatch):
    import xvec.embed as embed

    names = _voices(tmp_path, [1.0, 1.2, 1.4, 1.6, 1.8])
    model = _model().eval()
    exact = Protocol(length_tolerance=0.0)
    monkeypatch.setattr(embed, "cpu_streams", lambda device: (1, 2))
    one = embed_files(model, tmp_path, names, exact, batch_size=1, device="cpu")
    monkeypatch.setattr(embed, "cpu_streams", lambda device: (3, 1))
    three = embed_files(model, tmp_path, names, exact, batch_size=1, device="cpu")
    for name in names:
        np.testing.assert_allclose(three[name], one[name], rtol=1e-5, atol=1e-6)


def test_streams_keep_order_and_finish_work_before_a_read_error():
    import threading

    from xvec.embed import _computed_in_order

    def items():
        yield from range(5)
        raise XvecError("bad.wav: unreadable")

    threads: set[int] = set()

    def compute(item):
        threads.add(threading.get_ident())
        return item * 10

    got = []
    with pytest.raises(XvecError, match=r"bad\.wav"):
        for value in _computed_in_order(compute, items(), streams=2, threads=1):
            got.append(value)
    assert got == [0, 10, 20, 30, 40]  # every item read before the error was computed and kept
    assert threading.get_ident() not in threads


# --- the default is exact: real speech of close but different lengths ------------------------

SPEECH = Path("/work/shared/data/speechocean762/audio")
# Pairs within 5 % of each other's length (0.05 used to batch and trim them), one pair of equal
# length (batched together by default), with speakers repeated so trials have targets.
CLOSE_PAIRS = [
    ("SPEAKER0003/000030175.ogg", "SPEAKER0005/000050174.ogg"),  # 30992 / 31072 samples
    ("SPEAKER0005/000050049.ogg", "SPEAKER0001/000010106.ogg"),  # 34064 / 34080
    ("SPEAKER0005/000050083.ogg", "SPEAKER0006/000060113.ogg"),  # 38960 / 39040
]
EQUAL_PAIR = ("SPEAKER0001/000010075.ogg", "SPEAKER0006/000060136.ogg")  # 41440 each
SPEECH_FILES = [name for pair in [*CLOSE_PAIRS, EQUAL_PAIR] for name in pair]
EXACT = 1e-5  # max |difference| from embedding each file alone


@pytest.fixture(scope="module")
def speech() -> Path:
    if not all((SPEECH / name).is_file() for name in SPEECH_FILES):
        pytest.skip(f"needs the speechocean762 audio in {SPEECH}")
    from xvec.audio import audio_info

    lengths = {name: audio_info(SPEECH / name).frames_at(16000) for name in SPEECH_FILES}
    for first, second in CLOSE_PAIRS:
        shorter, longer = sorted((lengths[first], lengths[second]))
        assert shorter < longer <= shorter / 0.95  # close but different
    assert lengths[EQUAL_PAIR[0]] == lengths[EQUAL_PAIR[1]]
    return SPEECH


@pytest.fixture(scope="module")
def speech_checkpoint(tmp_path_factory) -> Path:
    """The small TDNN with its embedding layer scaled so that embeddings are about 1 in size:
    the 1e-5 bound is then relative to the embedding, as for trained models."""
    model = _model()
    with torch.no_grad():
        model.segment6.weight.mul_(10.0)
        model.segment6.bias.mul_(10.0)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "m.safetensors", model, "TDNN")


@pytest.fixture(scope="module")
def alone(speech, speech_checkpoint) -> dict[str, np.ndarray]:
    """Each file's embedding computed by itself: the whole-utterance reference."""
    from xvec.checkpoint import load_model

    model = load_model(speech_checkpoint)
    return {
        name: embed_files(model, speech, [name], batch_size=1, device="cpu")[name]
        for name in SPEECH_FILES
    }


def _largest_difference(got: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(got[name] - reference[name]).max()) for name in reference)


def test_embed_cli_default_gives_whole_file_embeddings(tmp_path, speech, speech_checkpoint, alone):
    from xvec.embed import EmbeddingStore

    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(SPEECH_FILES) + "\n")
    output = tmp_path / "emb.safetensors"
    command = ["embed", "--model", speech_checkpoint, "--list", listing, "--audio-root", speech]
    result = run_cli(*command, "-o", output, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "trimmed" not in result.stderr
    assert _largest_difference(EmbeddingStore.load(output).vectors, alone) <= EXACT


def test_encoder_embed_batch_gives_whole_file_embeddings(speech, speech_checkpoint, alone):
    import xvec

    encoder = xvec.load(speech_checkpoint, device="cpu")
    batched = encoder.embed_batch([speech / name for name in SPEECH_FILES])
    got = dict(zip(SPEECH_FILES, batched, strict=True))
    assert _largest_difference(got, alone) <= EXACT
    single = encoder.embed(speech / EQUAL_PAIR[1])
    assert np.abs(single - alone[EQUAL_PAIR[1]]).max() <= EXACT


def test_eval_cli_default_scores_whole_file_embeddings(tmp_path, speech, speech_checkpoint, alone):
    from xvec.scoring import read_scores

    a1, a2 = CLOSE_PAIRS[0]
    b1, b2 = CLOSE_PAIRS[1]
    c1, c2 = CLOSE_PAIRS[2]
    e1, e2 = EQUAL_PAIR
    trials = [(1, a2, b1), (1, b1, c1), (1, a2, c1), (0, a1, a2), (0, b2, c2), (0, e1, e2)]
    trials.append((1, e1, b2))  # SPEAKER0001 twice
    path = tmp_path / "trials.txt"
    path.write_text("".join(f"{label} {enroll} {test}\n" for label, enroll, test in trials))
    command = ["eval", "--model", speech_checkpoint, "--trials", path, "--audio-root", speech]
    result = run_cli(*command, "-o", tmp_path / "out", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    scores, _, _ = read_scores(tmp_path / "out" / "scores.txt")

    def cosine(first: str, second: str) -> float:
        x, y = alone[first], alone[second]
        return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))

    expected = [cosine(enroll, test) for _, enroll, test in trials]
    assert np.abs(scores - expected).max() <= EXACT


@pytest.mark.parametrize("architecture", ["ResNetSE34L", "ResNetSE34V2"])
def test_models_that_ignore_padding_batch_files_of_different_lengths_exactly(
    speech, architecture, monkeypatch
):
    """The default path zero-pads files of close lengths into one batch for a model with
    ``exact_padding`` (ResNetSE34L; V2's padded forward is switched on here); each embedding
    still equals the model's forward on the file alone."""
    from xvec.audio import read_audio

    torch.manual_seed(0)
    model = registry.build("model", architecture, {"nOut": 64}).eval()
    monkeypatch.setattr(type(model), "exact_padding", True)
    for module in model.modules():  # eval batch norms that are not the identity
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        alone = {
            name: model(torch.from_numpy(read_audio(speech / name))[None])[0].numpy()
            for name in SPEECH_FILES
        }
    batch_lengths: list[list[int]] = []
    padded_forward = type(model).forward_padded

    def recording(self, waveform, lengths):
        batch_lengths.append(lengths.tolist())
        return padded_forward(self, waveform, lengths)

    monkeypatch.setattr(type(model), "forward_padded", recording)
    got = embed_files(model, speech, SPEECH_FILES, device="cpu")
    assert any(len(set(lengths)) > 1 for lengths in batch_lengths)  # padded, not grouped
    assert sorted(n for lengths in batch_lengths for n in lengths) == sorted(
        read_audio(speech / name).shape[0] for name in SPEECH_FILES
    )
    scale = max(float(np.abs(vector).max()) for vector in alone.values())
    assert _largest_difference(got, alone) <= EXACT * scale


def test_length_tolerance_is_an_opt_in_that_trims_and_says_so(
    tmp_path, speech, speech_checkpoint, alone
):
    from xvec.embed import EmbeddingStore

    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(SPEECH_FILES) + "\n")
    output = tmp_path / "emb.safetensors"
    command = ["embed", "--model", speech_checkpoint, "--list", listing, "--audio-root", speech]
    command += ["-o", output, "--device", "cpu", "--length-tolerance", "0.05"]
    result = run_cli(*command)
    assert result.returncode == 0, result.stderr
    assert "3 file(s) were trimmed to the shortest file of their batch" in result.stderr
    assert "(up to 0.3 % of a file dropped, length tolerance 0.05)" in result.stderr
    vectors = EmbeddingStore.load(output).vectors
    for pair in CLOSE_PAIRS:  # the longer file of each pair lost its last samples
        changed = max(float(np.abs(vectors[name] - alone[name]).max()) for name in pair)
        assert changed > 10 * EXACT  # measured 3.7e-4 to 6.7e-4
    equal = {name: alone[name] for name in EQUAL_PAIR}
    assert _largest_difference(vectors, equal) <= EXACT  # nothing to trim: still whole
    help_text = " ".join(run_cli("embed", "--help").stdout.replace("│", " ").split())
    assert "Above 0 trades exactness for batching" in help_text


def test_a_killed_embed_keeps_what_it_saved_and_the_rerun_reuses_it(tmp_path):
    """A kill runs no handler: only the periodic saves (every 30 s in the CLI) survive it."""
    from xvec.embed import EmbeddingStore
    from xvec.workflows.embed import embed_to_file

    audio = tmp_path / "audio"
    audio.mkdir()
    names = _voices(audio, [3.0, 2.5, 2.0, 1.5])
    model = save_checkpoint(tmp_path / "m.safetensors", _model(), "TDNN")
    output = tmp_path / "emb.safetensors"
    seen = []

    def killed_after_two(advance: int, total: int) -> None:
        seen.append(advance)
        if len(seen) == 2:
            raise SystemExit(137)  # like SIGKILL: no except clause of xvec's runs

    with pytest.raises(SystemExit):
        embed_to_file(
            model,
            audio,
            names,
            output,
            batch_size=1,
            progress=killed_after_two,
            checkpoint_every=1e-9,
        )
    partial = EmbeddingStore.load(output.with_name(output.name + ".partial"))
    assert 1 <= len(partial.vectors) <= 2 and not output.exists()
    rerun = embed_to_file(model, audio, names, output, batch_size=1)
    assert rerun.resumed == len(partial.vectors) and rerun.count == 4
    alone = embed_to_file(model, audio, names, tmp_path / "alone.safetensors", batch_size=1)
    again, straight = EmbeddingStore.load(output).vectors, EmbeddingStore.load(alone.output).vectors
    assert all(np.array_equal(again[name], straight[name]) for name in names)
