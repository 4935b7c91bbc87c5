"""The shared config pieces of the small models (`tokenprune.model_configs`) against the
released checkpoints' published geometry."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlavaForConditionalGeneration

from tokenprune.model_configs import (
    clip_vision_config,
    llava_config,
    mrope_parameters,
    text_config,
)


def test_mrope_split_is_qwen2_5_vl_7b_s():
    # Qwen2.5-VL-7B: head_dim 128 and "mrope_section": [16, 24, 24] in its config.json
    assert mrope_parameters(128, 1e6)["mrope_section"] == [16, 24, 24]
    assert mrope_parameters(16, 1e4) == {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}


def test_llava_config_gives_576_tokens_per_image():
    vision = clip_vision_config(hidden_size=16, layers=2, heads=2)
    text = text_config(
        vocab_size=32, hidden_size=16, intermediate_size=32, layers=1, heads=2, kv_heads=2, max_positions=1024
    )
    model = LlavaForConditionalGeneration(llava_config(vision, LlamaConfig(**text), image_token=31)).eval()
    pixels = torch.zeros(1, 3, vision.image_size, vision.image_size)
    features = model.model.get_image_features(pixel_values=pixels).pooler_output
    assert [tuple(f.shape) for f in features] == [(576, 16)]
