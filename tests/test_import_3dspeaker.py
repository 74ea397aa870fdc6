"""``xvec import 3dspeaker``: CAM++, ERes2Net and ERes2NetV2 give 3D-Speaker's own embeddings.

The fixtures (``tests/fixtures/make_3dspeaker.py``) hold 3D-Speaker-built models with random
weights and batch-norm statistics, and the embeddings 3D-Speaker's inference (``FBank(80,
mean_nor=True)`` then the model) gives for two speechocean762 recordings, which the tests read
from the shared data folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

from xvec import checkpoint, registry
from xvec.errors import XvecError
from xvec.interop import import_checkpoint, threedspeaker

from conftest import SPEECHOCEAN, requires_speechocean, run_cli

FIXTURES = Path(__file__).parent / "fixtures" / "3dspeaker"
META = json.loads((FIXTURES / "meta.json").read_text())
CONFIGS = list(META["configs"])
# Measured: at most 6.6e-7 from 3D-Speaker's embeddings (AVX-512, and AVX2 forced with
# ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA; 1 and 2 threads): the bound leaves 15x room.
ATOL = 1e-5
MODEL_OF = {
    threedspeaker_obj: model
    for threedspeaker_obj, (model, _) in threedspeaker.MODEL_CLASSES.items()
}


@pytest.fixture(scope="module")
def waves() -> list[torch.Tensor]:
    """The fixtures' recordings as decoded here; a decoder giving other samples skips."""
    if not SPEECHOCEAN.is_dir():
        pytest.skip(f"speechocean762 data not found at {SPEECHOCEAN}")
    decoded = []
    for audio in META["audio"]:
        samples, rate = soundfile.read(str(SPEECHOCEAN / audio["path"]), dtype="float32")
        assert rate == 16000
        if hashlib.sha256(samples.tobytes()).hexdigest() != audio["sha256_float32"]:
            pytest.skip(f"{audio['path']} decodes to other samples than the fixtures' did")
        decoded.append(torch.from_numpy(np.ascontiguousarray(samples))[None])
    return decoded


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "embeddings.safetensors"))


def saved_like_3dspeaker(name: str, folder: Path) -> Path:
    """The fixture's state dict as 3D-Speaker's Checkpointer writes it (``torch.save``)."""
    path = folder / f"{name}.ckpt"
    torch.save(load_file(str(FIXTURES / f"{name}.safetensors")), path)
    return path


def max_difference(
    model_path: Path, waves: list[torch.Tensor], expected: list[torch.Tensor]
) -> float:
    model = checkpoint.load_model(model_path)
    with torch.no_grad():
        return max(
            (model(wave)[0] - target).abs().max().item()
            for wave, target in zip(waves, expected, strict=True)
        )


def expected_of(name: str, reference: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [reference[f"{name}/{index}"] for index in range(len(META["audio"]))]


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(XvecError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def yaml_config(folder: Path, obj: str, args: dict, mean_nor: bool = True) -> Path:
    """A 3D-Speaker training YAML (their layout, ``<name>`` references included)."""
    lines = ["fbank_dim: 80", "sample_rate: 16000", "", "feature_extractor:"]
    lines += ["  obj: speakerlab.process.processor.FBank", "  args:"]
    lines += ["    n_mels: <fbank_dim>", "    sample_rate: <sample_rate>"]
    lines += [f"    mean_nor: {mean_nor}", "", "embedding_model:", f"  obj: {obj}", "  args:"]
    for key, value in args.items():
        text = "<fbank_dim>" if key == "feat_dim" else json.dumps(value)
        lines.append(f"    {key}: {text}")
    path = folder / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- parity


@requires_speechocean
@pytest.mark.parametrize("name", [name for name in CONFIGS if name != "eres2net_tsdp"])
def test_import_gives_3dspeaker_embeddings(name, waves, reference, tmp_path: Path) -> None:
    """Flagless import of each 3D-Speaker model embeds as 3D-Speaker's own inference does."""
    source = saved_like_3dspeaker(name, tmp_path)
    summary = import_checkpoint("3dspeaker", source, tmp_path / "model.safetensors")
    assert summary.model_name == MODEL_OF[META["configs"][name]["obj"]]
    assert summary.loss_name is None
    assert any("mean normalisation" in note for note in summary.notes)
    difference = max_difference(summary.output, waves, expected_of(name, reference))
    assert difference <= ATOL, f"{name}: max |diff| {difference:.2e}"


@requires_speechocean
@pytest.mark.parametrize("name", ["campplus_small", "eres2netv2_w24s4ep4_two_emb"])
def test_cli_import_gives_3dspeaker_embeddings(name, waves, reference, tmp_path: Path) -> None:
    source = saved_like_3dspeaker(name, tmp_path)
    target = tmp_path / "model.safetensors"
    result = run_cli("import", "3dspeaker", source, "-o", target)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    assert f"imported 3dspeaker {source}" in result.stdout
    assert max_difference(target, waves, expected_of(name, reference)) <= ATOL


def test_imported_params_are_what_3dspeaker_built(tmp_path: Path) -> None:
    """Every size 3D-Speaker was given (or defaulted) is read back from the weights alone."""
    source = saved_like_3dspeaker("eres2net_huge_m4", tmp_path)
    summary = import_checkpoint("3dspeaker", source, tmp_path / "m.safetensors")
    assert summary.params | {"num_blocks": tuple(summary.params["num_blocks"])} == {
        "feat_dim": 80,
        "embed_dim": 32,
        "m_channels": 4,
        "base_width": 24,
        "scale": 3,
        "expansion": 4,
        "num_blocks": (3, 4, 6, 3),
        "pooling": "TSTP",
        "two_emb_layer": False,
        "mean_norm": True,
    }
    # m_channels 4 leaves base widths 24 and 25 the same network: said, not hidden
    assert any("base_width 24 (any of 24..25" in note for note in summary.notes)
    source = saved_like_3dspeaker("campplus_small", tmp_path)
    summary = import_checkpoint("3dspeaker", source, tmp_path / "c.safetensors")
    assert summary.params["toolkit"] == "3dspeaker"
    assert summary.params["window"] == "povey"
    assert summary.params["dither"] == 0.0
    assert (summary.params["growth_rate"], summary.params["bn_size"]) == (8, 2)


def test_nested_and_dataparallel_checkpoints_import_alike(tmp_path: Path) -> None:
    state = load_file(str(FIXTURES / "eres2netv2_m8.safetensors"))
    nested = tmp_path / "nested.ckpt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, nested)
    plain = saved_like_3dspeaker("eres2netv2_m8", tmp_path)
    first = import_checkpoint("3dspeaker", nested, tmp_path / "a.safetensors")
    second = import_checkpoint("3dspeaker", plain, tmp_path / "b.safetensors")
    assert first.params == second.params
    a, b = (checkpoint.load_model(s.output).state_dict() for s in (first, second))
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_published_parameter_counts_match_3dspeaker() -> None:
    """xvec's builds of the published 3D-Speaker models have 3D-Speaker's parameter counts."""
    for name, entry in META["published_parameter_counts"].items():
        model_name, defaults = threedspeaker.MODEL_CLASSES[entry["obj"]]
        params = dict(defaults)
        for key, value in entry["args"].items():
            params[threedspeaker.ARGUMENT_NAMES[key]] = value
        with torch.device("meta"):
            model = registry.build("model", model_name, params)
        count = sum(p.numel() for p in model.parameters())
        assert count == entry["parameters"], name


# --------------------------------------------------------------------------- ambiguity


@requires_speechocean
def test_ambiguous_pooling_is_refused_then_settled(waves, reference, tmp_path: Path) -> None:
    """TSDP at 80 bands has TSTP-at-40's weights: the import asks, --param or --config settle."""
    source = saved_like_3dspeaker("eres2net_tsdp", tmp_path)
    message = error_of(import_checkpoint, "3dspeaker", source, tmp_path / "x.safetensors")
    assert "pooling is ambiguous" in message
    assert "TSTP with 40 mel bands, TAP or TSDP with 80 mel bands" in message
    assert "--config" in message and "--param pooling=TSTP|TAP|TSDP" in message
    assert not (tmp_path / "x.safetensors").exists()
    # the mel bands alone leave TAP and TSDP
    message = error_of(
        import_checkpoint,
        "3dspeaker",
        source,
        tmp_path / "x.safetensors",
        overrides={"feat_dim": 80},
    )
    assert "TAP or TSDP" in message and "--param pooling=TAP|TSDP" in message
    expected = expected_of("eres2net_tsdp", reference)
    by_param = import_checkpoint(
        "3dspeaker", source, tmp_path / "p.safetensors", overrides={"pooling": "TSDP"}
    )
    assert (by_param.params["pooling"], by_param.params["feat_dim"]) == ("TSDP", 80)
    assert max_difference(by_param.output, waves, expected) <= ATOL
    config = yaml_config(tmp_path, **META["configs"]["eres2net_tsdp"])
    by_config = import_checkpoint("3dspeaker", source, tmp_path / "c.safetensors", config=config)
    assert by_config.params == by_param.params
    assert not any("assumed" in note for note in by_config.notes)
    assert max_difference(by_config.output, waves, expected) <= ATOL


def test_cli_refuses_ambiguous_pooling_in_one_line(tmp_path: Path) -> None:
    source = saved_like_3dspeaker("eres2net_tsdp", tmp_path)
    result = run_cli("import", "3dspeaker", source, "-o", tmp_path / "x.safetensors")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--param pooling=" in lines[0], result.stderr
    settled = run_cli(
        "import", "3dspeaker", source, "-o", tmp_path / "y.safetensors", "--param", "pooling=TSDP"
    )
    assert settled.returncode == 0, settled.stderr


# --------------------------------------------------------------------------- config checks


def test_config_matching_the_weights_imports_without_assumptions(tmp_path: Path) -> None:
    source = saved_like_3dspeaker("campplus_small", tmp_path)
    config = yaml_config(tmp_path, **META["configs"]["campplus_small"])
    summary = import_checkpoint("3dspeaker", source, tmp_path / "m.safetensors", config=config)
    assert summary.notes == []
    assert summary.params["embed_dim"] == 64


def test_config_contradicting_the_weights_is_an_error(tmp_path: Path) -> None:
    source = saved_like_3dspeaker("campplus_small", tmp_path)
    # the published VoxCeleb recipe: CAMPPlus with its default widths and embedding_size 512
    config = yaml_config(
        tmp_path,
        "speakerlab.models.campplus.DTDNN.CAMPPlus",
        {"feat_dim": 80, "embedding_size": 512},
    )
    message = error_of(
        import_checkpoint, "3dspeaker", source, tmp_path / "m.safetensors", config=config
    )
    assert "embedding_size = 512 contradicts the weights, which mean embed_dim = 64" in message
    config = yaml_config(
        tmp_path, "speakerlab.models.eres2net.ERes2NetV2.ERes2NetV2", {"feat_dim": 80}
    )
    message = error_of(
        import_checkpoint, "3dspeaker", source, tmp_path / "m.safetensors", config=config
    )
    assert "contradicts the weights (CAMPPlus)" in message
    huge = saved_like_3dspeaker("eres2net_huge_m4", tmp_path)
    message = error_of(
        import_checkpoint,
        "3dspeaker",
        huge,
        tmp_path / "m.safetensors",
        overrides={"baseWidth": 32},
    )
    assert "--param baseWidth = 32 contradicts the weights' group widths (base width 24..25)" in (
        message
    )
    message = error_of(
        import_checkpoint, "3dspeaker", huge, tmp_path / "m.safetensors", model="ERes2NetV2"
    )
    assert "--model ERes2NetV2 contradicts the weights, which are a ERes2Net" in message


def test_config_without_mean_normalisation(tmp_path: Path) -> None:
    """``mean_nor: False`` is kept for ERes2Net; xvec's CAM++ cannot drop it, so it refuses."""
    source = saved_like_3dspeaker("eres2net_m8", tmp_path)
    config = yaml_config(tmp_path, **META["configs"]["eres2net_m8"], mean_nor=False)
    summary = import_checkpoint("3dspeaker", source, tmp_path / "m.safetensors", config=config)
    assert summary.params["mean_norm"] is False
    source = saved_like_3dspeaker("campplus_small", tmp_path)
    config = yaml_config(tmp_path, **META["configs"]["campplus_small"], mean_nor=False)
    message = error_of(
        import_checkpoint, "3dspeaker", source, tmp_path / "m.safetensors", config=config
    )
    assert "turns mean normalisation off" in message


# --------------------------------------------------------------------------- refusals


class RunsCode:
    """Unpickling this would call ``os.makedirs``: a stand-in for a malicious payload."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (str(self.target),))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "was_run"
    source = tmp_path / "evil.ckpt"
    state = load_file(str(FIXTURES / "eres2net_tsdp.safetensors"))
    torch.save({**state, "payload": RunsCode(marker)}, source)
    message = error_of(import_checkpoint, "3dspeaker", source, tmp_path / "m.safetensors")
    assert "refused: loading it would run arbitrary code" in message
    assert not marker.exists()
    assert not (tmp_path / "m.safetensors").exists()


def test_other_files_are_refused_with_what_they_are(tmp_path: Path) -> None:
    classifier = tmp_path / "classifier.ckpt"
    torch.save({"weight": torch.zeros(7, 32)}, classifier)
    message = error_of(import_checkpoint, "3dspeaker", classifier, tmp_path / "m.safetensors")
    assert "3D-Speaker's classifier (7 classes)" in message
    assert "embedding_model.ckpt" in message
    other = tmp_path / "ecapa.ckpt"
    torch.save({"blocks.0.conv.weight": torch.zeros(2, 2)}, other)
    message = error_of(import_checkpoint, "3dspeaker", other, tmp_path / "m.safetensors")
    assert "not a 3D-Speaker CAM++, ERes2Net or ERes2NetV2 state dict" in message


# --------------------------------------------------------------------------- the models


def test_eres2net_pads_short_input_and_batches() -> None:
    torch.manual_seed(0)
    model = registry.build(
        "model", "ERes2NetV2", {"m_channels": 8, "embed_dim": 16, "num_blocks": (1, 1, 1, 1)}
    ).eval()
    with torch.no_grad():
        short = model(0.1 * torch.randn(2, 800))  # 0.05 s: padded to 9 frames
        assert short.shape == (2, 16) and torch.isfinite(short).all()
        wave = 0.1 * torch.randn(3, 16000)
        batch = model(wave)
        single = torch.cat([model(wave[index : index + 1]) for index in range(3)])
    assert torch.allclose(batch, single, atol=1e-5)
