"""RawNet3, ECAPA-TDNN and the Kaldi x-vector TDNN: sizes, shapes, gradients, building blocks."""

from __future__ import annotations

import math

import pytest
import torch

from xvec import registry
from xvec.errors import XvecError
from xvec.models.ecapa import ECAPATDNN, AttentiveStatsPooling, ECAPATDNNParams, Res2Conv
from xvec.models.rawnet3 import RawNet3, RawNet3Params
from xvec.models.tdnn import TDNN, TDNNParams, stats_pooling

RATE = 16000


def conv(inp: int, out: int, kernel: int = 1, bias: bool = True) -> int:
    return inp * out * kernel + (out if bias else 0)


def bn(channels: int) -> int:
    return 2 * channels


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def waves(batch: int, seconds: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, round(seconds * RATE), generator=generator)


def assert_all_trainable_get_gradients(model: torch.nn.Module, seconds: float = 0.5) -> None:
    """One train-mode backward reaches every trainable parameter with a finite, non-zero grad."""
    torch.manual_seed(0)
    model.train()
    out = model(waves(2, seconds))
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.isfinite(param.grad).all(), name
            assert param.grad.abs().sum() > 0, name


def assert_eval_behaviour(model: torch.nn.Module, dim: int, lengths: tuple[float, ...]) -> None:
    """Eval mode: right shape for each length, repeatable, independent of the batch mates."""
    model.eval()
    with torch.no_grad():
        for seconds in lengths:
            batch = waves(2, seconds, seed=int(seconds * 10))
            first, second = model(batch), model(batch)
            assert first.shape == (2, dim)
            assert torch.isfinite(first).all()
            assert torch.equal(first, second)
            alone = model(batch[1:2])
            torch.testing.assert_close(alone, first[1:2], atol=1e-4, rtol=1e-4)


def assert_train_shapes(model: torch.nn.Module, dim: int, lengths: tuple[float, ...]) -> None:
    model.train()
    for seconds in lengths:
        out = model(waves(2, seconds))
        assert out.shape == (2, dim)
        assert torch.isfinite(out).all()


# --------------------------------------------------------------------------- RawNet3


def rawnet3_block_params(inplanes: int, planes: int, scale: int) -> int:
    width = planes // scale
    total = conv(inplanes, width * scale) + bn(width * scale)
    total += (scale - 1) * (conv(width, width, 3) + bn(width))
    total += conv(width * scale, planes) + bn(planes)
    total += planes + conv(planes, planes)  # AFMS alpha and fc
    if inplanes != planes:
        total += conv(inplanes, planes, bias=False)
    return total


def rawnet3_params(channels: int, n_out: int, scale: int = 8) -> int:
    """RawNet3's size from its layer sizes (ECA attention with global context)."""
    total = 2 + 2 * (channels // 8) + bn(channels // 4)  # instance norm, sinc bands, bn1
    total += rawnet3_block_params(channels // 4, channels, scale)
    total += 2 * rawnet3_block_params(channels, channels, scale)
    total += conv(3 * channels, 1536)
    total += conv(3 * 1536, 128) + bn(128) + conv(128, 1536)
    total += bn(3072) + conv(3072, n_out) + bn(n_out)
    return total


@pytest.fixture(scope="module")
def rawnet3() -> RawNet3:
    torch.manual_seed(0)
    return RawNet3()


@pytest.fixture(scope="module")
def small_rawnet3() -> RawNet3:
    torch.manual_seed(0)
    return RawNet3(RawNet3Params(C=64, nOut=32))


def test_rawnet3_has_voxceleb_trainers_size_and_names(rawnet3: RawNet3) -> None:
    assert count(rawnet3) == 16_280_322 == rawnet3_params(1024, 256)
    assert count(RawNet3(RawNet3Params(C=64, nOut=32))) == rawnet3_params(64, 32)
    keys = rawnet3.state_dict()
    expected = {
        "preprocess.0.flipped_filter": (1, 1, 2),
        "preprocess.1.weight": (1,),
        "conv1.filterbank.low_hz_": (128, 1),
        "conv1.filterbank.band_hz_": (128, 1),
        "conv1.filterbank.window_": (125,),
        "conv1.filterbank.n_": (1, 125),
        "layer1.residual.0.weight": (1024, 256, 1),
        "layer3.convs.6.weight": (128, 128, 3),
        "layer2.afms.alpha": (1024, 1),
        "attention.0.weight": (128, 4608, 1),
        "attention.3.weight": (1536, 128, 1),
        "bn6.running_mean": (256,),
        "fc6.weight": (256, 3072),
    }
    for key, shape in expected.items():
        assert tuple(keys[key].shape) == shape, key
    assert len(keys) == 234  # parameters and buffers: as many as voxceleb_trainer's RawNet3
    assert rawnet3.embedding_dim == 256


def test_rawnet3_eval_shapes_determinism_and_batch_independence(
    rawnet3: RawNet3, small_rawnet3: RawNet3
) -> None:
    assert_eval_behaviour(rawnet3, 256, lengths=(0.5,))
    assert_eval_behaviour(small_rawnet3, 32, lengths=(0.7, 2.9))


def test_rawnet3_small_variant_trains_with_gradients_everywhere(small_rawnet3: RawNet3) -> None:
    assert_train_shapes(small_rawnet3, 32, lengths=(0.5, 0.9))
    small_rawnet3.zero_grad(set_to_none=True)
    assert_all_trainable_get_gradients(small_rawnet3)
    frozen = {n for n, p in small_rawnet3.named_parameters() if not p.requires_grad}
    # voxceleb_trainer never uses bn1, and bn6 only with out_bn: kept for its state dicts
    assert frozen == {"bn1.weight", "bn1.bias", "bn6.weight", "bn6.bias"}


def test_rawnet3_variants_out_bn_asp_no_context() -> None:
    torch.manual_seed(0)
    with_bn = RawNet3(RawNet3Params(C=32, nOut=16, out_bn=True))
    assert_all_trainable_get_gradients(with_bn)
    assert with_bn.bn6.weight.grad is not None
    for options in ({"encoder_type": "ASP"}, {"context": False, "summed": False}):
        model = RawNet3(RawNet3Params(C=32, nOut=16, norm_sinc="mean_std", **options))
        assert_eval_behaviour(model, 16, lengths=(0.5,))
    asp = RawNet3(RawNet3Params(C=32, encoder_type="ASP"))
    assert asp.attention[3].out_channels == 1


def test_rawnet3_ignores_input_gain(small_rawnet3: RawNet3) -> None:
    """Instance norm, log and mean removal make the embedding (almost) independent of gain."""
    small_rawnet3.eval()
    signal = waves(2, 0.5, seed=3)
    with torch.no_grad():
        quiet, loud = small_rawnet3(signal), small_rawnet3(4 * signal)
        other = small_rawnet3(waves(2, 0.5, seed=4))
    torch.testing.assert_close(quiet, loud, atol=1e-3, rtol=1e-3)
    assert (quiet - other).abs().max() > 100 * (quiet - loud).abs().max()


def test_sinc_filters_pass_their_own_band(small_rawnet3: RawNet3) -> None:
    bank = small_rawnet3.conv1.filterbank
    with torch.no_grad():
        filters = bank.filters().squeeze(1)  # [2 * bands, 251]
        low = bank.min_low_hz + bank.low_hz_.abs().squeeze(1)
        high = (low + bank.min_band_hz + bank.band_hz_.abs().squeeze(1)).clamp(max=RATE / 2)
    bands = low.numel()
    even, odd = filters[:bands], filters[bands:]
    assert torch.allclose(even, even.flip(1)) and torch.allclose(odd, -odd.flip(1))
    n_fft = 8192
    response = torch.fft.rfft(filters, n=n_fft).abs()
    peak_hz = response.argmax(dim=1).double() * RATE / n_fft
    centre, half_width = ((low + high) / 2).double(), ((high - low) / 2).double()
    resolution = 2 * RATE / filters.shape[1]  # main-lobe half-width of the 251-tap window
    assert ((peak_hz[:bands] - centre).abs() <= half_width + resolution).all()
    assert ((peak_hz[bands:] - centre).abs() <= half_width + resolution).all()
    # cut-offs start mel-spaced: bands widen with frequency
    assert (high - low).diff().min() > 0


def test_rawnet3_rejects_too_short_input_and_bad_options(small_rawnet3: RawNet3) -> None:
    with pytest.raises(ValueError, match="at least"):
        small_rawnet3(torch.zeros(1, small_rawnet3.min_samples() - 1))
    small_rawnet3.eval()
    with torch.no_grad():
        assert small_rawnet3(waves(1, small_rawnet3.min_samples() / RATE)).shape == (1, 32)
    for bad in ({"C": 100}, {"encoder_type": "SAP"}, {"nOut": 0}, {"norm_sinc": "max"}):
        with pytest.raises(XvecError, match=next(iter(bad))):
            registry.build("model", "RawNet3", bad)


# --------------------------------------------------------------------------- ECAPA-TDNN


def ecapa_params(channels: int, n_mels: int = 80, embedding: int = 192) -> int:
    """ECAPA-TDNN's size from its layer sizes: Res2 scale 8, SE 128, attention 128, MFA 1536."""
    width = channels // 8
    block = 2 * (conv(channels, channels) + bn(channels))
    block += 7 * (conv(width, width, 3) + bn(width))
    block += conv(channels, 128) + conv(128, channels)
    total = conv(n_mels, channels, 5) + bn(channels) + 3 * block
    total += conv(3 * channels, 1536)
    total += conv(3 * 1536, 128) + conv(128, 1536)
    return total + bn(3072) + conv(3072, embedding)


def test_ecapa_sizes_match_formula_and_paper() -> None:
    sizes = {c: count(ECAPATDNN(ECAPATDNNParams(channels=c))) for c in (512, 1024, 256)}
    assert sizes == {c: ecapa_params(c) for c in sizes}
    # Desplanques et al. 2020, Table 1: 6.2 M (C=512) and 14.7 M (C=1024)
    assert round(sizes[512] / 1e6, 1) == 6.2
    assert round(sizes[1024] / 1e6, 1) == 14.7
    model = registry.build("model", "ECAPA-TDNN", {"embedding_size": 128, "n_mels": 40})
    assert isinstance(model, ECAPATDNN) and model.embedding_dim == 128
    assert count(model) == ecapa_params(512, n_mels=40, embedding=128)


def test_ecapa_shapes_determinism_and_gradients() -> None:
    torch.manual_seed(0)
    model = ECAPATDNN(ECAPATDNNParams(channels=256))
    assert_eval_behaviour(model, 192, lengths=(0.5, 1.1))
    assert_train_shapes(model, 192, lengths=(0.5, 1.3))
    model.zero_grad(set_to_none=True)
    assert_all_trainable_get_gradients(model)
    default = ECAPATDNN().eval()
    with torch.no_grad():
        assert default(waves(1, 0.5)).shape == (1, 192)


def test_ecapa_rejects_bad_options() -> None:
    for bad in ({"channels": 100}, {"embedding_size": 0}, {"n_mels": 2}, {"kernel": 3}):
        with pytest.raises(XvecError, match=next(iter(bad))):
            registry.build("model", "ECAPA-TDNN", bad)


def test_res2conv_passes_first_group_and_chains_the_rest() -> None:
    torch.manual_seed(0)
    layer = Res2Conv(channels=32, kernel_size=3, dilation=2, scale=8).eval()
    x = torch.randn(2, 32, 20)
    out = layer(x)
    assert torch.equal(out[:, :4], x[:, :4])
    # changing group 2 changes groups 2.. of the output but not groups 0 and 1
    changed = x.clone()
    changed[:, 8:12] += 1.0
    diff = (layer(changed) - out).abs().amax(dim=(0, 2)).view(8, 4).amax(dim=1)
    assert torch.all(diff[:2] == 0) and torch.all(diff[2:] > 0)


def test_attentive_pooling_reduces_to_mean_and_std_with_uniform_attention() -> None:
    torch.manual_seed(0)
    pool = AttentiveStatsPooling(channels=6, bottleneck=4)
    with torch.no_grad():
        pool.score.weight.zero_()
        pool.score.bias.zero_()
    x = torch.randn(3, 6, 50)
    stats = pool(x)
    torch.testing.assert_close(stats[:, :6], x.mean(dim=-1))
    torch.testing.assert_close(stats[:, 6:], x.std(dim=-1, correction=0), atol=1e-5, rtol=1e-4)
    # with trained-looking scores the weights follow the frames: a spike frame dominates
    with torch.no_grad():
        pool.score.weight.copy_(torch.eye(6, 4).unsqueeze(-1) * 50)
        pool.hidden.weight.zero_()
        pool.hidden.bias.zero_()
        pool.hidden.weight[:, :4, 0] = torch.eye(4)
    spiky = torch.zeros(1, 6, 50)
    spiky[0, :, 7] = 1.0
    assert pool(spiky)[0, 0] > 0.9  # channel 0's mean is almost the spike value


# --------------------------------------------------------------------------- TDNN


def tdnn_params(n_mels: int, hidden: int, stats_dim: int, embedding: int) -> int:
    """The x-vector network's size: contexts 5, 3, 3, 1, 1 frames, each affine + BN."""
    widths = [n_mels, hidden, hidden, hidden, hidden, stats_dim]
    total = sum(
        conv(widths[i], widths[i + 1], kernel) + bn(widths[i + 1])
        for i, kernel in enumerate((5, 3, 3, 1, 1))
    )
    return total + conv(2 * stats_dim, embedding)


def test_tdnn_size_shapes_and_gradients() -> None:
    assert count(TDNN()) == tdnn_params(40, 512, 1500, 512)
    torch.manual_seed(0)
    params = {"n_mels": 24, "hidden": 64, "stats_dim": 100, "embedding_size": 32}
    model = registry.build("model", "TDNN", params)
    assert count(model) == tdnn_params(24, 64, 100, 32) and model.embedding_dim == 32
    assert_eval_behaviour(model, 32, lengths=(0.5, 3.0, 30.0))
    assert_train_shapes(model, 32, lengths=(0.5, 1.2))
    model.zero_grad(set_to_none=True)
    assert_all_trainable_get_gradients(model)


def test_tdnn_receptive_field_and_short_input() -> None:
    torch.manual_seed(0)
    model = TDNN(TDNNParams(hidden=32, stats_dim=48, embedding_size=16)).eval()
    convs = [layer.conv for layer in model.frame_layers]
    assert [c.kernel_size[0] for c in convs] == [5, 3, 3, 1, 1]
    assert [c.dilation[0] for c in convs] == [1, 2, 3, 1, 1]
    frames = 15  # the context [-7, +7] of one output frame
    samples = (frames - 1) * 160  # centred STFT: samples // 160 + 1 frames
    with torch.no_grad():
        assert model(waves(2, samples / RATE)).shape == (2, 16)
        with pytest.raises(ValueError, match="at least 15 frames"):
            model(waves(2, (samples - 160) / RATE))


def test_stats_pooling_is_mean_and_population_std() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 5, 33)
    stats = stats_pooling(x)
    torch.testing.assert_close(stats, torch.cat([x.mean(-1), x.std(-1, correction=0)], dim=1))
    constant = stats_pooling(torch.ones(1, 2, 10, requires_grad=True))
    assert torch.allclose(constant[0, 2:], torch.full((2,), math.sqrt(1e-10)))


@pytest.mark.parametrize("name", ["RawNet3", "ECAPA-TDNN", "TDNN"])
def test_models_run_under_bfloat16_autocast(name: str) -> None:
    small = {
        "RawNet3": {"C": 32, "nOut": 16},
        "ECAPA-TDNN": {"channels": 64, "embedding_size": 16},
        "TDNN": {"hidden": 32, "stats_dim": 48, "embedding_size": 16},
    }[name]
    torch.manual_seed(0)
    model = registry.build("model", name, small).eval()
    signal = waves(2, 0.6)
    with torch.no_grad():
        reference = model(signal)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            mixed = model(signal)
    assert mixed.shape == (2, 16) and torch.isfinite(mixed).all()
    cosine = torch.nn.functional.cosine_similarity(mixed.float(), reference, dim=1)
    assert (cosine > 0.98).all()
