"""ResNetSE34V2 (ASP) and RawNet3 (ECA) against outputs of voxceleb_trainer's own model code.

The fixtures in ``tests/fixtures/vt_generated`` (see its README) hold no weights of the
networks: VT built each model after ``torch.manual_seed(1234)``, so xvec rebuilds the same
weights from the seed (checked here against per-tensor checksums of VT's state), then loads the
stored overrides (random batch-norm statistics and affine parameters, which at initialisation
would make BN a near-identity and hide ordering mistakes). VT's embeddings of two synthetic
signals, whole and as its 10 evaluation crops, and its trial score must then be reproduced.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from xvec import registry
from xvec.audio import eval_crops
from xvec.checkpoint import load_state_strict
from xvec.scoring import vt_crop_scores

FIXTURES = Path(__file__).parent / "fixtures" / "vt_generated"
FOLDERS = ["resnetse34v2_asp", "rawnet3_eca"]
EVAL_FRAMES, NUM_EVAL = 400, 10
EMBEDDING_ATOL = 1e-5
SCORE_ATOL = 1e-6


def read_meta(folder: str) -> dict:
    return json.loads((FIXTURES / folder / "meta.json").read_text())


def signals() -> list[np.ndarray]:
    return [np.load(FIXTURES / f"signal{index}.npy") for index in (1, 2)]


def checksums(tensor: torch.Tensor) -> dict[str, float]:
    """The statistics the generator recorded for each of VT's initial tensors."""
    x = tensor.detach().double().flatten().numpy()
    return {
        "sum": float(x.sum()),
        "abs_sum": float(np.abs(x).sum()),
        "weighted_sum": float(x @ np.cos(0.7 * np.arange(x.size))),
    }


def build_seeded(folder: str) -> torch.nn.Module:
    meta = read_meta(folder)
    torch.manual_seed(meta["init_seed"])
    return registry.build("model", meta["xvec_model"], meta["xvec_params"])


def build_with_overrides(folder: str) -> torch.nn.Module:
    """xvec's seeded model with the fixture's overrides loaded, in eval mode."""
    model = build_seeded(folder)
    state = model.state_dict()
    overrides = load_file(str(FIXTURES / folder / "overrides.safetensors"))
    assert set(overrides) <= set(state)
    state.update(overrides)
    load_state_strict(model, type(model).from_voxceleb_trainer(state), folder)
    return model.eval()


def embed(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(batch))).numpy()


def test_fixtures_are_small_and_synthetic() -> None:
    total = sum(path.stat().st_size for path in FIXTURES.rglob("*") if path.is_file())
    assert total < 10 * 2**20
    first, second = signals()
    assert first.dtype == second.dtype == np.float32
    assert (first.size, second.size) == (40000, 65600)  # 2.5 s and 4.1 s at 16 kHz


@pytest.mark.parametrize("folder", FOLDERS)
def test_seeded_build_equals_voxceleb_trainer_initialisation(folder: str) -> None:
    """Same state-dict keys in the same order, shapes, dtypes and values as VT's seeded build."""
    expected = json.loads((FIXTURES / folder / "init_checksums.json").read_text())
    state = build_seeded(folder).state_dict()
    assert list(state) == list(expected)
    for key, tensor in state.items():
        record = expected[key]
        assert list(tensor.shape) == record["shape"], key
        assert str(tensor.dtype).removeprefix("torch.") == record["dtype"], key
        got = checksums(tensor)
        for stat in ("sum", "abs_sum", "weighted_sum"):
            assert got[stat] == pytest.approx(record[stat], rel=1e-6, abs=1e-5), (key, stat)


def test_crops_equal_voxceleb_trainer_crop_starts() -> None:
    """The short signal wraps to 64,241 samples (starts 0..0, 1); the long one is spread out."""
    first, second = signals()
    crops = eval_crops(first, EVAL_FRAMES, NUM_EVAL)
    assert crops.shape == (NUM_EVAL, 64240)
    padded = np.pad(first, (0, 64241 - first.size), mode="wrap")
    np.testing.assert_array_equal(crops[:-1], np.broadcast_to(padded[:64240], (9, 64240)))
    np.testing.assert_array_equal(crops[-1], padded[1:])
    starts = np.linspace(0, second.size - 64240, NUM_EVAL).astype(int)
    np.testing.assert_array_equal(
        eval_crops(second, EVAL_FRAMES, NUM_EVAL), np.stack([second[s : s + 64240] for s in starts])
    )


@pytest.mark.parametrize("folder", FOLDERS)
def test_embeddings_and_score_equal_voxceleb_trainer(folder: str) -> None:
    model = build_with_overrides(folder)
    crop_embeddings = []
    for index, signal in enumerate(signals(), start=1):
        full = embed(model, signal[None])
        np.testing.assert_allclose(
            full, np.load(FIXTURES / folder / f"emb_full{index}.npy"), rtol=0, atol=EMBEDDING_ATOL
        )
        crops = embed(model, eval_crops(signal, EVAL_FRAMES, NUM_EVAL))
        np.testing.assert_allclose(
            crops, np.load(FIXTURES / folder / f"emb_crops{index}.npy"), rtol=0, atol=EMBEDDING_ATOL
        )
        crop_embeddings.append(crops)
    score = vt_crop_scores(np.stack(crop_embeddings), [0], [1])[0]
    assert score == pytest.approx(read_meta(folder)["score"], abs=SCORE_ATOL)


@pytest.mark.parametrize("folder", FOLDERS)
def test_overrides_change_the_output(folder: str) -> None:
    """The stored BN statistics matter: without them the embedding moves far beyond tolerance."""
    signal = signals()[0][None, :8000]
    plain = embed(build_seeded(folder).eval(), signal)
    assert np.abs(plain - embed(build_with_overrides(folder), signal)).max() > 100 * EMBEDDING_ATOL


@pytest.mark.parametrize("folder", FOLDERS)
def test_train_mode_forward_is_finite_and_differentiable(folder: str) -> None:
    torch.manual_seed(0)
    model = build_with_overrides(folder).train()
    batch = torch.from_numpy(np.stack([signal[:8000] for signal in signals()]))
    out = model(batch)
    assert out.shape == (2, model.embedding_dim)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
