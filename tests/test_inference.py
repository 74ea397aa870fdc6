"""prepare_for_inference: BatchNorm folded only where exact, embeddings unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xvec import registry
from xvec.audio import read_audio
from xvec.inference import foldable_pairs, prepare_for_inference

from conftest import SPEECHOCEAN, requires_speechocean

CPU = torch.device("cpu")
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _randomise_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that a wrong fold shows."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, NORMS):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
            module.running_var.copy_(0.5 + 1.5 * torch.rand(size, generator=generator))
            if module.affine:
                module.weight.data.copy_(0.5 + torch.rand(size, generator=generator))
                module.bias.data.copy_(0.4 * torch.rand(size, generator=generator) - 0.2)
    return model.eval()


def _norms(model: nn.Module) -> int:
    return sum(isinstance(module, NORMS) for module in model.modules())


class ConvNorm(nn.Module):
    """conv -> norm (foldable), and a conv whose output also feeds a residual (not)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv1d(1, 4, 3, padding=1)
        self.first_norm = nn.BatchNorm1d(4)
        self.second = nn.Conv1d(4, 4, 3, padding=1)
        self.second_norm = nn.BatchNorm1d(4)
        self.third = nn.Conv1d(4, 4, 1)
        self.third_norm = nn.BatchNorm1d(4)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.first_norm(self.first(wave.unsqueeze(1)))
        y = self.second(x)
        x = self.second_norm(y) + y  # y has a second reader: folding would change it
        x = torch.relu_(self.third(x))  # in place between conv and norm: not foldable
        return self.third_norm(x).mean(-1)


def test_only_a_norm_that_alone_reads_a_convolution_is_folded():
    model = _randomise_norms(ConvNorm())
    probe = torch.randn(1, 400)
    pairs = foldable_pairs(model, probe)
    assert pairs == [(model.first, model.first_norm)]
    prepared = prepare_for_inference(model, CPU)
    assert isinstance(prepared.first_norm, nn.Identity)
    assert isinstance(prepared.second_norm, nn.BatchNorm1d)
    assert isinstance(prepared.third_norm, nn.BatchNorm1d)
    wave = torch.randn(2, 1000, dtype=torch.float64)
    with torch.no_grad():
        reference = model.double()(wave)
        got = prepared.double()(wave)
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-6)  # float32 weights
    assert isinstance(model.first_norm, nn.BatchNorm1d)  # the caller's model is untouched


def test_a_model_the_probe_cannot_run_is_returned_as_it_is():
    class TakesFeatures(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(40, 8, 3)
            self.norm = nn.BatchNorm1d(8)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.norm(self.conv(features)).mean(-1)  # [batch, 40, frames] only

    model = TakesFeatures()
    assert prepare_for_inference(model, CPU) is model


def test_the_probe_does_not_reach_the_callers_hooks():
    model = _randomise_norms(ConvNorm())
    seen = []
    model.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape))
    prepared = prepare_for_inference(model, CPU)
    assert seen == []
    with torch.no_grad():
        prepared(torch.randn(3, 800))
    assert seen == [torch.Size([3, 800])]  # the prepared copy keeps them


@requires_speechocean
@pytest.mark.parametrize(
    ("name", "options", "folded"),
    [
        # a dense block's input feeds a norm and the concatenation (narrow: a fast test)
        ("CAMPPlus", {"growth_rate": 8, "init_channels": 32, "head_channels": 8}, 66),
        pytest.param("WeSpeakerResNet", {"m_channels": 16}, 36, marks=pytest.mark.slow),
        # conv -> ReLU (in place) -> norm in the first conv of each block
        pytest.param("ResNetSE34L", {}, 20, marks=pytest.mark.slow),
        pytest.param("ECAPA-TDNN", {}, 0, marks=pytest.mark.slow),  # conv -> ReLU -> norm
    ],
)
def test_real_speech_embeddings_are_unchanged(name, options, folded):
    torch.manual_seed(0)
    model = _randomise_norms(registry.build("model", name, options))
    files = sorted((SPEECHOCEAN / "audio" / "SPEAKER0001").glob("*.ogg"))[:1]
    waves = [torch.from_numpy(read_audio(path))[None] for path in files]
    prepared = prepare_for_inference(model, CPU)
    assert _norms(model) - _norms(prepared) == folded
    with torch.inference_mode():
        for wave in waves:
            reference, got = model(wave), prepared(wave)
            scale = float(reference.abs().max())
            assert float((got - reference).abs().max()) <= 1e-5 * max(1.0, scale)
            assert np.isfinite(got.numpy()).all()
