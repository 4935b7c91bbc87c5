"""tokenprune.lmms.batching: recorded one-sample generate() calls merged into a batch give
each sample what generate() on it alone gives, through the pruning engine, for every family
the plugin wraps."""

from __future__ import annotations

import pytest
import torch

import tokenprune
from tests.tiny_models import make_batch, tiny_model
from tokenprune.errors import TokenpruneError
from tokenprune.lmms import batching

pytestmark = pytest.mark.usefixtures("eager_selectors")

OPTIONS = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": 0, "eos_token_id": 2}
#: per family, one visual (height, width) per sample: different sizes give different
#: prompt lengths (LLaVA-NeXT / InternVL tiles, Qwen grids), so the merge pads.
SIZES = {
    "llava": [(336, 336), (200, 300), (336, 336)],
    "llava_next": [(336, 336), (500, 700), (700, 300)],
    "internvl": [(448, 448), (448, 900), (900, 448)],
    "qwen2_5_vl": [(112, 112), (168, 224), (224, 112)],
}


def _calls(model, family: str) -> list[batching.Call]:
    calls = []
    for i, size in enumerate(SIZES[family]):
        inputs = make_batch(model, [[size]], seed=i, text_len=3 + i).inputs
        calls.append(batching.split_call({**inputs, **OPTIONS}))
    return calls


@pytest.mark.parametrize("family", sorted(SIZES))
def test_merged_batch_gives_each_sample_its_single_run(family):
    model = tiny_model(family).eval()
    calls = _calls(model, family)
    assert len({c.length for c in calls}) > 1, "the samples must need padding"
    block = tokenprune.prune(model, "fastv", keep=0.25, layer=1)
    with torch.inference_mode():
        singles, kept = [], []
        for call in calls:
            with block as run:
                singles.append(model.generate(**call.inputs, **call.options))
            kept.append(run.samples[0].kept_seq_index.tolist())
        with block as run:
            merged = model.generate(**batching.merge(calls), **OPTIONS)
    rows = batching.split(merged, calls, OPTIONS["eos_token_id"])
    length = max(c.length for c in calls)
    for b, (row, single, call) in enumerate(zip(rows, singles, calls)):
        assert row.tolist() == single.tolist()
        # the selection reads each sample's own image: the tiny models' answers may not
        shift = length - call.length
        assert (run.samples[b].kept_seq_index - shift).tolist() == kept[b]


def test_merge_left_pads_and_concatenates():
    a = batching.split_call({"input_ids": torch.tensor([[5, 6, 7]]), "pixel_values": torch.ones(1, 2, 3, 4, 4), "pad_token_id": 9})
    b = batching.split_call({"input_ids": torch.tensor([[8]]), "pixel_values": torch.full((1, 1, 3, 4, 4), 2.0), "pad_token_id": 9})
    merged = batching.merge([a, b])
    assert merged["input_ids"].tolist() == [[5, 6, 7], [9, 9, 8]]
    assert merged["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    # LLaVA-NeXT patches: padded to the largest count with zeros, as its processor does
    assert merged["pixel_values"].shape == (2, 2, 3, 4, 4)
    assert merged["pixel_values"][1, 1].abs().sum() == 0 and (merged["pixel_values"][1, 0] == 2).all()


def test_split_stops_each_row_at_its_first_eos():
    calls = [
        batching.split_call({"input_ids": torch.tensor([[5, 6]])}),
        batching.split_call({"input_ids": torch.tensor([[7]])}),
    ]
    output = torch.tensor([[5, 6, 11, 2, 2, 2], [0, 7, 2, 2, 2, 2]])
    rows = batching.split(output, calls, eos=[2, 3])
    assert [r.tolist() for r in rows] == [[[5, 6, 11, 2]], [[7, 2]]]
    rows = batching.split(output, calls, eos=None)
    assert rows[1].tolist() == [[7, 2, 2, 2, 2]]


def test_batches_keep_order_and_split_on_other_options():
    ids = {"input_ids": torch.tensor([[1]])}
    calls = [batching.split_call({**ids, "max_new_tokens": n}) for n in (1, 1, 1, 2, 1)]
    assert batching.batches(calls, 2) == [[0, 1], [2], [3], [4]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_ids": torch.ones(2, 3, dtype=torch.long)}, "input_ids: expected one sample (1, L), got shape (2, 3)"),
        ({"pixel_values": torch.ones(1, 3)}, "input_ids: expected one sample (1, L), got shape None"),
        ({"input_ids": torch.ones(1, 3, dtype=torch.long), "cross_attention_mask": torch.ones(1, 3)}, "got cross_attention_mask"),
        ({"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 2)}, "attention_mask: expected the shape of input_ids"),
        ({"input_ids": torch.ones(1, 3, dtype=torch.long), "num_return_sequences": 2}, "num_return_sequences: expected 1, got 2"),
    ],
)
def test_calls_that_cannot_be_merged_exactly_are_refused(kwargs, message):
    with pytest.raises(TokenpruneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        batching.split_call(kwargs)
