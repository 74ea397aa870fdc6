"""The measurements bench/gpu.sh runs, one per process; each prints one JSON line.

- ``train``: ``xvec.training.loop.train`` in this process (what ``xvec train`` calls) on a
  recipe with ``--set`` overrides, whole epochs: one untimed, ``--epochs`` timed, the rate read
  from the run's log.jsonl (end of epoch 1 to end of the last epoch), and the peak GPU memory
  (``torch.cuda.max_memory_allocated``).
- ``embed``: ``xvec embed``'s workflow (``run_embed``) on a trial list's files: files/s over
  the extraction, and the peak GPU memory.
- ``ddp``: under ``torchrun --nproc_per_node 1``: the process group (nccl on CUDA, gloo on the
  CPU), an all-reduce, then xvec's ``SpeakerNet`` (ResNetSE34L + AM-softmax) trained on
  device-resident random 2 s crops, ``--steps`` steps plain and as many wrapped in
  ``DistributedDataParallel``: utt/s of each (DDP's gradient all-reduce through nccl).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def train(args: argparse.Namespace) -> dict:
    from vs_voxceleb_trainer import xvec_epoch_rate

    from xvec.config import load_recipe
    from xvec.training.loop import train as xvec_train

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="xvec_gpu_train_") as tmp:
        overrides = [
            *args.overrides,
            f"train.device={args.device}",
            f"train.max_epoch={args.epochs + 1}",
            f"train.test_interval={args.epochs + 1}",
            "data.test_list=",
            "train.log_every=1",
            f"train.output_dir={tmp}/run",
        ]
        recipe = load_recipe(args.recipe, overrides)
        _reset_peak(device)
        start = time.perf_counter()
        xvec_train(recipe)
        wall = time.perf_counter() - start
        lines = Path(recipe.data.train_list).read_text().splitlines()
        utterances = sum(1 for line in lines if line.strip())
        rate, steps = xvec_epoch_rate(Path(tmp) / "run" / "log.jsonl", utterances)
    return {"rate": rate, "steps": steps, "wall_s": wall, "peak_mib": _peak_mib(device)}


def embed(args: argparse.Namespace) -> dict:
    from xvec import registry
    from xvec.checkpoint import save_checkpoint
    from xvec.protocol import Protocol
    from xvec.workflows.embed import run_embed

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="xvec_gpu_embed_") as tmp:
        model = Path(tmp) / "untrained.safetensors"
        save_checkpoint(model, registry.build("model", "ResNetSE34L", {}), "ResNetSE34L")
        _reset_peak(device)
        done = run_embed(
            model,
            args.audio_root,
            Path(tmp) / "emb.safetensors",
            trials=args.trials,
            protocol=Protocol(args.protocol),
            batch_size=args.batch_size,
            device=args.device,
        )
    stats = done.stats
    return {
        "rate": stats.computed / stats.seconds,
        "files": stats.computed,
        "seconds": stats.seconds,
        "peak_mib": _peak_mib(device),
    }


def ddp(args: argparse.Namespace) -> dict:
    import os

    import torch.distributed as dist
    from torch import nn

    from xvec import registry
    from xvec.training.loop import SpeakerNet

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    probe = torch.ones(1, device=device)
    dist.all_reduce(probe)
    classes, samples = 1000, args.max_frames * 160 + 240
    torch.manual_seed(0)
    model = registry.build("model", "ResNetSE34L", {"nOut": 512})
    loss = registry.build(
        "loss",
        "amsoftmax",
        {"margin": 0.3, "scale": 30},
        embedding_dim=model.embedding_dim,
        num_classes=classes,
    )
    net = SpeakerNet(model, loss).to(device)
    waves = torch.randn(args.batch_size, 1, samples, device=device)
    labels = torch.randint(0, classes, (args.batch_size,), device=device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)

    def run(module: nn.Module) -> float:
        optimizer = torch.optim.Adam(net.parameters(), lr=0.001)
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                value, _ = module(waves, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(value).backward()
            scaler.step(optimizer)
            scaler.update()
            value.item()
        return args.steps * args.batch_size / (time.perf_counter() - start)

    _reset_peak(device)
    plain = run(net)
    wrapped = nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None
    )
    ddp_rate = run(wrapped)
    result = {
        "backend": backend,
        "world": dist.get_world_size(),
        "all_reduce": probe.item(),
        "rate": ddp_rate,
        "plain_rate": plain,
        "peak_mib": _peak_mib(device),
    }
    dist.destroy_process_group()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["train", "embed", "ddp"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--recipe", type=Path)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--epochs", type=int, default=2, help="train: timed after one")
    parser.add_argument("--trials", type=Path)
    parser.add_argument("--audio-root", type=Path)
    parser.add_argument("--protocol", default="full")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-frames", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "fp32"])
    args = parser.parse_args()
    result = {"train": train, "embed": embed, "ddp": ddp}[args.what](args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
