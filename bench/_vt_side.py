"""voxceleb_trainer's side of bench/vs_voxceleb_trainer.py and bench/gpu.sh: times VT's code.

Run with an interpreter that has torchaudio (VT's front end needs it); VT is imported from the
``--vt`` checkout, nothing of it is copied here. VT's ``ModelTrainer`` hard-codes a CUDA device,
so its ``train_network`` and ``evaluateFromList`` loop bodies are driven here step for step:
the same loader (re-forked every epoch), sampler, model, loss and Adam optimizer VT builds, on
the CPU (fp32 branch) or with ``--device cuda`` (``--mixedprec``: VT's fp16 autocast branch).
Training runs whole epochs: one untimed, then ``--epochs`` timed. scipy and tqdm, which VT
imports for augmentation and progress bars only, are replaced by empty modules when missing.
Prints one JSON object: the measured rate and what it counted.
"""

from __future__ import annotations

import argparse
import functools
import importlib.machinery
import itertools
import json
import os
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path


def _stub_missing() -> None:
    """Empty ``scipy.signal`` / ``tqdm`` when absent: VT imports them at module level."""

    def empty(name: str) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch looks for specs
        sys.modules[name] = module
        return module

    try:
        import scipy.signal  # noqa: F401
    except ImportError:
        empty("scipy").signal = empty("scipy.signal")  # type: ignore[attr-defined]
    try:
        import tqdm  # noqa: F401
    except ImportError:
        empty("tqdm").tqdm = lambda iterable=None, **_: iterable  # type: ignore[attr-defined]


def _speaker_net(vt_args: dict):
    from SpeakerNet import SpeakerNet, WrappedModel

    return WrappedModel(SpeakerNet(**vt_args))


def _vt_args(num_classes: int) -> dict:
    """configs/ResNetSE34L_AM.yaml with nPerSpeaker 1, as trainSpeakerNet passes them."""
    return {
        "model": "ResNetSE34L",
        "optimizer": "adam",
        "trainfunc": "amsoftmax",
        "nPerSpeaker": 1,
        "nOut": 512,
        "encoder_type": "SAP",
        "n_mels": 40,
        "log_input": True,
        "nClasses": num_classes,
        "margin": 0.3,
        "scale": 30,
    }


def _nicer_worker(niceness: int, init: Callable[[int], None], worker_id: int) -> None:
    """VT's worker_init_fn in a worker ``niceness`` steps below its parent (``--worker-nice``:
    xvec's CPU loader priority given to VT, for the bench's control row)."""
    os.nice(niceness)
    init(worker_id)


def train(args: argparse.Namespace) -> dict:
    import torch
    from DatasetLoader import train_dataset_loader, train_dataset_sampler, worker_init_fn

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    train_list = Path(args.train_list)
    speakers = {line.split()[0] for line in train_list.read_text().splitlines() if line.strip()}
    net = _speaker_net(_vt_args(len(speakers))).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.001, weight_decay=0)
    scaler = torch.amp.GradScaler("cuda") if args.mixedprec else None
    with tempfile.TemporaryDirectory() as empty:  # no augmentation: empty MUSAN / RIR folders
        dataset = train_dataset_loader(
            train_list=str(train_list),
            augment=False,
            musan_path=empty,
            rir_path=empty,
            max_frames=args.max_frames,
            train_path=str(args.train_path),
        )
    sampler = train_dataset_sampler(
        dataset, nPerSpeaker=1, max_seg_per_spk=500, batch_size=args.batch_size,
        distributed=False, seed=10,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        num_workers=args.workers,
        sampler=sampler,
        pin_memory=False,
        worker_init_fn=(
            functools.partial(_nicer_worker, args.worker_nice, worker_init_fn)
            if args.worker_nice
            else worker_init_fn
        ),
        drop_last=True,
    )  # as trainSpeakerNet.py builds it (workers are forked again every epoch)
    net.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps, start = 0, None
    for epoch in range(1, args.epochs + 2):
        sampler.set_epoch(epoch)
        for data, data_label in loader:  # train_network's loop body
            data = data.transpose(1, 0)
            net.zero_grad()
            label = torch.LongTensor(data_label).to(device)
            if scaler is not None:
                with torch.amp.autocast("cuda"):
                    nloss, prec1 = net(data, label)
                scaler.scale(nloss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                nloss, prec1 = net(data, label)
                nloss.backward()
                optimizer.step()
            nloss.detach().cpu().item(), prec1.detach().cpu().item()
            steps += start is not None
        if start is None:
            start = time.perf_counter()  # the end of the warm-up epoch
    seconds = time.perf_counter() - start
    result = {"rate": steps * args.batch_size / seconds, "seconds": seconds, "steps": steps}
    if device.type == "cuda":
        result["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def embed(args: argparse.Namespace) -> dict:
    """evaluateFromList's extraction loop: one file per batch, ``num_eval`` crops or whole."""
    import torch
    from DatasetLoader import test_dataset_loader

    files = Path(args.files_list).read_text().split()
    net = _speaker_net(_vt_args(2))
    net.eval()
    dataset = test_dataset_loader(
        files, str(args.audio_root), eval_frames=args.eval_frames, num_eval=10
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, shuffle=False, num_workers=args.workers, drop_last=False
    )
    feats = {}
    start = time.perf_counter()
    for data in loader:
        with torch.no_grad():
            feats[data[1][0]] = net(data[0][0]).detach().cpu()
    seconds = time.perf_counter() - start
    return {"rate": len(files) / seconds, "seconds": seconds, "files": len(files)}


def score(args: argparse.Namespace) -> dict:
    """evaluateFromList's scoring loop on random ``[10, 512]`` crop embeddings per file."""
    import numpy
    import torch
    import torch.nn.functional as F

    lines = Path(args.trials).read_text().splitlines()
    files = sorted(set(itertools.chain(*[x.strip().split()[-2:] for x in lines])))
    generator = torch.Generator().manual_seed(0)
    feats = {name: torch.randn(10, 512, generator=generator) for name in files}
    num_eval = 10
    start = time.perf_counter()
    all_scores = []
    for line in lines:
        data = line.split()
        ref_feat, com_feat = feats[data[1]], feats[data[2]]
        ref_feat = F.normalize(ref_feat, p=2, dim=1)  # amsoftmax: test_normalize is True
        com_feat = F.normalize(com_feat, p=2, dim=1)
        dist = torch.cdist(ref_feat.reshape(num_eval, -1), com_feat.reshape(num_eval, -1))
        all_scores.append(-1 * numpy.mean(dist.detach().cpu().numpy()))
    seconds = time.perf_counter() - start
    return {"rate": len(lines) / seconds, "seconds": seconds, "trials": len(lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["train", "embed", "score"])
    parser.add_argument("--vt", required=True, type=Path)
    parser.add_argument("--train-list", type=Path, help="train: 'SPEAKER path' lines")
    parser.add_argument("--train-path", type=Path, help="train: the folder paths start from")
    parser.add_argument("--files-list", type=Path, help="embed: one path a line")
    parser.add_argument("--audio-root", type=Path, help="embed: the folder paths start from")
    parser.add_argument("--trials", type=Path, help="score: a 'LABEL enroll test' list")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="train: intra-op (0: torch's)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--max-frames", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2, help="train: timed after one")
    parser.add_argument("--eval-frames", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mixedprec", action="store_true", help="train: VT's fp16 autocast")
    parser.add_argument("--worker-nice", type=int, default=0, help="train: loader niceness")
    args = parser.parse_args()
    _stub_missing()
    sys.path.insert(0, str(args.vt.resolve()))  # VT imports its packages by top-level name
    result = {"train": train, "embed": embed, "score": score}[args.what](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
