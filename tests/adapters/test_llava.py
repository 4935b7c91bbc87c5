"""LLaVA: the adapter's layout equals where the model's own code puts each patch."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import make_batch

from tokenprune import Layout, adapters

from .expect import assert_sample
from .scatter import landed_codes

IMAGE = (336, 336)
batches = st.lists(st.integers(0, 3), min_size=1, max_size=3)


def check_against_model(model, images_per_sample: list[int], seed: int = 0) -> None:
    batch = make_batch(model, [[IMAGE] * n for n in images_per_sample], seed=seed)
    layout = adapters.layout(model, **batch.inputs)
    assert layout.batch_size == len(images_per_sample)
    if sum(images_per_sample) == 0:
        assert layout.num_tokens == 0
        return
    first = 0
    for b, codes in enumerate(landed_codes(model, batch.inputs, [0, 1, 2])):
        tower_image, token = codes[:, 0].long() - 1, codes[:, 1].long()
        patch = token - 1  # the CLS (token 0) was dropped by the model
        assert (patch >= 0).all()
        image = tower_image - first
        assert_sample(layout, b, image, patch // 24, patch % 24, image)
        first += images_per_sample[b]


@given(batches)
def test_layout_matches_model_packing(llava, images_per_sample):
    check_against_model(llava, images_per_sample)


def test_one_image_is_the_24x24_grid(llava):
    batch = make_batch(llava, [[IMAGE]])
    layout = adapters.layout(llava, **batch.inputs)
    expected = Layout.grid(24, 24)
    assert torch.equal(layout.coords, expected.coords)
    assert torch.equal(layout.regions, expected.regions)
    assert layout.region_boxes.tolist() == [[[0.0, 0.0, 1.0, 1.0]]]
    assert layout.region_images.tolist() == [[0]]


def test_full_strategy_keeps_the_cls_without_place(llava):
    llava.config.vision_feature_select_strategy = "full"
    try:
        batch = make_batch(llava, [[IMAGE]])
        ids = batch.inputs["input_ids"]
        # "full" adds the CLS: one more placeholder per image.
        start = int((ids[0] == llava.config.image_token_id).nonzero()[0])
        ids = torch.cat([ids[:, :start], ids[:, start : start + 1], ids[:, start:]], dim=1)
        inputs = {**batch.inputs, "input_ids": ids}
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        layout = adapters.layout(llava, **inputs)
        codes = landed_codes(llava, inputs, [0, 1, 2])[0]
        token = codes[:, 1].long()
        placed = token > 0
        regions = torch.where(placed, 0, -1)
        assert_sample(layout, 0, regions, (token - 1) // 24, (token - 1) % 24, torch.zeros_like(token))
    finally:
        llava.config.vision_feature_select_strategy = "default"
