"""Recipes in stages (issue 27): ``[train] average_last``, ``[init] from``, the margin a loss
sees during a real run, and exact resume of a staged run (also after SIGKILL)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train import _env_with, _wait_for_log_lines, _xvec_train

from xvec.checkpoint import load_model, read_checkpoint
from xvec.config import load_recipe
from xvec.data import read_train_list, read_trials
from xvec.embed import embed_files, model_fingerprint
from xvec.errors import XvecError
from xvec.evaluate import SpeakerCohort, draw_per_speaker, evaluate_model
from xvec.metrics import compute_metrics
from xvec.plda import Backend, fit_backend
from xvec.protocol import Protocol
from xvec.runlog import read_log
from xvec.schedules import MarginRamp, margin_at
from xvec.scoring import as_norm
from xvec.training import loop, train

from conftest import Recorder, after_steps

STAGE = """
[data]
train_list = "{root}/train_list.txt"
train_path = "{root}/audio"
test_list = "{root}/trials.txt"
test_path = "{root}/audio"
max_frames = {frames}

[model]
name = "TinyModel"
nOut = 8

[loss]
name = "aamsoftmax"
margin = {margin}
scale = 15

[optim]
optimizer = "sgd"
lr = {lr}

[train]
max_epoch = 3
batch_size = 4
test_interval = 1
seed = 3
num_workers = 0
output_dir = "{out}"
log_every = 1
deterministic = true
mixed_precision = false
"""


def stage_file(
    tmp_path: Path,
    corpus: Path,
    out: str,
    *,
    frames: int = 50,
    margin: float = 0.2,
    lr: float = 0.05,
    extra: str = "",
) -> Path:
    """A tiny aamsoftmax recipe writing to ``tmp_path/out`` (``extra`` appended: more
    sections, or ``[train]`` fields when it starts with a field)."""
    path = tmp_path / f"{out}.toml"
    text = STAGE.format(root=corpus, out=tmp_path / out, frames=frames, margin=margin, lr=lr)
    path.write_text(text + extra)
    return path


def _second_stage(tmp_path: Path, corpus: Path, init: Path, out: str = "stage2", **kw) -> Path:
    """The fine-tuning stage: longer crops, a larger margin, a small rate, from ``init``."""
    extra = kw.pop("extra", "") + f'\n[init]\nfrom = "{init}"\n'
    return stage_file(tmp_path, corpus, out, frames=80, margin=0.5, lr=0.01, extra=extra, **kw)


@pytest.fixture
def stage1(tmp_path, tone_corpus, tiny_model_dist) -> Path:
    """A finished first stage with ``average_last = 2``: its folder holds avg.safetensors."""
    recipe = stage_file(tmp_path, tone_corpus, "stage1", extra="average_last = 2\n")
    train(load_recipe(recipe, ["data.test_list="]))
    return tmp_path / "stage1"


# --------------------------------------------------------------------------- average_last


def test_average_last_writes_the_average_and_the_final_evaluation_is_of_it(
    tmp_path, tone_corpus, tiny_model_dist
):
    recipe_path = stage_file(tmp_path, tone_corpus, "avg", extra="average_last = 2\n")
    seen = Recorder()
    train(load_recipe(recipe_path), observer=seen)
    run = tmp_path / "avg"
    kept = sorted(p.name for p in (run / "models").iterdir())
    assert kept == ["epoch_0002.safetensors", "epoch_0003.safetensors"]  # at least N kept
    averaged = [args for name, args in seen.calls if name == "averaged"]
    assert averaged == [(run / "avg.safetensors", [run / "models" / name for name in kept])]
    # The last epoch is saved, then averaged with the one before and the average evaluated:
    assert seen.names()[-6:] == [
        "epoch_ended",
        "averaged",
        "evaluation_started",
        "evaluation_progress",
        "evaluated",
        "final_evaluation",
    ]
    result = json.loads((run / "result.json").read_text())
    assert result["name"] == "avg.safetensors"
    recipe = load_recipe(recipe_path)
    trials = read_trials(recipe.data.test_list)
    direct = evaluate_model(
        load_model(run / "avg.safetensors"),
        trials,
        recipe.data.test_path,
        Protocol.from_recipe(recipe),
        device="cpu",
    )
    written = np.array([float(line.split()[0]) for line in (run / "scores.txt").open()])
    np.testing.assert_allclose(written, direct.scores, rtol=0, atol=1e-6)
    assert result["eer"] == pytest.approx(direct.metrics.eer)
    # The training weights stay the last epoch's (the state resumes training, not the mean).
    last = read_checkpoint(run / "last.safetensors").model_state
    mean = read_checkpoint(run / "avg.safetensors").model_state
    assert not torch.equal(last["out.weight"], mean["out.weight"])
    epoch3 = read_checkpoint(run / "models" / "epoch_0003.safetensors").model_state
    assert all(torch.equal(last[key], epoch3[key]) for key in last)


def test_a_run_that_averages_evaluates_the_average_in_place_of_its_last_epoch(
    tmp_path, tone_corpus, tiny_model_dist
):
    """The end of training is evaluated once, on the model the run ships: with averaging the
    average and not also the last epoch (3), even where test_interval lands on it."""
    evaluated, logged = {}, {}
    runs = (("avg", "average_last = 2\n", 2), ("avg1", "average_last = 2\n", 1), ("plain", "", 2))
    for name, extra, interval in runs:
        seen = Recorder()
        path = stage_file(tmp_path, tone_corpus, name, extra=extra)
        train(load_recipe(path, [f"train.test_interval={interval}"]), observer=seen)
        evaluated[name] = sum(event == "evaluated" for event, _ in seen.events)
        records = read_log(tmp_path / name)
        logged[name] = [record["epoch"] for record in records if record["kind"] == "eval"]
    assert logged == {"avg": [2], "avg1": [1, 2], "plain": [2, 3]}
    assert evaluated == {"avg": 2, "avg1": 3, "plain": 2}  # the epochs logged, then the average
    assert json.loads((tmp_path / "avg" / "result.json").read_text())["name"] == "avg.safetensors"
    best = read_checkpoint(tmp_path / "avg" / "best.safetensors").model_state
    epoch2 = read_checkpoint(tmp_path / "avg" / "models" / "epoch_0002.safetensors").model_state
    assert all(torch.equal(best[key], epoch2[key]) for key in best)


def test_a_finished_run_missing_its_average_writes_it_again(tmp_path, tone_corpus, tiny_model_dist):
    recipe = load_recipe(stage_file(tmp_path, tone_corpus, "avg", extra="average_last = 2\n"))
    train(recipe)
    run = tmp_path / "avg"
    before = (run / "avg.safetensors").read_bytes()
    result = json.loads((run / "result.json").read_text())
    for name in ("avg.safetensors", "result.json"):  # as if killed while writing them
        (run / name).unlink()
    seen = Recorder()
    train(recipe, resume=True, observer=seen)
    completing = [args for name, args in seen.calls if name == "completing"]
    assert completing == [(run, ("result.json", "avg.safetensors"))]
    assert (run / "avg.safetensors").read_bytes() == before
    again = json.loads((run / "result.json").read_text())
    timing = ("seconds", "files_per_second")
    assert {k: v for k, v in again.items() if k not in timing} == {
        k: v for k, v in result.items() if k not in timing
    }
    assert again["name"] == "avg.safetensors"


def _asnorm_by_hand(model, recipe, train_list, members):
    """The raw evaluation, and the metrics of AS-norm (top 2) against the means of the
    ``members`` (train-list indices) of each speaker, each file embedded on its own."""
    trials = read_trials(recipe.data.test_list)
    files = [train_list.files[i] for i in members]
    vectors = embed_files(model, recipe.data.train_path, files, device="cpu")
    means = np.stack(
        [
            np.mean([vectors[train_list.files[i]] for i in members if train_list.labels[i] == k],
                    axis=0)
            for k in range(train_list.num_classes)
        ]
    )  # fmt: skip
    raw = evaluate_model(model, trials, recipe.data.test_path, device="cpu")
    embeddings = np.stack([embed_files(model, recipe.data.test_path, [f], device="cpu")[f]
                           for f in trials.files])  # fmt: skip
    normalised = as_norm(raw.scores, trials.enroll, trials.test, embeddings, means, top_k=2)
    return raw, compute_metrics(normalised, trials.labels)


def test_the_final_evaluation_adds_asnorm_against_the_training_speakers_means(
    tmp_path, tone_corpus, tiny_model_dist
):
    path = stage_file(tmp_path, tone_corpus, "norm", extra="\n[eval]\nasnorm_top_k = 2\n")
    seen = Recorder()
    train(load_recipe(path), observer=seen)
    result = json.loads((tmp_path / "norm" / "result.json").read_text())
    # Independently: the last model's raw scores, the speakers' mean embeddings, AS-norm.
    recipe = load_recipe(path)
    model = load_model(tmp_path / "norm" / "last.safetensors")
    train_list = read_train_list(recipe.data.train_list)
    raw, expected = _asnorm_by_hand(model, recipe, train_list, range(len(train_list.files)))
    assert result["eer"] == pytest.approx(raw.metrics.eer)  # the raw result is unchanged
    assert result["asnorm"]["cohort"] == train_list.num_classes
    assert result["asnorm"]["top_k"] == 2
    assert result["asnorm"]["eer"] == pytest.approx(expected.eer, abs=1e-9)
    assert result["asnorm"]["min_dcf"]["0.05"] == pytest.approx(expected.min_dcf[0.05], abs=1e-9)
    final = [args for name, args in seen.calls if name == "final_evaluation"]
    assert len(final[0][0].rows()) == 2  # the table shows both rows
    with pytest.raises(XvecError, match="asnorm_top_k needs protocol"):
        load_recipe(path, ['eval.protocol="vt-crops"'])


def test_a_capped_cohort_draws_that_many_files_of_each_speaker(tmp_path):
    counts = {"ann": 5, "bob": 1, "cat": 3, "dan": 40}
    lines = [f"{s} {s}/{i}.wav" for i in range(40) for s, n in counts.items() if i < n]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    train_list = read_train_list(tmp_path / "train.txt")
    every = SpeakerCohort(tmp_path, train_list).members()
    assert every.tolist() == list(range(len(lines)))
    capped = SpeakerCohort(tmp_path, train_list, files_per_speaker=2)
    members = capped.members()
    assert members.tolist() == sorted(set(members.tolist()))  # list order, no repeats
    per_speaker = np.bincount(train_list.labels[members], minlength=4)
    assert per_speaker.tolist() == [2, 1, 2, 2]  # ann, bob, cat, dan: at most 2, all of bob
    assert capped.members().tolist() == members.tolist()  # a fixed draw
    larger = SpeakerCohort(tmp_path, train_list, files_per_speaker=3).members()
    assert set(members.tolist()) < set(larger.tolist())  # a smaller draw is inside a larger
    dan = [train_list.files[i] for i in members if train_list.files[i].startswith("dan")]
    assert dan != ["dan/0.wav", "dan/1.wav"]  # drawn, not the first files of the list
    vectors = {f: np.full(3, float(i)) for i, f in enumerate(train_list.files)}
    means = capped.matrix(vectors)
    for k in range(4):
        chosen = [i for i in members if train_list.labels[i] == k]
        assert means[k] == pytest.approx(np.full(3, np.mean(chosen)))


def _run_drawing_two_files_per_speaker(tmp_path, corpus, name: str, extra: str):
    """Train the stage recipe plus ``extra``: (recipe file, result.json, recipe, final model,
    train list, the train list's indices of the fixed draw of 2 files a speaker)."""
    path = stage_file(tmp_path, corpus, name, extra=extra)
    train(load_recipe(path))
    result = json.loads((tmp_path / name / "result.json").read_text())
    recipe = load_recipe(path)
    model = load_model(tmp_path / name / "last.safetensors")
    train_list = read_train_list(recipe.data.train_list)
    members = draw_per_speaker(train_list.labels, 2)
    assert len(members) == 2 * train_list.num_classes < len(train_list.files)
    return path, result, recipe, model, train_list, members


def test_the_final_asnorm_can_mean_fewer_files_per_speaker(tmp_path, tone_corpus, tiny_model_dist):
    extra = "\n[eval]\nasnorm_top_k = 2\nasnorm_files_per_speaker = 2\n"
    path, result, recipe, model, train_list, members = _run_drawing_two_files_per_speaker(
        tmp_path, tone_corpus, "capped", extra
    )
    _, expected = _asnorm_by_hand(model, recipe, train_list, members)
    assert result["asnorm"]["cohort"] == train_list.num_classes
    assert result["asnorm"]["cohort_files"] == len(members)
    assert result["asnorm"]["eer"] == pytest.approx(expected.eer, abs=1e-9)
    with pytest.raises(XvecError, match="asnorm_files_per_speaker needs asnorm_top_k"):
        load_recipe(path, ["eval.asnorm_top_k="])


def _plda_by_hand(model, recipe, train_list, members):
    """Each chosen training file and each trial file embedded on its own, a back end fitted
    on the former (LDA 2), the trials scored pair by pair: (trial embeddings, LLRs)."""
    files = [train_list.files[i] for i in members]
    train_vectors = embed_files(model, recipe.data.train_path, files, device="cpu")
    backend = fit_backend(
        np.stack([train_vectors[f] for f in files]), train_list.labels[members], lda_dim=2
    )
    trials = read_trials(recipe.data.test_list)
    embeddings = embed_files(model, recipe.data.test_path, trials.files, device="cpu")
    llrs = np.array(
        [
            backend.score(embeddings[trials.files[e]], embeddings[trials.files[t]])[0]
            for e, t in zip(trials.enroll, trials.test, strict=True)
        ]
    )
    return embeddings, llrs


def test_the_final_evaluation_adds_plda_fitted_on_every_training_file(
    tmp_path, tone_corpus, tiny_model_dist
):
    extra = "\n[eval]\nasnorm_top_k = 2\nasnorm_files_per_speaker = 2\nplda_lda_dim = 2\n"
    path = stage_file(tmp_path, tone_corpus, "plda", extra=extra)
    seen = Recorder()
    train(load_recipe(path), observer=seen)
    run_dir = tmp_path / "plda"
    result = json.loads((run_dir / "result.json").read_text())
    # Independently: every training file and trial file embedded on its own, a back end fitted
    # on them, the trials scored pair by pair.
    recipe = load_recipe(path)
    model = load_model(run_dir / "last.safetensors")
    train_list = read_train_list(recipe.data.train_list)
    trials = read_trials(recipe.data.test_list)
    embeddings, llrs = _plda_by_hand(model, recipe, train_list, np.arange(len(train_list.files)))
    expected = compute_metrics(llrs, trials.labels)
    assert result["plda"]["eer"] == pytest.approx(expected.eer, abs=1e-9)
    assert result["plda"]["min_dcf"]["0.05"] == pytest.approx(expected.min_dcf[0.05], abs=1e-9)
    assert result["plda"]["fitted_files"] == len(train_list.files)
    assert result["plda"]["speakers"] == train_list.num_classes
    assert result["plda"]["lda_dim"] == 2
    # The cohort's files come out of the back end's pass: AS-norm is unchanged by it.
    members = SpeakerCohort(Path(recipe.data.train_path), train_list, 2, 2).members()
    _, asnorm = _asnorm_by_hand(model, recipe, train_list, members)
    assert result["asnorm"]["eer"] == pytest.approx(asnorm.eer, abs=1e-9)
    final = [args for name, args in seen.calls if name == "final_evaluation"]
    assert [row["name"] for row in final[0][0].rows()][2].startswith("model + PLDA (LDA 2, ")
    # The run keeps the back end for `xvec score --backend`.
    stored = Backend.load(run_dir / "plda.safetensors")
    assert stored.score_trials(
        np.stack([embeddings[f] for f in trials.files]), trials.enroll, trials.test
    ) == pytest.approx(llrs, abs=1e-9)
    speakers = train_list.num_classes
    with pytest.raises(XvecError, match=f"has {speakers} speakers: LDA keeps at most"):
        train(load_recipe(path, [f"eval.plda_lda_dim={speakers}"]))  # refused before training
    with pytest.raises(XvecError, match="plda_lda_dim needs protocol"):
        load_recipe(
            path,
            ['eval.protocol="vt-crops"', "eval.asnorm_top_k=", "eval.asnorm_files_per_speaker="],
        )


def test_the_final_plda_can_fit_fewer_files_per_speaker(tmp_path, tone_corpus, tiny_model_dist):
    extra = "\n[eval]\nplda_lda_dim = 2\nplda_files_per_speaker = 2\n"
    path, result, recipe, model, train_list, members = _run_drawing_two_files_per_speaker(
        tmp_path, tone_corpus, "plda2", extra
    )
    _, llrs = _plda_by_hand(model, recipe, train_list, members)
    expected = compute_metrics(llrs, read_trials(recipe.data.test_list).labels)
    assert result["plda"]["fitted_files"] == len(members)
    assert result["plda"]["eer"] == pytest.approx(expected.eer, abs=1e-9)
    assert result["plda"]["min_dcf"]["0.05"] == pytest.approx(expected.min_dcf[0.05], abs=1e-9)
    with pytest.raises(XvecError, match="plda_files_per_speaker needs plda_lda_dim"):
        load_recipe(path, ["eval.plda_lda_dim="])


@pytest.mark.slow
def test_a_compiled_run_trains_like_the_eager_one_and_saves_plain_weights(
    tmp_path, tone_corpus, tiny_model_dist
):
    losses = {}
    for name, extra in (("eager", ""), ("compiled", "compile = true\n")):
        path = stage_file(tmp_path, tone_corpus, name, extra=extra + "max_steps = 3\n")
        train(load_recipe(path, ["data.test_list="]))
        losses[name] = [r["loss"] for r in read_log(tmp_path / name) if r["kind"] == "train"]
        state = read_checkpoint(tmp_path / name / "last.safetensors").model_state
        assert not any("_orig_mod" in key for key in state)  # the network's own names
    assert len(losses["compiled"]) == 3
    np.testing.assert_allclose(losses["compiled"], losses["eager"], rtol=1e-3)


def test_average_last_beyond_the_epochs_is_refused_in_the_recipe(tmp_path, tone_corpus):
    path = stage_file(tmp_path, tone_corpus, "x", extra="average_last = 4\n")
    with pytest.raises(XvecError, match=r"'train.average_last': .*4 exceeds max_epoch \(3\)"):
        load_recipe(path)


# --------------------------------------------------------------------------- margin ramp


def test_the_margin_the_loss_sees_follows_the_ramp_step_by_step(
    tmp_path, tone_corpus, tiny_model_dist, monkeypatch
):
    ramp = "\n[loss.margin_ramp]\nstart_epoch = 2\nend_epoch = 3\nfinal_margin = 0.2\n"
    ramp += 'kind = "linear"\n'
    recipe = load_recipe(stage_file(tmp_path, tone_corpus, "ramp", extra=ramp), ["data.test_list="])
    seen_by_loss = []
    from xvec.losses.classification import AAMSoftmax

    original = AAMSoftmax.forward

    def spy(self, x, labels):
        seen_by_loss.append(self.margin)
        return original(self, x, labels)

    monkeypatch.setattr(AAMSoftmax, "forward", spy)
    train(recipe)
    records = [r for r in read_log(tmp_path / "ramp") if r["kind"] == "train"]
    per_epoch = sum(1 for r in records if r["epoch"] == 1)
    assert per_epoch > 1 and len(records) == 3 * per_epoch == len(seen_by_loss)
    # By hand: 0 through epoch 1, rising linearly over epoch 2, then 0.2.
    expected = [0.0] * per_epoch
    expected += [0.2 * j / per_epoch for j in range(per_epoch)]
    expected += [0.2] * per_epoch
    assert [r["margin"] for r in records] == pytest.approx(expected, abs=1e-12)
    assert seen_by_loss == [r["margin"] for r in records]
    schedule = MarginRamp(start_epoch=2, end_epoch=3, final_margin=0.2, kind="linear")
    assert [r["margin"] for r in records] == [
        margin_at(schedule, r["step"] - 1, per_epoch) for r in records
    ]


def test_a_run_without_a_ramp_logs_no_margin(tmp_path, tone_corpus, tiny_model_dist):
    train(load_recipe(stage_file(tmp_path, tone_corpus, "plain")), stop_when=after_steps(2))
    assert all("margin" not in r for r in read_log(tmp_path / "plain"))


# --------------------------------------------------------------------------- [init] from


def _first_step_weights(monkeypatch) -> dict[str, dict[str, torch.Tensor]]:
    """Capture the model's and the loss's weights as the first optimiser step begins."""
    captured: dict[str, dict[str, torch.Tensor]] = {}
    original = loop._step

    def spy(run, waves, labels):
        if not captured:
            captured["model"] = {k: v.clone() for k, v in run.model.state_dict().items()}
            captured["loss"] = {k: v.clone() for k, v in run.loss.state_dict().items()}
        return original(run, waves, labels)

    monkeypatch.setattr(loop, "_step", spy)
    return captured


def test_a_stage_starts_from_the_previous_stage_average(tmp_path, tone_corpus, stage1, monkeypatch):
    avg = stage1 / "avg.safetensors"
    captured = _first_step_weights(monkeypatch)
    seen = Recorder()
    recipe = load_recipe(_second_stage(tmp_path, tone_corpus, avg), ["data.test_list="])
    train(recipe, observer=seen, stop_when=after_steps(1))
    start = seen.events[0][1]
    assert start.init.checkpoint == avg and start.init.loss == (
        "loss weights from the checkpoint ('aamsoftmax')"
    )
    source = read_checkpoint(avg)
    assert captured["model"].keys() == source.model_state.keys()
    for key, value in source.model_state.items():
        assert torch.equal(captured["model"][key], value), key
    assert torch.equal(captured["loss"]["weight"], source.loss_state["weight"])
    # The stage's own settings apply: its crops and margin, not stage 1's.
    assert recipe.data.max_frames == 80 and recipe.loss.params["margin"] == 0.5
    # The init is recorded with the file's fingerprint, in recipe.json and the state's run.
    fingerprint = model_fingerprint(avg)
    recorded = json.loads((tmp_path / "stage2" / "recipe.json").read_text())["init"]
    assert recorded == {"from": str(avg), "sha256": fingerprint}


def test_init_is_recorded_in_the_checkpoints_and_kept_on_resume(
    tmp_path, tone_corpus, stage1, monkeypatch
):
    avg = stage1 / "avg.safetensors"
    path = _second_stage(tmp_path, tone_corpus, avg)
    train(load_recipe(path, ["data.test_list="]), stop_when=after_steps(2))
    fingerprint = model_fingerprint(avg)
    # The init file changes (stage 1 goes on): a resume continues from its own state.
    avg.write_bytes((stage1 / "models" / "epoch_0002.safetensors").read_bytes())
    captured = _first_step_weights(monkeypatch)
    seen = Recorder()
    train(load_recipe(path, ["data.test_list="]), resume=True, observer=seen)
    starts = [start for name, start in seen.events if name == "started"]
    assert len(starts) == 1 and starts[0].resumed and starts[0].init is None
    meta = read_checkpoint(tmp_path / "stage2" / "last.safetensors").meta
    assert meta["recipe"]["init"] == {"from": str(avg), "sha256": fingerprint}
    recorded = json.loads((tmp_path / "stage2" / "recipe.json").read_text())["init"]
    assert recorded["sha256"] == fingerprint
    changed = read_checkpoint(avg).model_state
    assert not torch.equal(captured["model"]["out.weight"], changed["out.weight"])


def test_a_stage_resumed_equals_the_stage_run_straight(tmp_path, tone_corpus, stage1):
    avg = stage1 / "avg.safetensors"
    straight = load_recipe(_second_stage(tmp_path, tone_corpus, avg, "straight"))
    train(straight)
    resumed = load_recipe(_second_stage(tmp_path, tone_corpus, avg, "resumed"))
    train(resumed, stop_when=after_steps(3))
    train(resumed, resume=True, stop_when=after_steps(4))
    train(resumed, resume=True)
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_another_loss_or_class_count_starts_a_fresh_loss_head(tmp_path, tone_corpus, stage1):
    avg = stage1 / "avg.safetensors"
    seen = Recorder()
    path = _second_stage(tmp_path, tone_corpus, avg, "amsoftmax")
    recipe = load_recipe(path, ["loss.name=amsoftmax", "data.test_list="])
    train(recipe, observer=seen, stop_when=after_steps(1))
    start = seen.events[0][1]
    assert start.init.checkpoint == avg
    assert start.init.loss == "a fresh loss head: the checkpoint's loss 'aamsoftmax' differs"
    fewer = tmp_path / "fewer.txt"  # 3 of the 4 training speakers
    lines = (tone_corpus / "train_list.txt").read_text().splitlines()
    fewer.write_text("\n".join(line for line in lines if not line.startswith("spk3 ")) + "\n")
    seen = Recorder()
    path = _second_stage(tmp_path, tone_corpus, avg, "fewer")
    recipe = load_recipe(path, [f"data.train_list={fewer}", "data.test_list="])
    train(recipe, observer=seen, stop_when=after_steps(1))
    assert seen.events[0][1].init.loss == (
        "a fresh loss head: the checkpoint's loss has 4 classes, the train list 3"
    )


def test_init_of_another_architecture_or_a_changed_file_is_refused(tmp_path, tone_corpus, stage1):
    avg = stage1 / "avg.safetensors"
    path = _second_stage(tmp_path, tone_corpus, avg, "wider")
    with pytest.raises(XvecError) as error:
        train(load_recipe(path, ["model.nOut=4"]))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{avg}: init.from holds model 'TinyModel'")
    assert '"nOut": 8' in message and '"nOut": 4' in message
    assert not (tmp_path / "wider").exists()  # refused before the run folder is made
    with pytest.raises(XvecError, match=r"fingerprint is [0-9a-f]{16} but init.sha256 is 0{16}"):
        train(load_recipe(path, ["init.sha256=0000000000000000"]))
    with pytest.raises(XvecError, match=r"absent\.safetensors: checkpoint not found \(init.from\)"):
        train(load_recipe(path, [f"init.from={tmp_path / 'absent.safetensors'}"]))
    assert not (tmp_path / "wider").exists()


def test_the_fine_tuning_recipe_ships_as_a_stage():
    from conftest import ROOT

    recipe = load_recipe(ROOT / "recipes" / "large_margin_finetune.toml")
    assert recipe.init is not None and recipe.loss.params["margin"] == 0.5
    assert recipe.data.max_frames == 600 and recipe.augment.musan_path is None


# --------------------------------------------------------------------------- SIGKILL


@pytest.mark.slow
def test_sigkill_anywhere_in_a_stage_then_resume_matches_the_straight_stage(
    tmp_path, tone_corpus, tiny_model_dist, stage1
):
    env = _env_with(tiny_model_dist)
    avg = stage1 / "avg.safetensors"
    sets = ["--set", "train.save_every_steps=1", "--set", "data.test_list="]
    straight = _second_stage(tmp_path, tone_corpus, avg, "straight", extra="average_last = 2\n")
    assert _xvec_train(straight, env, *sets, stdout=subprocess.DEVNULL).wait() == 0
    killed = _second_stage(tmp_path, tone_corpus, avg, "killed", extra="average_last = 2\n")
    log = tmp_path / "killed" / "log.jsonl"
    final = len((tmp_path / "straight" / "log.jsonl").read_text().splitlines())
    resume: list[str] = []
    # Early in epoch 1, around the end of epoch 1 and of epoch 2, in epoch 3, and after the
    # last record while the average and the final outputs are written.
    for records in (2, 6, 11, 14, final):
        proc = _xvec_train(
            killed, env, *sets, *resume, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_for_log_lines(log, records)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        resume = ["--resume"]
    result = _xvec_train(killed, env, *sets, "--resume", stderr=subprocess.PIPE, text=True)
    _, stderr = result.communicate()
    assert result.returncode == 0, stderr
    for name in ("last.safetensors", "avg.safetensors"):
        a = load_file(str(tmp_path / "straight" / name))
        b = load_file(str(tmp_path / "killed" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    recorded = json.loads((tmp_path / "killed" / "recipe.json").read_text())["init"]
    assert recorded == {"from": str(avg), "sha256": model_fingerprint(avg)}


# --------------------------------------------------------------------------- what is said


def test_the_console_says_where_a_stage_starts_and_what_was_averaged(tmp_path):
    from io import StringIO

    from rich.console import Console
    from test_report import training_start

    from xvec.report_training import ConsoleTrainingObserver, training_start_text
    from xvec.training.events import StageInit

    stage = StageInit(tmp_path / "avg.safetensors", "a fresh loss head: why")
    lines = training_start_text(training_start(tmp_path, init=stage)).splitlines()
    assert (
        lines[1]
        == f"  starts from: {tmp_path / 'avg.safetensors'} (its model weights; {stage.loss})"
    )
    assert len(training_start_text(training_start(tmp_path)).splitlines()) == len(lines) - 1
    text = StringIO()
    observer = ConsoleTrainingObserver(Console(file=text, width=300))
    observer.averaged(tmp_path / "avg.safetensors", [tmp_path / "a", tmp_path / "b"])
    assert (
        text.getvalue() == f"averaged the last 2 epochs' models -> {tmp_path / 'avg.safetensors'}\n"
    )
