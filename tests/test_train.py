"""Training: end to end, exact resume (also after SIGKILL), NaN stop, recipe checks, DDP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from xvec.config import load_recipe
from xvec.errors import XvecError
from xvec.runlog import read_log
from xvec.training import train

from conftest import Recorder, after_steps, make_distribution

RECIPE = """
[data]
train_list = "{root}/train_list.txt"
train_path = "{root}/audio"
test_list = "{root}/trials.txt"
test_path = "{root}/audio"
max_frames = 50

[model]
name = "TinyModel"
nOut = 8

[loss]
name = "softmax"

[optim]
lr = 0.01

[train]
max_epoch = 2
batch_size = 4
test_interval = 1
seed = 3
num_workers = 0
output_dir = "{out}"
log_every = 1
deterministic = true
"""


def recipe_file(tmp_path: Path, corpus: Path, out: str = "run", extra: str = "") -> Path:
    path = tmp_path / f"{out}.toml"
    path.write_text(RECIPE.format(root=corpus, out=tmp_path / out) + extra)
    return path


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last.safetensors"))


def test_train_end_to_end_writes_everything_and_prints_nothing(
    tmp_path, tone_corpus, tiny_model_dist, capsys
):
    seen = Recorder()
    outcome = train(load_recipe(recipe_file(tmp_path, tone_corpus)), observer=seen)
    run = tmp_path / "run"
    for name in (
        "last.safetensors",
        "best.safetensors",
        "state.safetensors",
        "log.jsonl",
        "recipe.json",
        "scores.txt",
        "result.json",
        "hist.png",
        "curves.png",
    ):
        assert (run / name).is_file(), name
    records = read_log(run)
    train_steps = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 2 and 0 <= evals[-1]["eer"] <= 100
    assert train_steps[-1]["step"] == len(train_steps)  # 4 speakers x 4 utts / 4 per batch x 2
    assert outcome is not None and outcome.run_dir == run and outcome.evaluated
    epoch = ["epoch_started", "step_done", "epoch_ended"]
    evaluation = ["evaluation_started", "evaluation_progress", "evaluated"]
    assert seen.names() == ["started", *epoch, *evaluation, *epoch, *evaluation, "final_evaluation"]
    evaluated = [args for name, args in seen.events if name == "evaluated"]
    assert evaluated == [1, 2]  # the epochs
    assert capsys.readouterr() == ("", "")  # the library prints nothing; the observer is told
    from xvec.checkpoint import read_checkpoint

    meta = read_checkpoint(run / "best.safetensors").meta
    assert meta["loss"]["name"] == "softmax"
    assert meta["recipe"]["train"]["batch_size"] == 4


def test_speed_speakers_train_a_head_with_three_times_the_speakers(
    tmp_path, tone_corpus, tiny_model_dist
):
    extra = '\n[augment]\nspeed_perturb = "new_speakers"\n'
    recipe = load_recipe(recipe_file(tmp_path, tone_corpus, extra=extra))
    assert recipe.augment.speed_speakers
    train(recipe)
    from xvec.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(tmp_path / "run" / "last.safetensors")
    assert checkpoint.meta["loss"]["num_classes"] == 3 * 4  # 4 training speakers x 3 speeds
    head = [v for k, v in weights(tmp_path / "run").items() if k.startswith("loss.")]
    assert any(12 in v.shape for v in head)


def test_stop_and_resume_is_exact(tmp_path, tone_corpus, tiny_model_dist):
    train(load_recipe(recipe_file(tmp_path, tone_corpus, "straight")))
    interrupted = load_recipe(recipe_file(tmp_path, tone_corpus, "resumed"))
    train(interrupted, stop_when=after_steps(3))  # stops mid-epoch 1
    assert not (tmp_path / "resumed" / "last.safetensors").exists()
    train(interrupted, resume=True, stop_when=after_steps(2))  # into epoch 2
    train(interrupted, resume=True)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


ECAPA_MODEL = """
[model]
name = "ECAPA-TDNN"
channels = 16
embedding_size = 8
n_mels = 16
"""
DITHERED_MODEL = """
[model]
name = "WeSpeakerResNet"
depth = 18
m_channels = 4
feat_dim = 16
embed_dim = 8
"""
SPEC_AUGMENT = "\n[augment.spec_augment]\nprobability = 1.0\nmax_frames = 5\nmax_bands = 4\n"


def model_recipe(
    tmp_path: Path,
    corpus: Path,
    out: str,
    model: str = ECAPA_MODEL,
    extra: str = "",
    train_lines: str = "",
) -> Path:
    """The test recipe with ``model`` (a TOML [model] section) in place of TinyModel,
    ``train_lines`` added to [train] and ``extra`` at the end."""
    text = RECIPE.format(root=corpus, out=tmp_path / out)
    text = text.replace('[model]\nname = "TinyModel"\nnOut = 8\n', model)
    text = text.replace("[train]\n", f"[train]\n{train_lines}\n")
    path = tmp_path / f"{out}.toml"
    path.write_text(text + extra)
    return path


def resume_twice(recipe) -> None:
    """Train ``recipe`` stopped mid-epoch 1, resumed into epoch 2 and stopped, then finished."""
    train(recipe, stop_when=after_steps(3))
    train(recipe, resume=True, stop_when=after_steps(2))  # into epoch 2
    train(recipe, resume=True)


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    a, b = weights(run_a), weights(run_b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    ("model", "extra"),
    [(ECAPA_MODEL, SPEC_AUGMENT), (DITHERED_MODEL, "")],
    ids=["spec_augment", "fbank_dither"],
)
def test_a_model_that_draws_random_numbers_resumes_exactly(tmp_path, tone_corpus, model, extra):
    train(load_recipe(model_recipe(tmp_path, tone_corpus, "straight", model, extra)))
    resume_twice(load_recipe(model_recipe(tmp_path, tone_corpus, "resumed", model, extra)))
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


def test_spec_augment_changes_what_a_run_learns(tmp_path, tone_corpus):
    train(load_recipe(model_recipe(tmp_path, tone_corpus, "plain")))
    train(load_recipe(model_recipe(tmp_path, tone_corpus, "masked", extra=SPEC_AUGMENT)))
    plain, masked = weights(tmp_path / "plain"), weights(tmp_path / "masked")
    assert any(not torch.equal(plain[key], masked[key]) for key in plain)


def test_spec_augment_masks_the_front_end_only_while_training(tmp_path, tone_corpus):
    from xvec import registry
    from xvec.training.inputs import add_spec_augment

    recipe = load_recipe(model_recipe(tmp_path, tone_corpus, "run", extra=SPEC_AUGMENT))
    model = registry.build("model", recipe.model.name, recipe.model.params)
    plain = registry.build("model", recipe.model.name, recipe.model.params)
    plain.load_state_dict(model.state_dict())
    add_spec_augment(recipe, model)
    waves = torch.randn(3, 16000)
    model.eval(), plain.eval()
    assert torch.equal(model(waves), plain(waves))
    model.train()
    masked, features = model.fbank(waves), plain.fbank(waves)
    hidden_frames = (masked != features).all(dim=1).sum(dim=1)  # every row: probability 1
    assert ((hidden_frames >= 1) & (hidden_frames <= 5)).all()


def test_spec_augment_is_refused_for_a_model_without_a_marked_front_end(tmp_path, tone_corpus):
    recipe = load_recipe(
        conv2d_recipe(tmp_path, tone_corpus, "run", ""), ["augment.spec_augment={}"]
    )
    with pytest.raises(XvecError, match=r"augment.spec_augment: model ResNetSE34L .* found none"):
        train(recipe)
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


CONV2D_MODEL = """
[model]
name = "ResNetSE34L"
nOut = 8
n_mels = 16
num_filters = [{widths}]
layers = [1, 1, 1, 1]
"""


def conv2d_recipe(
    tmp_path: Path, corpus: Path, out: str, train_lines: str, widths: str = "16, 16, 32, 32"
) -> Path:
    """The test recipe with a small ResNetSE34L (2-D convolutions) in place of TinyModel."""
    model = CONV2D_MODEL.format(widths=widths)
    return model_recipe(tmp_path, corpus, out, model, train_lines=train_lines)


def test_channels_last_training_resumes_exactly(tmp_path, tone_corpus):
    seen = Recorder()
    train(load_recipe(conv2d_recipe(tmp_path, tone_corpus, "straight", "")), observer=seen)
    started = next(args for name, args in seen.events if name == "started")
    assert started.channels_last  # auto: on for the CPU, and the model has 2-D convolutions
    # the restored Adam moments must take the parameters' layout
    resume_twice(load_recipe(conv2d_recipe(tmp_path, tone_corpus, "resumed", "")))
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


def test_bf16_channels_last_skips_the_layers_onednn_corrupts_memory_on(
    tmp_path, tone_corpus, monkeypatch
):
    # 8 channels into layer2's strided 1x1 downsample: its bf16 channels-last weight gradient
    # aborted the process (heap corruption) on an AMD Zen 4 (no AMX): "auto" keeps the default
    # layout there, and "true" is refused before anything is written
    from xvec.training import optim

    monkeypatch.setattr(optim, "_cpu_has_amx", lambda: False)
    lines = 'mixed_precision = "bf16"\nmax_steps = 2'
    seen = Recorder()
    path = conv2d_recipe(tmp_path, tone_corpus, "auto", lines, widths="8, 8, 16, 16")
    train(load_recipe(path), observer=seen)
    assert not next(args for name, args in seen.events if name == "started").channels_last
    assert [r["step"] for r in read_log(tmp_path / "auto") if r["kind"] == "train"] == [1, 2]
    forced = conv2d_recipe(
        tmp_path, tone_corpus, "forced", f"{lines}\nchannels_last = true", widths="8, 8, 16, 16"
    )
    with pytest.raises(XvecError, match=r"layer '.*layer2\.0\.downsample\.0'.*mixed_precision"):
        train(load_recipe(forced))
    assert not (tmp_path / "forced").exists()

    # where it is safe (AMX, fp32, or no such layer) the layout stays channels-last
    from xvec import registry

    cpu = torch.device("cpu")
    params = {"nOut": 8, "n_mels": 16, "layers": [1, 1, 1, 1]}
    narrow = registry.build("model", "ResNetSE34L", {**params, "num_filters": [8, 8, 16, 16]})
    wide = registry.build("model", "ResNetSE34L", {**params, "num_filters": [16, 16, 32, 32]})
    assert optim.channels_last_on(cpu, "auto", wide, bf16_autocast=True)
    assert optim.channels_last_on(cpu, "auto", narrow, bf16_autocast=False)
    monkeypatch.setattr(optim, "_cpu_has_amx", lambda: True)
    assert optim.channels_last_on(cpu, "auto", narrow, bf16_autocast=True)


def test_fp32_channels_last_skips_the_layers_onednn_corrupts_memory_on_avx2(
    tmp_path, tone_corpus, monkeypatch
):
    # 4 channels into layer2's strided 1x1 shortcut (DITHERED_MODEL): its float32 channels-last
    # weight gradient aborted the process (heap corruption) on an AMD Zen 3 (AVX2, no
    # AVX-512): "auto" keeps the default layout there, and "true" is refused before anything
    # is written
    from xvec import registry
    from xvec.training import optim

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    lines = "mixed_precision = false\nmax_steps = 2"
    seen = Recorder()
    path = model_recipe(tmp_path, tone_corpus, "auto", DITHERED_MODEL, train_lines=lines)
    train(load_recipe(path), observer=seen)
    assert not next(args for name, args in seen.events if name == "started").channels_last
    assert [r["step"] for r in read_log(tmp_path / "auto") if r["kind"] == "train"] == [1, 2]
    forced = model_recipe(
        tmp_path,
        tone_corpus,
        "forced",
        DITHERED_MODEL,
        train_lines=f"{lines}\nchannels_last = true",
    )
    with pytest.raises(XvecError, match=r"layer '.*layer2\.0\.shortcut\.0'.*AVX2 float32"):
        train(load_recipe(forced))
    assert not (tmp_path / "forced").exists()

    # 8 channels, or an AVX-512 CPU: channels-last
    cpu = torch.device("cpu")
    params = {"depth": 18, "feat_dim": 16, "embed_dim": 8}
    narrow = registry.build("model", "WeSpeakerResNet", {**params, "m_channels": 4})
    wide = registry.build("model", "WeSpeakerResNet", {**params, "m_channels": 8})
    assert optim.channels_last_on(cpu, "auto", wide, bf16_autocast=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert optim.channels_last_on(cpu, "auto", narrow, bf16_autocast=False)


def test_channels_last_computes_the_default_layouts_values(tmp_path, tone_corpus):
    losses = {}
    for layout in ("true", "false"):
        seen = Recorder()
        lines = f"channels_last = {layout}\nmixed_precision = false\nmax_steps = 2"
        train(load_recipe(conv2d_recipe(tmp_path, tone_corpus, layout, lines)), observer=seen)
        assert next(args for name, args in seen.events if name == "started").channels_last == (
            layout == "true"
        )
        losses[layout] = [r["loss"] for r in read_log(tmp_path / layout) if r["kind"] == "train"]
    # float32 rounding apart, the same first step and the same update (Adam then amplifies
    # rounding: by step 6 the runs differ by 1e-3)
    assert len(losses["true"]) == 2
    np.testing.assert_allclose(losses["true"], losses["false"], rtol=1e-4)


def test_existing_run_needs_resume_and_same_recipe(tmp_path, tone_corpus, tiny_model_dist):
    path = recipe_file(tmp_path, tone_corpus)
    train(load_recipe(path), stop_when=after_steps(1))
    with pytest.raises(XvecError, match="holds a previous run; add --resume"):
        train(load_recipe(path))
    with pytest.raises(XvecError, match=r"the \[model\] section differs"):
        train(load_recipe(path, ["model.nOut=4"]), resume=True)


def test_metric_loss_needs_two_per_speaker_and_enough_speakers(
    tmp_path, tone_corpus, tiny_model_dist
):
    path = recipe_file(tmp_path, tone_corpus)
    with pytest.raises(XvecError, match=r"needs train.nPerSpeaker >= 2.*train.nPerSpeaker=2"):
        train(load_recipe(path, ["loss.name=angleproto"]))
    path2 = recipe_file(tmp_path, tone_corpus, "metric")
    with pytest.raises(
        XvecError, match=r"batch_size 8 exceeds the 4 training speakers.*batch_size=4"
    ):
        train(
            load_recipe(
                path2, ["loss.name=angleproto", "train.nPerSpeaker=2", "train.batch_size=8"]
            )
        )
    with pytest.raises(XvecError, match=r"train.nClasses is 10 but .* has 4 speakers"):
        train(load_recipe(path2, ["train.nClasses=10"]))


NAN_LOSS = '''
import torch
from xvec.plugin import SpeakerLoss


class NanAfter(SpeakerLoss):
    """Returns NaN from the third call on."""

    calls = 0

    def __init__(self, params, embedding_dim, num_classes=None):
        super().__init__(params, embedding_dim, num_classes)
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x, labels):
        type(self).calls += 1
        value = (x.pow(2).mean() * self.w).squeeze()
        if type(self).calls >= 3:
            value = value * float("nan")
        return value, torch.tensor(0.0)
'''


def test_nan_loss_stops_with_epoch_and_step(tmp_path, tone_corpus, tiny_model_dist, monkeypatch):
    from xvec import registry

    root = make_distribution(
        tmp_path / "nan",
        "xvec-nan",
        {"xvec.losses": {"nanafter": "xvec_nan:NanAfter"}},
        {"xvec_nan": NAN_LOSS},
    )
    monkeypatch.syspath_prepend(str(root))
    registry.refresh()
    path = recipe_file(tmp_path, tone_corpus, extra="")
    with pytest.raises(XvecError, match=r"loss became nan at epoch 1, step 3; stopped"):
        train(load_recipe(path, ["loss.name=nanafter", "train.save_every_steps=1"]))
    sys.modules.pop("xvec_nan", None)
    state = load_file(str(tmp_path / "run" / "state.safetensors"))
    assert all(torch.isfinite(v).all() for k, v in state.items() if v.is_floating_point())


def _env_with(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    return env


def _xvec_train(recipe: Path, env: dict[str, str], *args: str, **kwargs):
    command = [sys.executable, "-m", "xvec", "train", str(recipe), *args]
    return subprocess.Popen(command, env=env, **kwargs)


def _wait_for_log_lines(log: Path, count: int, timeout: float = 300) -> None:
    """Wait until the run's log has ``count`` records. The deadline is generous (a loaded
    machine takes minutes to start torch in a child); a passing test returns at once."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"{log} did not reach {count} records")


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_matches_uninterrupted(
    tmp_path, tone_corpus, tiny_model_dist
):
    env = _env_with(tiny_model_dist)
    # fp32: bf16 autocast (on CPUs that have it) leaves kernel choice to oneDNN.
    overrides = ["--set", "train.save_every_steps=1", "--set", "train.max_epoch=3"]
    overrides += ["--set", "train.mixed_precision=false"]
    straight = recipe_file(tmp_path, tone_corpus, "straight")
    assert _xvec_train(straight, env, *overrides, stdout=subprocess.DEVNULL).wait() == 0
    killed = recipe_file(tmp_path, tone_corpus, "killed")
    log = tmp_path / "killed" / "log.jsonl"
    resume: list[str] = []
    final = len((tmp_path / "straight" / "log.jsonl").read_text().splitlines())
    # Kill early in epoch 1, mid epoch 2 (around an end-of-epoch checkpoint), in epoch 3, and
    # after the last record, while the final outputs (scores, plots, result) are being written.
    for records in (3, 9, 15, final):
        proc = _xvec_train(
            killed, env, *overrides, *resume, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_for_log_lines(log, records)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        if records == final:
            assert not (tmp_path / "killed" / "curves.png").exists()
        resume = ["--resume"]
        from xvec.checkpoint import read_checkpoint

        if (tmp_path / "killed" / "last.safetensors").exists():
            read_checkpoint(tmp_path / "killed" / "last.safetensors")  # always loadable
    result = _xvec_train(killed, env, *overrides, "--resume", stderr=subprocess.PIPE, text=True)
    _, stderr = result.communicate()
    assert result.returncode == 0, stderr
    for output in ("scores.txt", "result.json", "hist.png", "curves.png"):
        assert (tmp_path / "killed" / output).is_file(), output
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sigint_saves_state_and_says_how_to_resume(tmp_path, tone_corpus, tiny_model_dist):
    env = _env_with(tiny_model_dist)
    path = recipe_file(tmp_path, tone_corpus)
    proc = _xvec_train(path, env, "--set", "train.max_epoch=50", stderr=subprocess.PIPE, text=True)
    _wait_for_log_lines(tmp_path / "run" / "log.jsonl", 3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in stderr and "--resume" in stderr
    assert (tmp_path / "run" / "state.safetensors").is_file()


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path, tone_corpus, tiny_model_dist):
    """DDP deals each global batch out to the ranks: same batches, same crops, same steps."""
    env = _env_with(tiny_model_dist)
    settings = [
        "optim.optimizer=sgd", "optim.lr=0.05", "model.batch_norm=false", "train.max_epoch=1",
        "data.test_list=",
        # bf16 autocast (on CPUs that have it) rounds differently with half batches.
        "train.mixed_precision=false",
    ]  # fmt: skip
    train(load_recipe(recipe_file(tmp_path, tone_corpus, "single"), settings))  # in this process
    double = recipe_file(tmp_path, tone_corpus, "double")
    proc = _xvec_train(
        double,
        env,
        *[arg for setting in settings for arg in ("--set", setting)],
        "--nproc",
        "2",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    a, b = weights(tmp_path / "single"), weights(tmp_path / "double")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)
    steps = [r for r in read_log(tmp_path / "double") if r["kind"] == "train"]
    assert len(steps) == len([r for r in read_log(tmp_path / "single") if r["kind"] == "train"])


def test_decode_cache_in_the_recipe_gives_the_same_weights(tmp_path, tone_corpus, tiny_model_dist):
    plain = tmp_path / "plain"
    train(load_recipe(recipe_file(tmp_path, tone_corpus, "plain")), stop_when=after_steps(2))
    cache = tmp_path / "decoded"
    cached_recipe = load_recipe(
        recipe_file(tmp_path, tone_corpus, "cached"), [f"data.decode_cache={cache}"]
    )
    train(cached_recipe, stop_when=after_steps(2))
    assert any(cache.rglob("*.npy"))  # the loader filled the cache
    a = load_file(str(plain / "state.safetensors"))
    b = load_file(str(tmp_path / "cached" / "state.safetensors"))
    for key in a:
        if key.startswith("net."):
            assert torch.equal(a[key], b[key]), key


def _worker_niceness(tmp_path: Path, corpus: Path, device: str, *overrides: str) -> int:
    """How much nicer than this process the recipe's one loader worker runs."""
    from xvec import registry
    from xvec.training.inputs import build_loader, read_data

    recipe = load_recipe(recipe_file(tmp_path, corpus), ["train.num_workers=1", *overrides])
    train_list, _ = read_data(recipe)
    loss = registry.build("loss", "softmax", {}, embedding_dim=8, num_classes=4)
    _, loader = build_loader(recipe, train_list, loss, 0, 1, torch.device(device))
    batches = iter(loader)
    next(batches)  # the worker has run its init
    worker = batches._workers[0].pid  # type: ignore[attr-defined]
    try:
        return os.getpriority(os.PRIO_PROCESS, worker) - os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        batches._shutdown_workers()  # type: ignore[attr-defined]


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX process priorities")
def test_cpu_loader_workers_run_below_the_compute_threads(tmp_path, tone_corpus, tiny_model_dist):
    from xvec.training.inputs import CPU_LOADER_NICE, loader_niceness

    if os.getpriority(os.PRIO_PROCESS, 0) + CPU_LOADER_NICE > 19:
        pytest.skip("this process already runs at a niceness Linux cannot raise by 19")
    assert _worker_niceness(tmp_path, tone_corpus, "cpu") == CPU_LOADER_NICE  # auto on the CPU
    assert _worker_niceness(tmp_path, tone_corpus, "cpu", "train.loader_nice=0") == 0
    assert _worker_niceness(tmp_path, tone_corpus, "cpu", "train.loader_nice=5") == 5
    assert loader_niceness("auto", torch.device("cuda")) == 0  # no cores to share with
    with pytest.raises(XvecError, match=r"loader_nice.*between 0 and 19"):
        load_recipe(recipe_file(tmp_path, tone_corpus), ["train.loader_nice=20"])


def test_a_run_killed_before_its_first_step_resumes_exactly(
    tmp_path, tone_corpus, tiny_model_dist, monkeypatch
):
    """The state is written before the first step: a kill there is resumable, not lost."""
    from xvec.training import loop

    train(load_recipe(recipe_file(tmp_path, tone_corpus, "straight")))
    path = recipe_file(tmp_path, tone_corpus, "killed")

    def killed(*args, **kwargs):
        raise SystemExit(137)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "_train_epoch", killed)
        with pytest.raises(SystemExit):
            train(load_recipe(path))
    assert (tmp_path / "killed" / "state.safetensors").is_file()
    train(load_recipe(path), resume=True)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("name", ["scores.txt", "result.json", "log.jsonl"])
def test_a_folder_of_someone_elses_files_is_refused_before_writing(
    tmp_path, tone_corpus, tiny_model_dist, name
):
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text("the user's own file\n")
    with pytest.raises(XvecError, match=rf"holds {name} but no xvec run .* new or empty folder"):
        train(load_recipe(recipe_file(tmp_path, tone_corpus)))
    assert sorted(p.name for p in run.iterdir()) == [name]
    assert (run / name).read_text() == "the user's own file\n"
