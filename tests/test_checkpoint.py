"""Checkpoints: self-describing round trip, atomic writes, bad files, safe VT import."""

from __future__ import annotations

import errno
import json
import os
import pickle

import pytest
import torch

from xvec import checkpoint, registry
from xvec.errors import XvecError
from xvec.interop import voxceleb_trainer


@pytest.fixture
def tiny(tiny_model_dist):
    torch.manual_seed(0)
    return registry.build("model", "TinyModel", {"nOut": 6, "hidden": 12}).eval()


def test_round_trip_rebuilds_model_from_metadata_alone(tiny, tmp_path):
    path = checkpoint.save_checkpoint(
        tmp_path / "m.safetensors", tiny, "TinyModel", extra={"epoch": 3}
    )
    loaded = checkpoint.load_model(path)
    wave = torch.randn(2, 16000)
    assert torch.equal(loaded(wave), tiny(wave))
    meta = checkpoint.read_checkpoint(path).meta
    assert meta["model"] == {
        "name": "TinyModel",
        "params": {"nOut": 6, "hidden": 12, "batch_norm": True},
        "package": "xvec-tiny",
        "package_version": "0.1",
    }
    assert meta["epoch"] == 3 and meta["embedding_dim"] == 6 and meta["sample_rate"] == 16000


def test_loss_parameters_are_stored_under_their_prefix(tiny, tmp_path):
    from xvec.losses.classification import AMSoftmax

    loss = AMSoftmax(AMSoftmax.Params(margin=0.2, scale=30), embedding_dim=6, num_classes=4)
    path = checkpoint.save_checkpoint(
        tmp_path / "m.safetensors", tiny, "TinyModel", loss=loss, loss_name="amsoftmax"
    )
    ckpt = checkpoint.read_checkpoint(path)
    assert set(ckpt.loss_state) == set(loss.state_dict())
    restored = checkpoint.build_loss(path, ckpt)
    assert restored.num_classes == 4 and restored.params.margin == 0.2
    for key, value in loss.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value)


def test_failed_write_keeps_the_previous_checkpoint(tiny, tmp_path, monkeypatch):
    path = checkpoint.save_checkpoint(tmp_path / "run" / "m.safetensors", tiny, "TinyModel")
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with torch.no_grad():
        for p in tiny.parameters():
            p.add_(1.0)
    with pytest.raises(XvecError, match=r"write failed, previous file kept.*No space left"):
        checkpoint.save_checkpoint(path, tiny, "TinyModel")
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]  # no temp file left


def test_unwritable_folder_is_a_clear_error(tiny, tmp_path):
    if os.geteuid() == 0:
        target = tmp_path / "file-not-dir" / "m.safetensors"
        (tmp_path / "file-not-dir").write_text("x")
    else:  # pragma: no cover - non-root machines
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o500)
        target = folder / "m.safetensors"
    with pytest.raises(XvecError, match=r"m\.safetensors: cannot write into"):
        checkpoint.save_checkpoint(target, tiny, "TinyModel")


def test_truncated_and_foreign_files(tiny, tmp_path):
    path = checkpoint.save_checkpoint(tmp_path / "m.safetensors", tiny, "TinyModel")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(XvecError, match="not a readable safetensors file"):
        checkpoint.read_checkpoint(cut)
    text = tmp_path / "text.safetensors"
    text.write_text("hello world, not a checkpoint")
    with pytest.raises(XvecError, match="not a readable safetensors file"):
        checkpoint.read_checkpoint(text)
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(XvecError, match="without xvec metadata"):
        checkpoint.read_checkpoint(bare)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load_naming_the_tensor(tiny, tmp_path, bad):
    with torch.no_grad():
        tiny.out.bias[1] = bad
    path = checkpoint.save_checkpoint(tmp_path / "diverged.safetensors", tiny, "TinyModel")
    with pytest.raises(
        XvecError,
        match=r"diverged\.safetensors: tensor 'model\.out\.bias' holds NaN or Inf values "
        r"\(1 of \d+ weight tensors do\)",
    ):
        checkpoint.load_model(path)


def test_xvec_files_given_to_an_importer_are_named_not_called_pickles(tiny, tmp_path):
    path = checkpoint.save_checkpoint(tmp_path / "m.safetensors", tiny, "TinyModel")
    with pytest.raises(
        XvecError, match=r"m\.safetensors: is an xvec checkpoint \(safetensors\), not a PyTorch"
    ) as caught:
        voxceleb_trainer.read_voxceleb_trainer(path)
    assert "arbitrary code" not in str(caught.value)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"  # a plain safetensors state dict is read as one
    save_file({"__S__.w": torch.ones(2)}, str(foreign))
    assert torch.equal(voxceleb_trainer.read_voxceleb_trainer(foreign)["__S__.w"], torch.ones(2))
    text = tmp_path / "notes.model"
    text.write_text('{"not": "a pickle"}')
    with pytest.raises(XvecError, match=r"notes\.model: not a readable PyTorch checkpoint \("):
        voxceleb_trainer.read_voxceleb_trainer(text)


def test_checkpoint_of_a_missing_plugin_names_the_package(tmp_path, tiny_model_dist):
    tiny = registry.build("model", "TinyModel", {})
    path = checkpoint.save_checkpoint(tmp_path / "m.safetensors", tiny, "TinyModel")
    # Rewrite the metadata as if another package (not installed) had provided the model.
    ckpt = checkpoint.read_checkpoint(path)
    ckpt.meta["model"].update(name="FancyNet", package="xvec-fancy", package_version="2.0")
    from safetensors.torch import save_file

    tensors = {checkpoint.MODEL_PREFIX + k: v for k, v in ckpt.model_state.items()}
    save_file(tensors, str(path), metadata={"xvec": json.dumps(ckpt.meta)})
    with pytest.raises(
        XvecError,
        match=r"needs model 'FancyNet' from package 'xvec-fancy'.*pip install 'xvec-fancy==2.0'",
    ):
        checkpoint.load_model(path)


def test_voxceleb_trainer_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.model"
    with evil.open("wb") as handle:
        pickle.dump({"__S__.w": Payload()}, handle)
    with pytest.raises(XvecError, match=r"refused: .*arbitrary code"):
        voxceleb_trainer.read_voxceleb_trainer(evil)
    assert not marker.exists()
    # torch.save format with a code-running object inside is refused too.
    evil_zip = tmp_path / "evil_zip.model"
    torch.save({"__S__.w": torch.zeros(1), "extra": Payload()}, evil_zip)
    marker.unlink(missing_ok=True)
    with pytest.raises(XvecError, match="refused"):
        voxceleb_trainer.read_voxceleb_trainer(evil_zip)
    assert not marker.exists()


def test_voxceleb_trainer_formats_and_key_mismatch(tmp_path, tiny_model_dist):
    torch.manual_seed(1)
    tiny = registry.build("model", "TinyModel", {})
    state = {f"__S__.{k}": v for k, v in tiny.state_dict().items()}
    legacy, current = tmp_path / "legacy.model", tmp_path / "current.model"
    torch.save(state, legacy)
    torch.save({"model_state_dict": state, "epoch": 3}, current)
    for source in (legacy, current):
        out = voxceleb_trainer.import_voxceleb_trainer(
            source, tmp_path / f"{source.stem}.safetensors", "TinyModel", {}
        )
        wave = torch.randn(1, 8000)
        assert torch.equal(checkpoint.load_model(out)(wave), tiny.eval()(wave))
    with pytest.raises(XvecError) as info:
        voxceleb_trainer.import_voxceleb_trainer(
            legacy, tmp_path / "x.safetensors", "TinyModel", {"hidden": 8}
        )
    message = str(info.value)
    assert "weights do not fit TinyModel" in message and "of wrong shape" in message
    assert "frame.weight (16, 1, 400) vs expected (8, 1, 400)" in message
    assert not (tmp_path / "x.safetensors").exists()
