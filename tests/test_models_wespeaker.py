"""WeSpeaker's ResNet and CAM++, and the Kaldi fbank they read, against WeSpeaker's own outputs.

The fixtures come from WeSpeaker's and torchaudio's code (``tests/fixtures/wespeaker/
make_fixtures.py`` and ``tests/fixtures/make_kaldi_fbank.py``, run with torch/torchaudio 2.11.0):
the Kaldi fbank of synthetic signals, WeSpeaker-saved state dicts of small random models and
WeSpeaker's inference embeddings of two synthetic signals, and the default models' sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from xvec import registry
from xvec.errors import XvecError
from xvec.features import KaldiFbank, kaldi_fbank, kaldi_mel_banks, kaldi_window
from xvec.models.campplus import CAMPPlus, CAMPPlusParams
from xvec.models.wespeaker_resnet import RESNET_LAYOUTS, WeSpeakerResNet, WeSpeakerResNetParams

FIXTURES = Path(__file__).parent / "fixtures"
KALDI = FIXTURES / "kaldi_fbank_torchaudio_2_11_0.safetensors"
WESPEAKER = FIXTURES / "wespeaker"
SIGNALS = [torch.from_numpy(np.load(FIXTURES / "vt_generated" / f"signal{i}.npy")) for i in (1, 2)]
MODELS = {
    "resnet34_m2": "WeSpeakerResNet",
    "resnet50_m1_two_emb": "WeSpeakerResNet",
    "campplus_small": "CAMPPlus",
}
CLASSES = {"WeSpeakerResNet": WeSpeakerResNet, "CAMPPlus": CAMPPlus}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- Kaldi fbank ------------------------------------------------------------------------------


def kaldi_reference() -> dict[str, torch.Tensor]:
    return load_file(str(KALDI))


def test_kaldi_fixture_was_made_by_torchaudio_2_11_0() -> None:
    with safe_open(str(KALDI), "pt") as handle:
        assert handle.metadata()["torchaudio"].startswith("2.11.0")


# The references are torchaudio's Kaldi fbank in float64, so they hold on every CPU: xvec in
# float64 (window and mel filters made in float64 too) equals them to 0 with AVX-512, 1.5e-13
# with ATEN_CPU_CAPABILITY=avx2 and 2e-14 with =default (no SIMD). xvec's default float32 path
# differs by float32 rounding, which depends on the CPU's kernels: measured up to 1.6e-5
# relative (log energies of 10-22) on each of those code paths; the bound is 6x that.
KALDI_FLOAT64_BOUND = 1e-9
KALDI_FLOAT32_RELATIVE_BOUND = 1e-4


def float64_fbank(wave: torch.Tensor, window: str, n_mels: int = 80) -> torch.Tensor:
    """xvec's Kaldi fbank of ``[batch, samples]`` computed in float64 throughout."""
    banks = kaldi_mel_banks(n_mels, 512, 16000, dtype=torch.float64)
    return kaldi_fbank(wave.double(), kaldi_window(window, 400, torch.float64), banks, 160)


def relative_error(ours: torch.Tensor, expected: torch.Tensor) -> float:
    return ((ours.double() - expected).abs() / expected.abs().clamp_min(1.0)).max().item()


@pytest.mark.parametrize("window", ["povey", "hamming"])
@pytest.mark.parametrize("samples", [400, 1234, 8123, 16000])
def test_kaldi_fbank_equals_torchaudio(window: str, samples: int) -> None:
    ref = kaldi_reference()
    expected = ref[f"fbank_{window}_{samples}"]
    assert expected.dtype == torch.float64
    wave = ref[f"wave_{samples}"].unsqueeze(0)
    exact = float64_fbank(wave, window)[0]
    assert exact.shape == expected.shape == (1 + (samples - 400) // 160, 80)
    assert (exact - expected).abs().max() <= KALDI_FLOAT64_BOUND
    default = KaldiFbank(n_mels=80, window=window)(wave)[0]
    assert default.dtype == torch.float32
    assert relative_error(default, expected) <= KALDI_FLOAT32_RELATIVE_BOUND


def test_kaldi_fbank_bounds_catch_a_wrong_window_or_band_count() -> None:
    """The bounds are sharp: the other window, or 81 mel bands, fails them."""
    ref = kaldi_reference()
    wave, expected = ref["wave_8123"].unsqueeze(0), ref["fbank_povey_8123"]
    assert relative_error(float64_fbank(wave, "hamming")[0], expected) > 100 * 1e-4
    more_bands = float64_fbank(wave, "povey", n_mels=81)[0, :, :80]
    assert relative_error(more_bands, expected) > 100 * 1e-4


def test_kaldi_fbank_is_batched_row_by_row() -> None:
    ref = kaldi_reference()
    waves = torch.stack([ref["wave_16000"][:8123], ref["wave_8123"]])
    fbank = KaldiFbank(window="hamming")
    together = fbank(waves)
    assert torch.allclose(together[1], fbank(waves[1:])[0], atol=1e-6, rtol=0)
    assert relative_error(together[1], ref["fbank_hamming_8123"]) <= KALDI_FLOAT32_RELATIVE_BOUND
    assert (float64_fbank(waves, "hamming")[1] - ref["fbank_hamming_8123"]).abs().max() <= 1e-9
    assert not torch.allclose(together[0], together[1])


def test_kaldi_fbank_dither_only_in_training_and_too_short_input_refused() -> None:
    wave = kaldi_reference()["wave_1234"].unsqueeze(0)
    fbank = KaldiFbank(window="hamming", dither=1.0)
    fbank.eval()
    assert torch.equal(fbank(wave), fbank(wave))
    fbank.train()
    torch.manual_seed(0)
    assert not torch.equal(fbank(wave), fbank(wave))
    with pytest.raises(ValueError, match="at least 400 samples"):
        fbank(wave[:, :399])


def test_kaldi_fbank_live_torchaudio_cross_check() -> None:
    """With torchaudio installed (``xvec[torchaudio]``), compare with it directly."""
    pytest.importorskip("torchaudio", reason="torchaudio not installed")
    from torchaudio.compliance import kaldi

    generator = torch.Generator().manual_seed(5)
    wave = 3000 * torch.randn(1, 5555, generator=generator)
    for window in ("povey", "hamming"):
        expected = kaldi.fbank(wave, num_mel_bins=80, dither=0.0, window_type=window)
        ours = KaldiFbank(window=window)(wave)[0]
        assert (ours - expected).abs().max() <= 1e-4


# --- parity with WeSpeaker's models -------------------------------------------------------------


@pytest.mark.parametrize("fixture", list(MODELS))
def test_wespeaker_checkpoint_loads_and_embeds_like_wespeaker(fixture: str) -> None:
    folder = WESPEAKER / fixture
    meta = json.loads((folder / "meta.json").read_text())
    state = torch.load(folder / "model.pt", weights_only=True)
    name = MODELS[fixture]
    params = CLASSES[name].params_from_state(state)
    assert params == meta["xvec_params"]
    expected = load_file(str(folder / "embeddings.safetensors"))
    for window in ("hamming", "povey"):
        model = registry.build("model", name, {**params, "window": window})
        model.load_state_dict(state, strict=True)
        assert count(model) == meta["parameters"]
        model.eval()
        with torch.no_grad():
            for index, signal in enumerate(SIGNALS, start=1):
                ours = model(signal.unsqueeze(0))[0]
                reference = expected[f"{window}_signal{index}"]
                assert ours.shape == reference.shape == (model.embedding_dim,)
                assert (ours - reference).abs().max() <= 1e-5  # measured: <= 2.4e-7
            both = model(torch.stack([SIGNALS[0][:40000], SIGNALS[1][:40000]]))
            alone = model(SIGNALS[1][:40000].unsqueeze(0))
            assert torch.allclose(both[1], alone[0], atol=1e-5, rtol=0)


def test_default_sizes_have_wespeakers_parameter_counts() -> None:
    counts = json.loads((WESPEAKER / "parameters.json").read_text())["counts"]
    for depth in RESNET_LAYOUTS:
        model = WeSpeakerResNet(WeSpeakerResNetParams(depth=depth))
        assert count(model) == counts[f"ResNet{depth}"], depth
    assert counts["ResNet34"] == 6_634_336
    assert count(CAMPPlus()) == counts["CAMPPlus"] == 7_176_224


@pytest.mark.parametrize("depth", sorted(RESNET_LAYOUTS))
def test_resnet_params_round_trip_through_the_state_dict(depth: int) -> None:
    params = {
        "depth": depth,
        "m_channels": 2,
        "feat_dim": 40,
        "embed_dim": 8,
        "two_emb_layer": depth % 2 == 1,
    }
    state = WeSpeakerResNet(WeSpeakerResNetParams(**params)).state_dict()
    assert WeSpeakerResNet.params_from_state(state) == params


def test_campplus_params_round_trip_through_the_state_dict() -> None:
    params = {
        "feat_dim": 64,
        "embed_dim": 24,
        "growth_rate": 6,
        "bn_size": 3,
        "init_channels": 20,
        "head_channels": 4,
    }
    state = CAMPPlus(CAMPPlusParams(**params)).state_dict()
    assert CAMPPlus.params_from_state(state) == params


def test_params_from_state_refuses_what_it_cannot_read() -> None:
    state = WeSpeakerResNet(WeSpeakerResNetParams(depth=18, m_channels=2)).state_dict()
    with pytest.raises(XvecError, match=r"seg_1\.weight"):
        WeSpeakerResNet.params_from_state({k: v for k, v in state.items() if k != "seg_1.weight"})
    with pytest.raises(XvecError, match="TSTP"):
        WeSpeakerResNet.params_from_state({**state, "pool.linear1.weight": torch.zeros(1)})
    fewer = {k: v for k, v in state.items() if not k.startswith("layer2.1.")}
    with pytest.raises(XvecError, match=r"\(2, 1, 2, 2\) per stage match no depth"):
        WeSpeakerResNet.params_from_state(fewer)
    with pytest.raises(XvecError, match="not a WeSpeaker CAM\\+\\+"):
        CAMPPlus.params_from_state(state)
    cam = CAMPPlus(CAMPPlusParams(growth_rate=2, bn_size=1, init_channels=8, head_channels=2))
    cam_state = cam.state_dict()
    short = {k: v for k, v in cam_state.items() if not k.startswith("xvector.block2.tdnnd24.")}
    with pytest.raises(XvecError, match="block2 has 23 dense layers"):
        CAMPPlus.params_from_state(short)


# --- behaviour as an xvec model -----------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        WeSpeakerResNet(WeSpeakerResNetParams(m_channels=2, embed_dim=16)),
        CAMPPlus(
            CAMPPlusParams(
                growth_rate=4, bn_size=2, init_channels=16, head_channels=4, embed_dim=16
            )
        ),
    ],
    ids=["resnet34", "campplus"],
)
def test_training_step_and_short_inputs(model: torch.nn.Module) -> None:
    torch.manual_seed(0)
    model.train()
    out = model(0.1 * torch.randn(3, 8000))
    (out * torch.randn_like(out)).sum().backward()
    silent = []
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        if param.grad.abs().sum() == 0:
            silent.append(name)
    # a random tiny model can have a dead ReLU in a context mask; nearly all must learn
    assert len(silent) <= 0.05 * len(list(model.parameters())), silent
    model.eval()
    with torch.no_grad():
        tiny = model(0.1 * torch.randn(2, 300))  # under one 25 ms frame: repeated cyclically
    assert tiny.shape == (2, 16) and torch.isfinite(tiny).all()
