"""The voxceleb_trainer CNNs and their log-mel front ends, checked against VT's own outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F

from xvec import checkpoint, registry
from xvec.audio import eval_crops
from xvec.errors import XvecError
from xvec.features import LogFbank, PreEmphasis, VTMelFrontEnd, wrap_pad_to
from xvec.interop import voxceleb_trainer
from xvec.models.pooling import attentive_pool, self_attention_weights, temporal_pool

from conftest import VT_FIXTURES, requires_fixtures

VT_DEFAULTS = {"nOut": 512, "n_mels": 40, "log_input": True}
FIXTURE_MODELS = {
    "a_ResNetSE34L_SAP_angleproto": ("ResNetSE34L", {**VT_DEFAULTS, "encoder_type": "SAP"}),
    "b_ResNetSE34L_SAP_amsoftmax": ("ResNetSE34L", {**VT_DEFAULTS, "encoder_type": "SAP"}),
    "d_VGGVox_SAP_angleproto": ("VGGVox40", {**VT_DEFAULTS, "encoder_type": "SAP"}),
}
FRONT_ENDS = {"ResNetSE34L": "hamming", "VGGVox40": "hann"}
EMBEDDING_ATOL = 1e-5  # the fixtures' README: thread count alone moves embeddings by 1.3e-6
EVAL_FRAMES, NUM_EVAL = 400, 10


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def read_wave(path: Path) -> np.ndarray:
    """Samples as VT's fixtures were made: soundfile's float64, then float32."""
    samples, rate = soundfile.read(str(path))
    assert rate == 16000
    return samples.astype(np.float32)


def embed(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(batch))).numpy()


def vt_score(crops1: np.ndarray, crops2: np.ndarray) -> float:
    """VT's trial score: minus the mean distance between all pairs of normalised crop embeddings."""
    left = F.normalize(torch.from_numpy(crops1), dim=1)
    right = F.normalize(torch.from_numpy(crops2), dim=1)
    return -torch.cdist(left, right).mean().item()


# --------------------------------------------------------------------------- architecture


@pytest.mark.parametrize(
    ("name", "expected"),
    [("ResNetSE34L", 1_437_078), ("ResNetSE34V2", 8_028_492), ("VGGVox40", 4_032_448)],
)
def test_parameter_counts_equal_voxceleb_trainer(name: str, expected: int) -> None:
    model = registry.build("model", name, {})
    assert count_parameters(model) == expected
    assert model.embedding_dim == 512


def test_v2_state_dict_uses_voxceleb_trainer_names() -> None:
    """Published baseline_v2 files name the pre-emphasis, mel and attention tensors like this."""
    keys = set(registry.build("model", "ResNetSE34V2", {}).state_dict())
    for key in (
        "torchfb.0.flipped_filter",
        "torchfb.1.spectrogram.window",
        "torchfb.1.mel_scale.fb",
        "attention.0.weight",
        "attention.2.running_var",
        "attention.3.bias",
        "layer4.0.downsample.1.weight",
        "layer1.2.se.fc.2.weight",
        "fc.weight",
    ):
        assert key in keys


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("ResNetSE34L", {"nOut": 0}, "nOut"),
        ("ResNetSE34L", {"encoder_type": "TAP"}, "encoder_type"),
        ("ResNetSE34L", {"num_filters": [16, 32, 64]}, "num_filters"),
        ("ResNetSE34L", {"num_filters": [4, 8, 16, 32]}, "num_filters"),
        ("ResNetSE34V2", {"layers": [3, 0, 6, 3]}, "layers"),
        ("ResNetSE34V2", {"n_mels": 2}, "n_mels"),
        ("VGGVox40", {"n_mels": 64}, "n_mels"),
        ("VGGVox40", {"encoder_type": "ASP"}, "encoder_type"),
        ("VGGVox40", {"num_filters": [8, 8, 8, 8]}, "num_filters"),
    ],
)
def test_nonsense_parameters_are_rejected(name: str, params: dict, field: str) -> None:
    with pytest.raises(XvecError, match=rf"parameter '{field}"):
        registry.build("model", name, params)


SHAPE_CASES = [
    ("ResNetSE34L", {"encoder_type": "SAP"}),
    ("ResNetSE34L", {"encoder_type": "ASP"}),
    ("ResNetSE34V2", {"encoder_type": "SAP"}),
    ("ResNetSE34V2", {"encoder_type": "ASP"}),
    ("VGGVox40", {"encoder_type": "SAP"}),
    ("VGGVox40", {"encoder_type": "TAP"}),
    ("VGGVox40", {"encoder_type": "MAX"}),
]


@pytest.mark.parametrize(("name", "params"), SHAPE_CASES)
def test_any_length_gives_one_finite_embedding_per_waveform(name: str, params: dict) -> None:
    torch.manual_seed(0)
    model = registry.build("model", name, params)
    for train in (True, False):
        model.train(train)
        for seconds in (0.3, 1.0, 2.5):
            waves = 0.1 * torch.randn(2, int(seconds * 16000))
            with torch.no_grad():
                out = model(waves)
            assert out.shape == (2, 512)
            assert torch.isfinite(out).all()
            assert not torch.equal(out[0], out[1])  # two different inputs, two embeddings


@pytest.mark.parametrize(("name", "params"), SHAPE_CASES)
def test_every_pooling_trains(name: str, params: dict) -> None:
    """Forward and backward in train mode: every trainable parameter gets a finite gradient."""
    torch.manual_seed(0)
    model = registry.build("model", name, params).train()
    model(0.1 * torch.randn(2, 16000)).square().sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert model.fc.weight.grad.abs().sum() > 0


def _random_batch_statistics(model: torch.nn.Module) -> None:
    """Eval-mode batch norms that are not the identity, so padding mistakes would show."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)


@pytest.mark.parametrize(
    ("name", "encoder_type"),
    [
        ("ResNetSE34L", "SAP"),
        ("ResNetSE34L", "ASP"),
        ("ResNetSE34V2", "ASP"),
        ("ResNetSE34V2", "SAP"),
    ],
)
def test_a_padded_batch_embeds_each_item_as_alone(name: str, encoder_type: str) -> None:
    """``forward_padded`` on zero-padded rows of odd and even lengths (through the stride-2
    stages), one under the model's minimum, equals ``forward`` on each row's samples alone."""
    torch.manual_seed(0)
    model = registry.build("model", name, {"encoder_type": encoder_type}).eval()
    _random_batch_statistics(model)
    lengths = torch.tensor([16000, 15840, 12161, 8000, 2000])
    waves = 0.1 * torch.randn(len(lengths), int(lengths.max()))
    waves[torch.arange(waves.shape[1]) >= lengths[:, None]] = 0.0
    with torch.no_grad():
        batched = model.forward_padded(waves, lengths)
        alone = torch.cat([model(waves[i : i + 1, :n]) for i, n in enumerate(lengths.tolist())])
    assert (batched - alone).abs().max() <= 1e-5 * alone.abs().max()


def test_shorter_than_a_window_is_padded_cyclically() -> None:
    """A tiny input is repeated, so it embeds as its own repetition does."""
    torch.manual_seed(0)
    model = registry.build("model", "ResNetSE34L", {}).eval()
    short = torch.randn(1, 100)
    with torch.no_grad():
        padded = model(short)
        repeated = model(short.repeat(1, 24))  # 2400 samples = the model's minimum
    assert padded.shape == (1, 512)
    torch.testing.assert_close(padded, repeated)


@pytest.mark.parametrize("name", ["ResNetSE34L", "ResNetSE34V2"])
def test_smaller_variant_trains(name: str) -> None:
    """Half-width filters and a 128-dim embedding: fewer parameters, gradients reach the stem."""
    torch.manual_seed(0)
    default = registry.build("model", name, {})
    half = [width // 2 for width in default.params.num_filters]
    small = registry.build("model", name, {"num_filters": half, "nOut": 128}).train()
    assert small.embedding_dim == 128
    assert count_parameters(small) < count_parameters(default) / 3
    out = small(0.1 * torch.randn(2, 16000))
    assert out.shape == (2, 128)
    out.square().sum().backward()
    assert small.conv1.weight.grad is not None and small.conv1.weight.grad.abs().sum() > 0
    assert small.fc.weight.grad.abs().sum() > 0


def test_front_end_stays_float32_under_autocast() -> None:
    torch.manual_seed(0)
    model = registry.build("model", "ResNetSE34L", {"num_filters": [8, 16, 32, 64]}).eval()
    waves = 0.1 * torch.randn(2, 8000)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        features = model.log_mel(waves)
        out = model(waves)
    assert features.dtype == torch.float32
    assert torch.isfinite(out.float()).all()
    with torch.no_grad():
        reference = model(waves)
    assert F.cosine_similarity(out.float(), reference).min() > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("name", "params"), SHAPE_CASES[::2])
def test_cuda_matches_cpu(name: str, params: dict) -> None:
    torch.manual_seed(0)
    model = registry.build("model", name, params).eval()
    waves = 0.1 * torch.randn(2, 32240)
    with torch.no_grad():
        on_cpu = model(waves)
        on_gpu = model.cuda()(waves.cuda()).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-3, rtol=1e-3)


# --------------------------------------------------------------------------- pooling


def test_attentive_pooling_with_uniform_attention_is_mean_and_std() -> None:
    """A zero context vector attends equally to every frame: SAP = mean, ASP = mean and std."""
    torch.manual_seed(0)
    frames = torch.randn(3, 7, 5)  # [batch, time, dim]
    linear = torch.nn.Linear(5, 5)
    weights = self_attention_weights(frames, linear, torch.zeros(5, 1))
    torch.testing.assert_close(weights, torch.full((3, 7, 1), 1 / 7))
    pooled = attentive_pool(frames, weights, dim=1, with_std=True)
    expected = torch.cat([frames.mean(1), frames.std(1, unbiased=False)], dim=1)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(attentive_pool(frames, weights, dim=1, with_std=False), pooled[:, :5])


def test_attention_follows_the_scored_frame_and_std_is_floored() -> None:
    torch.manual_seed(0)
    frames = torch.zeros(1, 4, 2)
    frames[0, 2] = torch.tensor([3.0, -3.0])  # one distinctive frame
    linear = torch.nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(2))
        linear.bias.zero_()
    weights = self_attention_weights(frames, linear, torch.tensor([[50.0], [-50.0]]))
    assert weights[0, :, 0].argmax() == 2 and weights[0, 2, 0] > 0.99
    constant = torch.ones(2, 6, 3)
    stats = attentive_pool(constant, torch.full((2, 6, 1), 1 / 6), dim=1, with_std=True)
    torch.testing.assert_close(stats[:, 3:], torch.full((2, 3), 1e-5**0.5))


def test_temporal_pooling_equals_adaptive_2d_pooling() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 1, 9)
    torch.testing.assert_close(
        temporal_pool(x, "TAP"), torch.nn.AdaptiveAvgPool2d((1, 1))(x).flatten(1)
    )
    assert torch.equal(temporal_pool(x, "MAX"), torch.nn.AdaptiveMaxPool2d((1, 1))(x).flatten(1))


# --------------------------------------------------------------------------- front ends


def test_pre_emphasis_is_first_difference_with_reflected_start() -> None:
    torch.manual_seed(0)
    wave = torch.randn(3, 50)
    out = PreEmphasis(0.97)(wave).numpy()
    x = wave.numpy()
    np.testing.assert_allclose(out[:, 1:], x[:, 1:] - 0.97 * x[:, :-1], atol=1e-6)
    np.testing.assert_allclose(out[:, 0], x[:, 0] - 0.97 * x[:, 1], atol=1e-6)


def test_wrap_pad_matches_numpy_wrap() -> None:
    wave = torch.arange(7, dtype=torch.float32).view(1, 7)
    np.testing.assert_array_equal(wrap_pad_to(wave, 17)[0].numpy(), np.resize(np.arange(7), 17))
    assert wrap_pad_to(wave, 5) is wave


def test_log_fbank_matches_torchaudio_mel_on_pre_emphasised_input() -> None:
    """Cross-check with the optional torchaudio extra (tests/test_frontend.py: stored outputs)."""
    torchaudio = pytest.importorskip("torchaudio", reason="xvec[torchaudio] not installed")
    torch.manual_seed(0)
    wave = 0.1 * torch.randn(2, 16000)
    out = LogFbank(n_mels=80)(wave)
    assert out.shape == (2, 80, 16000 // 160 + 1) and out.dtype == torch.float32
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000,
        n_fft=512,
        win_length=400,
        hop_length=160,
        window_fn=torch.hamming_window,
        n_mels=80,
    )
    reference = torch.log(mel(PreEmphasis(0.97)(wave)) + 1e-6)
    reference = reference - reference.mean(dim=-1, keepdim=True)
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)


def test_log_fbank_removes_a_constant_gain_and_runs_float32_under_autocast() -> None:
    torch.manual_seed(0)
    wave = 0.1 * torch.randn(2, 8000)
    fbank = LogFbank(n_mels=40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        quiet, loud = fbank(wave), fbank(4.0 * wave)
    assert quiet.dtype == torch.float32
    assert quiet.mean(dim=-1).abs().max() < 1e-4  # mean-normalised over time
    torch.testing.assert_close(quiet, loud, atol=1e-2, rtol=0)  # up to the 1e-6 log floor
    assert fbank(torch.randn(1, 50)).shape == (1, 40, 3)  # shorter than a window: padded
    assert fbank.state_dict() == {}  # constants are not saved in checkpoints


# --------------------------------------------------------------------------- VT fixtures


def load_vt_model(folder: str, filename: str = "model_legacy.model") -> torch.nn.Module:
    name, params = FIXTURE_MODELS[folder]
    model_state, _ = voxceleb_trainer.split_voxceleb_trainer(
        voxceleb_trainer.read_voxceleb_trainer(VT_FIXTURES / folder / filename)
    )
    model = registry.build("model", name, params)
    checkpoint.load_state_strict(model, type(model).from_voxceleb_trainer(model_state), folder)
    return model.eval()


@requires_fixtures
@pytest.mark.parametrize("folder", ["a_ResNetSE34L_SAP_angleproto", "d_VGGVox_SAP_angleproto"])
def test_seeded_initialisation_equals_voxceleb_trainer(folder: str) -> None:
    """Same modules, built in the same order with the same init: VT's weights, bit for bit."""
    name, params = FIXTURE_MODELS[folder]
    vt_state, _ = voxceleb_trainer.split_voxceleb_trainer(
        voxceleb_trainer.read_voxceleb_trainer(VT_FIXTURES / folder / "model_legacy.model")
    )
    torch.manual_seed(1234)  # the fixtures' seed
    state = registry.build("model", name, params).state_dict()
    assert list(state) == list(vt_state)
    for key, value in state.items():
        assert torch.equal(value, vt_state[key]), key


@requires_fixtures
@pytest.mark.parametrize("folder", list(FIXTURE_MODELS))
def test_embeddings_crops_and_score_equal_voxceleb_trainer(folder: str) -> None:
    torch.set_num_threads(2)
    model = load_vt_model(folder)
    crops = []
    for wav, suffix in (("input.wav", ""), ("input2.wav", "2")):
        wave = read_wave(VT_FIXTURES / folder / wav)
        full = embed(model, wave[None])
        np.testing.assert_allclose(
            full,
            np.load(VT_FIXTURES / folder / f"emb_full{suffix}.npy"),
            rtol=0,
            atol=EMBEDDING_ATOL,
        )
        crop_embeddings = embed(model, eval_crops(wave, EVAL_FRAMES, NUM_EVAL))
        np.testing.assert_allclose(
            crop_embeddings,
            np.load(VT_FIXTURES / folder / f"emb_crops{suffix}.npy"),
            rtol=0,
            atol=EMBEDDING_ATOL,
        )
        crops.append(crop_embeddings)
    expected = float((VT_FIXTURES / folder / "score.txt").read_text())
    assert vt_score(*crops) == pytest.approx(expected, abs=1e-6)


@requires_fixtures
@pytest.mark.parametrize("folder", ["a_ResNetSE34L_SAP_angleproto", "d_VGGVox_SAP_angleproto"])
def test_front_end_equals_voxceleb_trainer(folder: str) -> None:
    """Equal up to float32 rounding, which log(power) amplifies in near-silent mel bins.

    The FFT's rounding differs between CPUs, so beside a loose absolute bound the test checks
    that xvec is no further from a float64 computation of the same features than VT itself is.
    """
    torch.set_num_threads(2)
    wave = torch.from_numpy(read_wave(VT_FIXTURES / folder / "input.wav"))[None]
    expected = np.load(VT_FIXTURES / folder / "frontend_full.npy")
    name = FIXTURE_MODELS[folder][0]
    front_end = VTMelFrontEnd(n_mels=40, window=FRONT_ENDS[name])
    with torch.no_grad():
        standalone = front_end(wave).numpy()
        in_model = load_vt_model(folder).log_mel(wave).numpy()
        exact = front_end.double()(wave.double()).numpy()
    np.testing.assert_array_equal(standalone, in_model)
    assert standalone.shape == expected.shape
    assert np.abs(standalone - expected).max() < 1e-4
    assert np.abs(standalone - exact).max() <= 2 * np.abs(expected - exact).max()
    assert np.abs(standalone - exact).mean() <= 2 * np.abs(expected - exact).mean()


@requires_fixtures
@pytest.mark.parametrize("folder", ["a_ResNetSE34L_SAP_angleproto", "d_VGGVox_SAP_angleproto"])
def test_import_voxceleb_trainer_then_load_model(folder: str, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    name, params = FIXTURE_MODELS[folder]
    target = voxceleb_trainer.import_voxceleb_trainer(
        VT_FIXTURES / folder / "model_legacy.model",
        tmp_path / "imported.safetensors",
        name,
        params,
    )
    model = checkpoint.load_model(target)
    assert type(model).__name__ == name and not model.training
    wave = read_wave(VT_FIXTURES / folder / "input.wav")
    np.testing.assert_allclose(
        embed(model, wave[None]),
        np.load(VT_FIXTURES / folder / "emb_full.npy"),
        rtol=0,
        atol=EMBEDDING_ATOL,
    )


@requires_fixtures
def test_current_voxceleb_trainer_save_format_loads() -> None:
    """``model.model`` wraps the state dict in {"model_state_dict": ..., "optimizer...": ...}."""
    torch.set_num_threads(2)
    folder = "a_ResNetSE34L_SAP_angleproto"
    model = load_vt_model(folder, "model.model")
    wave = read_wave(VT_FIXTURES / folder / "input2.wav")
    np.testing.assert_allclose(
        embed(model, wave[None]),
        np.load(VT_FIXTURES / folder / "emb_full2.npy"),
        rtol=0,
        atol=EMBEDDING_ATOL,
    )
