"""xvec against voxceleb_trainer (VT), side by side on the same input files and settings.

Model and settings: ResNetSE34L + SAP, 40 log-mels, AM-softmax, batch 100, 2 s crops (VT
max_frames 200), nPerSpeaker 1, fp32, CPU, the same number of loader workers. Each measurement
is its own subprocess; rounds are interleaved (xvec, VT, xvec, VT...) and every cell of the
table is min/median/max over rounds, the ratio column the per-round ratios xvec/VT.

Rows, all on input files both sides read:

- ``train``: whole epochs (VT re-forks its loader workers every epoch) on a subset list
  (``--per-speaker`` utterances of each training speaker), timed from the end of the first
  (warm-up) epoch to the end of the last; the same intra-op threads on both sides
  (``--threads``, torch's default on this machine) and the same OpenMP wait policy (torch's
  default; xvec training keeps it too). Once on the corpus's Opus files (``train, Opus``) and
  once on a decoded WAV copy the bench writes into its temp folder (``train, WAV``).
  xvec's loader workers run 19 steps nicer than its compute threads on the CPU
  (``train.loader_nice``, its default), VT's at the trainer's priority. Both sides train in
  float32 here: the same work.
- ``train-controls``: two control rows that swap the loader priority on the Opus input: VT
  with its workers at nice 19, xvec with ``train.loader_nice=0``.
- ``train-defaults`` ("xvec defaults vs VT defaults"): xvec as a user would run it on the Opus
  list, ``train.threads = "auto"`` and ``train.mixed_precision`` at its default (bfloat16
  autocast on a CPU with bf16 units, float32 otherwise: the log's ``precision`` says which),
  once on the Opus files themselves (equal input) and once with its decode cache
  (``data.decode_cache``, filled before the rounds, time printed), against the VT Opus numbers
  of the ``train`` row.
- ``embed``: whole-file embedding files/s on ``--files`` dev files (Opus); VT ``eval_frames
  0``, xvec ``xvec eval --length-tolerance 0``.
- ``crops``: 10 crops of 4 s per file on VoxCeleb-length files: the bench concatenates one
  dev speaker's utterances into ``--crop-files`` WAVs of 6-12 s (VoxCeleb averages ~8 s;
  speechocean762's own files are mostly under 4 s, where all 10 crops are the same);
  VT ``eval_frames 400, num_eval 10``, xvec ``--protocol vt-crops``.
- ``score``: 10-crop scoring trials/s on the real dev_trials.txt (random crop embeddings:
  speed does not depend on the values). VT's loop over the list takes about a second; xvec
  scores the whole list in about a tenth of that, so it scores it again (each call the full
  work, the first one cold included) until a second has passed and reports the mean rate, which
  a single 0.1 s call measures too noisily.

xvec's ``eval``/``embed`` make idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``); VT
runs with torch's default (spinning). The embed, crops and score rows therefore give VT twice:
with its defaults, and with xvec's policy (``VT, PASSIVE``). The embed and crops rows also
give xvec with ``--precision bf16`` (bfloat16 autocast: opt-in, not the exact embeddings; the
ratio is against VT's defaults), a feature of xvec's in its own row.

xvec runs what users run (``xvec train RECIPE --set ...``, rate from its log.jsonl;
``xvec eval``, files/s from result.json); scoring calls ``xvec.scoring.vt_crop_scores`` as
``xvec eval --protocol vt-crops`` does. VT runs its own code, imported from ``--vt`` by
bench/_vt_side.py. Give both sides the same torch with ``--xvec-python``.

Numbers are only meaningful on a quiet machine; on a shared one quote the ratios of
interleaved rounds and say the machine was busy (the load average is printed at start and end).
``--load busy:1`` (or ``busy``, ``torch``, ``torch:N``; bench/_load.py) runs every measurement
beside a bounded competing load, started before it and killed after it, the same for both
sides: how each behaves on a shared machine.

    python bench/vs_voxceleb_trainer.py --vt /path/to/voxceleb_trainer \\
        --vt-python /path/with/torchaudio/bin/python [--xvec-python PY] \\
        --data ../shared/data/speechocean762 [--rounds 3] [--epochs 2] [--per-speaker 4] \\
        [--files 200] [--crop-files 60] \\
        [--what train,train-controls,train-defaults,embed,crops,score] \\
        [--load quiet|busy[:N]|torch[:N]]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _load import start_load, stop_load

from _proctree import run_measured

CPU_LOADER_NICE = 19  # xvec.training.inputs.CPU_LOADER_NICE: train.loader_nice "auto" on the CPU

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
DATA = ROOT.parent / "shared" / "data" / "speechocean762"
RECIPE = ROOT / "recipes" / "resnet34l_amsoftmax.toml"
WHATS = ["train", "train-controls", "train-defaults", "embed", "crops", "score"]
SAMPLE_RATE = 16000


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


def _env(policy: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    return env


def train_subset(train_list: Path, per_speaker: int, out: Path) -> tuple[int, int]:
    """Write the first ``per_speaker`` lines of each speaker of ``train_list`` (all when 0) to
    ``out``, in the list's order; (utterances, speakers) written."""
    kept: list[str] = []
    seen: dict[str, int] = defaultdict(int)
    for line in train_list.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and (per_speaker <= 0 or seen[fields[0]] < per_speaker):
            seen[fields[0]] += 1
            kept.append(line)
    out.write_text("\n".join(kept) + "\n")
    return len(kept), len(seen)


def xvec_epoch_rate(log_jsonl: Path, utterances_per_epoch: int) -> tuple[float, int]:
    """(utt/s from the end of epoch 1 to the end of the last epoch, steps timed).

    xvec's amsoftmax epochs hold every listed utterance once (its last batch may be short);
    ``utterances_per_epoch`` is the list's length.
    """
    records = [json.loads(line) for line in log_jsonl.read_text().splitlines() if line]
    ends = {r["epoch"]: r for r in records if r.get("kind") == "epoch"}
    first, last = ends[min(ends)], ends[max(ends)]
    epochs = last["epoch"] - first["epoch"]
    seconds = last["time"] - first["time"]
    return epochs * utterances_per_epoch / seconds, last["step"] - first["step"]


class Sides:
    """The inputs both sides read, their commands, and how each rate is read back."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.runs = 0
        self.model = work / "untrained.safetensors"
        self.cache = work / "decode_cache"
        self.audio = args.data / "audio"
        self.wav_root = work / "wav"
        self.long_root = work / "long"

    # ---- inputs -------------------------------------------------------------------------
    def prepare(self, whats: list[str]) -> None:
        from xvec import registry
        from xvec.checkpoint import save_checkpoint

        save_checkpoint(self.model, registry.build("model", "ResNetSE34L", {}), "ResNetSE34L")
        self.train_opus = self._train_subset()
        if "train" in whats:
            self.train_wav = self._wav_copy(self.train_opus)
        if "train-defaults" in whats:
            self._fill_cache(self.train_opus)
        self.trials, self.files = self._dev_subset()
        if "crops" in whats:
            self.long_trials = self._long_files()

    def _train_subset(self) -> Path:
        out = self.work / "train_opus.txt"
        utterances, speakers = train_subset(
            self.args.data / "lists" / "train_list.txt", self.args.per_speaker, out
        )
        print(f"training subset: {utterances} utterances, {speakers} speakers")
        return out

    def _wav_copy(self, list_file: Path) -> Path:
        """Decode every listed file to 16-bit WAV under the temp folder; the list for it."""
        import soundfile

        from xvec.audio import read_audio

        start, out_lines = time.perf_counter(), []
        for line in list_file.read_text().splitlines():
            speaker, name = line.split()
            target = self.wav_root / Path(name).with_suffix(".wav")
            target.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(target, read_audio(self.audio / name), SAMPLE_RATE, "PCM_16")
            out_lines.append(f"{speaker} {target.relative_to(self.wav_root)}")
        out = self.work / "train_wav.txt"
        out.write_text("\n".join(out_lines) + "\n")
        print(f"WAV copy: {len(out_lines)} files in {time.perf_counter() - start:.1f} s")
        return out

    def _fill_cache(self, list_file: Path) -> None:
        from xvec.audio import DecodeCache, audio_info

        cache, start = DecodeCache(self.cache), time.perf_counter()
        names = [line.split()[1] for line in list_file.read_text().splitlines() if line]
        for name in names:
            cache.signal(self.audio / name, audio_info(self.audio / name))
        seconds = time.perf_counter() - start
        print(f"decode cache filled: {len(names)} files in {seconds:.1f} s (one process)")

    def _dev_subset(self) -> tuple[Path, Path]:
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

    def _long_files(self) -> Path:
        """``--crop-files`` WAVs of 6-12 s, each one dev speaker's utterances end to end."""
        import numpy as np
        import soundfile

        from xvec.audio import read_audio

        lines = (self.args.data / "lists" / "dev_trials.txt").read_text().splitlines()
        by_speaker: dict[str, list[str]] = defaultdict(list)
        for name in sorted({f for line in lines for f in line.split()[1:3]}):
            by_speaker[name.split("/")[0]].append(name)
        rng, made, seconds = random.Random(0), [], []
        queues = {s: list(names) for s, names in sorted(by_speaker.items())}
        while len(made) < self.args.crop_files and any(queues.values()):
            for speaker, queue in queues.items():
                for _ in range(2):  # two files a speaker: target trials need pairs
                    if len(made) >= self.args.crop_files or not queue:
                        break
                    target, parts = int(rng.uniform(6.0, 12.0) * SAMPLE_RATE), []
                    while queue and sum(map(len, parts)) < target:
                        parts.append(read_audio(self.audio / queue.pop(0)))
                    signal = np.concatenate(parts)[:target]
                    if len(signal) < 6 * SAMPLE_RATE:
                        break
                    name = f"{speaker}/long{len(made):04d}.wav"
                    (self.long_root / speaker).mkdir(parents=True, exist_ok=True)
                    soundfile.write(self.long_root / name, signal, SAMPLE_RATE, "PCM_16")
                    made.append(name)
                    seconds.append(len(signal) / SAMPLE_RATE)
        trials = []
        for i, name in enumerate(made):
            for other in made[i + 1 : i + 3]:
                same = other.split("/")[0] == name.split("/")[0]
                trials.append(f"{int(same)} {name} {other}")
        out = self.work / "long_trials.txt"
        out.write_text("\n".join(trials) + "\n")
        (self.work / "long_files.txt").write_text("\n".join(made) + "\n")
        print(
            f"VoxCeleb-length files: {len(made)} of {min(seconds):.1f}-{max(seconds):.1f} s "
            f"(mean {statistics.mean(seconds):.1f} s)"
        )
        return out

    # ---- runs ---------------------------------------------------------------------------
    def _next(self, name: str) -> tuple[Path, Path]:
        self.runs += 1
        folder = self.work / f"{self.runs:03d}_{name}"
        folder.mkdir()
        return folder, folder / "output.txt"

    def xvec(self, what: str, variant: str) -> tuple[float, float]:
        """(rate, peak tree RSS MiB) of one xvec measurement."""
        args = self.args
        folder, log = self._next(f"xvec_{what}_{variant}")
        if what == "train":
            return self._xvec_train(folder, log, variant)
        if what == "score":
            command = [str(args.xvec_python), __file__, "--side", "xvec-score"]
            measured = _measured([*command, "--data", str(args.data)], log)
            return _json_line(log)["rate"], measured["tree_mib"]
        trials, root = (
            (self.long_trials, self.long_root) if what == "crops" else (self.trials, self.audio)
        )
        command = [
            str(args.xvec_python), "-m", "xvec", "eval", "--model", str(self.model),
            "--trials", str(trials), "--audio-root", str(root), "--device", "cpu",
            "-o", str(folder / "eval"),
        ]  # fmt: skip
        if what == "embed":
            command += ["--protocol", "full", "--length-tolerance", "0"]
        else:
            command += ["--protocol", "vt-crops", "--eval-frames", "400", "--num-eval", "10"]
        if variant == "bf16":  # opt-in: bfloat16 autocast, not the exact embeddings
            command += ["--precision", "bf16"]
        measured = _measured(command, log, env=_env(None))  # xvec sets its own policy
        result = json.loads(next((folder / "eval").glob("**/result.json")).read_text())
        return result["files_per_second"], measured["tree_mib"]

    def _xvec_train(self, folder: Path, log: Path, variant: str) -> tuple[float, float]:
        args = self.args
        run = folder / "run"
        wav = variant == "wav"
        overrides = [
            f"data.train_list={self.train_wav if wav else self.train_opus}",
            f"data.train_path={self.wav_root if wav else self.audio}",
            "data.test_list=",
            f"data.max_frames={args.max_frames}",
            f"train.batch_size={args.batch_size}",
            "train.nPerSpeaker=1",
            "train.device=cpu",
            f"train.num_workers={args.workers}",
            f"train.max_epoch={args.epochs + 1}",
            f"train.test_interval={args.epochs + 1}",
            f"train.output_dir={run}",
            "train.log_every=1",
        ]
        if variant == "nice0":
            overrides.append("train.loader_nice=0")
        if variant == "defaults":
            overrides.append(f"data.decode_cache={self.cache}")
        if not variant.startswith("defaults"):
            overrides += ["train.mixed_precision=false", f"train.threads={args.threads}"]
        command = [str(args.xvec_python), "-m", "xvec", "train", str(RECIPE)]
        for item in overrides:
            command += ["--set", item]
        measured = _measured(command, log, env=_env(None))
        utterances = len((self.train_wav if wav else self.train_opus).read_text().split("\n")) - 1
        rate, _ = xvec_epoch_rate(run / "log.jsonl", utterances)
        return rate, measured["tree_mib"]

    def vt(self, what: str, variant: str) -> tuple[float, float]:
        """(rate, peak tree RSS MiB) of one voxceleb_trainer measurement."""
        args = self.args
        _, log = self._next(f"vt_{what}_{variant}")
        command = [
            str(args.vt_python), str(BENCH / "_vt_side.py"),
            {"crops": "embed"}.get(what, what), "--vt", str(args.vt),
            "--workers", str(args.workers), "--batch-size", str(args.batch_size),
            "--max-frames", str(args.max_frames), "--epochs", str(args.epochs),
        ]  # fmt: skip
        if what == "train":
            wav = variant == "wav"
            if variant == "nice":
                command += ["--worker-nice", str(CPU_LOADER_NICE)]
            command += [
                "--train-list",
                str(self.train_wav if wav else self.train_opus),
                "--train-path",
                str(self.wav_root if wav else self.audio),
                "--threads",
                str(args.threads),
            ]
        elif what == "score":
            command += ["--trials", str(args.data / "lists" / "dev_trials.txt")]
        else:
            crops = what == "crops"
            command += [
                "--files-list",
                str(self.work / "long_files.txt" if crops else self.files),
                "--audio-root",
                str(self.long_root if crops else self.audio),
                "--eval-frames",
                "400" if crops else "0",
            ]
        policy = "PASSIVE" if variant == "passive" else None
        measured = _measured(command, log, env=_env(policy))
        return _json_line(log)["rate"], measured["tree_mib"]


def _xvec_score(data: Path) -> None:
    """The xvec side of the scoring row: vt_crop_scores on the whole real trial list."""
    import numpy as np

    from xvec.data import read_trials
    from xvec.scoring import vt_crop_scores

    trials = read_trials(data / "lists" / "dev_trials.txt")
    crops = np.random.default_rng(0).standard_normal((len(trials.files), 10, 512))
    crops = crops.astype(np.float32)
    calls, start = 0, time.perf_counter()
    while not calls or time.perf_counter() - start < 1.0:
        vt_crop_scores(crops, trials.enroll, trials.test)
        calls += 1
    seconds = time.perf_counter() - start
    rate = calls * len(trials) / seconds
    print(json.dumps({"rate": rate, "seconds": seconds, "trials": len(trials), "calls": calls}))


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def span(values: list[float], suffix: str = "") -> str:
    """min/median/max (one value alone when there is one)."""
    if not values:
        return "-"
    if len(values) == 1:
        return _fmt(values[0]) + suffix
    parts = (min(values), statistics.median(values), max(values))
    return " / ".join(_fmt(v) for v in parts) + suffix


# (row label, xvec what/variant, VT what/variant)
TABLE = {
    "train": [
        ("train utt/s, Opus (same threads)", ("train", "opus"), ("train", "opus")),
        ("train utt/s, WAV copy (same threads)", ("train", "wav"), ("train", "wav")),
    ],
    "train-controls": [
        (
            "train utt/s, Opus, VT's workers at xvec's loader priority (nice 19)",
            ("train", "opus"),
            ("train", "nice"),
        ),
        (
            "train utt/s, Opus, xvec's workers at VT's (train.loader_nice=0)",
            ("train", "nice0"),
            ("train", "opus"),
        ),
    ],
    "train-defaults": [
        (
            "train utt/s, xvec defaults vs VT defaults, Opus (equal input)",
            ("train", "defaults-opus"),
            ("train", "opus"),
        ),
        (
            "train utt/s, xvec defaults + decode cache vs VT defaults, Opus",
            ("train", "defaults"),
            ("train", "opus"),
        ),
    ],
    "embed": [
        ("whole-file embed files/s, VT defaults", ("embed", "-"), ("embed", "default")),
        ("whole-file embed files/s, VT PASSIVE", ("embed", "-"), ("embed", "passive")),
        (
            "whole-file embed files/s, xvec --precision bf16, VT defaults",
            ("embed", "bf16"),
            ("embed", "default"),
        ),
    ],
    "crops": [
        ("10-crop embed files/s (6-12 s files), VT defaults", ("crops", "-"), ("crops", "default")),
        ("10-crop embed files/s (6-12 s files), VT PASSIVE", ("crops", "-"), ("crops", "passive")),
        (
            "10-crop embed files/s (6-12 s files), xvec --precision bf16, VT defaults",
            ("crops", "bf16"),
            ("crops", "default"),
        ),
    ],
    "score": [
        ("10-crop scoring trials/s, VT defaults", ("score", "-"), ("score", "default")),
        ("10-crop scoring trials/s, VT PASSIVE", ("score", "-"), ("score", "passive")),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vt", type=Path, help="voxceleb_trainer checkout")
    parser.add_argument("--vt-python", type=Path, help="a python with torch + torchaudio")
    parser.add_argument("--xvec-python", type=Path, default=Path(sys.executable))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up")
    parser.add_argument("--per-speaker", type=int, default=4, help="training subset size")
    parser.add_argument("--files", type=int, default=200, help="whole-file embed: N dev files")
    parser.add_argument("--crop-files", type=int, default=60, help="6-12 s files made")
    parser.add_argument("--what", default=",".join(WHATS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--max-frames", type=int, default=200)
    parser.add_argument("--load", default="quiet", help="competing load: busy[:N], torch[:N]")
    parser.add_argument("--load-seconds", type=float, default=1800.0)
    parser.add_argument("--side", choices=["xvec-score"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data = args.data.resolve()
    if args.side == "xvec-score":
        return _xvec_score(args.data)
    if args.vt is None or args.vt_python is None:
        parser.error("--vt and --vt-python are required")
    whats = [w.strip() for w in args.what.split(",") if w.strip()]
    unknown = sorted(set(whats) - set(WHATS))
    if unknown:
        parser.error(f"--what: unknown {', '.join(unknown)}; choose from {', '.join(WHATS)}")
    if not (args.data / "lists" / "dev_trials.txt").is_file():
        raise SystemExit(f"{args.data}: expected lists/dev_trials.txt and lists/train_list.txt")
    load_start, started = Path("/proc/loadavg").read_text().split()[:3], time.time()
    rows = [row for what in whats for row in TABLE[what]]
    results: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="xvec_vs_vt_") as tmp:
        sides = Sides(args, Path(tmp))
        sides.prepare(whats)
        for round_index in range(args.rounds):
            for _, mine, theirs in rows:
                for side, (what, variant) in (("xvec", mine), ("vt", theirs)):
                    key = (side, what, variant)
                    if len(results[key]) > round_index:
                        continue  # measured already this round (shared by two rows)
                    runner = sides.xvec if side == "xvec" else sides.vt
                    processes = start_load(args.load, args.load_seconds)
                    try:
                        rate, rss = runner(what, variant)
                    finally:
                        stop_load(processes)
                    results[key].append((rate, rss))
                    line = f"round {round_index + 1} {side:4s} {what:6s} {variant:8s} {rate:10.2f}"
                    print(f"{line}  {rss:6.0f} MiB", flush=True)
        files = len(sides.files.read_text().split())
        train_utts = len(sides.train_opus.read_text().split("\n")) - 1
    load_end = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"\n{args.rounds} interleaved rounds in {(time.time() - started) / 60:.1f} min; "
        f"{args.workers} loader workers, batch {args.batch_size}, {args.threads} threads; "
        f"training: {train_utts} utterances, {args.epochs} timed epochs after 1; "
        f"{files} dev files embedded; {args.crop_files} 6-12 s files cropped; "
        f"{os.cpu_count()} CPUs; competing load: {args.load}; "
        f"load average {' '.join(load_start)} at start, "
        f"{' '.join(load_end)} at end"
    )
    print("cells: min / median / max over rounds")
    header = f"| row | xvec | VT | xvec/VT | peak RSS MiB xvec/VT |\n|{'---|' * 5}"
    print(header)
    for label, mine, theirs in rows:
        ours, other = results[("xvec", *mine)], results[("vt", *theirs)]
        ratios = [m[0] / t[0] for m, t in zip(ours, other, strict=False)]
        rss = f"{max(m[1] for m in ours):.0f}/{max(t[1] for t in other):.0f}"
        print(
            f"| {label} | {span([m[0] for m in ours])} | {span([t[0] for t in other])} | "
            f"{span(ratios, 'x')} | {rss} |"
        )


if __name__ == "__main__":
    main()
