"""bench/gpu.sh --dry-run: the GPU benchmark script, run on the CPU with tiny sizes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

ROWS = [
    "xvec train false",
    "xvec train bf16",
    "xvec train bf16 channels-last",
    "xvec train bf16 1 worker",
    "xvec embed full",
    "xvec embed vt-crops",
    "torchrun 1 process DDP bf16",
    "xvec train bf16 compile",
]


@pytest.mark.slow
def test_gpu_script_dry_run_prints_every_row(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = {
        cells[0]: cells[1:]
        for line in done.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| row")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert list(table) == ROWS
    for name in ROWS[:-1]:
        assert re.fullmatch(r"\d+\.\d (utt|files)/s", table[name][0]), (name, table[name])
    assert "gloo, world 1" in table["torchrun 1 process DDP bf16"][2]
    assert table["xvec train bf16 compile"][0] == "skipped"  # the dry run does not compile
