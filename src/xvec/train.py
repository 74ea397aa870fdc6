"""The training loop: sampler and loader, AMP, DDP, exact resume, periodic evaluation, logs.

A run folder holds ``recipe.json`` (the resolved recipe), ``log.jsonl`` (one record per
``log_every`` steps, per epoch and per evaluation), ``train.lock`` while a run uses it,
``state.safetensors`` (everything needed to resume:
weights, optimiser, scheduler, scaler, position, RNG), ``last.safetensors`` and
``best.safetensors`` (self-describing model checkpoints), and after training ``scores.txt``,
``result.json``, ``hist.png`` and ``curves.png``. Every file is written atomically.

Resume is exact: the batches of an epoch and every crop's randomness are functions of
(seed, epoch, batch), so a run killed at any point and resumed from its last state reproduces an
uninterrupted run's weights bit for bit on CPU.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xvec import registry
from xvec.checkpoint import load_state_strict, save_checkpoint
from xvec.config import Recipe
from xvec.data import (
    EpochBatches,
    TrainDataset,
    check_files_exist,
    check_sampler,
    read_train_list,
    read_trials,
    require_both_labels,
)
from xvec.devices import parse_device
from xvec.errors import XvecError
from xvec.files import atomic_write_bytes, safetensors_metadata

STATE_FILE = "state.safetensors"
LOG_FILE = "log.jsonl"
LOCK_FILE = "train.lock"


class RunLock:
    """Exclusive hold on a run folder: ``train.lock`` (pid and host) created with O_EXCL.

    A lock whose pid is not alive on this host is stale and taken over with a warning.
    """

    def __init__(self) -> None:
        self.path: Path | None = None

    def acquire(self, run_dir: Path, console: Any) -> None:
        """Take the lock or fail at once naming its holder."""
        path = run_dir / LOCK_FILE
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _lock_holder(path)
                if holder is None or _holder_alive(*holder):
                    who = f"pid {holder[0]} on {holder[1]}" if holder else "an unknown process"
                    raise XvecError(
                        f"{path}: another 'xvec train' ({who}) is using this run folder; wait "
                        "for it to end or set train.output_dir (remove the lock if it is gone)"
                    ) from None
                console.print(
                    f"warning: {path}: taking over a stale lock (pid {holder[0]} is not running)"
                )
                path.unlink(missing_ok=True)
                continue
            except OSError as exc:
                raise XvecError(f"{path}: cannot create the run lock ({exc.strerror})") from exc
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
            self.path = path
            return
        raise XvecError(f"{path}: cannot take the run lock; remove it if no run is using it")

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


def _lock_holder(path: Path) -> tuple[int, str] | None:
    try:
        data = json.loads(path.read_text())
        return int(data["pid"]), str(data["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _holder_alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True  # cannot tell: assume it is running
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


@dataclass
class Position:
    """Where training stands: the next batch to run is ``batch`` of ``epoch``."""

    epoch: int = 1
    batch: int = 0
    step: int = 0
    best_eer: float | None = None


# --------------------------------------------------------------------------- state files


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, values in state["state"].items():
        plain["state"][str(pid)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                plain["state"][str(pid)][key] = value
    return tensors, plain


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): dict(v) for pid, v in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_state(
    path: Path,
    net: SpeakerNet,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    position: Position,
) -> None:
    """Atomically write everything needed to resume exactly (no pickle: safetensors + JSON)."""
    from safetensors.torch import save

    tensors = {
        f"net.{k}": v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()
    }
    optim_tensors, optim_plain = _flatten_optimizer(optimizer.state_dict())
    tensors.update(optim_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    meta = {
        "position": position.__dict__,
        "optimizer": optim_plain,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    atomic_write_bytes(path, save(tensors, metadata={"xvec_state": json.dumps(meta)}))


def load_state(
    path: Path,
    net: SpeakerNet,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
) -> Position:
    """Restore a state file written by :func:`save_state`; returns the position to continue at."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = path.read_bytes()
    try:
        tensors = load(data)
        meta = json.loads(safetensors_metadata(data)["xvec_state"])
    except (SafetensorError, ValueError, KeyError, OverflowError) as exc:
        raise XvecError(f"{path}: unreadable training state; remove it to start over") from exc
    net_state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
    load_state_strict(net, net_state, str(path))
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta["scaler"] is not None:
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    return Position(**meta["position"])


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The JSON-lines records of a run (a missing log is an error naming the folder)."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        raise XvecError(f"{run_dir}: no {LOG_FILE} here; is this a training run folder?")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if number == len(path.read_text().splitlines()):
                    break  # a record cut by a crash
                raise XvecError(f"{path}:{number}: not a JSON record") from exc
    return records


# --------------------------------------------------------------------------- helpers


def make_optimizer(recipe: Recipe, params: Any) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (Nesterov momentum) with weight decay, as the recipe says."""
    optim = recipe.optim
    if optim.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=optim.lr,
            momentum=optim.momentum,
            weight_decay=optim.weight_decay,
            nesterov=True,
        )
    cls = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=optim.lr, weight_decay=optim.weight_decay)


def make_scheduler(
    recipe: Recipe, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> tuple[Any, str]:
    """The LR schedule and when it steps ("epoch" or "step").

    ``steplr`` is voxceleb_trainer's: multiply by ``lr_decay`` every ``test_interval`` epochs.
    ``cosine`` warms up linearly for ``warmup_epochs`` then decays to ``min_lr``.
    """
    optim = recipe.optim
    if optim.scheduler == "steplr":
        return (
            torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=recipe.train.test_interval, gamma=optim.lr_decay
            ),
            "epoch",
        )
    if optim.scheduler == "cosine":
        total = max(1, recipe.train.max_epoch * steps_per_epoch)
        warmup = int(optim.warmup_epochs * steps_per_epoch)
        floor = optim.min_lr / optim.lr

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "step"
    return None, "none"


def autocast_settings(device: torch.device, enabled: bool) -> tuple[bool, torch.dtype]:
    """fp16 autocast on CUDA, bf16 on CPUs that have it, otherwise off (silently)."""
    if not enabled:
        return False, torch.float32
    if device.type == "cuda":
        return True, torch.float16
    if device.type == "cpu" and _cpu_has_bf16():
        return True, torch.bfloat16
    return False, torch.float32


def _cpu_has_bf16() -> bool:
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves at the next step boundary and exits 130."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(XvecError):
    """Training stopped on request after saving its state."""

    exit_code = 130


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def launch_distributed(recipe: Path, overrides: list[str], resume: bool, nproc: int) -> int:
    """Run ``torchrun --nproc_per_node N -m xvec train ...`` and return its exit code."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
    ]
    command += ["-m", "xvec", "train", str(recipe)]
    for item in overrides:
        command += ["--set", item]
    if resume:
        command.append("--resume")
    return subprocess.call(command)


# --------------------------------------------------------------------------- the loop


def train(
    recipe: Recipe,
    recipe_path: str | Path | None = None,
    resume: bool = False,
    console: Any = None,
    stop_after_steps: int | None = None,
    overrides: list[str] | None = None,
) -> str | None:
    """Train as the recipe says; returns a printable summary (rank 0) or None.

    ``stop_after_steps`` ends the run after that many optimiser steps in this call (tests);
    ``overrides`` are the ``--set`` items, repeated in the printed resume command.
    The run folder is locked (rank 0) for the whole call, released also on errors.
    """
    lock = RunLock()
    try:
        return _train(recipe, recipe_path, resume, console, stop_after_steps, overrides or [], lock)
    finally:
        lock.release()


def _train(
    recipe: Recipe,
    recipe_path: str | Path | None,
    resume: bool,
    console: Any,
    stop_after_steps: int | None,
    overrides: list[str],
    lock: RunLock,
) -> str | None:
    from xvec.report import make_console

    console = console or make_console(stderr=True)
    recipe = recipe.resolved()
    cfg_train, cfg_data = recipe.train, recipe.data
    rank, world, local_rank = _distributed()
    is_main = rank == 0
    if recipe.loss is None:
        raise XvecError("the recipe has no [loss] section; training needs one (see 'xvec losses')")
    if cfg_data.train_list is None:
        raise XvecError(
            "the recipe has no data.train_list; set it or use --set data.train_list=..."
        )

    # ---- device and processes
    device = parse_device(cfg_train.device, "train.device")
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if cfg_train.deterministic:
        # Bit-identical runs: deterministic kernels, and on CPU one intra-op thread (oneDNN's
        # multi-threaded reductions are not reproducible from run to run).
        torch.use_deterministic_algorithms(True)
        if device.type == "cpu":
            torch.set_num_threads(1)

    # ---- data, checked before anything long starts
    train_list = read_train_list(cfg_data.train_list)
    if cfg_train.nClasses is not None and cfg_train.nClasses != train_list.num_classes:
        raise XvecError(
            f"train.nClasses is {cfg_train.nClasses} but {cfg_data.train_list} has "
            f"{train_list.num_classes} speakers; remove nClasses (xvec counts it) or fix the list"
        )
    check_files_exist(cfg_data.train_path, train_list.files, cfg_data.train_list)
    trials = None
    if cfg_data.test_list is not None:
        trials = read_trials(cfg_data.test_list)
        require_both_labels(trials)
        check_files_exist(cfg_data.test_path, trials.files, cfg_data.test_list)

    # ---- model and loss
    torch.manual_seed(cfg_train.seed)
    model = registry.build("model", recipe.model.name, recipe.model.params)
    loss_cls = registry.get_class("loss", recipe.loss.name)
    if cfg_train.nPerSpeaker < loss_cls.min_per_speaker:
        raise XvecError(
            f"loss '{recipe.loss.name}' needs train.nPerSpeaker >= {loss_cls.min_per_speaker} "
            f"(utterances per speaker in a batch row), the recipe has {cfg_train.nPerSpeaker}; "
            f"set --set train.nPerSpeaker={loss_cls.min_per_speaker}"
        )
    metric_loss = loss_cls.min_per_speaker >= 2
    if not metric_loss and train_list.num_classes < 2:
        raise XvecError(
            f"{cfg_data.train_list}: loss '{recipe.loss.name}' classifies speakers but the list "
            "has 1 speaker; a classification loss needs at least 2"
        )
    _check_per_speaker(train_list.labels, cfg_train, str(cfg_data.train_list))
    check_sampler(
        train_list.num_classes,
        cfg_train.batch_size,
        cfg_train.nPerSpeaker,
        metric_loss,
        recipe.loss.name,
    )
    loss = registry.build(
        "loss",
        recipe.loss.name,
        recipe.loss.params,
        embedding_dim=model.embedding_dim,
        num_classes=train_list.num_classes,
    )
    net = SpeakerNet(model, loss).to(device)

    # ---- sampler and loader (workers persist across epochs)
    batches = EpochBatches(
        train_list.labels,
        cfg_train.batch_size,
        cfg_train.nPerSpeaker,
        cfg_train.max_seg_per_spk,
        distinct_speakers=metric_loss,
        seed=cfg_train.seed,
        rank=rank,
        world_size=world,
    )
    augmenter = None
    if recipe.augment.musan_path or recipe.augment.rir_path or recipe.augment.speed_perturb:
        from xvec.augment import Augmenter

        augmenter = Augmenter(
            musan_path=recipe.augment.musan_path,
            rir_path=recipe.augment.rir_path,
            speed_perturb=recipe.augment.speed_perturb,
            probability=recipe.augment.probability,
        )
    dataset = TrainDataset(
        cfg_data.train_path, train_list, cfg_data.max_frames, cfg_train.seed, augmenter
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,
        num_workers=cfg_train.num_workers,
        persistent_workers=cfg_train.num_workers > 0,
        prefetch_factor=2 if cfg_train.num_workers > 0 else None,
        pin_memory=device.type == "cuda",
    )

    optimizer = make_optimizer(recipe, net.parameters())
    scheduler, schedule_unit = make_scheduler(recipe, optimizer, len(batches))
    use_amp, amp_dtype = autocast_settings(device, cfg_train.mixed_precision)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    # ---- run folder, resume
    run_dir = Path(cfg_train.output_dir)
    state_path = run_dir / STATE_FILE
    position = Position()
    if is_main:
        _prepare_run_dir(run_dir, recipe, resume, lock, console)
    max_steps = cfg_train.max_steps

    def finished() -> bool:
        return position.epoch > cfg_train.max_epoch or (
            max_steps is not None and position.step >= max_steps
        )

    if resume:
        if not state_path.is_file():
            raise XvecError(f"{run_dir}: nothing to resume (no {STATE_FILE}); run without --resume")
        position = load_state(state_path, net, optimizer, scheduler, scaler)
        if is_main and not finished():
            console.print(
                f"resuming {run_dir} at epoch {position.epoch}, batch {position.batch} "
                f"(step {position.step})"
            )
    ddp_net: nn.Module = net
    if world > 1:
        ddp_net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )

    log = _Log(run_dir / LOG_FILE if is_main else None)
    checkpoint_meta = {"recipe": recipe.to_dict()}
    steps_this_call = 0
    result_text = None
    capped = False
    with _StopFlag() as stop:
        while not finished():
            epoch = position.epoch
            batches.set_epoch(epoch, position.batch)
            net.train()
            stopping = False
            with _EpochProgress(
                console, epoch, cfg_train.max_epoch, len(batches), position.batch, enabled=is_main
            ) as progress:
                for waves, labels in _unwrapped(loader):
                    waves = waves.to(device, non_blocking=True)
                    labels = labels.to(device, non_blocking=True)
                    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                        value, accuracy = ddp_net(waves, labels)
                    if not torch.isfinite(value):
                        kept = (
                            f"the last saved state is kept in {state_path}"
                            if state_path.is_file()
                            else "no training state was saved yet"
                        )
                        raise XvecError(
                            f"loss became {value.item()} at epoch {epoch}, "
                            f"step {position.step + 1}; stopped, {kept}. Lower optim.lr "
                            "or set optim.grad_clip"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(value).backward()
                    if recipe.optim.grad_clip:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(net.parameters(), recipe.optim.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    if schedule_unit == "step":
                        scheduler.step()
                    position.step += 1
                    position.batch += 1
                    steps_this_call += 1
                    progress.advance(
                        value.item(), accuracy.item(), waves.shape[0] * waves.shape[1] * world
                    )
                    if position.step % cfg_train.log_every == 0:
                        log.write(
                            kind="train",
                            epoch=epoch,
                            step=position.step,
                            loss=round(value.item(), 6),
                            accuracy=round(accuracy.item(), 4),
                            lr=optimizer.param_groups[0]["lr"],
                            utt_per_s=round(progress.rate, 2),
                        )
                    stopping = stop.requested or (
                        stop_after_steps is not None and steps_this_call >= stop_after_steps
                    )
                    capped = max_steps is not None and position.step >= max_steps
                    if capped and not stopping:
                        break
                    periodic = (
                        cfg_train.save_every_steps > 0
                        and position.step % cfg_train.save_every_steps == 0
                    )
                    if (stopping or periodic) and is_main:
                        save_state(state_path, net, optimizer, scheduler, scaler, position)
                    if stopping:
                        break
            if stopping:
                if stop.requested:
                    command = ["xvec", "train", str(recipe_path or "RECIPE")]
                    for item in overrides:
                        command += ["--set", item]
                    raise Interrupted(
                        f"interrupted at epoch {epoch}, step {position.step}; state saved in "
                        f"{state_path}. Resume with: {shlex.join([*command, '--resume'])}"
                    )
                return None
            # ---- end of epoch (or of max_steps): schedule, evaluate, checkpoint
            log.write(
                kind="epoch",
                epoch=epoch,
                step=position.step,
                loss=round(progress.mean_loss, 6),
                accuracy=round(progress.mean_accuracy, 4),
            )
            if position.batch >= len(batches):
                if schedule_unit == "epoch":
                    scheduler.step()
                position.epoch += 1
                position.batch = 0
            last_epoch = finished()
            if is_main:
                meta = {**checkpoint_meta, "epoch": epoch, "step": position.step}
                due = epoch % cfg_train.test_interval == 0 or last_epoch
                result = (
                    _periodic_eval(recipe, model, trials, device, console)
                    if trials and due
                    else None
                )
                if result is not None:
                    p_target = recipe.eval.dcf_p_target
                    log.write(
                        kind="eval",
                        epoch=epoch,
                        step=position.step,
                        eer=result.metrics.eer,
                        min_dcf=result.metrics.min_dcf[p_target],
                    )
                    meta["metrics"] = result.metrics.to_dict()
                save = {"loss": loss, "loss_name": recipe.loss.name, "extra": meta}
                save_checkpoint(run_dir / "last.safetensors", model, recipe.model.name, **save)
                if result is not None and (
                    position.best_eer is None or result.metrics.eer <= position.best_eer
                ):
                    position.best_eer = result.metrics.eer
                    save_checkpoint(run_dir / "best.safetensors", model, recipe.model.name, **save)
                save_state(state_path, net, optimizer, scheduler, scaler, position)
                if last_epoch:
                    result_text = _finish(run_dir, result, trials, log, console)
            if world > 1:
                torch.distributed.barrier()
    if is_main and result_text is None:  # resumed a finished run: complete what is missing
        result_text = _complete(run_dir, recipe, model, trials, device, log, console)
    if world > 1:
        torch.distributed.destroy_process_group()
    return result_text


def _check_per_speaker(labels: Any, cfg_train: Any, source: str) -> None:
    """Fail early when no speaker has ``nPerSpeaker`` utterances (rows would repeat them)."""
    import numpy as np

    counts = np.minimum(np.bincount(np.asarray(labels)), cfg_train.max_seg_per_spk)
    wanted = cfg_train.nPerSpeaker
    enough = int((counts >= wanted).sum())
    if enough == 0:
        most = int(counts.max()) if counts.size else 0
        raise XvecError(
            f"{source}: train.nPerSpeaker is {wanted} but no speaker has that many utterances "
            f"(0 of {counts.size} speakers; the most is {most}, capped by max_seg_per_spk); "
            f"set --set train.nPerSpeaker={max(most, 1)} or lower"
        )


def _unwrapped(loader: Any) -> Any:
    """Iterate a DataLoader, turning a worker's wrapped XvecError back into its one line."""
    iterator = iter(loader)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except XvecError as exc:
            text = str(exc)
            if "Original Traceback" not in text:
                raise
            lines = [line for line in text.splitlines() if line.strip()]
            message = lines[-1].split("XvecError: ", 1)[-1] if lines else text
            raise type(exc)(message) from None
        yield item


FINAL_OUTPUTS = ("last.safetensors", "curves.png")
EVAL_OUTPUTS = ("scores.txt", "result.json", "hist.png")


def _complete(
    run_dir: Path,
    recipe: Recipe,
    model: nn.Module,
    trials: Any,
    device: torch.device,
    log: _Log,
    console: Any,
) -> str:
    """A finished run resumed: write the final outputs a kill left out, or say it is complete."""
    wanted = FINAL_OUTPUTS + (EVAL_OUTPUTS if trials is not None else ())
    missing = [name for name in wanted if not (run_dir / name).is_file()]
    if not missing:
        console.print(f"{run_dir}: the run is complete; nothing to do")
        return _summary_lines(run_dir, trials is not None)
    console.print(f"{run_dir}: training is done; writing the missing {', '.join(missing)}")
    result = _periodic_eval(recipe, model, trials, device, console) if trials else None
    return _finish(run_dir, result, trials, log, console)


def _summary_lines(run_dir: Path, evaluated: bool) -> str:
    lines = [
        f"run folder: {run_dir}",
        f"model: {run_dir / 'last.safetensors'} (best: {run_dir / 'best.safetensors'})",
    ]
    if evaluated:
        lines += [f"scores: {run_dir / 'scores.txt'}", f"histogram: {run_dir / 'hist.png'}"]
    if (run_dir / "curves.png").is_file():
        lines.append(f"training curves: {run_dir / 'curves.png'}")
    return "\n".join(lines)


def _prepare_run_dir(
    run_dir: Path, recipe: Recipe, resume: bool, lock: RunLock, console: Any
) -> None:
    """Create and lock the run folder, check it, then record the resolved recipe.

    Nothing is written in the folder (but the lock) before every check passes.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise XvecError(f"{run_dir}: cannot create the run folder ({exc.strerror})") from exc
    if not os.access(run_dir, os.W_OK):
        raise XvecError(f"{run_dir}: run folder is not writable; set train.output_dir")
    lock.acquire(run_dir, console)
    state_path = run_dir / STATE_FILE
    if resume and not state_path.is_file():
        raise XvecError(f"{run_dir}: nothing to resume (no {STATE_FILE}); run without --resume")
    if not resume and state_path.exists():
        raise XvecError(
            f"{run_dir}: holds a previous run; add --resume to continue it, or set "
            "train.output_dir to a new folder"
        )
    recorded = run_dir / "recipe.json"
    current = recipe.to_dict()
    if resume and recorded.is_file():
        try:
            previous = json.loads(recorded.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise XvecError(f"{recorded}: not a JSON recipe ({exc}); restore or remove it") from exc
        for section in ("data", "model", "loss"):
            if previous.get(section) != current.get(section):
                raise XvecError(
                    f"{recorded}: the [{section}] section differs from the recipe being resumed; "
                    "resume with the same recipe (only [train] limits such as max_epoch may change)"
                )
    atomic_write_bytes(recorded, (json.dumps(current, indent=2) + "\n").encode())


class _Log:
    """Append-only JSON-lines log (flushed per record; only rank 0 writes)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.start = time.time()

    def write(self, **record: Any) -> None:
        if self.path is None:
            return
        record["time"] = round(time.time() - self.start, 3)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


class _EpochProgress:
    """A rich progress bar for one epoch: loss, accuracy, utterances/s, ETA."""

    def __init__(
        self, console: Any, epoch: int, max_epoch: int, total: int, done: int, enabled: bool
    ) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.enabled = enabled
        self.rate = 0.0
        self._utterances = 0
        self._start = time.perf_counter()
        self._loss = self._acc = 0.0
        self._steps = 0
        self.progress = Progress(
            TextColumn(f"epoch {epoch}/{max_epoch}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn(
                "loss {task.fields[loss]:.4f} acc {task.fields[acc]:.2f}% "
                "{task.fields[rate]:.1f} utt/s"
            ),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self.task = self.progress.add_task(
            "train", total=total, completed=done, loss=0.0, acc=0.0, rate=0.0
        )

    def __enter__(self) -> _EpochProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    @property
    def mean_loss(self) -> float:
        """This call's mean loss over the epoch's steps."""
        return self._loss

    @property
    def mean_accuracy(self) -> float:
        """This call's mean accuracy over the epoch's steps."""
        return self._acc

    def advance(self, loss: float, accuracy: float, utterances: int) -> None:
        self._steps += 1
        self._loss += (loss - self._loss) / self._steps
        self._acc += (accuracy - self._acc) / self._steps
        self._utterances += utterances
        self.rate = self._utterances / max(time.perf_counter() - self._start, 1e-9)
        self.progress.update(self.task, advance=1, loss=self._loss, acc=self._acc, rate=self.rate)


def _periodic_eval(
    recipe: Recipe, model: nn.Module, trials: Any, device: torch.device, console: Any
):
    """Evaluate the model on the recipe's trial list with the recipe's protocol."""
    from xvec.embed import Protocol
    from xvec.evaluate import evaluate_model

    protocol = Protocol(
        recipe.eval.protocol,
        max_seconds=recipe.eval.max_seconds,
        eval_frames=recipe.data.eval_frames,
        num_eval=recipe.data.num_eval,
    )
    p_targets = tuple(dict.fromkeys((recipe.eval.dcf_p_target, 0.05, 0.01)))
    was_training = model.training
    result = evaluate_model(
        model,
        trials,
        recipe.data.test_path,
        protocol,
        batch_size=recipe.eval.batch_size,
        device=device,
        p_targets=p_targets,
        c_miss=recipe.eval.dcf_c_miss,
        c_fa=recipe.eval.dcf_c_fa,
    )
    model.train(was_training)
    console.print(
        f"  eval: EER {result.metrics.eer:.3f} %  minDCF({recipe.eval.dcf_p_target}) "
        f"{result.metrics.min_dcf[recipe.eval.dcf_p_target]:.4f}  ({result.seconds:.1f} s)"
    )
    return result


def _finish(run_dir: Path, result: Any, trials: Any, log: _Log, console: Any) -> str:
    """Write the final scores, result JSON, histogram and curves; say where they are."""
    from xvec.plots import plot_histogram, plot_training
    from xvec.scoring import write_scores

    lines = [
        f"run folder: {run_dir}",
        f"model: {run_dir / 'last.safetensors'} (best: {run_dir / 'best.safetensors'})",
    ]
    if result is not None:
        write_scores(
            run_dir / "scores.txt", result.scores, trials.enroll_names(), trials.test_names()
        )
        atomic_write_bytes(
            run_dir / "result.json", (json.dumps(result.summary(), indent=2) + "\n").encode()
        )
        plot_histogram(
            result.scores,
            trials.labels,
            run_dir / "hist.png",
            threshold=result.metrics.eer_threshold,
            title=f"{run_dir.name}: EER {result.metrics.eer:.2f} %",
        )
        lines += [f"scores: {run_dir / 'scores.txt'}", f"histogram: {run_dir / 'hist.png'}"]
        from xvec.report import metrics_table

        console.print(metrics_table([result.summary()], f"final evaluation ({len(trials)} trials)"))
    records = read_log(run_dir) if (run_dir / LOG_FILE).is_file() else []
    if not any(r.get("kind") == "train" for r in records):  # fewer steps than log_every
        records = [{**r, "kind": "train"} if r.get("kind") == "epoch" else r for r in records]
    if records:
        plot_training(records, run_dir / "curves.png")
        lines.append(f"training curves: {run_dir / 'curves.png'}")
    return "\n".join(lines)
