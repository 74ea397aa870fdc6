"""What a training run is built from, checked before anything long starts: the train and trial
lists, the device and CPU threads, the loss (against the list and batch layout) and the loader.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xvec import registry
from xvec.augment import SPEAKER_SPEEDS, Augmenter
from xvec.config import Recipe
from xvec.cpu_threads import ThreadTuner
from xvec.data import (
    EpochBatches,
    TrainDataset,
    TrainList,
    Trials,
    check_files_exist,
    check_sampler,
    read_train_list,
    read_trials,
    require_both_labels,
)
from xvec.devices import parse_device
from xvec.errors import XvecError
from xvec.features import spec_augment
from xvec.schedules import has_margin


def read_data(recipe: Recipe) -> tuple[TrainList, Trials | None]:
    """The train list and trial list, checked (every file present) before training starts."""
    cfg_train, cfg_data = recipe.train, recipe.data
    if recipe.loss is None:
        raise XvecError("the recipe has no [loss] section; training needs one (see 'xvec losses')")
    if cfg_data.train_list is None:
        raise XvecError(
            "the recipe has no data.train_list; set it or use --set data.train_list=..."
        )
    if not Path(cfg_data.train_list).exists():
        raise XvecError(
            f"{cfg_data.train_list}: train list not found (data.train_list); point the recipe "
            "at your data with --set data.train_list=LIST --set data.train_path=AUDIO_DIR "
            "(xvec prepare voxceleb or xvec prepare folder writes the list)"
        )
    train_list = read_train_list(cfg_data.train_list)
    if cfg_train.nClasses is not None and cfg_train.nClasses != train_list.num_classes:
        raise XvecError(
            f"train.nClasses is {cfg_train.nClasses} but {cfg_data.train_list} has "
            f"{train_list.num_classes} speakers; remove nClasses (xvec counts it) or fix the list"
        )
    check_files_exist(cfg_data.train_path, train_list.files, cfg_data.train_list)
    lda_dim = recipe.eval.plda_lda_dim
    if lda_dim is not None and lda_dim >= train_list.num_classes:
        raise XvecError(
            f"eval.plda_lda_dim is {lda_dim} but {cfg_data.train_list} has "
            f"{train_list.num_classes} speakers: LDA keeps at most {train_list.num_classes - 1} "
            "dimensions; lower plda_lda_dim"
        )
    trials = None
    if cfg_data.test_list is not None:
        trials = read_trials(cfg_data.test_list)
        require_both_labels(trials)
        check_files_exist(cfg_data.test_path, trials.files, cfg_data.test_list)
    return train_list, trials


def init_device(recipe: Recipe, world: int, local_rank: int) -> torch.device:
    """The training device (one GPU per process under DDP), the process group, determinism."""
    device = parse_device(recipe.train.device, "train.device")
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if recipe.train.deterministic:
        # Bit-identical runs: deterministic kernels, and on CPU one intra-op thread (oneDNN's
        # multi-threaded reductions are not reproducible from run to run).
        torch.use_deterministic_algorithms(True)
        if device.type == "cpu":
            torch.set_num_threads(1)
    elif device.type == "cpu" and isinstance(recipe.train.threads, int):
        torch.set_num_threads(recipe.train.threads)
    return device


def compute_threads(device: torch.device, tuner: ThreadTuner | None) -> int | None:
    """The CPU threads that compute (the most the tuner may use); None off the CPU."""
    if device.type != "cpu":
        return None
    return max(tuner.candidates) if tuner is not None else torch.get_num_threads()


def make_thread_tuner(recipe: Recipe, device: torch.device, world: int) -> ThreadTuner | None:
    """Threads that follow the free cores: CPU, one process, ``train.threads = "auto"``."""
    cfg_train = recipe.train
    if device.type != "cpu" or world > 1 or cfg_train.deterministic or cfg_train.threads != "auto":
        return None
    return ThreadTuner(torch.get_num_threads())


def training_classes(recipe: Recipe, train_list: TrainList) -> int:
    """The classes the loss sees: the list's speakers, three times them under speed speakers."""
    return train_list.num_classes * (len(SPEAKER_SPEEDS) if recipe.augment.speed_speakers else 1)


def build_loss(recipe: Recipe, model: nn.Module, train_list: TrainList) -> nn.Module:
    """The recipe's loss, after checking that the list and batch layout suit it."""
    assert recipe.loss is not None  # checked by read_data
    cfg_train = recipe.train
    loss_cls = registry.get_class("loss", recipe.loss.name)
    if cfg_train.nPerSpeaker < loss_cls.min_per_speaker:
        raise XvecError(
            f"loss '{recipe.loss.name}' needs train.nPerSpeaker >= {loss_cls.min_per_speaker} "
            f"(utterances per speaker in a batch row), the recipe has {cfg_train.nPerSpeaker}; "
            f"set --set train.nPerSpeaker={loss_cls.min_per_speaker}"
        )
    if not loss_cls.distinct_speakers and train_list.num_classes < 2:
        raise XvecError(
            f"{recipe.data.train_list}: loss '{recipe.loss.name}' classifies speakers but the list "
            "has 1 speaker; a classification loss needs at least 2"
        )
    _check_per_speaker(train_list.labels, cfg_train, str(recipe.data.train_list))
    classes = training_classes(recipe, train_list)
    check_sampler(
        classes,
        cfg_train.batch_size,
        cfg_train.nPerSpeaker,
        loss_cls.distinct_speakers,
        recipe.loss.name,
    )
    loss = registry.build(
        "loss",
        recipe.loss.name,
        recipe.loss.params,
        embedding_dim=model.embedding_dim,
        num_classes=classes,
    )
    if recipe.loss.margin_ramp is not None and not has_margin(loss):
        raise XvecError(
            f"loss '{recipe.loss.name}' has no settable margin, so [loss.margin_ramp] cannot "
            "drive it; remove the ramp or use a margin loss (amsoftmax, aamsoftmax)"
        )
    return loss


def add_spec_augment(recipe: Recipe, model: nn.Module) -> None:
    """Mask the model's features in training mode as ``[augment.spec_augment]`` says.

    The features are the output of the model's one front-end module that names its mel-band
    axis (``band_axis``: xvec's ``LogFbank``, ``KaldiFbankCMN`` and WeSpeaker front end; a
    plugin's front end may declare it too); a forward hook replaces that output with a masked
    copy while the module trains, so evaluation, checkpoints and averaging see the plain model.
    """
    config = recipe.augment.spec_augment
    if config is None:
        return
    front_ends = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(getattr(type(module), "band_axis", None), int)
    ]
    if len(front_ends) != 1:
        found = ", ".join(name for name, _ in front_ends) or "none"
        raise XvecError(
            f"augment.spec_augment: model {recipe.model.name} needs exactly one front end that "
            f"names its band axis, found {found}; remove augment.spec_augment for this model"
        )
    _, front_end = front_ends[0]
    band_axis = type(front_end).band_axis  # type: ignore[attr-defined]

    def mask(module: nn.Module, inputs: Any, features: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        return spec_augment(
            features,
            band_axis,
            config.probability,
            config.time_masks,
            config.max_frames,
            config.band_masks,
            config.max_bands,
        )

    front_end.register_forward_hook(mask)


def build_loader(
    recipe: Recipe,
    train_list: TrainList,
    loss: nn.Module,
    rank: int,
    world: int,
    device: torch.device,
) -> tuple[EpochBatches, Any]:
    """The epoch sampler and a DataLoader whose workers persist across epochs."""
    cfg_train, cfg_data, cfg_augment = recipe.train, recipe.data, recipe.augment
    batches = EpochBatches(
        train_list.labels,
        cfg_train.batch_size,
        cfg_train.nPerSpeaker,
        cfg_train.max_seg_per_spk,
        distinct_speakers=type(loss).distinct_speakers,
        seed=cfg_train.seed,
        rank=rank,
        world_size=world,
    )
    augmenter = None
    speed_kind = cfg_augment.speed_perturb is True
    if cfg_augment.musan_path or cfg_augment.rir_path or speed_kind:
        augmenter = Augmenter(
            musan_path=cfg_augment.musan_path,
            rir_path=cfg_augment.rir_path,
            speed_perturb=speed_kind,
            probability=cfg_augment.probability,
        )
    dataset = TrainDataset(
        cfg_data.train_path,
        train_list,
        cfg_data.max_frames,
        cfg_train.seed,
        augmenter,
        decode_cache=cfg_data.decode_cache,
        speed_speakers=cfg_augment.speed_speakers,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,
        num_workers=cfg_train.num_workers,
        persistent_workers=cfg_train.num_workers > 0,
        prefetch_factor=2 if cfg_train.num_workers > 0 else None,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_nice_setter(loader_niceness(cfg_train.loader_nice, device)),
    )
    return batches, loader


CPU_LOADER_NICE = 19  # measured best of 0 / 10 / 19 (docs/benchmarks.md, "Loader priority")


def loader_niceness(mode: int | str, device: torch.device) -> int:
    """The niceness ``train.loader_nice`` adds to the loader workers on ``device``.

    ``"auto"``: :data:`CPU_LOADER_NICE` when training on the CPU, where the workers share the
    cores with the intra-op threads, and a worker that preempts one of them mid-kernel makes
    the other wait at the kernel's barrier; at low priority the workers decode in the gaps
    instead (a loader that falls behind still gets the cores: the trainer then waits for it).
    0 on CUDA, where the convolutions run on the GPU, not on the cores the workers use.
    """
    if mode == "auto":
        return CPU_LOADER_NICE if device.type == "cpu" else 0
    return int(mode)


def _worker_nice_setter(niceness: int) -> functools.partial[None] | None:
    """A DataLoader ``worker_init_fn`` adding ``niceness`` (None when 0 or not POSIX)."""
    if niceness == 0 or not hasattr(os, "nice"):
        return None
    return functools.partial(_lower_priority, niceness)


def _lower_priority(niceness: int, worker_id: int) -> None:
    """Run this loader worker ``niceness`` steps below its parent (capped at 19 by Linux)."""
    os.nice(niceness)


def _check_per_speaker(labels: Any, cfg_train: Any, source: str) -> None:
    """Fail early when no speaker has ``nPerSpeaker`` utterances (rows would repeat them)."""
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


def unwrapped(loader: Any) -> Iterator[Any]:
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
