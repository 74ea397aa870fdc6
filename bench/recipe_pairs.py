"""Two training commands side by side, one pair per seed: issue 27's recipe comparison.

For each seed the baseline (``RECIPE`` plus ``--set`` overrides) and the variant (the same plus
``--variant-set`` overrides, or ``--variant-recipe`` in place of ``RECIPE``) run as two
``xvec train`` processes at once, so both share the cores alike and their wall times compare
the two recipes, not either with a quiet machine. Prints one row per run (training accuracy
at the last epoch, EER at each intermediate evaluation, the final model's EER and minDCF, the
AS-norm and PLDA EERs where the recipe asks for them, wall time) and each side's means; the
relative change compares each side's PLDA EER where it has one, else its AS-norm EER, else its
raw one.

    python bench/recipe_pairs.py recipes/campplus_aam.toml --seeds 10 11 12 --out runs/pairs \\
        --set model.growth_rate=16 --set train.max_epoch=8 ... \\
        --variant-set optim.optimizer=adam --variant-set 'augment.spec_augment={}' ...

``--data speechocean762`` (the default) points the data lists at ../shared/data/speechocean762;
``--data recipe`` keeps the recipe's own. A seed's pair that already finished (its
``result.json`` exists in ``--out``) is read, not run again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEECHOCEAN = ROOT.parent / "shared" / "data" / "speechocean762"
SIDES = ("baseline", "variant")


def data_overrides(choice: str) -> list[str]:
    """The ``--set`` overrides that point a recipe at the chosen corpus."""
    if choice == "recipe":
        return []
    return [
        f"data.train_list={SPEECHOCEAN / 'lists' / 'train_list.txt'}",
        f"data.train_path={SPEECHOCEAN / 'audio'}",
        f"data.test_list={SPEECHOCEAN / 'lists' / 'dev_trials.txt'}",
        f"data.test_path={SPEECHOCEAN / 'audio'}",
    ]


def train(recipe: str, overrides: list[str], run_dir: Path) -> float:
    """Run one ``xvec train`` to its end, its output in ``run_dir``.log; returns wall seconds."""
    command = [sys.executable, "-m", "xvec", "train", recipe]
    for override in [*overrides, f"train.output_dir={run_dir}"]:
        command += ["--set", override]
    start = time.perf_counter()
    with open(f"{run_dir}.log", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{run_dir}: xvec train exited with {done.returncode}; see {run_dir}.log")
    (run_dir / "wall.txt").write_text(f"{wall:.1f}\n")
    return wall


def summary(run_dir: Path) -> dict:
    """What the row shows, from the run's ``result.json``, ``log.jsonl`` and ``wall.txt``."""
    result = json.loads((run_dir / "result.json").read_text())
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    asnorm, plda = result.get("asnorm"), result.get("plda")
    return {
        "accuracy": epochs[-1]["accuracy"] if epochs else float("nan"),
        "evals": [(r["epoch"], r["eer"]) for r in records if r["kind"] == "eval"],
        "model": result["name"],
        "eer": result["eer"],
        "dcf05": result["min_dcf"]["0.05"],
        "dcf01": result["min_dcf"]["0.01"],
        "asnorm_eer": asnorm["eer"] if asnorm else None,
        "asnorm_dcf01": asnorm["min_dcf"]["0.01"] if asnorm else None,
        "plda_eer": plda["eer"] if plda else None,
        "plda_dcf01": plda["min_dcf"]["0.01"] if plda else None,
        "wall": float((run_dir / "wall.txt").read_text()),
    }


def run_pair(args: argparse.Namespace, seed: int) -> dict[str, dict]:
    """Both sides of one seed at once (or read back where they already finished)."""
    base = [*data_overrides(args.data), *args.overrides, f"train.seed={seed}"]
    commands = {
        "baseline": (args.recipe, base),
        "variant": (args.variant_recipe or args.recipe, [*base, *args.variant_overrides]),
    }
    run_dirs = {side: args.out / f"{side}_s{seed}" for side in SIDES}
    todo = [side for side in SIDES if not (run_dirs[side] / "result.json").exists()]
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(len(SIDES)) as pool:
        list(pool.map(lambda side: train(*commands[side], run_dirs[side]), todo))
    return {side: summary(run_dirs[side]) for side in SIDES}


NORMS = ("asnorm", "plda")


def row(side: str, seed: int, s: dict) -> str:
    evals = " ".join(f"e{epoch} {eer:.2f}" for epoch, eer in s["evals"][:-1]) or "-"
    norms = " | ".join(
        f"{s[f'{n}_eer']:.2f} ({s[f'{n}_dcf01']:.3f})" if s[f"{n}_eer"] is not None else "-"
        for n in NORMS
    )
    return (
        f"| {side} | {seed} | {s['accuracy']:.1f} % | {evals} | {s['model']} | "
        f"**{s['eer']:.2f}** ({s['dcf05']:.3f} / {s['dcf01']:.3f}) | {norms} | {s['wall']:.0f} s |"
    )


def compared_eer(s: dict) -> float:
    """The EER a side is compared by: PLDA's where run, else AS-norm's, else the raw one."""
    return next(v for v in (s["plda_eer"], s["asnorm_eer"], s["eer"]) if v is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--variant-set", dest="variant_overrides", action="append", default=[])
    parser.add_argument("--variant-recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[10, 11, 12])
    parser.add_argument("--data", choices=("speechocean762", "recipe"), default="speechocean762")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not args.variant_overrides and not args.variant_recipe:
        parser.error("give the variant: --variant-set KEY=VALUE ... or --variant-recipe R")
    if args.data == "speechocean762" and not SPEECHOCEAN.is_dir():
        parser.error(f"{SPEECHOCEAN} not found; use --data recipe")

    print(
        "| recipe | seed | train acc. last epoch | EER at earlier evaluations | scored model "
        "| EER % (minDCF 0.05 / 0.01) | AS-norm EER % (minDCF 0.01) "
        "| PLDA EER % (minDCF 0.01) | wall (pair) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    for seed in args.seeds:
        pair = run_pair(args, seed)
        for side in SIDES:
            results[side].append(pair[side])
            print(row(side, seed, pair[side]), flush=True)
    for side in SIDES:
        runs = results[side]
        line = (
            f"{side}: mean EER {statistics.mean(r['eer'] for r in runs):.2f} %, "
            f"minDCF 0.05 / 0.01 {statistics.mean(r['dcf05'] for r in runs):.3f} / "
            f"{statistics.mean(r['dcf01'] for r in runs):.3f}, "
            f"wall {statistics.mean(r['wall'] for r in runs):.0f} s"
        )
        for norm, title in zip(NORMS, ("AS-norm", "PLDA"), strict=True):
            if all(r[f"{norm}_eer"] is not None for r in runs):
                line += (
                    f"; {title} EER {statistics.mean(r[f'{norm}_eer'] for r in runs):.2f} % "
                    f"(minDCF 0.01 {statistics.mean(r[f'{norm}_dcf01'] for r in runs):.3f})"
                )
        print(line)
    compared = {side: statistics.mean(compared_eer(r) for r in results[side]) for side in SIDES}
    change = 100 * (compared["variant"] / compared["baseline"] - 1)
    print(f"variant against baseline (PLDA, else AS-norm, where run): {change:+.1f} % EER")


if __name__ == "__main__":
    main()
