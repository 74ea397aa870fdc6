"""xvec against voxceleb_trainer (VT), side by side on the same data, model and settings.

Rows: training utterances/s (ResNetSE34L + SAP, 40 log-mels, AM-softmax, batch 100, 2 s crops
= VT max_frames 200, nPerSpeaker 1, fp32, CPU, the same number of loader workers, a fixed
number of steps timed after a warm-up), whole-file embedding files/s (VT eval_frames 0, xvec
``--length-tolerance 0``), 10-crop embedding files/s (VT eval_frames 400, num_eval 10; xvec
``--protocol vt-crops``) and 10-crop scoring trials/s on the real dev_trials.txt list (random
crop embeddings: speed does not depend on the values). Each measurement is its own subprocess,
interleaved xvec, VT, xvec, VT...; the table gives per-side ranges over rounds, peak resident
memory (process tree, loader workers included) and the per-round ratio xvec/VT.

xvec runs what users run: ``xvec train RECIPE --set train.max_steps=...`` (rate from its
log.jsonl) and ``xvec eval`` (files/s from result.json); scoring calls
``xvec.scoring.vt_crop_scores`` as ``xvec eval --protocol vt-crops`` does. VT runs its own code,
imported from ``--vt`` by bench/_vt_side.py. ``--decode-cache`` adds a row: xvec training with
its decode cache (``data.decode_cache``, filled before the rounds).

Numbers are only meaningful on a quiet machine; on a shared one quote the ratios of
interleaved rounds and say the machine was busy.

    python bench/vs_voxceleb_trainer.py --vt /path/to/voxceleb_trainer \\
        --vt-python /path/with/torchaudio/bin/python --data ../shared/data/speechocean762 \\
        [--rounds 2] [--train-steps 30] [--files 200] [--what train,embed,crops,score] \\
        [--decode-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _proctree import run_measured

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
DATA = ROOT.parent / "shared" / "data" / "speechocean762"
RECIPE = ROOT / "recipes" / "resnet34l_amsoftmax.toml"
ROWS = {
    "train": "train utt/s",
    "train-cache": "train utt/s, xvec decode cache",
    "embed": "whole-file embed files/s",
    "crops": "10-crop embed files/s",
    "score": "10-crop scoring trials/s",
}


def _measured(command: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
    """Run ``command`` with its output in ``log``; wall seconds and peak RSS (MiB)."""
    with log.open("w") as handle:
        try:
            return run_measured(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        except SystemExit as exc:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise SystemExit(f"{exc}\n--- last lines of {log}:\n{tail}") from None


def _json_line(log: Path) -> dict:
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


class Sides:
    """The commands of both sides for one work folder, and how each rate is read back."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.runs = 0
        self.trials, self.files = self._subset()
        self.model = work / "untrained.safetensors"
        self.cache = work / "decode_cache"

    def _subset(self) -> tuple[Path, Path]:
        """The first trials covering ``--files`` files, as a trial list and a file list."""
        lines = (self.args.data / "lists" / "dev_trials.txt").read_text().splitlines()
        kept, files = [], {}
        for line in lines:
            fields = line.split()
            if len(fields) != 3:
                continue
            if self.args.files and len({**files, fields[1]: 0, fields[2]: 0}) > self.args.files:
                break
            kept.append(line)
            files.update({fields[1]: 0, fields[2]: 0})
        trials, file_list = self.work / "trials.txt", self.work / "files.txt"
        trials.write_text("\n".join(kept) + "\n")
        file_list.write_text("\n".join(sorted(files)) + "\n")
        return trials, file_list

    def prepare(self, whats: list[str]) -> None:
        from xvec import registry
        from xvec.checkpoint import save_checkpoint

        save_checkpoint(self.model, registry.build("model", "ResNetSE34L", {}), "ResNetSE34L")
        if "train-cache" in whats:
            from xvec.audio import DecodeCache, audio_info

            cache, audio = DecodeCache(self.cache), self.args.data / "audio"
            start = time.perf_counter()
            list_file = self.args.data / "lists" / "train_list.txt"
            names = [line.split()[1] for line in list_file.read_text().splitlines() if line]
            for name in names:
                cache.signal(audio / name, audio_info(audio / name))
            seconds = time.perf_counter() - start
            print(f"decode cache filled: {len(names)} files in {seconds:.1f} s (one process)")

    def _next(self, name: str) -> Path:
        self.runs += 1
        return self.work / f"{self.runs:03d}_{name}"

    def xvec(self, what: str) -> tuple[float, float]:
        """(rate, peak tree RSS MiB) of one xvec measurement."""
        args = self.args
        folder = self._next(f"xvec_{what}")
        folder.mkdir()
        log = folder / "output.txt"
        if what in ("train", "train-cache"):
            return self._xvec_train(folder, log, cached=what == "train-cache")
        if what == "score":
            command = [sys.executable, __file__, "--side", "xvec-score", "--data", str(args.data)]
            measured = _measured(command, log)
            return _json_line(log)["rate"], measured["tree_mib"]
        command = [
            sys.executable, "-m", "xvec", "eval", "--model", str(self.model),
            "--trials", str(self.trials), "--audio-root", str(args.data / "audio"),
            "--device", "cpu", "-o", str(folder / "eval"),
        ]  # fmt: skip
        if what == "embed":
            command += ["--protocol", "full", "--length-tolerance", "0"]
        else:
            command += ["--protocol", "vt-crops", "--eval-frames", "400", "--num-eval", "10"]
        measured = _measured(command, log)
        result = json.loads(next((folder / "eval").glob("**/result.json")).read_text())
        return result["files_per_second"], measured["tree_mib"]

    def _xvec_train(self, folder: Path, log: Path, cached: bool) -> tuple[float, float]:
        args = self.args
        run = folder / "run"
        overrides = [
            f"data.train_list={args.data / 'lists' / 'train_list.txt'}",
            f"data.train_path={args.data / 'audio'}",
            "data.test_list=",
            f"data.max_frames={args.max_frames}",
            f"train.batch_size={args.batch_size}",
            "train.nPerSpeaker=1",
            "train.mixed_precision=false",
            "train.device=cpu",
            f"train.num_workers={args.workers}",
            f"train.max_steps={args.warmup + args.train_steps}",
            f"train.output_dir={run}",
            "train.log_every=1",
        ]
        if cached:
            overrides.append(f"data.decode_cache={self.cache}")
        command = [sys.executable, "-m", "xvec", "train", str(RECIPE)]
        for item in overrides:
            command += ["--set", item]
        measured = _measured(command, log)
        records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        times = {r["step"]: r["time"] for r in records if r["kind"] == "train"}
        last = max(times)
        seconds = times[last] - times[args.warmup]
        return (last - args.warmup) * args.batch_size / seconds, measured["tree_mib"]

    def vt(self, what: str) -> tuple[float, float]:
        """(rate, peak tree RSS MiB) of one voxceleb_trainer measurement."""
        args = self.args
        folder = self._next(f"vt_{what}")
        folder.mkdir()
        log = folder / "output.txt"
        command = [
            str(args.vt_python), str(BENCH / "_vt_side.py"),
            {"embed": "embed", "crops": "embed"}.get(what, what),
            "--vt", str(args.vt), "--data", str(args.data), "--workers", str(args.workers),
            "--batch-size", str(args.batch_size), "--max-frames", str(args.max_frames),
            "--steps", str(args.train_steps), "--warmup", str(args.warmup),
            "--files-list", str(self.files), "--eval-frames", "400" if what == "crops" else "0",
        ]  # fmt: skip
        measured = _measured(command, log)
        return _json_line(log)["rate"], measured["tree_mib"]


def _xvec_score(data: Path) -> None:
    """The xvec side of the scoring row: vt_crop_scores on the whole real trial list."""
    import numpy as np

    from xvec.data import read_trials
    from xvec.scoring import vt_crop_scores

    trials = read_trials(data / "lists" / "dev_trials.txt")
    crops = np.random.default_rng(0).standard_normal((len(trials.files), 10, 512))
    crops = crops.astype(np.float32)
    start = time.perf_counter()
    vt_crop_scores(crops, trials.enroll, trials.test)
    seconds = time.perf_counter() - start
    print(json.dumps({"rate": len(trials) / seconds, "seconds": seconds, "trials": len(trials)}))


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    fmt = "{:,.0f}" if high >= 1000 else "{:.1f}" if high >= 10 else "{:.2f}"
    return fmt.format(low) if len(values) == 1 else f"{fmt.format(low)}-{fmt.format(high)}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vt", type=Path, help="voxceleb_trainer checkout")
    parser.add_argument("--vt-python", type=Path, help="a python with torch + torchaudio")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=30, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--files", type=int, default=0, help="embed only N files (0: all)")
    parser.add_argument("--what", default="train,embed,crops,score")
    parser.add_argument("--decode-cache", action="store_true", help="add the cached xvec row")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--max-frames", type=int, default=200)
    parser.add_argument("--side", choices=["xvec-score"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data = args.data.resolve()
    if args.side == "xvec-score":
        return _xvec_score(args.data)
    if args.vt is None or args.vt_python is None:
        parser.error("--vt and --vt-python are required")
    whats = [w.strip() for w in args.what.split(",") if w.strip()]
    unknown = sorted(set(whats) - set(ROWS))
    if unknown:
        parser.error(f"--what: unknown {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if args.decode_cache and "train-cache" not in whats:
        whats.insert(whats.index("train") + 1 if "train" in whats else 0, "train-cache")
    if not (args.data / "lists" / "dev_trials.txt").is_file():
        raise SystemExit(f"{args.data}: expected lists/dev_trials.txt and lists/train_list.txt")
    results: dict[str, dict[str, list[tuple[float, float]]]] = {
        w: {"xvec": [], "vt": []} for w in whats
    }
    with tempfile.TemporaryDirectory(prefix="xvec_vs_vt_") as tmp:
        sides = Sides(args, Path(tmp))
        sides.prepare(whats)
        for round_index in range(args.rounds):
            for what in whats:
                runners = [("xvec", sides.xvec)]
                if what != "train-cache":  # VT has no cache: its numbers are in the train row
                    runners.append(("vt", sides.vt))
                for side, runner in runners:
                    rate, rss = runner(what)
                    results[what][side].append((rate, rss))
                    line = f"round {round_index + 1} {what:11s} {side:4s} {rate:10.2f}"
                    print(f"{line}  {rss:6.0f} MiB", flush=True)
        files = len(sides.files.read_text().split())
    print(
        f"\n{args.rounds} interleaved round(s), {args.workers} loader workers, batch "
        f"{args.batch_size}, {args.train_steps} timed steps after {args.warmup}, {files} files"
        f" embedded, {os.cpu_count()} CPUs (load average now {os.getloadavg()[0]:.1f})"
    )
    header = f"{'row':32s} {'xvec':>14s} {'VT':>14s} {'xvec/VT':>11s} {'RSS MiB xvec/VT':>17s}"
    print(header + "\n" + "-" * len(header))
    vt_of = {"train-cache": "train"}
    for what in whats:
        mine, theirs = results[what]["xvec"], results[vt_of.get(what, what)]["vt"]
        ratios = [m[0] / t[0] for m, t in zip(mine, theirs, strict=False)]
        rss = f"{max(m[1] for m in mine):.0f}/{max(t[1] for t in theirs):.0f}" if theirs else ""
        print(
            f"{ROWS[what]:32s} {_span([m[0] for m in mine]):>14s} "
            f"{_span([t[0] for t in theirs]) if theirs else '-':>14s} "
            f"{_span(ratios) + 'x' if ratios else '-':>11s} {rss:>17s}"
        )


if __name__ == "__main__":
    main()
