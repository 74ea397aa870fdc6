"""xvec.workflows.eval: where xvec eval writes each system's results."""

from __future__ import annotations

from pathlib import Path

from xvec.workflows.eval import result_folders


def test_several_models_get_separateresult_folders():
    assert result_folders([Path("a/last.safetensors")]) == [""]
    assert result_folders([Path("a/m1.safetensors"), Path("b/m2.safetensors")]) == ["m1", "m2"]
    same = result_folders([Path("a/last.safetensors"), Path("b/last.safetensors")])
    assert len(set(same)) == 2 and "a" in same[0] and "b" in same[1]
