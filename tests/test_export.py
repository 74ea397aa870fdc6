"""Export (ONNX, TorchScript) of every built-in family, and the public Python API."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Collection

import numpy as np
import pytest
import soundfile
import torch

import xvec
from xvec import export, registry
from xvec.checkpoint import save_checkpoint
from xvec.errors import XvecError
from xvec.export import export_model
from xvec.models import campplus

from conftest import ROOT, run_cli

# Small members of each family: export speed does not depend on width, correctness does not either.
FAMILIES = {
    "ResNetSE34L": {"num_filters": [8, 8, 16, 16], "layers": [1, 1, 1, 1], "nOut": 32},
    "ResNetSE34V2": {"num_filters": [8, 8, 16, 16], "layers": [1, 1, 1, 1], "nOut": 32},
    "VGGVox40": {"nOut": 32},
    "RawNet3": {"C": 64, "nOut": 32},
    "ECAPA-TDNN": {"channels": 64, "embedding_size": 32},
    "TDNN": {"hidden": 64, "stats_dim": 128, "embedding_size": 32},
    "WeSpeakerResNet": {"depth": 18, "m_channels": 8, "embed_dim": 32},
    "CAMPPlus": {"growth_rate": 8, "init_channels": 32, "embed_dim": 32},
    "SpeechBrainECAPA": {
        "channels": [64, 64, 64, 64, 192],
        "attention_channels": 16,
        "se_channels": 16,
        "lin_neurons": 32,
    },
}


def families(fast: Collection[str]) -> list:
    """Every family, as parameters; those not in ``fast`` are marked slow (full run only)."""
    slow = pytest.mark.slow
    return [name if name in fast else pytest.param(name, marks=slow) for name in FAMILIES]


def small_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        if name == "CAMPPlus":  # 2 dense layers a block, not 12/24/16: same ops, 3x faster export
            patch.setattr(campplus, "DENSE_BLOCKS", ((2, 3, 1), (2, 3, 2), (2, 3, 2)))
        model = registry.build("model", name, FAMILIES[name]).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval-mode export is checked
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", families(fast=["TDNN"]))
def test_onnx_export_matches_pytorch(tmp_path, name):
    pytest.importorskip("onnxruntime")
    report = export_model(small_model(name), tmp_path / "m.onnx", "onnx")
    assert report.max_abs_diff <= 1e-4 and (tmp_path / "m.onnx").stat().st_size > 0
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["embedding_dim"] == "32" and props["sample_rate"] == "16000"


def test_onnx_export_tries_the_model_s_own_exporter_first_then_the_other(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    tried = []

    def failing(exporter):
        def fail(model, example):
            tried.append(exporter)
            raise RuntimeError(f"{exporter} cannot capture it")

        return fail

    monkeypatch.setattr(export, "_dynamo_onnx", failing("dynamo"))
    rawnet = small_model("RawNet3")
    # RawNet3 names the TorchScript exporter: dynamo (20 s to fail on it) is never tried
    assert export_model(rawnet, tmp_path / "a.onnx").max_abs_diff <= 1e-4
    assert tried == []
    # one that names dynamo falls back to TorchScript when dynamo fails
    rawnet.onnx_exporter = "dynamo"
    assert export_model(rawnet, tmp_path / "b.onnx").max_abs_diff <= 1e-4
    assert tried == ["dynamo"]
    monkeypatch.setattr(export, "_torchscript_onnx", failing("torchscript"))
    with pytest.raises(XvecError, match="dynamo cannot capture it; the torchscript exporter fails"):
        export_model(rawnet, tmp_path / "c.onnx")
    assert tried == ["dynamo", "dynamo", "torchscript"]
    assert not (tmp_path / "c.onnx").exists()
    rawnet.onnx_exporter = "tflite"
    with pytest.raises(XvecError, match=r"RawNet3\.onnx_exporter is 'tflite'; .* or torchscript"):
        export_model(rawnet, tmp_path / "d.onnx")


@pytest.mark.parametrize("name", families(fast=[n for n in FAMILIES if n != "CAMPPlus"]))
def test_torchscript_export_matches_pytorch(tmp_path, name):
    report = export_model(small_model(name), tmp_path / "m.pt", "torchscript")
    assert report.max_abs_diff <= 1e-4
    module = torch.jit.load(str(tmp_path / "m.pt"))
    longer = torch.randn(1, 40000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(module(longer), small_model(name)(longer), rtol=1e-4, atol=1e-4)


def test_a_failed_verification_removes_the_file(tmp_path):
    class Drifting(torch.nn.Module):
        """Its output changes between calls, so no export can match it."""

        embedding_dim = 2

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, wave):
            self.calls += 1
            return wave[:, :2] * self.calls

    with pytest.raises(XvecError, match="differs from PyTorch"):
        export_model(Drifting(), tmp_path / "m.pt", "torchscript")
    assert not (tmp_path / "m.pt").exists()


def test_export_command_prints_the_difference(tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    path = save_checkpoint(tmp_path / "m.safetensors", small_model("TDNN"), "TDNN")
    result = run_cli("export", path, "-o", tmp_path / "m.onnx")
    assert result.returncode == 0, result.stderr
    assert "max |difference|" in result.stdout and (tmp_path / "m.onnx").is_file()
    # The exporter's optional-package log lines (logged once per process: see the next test).
    assert not [r for r in caplog.records if "torchvision" in r.getMessage()]


@pytest.mark.slow
def test_export_command_in_a_fresh_process_logs_nothing_on_stderr(tmp_path):
    """A fresh interpreter: the exporter's first use logs 'torchvision is not installed'."""
    pytest.importorskip("onnxruntime")
    path = save_checkpoint(tmp_path / "m.safetensors", small_model("TDNN"), "TDNN")
    result = subprocess.run(
        [sys.executable, "-m", "xvec", "export", str(path), "-o", str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "max |difference|" in result.stdout and (tmp_path / "m.onnx").is_file()
    assert "torchvision" not in result.stderr  # the exporter's optional-package log lines


def _write_voices(folder, seconds=(1.5, 2.0, 0.3)):
    rng = np.random.default_rng(1)
    paths = []
    for index, length in enumerate(seconds):
        t = np.arange(int(length * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (120 + 40 * index) * t) + 0.01 * rng.standard_normal(t.size)
        path = folder / f"v{index}.wav"
        soundfile.write(str(path), wave.astype(np.float32), 16000)
        paths.append(path)
    return paths


def test_python_api_embeds_and_scores(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", small_model("ResNetSE34L"), "ResNetSE34L")
    a, b, short = _write_voices(tmp_path)
    enc = xvec.load(path, device="cpu")
    assert isinstance(enc, xvec.Encoder) and enc.embedding_dim == 32
    single = enc.embed(a)
    batch = enc.embed_batch([a, b, short])
    assert single.shape == (32,) and batch.shape == (3, 32)
    np.testing.assert_allclose(batch[0], single, rtol=1e-5, atol=1e-6)
    waveform, _ = soundfile.read(str(a), dtype="float32")
    np.testing.assert_allclose(enc.embed(waveform), single, rtol=1e-5, atol=1e-6)
    same, other = enc.score(a, a), enc.score(a, b)
    assert same == pytest.approx(1.0, abs=1e-5) and other < same
    crops = xvec.load(path, protocol="vt-crops", eval_frames=100, num_eval=3, device="cpu")
    assert crops.embed(b).shape == (3, 32)
    assert crops.score(a, a) > crops.score(a, b)  # minus a mean crop distance


def test_public_names_are_listed():
    assert set(xvec.__all__) == {"Encoder", "load", "__version__"}
    with pytest.raises(AttributeError):
        _ = xvec.not_a_name


def test_readme_python_example_runs(tmp_path):
    """The README's Python block, with its file names pointed at real files."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block, "README.md has no ```python example"
    path = save_checkpoint(tmp_path / "model.safetensors", small_model("TDNN"), "TDNN")
    a, b, _ = _write_voices(tmp_path)
    code = (
        block.group(1)
        .replace('"runs/demo/best.safetensors"', repr(str(path)))
        .replace('"a.wav"', repr(str(a)))
        .replace('"b.wav"', repr(str(b)))
    )
    exec(compile(code, "README.md", "exec"), {})


@pytest.mark.parametrize(
    ("name", "loss", "params"),
    [
        ("ResNetSE34L", "amsoftmax", {"margin": 0.2, "scale": 30}),
        ("ResNetSE34V2", "angleproto", {}),
        ("RawNet3", "aamsoftmax", {"margin": 0.2, "scale": 30}),
    ],
)
def test_vt_export_is_read_back_by_import_vt_without_flags(tmp_path, name, loss, params):
    model = small_model(name)
    head = registry.build("loss", loss, params, embedding_dim=model.embedding_dim, num_classes=7)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model, name, loss=head, loss_name=loss)
    vt_file = tmp_path / "m.model"
    exported = run_cli("export", ckpt, "-o", vt_file, "--format", "vt")
    assert exported.returncode == 0, exported.stderr
    assert "vt ->" in exported.stdout
    state = torch.load(vt_file, weights_only=True)  # VT's SpeakerNet state dict
    assert {k.split(".")[0] for k in state} == {"__S__", "__L__"}
    back = tmp_path / "back.safetensors"
    imported = run_cli("import", "vt", vt_file, "-o", back)
    assert imported.returncode == 0, imported.stderr
    wave = (0.1 * np.random.default_rng(0).standard_normal((1, 24000))).astype(np.float32)
    original, again = xvec.load(ckpt, device="cpu"), xvec.load(back, device="cpu")
    np.testing.assert_array_equal(again._embed_waveform(wave[0]), original._embed_waveform(wave[0]))


def test_vt_export_refuses_other_architectures(tmp_path):
    ckpt = save_checkpoint(tmp_path / "t.safetensors", small_model("TDNN"), "TDNN")
    with pytest.raises(XvecError, match="not a voxceleb_trainer architecture"):
        from xvec.export import export_checkpoint

        export_checkpoint(ckpt, tmp_path / "t.model", "vt")
    assert not (tmp_path / "t.model").exists()
