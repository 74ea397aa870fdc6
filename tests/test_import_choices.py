"""Imports never guess silently: what the weights leave open comes from a config, a --param, a
published-everywhere assumption that the summary notes, or a one-line refusal naming the choices.

WeSpeaker ResNets: the pooling and the mel bands are tied (TSTP over f bands has the shapes of
TAP or TSDP over 2f). The fixtures in ``tests/fixtures/wespeaker/poolings`` were made by
WeSpeaker's own code (``tests/fixtures/make_wespeaker_poolings.py``): a small ResNet34 per
pooling, its config.yaml, and its embeddings of real speech read from the shared speechocean762
data. SpeechBrain ECAPA: the dilations are not stored at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from xvec import registry
from xvec.checkpoint import load_model
from xvec.errors import XvecError
from xvec.interop import import_checkpoint
from xvec.interop import speechbrain as speechbrain_import

from conftest import run_cli

FIXTURES = Path(__file__).parent / "fixtures"
POOLINGS = FIXTURES / "wespeaker" / "poolings"
SPEECH = Path("/work/shared/data/speechocean762/audio")
# WeSpeaker's float32 network vs xvec's on real speech, embeddings about 0.5 in size: measured
# <= 9e-8 with AVX-512 and with ATEN_CPU_CAPABILITY=avx2; the bound leaves room for other kernels.
PARITY = 1e-5


def _refusal(source: Path, tmp_path: Path, **options) -> str:
    with pytest.raises(XvecError) as info:
        import_checkpoint("wespeaker", source, tmp_path / "refused.safetensors", **options)
    message = str(info.value)
    names = (str(source), str(options.get("config")))  # the file at fault
    assert "\n" not in message and message.startswith(names)
    assert not (tmp_path / "refused.safetensors").exists()
    return message


def _speech(meta: dict) -> dict[str, torch.Tensor]:
    """The speech files the fixture embedded, checked to decode to the same samples."""
    from xvec.audio import read_audio

    if not SPEECH.is_dir():
        pytest.skip(f"needs the speechocean762 audio in {SPEECH}")
    waves = {}
    for name, stored in meta["speech"].items():
        wave = read_audio(SPEECH / name)
        assert wave.size == stored["samples"]
        assert abs(float(wave.astype(np.float64).sum()) - stored["sum"]) < 1e-4
        waves[name] = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    return waves


def _assert_embeds_like_wespeaker(checkpoint: Path, folder: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    expected = load_file(str(folder / "embeddings.safetensors"))
    model = load_model(checkpoint).eval()
    params = model.params.model_dump()
    assert {key: params[key] for key in meta["xvec_params"]} == meta["xvec_params"]
    with torch.no_grad():
        for name, wave in _speech(meta).items():
            ours = model(wave[None])[0]
            assert ours.shape == expected[name].shape
            assert (ours - expected[name]).abs().max() <= PARITY


# --- WeSpeaker ResNet pooling -------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["TSTP", "TAP", "TSDP"])
def test_config_gives_the_pooling_and_embeddings_equal_wespeakers(pooling, tmp_path):
    folder = POOLINGS / pooling.lower()
    summary = import_checkpoint(
        "wespeaker",
        folder / "model.pt",
        tmp_path / "m.safetensors",
        config=folder / "config.yaml",
    )
    assert summary.params["pooling_func"] == pooling and summary.params["feat_dim"] == 80
    assert not any(note.startswith("assumed") for note in summary.notes)
    _assert_embeds_like_wespeaker(summary.output, folder)


@pytest.mark.parametrize("pooling", ["TAP", "TSDP"])
def test_param_gives_the_pooling(pooling, tmp_path):
    folder = POOLINGS / pooling.lower()
    summary = import_checkpoint(
        "wespeaker",
        folder / "model.pt",
        tmp_path / "m.safetensors",
        overrides={"pooling_func": pooling},
    )
    assert summary.params["feat_dim"] == 80 and summary.notes == []
    _assert_embeds_like_wespeaker(summary.output, folder)


@pytest.mark.parametrize("pooling", ["TAP", "TSDP"])
def test_mean_or_std_only_resnet_without_config_is_refused(pooling, tmp_path):
    source = POOLINGS / pooling.lower() / "model.pt"
    assert _refusal(source, tmp_path) == (
        f"{source}: the pooling is ambiguous: seg_1's input fits TSTP with 40, TAP or TSDP with "
        "80 mel bands (the weights cannot tell them apart); give --config (WeSpeaker's "
        "config.yaml) or --param pooling_func=TSTP|TAP|TSDP"
    )
    # the mel bands alone leave mean or std open
    assert _refusal(source, tmp_path, overrides={"feat_dim": 80}) == (
        f"{source}: the pooling is ambiguous: TAP or TSDP with 80 mel bands (the weights cannot "
        "tell them apart); give --config (WeSpeaker's config.yaml) or --param "
        "pooling_func=TAP|TSDP"
    )


def test_mel_bands_alone_can_settle_the_pooling(tmp_path):
    folder = POOLINGS / "tap"
    summary = import_checkpoint(
        "wespeaker", folder / "model.pt", tmp_path / "m.safetensors", overrides={"feat_dim": 40}
    )
    assert summary.params["pooling_func"] == "TSTP"  # only TSTP reads 40 bands off seg_1


def test_published_reading_is_assumed_and_noted(tmp_path):
    folder = POOLINGS / "tstp"
    summary = import_checkpoint("wespeaker", folder / "model.pt", tmp_path / "m.safetensors")
    assert summary.params["pooling_func"] == "TSTP" and summary.params["feat_dim"] == 80
    assert summary.notes == [
        "assumed pooling_func='TSTP' with 80 mel bands (not stored; every published 16 kHz "
        "WeSpeaker ResNet uses it; seg_1 also fits TAP or TSDP with 160 mel bands: give --param "
        "pooling_func or --config if so)"
    ]
    _assert_embeds_like_wespeaker(summary.output, folder)


def test_stated_pooling_that_contradicts_the_weights_is_refused(tmp_path):
    folder = POOLINGS / "tap"
    source = folder / "model.pt"
    message = _refusal(
        source, tmp_path, config=folder / "config.yaml", overrides={"pooling_func": "TSTP"}
    )
    assert message.endswith(
        "model_args.feat_dim = 80 contradicts the weights, which mean feat_dim = 40"
    )
    message = _refusal(source, tmp_path, overrides={"feat_dim": 64})
    assert message == (
        f"{source}: --param feat_dim = 64 contradicts the weights: seg_1's input fits TSTP with "
        "40, TAP or TSDP with 80 mel bands"
    )
    config = tmp_path / "config.yaml"
    config.write_text((folder / "config.yaml").read_text().replace("TAP", "ASTP"))
    assert _refusal(source, tmp_path, config=config).endswith(
        "model_args.pooling_func: ASTP is not supported by WeSpeakerResNet (it computes TSTP, "
        "TAP, TSDP)"
    )
    config.write_text((folder / "config.yaml").read_text().replace("16000", "8000"))
    assert _refusal(source, tmp_path, config=config).endswith(
        "dataset_args.resample_rate: 8000 is not supported (xvec's WeSpeaker front end reads "
        "16000 Hz audio)"
    )


def test_campplus_takes_tstp_only(tmp_path):
    source = FIXTURES / "wespeaker" / "campplus_small" / "model.pt"
    message = _refusal(source, tmp_path, overrides={"pooling_func": "TAP"})
    assert message == f"{source}: --param pooling_func = 'TAP': CAMPPlus computes TSTP only"
    summary = import_checkpoint(
        "wespeaker", source, tmp_path / "m.safetensors", overrides={"pooling_func": "TSTP"}
    )
    assert summary.model_name == "CAMPPlus"


def test_cli_refusal_is_one_line_and_param_resolves_it(tmp_path):
    source = POOLINGS / "tsdp" / "model.pt"
    output = tmp_path / "m.safetensors"
    refused = run_cli("import", "wespeaker", source, "-o", output)
    assert refused.returncode == 1 and not output.exists()
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--param pooling_func=TSTP|TAP|TSDP" in lines[0]
    done = run_cli("import", "wespeaker", source, "-o", output, "--param", "pooling_func=TSDP")
    assert done.returncode == 0, done.stderr
    _assert_embeds_like_wespeaker(output, POOLINGS / "tsdp")


def test_pooling_readings_and_parameter_free_poolings():
    from xvec.models.wespeaker_resnet import WeSpeakerResNet, temporal_pool

    built = {
        pooling: registry.build(
            "model", "WeSpeakerResNet", {"m_channels": 2, "embed_dim": 8, "pooling_func": pooling}
        )
        for pooling in ("TSTP", "TAP", "TSDP")
    }
    assert WeSpeakerResNet.pooling_readings(built["TSTP"].state_dict()) == {
        "TSTP": 80,
        "TAP": 160,
        "TSDP": 160,
    }
    assert WeSpeakerResNet.pooling_readings(built["TAP"].state_dict()) == {
        "TSTP": 40,
        "TAP": 80,
        "TSDP": 80,
    }
    frames = torch.randn(2, 3, 4, 7)
    both = temporal_pool(frames, "TSTP")
    torch.testing.assert_close(both[:, :12], temporal_pool(frames, "TAP"), atol=1e-6, rtol=0)
    torch.testing.assert_close(both[:, 12:], temporal_pool(frames, "TSDP"), atol=1e-6, rtol=0)


# --- SpeechBrain ECAPA dilations ----------------------------------------------------------------


def test_speechbrain_dilations_are_assumed_with_a_note():
    ckpt = FIXTURES / "speechbrain" / "embedding_model.ckpt"
    converted = speechbrain_import.convert(ckpt, None, {})
    assert converted.model.params.dilations == [1, 2, 3, 4, 1]
    assert converted.extra["imported_from"]["notes"] == [
        "assumed dilations=[1, 2, 3, 4, 1] (not stored; every published SpeechBrain ECAPA uses "
        "them; give --config with the model's hyperparams.yaml or --param dilations=[...] if it "
        "was trained otherwise)"
    ]
    stated = speechbrain_import.convert(ckpt, FIXTURES / "speechbrain" / "hyperparams.yaml", {})
    assert "notes" not in stated.extra["imported_from"]


def test_speechbrain_unpublished_depth_needs_its_dilations(tmp_path):
    params = {"channels": [16, 16, 16, 48], "kernel_sizes": [5, 3, 3, 1], "dilations": [1, 3, 2, 1]}
    params |= {"attention_channels": 8, "se_channels": 8, "lin_neurons": 12, "input_size": 24}
    torch.manual_seed(0)
    model = registry.build("model", "SpeechBrainECAPA", params).eval()
    source = tmp_path / "embedding_model.ckpt"
    torch.save(model.state_dict(), source)
    with pytest.raises(XvecError) as info:
        speechbrain_import.convert(source, None, {})
    assert str(info.value) == (
        f"{source}: the dilations of this 4-layer ECAPA-TDNN are not stored in the weights and "
        "no published SpeechBrain ECAPA has 4 layers; give --config (the model's "
        "hyperparams.yaml) or --param dilations=[...] (4 numbers)"
    )
    converted = speechbrain_import.convert(source, None, {"dilations": "[1, 3, 2, 1]"})
    wave = 0.1 * torch.randn(1, 8000)
    with torch.no_grad():
        assert torch.equal(converted.model.eval()(wave), model(wave))
