"""Tiny models and prompt batches for the engine tests, built once per session."""

from __future__ import annotations

import pytest
from tiny_models import make_batch, tiny_internvl, tiny_llava, tiny_llava_next

#: Per family: a left-padded batch of samples with different visual token counts.
#: LLaVA: 1 image, 2 images; LLaVA-NeXT: 2242 and 1752 tokens; InternVL: 1 tile, 2 tiles + thumbnail.
BATCH_IMAGES = {
    "llava": [[(336, 336)], [(336, 336), (336, 336)]],
    "llava_next": [[(500, 700)], [(336, 672)]],
    "internvl": [[(448, 448)], [(448, 900)]],
}
#: The pruning layer per family (the tiny InternVL has 2 layers).
LAYER = {"llava": 2, "llava_next": 2, "internvl": 1}


@pytest.fixture(scope="session")
def models():
    return {"llava": tiny_llava(), "llava_next": tiny_llava_next(), "internvl": tiny_internvl()}


@pytest.fixture(scope="session")
def batches(models):
    return {
        family: make_batch(models[family], images, seed=1)
        for family, images in BATCH_IMAGES.items()
    }


@pytest.fixture(scope="session")
def llava(models):
    return models["llava"]


@pytest.fixture(scope="session")
def llava_eager():
    model = tiny_llava()
    model.set_attn_implementation({"text_config": "eager"})
    return model
