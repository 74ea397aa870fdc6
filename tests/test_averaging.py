"""Checkpoint averaging: the element-wise mean of real checkpoints, refusals, the run's last N."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from xvec import checkpoint, registry
from xvec.errors import XvecError
from xvec.files import safetensors_metadata
from xvec.training.averaging import (
    average_checkpoints,
    epoch_model_path,
    last_saved_models,
    prune_epoch_models,
)

TINY = {"nOut": 6, "hidden": 12}


def _save_trained(path, seed: int, epoch: int, params=TINY, loss_name: str = "amsoftmax"):
    """A TinyModel whose weights and BatchNorm statistics differ by ``seed``, saved with a loss
    as the training loop saves it (epoch, step, metrics)."""
    torch.manual_seed(seed)
    model = registry.build("model", "TinyModel", params).train()
    with torch.no_grad():
        for _ in range(seed):  # running stats and num_batches_tracked differ per checkpoint
            model(torch.randn(3, 4000))
    loss = registry.build("loss", loss_name, {}, embedding_dim=params["nOut"], num_classes=5)
    extra = {"epoch": epoch, "step": 10 * epoch, "metrics": {"eer": 5.0 - epoch}}
    return checkpoint.save_checkpoint(
        path, model, "TinyModel", loss=loss, loss_name=loss_name, extra=extra
    )


@pytest.fixture
def three(tiny_model_dist, tmp_path):
    return [_save_trained(tmp_path / f"e{k}.safetensors", k, k) for k in (1, 2, 3)]


def test_average_is_the_element_wise_mean(three, tmp_path):
    output = average_checkpoints(three, tmp_path / "avg.safetensors")
    inputs = [checkpoint.read_checkpoint(path) for path in three]
    averaged = checkpoint.read_checkpoint(output)
    assert "norm.running_mean" in averaged.model_state
    assert set(averaged.loss_state) == {"W"}
    for part in ("model_state", "loss_state"):
        result = getattr(averaged, part)
        assert set(result) == set(getattr(inputs[0], part))
        for key, value in result.items():
            originals = [getattr(ckpt, part)[key] for ckpt in inputs]
            assert value.dtype == originals[0].dtype, key
            if value.is_floating_point():
                expected = torch.stack([t.to(torch.float64) for t in originals]).mean(dim=0)
                assert torch.equal(value, expected.to(value.dtype)), key
            else:
                assert torch.equal(value, originals[-1]), key
    # The BatchNorm counters differ per input: the last one's is kept.
    assert averaged.model_state["norm.num_batches_tracked"].item() == 3
    running_vars = [ckpt.model_state["norm.running_var"] for ckpt in inputs]
    assert not torch.equal(running_vars[0], running_vars[1])


def test_average_keeps_the_last_metadata_and_records_its_sources(three, tmp_path):
    output = average_checkpoints(three, tmp_path / "avg.safetensors")
    meta = checkpoint.read_checkpoint(output).meta
    last = checkpoint.read_checkpoint(three[-1]).meta
    assert meta.pop("averaged_from") == [
        {"path": str(path.resolve()), "epoch": k, "step": 10 * k}
        for k, path in enumerate(three, start=1)
    ]
    assert "metrics" in last and "metrics" not in meta  # they measured the last model only
    last.pop("metrics")
    assert meta == last
    model = checkpoint.load_model(output)  # an ordinary checkpoint: rebuilt from metadata
    assert model.embedding_dim == 6
    assert checkpoint.build_loss(output, checkpoint.read_checkpoint(output)).num_classes == 5


def test_averaging_one_checkpoint_gives_its_weights(three, tmp_path):
    output = average_checkpoints(three[:1], tmp_path / "one.safetensors")
    original, copy = (checkpoint.read_checkpoint(p) for p in (three[0], output))
    for key, value in original.model_state.items():
        assert torch.equal(copy.model_state[key], value)


def test_different_architectures_are_refused(three, tmp_path):
    wider = _save_trained(tmp_path / "wide.safetensors", 4, 4, {"nOut": 6, "hidden": 8})
    output = tmp_path / "avg.safetensors"
    with pytest.raises(XvecError) as error:
        average_checkpoints([*three, wider], output)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{wider}: model 'TinyModel'")
    assert '"hidden": 8' in message and '"hidden": 12' in message
    assert not output.exists()


def test_different_losses_are_refused(three, tmp_path):
    other = _save_trained(tmp_path / "aam.safetensors", 4, 4, loss_name="aamsoftmax")
    with pytest.raises(XvecError, match=r"aam\.safetensors: loss 'aamsoftmax'.*'amsoftmax'"):
        average_checkpoints([three[0], other], tmp_path / "avg.safetensors")


def _rewrite(path, change):
    """Rewrite a checkpoint's tensors (same metadata) with ``change(tensors)``."""
    data = path.read_bytes()
    tensors = st_load(data)
    change(tensors)
    path.write_bytes(st_save(tensors, metadata=safetensors_metadata(data)))
    return path


def test_different_weight_names_are_refused(three, tmp_path):
    _rewrite(three[1], lambda tensors: tensors.pop("model.norm.running_mean"))
    with pytest.raises(XvecError, match=r"e2\.safetensors: .*1 missing \(e\.g\. model\.norm"):
        average_checkpoints(three, tmp_path / "avg.safetensors")
    _rewrite(three[1], lambda tensors: tensors.update({"model.norm.running_mean": torch.zeros(12)}))
    _rewrite(three[2], lambda tensors: tensors.update({"loss.extra": torch.zeros(2)}))
    with pytest.raises(XvecError, match=r"e3\.safetensors: .*1 unexpected \(e\.g\. loss\.extra"):
        average_checkpoints(three, tmp_path / "avg.safetensors")


def test_different_shapes_and_dtypes_are_refused(three, tmp_path):
    _rewrite(three[2], lambda tensors: tensors.update({"loss.W": torch.zeros(6, 7)}))
    with pytest.raises(XvecError, match=r"e3\.safetensors: weight loss\.W is \(6, 7\)"):
        average_checkpoints(three, tmp_path / "avg.safetensors")
    _rewrite(three[2], lambda tensors: tensors.update({"loss.W": torch.zeros(6, 5).double()}))
    with pytest.raises(XvecError, match=r"torch\.float64.*torch\.float32"):
        average_checkpoints(three, tmp_path / "avg.safetensors")


def test_nothing_or_a_non_checkpoint_is_refused(three, tmp_path):
    with pytest.raises(XvecError, match="no checkpoints to average"):
        average_checkpoints([], tmp_path / "avg.safetensors")
    bogus = tmp_path / "notes.safetensors"
    bogus.write_text("hello")
    with pytest.raises(XvecError, match=r"notes\.safetensors: not a readable safetensors"):
        average_checkpoints([three[0], bogus], tmp_path / "avg.safetensors")


def test_loss_free_checkpoints_average(tiny_model_dist, tmp_path):
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = registry.build("model", "TinyModel", TINY)
        paths.append(
            checkpoint.save_checkpoint(tmp_path / f"m{seed}.safetensors", model, "TinyModel")
        )
    averaged = checkpoint.read_checkpoint(average_checkpoints(paths, tmp_path / "avg.safetensors"))
    assert averaged.loss_state == {} and averaged.meta["loss"] is None
    inputs = [checkpoint.read_checkpoint(p).model_state["out.weight"] for p in paths]
    expected = ((inputs[0].double() + inputs[1].double()) / 2).float()
    assert torch.equal(averaged.model_state["out.weight"], expected)


# --------------------------------------------------------------------------- a run's models


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_last_saved_models_are_the_newest_epochs_oldest_first(tmp_path):
    run = tmp_path / "run"
    saved = {epoch: _touch(epoch_model_path(run, epoch)) for epoch in (1, 2, 3, 9, 10)}
    _touch(run / "models" / "epoch_10000.safetensors")  # sorted by number, not by name
    _touch(run / "models" / ".epoch_0011.safetensors.x1y2.tmp")  # an unfinished atomic write
    _touch(run / "models" / "notes.txt")
    _touch(run / "last.safetensors")
    assert epoch_model_path(run, 7) == run / "models" / "epoch_0007.safetensors"
    assert last_saved_models(run, 3) == [
        saved[9],
        saved[10],
        run / "models" / "epoch_10000.safetensors",
    ]
    assert len(last_saved_models(run, 6)) == 6
    with pytest.raises(XvecError, match=r"last 7 models: the run kept 6 per-epoch .*at most 6"):
        last_saved_models(run, 7)


def test_prune_keeps_the_newest_epoch_models(tmp_path):
    run = tmp_path / "run"
    saved = [_touch(epoch_model_path(run, epoch)) for epoch in (1, 2, 3, 12)]
    last = _touch(run / "last.safetensors")
    assert prune_epoch_models(run, 2) == saved[:2]
    assert last_saved_models(run, 2) == saved[2:] and last.is_file()
    assert prune_epoch_models(run, 5) == []
    assert prune_epoch_models(run, 0) == saved[2:]
    assert last_saved_models(run, 1) == [last]  # only the last model is left
    assert prune_epoch_models(tmp_path / "no-run", 1) == []


def test_a_run_without_per_epoch_models_offers_its_last_model(tmp_path):
    run = tmp_path / "run"
    last = _touch(run / "last.safetensors")
    _touch(run / "best.safetensors")
    assert last_saved_models(run, 1) == [last]
    with pytest.raises(XvecError, match=r"only last\.safetensors \(no per-epoch models"):
        last_saved_models(run, 2)


def test_last_saved_models_errors(tmp_path):
    with pytest.raises(XvecError, match="run folder not found"):
        last_saved_models(tmp_path / "absent", 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        XvecError, match=r"the run kept no saved model; a run keeps .*train.keep_epoch_models = 1 "
    ):
        last_saved_models(tmp_path / "empty", 1)
    with pytest.raises(XvecError, match="at least 1"):
        last_saved_models(tmp_path / "empty", 0)


def test_average_the_last_models_of_a_run(tiny_model_dist, tmp_path):
    run = tmp_path / "run"
    for epoch in (1, 2, 3, 4):
        epoch_model_path(run, epoch).parent.mkdir(parents=True, exist_ok=True)
        _save_trained(epoch_model_path(run, epoch), epoch, epoch)
    output = average_checkpoints(last_saved_models(run, 2), run / "avg.safetensors")
    meta = checkpoint.read_checkpoint(output).meta
    assert [source["epoch"] for source in meta["averaged_from"]] == [3, 4]
    assert meta["epoch"] == 4
    assert json.loads(json.dumps(meta)) == meta


# --------------------------------------------------------------------------- xvec average


def test_xvec_average_of_a_real_run_is_the_hand_computed_mean(
    tmp_path, tone_corpus, tiny_model_dist
):
    from test_train import recipe_file

    from xvec.config import load_recipe
    from xvec.training import train

    from conftest import run_cli

    path = recipe_file(tmp_path, tone_corpus)
    train(load_recipe(path, ["train.max_epoch=3", "train.keep_epoch_models=2", "data.test_list="]))
    run = tmp_path / "run"
    result = run_cli("average", run, "--last", "2", site=tiny_model_dist)
    assert result.returncode == 0, result.stderr
    kept = [epoch_model_path(run, epoch) for epoch in (2, 3)]
    assert result.stdout.strip() == (
        f"averaged 2 models (epoch_0002.safetensors, epoch_0003.safetensors) -> "
        f"{run / 'avg.safetensors'}"
    )
    second, third = (st_load(p.read_bytes()) for p in kept)
    averaged = st_load((run / "avg.safetensors").read_bytes())
    assert averaged.keys() == second.keys()
    assert torch.equal(
        third["model.out.weight"],
        st_load((run / "last.safetensors").read_bytes())["model.out.weight"],
    )
    for key, value in averaged.items():
        if value.is_floating_point():  # by hand: (a + b) / 2 in float64, back to float32
            mean = ((second[key].double() + third[key].double()) / 2).to(value.dtype)
            assert torch.equal(value, mean), key
        else:  # BatchNorm's counter: the last model's
            assert torch.equal(value, third[key]), key
    assert not torch.equal(second["model.out.weight"], third["model.out.weight"])
    other = tmp_path / "two.safetensors"
    assert run_cli("average", run, "--last", "1", "-o", other, site=tiny_model_dist).returncode == 0
    assert torch.equal(st_load(other.read_bytes())["model.out.weight"], third["model.out.weight"])


def test_xvec_average_refusals_are_one_line(tmp_path, tone_corpus, tiny_model_dist):
    from conftest import run_cli

    run = tmp_path / "run"
    for epoch in (1, 2):
        epoch_model_path(run, epoch).parent.mkdir(parents=True, exist_ok=True)
        _save_trained(epoch_model_path(run, epoch), epoch, epoch)
    zero = run_cli("average", run, "--last", "0", site=tiny_model_dist)
    assert zero.returncode == 1 and zero.stderr.strip() == "error: --last 0: must be a number >= 1"
    many = run_cli("average", run, "--last", "3", site=tiny_model_dist)
    assert many.returncode == 1 and len(many.stderr.strip().splitlines()) == 1
    assert "cannot average the last 3 models: the run kept 2 per-epoch models" in many.stderr
    assert "train.keep_epoch_models = 3 (or more)" in many.stderr
    onto = run_cli(
        "average", run, "--last", "2", "-o", epoch_model_path(run, 2), site=tiny_model_dist
    )
    assert onto.returncode == 1 and "is also an input of this command" in onto.stderr
    assert not (run / "avg.safetensors").exists()
