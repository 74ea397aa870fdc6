"""SpeechBrain ECAPA-TDNN import: parity with SpeechBrain's own outputs, and its refusals.

The fixtures in ``tests/fixtures/speechbrain`` were written by SpeechBrain itself
(``make_fixtures.py``): a small random-weight ECAPA_TDNN checkpoint, its hyperparams.yaml, and
the Fbank features and ``EncoderClassifier.encode_batch`` embeddings of synthetic waveforms.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xvec import registry
from xvec.checkpoint import load_model, save_checkpoint
from xvec.errors import XvecError
from xvec.interop.speechbrain import convert, params_from_config

FIXTURES = Path(__file__).parent / "fixtures" / "speechbrain"
CKPT = FIXTURES / "embedding_model.ckpt"
CONFIG = FIXTURES / "hyperparams.yaml"
TOLERANCE = 1e-5
CASES = [("wave1", "fbank1", "embedding1"), ("wave2", "fbank2", "embedding2")]
CASES.append(("batch", "batch_fbank", "batch_embedding"))


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "reference.safetensors"))


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIXTURES / "meta.json").read_text())


@pytest.fixture(scope="module")
def imported() -> torch.nn.Module:
    return convert(CKPT, CONFIG, {}).model


def embed(model: torch.nn.Module, wave: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(wave)


@pytest.mark.parametrize(("wave", "fbank", "embedding"), CASES)
def test_embeddings_equal_speechbrain(imported, reference, wave, fbank, embedding):
    ours = embed(imported, reference[wave])
    assert ours.shape == reference[embedding].shape
    assert (ours - reference[embedding]).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize(("wave", "fbank", "embedding"), CASES)
def test_fbank_equals_speechbrain(imported, reference, wave, fbank, embedding):
    ours = imported.fbank(reference[wave]).transpose(1, 2)  # SpeechBrain: [batch, frames, mels]
    assert ours.shape == reference[fbank].shape
    assert (ours - reference[fbank]).abs().max().item() <= 1e-4  # decibels


def test_silence_reaches_the_80_db_floor(reference):
    """wave2 starts with digital silence: the fixture exercises SpeechBrain's dB range clip."""
    fbank = reference["fbank2"]
    assert (fbank == fbank.amax() - 80.0).sum() > 100


def test_architecture_inferred_from_shapes_and_config(imported):
    params = imported.params
    assert params.input_size == 40
    assert params.channels == [64, 64, 64, 64, 192]
    assert params.res2net_scale == 4
    assert params.se_channels == 24
    assert params.attention_channels == 16
    assert params.lin_neurons == 32
    assert params.dilations == [1, 2, 4, 3, 1]  # only the YAML has them
    assert params_from_config(CONFIG)["dilations"] == [1, 2, 4, 3, 1]


def test_parameter_count_equals_speechbrain(imported, meta):
    assert sum(p.numel() for p in imported.parameters()) == meta["parameters"]


def test_default_is_the_pretrained_architecture(meta):
    default = registry.build("model", "SpeechBrainECAPA", {})
    stated = registry.build("model", "SpeechBrainECAPA", meta["pretrained_architecture"])
    count = meta["pretrained_parameters"]
    assert sum(p.numel() for p in default.parameters()) == count
    assert sum(p.numel() for p in stated.parameters()) == count
    assert default.embedding_dim == 192


def test_dilations_default_without_config_and_override(reference):
    without = convert(CKPT, None, {}).model
    assert without.params.dilations == [1, 2, 3, 4, 1]
    wrong = (embed(without, reference["wave1"]) - reference["embedding1"]).abs().max().item()
    assert wrong > 100 * TOLERANCE  # dilations matter, so the config is really used
    fixed = convert(CKPT, None, {"dilations": "[1, 2, 4, 3, 1]"}).model
    diff = (embed(fixed, reference["wave1"]) - reference["embedding1"]).abs().max().item()
    assert diff <= TOLERANCE


def test_converted_records_its_origin_and_round_trips(tmp_path, reference):
    converted = convert(CKPT, CONFIG, {})
    assert converted.model_name == "SpeechBrainECAPA"
    assert converted.extra == {
        "imported_from": {"format": "speechbrain", "file": "embedding_model.ckpt"}
    }
    path = save_checkpoint(
        tmp_path / "sb.safetensors", converted.model, converted.model_name, extra=converted.extra
    )
    reloaded = load_model(path)
    diff = (embed(reloaded, reference["wave2"]) - reference["embedding2"]).abs().max().item()
    assert diff <= TOLERANCE


def test_code_running_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "embedding_model.ckpt"
    with evil.open("wb") as handle:
        pickle.dump({"blocks.0.conv.conv.weight": Payload()}, handle)
    with pytest.raises(XvecError, match="refused") as info:
        convert(evil, None, {})
    assert str(evil) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_non_ecapa_state_dict_is_one_line(tmp_path):
    other = tmp_path / "classifier.ckpt"
    torch.save({"weight": torch.randn(10, 192)}, other)
    with pytest.raises(XvecError, match="not a SpeechBrain ECAPA-TDNN") as info:
        convert(other, None, {})
    assert str(other) in str(info.value) and "\n" not in str(info.value)


def test_wrong_architecture_override_lists_keys(tmp_path):
    with pytest.raises(XvecError, match="wrong shape") as info:
        convert(CKPT, CONFIG, {"kernel_sizes": [5, 3, 3, 5, 1]})
    message = str(info.value)
    assert "blocks.3.res2net_block.blocks.0.conv.conv.weight" in message
    assert "\n" not in message


def test_unsupported_front_end_is_refused(tmp_path):
    config = tmp_path / "hyperparams.yaml"
    text = CONFIG.read_text().replace(
        "    n_mels: !ref <n_mels>\n", "    n_mels: 40\n    deltas: True\n", 1
    )
    config.write_text(text)
    with pytest.raises(XvecError, match=r"compute_features\.deltas"):
        convert(CKPT, config, {})
    config.write_text(CONFIG.read_text().replace("std_norm: False", "std_norm: True"))
    with pytest.raises(XvecError, match=r"mean_var_norm\.std_norm"):
        convert(CKPT, config, {})


def test_bad_params_are_validated():
    with pytest.raises(XvecError, match="SpeechBrainECAPA"):
        registry.build("model", "SpeechBrainECAPA", {"channels": [64, 60, 64, 64, 192]})
    with pytest.raises(XvecError, match="same length"):
        registry.build("model", "SpeechBrainECAPA", {"dilations": [1, 2, 3]})


def test_small_model_trains():
    torch.manual_seed(0)
    params = {"channels": [16, 16, 16, 48], "kernel_sizes": [5, 3, 3, 1], "dilations": [1, 2, 3, 1]}
    params |= {"attention_channels": 8, "se_channels": 8, "lin_neurons": 12, "input_size": 24}
    model = registry.build("model", "SpeechBrainECAPA", params)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    waves = torch.randn(4, 3200) * 0.1
    targets = torch.randn(4, 12)
    losses = []
    for _ in range(3):
        loss = (model(waves) - targets).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < losses[0]


def test_short_input_is_padded_not_an_error(imported):
    out = embed(imported, torch.randn(2, 100) * 0.1)  # 1 frame; the widest padding needs 5
    assert out.shape == (2, 32) and torch.isfinite(out).all()
