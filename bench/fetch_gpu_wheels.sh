#!/usr/bin/env bash
# Fill the wheel folder bench/gpu.sh installs from on a GPU machine without network:
# xvec itself (built from this checkout) and what the GPU image lacks: pydantic (with
# pydantic-core, annotated-types, typing-inspection) and soundfile (with cffi, pycparser).
# torch, numpy, typer, rich, safetensors, matplotlib, scipy, tqdm and torchaudio are on that
# image already. Run here, with network:
#
#   bash bench/fetch_gpu_wheels.sh [DIR] [--python-version 3.12]
#
# DIR defaults to gpu_wheels/ in the repo root (git-ignored, about 4 MiB: small enough to
# travel with the working tree); then, on the GPU machine: bash bench/gpu.sh --wheels gpu_wheels
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/gpu_wheels}"
PYVER="3.12"
if [[ "${2:-}" == "--python-version" ]]; then PYVER="$3"; fi
PY="${PYTHON:-python3}"
mkdir -p "$DIR"
rm -f "$DIR"/xvec-*.whl
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" "$ROOT"
download() {
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$DIR" "$@"
}
rm -f "$DIR"/pydantic*.whl
download "pydantic>=2.5,<3"
# pydantic pins one pydantic-core version: fetch exactly that one
PIN="$("$PY" - "$DIR" <<'PYEOF'
import re, sys, zipfile
from pathlib import Path
wheel = zipfile.ZipFile(max(Path(sys.argv[1]).glob("pydantic-2*.whl")))
meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
print(re.search(r"^Requires-Dist: pydantic-core==([\w.]+)", wheel.read(meta).decode(), re.M)[1])
PYEOF
)"
download "pydantic-core==$PIN" annotated-types typing-inspection "soundfile>=0.12" cffi pycparser
ls "$DIR"
du -sh "$DIR"
