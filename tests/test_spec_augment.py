"""SpecAugment: WeSpeaker's masks on real log-mel features, in either axis order."""

from __future__ import annotations

import pytest
import torch

from xvec.features import LogFbank, spec_augment

from conftest import write_tone_corpus


def real_features(tmp_path, rows: int = 6) -> torch.Tensor:
    """Mean-normalised 40-band log-mels ``[rows, 40, frames]`` of tone-corpus audio."""
    import soundfile

    corpus = write_tone_corpus(tmp_path / "corpus", speakers=2, utterances=3)
    waves = [soundfile.read(str(p), dtype="float32")[0] for p in sorted(corpus.rglob("*.wav"))]
    length = min(len(w) for w in waves)
    batch = torch.stack([torch.from_numpy(w[:length]) for w in waves[:rows]])
    return LogFbank(n_mels=40)(batch)


def spans(hidden: torch.Tensor) -> list[tuple[int, int]]:
    """The (start, end) runs of True in a 1-D boolean tensor."""
    runs, start = [], None
    for index, value in enumerate([*hidden.tolist(), False]):
        if value and start is None:
            start = index
        if not value and start is not None:
            runs.append((start, index))
            start = None
    return runs


def test_probability_zero_returns_the_features_unchanged(tmp_path):
    features = real_features(tmp_path)
    out = spec_augment(features, 1, 0.0, 2, 10, 2, 8)
    assert torch.equal(out, features)


@pytest.mark.parametrize("band_axis", [1, 2])
def test_each_row_gets_one_time_span_and_one_band_span_filled_with_the_band_mean(
    tmp_path, band_axis
):
    bands_first = real_features(tmp_path)
    features = bands_first if band_axis == 1 else bands_first.transpose(1, 2).contiguous()
    before = features.clone()
    torch.manual_seed(0)
    out = spec_augment(features, band_axis, 1.0, 1, 10, 1, 8)
    assert torch.equal(features, before)  # a copy: the input is untouched
    assert out.shape == features.shape
    out_bands_first = out if band_axis == 1 else out.transpose(1, 2)
    band_mean = bands_first.mean(dim=2, keepdim=True).expand_as(bands_first)
    changed = out_bands_first != bands_first
    for row in range(bands_first.shape[0]):
        # a masked frame is masked in every band, a masked band in every frame
        whole_frames = changed[row].all(dim=0)
        whole_bands = changed[row].all(dim=1)
        (t0, t1), (b0, b1) = spans(whole_frames)[0], spans(whole_bands)[0]
        assert len(spans(whole_frames)) == 1 and len(spans(whole_bands)) == 1
        assert 1 <= t1 - t0 <= 10 and 1 <= b1 - b0 <= 8
        expected = torch.zeros_like(changed[row])
        expected[:, t0:t1] = True
        expected[b0:b1, :] = True
        assert torch.equal(changed[row], expected)
        masked = out_bands_first[row][expected]
        assert torch.equal(masked, band_mean[row][expected])
        assert masked.abs().max() < 1e-4  # mean-normalised features: the fill is WeSpeaker's 0


def test_draws_cover_every_start_and_width_and_the_chosen_share_of_rows():
    frames, bands, rows = 30, 12, 4000
    features = torch.randn(rows, bands, frames, dtype=torch.float64) + 5.0  # fill ~5, never 0
    torch.manual_seed(1)
    out = spec_augment(features, 1, 0.6, 1, 4, 0, 8)
    changed = (out != features).all(dim=1)  # [rows, frames]: whole frames masked
    masked_rows = changed.any(dim=1)
    share = masked_rows.double().mean().item()
    assert abs(share - 0.6) < 4 * (0.6 * 0.4 / rows) ** 0.5
    starts, widths = set(), set()
    for row in changed[masked_rows]:
        ((start, end),) = spans(row)
        starts.add(start)
        widths.add(end - start)
    assert starts == set(range(frames))  # a span starts anywhere, and is cut at the end
    assert widths == {1, 2, 3, 4}
    assert torch.equal(out.sum(dim=(1, 2)) != features.sum(dim=(1, 2)), masked_rows)


def test_several_spans_per_row_may_overlap_but_stay_within_bounds():
    features = torch.randn(200, 8, 50, dtype=torch.float64) + 5.0
    torch.manual_seed(2)
    out = spec_augment(features, 1, 1.0, 3, 5, 0, 8)
    changed = (out != features).all(dim=1)
    hidden_frames = changed.sum(dim=1)
    assert hidden_frames.min() >= 1 and hidden_frames.max() <= 15
    assert len({tuple(spans(row)) for row in changed}) > 150  # rows draw independently


def test_a_batch_that_is_not_three_dimensional_is_refused():
    with pytest.raises(ValueError, match="band axis"):
        spec_augment(torch.zeros(4, 40), 1, 0.5, 1, 10, 1, 8)
