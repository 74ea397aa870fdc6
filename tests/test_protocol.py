"""xvec.protocol: batch plans, model inputs, validation and the record of a protocol."""

from __future__ import annotations

import numpy as np
import pytest

from xvec.config import parse_recipe
from xvec.errors import XvecError
from xvec.protocol import MIN_SAMPLES, PAD_TOLERANCE, Protocol


def test_the_default_batches_only_files_of_equal_length() -> None:
    lengths = np.array([16000, 15900, 16000, 32000, 15900])
    batches = Protocol().plan_batches(lengths, batch_size=8, max_batch_samples=10**9)
    assert sorted(sorted(b.tolist()) for b in batches) == [[0, 2], [1, 4], [3]]
    audios = [np.ones(n, dtype=np.float32) for n in (16000, 16000)]
    batch, padded = Protocol().batch_input(audios)
    assert batch.shape == (2, 16000) and padded == 0


def test_a_length_tolerance_batches_near_lengths_and_trims_to_the_shortest() -> None:
    protocol = Protocol(length_tolerance=0.05)
    lengths = np.array([16000, 15900, 32000])
    batches = protocol.plan_batches(lengths, batch_size=8, max_batch_samples=10**9)
    assert sorted(sorted(b.tolist()) for b in batches) == [[0, 1], [2]]
    batch, _ = protocol.batch_input([np.ones(16000), np.ones(15900)])
    assert batch.shape == (2, 15900)


def test_padded_batches_hold_lengths_within_the_pad_tolerance_and_count_the_longest() -> None:
    lengths = np.array([16000, 15300, 15100, 32000])  # 15300 is within 5 % of 16000, 15100 not
    assert PAD_TOLERANCE == 0.05
    batches = Protocol().plan_batches(lengths, 8, max_batch_samples=32000, padded=True)
    assert [b.tolist() for b in batches] == [[3], [0, 1], [2]]
    tight = Protocol().plan_batches(lengths, 8, max_batch_samples=31999, padded=True)
    assert [b.tolist() for b in tight] == [[3], [0], [1, 2]]  # 2 x 16000 > 31999 >= 2 x 15300


def test_short_files_are_wrap_padded_and_capped_files_read_only_the_cap() -> None:
    audio = np.arange(1000, dtype=np.float32)
    padded, was_padded = Protocol().file_input(audio)
    assert was_padded and padded.shape == (1, MIN_SAMPLES)
    assert np.array_equal(padded[0, 1000:2000], audio)
    capped = Protocol(max_seconds=1.0)
    assert capped.read_frames == 16000
    assert np.array_equal(capped.input_lengths(np.array([40000, 100])), [16000, MIN_SAMPLES])


def test_vt_crops_give_num_eval_crops_or_the_whole_file() -> None:
    crops = Protocol("vt-crops", eval_frames=100, num_eval=5)
    model_input, _ = crops.file_input(np.zeros(48000, dtype=np.float32))
    assert model_input.shape[0] == 5 == crops.crops_per_file
    assert Protocol("vt-crops", eval_frames=0).crops_per_file == 1


@pytest.mark.parametrize(
    ("settings", "option"),
    [
        ({"name": "other"}, None),
        ({"max_seconds": 0.001}, "max_seconds"),
        ({"eval_frames": -1}, "eval_frames"),
        ({"num_eval": 0}, "num_eval"),
        ({"length_tolerance": 1.0}, "length_tolerance"),
    ],
)
def test_bad_settings_are_one_line_naming_the_option(settings, option) -> None:
    with pytest.raises(XvecError) as caught:
        Protocol(**settings)
    assert "\n" not in str(caught.value)
    assert caught.value.options == ((option,) if option else ())


def test_the_record_rebuilds_the_protocol_and_recipes_describe_theirs() -> None:
    protocol = Protocol("vt-crops", eval_frames=300, num_eval=6, length_tolerance=0.1)
    record = protocol.describe()
    assert record["protocol"] == "vt-crops"
    assert Protocol(record.pop("protocol"), **record) == protocol
    recipe = parse_recipe(
        {
            "model": {"name": "ResNetSE34L"},
            "data": {"eval_frames": 200, "num_eval": 4},
            "eval": {"protocol": "vt-crops"},
        }
    )
    assert Protocol.from_recipe(recipe) == Protocol("vt-crops", eval_frames=200, num_eval=4)
