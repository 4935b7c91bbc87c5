"""Reading model inputs and configs the way transformers' VLMs do, with clear errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from tokenprune._values import is_int
from tokenprune.errors import LayoutError, UnsupportedModelError
from tokenprune.layout import Layout

__all__ = [
    "assign_images",
    "image_or_video_mask",
    "image_sizes_of",
    "image_token_id",
    "input_ids_of",
    "model_type",
    "no_visual_tokens",
    "pair",
    "visual_token_mask",
]


def model_type(model: Any) -> str | None:
    """``model.config.model_type``, or None for objects without a config."""
    return getattr(getattr(model, "config", None), "model_type", None)


def image_or_video_mask(model: Any, input_ids: Tensor) -> Tensor:
    """``(B, L)`` bool: the image and the video placeholders (``config.image_token_id``,
    ``config.video_token_id``) of ``input_ids (B, L)``."""
    config = model.config
    return (input_ids == config.image_token_id) | (input_ids == config.video_token_id)


def image_token_id(model: Any) -> int:
    """The image placeholder id: ``config.image_token_id`` (LLaVA and LLaVA-NeXT store it
    as ``image_token_index`` and alias the other name)."""
    config = getattr(model, "config", None)
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise UnsupportedModelError(
        f"model: expected config.image_token_id or config.image_token_index on "
        f"{type(model).__name__}, got neither"
    )


def visual_token_mask(model: Any, input_ids: Tensor) -> Tensor:
    """``(B, L)`` bool: which positions of ``input_ids (B, L)`` hold the model's image
    placeholder token, i.e. where the model scatters its visual features."""
    return input_ids == image_token_id(model)


def input_ids_of(inputs: dict[str, Any]) -> Tensor:
    """``input_ids (B, L)`` from model inputs, checked."""
    input_ids = inputs.get("input_ids")
    if not isinstance(input_ids, Tensor):
        raise LayoutError(
            "input_ids: expected a (B, L) tensor of token ids (layouts are read from the "
            f"image placeholders in input_ids; inputs_embeds alone is not enough), got "
            f"{type(input_ids).__name__}"
        )
    if input_ids.dim() != 2:
        raise LayoutError(f"input_ids: expected shape (B, L), got {tuple(input_ids.shape)}")
    return input_ids


def pair(value: int | Sequence[int]) -> tuple[int, int]:
    """A config size that is an int or a (height, width) pair, as a pair."""
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)


def image_sizes_of(value: Any, family: str) -> list[tuple[int, int]]:
    """``image_sizes`` (a ``(I, 2)`` tensor or a sequence of (height, width)) as a list."""
    if type(value).__module__ == "numpy":  # a processor's return_tensors="np"
        value = torch.as_tensor(value)
    if isinstance(value, Tensor):
        if value.dim() != 2 or value.shape[1] != 2 or value.is_floating_point():
            raise LayoutError(
                f"image_sizes: expected an integer tensor of shape (I, 2), one (height, width) "
                f"per {family} image, got {value.dtype} {tuple(value.shape)}"
            )
        rows = value.tolist()
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        rows = list(value)
    else:
        raise LayoutError(
            f"image_sizes: expected an (I, 2) tensor or a sequence of (height, width), one "
            f"per {family} image, got {type(value).__name__}"
        )
    sizes = []
    for i, row in enumerate(rows):
        if isinstance(row, Tensor) or type(row).__module__ == "numpy":
            row = row.tolist()
        if (
            not isinstance(row, Sequence)
            or len(row) != 2
            or not all(is_int(x) and x >= 1 for x in row)
        ):
            hint = " (for a single image, pass [(height, width)])" if not isinstance(row, Sequence) else ""
            raise LayoutError(
                f"image_sizes[{i}]: expected the (height, width) of a {family} image, two ints "
                f">= 1, got {row!r}{hint}"
            )
        sizes.append((int(row[0]), int(row[1])))
    return sizes


def assign_images(
    counts: list[int],
    sizes: list[tuple[int, int]],
    tokens_per_image: Callable[[tuple[int, int]], int],
    family: str,
) -> list[list[int]]:
    """Split the batch's images (``image_sizes`` order) among the samples, the way the
    model's ``masked_scatter`` fills placeholders in ``(B, L)`` order.

    Args:
        counts: placeholder tokens per sample.
        sizes: (height, width) of every image of the batch, in order.
        tokens_per_image: placeholders one image of a given size takes.

    Returns:
        Per sample, the indices into ``sizes`` of its images.

    ``generate(num_beams=r)`` (or ``num_return_sequences``) repeats every sample r times
    but leaves an extra ``image_sizes`` list as it is and repeats each row of a tensor r
    times in place; both are recognised when the direct split fails.
    """
    try:
        return _assign_in_order(counts, sizes, tokens_per_image, family)
    except LayoutError as direct:
        for repeats in range(2, len(counts) + 1):
            found = _assign_expanded(counts, sizes, tokens_per_image, family, repeats)
            if found is not None:
                return found
        raise direct


def _assign_expanded(
    counts: list[int],
    sizes: list[tuple[int, int]],
    tokens_per_image: Callable[[tuple[int, int]], int],
    family: str,
    repeats: int,
) -> list[list[int]] | None:
    """`assign_images` for a batch whose samples each appear ``repeats`` times in a row."""
    if len(counts) % repeats or any(counts[i] != counts[i - i % repeats] for i in range(len(counts))):
        return None
    originals = counts[::repeats]
    # image_sizes as passed (a list), or each row repeated in place (a tensor).
    candidates = [list(range(len(sizes)))]
    if len(sizes) % repeats == 0 and all(sizes[i] == sizes[i - i % repeats] for i in range(len(sizes))):
        candidates.append(list(range(0, len(sizes), repeats)))
    for index in candidates:
        try:
            per_original = _assign_in_order(originals, [sizes[i] for i in index], tokens_per_image, family)
        except LayoutError:
            continue
        return [[index[i] for i in mine] for mine in per_original for _ in range(repeats)]
    return None


def _assign_in_order(
    counts: list[int],
    sizes: list[tuple[int, int]],
    tokens_per_image: Callable[[tuple[int, int]], int],
    family: str,
) -> list[list[int]]:
    per_sample: list[list[int]] = []
    image = 0
    for b, count in enumerate(counts):
        mine: list[int] = []
        total = 0
        while total < count and image < len(sizes):
            total += tokens_per_image(sizes[image])
            mine.append(image)
            image += 1
        if total != count:
            expected = [tokens_per_image(sizes[i]) for i in mine]
            raise LayoutError(
                f"input_ids / image_sizes: sample {b} has {count} image tokens, but {family} "
                f"images {mine} of image_sizes ({[sizes[i] for i in mine]}) take "
                f"{expected} = {total} tokens"
            )
        per_sample.append(mine)
    if image != len(sizes):
        raise LayoutError(
            f"image_sizes: expected {image} images (the image tokens of input_ids), "
            f"got {len(sizes)}"
        )
    return per_sample


def no_visual_tokens(input_ids: Tensor) -> Layout:
    """The layout of a batch without visual tokens: N = 0, nothing to prune."""
    return Layout.empty(batch=input_ids.shape[0], device=input_ids.device)
