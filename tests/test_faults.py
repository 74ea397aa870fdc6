"""Red-team faults of ``xvec train``: run-folder lock, refused runs, finishing, signals, limits."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_train import _env_with, _wait_for_log_lines, _xvec_train, recipe_file

from xvec.config import load_recipe
from xvec.errors import XvecError
from xvec.runlog import read_log
from xvec.training import train

from conftest import Recorder, after_steps, make_distribution

LOCK_FILE = "train.lock"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- 1: the lock


@pytest.mark.slow
def test_second_train_on_same_folder_fails_naming_the_holder(
    tmp_path, tone_corpus, tiny_model_dist
):
    env = _env_with(tiny_model_dist)
    path = recipe_file(tmp_path, tone_corpus)
    first = _xvec_train(
        path,
        env,
        "--set",
        "train.max_epoch=10000",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_log_lines(tmp_path / "run" / "log.jsonl", 2)
        lock = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
        assert lock["pid"] == first.pid
        second = subprocess.run(
            [sys.executable, "-m", "xvec", "train", str(path), "--resume"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.pid}" in lines[0], second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        _, first_err = first.communicate(timeout=60)
    assert first.returncode == 130, first_err[-3000:]
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # released on Ctrl-C


def test_stale_lock_is_taken_over_and_lock_released_on_error(
    tmp_path, tone_corpus, tiny_model_dist, capsys
):
    path = recipe_file(tmp_path, tone_corpus)
    run = tmp_path / "run"
    run.mkdir()
    host = socket.gethostname()
    (run / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": host}))
    with pytest.raises(XvecError, match=rf"another 'xvec train' \(pid {os.getpid()} on "):
        train(load_recipe(path), stop_when=after_steps(1))
    assert (run / LOCK_FILE).exists()  # someone else's lock is left alone
    (run / LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": host}))
    seen = Recorder()
    train(load_recipe(path), observer=seen, stop_when=after_steps(1))
    assert [event for event in seen.events if event[0] == "stale_lock"] == [
        ("stale_lock", run / LOCK_FILE)
    ]
    assert not (run / LOCK_FILE).exists()
    with pytest.raises(XvecError, match="holds a previous run"):
        train(load_recipe(path))
    assert not (run / LOCK_FILE).exists()  # released on error too


# --------------------------------------------------------------------------- 2: refused runs


def test_refused_resume_writes_nothing_and_the_right_resume_works(
    tmp_path, tone_corpus, tiny_model_dist
):
    path = recipe_file(tmp_path, tone_corpus)
    train(load_recipe(path), stop_when=after_steps(1))
    recorded = (tmp_path / "run" / "recipe.json").read_bytes()
    with pytest.raises(XvecError, match="holds a previous run"):
        train(load_recipe(path, ["model.nOut=4"]))
    assert (tmp_path / "run" / "recipe.json").read_bytes() == recorded
    train(load_recipe(path), resume=True)
    assert (tmp_path / "run" / "hist.png").is_file()


# --------------------------------------------------------------------------- 5: final outputs


def test_resume_of_finished_run_completes_missing_outputs(tmp_path, tone_corpus, tiny_model_dist):
    path = recipe_file(tmp_path, tone_corpus)
    train(load_recipe(path))
    run = tmp_path / "run"
    result = json.loads((run / "result.json").read_text())
    for name in ("hist.png", "curves.png", "result.json", "scores.txt"):  # as if killed there
        (run / name).unlink()
    seen = Recorder()
    outcome = train(load_recipe(path), resume=True, observer=seen)
    for name in ("hist.png", "curves.png", "result.json", "scores.txt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "result.json").read_text())["eer"] == result["eer"]
    assert outcome is not None and outcome.evaluated
    assert "resumed" not in seen.names()
    completing = [args for name, args in seen.calls if name == "completing"]
    assert completing == [(run, ("curves.png", "scores.txt", "result.json", "hist.png"))]
    again = Recorder()
    train(load_recipe(path), resume=True, observer=again)
    assert again.calls == [("completing", (run, ()))]


# --------------------------------------------------------------------------- 6, 18: signals


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)]
)
def test_stop_signal_prints_exact_resume_command_which_works_on_the_run_folder(
    tmp_path, tone_corpus, tiny_model_dist, sig
):
    env = _env_with(tiny_model_dist)
    path = recipe_file(tmp_path, tone_corpus)
    sets = ["--set", "train.max_epoch=10000", "--set", "train.output_dir=" + str(tmp_path / "o r")]
    proc = _xvec_train(path, env, *sets, stderr=subprocess.PIPE, text=True)
    _wait_for_log_lines(tmp_path / "o r" / "log.jsonl", 3)
    sent = time.monotonic()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 5
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert "stop requested: the run is saved at the next step (an evaluation" in stderr
    expected = shlex.join(["xvec", "train", str(path), *sets, "--resume"])
    assert f"Resume with: {expected}" in stderr
    assert (tmp_path / "o r" / "state.safetensors").is_file()
    # The run folder itself is a recipe: its recipe.json.
    step = json.loads(load_file_meta(tmp_path / "o r" / "state.safetensors"))["position"]["step"]
    command = [sys.executable, "-m", "xvec", "train", str(tmp_path / "o r"), "--resume"]
    resumed = subprocess.run(
        [*command, "--set", f"train.max_steps={step + 1}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {tmp_path / 'o r'} at epoch " in resumed.stderr
    assert f"(step {step})" in resumed.stderr
    assert (tmp_path / "o r" / "curves.png").is_file()


def test_stop_during_an_evaluation_cuts_it_short_and_resume_redoes_it(
    tmp_path, tone_corpus, tiny_model_dist, monkeypatch
):
    """SIGTERM while the end-of-epoch evaluation embeds files: it stops after the batch in
    hand, the state says the evaluation is pending, and --resume does it before training on;
    the run ends as one never stopped (weights, evaluations)."""
    import xvec.embed

    one_file_batches = "\n[eval]\nbatch_size = 1\n"  # 8 trial files: 8 batches
    straight = recipe_file(tmp_path, tone_corpus, "straight", one_file_batches)
    train(load_recipe(straight))
    computed, model_outputs = [], xvec.embed._model_outputs

    def signal_at_first_batch(*args, **kwargs):
        if not computed:
            os.kill(os.getpid(), signal.SIGTERM)
        computed.append(1)
        return model_outputs(*args, **kwargs)

    monkeypatch.setattr(xvec.embed, "_model_outputs", signal_at_first_batch)
    recipe = load_recipe(recipe_file(tmp_path, tone_corpus, "stopped", one_file_batches))
    with pytest.raises(XvecError, match="interrupted at epoch 2, step 4"):
        train(recipe)
    assert 1 <= len(computed) < 8  # cut short: not every file was embedded
    run = tmp_path / "stopped"
    meta = json.loads(load_file_meta(run / "state.safetensors"))
    assert meta["position"]["pending_eval"] == 1 and meta["position"]["epoch"] == 2
    assert [r for r in read_log(run) if r["kind"] == "eval"] == []
    assert not (run / "last.safetensors").exists()
    monkeypatch.undo()

    train(recipe, resume=True)

    def evaluations(folder: Path) -> list[tuple[int, int, float]]:
        return [(r["epoch"], r["step"], r["eer"]) for r in read_log(folder) if r["kind"] == "eval"]

    assert evaluations(run) == evaluations(tmp_path / "straight")
    assert len(evaluations(run)) == 2
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(run / "last.safetensors"))
    assert a.keys() == b.keys() and all(a[key].equal(b[key]) for key in a)


# --------------------------------------------------------------------------- 9: worker errors


def test_corrupt_audio_in_a_worker_is_one_line(tmp_path, tone_corpus, tiny_model_dist):
    wav = sorted((tone_corpus / "audio").rglob("*.wav"))[0]
    wav.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 4)
    path = recipe_file(tmp_path, tone_corpus)
    with pytest.raises(XvecError) as caught:
        train(load_recipe(path, ["train.num_workers=1"]))
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    assert wav.name in message


# --------------------------------------------------------------------------- 10, 15: limits


def test_per_speaker_beyond_the_utterances_is_one_line(tmp_path, tone_corpus, tiny_model_dist):
    path = recipe_file(tmp_path, tone_corpus)
    with pytest.raises(
        XvecError, match=r"nPerSpeaker is 1000 but no speaker .*0 of 4 speakers; the most is 4"
    ):
        train(load_recipe(path, ["train.nPerSpeaker=1000"]))
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_device_without_gpu_is_one_line_before_the_run_folder(
    tmp_path, tone_corpus, tiny_model_dist
):
    path = recipe_file(tmp_path, tone_corpus)
    with pytest.raises(XvecError, match=r"train.device 'cuda': CUDA is not available"):
        train(load_recipe(path, ["train.device=cuda"]))
    assert not (tmp_path / "run").exists()


def test_run_without_test_list_and_few_steps_finishes(tmp_path, tone_corpus, tiny_model_dist):
    path = recipe_file(tmp_path, tone_corpus)
    outcome = train(load_recipe(path, ["data.test_list=", "train.log_every=100"]))
    run = tmp_path / "run"
    epochs = [r for r in read_log(run) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and epochs[-1]["step"] == 8
    assert (run / "curves.png").is_file() and outcome is not None and not outcome.evaluated


def test_one_speaker_classification_is_refused_before_training(
    tmp_path, tone_corpus, tiny_model_dist
):
    lines = (tone_corpus / "train_list.txt").read_text().splitlines()
    first = lines[0].split()[0]
    (tone_corpus / "train_list.txt").write_text(
        "\n".join(line for line in lines if line.split()[0] == first) + "\n"
    )
    path = recipe_file(tmp_path, tone_corpus)
    with pytest.raises(XvecError, match="classifies speakers but the list has 1 speaker"):
        train(load_recipe(path))
    assert not (tmp_path / "run" / "log.jsonl").exists()


# --------------------------------------------------------------------------- 16b: lr, NaN

NAN_FIRST = '''
import torch
from xvec.plugin import SpeakerLoss


class NanFirst(SpeakerLoss):
    """NaN from the first step."""

    def __init__(self, params, embedding_dim, num_classes=None):
        super().__init__(params, embedding_dim, num_classes)
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x, labels):
        return (x.pow(2).mean() * self.w * float("nan")).squeeze(), torch.tensor(0.0)
'''


@pytest.mark.parametrize("value", ["inf", "+inf"])
def test_lr_must_be_finite(tmp_path, tone_corpus, tiny_model_dist, value):
    with pytest.raises(XvecError, match=r"field 'optim.lr'"):
        load_recipe(recipe_file(tmp_path, tone_corpus), [f"optim.lr={value}"])


def test_nan_at_first_step_keeps_the_state_of_step_zero(
    tmp_path, tone_corpus, tiny_model_dist, monkeypatch
):
    from xvec import registry

    root = make_distribution(
        tmp_path / "nanfirst",
        "xvec-nanfirst",
        {"xvec.losses": {"nanfirst": "xvec_nanfirst:NanFirst"}},
        {"xvec_nanfirst": NAN_FIRST},
    )
    monkeypatch.syspath_prepend(str(root))
    registry.refresh()
    path = recipe_file(tmp_path, tone_corpus)
    try:
        with pytest.raises(XvecError, match=r"step 1; stopped, the last saved state is kept in "):
            train(load_recipe(path, ["loss.name=nanfirst"]))
    finally:
        sys.modules.pop("xvec_nanfirst", None)
    assert (tmp_path / "run" / "state.safetensors").is_file()  # written before the first step


# --------------------------------------------------------------------------- 18: max_steps


def test_max_steps_stops_cleanly_with_final_outputs(tmp_path, tone_corpus, tiny_model_dist):
    path = recipe_file(tmp_path, tone_corpus)
    outcome = train(load_recipe(path, ["train.max_steps=3", "train.max_epoch=5"]))
    run = tmp_path / "run"
    steps = [r["step"] for r in read_log(run) if r["kind"] == "train"]
    assert steps == [1, 2, 3]
    for name in ("last.safetensors", "hist.png", "curves.png", "result.json"):
        assert (run / name).is_file(), name
    assert outcome is not None and outcome.evaluated
    meta = json.loads(load_file_meta(run / "state.safetensors"))
    assert meta["position"]["step"] == 3
    with pytest.raises(XvecError, match=r"field 'train.max_steps'"):
        load_recipe(path, ["train.max_steps=0"])


def load_file_meta(path: Path) -> str:
    from xvec.files import safetensors_metadata

    return safetensors_metadata(path.read_bytes())["xvec_state"]


@pytest.mark.slow
def test_max_steps_loads_state_file(tmp_path, tone_corpus, tiny_model_dist):
    """A max_steps run mid-epoch resumes with a higher cap and reaches the same weights."""
    straight = recipe_file(tmp_path, tone_corpus, "straight")
    train(load_recipe(straight, ["train.max_steps=6"]))
    capped = recipe_file(tmp_path, tone_corpus, "capped")
    train(load_recipe(capped, ["train.max_steps=3"]))
    train(load_recipe(capped, ["train.max_steps=6"]), resume=True)
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "capped" / "last.safetensors"))
    for key in a:
        assert (a[key] == b[key]).all(), key


# --------------------------------------------------------------------------- neighbours


def test_resume_of_a_new_folder_writes_nothing(tmp_path, tone_corpus, tiny_model_dist):
    path = recipe_file(tmp_path, tone_corpus)
    with pytest.raises(XvecError, match=r"nothing to resume \(no state.safetensors\)"):
        train(load_recipe(path), resume=True)
    assert list((tmp_path / "run").iterdir()) == []


def test_run_folder_as_recipe_needs_a_readable_recipe_json(tmp_path, tone_corpus, tiny_model_dist):
    with pytest.raises(XvecError, match=r"no recipe.json here"):
        load_recipe(tmp_path)
    path = recipe_file(tmp_path, tone_corpus)
    train(load_recipe(path), stop_when=after_steps(1))
    assert load_recipe(tmp_path / "run").model.params["nOut"] == 8
    (tmp_path / "run" / "recipe.json").write_text('{"data": ')
    with pytest.raises(XvecError, match=r"recipe.json: not a JSON recipe"):
        load_recipe(tmp_path / "run")
    with pytest.raises(XvecError, match=r"recipe.json: not a JSON recipe"):
        train(load_recipe(path), resume=True)
