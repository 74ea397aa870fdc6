"""The training loop: sampler and loader, AMP, DDP, exact resume, periodic evaluation, logs.

A run folder holds ``recipe.json`` (the resolved recipe), ``log.jsonl`` (one record per
``log_every`` steps, per epoch and per evaluation), ``train.lock`` while a run uses it,
``state.safetensors`` (everything needed to resume:
weights, optimiser, scheduler, scaler, position, RNG), ``last.safetensors`` and
``best.safetensors`` (self-describing model checkpoints), and after training ``scores.txt``,
``result.json``, ``hist.png`` and ``curves.png``. Every file is written atomically. With
``[train] average_last = N`` the last N epochs' models (kept in ``models/``) are averaged into
``avg.safetensors`` at the end, and the final outputs are that model's evaluation, in place of
the last epoch's (``xvec eval`` scores ``last.safetensors`` if wanted). With
``[init] from`` a run starts from another run's checkpoint (a stage); a resume never re-applies it.

Resume is exact: the batches of an epoch and every crop's randomness are functions of
(seed, epoch, batch), and the model's own draws (dither, SpecAugment) of (seed, step, rank), so
a run killed at any point and resumed from its last state reproduces an uninterrupted run's
weights bit for bit on CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xvec import registry
from xvec.checkpoint import load_model, save_checkpoint
from xvec.config import Recipe
from xvec.cpu_threads import ThreadTuner
from xvec.data import EpochBatches, TrainList, Trials
from xvec.errors import XvecError
from xvec.evaluate import (
    EvalResult,
    PldaSetup,
    SpeakerCohort,
    evaluate_model,
    write_eval_outputs,
)
from xvec.plots import plot_histogram, plot_training
from xvec.protocol import Protocol
from xvec.runlog import LOG_FILE, RunLog, read_log
from xvec.training.averaging import (
    AVERAGE_FILE,
    average_kept_models,
    epoch_model_path,
    prune_epoch_models,
)
from xvec.training.distributed import world_position
from xvec.training.events import EpochStats, TrainingObserver, TrainingOutcome, TrainingStart
from xvec.training.inputs import (
    add_spec_augment,
    build_loader,
    build_loss,
    compute_threads,
    init_device,
    make_thread_tuner,
    read_data,
    unwrapped,
)
from xvec.training.optim import (
    apply_schedules,
    autocast_settings,
    channels_last_on,
    decay_groups,
    make_optimizer,
    make_scheduler,
)
from xvec.training.run_dir import (
    PLDA_FILE,
    STATE_FILE,
    RunLock,
    final_outputs,
    prepare_run_dir,
)
from xvec.training.signals import Interrupted, StopFlag
from xvec.training.stages import start_from, with_init_record
from xvec.training.state import Position, load_state, save_state


class SpeakerNet(nn.Module):
    """Model and loss together, so DDP synchronises both (the loss may have weights)."""

    def __init__(self, model: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(
        self, waves: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, per_speaker, samples = waves.shape
        embeddings = self.model(waves.reshape(rows * per_speaker, samples))
        return self.loss(embeddings.reshape(rows, per_speaker, -1).float(), labels)


# --------------------------------------------------------------------------- the loop


def train(
    recipe: Recipe,
    resume: bool = False,
    observer: TrainingObserver | None = None,
    stop_when: Callable[[Position], bool] | None = None,
) -> TrainingOutcome | None:
    """Train as the recipe says; returns where the outputs are (rank 0), or None when stopped.

    ``observer`` is told every event (rank 0; default: none is reported). ``stop_when`` is
    asked after every optimiser step; True stops the run as Ctrl-C would, but quietly: the
    state is saved and the run resumes from there (for notebooks and schedulers that give a
    job a budget); Ctrl-C raises :class:`~xvec.training.signals.Interrupted`. The run folder
    is locked (rank 0) for the whole call, released also on errors.
    """
    lock = RunLock()
    observer = observer or TrainingObserver()
    try:
        run = _setup(recipe, resume, observer, lock)
        if run.is_main and run.start is not None and not run.finished():
            observer.started(run.start)
        with StopFlag(observer.stop_requested) as stop:
            try:
                if run.position.pending_eval is not None:  # a stop or kill cut it short
                    _close_epoch(run, run.position.pending_eval, stop)
                while not run.finished():
                    stopped = _train_epoch(run, stop, stop_when)
                    if stopped:
                        if stop.requested:
                            raise _interrupted(run)
                        return None
                    if _end_of_epoch(run, stop):
                        break
            except _EvalStopped:
                raise _interrupted(run) from None
        if run.is_main and not run.completed:  # resumed a finished run: complete what is missing
            _complete(run)
        if run.world > 1:
            torch.distributed.destroy_process_group()
        return TrainingOutcome(run.run_dir, run.trials is not None) if run.is_main else None
    finally:
        lock.release()


@dataclass
class _Run:
    """Everything one training call works with, built by :func:`_setup`."""

    recipe: Recipe
    run_dir: Path
    device: torch.device
    world: int
    rank: int
    is_main: bool
    model: nn.Module
    loss: nn.Module
    net: SpeakerNet
    ddp_net: nn.Module
    batches: EpochBatches
    loader: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    schedule_unit: str
    scaler: Any
    use_amp: bool
    amp_dtype: torch.dtype
    trials: Trials | None
    train_list: TrainList
    position: Position
    log: RunLog
    observer: TrainingObserver
    completed: bool = False  # the final outputs were written by this call
    thread_tuner: ThreadTuner | None = None
    start: TrainingStart | None = None

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    @property
    def capped(self) -> bool:
        """``train.max_steps`` reached."""
        max_steps = self.recipe.train.max_steps
        return max_steps is not None and self.position.step >= max_steps

    def finished(self) -> bool:
        return self.position.epoch > self.recipe.train.max_epoch or self.capped

    def save_state(self) -> None:
        save_state(
            self.state_path, self.net, self.optimizer, self.scheduler, self.scaler, self.position
        )


def _setup(recipe: Recipe, resume: bool, observer: TrainingObserver, lock: RunLock) -> _Run:
    """Check the recipe and its data, build model, loss, loader and optimiser, lock the run
    folder and restore the state when resuming. Nothing long starts before the checks pass."""
    recipe = recipe.resolved()
    recipe = with_init_record(recipe, resume)
    rank, world, local_rank = world_position()
    is_main = rank == 0
    train_list, trials = read_data(recipe)
    device = init_device(recipe, world, local_rank)
    torch.manual_seed(recipe.train.seed)
    model = registry.build("model", recipe.model.name, recipe.model.params)
    add_spec_augment(recipe, model)
    loss = build_loss(recipe, model, train_list)
    init = None if resume else start_from(recipe, model, loss)  # a stage: another run's weights
    net = SpeakerNet(model, loss).to(device)
    use_amp, amp_dtype = autocast_settings(device, recipe.train.mixed_precision)
    channels_last = channels_last_on(
        device, recipe.train.channels_last, net, use_amp and amp_dtype == torch.bfloat16
    )
    if channels_last:  # the 2-D convolutions' layout; the values are the same
        net = net.to(memory_format=torch.channels_last)
    batches, loader = build_loader(recipe, train_list, loss, rank, world, device)
    params = net.parameters()
    if recipe.optim.exempt_norm_and_bias:
        params = decay_groups(net, recipe.optim.weight_decay)
    optimizer = make_optimizer(recipe, params)
    scheduler, schedule_unit = make_scheduler(recipe, optimizer, len(batches))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    run_dir = Path(recipe.train.output_dir)
    if is_main:
        prepare_run_dir(run_dir, recipe, resume, lock, observer)
    ddp_net: nn.Module = net
    if world > 1:
        ddp_net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if recipe.train.compile:  # the step runs the compiled module; weights are net's own
        ddp_net = torch.compile(ddp_net)
    run = _Run(
        recipe=recipe,
        run_dir=run_dir,
        device=device,
        world=world,
        rank=rank,
        is_main=is_main,
        model=model,
        loss=loss,
        net=net,
        ddp_net=ddp_net,
        batches=batches,
        loader=loader,
        optimizer=optimizer,
        scheduler=scheduler,
        schedule_unit=schedule_unit,
        scaler=scaler,
        use_amp=use_amp,
        amp_dtype=amp_dtype,
        trials=trials,
        train_list=train_list,
        position=Position(),
        log=RunLog(run_dir / LOG_FILE if is_main else None),
        observer=observer if is_main else TrainingObserver(),
        thread_tuner=make_thread_tuner(recipe, device, world),
    )
    run.start = TrainingStart(
        model=recipe.model.name,
        parameters=sum(p.numel() for p in model.parameters()),
        loss=recipe.loss.name,  # type: ignore[union-attr]
        classes=train_list.num_classes,
        utterances=len(train_list.files),
        trials=len(trials) if trials is not None else None,
        device=str(device),
        threads=compute_threads(device, run.thread_tuner),
        threads_follow_free_cores=run.thread_tuner is not None,
        loader_workers=recipe.train.num_workers,
        channels_last=channels_last,
        run_dir=run_dir,
        resumed=resume,
        init=init,
    )
    if resume:
        if not run.state_path.is_file():
            raise XvecError(f"{run_dir}: nothing to resume (no {STATE_FILE}); run without --resume")
        run.position = load_state(run.state_path, net, optimizer, scheduler, scaler)
        if not run.finished():
            run.observer.resumed(run_dir, run.position)
    elif is_main:
        run.save_state()  # a kill before the first periodic save still resumes (at step 0)
    return run


def _step(run: _Run, waves: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """One optimiser step on a batch; a non-finite loss stops training with a clear error."""
    waves = waves.to(run.device, non_blocking=True)
    labels = labels.to(run.device, non_blocking=True)
    recipe = run.recipe
    apply_schedules(  # from the step counter alone: a resume continues exactly
        run.optimizer,
        run.loss,
        recipe.train.schedule,
        recipe.loss.margin_ramp,  # type: ignore[union-attr]  # training needs a loss
        run.position.step,
        steps_per_epoch=len(run.batches),
        total_epochs=recipe.train.max_epoch,
        base_lr=recipe.optim.lr,
    )
    # The model's own draws (fbank dither, SpecAugment masks, dropout) are a function of
    # (seed, step, rank) like the loader's crops, so a resumed run draws exactly what an
    # uninterrupted one does, whatever else used torch's generator in between.
    torch.manual_seed(_step_seed(recipe.train.seed, run.position.step, run.rank))
    with torch.autocast(device_type=run.device.type, dtype=run.amp_dtype, enabled=run.use_amp):
        value, accuracy = run.ddp_net(waves, labels)
    if not torch.isfinite(value):
        kept = (
            f"the last saved state is kept in {run.state_path}"
            if run.state_path.is_file()
            else "no training state was saved yet"
        )
        raise XvecError(
            f"loss became {value.item()} at epoch {run.position.epoch}, "
            f"step {run.position.step + 1}; stopped, {kept}. Lower optim.lr "
            "or set optim.grad_clip"
        )
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(value).backward()
    if run.recipe.optim.grad_clip:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.net.parameters(), run.recipe.optim.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.schedule_unit == "step":
        run.scheduler.step()
    run.position.step += 1
    run.position.batch += 1
    return value.item(), accuracy.item()


def _step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of optimiser step ``step`` on process ``rank`` of a run seeded ``seed``."""
    words = np.random.SeedSequence([seed, step, rank, 0x57E9]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) | (int(words[1]) >> 1)  # 63 bits: torch's seed range


def _train_epoch(run: _Run, stop: StopFlag, stop_when: Callable[[Position], bool] | None) -> bool:
    """Run the rest of the current epoch (or up to ``max_steps``); True when asked to stop.

    The epoch's mean loss and accuracy are logged when it ends normally.
    """
    cfg_train, position = run.recipe.train, run.position
    epoch = position.epoch
    run.batches.set_epoch(epoch, position.batch)
    run.net.train()
    stats = EpochStats(epoch, cfg_train.max_epoch, len(run.batches), position.batch)
    run.observer.epoch_started(stats)
    try:
        if run.thread_tuner is not None:
            run.thread_tuner.restart_clock()
        for waves, labels in unwrapped(run.loader):
            loss, accuracy = _step(run, waves, labels)
            if run.thread_tuner is not None:
                run.thread_tuner.step_done()
            stats.add(loss, accuracy, waves.shape[0] * waves.shape[1] * run.world)
            run.observer.step_done(stats)
            if position.step % cfg_train.log_every == 0:
                ramped = run.recipe.loss.margin_ramp is not None  # type: ignore[union-attr]
                run.log.write(
                    kind="train",
                    epoch=epoch,
                    step=position.step,
                    loss=round(loss, 6),
                    accuracy=round(accuracy, 4) if type(run.loss).reports_accuracy else None,
                    lr=run.optimizer.param_groups[0]["lr"],
                    utt_per_s=round(stats.rate, 2),
                    threads=torch.get_num_threads(),
                    **({"margin": run.loss.margin} if ramped else {}),
                )
            stopping = stop.requested or (stop_when is not None and stop_when(position))
            if run.capped and not stopping:
                break
            every = cfg_train.save_every_steps
            periodic = every > 0 and position.step % every == 0
            if (stopping or periodic) and run.is_main:
                run.save_state()
            if stopping:
                return True
    finally:
        run.observer.epoch_ended(stats)
    run.log.write(
        kind="epoch",
        epoch=epoch,
        step=position.step,
        loss=round(stats.mean_loss, 6),
        accuracy=(round(stats.mean_accuracy, 4) if type(run.loss).reports_accuracy else None),
    )
    return False


def _end_of_epoch(run: _Run, stop: StopFlag) -> bool:
    """Schedule, then close the epoch (:func:`_close_epoch`); True at the end of training.

    An epoch cut short by ``max_steps`` is not counted as done (resuming with a higher cap
    continues it), but is evaluated and saved as the end of training.
    """
    position, recipe = run.position, run.recipe
    epoch = position.epoch
    if position.batch >= len(run.batches):
        if run.schedule_unit == "epoch":
            run.scheduler.step()
        position.epoch += 1
        position.batch = 0
    if run.finished():  # evaluated, unless the run averages: the average is, in its place
        due = not recipe.train.average_last
    else:
        due = epoch % recipe.train.test_interval == 0
    position.pending_eval = epoch if run.trials is not None and due else None
    return _close_epoch(run, epoch, stop)


def _close_epoch(run: _Run, epoch: int, stop: StopFlag) -> bool:
    """Evaluate when pending, save last/best checkpoints and the state; True at the end.

    The state is saved before a pending evaluation, marked pending: a stop (which cuts the
    evaluation short) or a kill during it resumes with that evaluation, not a repeated epoch.
    """
    position, recipe = run.position, run.recipe
    last_epoch = run.finished()
    evaluate = position.pending_eval is not None
    if evaluate and run.is_main:
        run.save_state()
    position.pending_eval = None
    if run.is_main:
        meta = {"recipe": recipe.to_dict(), "epoch": epoch, "step": position.step}
        result = None
        if evaluate:
            final = last_epoch and not recipe.train.average_last
            result = _periodic_eval(run, epoch, stop, final=final)
            run.log.write(
                kind="eval",
                epoch=epoch,
                step=position.step,
                eer=result.metrics.eer,
                min_dcf=result.metrics.min_dcf[recipe.eval.dcf_p_target],
                min_dcf_all={str(p): v for p, v in result.metrics.min_dcf.items()},
            )
            meta["metrics"] = result.metrics.to_dict()
        save = {"loss": run.loss, "loss_name": recipe.loss.name, "extra": meta}  # type: ignore[union-attr]
        save_checkpoint(run.run_dir / "last.safetensors", run.model, recipe.model.name, **save)
        keep = max(recipe.train.keep_epoch_models, recipe.train.average_last)
        if keep:
            path = epoch_model_path(run.run_dir, epoch)
            save_checkpoint(path, run.model, recipe.model.name, **save)
            prune_epoch_models(run.run_dir, keep)
        if result is not None and (
            position.best_eer is None or result.metrics.eer <= position.best_eer
        ):
            position.best_eer = result.metrics.eer
            save_checkpoint(run.run_dir / "best.safetensors", run.model, recipe.model.name, **save)
        run.save_state()
        if last_epoch:
            if recipe.train.average_last:
                result = _average_and_evaluate(run, epoch, stop)
            _finish(run, result)
    if run.world > 1:
        torch.distributed.barrier()
    return last_epoch


def _interrupted(run: _Run) -> Interrupted:
    """The error for Ctrl-C/SIGTERM: where the run stopped and where its state is."""
    return Interrupted(run.position.epoch, run.position.step, run.state_path)


def _complete(run: _Run) -> None:
    """A finished run resumed: write the final outputs a kill left out, if any."""
    run_dir, trials, epoch = run.run_dir, run.trials, run.position.epoch - 1
    wanted = final_outputs(run.recipe, trials is not None)
    missing = tuple(name for name in wanted if not (run_dir / name).is_file())
    run.observer.completing(run_dir, missing)
    if not missing:
        return
    if run.recipe.train.average_last:  # the average is rewritten: the same inputs, same bytes
        _finish(run, _average_and_evaluate(run, epoch, None))
    else:
        _finish(run, _periodic_eval(run, epoch, final=True) if trials else None)


class _EvalStopped(Exception):
    """A stop was requested during a periodic evaluation (which is then redone on resume)."""


def _periodic_eval(
    run: _Run,
    epoch: int,
    stop: StopFlag | None = None,
    model: nn.Module | None = None,
    name: str = "model",
    final: bool = False,
) -> EvalResult:
    """Evaluate the model (or another ``model``, such as the average) on the recipe's trial
    list with the recipe's protocol; the ``final`` evaluation adds AS-norm when the recipe
    asks (``eval.asnorm_top_k``: a cohort from the training list).

    The observer sees the files embedded; a requested ``stop`` ends the evaluation after the
    batch in hand (:class:`_EvalStopped`).
    """
    recipe, observer = run.recipe, run.observer
    model = model if model is not None else run.model
    protocol = Protocol.from_recipe(recipe)
    p_targets = tuple(dict.fromkeys((recipe.eval.dcf_p_target, 0.05, 0.01)))
    was_training = model.training

    def progress(advance: int, total: int) -> None:
        observer.evaluation_progress(advance, total)
        if stop is not None and stop.requested:
            raise _EvalStopped

    observer.evaluation_started(epoch)
    result = None
    try:
        result = evaluate_model(
            model,
            run.trials,  # type: ignore[arg-type]  # evaluated only with a trial list
            recipe.data.test_path,
            protocol,
            name=name,
            batch_size=recipe.eval.batch_size,
            device=run.device,
            p_targets=p_targets,
            c_miss=recipe.eval.dcf_c_miss,
            c_fa=recipe.eval.dcf_c_fa,
            progress=progress,
            cohort=_cohort(run) if final else None,
            plda=_plda(run) if final else None,
        )
    finally:
        model.train(was_training)
        observer.evaluated(epoch, result, recipe.eval.dcf_p_target)
    return result


def _cohort(run: _Run) -> SpeakerCohort | None:
    """The AS-norm cohort of ``eval.asnorm_top_k``: the training speakers' mean embeddings."""
    settings = run.recipe.eval
    if settings.asnorm_top_k is None:
        return None
    return SpeakerCohort(
        Path(run.recipe.data.train_path),
        run.train_list,
        settings.asnorm_top_k,
        settings.asnorm_files_per_speaker,
    )


def _plda(run: _Run) -> PldaSetup | None:
    """The PLDA back end of ``eval.plda_lda_dim``: fitted on the training files' embeddings
    (every file, or ``eval.plda_files_per_speaker`` of each speaker)."""
    settings = run.recipe.eval
    if settings.plda_lda_dim is None:
        return None
    return PldaSetup(
        Path(run.recipe.data.train_path),
        run.train_list,
        settings.plda_lda_dim,
        settings.plda_files_per_speaker,
    )


def _average_and_evaluate(run: _Run, epoch: int, stop: StopFlag | None) -> EvalResult | None:
    """``[train] average_last``: average the last kept epoch models into ``avg.safetensors``
    and evaluate that model (None without a trial list).

    The average is evaluated in a model of its own: the training state keeps the last epoch's
    weights (a resume with more epochs continues them).
    """
    output, sources = average_kept_models(run.run_dir, run.recipe.train.average_last)
    run.observer.averaged(output, sources)
    if run.trials is None:
        return None
    averaged = load_model(output, run.device)
    return _periodic_eval(run, epoch, stop, model=averaged, name=AVERAGE_FILE, final=True)


def _finish(run: _Run, result: EvalResult | None) -> None:
    """Write the final scores, result JSON, histogram and curves."""
    run_dir, trials = run.run_dir, run.trials
    if result is not None and trials is not None:
        write_eval_outputs(run_dir, result.summary(), result.scores, trials)
        if result.plda is not None:  # for `xvec score --backend` with the run's final model
            result.plda.backend.save(run_dir / PLDA_FILE)
        plot_histogram(
            result.scores,
            trials.labels,
            run_dir / "hist.png",
            threshold=result.metrics.eer_threshold,
            title=f"{run_dir.name}: EER {result.metrics.eer:.2f} %",
        )
        run.observer.final_evaluation(result, len(trials))
    records = read_log(run_dir) if (run_dir / LOG_FILE).is_file() else []
    if not any(r.get("kind") == "train" for r in records):  # fewer steps than log_every
        records = [{**r, "kind": "train"} if r.get("kind") == "epoch" else r for r in records]
    if records:
        plot_training(records, run_dir / "curves.png")
    run.completed = True
