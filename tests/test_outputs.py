"""xvec.outputs: an output is never an input, and a foreign file is replaced only with force."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from xvec.errors import XvecError
from xvec.outputs import artefact_kind, check_not_listed, check_outputs
from xvec.scoring import write_scores


def write_safetensors(path, metadata):
    save_file({"x": torch.zeros(2)}, str(path), metadata=metadata)
    return path


def test_kinds_are_recognised_from_the_files_themselves(tmp_path) -> None:
    checkpoint = write_safetensors(tmp_path / "m.safetensors", {"xvec": json.dumps({"model": {}})})
    plda = write_safetensors(
        tmp_path / "p.safetensors", {"xvec": json.dumps({"kind": "xvec-plda"})}
    )
    embeddings = write_safetensors(tmp_path / "e.safetensors", {"xvec_embeddings": "{}"})
    foreign = write_safetensors(tmp_path / "f.safetensors", {})
    scores = write_scores(tmp_path / "s.txt", np.array([0.5, -1.0]), ["a", "b"], ["c", "d"])
    (tmp_path / "t.txt").write_text("1 a.wav b.wav\n0 a.wav c.wav\n")
    (tmp_path / "l.txt").write_text("spk1 spk1/a.wav\n")
    (tmp_path / "c.json").write_text(json.dumps({"kind": "xvec-calibration"}))
    (tmp_path / "r.json").write_text(json.dumps({"name": "m", "eer": 1.0, "min_dcf": {}}))
    (tmp_path / "notes.txt").write_text("my notes about the experiment\n")
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
    expected = {
        checkpoint: "checkpoint",
        plda: "plda",
        embeddings: "embeddings",
        foreign: None,
        scores: "scores",
        tmp_path / "t.txt": "trials",
        tmp_path / "l.txt": "train-list",
        tmp_path / "c.json": "calibration",
        tmp_path / "r.json": "result",
        tmp_path / "notes.txt": None,
        tmp_path / "a.png": "image",
        tmp_path / "missing": None,
    }
    assert {path: artefact_kind(path) for path in expected} == expected


def test_an_output_that_is_an_input_is_refused_even_with_force(tmp_path) -> None:
    model = write_safetensors(tmp_path / "m.safetensors", {"xvec": json.dumps({"model": {}})})
    (tmp_path / "link.safetensors").symlink_to(model)
    for output in (model, tmp_path / "link.safetensors", tmp_path / "." / "m.safetensors"):
        with pytest.raises(XvecError, match="is also an input of this command"):
            check_outputs({output: "embeddings"}, [model], force=True)


def test_foreign_files_need_force_and_own_kinds_are_replaced(tmp_path) -> None:
    notes = tmp_path / "notes.safetensors"
    notes.write_text("not an xvec file")
    with pytest.raises(XvecError) as caught:
        check_outputs({notes: "embeddings"}, [])
    message = str(caught.value)
    assert message.startswith(f"{notes}: exists and is a file xvec did not write")
    assert "force" in caught.value.options and "\n" not in message
    check_outputs({notes: "embeddings"}, [], force=True)
    model = write_safetensors(tmp_path / "m.safetensors", {"xvec": json.dumps({"model": {}})})
    with pytest.raises(XvecError, match="is an xvec checkpoint, not an xvec embeddings file"):
        check_outputs({model: "embeddings"}, [])
    embeddings = write_safetensors(tmp_path / "e.safetensors", {"xvec_embeddings": "{}"})
    check_outputs({embeddings: "embeddings", tmp_path / "new.txt": "scores"}, [])
    with pytest.raises(XvecError, match="is a folder"):
        check_outputs({tmp_path: "scores"}, [])


def test_an_output_among_the_listed_audio_is_refused(tmp_path) -> None:
    root = tmp_path / "audio"
    (root / "spk").mkdir(parents=True)
    with pytest.raises(XvecError, match=r"is one of the listed input files \(spk/a.wav under"):
        check_not_listed(root / "spk" / "a.wav", root, ["spk/a.wav", "spk/b.wav"])
    check_not_listed(root / "spk" / "c.wav", root, ["spk/a.wav"])
    check_not_listed(tmp_path / "elsewhere.safetensors", root, ["spk/a.wav"])
