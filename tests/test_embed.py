"""Embedding extraction: batched results equal one-by-one results; an interrupted run resumes."""

from __future__ import annotations

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
    names = _voices(tmp_path, [1.0, 0.98])  # 2 % apart: batched together at the default 5 %
    model = _model().eval()
    whole = embed_files(model, tmp_path, names[:1], Protocol(length_tolerance=0.0), device="cpu")
    exact = embed_files(model, tmp_path, names, Protocol(length_tolerance=0.0), device="cpu")
    trimmed = embed_files(model, tmp_path, names, Protocol(length_tolerance=0.05), device="cpu")
    np.testing.assert_allclose(exact[names[0]], whole[names[0]], rtol=1e-5, atol=1e-6)
    assert np.abs(trimmed[names[0]] - whole[names[0]]).max() > 1e-4  # last 0.02 s dropped
    with pytest.raises(XvecError, match="length tolerance"):
        Protocol(length_tolerance=1.0)


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
