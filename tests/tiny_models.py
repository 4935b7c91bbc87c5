"""Tiny random-weight VLMs with the real geometry, and padded prompt batches for them.

No downloads: every model is built from config objects, seeded, and small enough to run a
forward pass on a CPU in milliseconds, while keeping the token geometry of the released
checkpoints:

- `tiny_llava`: CLIP-style vision tower at 336 px / 14 px patches (24 x 24 = 576 tokens),
  Llama text model (llava-1.5-style).
- `tiny_llava_next`: the same tower with the llava-v1.6 ``image_grid_pinpoints``.
- `tiny_internvl`: InternVL vision tower at 448 px / 14 px, ``downsample_ratio`` 0.5
  (256 tokens per tile), Qwen2 text model (InternVL3-style).
- `tiny_qwen2_vl`, `tiny_qwen2_5_vl`, `tiny_qwen3_vl`: 14 px (Qwen3-VL: 16 px) patches,
  2 frames per temporal patch, 2 x 2 merge, M-RoPE text models (Qwen2.5-VL with window
  attention, Qwen3-VL with deepstack features at decoder layers 0..2).
- `tiny_llava_onevision`: SigLIP-style tower at 384 px / 14 px (27 x 27 tokens), the
  anyres_max_9 pinpoints, pooled 14 x 14 video frames, Qwen2 text model.

`make_batch` builds a left-padded batch of prompts (text tokens and image placeholders)
for any of them; the placeholder counts come from transformers' own code, not from
tokenprune, so tests that compare against tokenprune's adapters stay independent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor
from transformers import (
    CLIPVisionConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlamaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    MistralConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SiglipVisionConfig,
)
from transformers.models.internvl.configuration_internvl import InternVLVisionConfig
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from tokenprune.model_configs import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    clip_vision_config,
    llava_config,
    mrope_parameters,
    qwen2_5_vl_vision,
    text_config,
)

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "FAMILIES",
    "IMAGE_TOKEN_ID",
    "IMG_END_ID",
    "IMG_START_ID",
    "LLAVA_NEXT_PINPOINTS",
    "PAD_ID",
    "QWEN_FAMILIES",
    "VIDEO_FAMILIES",
    "VIDEO_TOKEN_ID",
    "VISION_END_ID",
    "VISION_START_ID",
    "VOCAB_SIZE",
    "TinyBatch",
    "llava_singles",
    "make_batch",
    "num_image_tiles",
    "num_image_tokens",
    "tiny_internvl",
    "tiny_llava",
    "tiny_llava_next",
    "tiny_llava_onevision",
    "tiny_model",
    "tiny_qwen2_5_vl",
    "tiny_qwen2_vl",
    "tiny_qwen3_vl",
]

VOCAB_SIZE = 128
#: The image placeholder token of every tiny model (``config.image_token_id``).
IMAGE_TOKEN_ID = 120
#: InternVL's ``<img>`` / ``</img>`` around each image's placeholders (text tokens to the model).
IMG_START_ID, IMG_END_ID = 121, 122
#: Text tokens are drawn from [_TEXT_LOW, _TEXT_HIGH), clear of the special ids above.
_TEXT_LOW, _TEXT_HIGH = 3, 110
#: llava-v1.6 (llava-hf/llava-v1.6-*) anyres resolutions, (height, width).
LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
FAMILIES = ("llava", "llava_next", "internvl")
#: The video placeholder, and Qwen-VL's ``<|vision_start|>`` / ``<|vision_end|>``.
VIDEO_TOKEN_ID, VISION_START_ID, VISION_END_ID = 123, 124, 125
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
#: Families whose prompts may hold videos: a visual of a `make_batch` sample that is
#: (frames, height, width) is a video.
VIDEO_FAMILIES = (*QWEN_FAMILIES, "llava_onevision")
#: Qwen-VL processor resize bounds of the tiny batches, in merged tokens per frame (the
#: processor's min/max pixels over (patch * merge)^2): short prompts.
QWEN_MIN_TOKENS, QWEN_MAX_TOKENS = 1, 144


def _clip_vision() -> CLIPVisionConfig:
    return clip_vision_config(hidden_size=32, layers=2, heads=2, projection_dim=32)


def _text(layers: int = 4, **extra) -> dict:
    """Every tiny text model: width 64, 4 heads (2 key/value heads) of 16."""
    return text_config(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        layers=layers,
        heads=4,
        kv_heads=2,
        max_positions=16384,
        **extra,
    )


def _llama_text() -> LlamaConfig:
    return LlamaConfig(**_text())


def tiny_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    """A llava-1.5-shaped `LlavaForConditionalGeneration`: 576 visual tokens per image
    (vision layer -2, CLS dropped), 4 Llama layers of width 64, eval mode."""
    torch.manual_seed(seed)
    config = llava_config(_clip_vision(), _llama_text(), IMAGE_TOKEN_ID)
    return LlavaForConditionalGeneration(config).eval()


def _mistral_text(sliding_window: int | None) -> MistralConfig:
    # MistralConfig sets no layer_types: every layer uses `sliding_window` (default 4096).
    return MistralConfig(**_text(), sliding_window=sliding_window)


def tiny_llava_next(
    seed: int = 0,
    image_grid_pinpoints: Sequence[Sequence[int]] | None = None,
    sliding_window: int | None = None,
) -> LlavaNextForConditionalGeneration:
    """A llava-v1.6-shaped `LlavaNextForConditionalGeneration` (336 px tiles, anyres over
    ``image_grid_pinpoints``, default `LLAVA_NEXT_PINPOINTS`), 4 Llama layers, eval mode.
    With ``sliding_window``, the text model is Mistral with that attention window
    (llava-v1.6-mistral-style)."""
    torch.manual_seed(seed)
    pinpoints = [list(p) for p in (image_grid_pinpoints or LLAVA_NEXT_PINPOINTS)]
    config = LlavaNextConfig(
        vision_config=_clip_vision(),
        text_config=_llama_text() if sliding_window is None else _mistral_text(sliding_window),
        image_token_index=IMAGE_TOKEN_ID,
        image_grid_pinpoints=pinpoints,
    )
    return LlavaNextForConditionalGeneration(config).eval()


def tiny_internvl(seed: int = 0) -> InternVLForConditionalGeneration:
    """An InternVL3-shaped `InternVLForConditionalGeneration`: 448 px tiles, 14 px
    patches, pixel shuffle 0.5 -> 256 tokens per tile, 2 Qwen2 layers, eval mode."""
    torch.manual_seed(seed)
    vision = InternVLVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    text = Qwen2Config(**_text(layers=2))
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID)
    return InternVLForConditionalGeneration(config).eval()


def _qwen_text() -> dict:
    # head_dim 16: its 8 rotary frequencies split over the (t, h, w) axes 2 : 3 : 3.
    return _text(rope_parameters=mrope_parameters(16, 10000.0))


_QWEN_IDS = dict(
    image_token_id=IMAGE_TOKEN_ID,
    video_token_id=VIDEO_TOKEN_ID,
    vision_start_token_id=VISION_START_ID,
    vision_end_token_id=VISION_END_ID,
)


def tiny_qwen2_vl(seed: int = 0) -> Qwen2VLForConditionalGeneration:
    """A Qwen2-VL-shaped model: 14 px patches, temporal patch 2, 2 x 2 merge, one vision
    block, 4 M-RoPE Qwen2 layers of width 64, eval mode."""
    torch.manual_seed(seed)
    vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14)
    config = Qwen2VLConfig(vision_config=vision, text_config=_qwen_text(), **_QWEN_IDS)
    return Qwen2VLForConditionalGeneration(config).eval()


def tiny_qwen2_5_vl(seed: int = 0, window_size: int = 56) -> Qwen2_5_VLForConditionalGeneration:
    """A Qwen2.5-VL-shaped model: 14 px patches, 2 x 2 merge, a window-attention block
    (``window_size`` px windows) then a full-attention block, 4 M-RoPE layers, eval mode."""
    torch.manual_seed(seed)
    vision = qwen2_5_vl_vision(hidden_size=32, out_hidden_size=64, window_size=window_size)
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=_qwen_text(), **_QWEN_IDS)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_qwen3_vl(seed: int = 0) -> Qwen3VLForConditionalGeneration:
    """A Qwen3-VL-shaped model: 16 px patches, 2 x 2 merge, deepstack features from its
    3 vision blocks added after decoder layers 0, 1, 2 of 4 interleaved-M-RoPE Qwen3
    layers, eval mode."""
    torch.manual_seed(seed)
    vision = dict(
        depth=3,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=16,
        num_position_embeddings=256,
        deepstack_visual_indexes=[0, 1, 2],
    )
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
    text = _text(head_dim=16, rope_parameters=rope)
    config = Qwen3VLConfig(vision_config=vision, text_config=text, **_QWEN_IDS)
    return Qwen3VLForConditionalGeneration(config).eval()


def tiny_llava_onevision(seed: int = 0) -> LlavaOnevisionForConditionalGeneration:
    """A LLaVA-OneVision-shaped model: SigLIP-style tower at 384 px / 14 px (27 x 27 = 729
    tokens per tile, all kept), the default anyres_max_9 pinpoints, videos pooled to
    14 x 14 per frame, 4 Qwen2 layers of width 64, eval mode."""
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(
        image_size=384, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    text = Qwen2Config(**_text())
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID
    )
    return LlavaOnevisionForConditionalGeneration(config).eval()


def tiny_model(family: str, seed: int = 0) -> PreTrainedModel:
    """The tiny model of ``family`` (one of `FAMILIES` or `VIDEO_FAMILIES`)."""
    builders = {
        "llava": tiny_llava,
        "llava_next": tiny_llava_next,
        "internvl": tiny_internvl,
        "qwen2_vl": tiny_qwen2_vl,
        "qwen2_5_vl": tiny_qwen2_5_vl,
        "qwen3_vl": tiny_qwen3_vl,
        "llava_onevision": tiny_llava_onevision,
    }
    if family not in builders:
        raise ValueError(f"family: expected one of {tuple(builders)}, got {family!r}")
    return builders[family](seed)


# ------------------------------------------------------------------ token counts
def _internvl_tiles(image_size: tuple[int, int], min_patches: int, max_patches: int) -> int:
    # The InternVL processor's own count (GotOcr2 image processor, PIL backend: no torchvision).
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )

    processor = GotOcr2ImageProcessorPil(size={"height": 448, "width": 448})
    kwargs = {"min_patches": min_patches, "max_patches": max_patches, "crop_to_patches": True}
    return processor.get_number_of_image_patches(int(image_size[0]), int(image_size[1]), kwargs)


def num_image_tiles(
    model: PreTrainedModel, image_size: tuple[int, int], min_patches: int = 1, max_patches: int = 12
) -> int:
    """Rows of ``pixel_values`` one image of ``image_size`` (height, width) takes:
    1 for LLaVA; base + anyres tiles for LLaVA-NeXT; tiles (+ thumbnail) for InternVL."""
    kind = model.config.model_type
    if kind == "llava":
        return 1
    if kind == "llava_next":
        return image_size_to_num_patches(
            list(image_size), model.config.image_grid_pinpoints, model.config.vision_config.image_size
        )
    if kind == "internvl":
        return _internvl_tiles(image_size, min_patches, max_patches)
    raise ValueError(f"model: expected one of {FAMILIES}, got model_type {kind!r}")


def num_image_tokens(
    model: PreTrainedModel, image_size: tuple[int, int], min_patches: int = 1, max_patches: int = 12
) -> int:
    """Placeholder tokens one image of ``image_size`` (height, width) needs, computed by
    transformers: LLaVA-NeXT runs the model's own ``pack_image_features`` on empty features."""
    kind = model.config.model_type
    if kind == "llava":
        side = model.config.vision_config.image_size // model.config.vision_config.patch_size
        return side * side
    if kind == "llava_next":
        tiles = num_image_tiles(model, image_size)
        side = model.config.vision_config.image_size // model.config.vision_config.patch_size
        features = torch.zeros(tiles, side * side, 1)
        _, lens = model.model.pack_image_features(
            [features], torch.tensor([list(image_size)]), "default", image_newline=torch.zeros(1)
        )
        return int(lens[0])
    if kind == "internvl":
        return 256 * _internvl_tiles(image_size, min_patches, max_patches)
    raise ValueError(f"model: expected one of {FAMILIES}, got model_type {kind!r}")


# ------------------------------------------------------------------------ batches
def _random_text(generator: torch.Generator, text_len: int) -> list[int]:
    """A run of text tokens of seeded random length in ``[1, text_len]``."""
    n = int(torch.randint(1, text_len + 1, (1,), generator=generator))
    return torch.randint(_TEXT_LOW, _TEXT_HIGH, (n,), generator=generator).tolist()


def _left_padded(prompts: list[list[int]]) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask`` ``(B, L)`` of the prompts, left-padded with
    `PAD_ID` as the processors pad for generation."""
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for b, ids in enumerate(prompts):
        input_ids[b, length - len(ids) :] = torch.tensor(ids)
        attention_mask[b, length - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@dataclass
class TinyBatch:
    """A padded batch of prompts for a tiny model.

    Attributes:
        inputs: keyword arguments for ``model(**inputs)`` / ``model.generate(**inputs)``:
            ``input_ids (B, L)``, ``attention_mask (B, L)`` (left padding), and when the
            batch has images ``pixel_values`` (LLaVA ``(I, 3, 336, 336)``; LLaVA-NeXT
            ``(I, T_max, 3, 336, 336)`` zero-padded over tiles, with ``image_sizes (I, 2)``;
            InternVL ``(T, 3, 448, 448)``, all tiles of all images).
        image_sizes: (height, width) of each image, per sample.
        num_visual: placeholder tokens per sample.
        extra: what only `tokenprune.adapters.layout` takes (see `layout_inputs`).
    """

    inputs: dict[str, Tensor]
    image_sizes: list[list[tuple[int, int]]]
    num_visual: list[int]
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def layout_inputs(self) -> dict[str, object]:
        """``inputs`` plus what `tokenprune.adapters.layout` may use beyond the model's
        own arguments: for InternVL, ``image_sizes`` (flat list of (height, width) of
        every image in batch order) and the processor's ``min_patches`` / ``max_patches``."""
        return {**self.inputs, **self.extra}


def llava_singles(inputs: dict[str, Tensor], image_sizes: Sequence[Sequence[tuple]]) -> list[dict[str, Tensor]]:
    """Each row of a padded LLaVA batch (either padding side) alone, unpadded: its real
    tokens and the ``pixel_values`` rows of its images (one per entry of ``image_sizes[b]``)."""
    mask = inputs["attention_mask"].bool()
    singles, first = [], 0
    for b, images in enumerate(image_sizes):
        row = inputs["input_ids"][b][mask[b]][None]
        pixels = inputs["pixel_values"][first : first + len(images)]
        singles.append({"input_ids": row, "attention_mask": torch.ones_like(row), "pixel_values": pixels})
        first += len(images)
    return singles


def make_batch(
    model: PreTrainedModel,
    images: Sequence[Sequence[tuple[int, int]]],
    *,
    text_len: int = 4,
    seed: int = 0,
    min_patches: int = 1,
    max_patches: int = 12,
) -> TinyBatch:
    """A left-padded batch: sample ``b`` has one image per entry of ``images[b]``.

    Each prompt is ``BOS, text, [image, text]...`` where every text run has a seeded
    random length in ``[1, text_len]`` and an image is its placeholder tokens (InternVL:
    wrapped in ``<img>`` / ``</img>`` like its processor). ``pixel_values`` are seeded
    standard normal noise.

    Args:
        model: one of the tiny models (or any LLaVA / LLaVA-NeXT / InternVL model whose
            ``config.image_token_id`` is `IMAGE_TOKEN_ID`-compatible with the vocabulary).
        images: per sample, the (height, width) of each of its images (may be empty).
        text_len: the longest text run.
        seed: seeds text tokens, run lengths and pixels.
        min_patches, max_patches: InternVL processor tiling limits.
    """
    kind = model.config.model_type
    if kind in VIDEO_FAMILIES:
        return _video_family_batch(model, images, text_len=text_len, seed=seed)
    image_token = model.config.image_token_id
    generator = torch.Generator().manual_seed(seed)

    text = partial(_random_text, generator, text_len)

    prompts, counts, sizes = [], [], []
    for sample in images:
        ids = [BOS_ID, *text()]
        count = 0
        for size in sample:
            n = num_image_tokens(model, size, min_patches, max_patches)
            slots = [image_token] * n
            ids += ([IMG_START_ID, *slots, IMG_END_ID] if kind == "internvl" else slots) + text()
            count += n
        prompts.append(ids)
        counts.append(count)
        sizes.append([(int(h), int(w)) for h, w in sample])

    inputs = _left_padded(prompts)

    flat = [s for sample in sizes for s in sample]
    extra: dict[str, object] = {}
    if flat:
        side = model.config.vision_config.image_size
        side = side[0] if isinstance(side, (tuple, list)) else side
        tiles = [num_image_tiles(model, s, min_patches, max_patches) for s in flat]
        if kind == "llava":
            shape = (len(flat), 3, side, side)
        elif kind == "llava_next":
            shape = (len(flat), max(tiles), 3, side, side)
            inputs["image_sizes"] = torch.tensor([list(s) for s in flat], dtype=torch.long)
        else:
            shape = (sum(tiles), 3, side, side)
            extra = {"image_sizes": flat, "min_patches": min_patches, "max_patches": max_patches}
        inputs["pixel_values"] = torch.randn(shape, generator=generator)
        if kind == "llava_next":
            # Padding tiles beyond an image's own count are zeros, as the processor pads.
            for i, t in enumerate(tiles):
                inputs["pixel_values"][i, t:] = 0
    return TinyBatch(inputs=inputs, image_sizes=sizes, num_visual=counts, extra=extra)


# ------------------------------------------------- Qwen-VL and LLaVA-OneVision batches
def qwen_grid(model: PreTrainedModel, size: tuple[int, int], frames: int = 1) -> tuple[int, int, int]:
    """(t, h, w) patches of an image (``frames=1``) or video of ``frames`` frames of
    ``size`` (height, width) px, as the Qwen-VL processors resize it (transformers'
    ``smart_resize`` within `QWEN_MIN_TOKENS`..`QWEN_MAX_TOKENS` merged tokens; frames
    padded to a multiple of the temporal patch)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    vision = model.config.vision_config
    factor = vision.patch_size * vision.spatial_merge_size
    height, width = smart_resize(
        int(size[0]), int(size[1]), factor, QWEN_MIN_TOKENS * factor**2, QWEN_MAX_TOKENS * factor**2
    )
    t = -(-int(frames) // vision.temporal_patch_size)
    return t, height // vision.patch_size, width // vision.patch_size


def _onevision_image_tokens(model: PreTrainedModel, size: tuple[int, int], patched: bool) -> tuple[int, int]:
    """(tiles, placeholder tokens) of one LLaVA-OneVision image, from the model's own
    ``pack_image_features`` on empty features."""
    config = model.config
    side = config.vision_config.image_size // config.vision_config.patch_size
    tiles = image_size_to_num_patches(list(size), config.image_grid_pinpoints, config.vision_config.image_size)
    used = tiles if patched else 1
    features = torch.zeros(used, side * side, 1)
    _, lens = model.model.pack_image_features(
        [features], torch.tensor([list(size)]), image_newline=torch.zeros(1),
        vision_aspect_ratio=config.vision_aspect_ratio,
    )
    return tiles, int(lens[0])


def _video_family_batch(
    model: PreTrainedModel, visuals: Sequence[Sequence[tuple[int, ...]]], *, text_len: int, seed: int
) -> TinyBatch:
    """`make_batch` for Qwen-VL and LLaVA-OneVision: a visual (height, width) is an image,
    (frames, height, width) a video (Qwen3-VL: a timestamp of text tokens before each
    temporal group, as its processor writes)."""
    kind = model.config.model_type
    generator = torch.Generator().manual_seed(seed)

    text = partial(_random_text, generator, text_len)

    qwen = kind in QWEN_FAMILIES
    if qwen:
        vision = model.config.vision_config
        merge2 = vision.spatial_merge_size**2
        patch_width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    prompts, counts, sizes = [], [], []
    image_grids, video_grids, image_sizes, video_frames, tiles = [], [], [], [], []
    for sample in visuals:
        ids = [BOS_ID, *text()]
        count = 0
        n_images = sum(len(v) == 2 for v in sample)
        for visual in sample:
            is_video = len(visual) == 3
            frames, size = (visual[0], visual[1:]) if is_video else (1, visual)
            token = VIDEO_TOKEN_ID if is_video else IMAGE_TOKEN_ID
            if qwen:
                grid = qwen_grid(model, size, frames)
                (video_grids if is_video else image_grids).append(grid)
                per_frame = grid[1] * grid[2] // merge2
                groups = grid[0] if kind == "qwen3_vl" and is_video else 1
                for _ in range(groups):
                    stamp = text() if groups > 1 else []
                    run = [token] * (per_frame * grid[0] // groups)
                    ids += [*stamp, VISION_START_ID, *run, VISION_END_ID]
                    count += len(run)
            elif is_video:
                side = -(-(model.config.vision_config.image_size // model.config.vision_config.patch_size) // 2)
                video_frames.append(int(frames))
                run = [token] * (int(frames) * side * side + 1)
                ids += run
                count += len(run)
            else:
                used, n = _onevision_image_tokens(model, size, patched=n_images == 1)
                image_sizes.append([int(size[0]), int(size[1])])
                tiles.append(used if n_images == 1 else 1)
                ids += [token] * n
                count += n
            ids += text()
        prompts.append(ids)
        counts.append(count)
        sizes.append([tuple(int(x) for x in v) for v in sample])

    inputs = _left_padded(prompts)
    if qwen:
        input_ids = inputs["input_ids"]
        inputs["mm_token_type_ids"] = (input_ids == IMAGE_TOKEN_ID).long() + 2 * (input_ids == VIDEO_TOKEN_ID).long()
        if image_grids:
            grid = torch.tensor(image_grids, dtype=torch.long)
            inputs["image_grid_thw"] = grid
            inputs["pixel_values"] = torch.randn(int(grid.prod(-1).sum()), patch_width, generator=generator)
        if video_grids:
            grid = torch.tensor(video_grids, dtype=torch.long)
            inputs["video_grid_thw"] = grid
            inputs["pixel_values_videos"] = torch.randn(int(grid.prod(-1).sum()), patch_width, generator=generator)
    else:
        side = model.config.vision_config.image_size
        if image_sizes:
            pixels = torch.randn(len(image_sizes), max(tiles), 3, side, side, generator=generator)
            for i, t in enumerate(tiles):
                pixels[i, t:] = 0
            inputs["pixel_values"] = pixels
            inputs["image_sizes"] = torch.tensor(image_sizes, dtype=torch.long)
            inputs["batch_num_images"] = torch.tensor([sum(len(v) == 2 for v in s) for s in visuals])
        if video_frames:
            if len(set(video_frames)) != 1:
                raise ValueError(f"visuals: LLaVA-OneVision videos of one batch need one frame count, got {video_frames}")
            inputs["pixel_values_videos"] = torch.randn(
                len(video_frames), video_frames[0], 3, side, side, generator=generator
            )
    return TinyBatch(inputs=inputs, image_sizes=sizes, num_visual=counts)
