"""voxceleb_trainer's side of bench/vs_voxceleb_trainer.py: times VT's own code on the CPU.

Run with an interpreter that has torchaudio (VT's front end needs it); VT is imported from the
``--vt`` checkout, nothing of it is copied here. VT's ``ModelTrainer`` hard-codes a CUDA device,
so its ``train_network`` and ``evaluateFromList`` loop bodies are driven here on the CPU, step
for step (fp32 branch): the same loader, sampler, model, loss and Adam optimizer VT builds.
Prints one JSON object: the measured rate and what it counted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path


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


def train(args: argparse.Namespace) -> dict:
    import torch
    from DatasetLoader import train_dataset_loader, train_dataset_sampler, worker_init_fn

    train_list = Path(args.data) / "lists" / "train_list.txt"
    speakers = {line.split()[0] for line in train_list.read_text().splitlines() if line.strip()}
    net = _speaker_net(_vt_args(len(speakers)))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.001, weight_decay=0)
    with tempfile.TemporaryDirectory() as empty:  # no augmentation: empty MUSAN / RIR folders
        dataset = train_dataset_loader(
            train_list=str(train_list),
            augment=False,
            musan_path=empty,
            rir_path=empty,
            max_frames=args.max_frames,
            train_path=str(Path(args.data) / "audio"),
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
        worker_init_fn=worker_init_fn,
        drop_last=True,
    )  # as trainSpeakerNet.py builds it (workers are forked again every epoch)
    net.train()
    step, start, total = 0, None, args.warmup + args.steps
    for epoch in itertools.count(1):
        sampler.set_epoch(epoch)
        for data, data_label in loader:  # train_network's loop body, on the CPU, fp32
            data = data.transpose(1, 0)
            net.zero_grad()
            label = torch.LongTensor(data_label)
            nloss, prec1 = net(data, label)
            nloss.backward()
            optimizer.step()
            nloss.detach().cpu().item(), prec1.detach().cpu().item()
            step += 1
            if step == args.warmup:
                start = time.perf_counter()
            if step == total:
                seconds = time.perf_counter() - start
                return {"rate": args.steps * args.batch_size / seconds, "seconds": seconds}


def embed(args: argparse.Namespace) -> dict:
    """evaluateFromList's extraction loop: one file per batch, ``num_eval`` crops or whole."""
    import torch
    from DatasetLoader import test_dataset_loader

    files = Path(args.files_list).read_text().split()
    net = _speaker_net(_vt_args(2))
    net.eval()
    dataset = test_dataset_loader(
        files, str(Path(args.data) / "audio"), eval_frames=args.eval_frames, num_eval=10
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

    trials = Path(args.data) / "lists" / "dev_trials.txt"
    lines = trials.read_text().splitlines()
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
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--max-frames", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--eval-frames", type=int, default=0)
    parser.add_argument("--files-list", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(args.vt.resolve()))  # VT imports its packages by top-level name
    result = {"train": train, "embed": embed, "score": score}[args.what](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
