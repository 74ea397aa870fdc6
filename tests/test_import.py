"""``xvec import``: architectures read off the weights, never guessed, checked against flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from xvec import checkpoint, registry
from xvec.cli import app
from xvec.errors import XvecError
from xvec.interop import FORMATS, import_checkpoint, wespeaker
from xvec.interop import voxceleb_trainer as vt

from conftest import VT_FIXTURES, requires_fixtures

runner = CliRunner()
GENERATED = Path(__file__).parent / "fixtures" / "vt_generated"
WESPEAKER = Path(__file__).parent / "fixtures" / "wespeaker"
ATOL = 1e-5  # VT fixtures' README: thread count alone moves embeddings by 1.3e-6
# The flags the fixtures' VT commands used (their README), as test_models_vt.py passes them.
VT_FLAGGED = {
    "a_ResNetSE34L_SAP_angleproto": ("ResNetSE34L", {"encoder_type": "SAP", "n_mels": 40}),
    "b_ResNetSE34L_SAP_amsoftmax": ("ResNetSE34L", {"encoder_type": "SAP", "n_mels": 40}),
    "d_VGGVox_SAP_angleproto": ("VGGVox40", {"encoder_type": "SAP", "n_mels": 40}),
}
COMMON = {"nOut": 512, "log_input": True}


def wave_of(path: Path) -> torch.Tensor:
    samples, rate = soundfile.read(str(path))
    assert rate == 16000
    return torch.from_numpy(samples.astype(np.float32))[None]


def embed(path: Path, wave: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return checkpoint.load_model(path)(wave)


def save_vt(model: torch.nn.Module, path: Path, loss: torch.nn.Module | None = None) -> Path:
    """Write ``model`` (and ``loss``) as VT's trainSpeakerNet saves a SpeakerNet."""
    state = {f"__S__.{k}": v for k, v in model.state_dict().items()}
    if loss is not None:
        state.update({f"__L__.{k}": v for k, v in loss.state_dict().items()})
    torch.save(state, path)
    return path


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(XvecError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def lite() -> torch.nn.Module:
    """A small ResNetSE34L with random weights (fast to build and run)."""
    torch.manual_seed(3)
    params = {"num_filters": [8, 16, 32, 64], "layers": [1, 2, 1, 1], "nOut": 24}
    return registry.build("model", "ResNetSE34L", params).eval()


# --------------------------------------------------------------------------- VT: real fixtures


@requires_fixtures
@pytest.mark.parametrize("folder", list(VT_FLAGGED))
def test_flagless_vt_import_equals_flagged_import(folder: str, tmp_path: Path) -> None:
    """The weights alone give the model the parity tests import with VT's flags."""
    source = VT_FIXTURES / folder / "model_legacy.model"
    name, params = VT_FLAGGED[folder]
    flagged = vt.import_voxceleb_trainer(
        source, tmp_path / "flagged.safetensors", name, {**COMMON, **params}
    )
    # log_input is stored nowhere; VGGVox has no published configuration, so it is asked for.
    overrides = {"log_input": True} if name == "VGGVox40" else {}
    summary = import_checkpoint(
        "vt", source, tmp_path / "flagless.safetensors", overrides=overrides
    )
    assert summary.model_name == name
    assert summary.params == checkpoint.read_checkpoint(flagged).model_params
    wave = wave_of(VT_FIXTURES / folder / "input.wav")
    flagless_embedding = embed(summary.output, wave)
    assert torch.equal(flagless_embedding, embed(flagged, wave))
    np.testing.assert_allclose(
        flagless_embedding.numpy(), np.load(VT_FIXTURES / folder / "emb_full.npy"), atol=ATOL
    )


@requires_fixtures
def test_amsoftmax_head_needs_its_margin_and_scale(tmp_path: Path) -> None:
    source = VT_FIXTURES / "b_ResNetSE34L_SAP_amsoftmax" / "model_legacy.model"
    without = import_checkpoint("vt", source, tmp_path / "a.safetensors")
    assert without.loss_name is None
    assert any("amsoftmax left out" in note and "--margin" in note for note in without.notes)
    assert checkpoint.read_checkpoint(without.output).loss_state == {}
    message = error_of(
        import_checkpoint, "vt", source, tmp_path / "b.safetensors", trainfunc="amsoftmax"
    )
    assert "--margin" in message and not (tmp_path / "b.safetensors").exists()
    kept = import_checkpoint("vt", source, tmp_path / "c.safetensors", margin=0.3, scale=30.0)
    assert (kept.loss_name, kept.num_classes) == ("amsoftmax", 20)
    ckpt = checkpoint.read_checkpoint(kept.output)
    loss = checkpoint.build_loss(kept.output, ckpt)
    assert loss.params.margin == 0.3 and loss.params.scale == 30.0
    _, vt_loss = vt.split_voxceleb_trainer(vt.read_voxceleb_trainer(source))
    assert torch.equal(ckpt.loss_state["W"], vt_loss["W"])


@requires_fixtures
def test_vt_config_file_supplies_the_options(tmp_path: Path) -> None:
    """VT's configs/ResNetSE34L_AM.yaml layout: its loss settings keep the head."""
    source = VT_FIXTURES / "b_ResNetSE34L_SAP_amsoftmax" / "model_legacy.model"
    config = tmp_path / "ResNetSE34L_AM.yaml"
    config.write_text(
        "model: ResNetSE34L\nlog_input: True\nencoder_type: SAP\ntrainfunc: amsoftmax\n"
        "save_path: exps/ResNetSE34L_AM\nbatch_size: 200\nscale: 30\nmargin: 0.3\n"
    )
    summary = import_checkpoint("vt", source, tmp_path / "m.safetensors", config=config)
    assert (summary.loss_name, summary.notes) == ("amsoftmax", [])
    config.write_text("model: ResNetSE34L\nencoder_type: ASP\n")
    message = error_of(import_checkpoint, "vt", source, tmp_path / "x.safetensors", config=config)
    assert "ResNetSE34L_AM.yaml: encoder_type 'ASP' contradicts the weights" in message


@requires_fixtures
def test_contradicting_flags_are_refused_naming_the_flag(tmp_path: Path) -> None:
    source = VT_FIXTURES / "a_ResNetSE34L_SAP_angleproto" / "model_legacy.model"
    out = tmp_path / "x.safetensors"
    cases = [
        ({"model": "ResNetSE34V2"}, "--model ResNetSE34V2 contradicts the weights"),
        ({"model": "VGGVox"}, "--model VGGVox40 contradicts the weights, which are a ResNetSE34L"),
        ({"overrides": {"encoder_type": "ASP"}}, "--encoder 'ASP' contradicts"),
        ({"overrides": {"n_mels": 64}}, "--n-mels 64 contradicts the weights: torchfb.mel_scale"),
        ({"overrides": {"nOut": 256}}, "--nout 256 contradicts the weights: fc.weight (512, 128)"),
        ({"overrides": {"layers": [3, 4, 6, 4]}}, "--param layers=... [3, 4, 6, 4] contradicts"),
        ({"trainfunc": "aamsoftmax"}, "--trainfunc aamsoftmax contradicts the loss weights"),
    ]
    for options, expected in cases:
        assert expected in error_of(import_checkpoint, "vt", source, out, **options)
        assert not out.exists()
    # agreeing flags are fine, and the angleproto/ge2e head needs --trainfunc to be kept
    summary = import_checkpoint(
        "vt", source, out, model="ResNetSE34L", overrides={"encoder_type": "sap", "n_mels": 40}
    )
    assert summary.loss_name is None and "angleproto or ge2e" in summary.notes[-1]
    kept = import_checkpoint("vt", source, tmp_path / "k.safetensors", trainfunc="angleproto")
    assert kept.loss_name == "angleproto"


# --------------------------------------------------------------------------- VT: generated


def _generated(folder: str) -> tuple[torch.nn.Module, dict]:
    """The fixture's VT model (seeded weights with its overrides) and its meta.json."""
    meta = json.loads((GENERATED / folder / "meta.json").read_text())
    torch.manual_seed(meta["init_seed"])
    model = registry.build("model", meta["xvec_model"], meta["xvec_params"])
    state = model.state_dict()
    state.update(load_file(str(GENERATED / folder / "overrides.safetensors")))
    model.load_state_dict(state)
    return model.eval(), meta


@pytest.mark.parametrize("folder", ["resnetse34v2_asp", "rawnet3_eca"])
def test_flagless_import_of_generated_vt_models(folder: str, tmp_path: Path) -> None:
    """ResNetSE34V2 (ASP, quarter width) and RawNet3 (C=128): VT's embeddings, no flags."""
    model, meta = _generated(folder)
    source = save_vt(model, tmp_path / "model.model")
    summary = import_checkpoint("vt", source, tmp_path / "m.safetensors")
    assert summary.model_name == meta["xvec_model"]
    for key, value in meta["xvec_params"].items():
        assert summary.params[key] == value, key
    signal = torch.from_numpy(np.load(GENERATED / "signal1.npy"))[None]
    expected = np.load(GENERATED / folder / "emb_full1.npy")
    np.testing.assert_allclose(embed(summary.output, signal).numpy(), expected, atol=ATOL)


def test_undetermined_parameters_are_asked_for(lite: torch.nn.Module, tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    torch.manual_seed(0)
    vgg_tap = registry.build("model", "VGGVox40", {"encoder_type": "TAP", "nOut": 16}).eval()
    source = save_vt(vgg_tap, tmp_path / "tap.model")
    assert "give --log-input/--no-log-input" in error_of(import_checkpoint, "vt", source, out)
    log = {"log_input": True}
    message = error_of(import_checkpoint, "vt", source, out, overrides=log)
    assert "TAP or MAX" in message and "--encoder TAP or --encoder MAX" in message
    for pooling in ("TAP", "MAX"):
        summary = import_checkpoint(
            "vt",
            source,
            tmp_path / f"{pooling}.safetensors",
            overrides={**log, "encoder_type": pooling},
        )
        assert summary.params["encoder_type"] == pooling
    wave = 0.1 * torch.randn(1, 20000)
    assert torch.equal(embed(tmp_path / "TAP.safetensors", wave), vgg_tap(wave).detach())

    # Old torchaudio saved the mel filterbank empty: n_mels is then not in the file.
    state = {f"__S__.{k}": v for k, v in lite.state_dict().items()}
    state["__S__.torchfb.mel_scale.fb"] = torch.empty(0)
    old = tmp_path / "old.model"
    torch.save(state, old)
    assert "give --n-mels" in error_of(import_checkpoint, "vt", old, out)
    summary = import_checkpoint("vt", old, out, overrides={"n_mels": 40})
    assert torch.equal(embed(out, wave), lite(wave).detach())
    assert summary.params["num_filters"] == [8, 16, 32, 64] and summary.params["nOut"] == 24


def test_unknown_architecture_asks_for_model(tmp_path: Path) -> None:
    source = tmp_path / "odd.model"
    torch.save({"__S__.frontend.weight": torch.zeros(4, 4)}, source)
    message = error_of(import_checkpoint, "vt", source, tmp_path / "x.safetensors")
    assert "odd.model: cannot tell the architecture" in message and "give --model" in message


def test_loss_layouts_are_told_apart() -> None:
    def head(name: str, **kwargs) -> dict[str, torch.Tensor]:
        return registry.build("loss", name, kwargs.pop("params", {}), **kwargs).state_dict()

    sizes = {"embedding_dim": 8, "num_classes": 5}
    assert vt.infer_loss(head("amsoftmax", **sizes)) == ("amsoftmax",)
    assert vt.infer_loss(head("aamsoftmax", **sizes)) == ("aamsoftmax",)
    assert vt.infer_loss(head("softmax", **sizes)) == ("softmax",)
    assert vt.infer_loss(head("softmaxproto", **sizes)) == ("softmaxproto",)
    assert vt.infer_loss(head("ge2e", embedding_dim=8)) == ("angleproto", "ge2e")
    assert vt.infer_loss({}) == ()


# --------------------------------------------------------------------------- dispatch, CLI


def test_unknown_format_and_foreign_options(tmp_path: Path) -> None:
    message = error_of(import_checkpoint, "kaldi", tmp_path / "a.mdl", tmp_path / "x.safetensors")
    assert message == f"unknown import format 'kaldi'; formats: {', '.join(FORMATS)}"
    message = error_of(
        import_checkpoint, "wespeaker", tmp_path / "a.pt", tmp_path / "x.safetensors", trainfunc="x"
    )
    assert "trainfunc is not an option of the 'wespeaker' import format" in message
    help_text = runner.invoke(app, ["import", "--help"], terminal_width=200).output
    for name in FORMATS:
        assert name in help_text
    vt_flags = ("--model", "--encoder", "--n-mels", "--log-input", "--nout", "--trainfunc")
    for fmt in FORMATS:  # each format offers only its own options
        text = runner.invoke(app, ["import", fmt, "--help"], terminal_width=200).output
        assert "--config" in text and "--param" in text and "--output" in text, fmt
        for flag in vt_flags:
            takes_model = flag == "--model" and "model" in FORMATS[fmt].options
            assert (flag in text) == (fmt == "vt" or takes_model), (fmt, flag)
    wrong = runner.invoke(app, ["import", "speechbrain", "a.ckpt", "-o", "b", "--nout", "4"])
    assert wrong.exit_code == 2 and "No such option: --nout" in wrong.output


@requires_fixtures
def test_cli_import_then_embed(tmp_path: Path) -> None:
    folder = VT_FIXTURES / "a_ResNetSE34L_SAP_angleproto"
    target = tmp_path / "m.safetensors"
    result = runner.invoke(app, ["import", "vt", str(folder / "model.model"), "-o", str(target)])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith("imported vt ")
    assert "as ResNetSE34L(nOut=512, encoder_type='SAP', n_mels=40, log_input=True" in line
    assert "assumed log_input=True" in line and str(target) in line
    listing = tmp_path / "files.txt"
    listing.write_text("input.wav\n")
    embeddings = tmp_path / "emb.safetensors"
    result = runner.invoke(
        app,
        [
            "embed",
            "-m",
            str(target),
            "--list",
            str(listing),
            "-r",
            str(folder),
            "-o",
            str(embeddings),
        ],
    )
    assert result.exit_code == 0, result.output
    (vector,) = [
        v for v in load_file(str(embeddings)).values() if v.dim() >= 1 and v.numel() == 512
    ]
    np.testing.assert_allclose(
        vector.reshape(1, -1).numpy(), np.load(folder / "emb_full.npy"), atol=1e-4
    )
    # the old command is an alias; a contradicting flag is one line and nothing is written
    bad = runner.invoke(
        app,
        ["import-vt", str(folder / "model.model"), "-o", str(tmp_path / "b"), "--model", "RawNet3"],
    )
    assert bad.exit_code == 1 and "--model RawNet3 contradicts the weights" in bad.output
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- WeSpeaker


def test_wespeaker_detection_on_key_names() -> None:
    resnet = dict.fromkeys(["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "seg_1.weight"])
    campplus = dict.fromkeys(
        ["head.conv1.weight", "xvector.tdnn.linear.weight", "xvector.dense.linear.weight"]
    )
    assert wespeaker.detect_model(resnet) == "WeSpeakerResNet"  # type: ignore[arg-type]
    assert wespeaker.detect_model(campplus) == "CAMPPlus"  # type: ignore[arg-type]
    assert wespeaker.detect_model(dict.fromkeys(["blocks.0.conv.weight"])) is None  # type: ignore[arg-type]


def test_wespeaker_yaml_subset_reads_a_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        'exp_dir: exp/ResNet34  # a comment\ngpus: "[0,1]"\ndataset_args:\n  fbank_args:\n'
        "    num_mel_bins: 80\n    dither: 1.0\n  spec_aug: false\nmodel: ResNet34\n"
        'model_init: null\nmodel_args:\n  feat_dim: 80\n  pooling_func: "TSTP"\n'
        "loss_args: {}\nlist:\n- 1\n- two\n"
    )
    data = wespeaker._read_yaml_subset(config, config.read_text())
    assert data == {
        "exp_dir": "exp/ResNet34",
        "gpus": "[0,1]",
        "dataset_args": {"fbank_args": {"num_mel_bins": 80, "dither": 1.0}, "spec_aug": False},
        "model": "ResNet34",
        "model_init": None,
        "model_args": {"feat_dim": 80, "pooling_func": "TSTP"},
        "loss_args": {},
        "list": [1, "two"],
    }


def _wespeaker_fixture(folder: str) -> Path:
    meta = json.loads((WESPEAKER / folder / "meta.json").read_text())
    name = "CAMPPlus" if "CAMPPlus" in meta["wespeaker_call"] else "WeSpeakerResNet"
    try:
        registry.get_class("model", name)
    except XvecError as exc:
        pytest.skip(f"{name} is not available: {exc}")
    return WESPEAKER / folder / "model.pt"


@pytest.mark.parametrize("folder", ["resnet34_m2", "resnet50_m1_two_emb", "campplus_small"])
def test_wespeaker_cli_import_gives_wespeaker_embeddings(folder: str, tmp_path: Path) -> None:
    source = _wespeaker_fixture(folder)
    target = tmp_path / "m.safetensors"
    result = runner.invoke(app, ["import", "wespeaker", str(source), "-o", str(target)])
    assert result.exit_code == 0, result.output
    meta = json.loads((WESPEAKER / folder / "meta.json").read_text())
    params = checkpoint.read_checkpoint(target).model_params
    assert {key: params[key] for key in meta["xvec_params"]} == meta["xvec_params"]
    expected = load_file(str(WESPEAKER / folder / "embeddings.safetensors"))
    signal = torch.from_numpy(np.load(GENERATED / "signal1.npy"))[None]
    torch.testing.assert_close(
        embed(target, signal)[0], expected["hamming_signal1"], atol=ATOL, rtol=0
    )


def test_wespeaker_loss_head_nesting_and_config_checks(tmp_path: Path) -> None:
    source = _wespeaker_fixture("resnet34_m2")
    state = torch.load(source, weights_only=True)
    nested = tmp_path / "model_10.pt"
    torch.save(
        {
            "model": {f"module.{k}": v for k, v in state.items()}
            | {"module.projection.weight": torch.zeros(7, 32)}
        },
        nested,
    )
    summary = import_checkpoint("wespeaker", nested, tmp_path / "a.safetensors")
    assert summary.model_name == "WeSpeakerResNet" and summary.loss_name is None
    assert summary.notes == [
        "assumed pooling_func='TSTP' with 80 mel bands (not stored; every published 16 kHz "
        "WeSpeaker ResNet uses it; seg_1 also fits TAP or TSDP with 160 mel bands: give --param "
        "pooling_func or --config if so)",
        "loss head projection.* (7 classes) left out",
    ]
    wave = 0.1 * torch.randn(1, 16000)
    direct = import_checkpoint("wespeaker", source, tmp_path / "b.safetensors")
    assert torch.equal(embed(summary.output, wave), embed(direct.output, wave))

    config = tmp_path / "config.yaml"
    config.write_text("model: ResNet34\nmodel_args:\n  feat_dim: 80\n  embed_dim: 256\n")
    message = error_of(
        import_checkpoint, "wespeaker", source, tmp_path / "c.safetensors", config=config
    )
    assert (
        "model_args.embed_dim = 256 contradicts the weights, which mean embed_dim = 32" in message
    )
    config.write_text("model: CAMPPlus\n")
    message = error_of(
        import_checkpoint, "wespeaker", source, tmp_path / "c.safetensors", config=config
    )
    assert "model: CAMPPlus contradicts the weights, which are a WeSpeakerResNet" in message
    message = error_of(
        import_checkpoint,
        "wespeaker",
        source,
        tmp_path / "c.safetensors",
        overrides={"embed_dim": 64},
    )
    assert "--param embed_dim = 64 contradicts" in message
    assert not (tmp_path / "c.safetensors").exists()


def test_speechbrain_format_is_dispatched(tmp_path: Path) -> None:
    source = Path(__file__).parent / "fixtures" / "speechbrain" / "embedding_model.ckpt"
    if not source.is_file():
        pytest.skip("SpeechBrain fixture not present")
    target = tmp_path / "sb.safetensors"
    result = runner.invoke(app, ["import", "speechbrain", str(source), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert (
        result.output.startswith("imported speechbrain ")
        and "as SpeechBrainECAPA(" in result.output
    )
    model = checkpoint.load_model(target)
    out = model(0.1 * torch.randn(1, 16000))
    assert out.shape == (1, model.embedding_dim) and torch.isfinite(out).all()
