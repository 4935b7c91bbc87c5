"""Config pieces of small random-weight VLMs with the token geometry of released checkpoints.

The demo (`tokenprune.demo`), the training script of the shapes model
(``training/train_shapes.py``) and the test suite's tiny models (``tests/tiny_models.py``)
build LLaVA-1.5- and Qwen-VL-shaped models at their own sizes from these pieces, so that
the geometry (image and patch size, which vision layer LLaVA reads, the rotary split, the
special token ids) is written once. transformers is imported only when a config is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import CLIPVisionConfig, LlavaConfig, PretrainedConfig

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "IMAGE_SIZE",
    "PAD_ID",
    "PATCH_SIZE",
    "clip_vision_config",
    "llava_config",
    "mrope_parameters",
    "qwen2_5_vl_vision",
    "text_config",
]

#: Padding, begin and end of text in every small model's vocabulary (their tokenizers put
#: ``<pad>``, ``<s>``, ``</s>`` first).
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
#: LLaVA-1.5's CLIP tower: 336 px images in 14 px patches, a 24 x 24 grid of 576 tokens.
#: Qwen2-VL and Qwen2.5-VL use 14 px patches too.
IMAGE_SIZE, PATCH_SIZE = 336, 14


def text_config(
    *,
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    layers: int,
    heads: int,
    kv_heads: int,
    max_positions: int,
    **extra: Any,
) -> dict[str, Any]:
    """Keyword arguments of a decoder-only text model's config (``LlamaConfig``,
    ``Qwen2Config``, ``MistralConfig``, or the ``text_config`` dict of a Qwen-VL config):
    its size and the special ids `PAD_ID`, `BOS_ID`, `EOS_ID`. ``extra`` adds more keys
    (``rope_parameters``, ``initializer_range``, ...)."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        **extra,
    )


def clip_vision_config(*, hidden_size: int, layers: int, heads: int, **extra: Any) -> CLIPVisionConfig:
    """A CLIP vision tower of LLaVA-1.5's geometry (`IMAGE_SIZE` px images in `PATCH_SIZE`
    px patches: a CLS token and 24 x 24 patch tokens) with ``layers`` blocks of width
    ``hidden_size`` and an MLP twice as wide; ``extra`` sets further fields."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        **extra,
    )


def llava_config(vision: PretrainedConfig, text: PretrainedConfig, image_token: int) -> LlavaConfig:
    """A LLaVA-1.5 config: the text model reads the tower's second-to-last layer without
    its CLS token (576 tokens per image), put in place of the ``image_token`` placeholders."""
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def mrope_parameters(head_dim: int, theta: float) -> dict[str, Any]:
    """Qwen2-VL / Qwen2.5-VL rotary parameters (M-RoPE): a head's ``head_dim // 2``
    frequencies split over the (t, h, w) axes as Qwen2.5-VL-7B splits its 64
    (16 : 24 : 24), base ``theta``."""
    half = head_dim // 2
    t, h = half // 4, half * 3 // 8
    return {"rope_type": "default", "rope_theta": theta, "mrope_section": [t, h, half - t - h]}


def qwen2_5_vl_vision(*, hidden_size: int, out_hidden_size: int, window_size: int) -> dict[str, Any]:
    """The ``vision_config`` dict of a Qwen2.5-VL model: `PATCH_SIZE` px patches, 2 frames
    per temporal patch, 2 x 2 merge into the text width ``out_hidden_size``; two blocks of
    width ``hidden_size`` (2 heads, an MLP twice as wide), the first attending within
    ``window_size`` px windows, the second to the whole image (as the released models
    interleave window and full attention)."""
    return dict(
        depth=2,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_heads=2,
        out_hidden_size=out_hidden_size,
        patch_size=PATCH_SIZE,
        spatial_merge_size=2,
        window_size=window_size,
        fullatt_block_indexes=[1],
    )
