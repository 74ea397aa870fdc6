#!/usr/bin/env bash
# The GPU path of xvec, measured on one GPU in under 8 minutes (issue 30), and the same script
# on the CPU with tiny sizes (--dry-run, under 2 minutes) so it can be tested anywhere.
#
#   bash bench/gpu.sh [--wheels DIR] [--vt VT_CHECKOUT] [--python PY] [--work DIR] [--dry-run]
#
# --wheels DIR  install xvec and what the GPU image lacks (pydantic, soundfile and their
#               needs) from DIR, offline: `pip install --no-index --find-links DIR
#               --no-deps --target WORK/site DIR/*.whl`, then PYTHONPATH. Fill DIR here, online,
#               by `bash bench/fetch_gpu_wheels.sh` (default DIR: gpu_wheels/, git-ignored;
#               keep it inside the repo so it travels with the working tree).
#               Without --wheels, PY must already import xvec.
# --vt DIR      a voxceleb_trainer checkout (it needs torchaudio, which the GPU image has):
#               adds VT's training utt/s on the same GPU, data, batch and loader workers.
# --python PY   the interpreter (default: $PYTHON, else python3).
# --work DIR    scratch folder (default: a new folder under /tmp, removed at the end).
#
# It makes its own corpus with `xvec synth` (nothing is read from outside the repo), then
# prints one table: xvec training utt/s (recipes/resnet34l_amsoftmax.toml: ResNetSE34L + SAP +
# AM-softmax, batch 128, 2 s crops; fp32, AMP bf16, AMP fp16, bf16 with channels-last
# convolutions, bf16 with 1 loader worker, bf16 with train.compile, not in --dry-run), whole-file
# and 10-crop extraction files/s, a one-process torchrun run through nccl (DDP) against the
# same loop without DDP, VT's training utt/s (fp32 and its fp16 --mixedprec), and the peak GPU
# memory of each. Every training row is whole epochs: one untimed, then EPOCHS timed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-python3}"
WHEELS="" VT="" WORK="" DRY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --wheels) WHEELS="$(cd "$2" && pwd)"; shift 2 ;;
        --vt) VT="$(cd "$2" && pwd)"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --work) WORK="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ -z "$WORK" ]]; then
    WORK="$(mktemp -d /tmp/xvec_gpu.XXXXXX)"
    trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
T0=$SECONDS

if [[ -n "$WHEELS" ]]; then
    # --target and PYTHONPATH rather than a venv: the GPU image's python3 is itself a venv,
    # whose packages a --system-site-packages venv would not see
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" --no-deps --no-compile \
        --target "$WORK/site" "$WHEELS"/*.whl
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi

if [[ $DRY -eq 1 ]]; then
    DEVICE=cpu SPEAKERS=8 UTTS=3 BATCH=8 WORKERS=1 EPOCHS=1 FRAMES=20 DDP_STEPS=2 DDP_WARMUP=1
    AMPS="false bf16" EMBED_FILES=8
else
    DEVICE=cuda SPEAKERS=400 UTTS=12 BATCH=128 WORKERS=10 EPOCHS=2 FRAMES=200 DDP_STEPS=30 DDP_WARMUP=3
    AMPS="false bf16 fp16" EMBED_FILES=400
fi
export PYTHONUNBUFFERED=1
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

"$PY" - "$DEVICE" <<'EOF'
import sys, torch, xvec
print(f"torch {torch.__version__}, xvec from {xvec.__file__}")
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        raise SystemExit("gpu.sh: no CUDA device (use --dry-run on a CPU)")
    print(f"GPU: {torch.cuda.get_device_name(0)}")
EOF

echo "corpus: xvec synth, $SPEAKERS speakers x $UTTS utterances"
"$PY" -m xvec synth "$WORK/corpus" --speakers "$SPEAKERS" --utterances "$UTTS" >"$WORK/synth.log"
echo "  made in $((SECONDS - T0)) s (with the install)"
CORPUS="$WORK/corpus"
head -n "$EMBED_FILES" "$CORPUS/trials.txt" >"$WORK/trials.txt"

# row name, then the command; its JSON line goes to $RESULTS with the row name
measure() {
    local name="$1"
    shift
    local log="$WORK/log_${name//[^A-Za-z0-9]/_}.txt"
    local start=$SECONDS
    if "$@" >"$log" 2>&1; then
        local line
        line="$(grep '^{' "$log" | tail -n 1)"
        echo "{\"row\": \"$name\", \"result\": $line}" >>"$RESULTS"
        echo "  $name: done in $((SECONDS - start)) s"
    else
        echo "{\"row\": \"$name\", \"error\": \"exit $? (log: $log)\"}" >>"$RESULTS"
        echo "  $name: FAILED, last lines of $log:"
        tail -n 8 "$log" | sed 's/^/    /'
    fi
}

TRAIN=(
    "$PY" "$HERE/_gpu_side.py" train --device "$DEVICE" --epochs "$EPOCHS"
    --recipe "$ROOT/recipes/resnet34l_amsoftmax.toml"
    --set "data.train_list=$CORPUS/train_list.txt" --set "data.train_path=$CORPUS/audio"
    --set "data.max_frames=$FRAMES" --set "train.batch_size=$BATCH" --set train.nPerSpeaker=1
)
for amp in $AMPS; do
    measure "xvec train $amp" "${TRAIN[@]}" --set "train.num_workers=$WORKERS" \
        --set "train.mixed_precision=$amp"
done
measure "xvec train bf16 channels-last" "${TRAIN[@]}" --set "train.num_workers=$WORKERS" \
    --set train.mixed_precision=bf16 --set train.channels_last=true
measure "xvec train bf16 1 worker" "${TRAIN[@]}" --set train.num_workers=1 \
    --set train.mixed_precision=bf16
if [[ $DRY -eq 0 ]]; then  # compiling takes minutes on a CPU: the dry run skips it
    measure "xvec train bf16 compile" "${TRAIN[@]}" --set "train.num_workers=$WORKERS" \
        --set train.mixed_precision=bf16 --set train.compile=true
fi

for protocol in full vt-crops; do
    measure "xvec embed $protocol" "$PY" "$HERE/_gpu_side.py" embed --device "$DEVICE" \
        --trials "$WORK/trials.txt" --audio-root "$CORPUS/audio" --protocol "$protocol"
done

measure "torchrun 1 process DDP bf16" "$PY" -m torch.distributed.run --standalone \
    --nproc_per_node=1 "$HERE/_gpu_side.py" ddp --device "$DEVICE" --batch-size "$BATCH" \
    --max-frames "$FRAMES" --steps "$DDP_STEPS" --warmup "$DDP_WARMUP" --amp bf16

if [[ -n "$VT" ]]; then
    VT_TRAIN=(
        "$PY" "$HERE/_vt_side.py" train --vt "$VT" --device "$DEVICE" --epochs "$EPOCHS"
        --train-list "$CORPUS/train_list.txt" --train-path "$CORPUS/audio"
        --batch-size "$BATCH" --max-frames "$FRAMES" --workers "$WORKERS"
    )
    measure "VT train fp32" "${VT_TRAIN[@]}"
    if [[ "$DEVICE" == cuda ]]; then
        measure "VT train fp16 (--mixedprec)" "${VT_TRAIN[@]}" --mixedprec
    fi
fi

"$PY" - "$RESULTS" "$DEVICE" "$SPEAKERS" "$UTTS" "$BATCH" "$WORKERS" "$EPOCHS" "$((SECONDS - T0))" <<'EOF'
import json, sys
path, device, speakers, utts, batch, workers, epochs, seconds = sys.argv[1:]
rows = [json.loads(line) for line in open(path)]
unit = {"embed": "files/s"}
print(
    f"\ngpu.sh on {device}: synth corpus {speakers} speakers x {utts} utterances; batch {batch}, "
    f"{workers} loader workers, {epochs} timed epochs after 1; {seconds} s in all"
)
print("| row | rate | peak GPU MiB | note |\n|---|---|---|---|")
for row in rows:
    name = row["row"]
    if "error" in row:
        print(f"| {name} | failed | - | {row['error']} |")
        continue
    r = row["result"]
    rate = f"{r['rate']:.1f} {unit.get(name.split()[1], 'utt/s')}"
    peak = "-" if r.get("peak_mib") is None else f"{r['peak_mib']:.0f}"
    note = ""
    if "plain_rate" in r:
        note = f"{r['backend']}, world {r['world']}; same loop without DDP {r['plain_rate']:.1f} utt/s"
    elif "steps" in r:
        note = f"{r['steps']} timed steps"
    elif "files" in r:
        note = f"{r['files']} files"
    print(f"| {name} | {rate} | {peak} | {note} |")
if device == "cpu":
    print("| xvec train bf16 compile | skipped | - | --dry-run: compiling takes minutes on a CPU |")
failed = sum("error" in row for row in rows)
sys.exit(1 if failed else 0)
EOF
