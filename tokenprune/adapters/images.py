"""Recover the image inputs that ``generate()`` encodes before the prefill.

transformers 5.x ``generate()`` runs ``model.base_model.get_image_features(...)`` once,
drops ``pixel_values`` and ``image_sizes`` from the forward inputs and passes the encoded
``mm_encoder_outputs`` instead (repeated for beams and ``num_return_sequences``). The
adapters need ``image_sizes`` (LLaVA-NeXT's grids depend on them), so this records each
call's ``image_sizes`` next to the per-image features it produced, and maps the features
the prefill receives back to their images by identity. The same works for any modality
and per-visual input (Qwen-VL: ``get_video_features`` and ``video_grid_thw``).

The recorder shadows ``get_image_features`` on the base model instance with a wrapper of
the same signature (``generate()`` picks its arguments by signature); closing deletes
the instance attribute, leaving the class method in place.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import torch
from torch import Tensor, nn

from tokenprune.errors import LayoutError

__all__ = ["ImageInputs"]

class ImageInputs:
    """Records ``get_{modality}_features`` calls of ``model.base_model`` while open, and
    the per-visual input ``key`` (one row per visual) they were given."""

    def __init__(self, model: nn.Module, modality: str = "image", key: str = "image_sizes") -> None:
        self.base = getattr(model, "base_model", model)
        self.modality, self.key = modality, key
        self._method = f"get_{modality}_features"
        self._sizes: dict[int, Tensor] = {}  # id(feature tensor) -> (2,) image size
        self._features: list[Tensor] = []  # keeps the recorded tensors (and their ids) alive
        self._installed = False

    def open(self) -> None:
        original = getattr(self.base, self._method, None)
        if original is None or self._method in vars(self.base):
            return

        owner = threading.get_ident()  # the block's thread: other threads' calls are not pruned

        @functools.wraps(original)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if threading.get_ident() == owner:
                self._record(kwargs.get(self.key), out)
            return out

        setattr(self.base, self._method, recorded)
        self._installed = True

    def close(self) -> None:
        if self._installed:
            vars(self.base).pop(self._method, None)
            self._installed = False
        self.clear()

    def clear(self) -> None:
        self._sizes.clear()
        self._features.clear()

    def _record(self, image_sizes: Tensor | None, out: Any) -> None:
        features = getattr(out, "pooler_output", None)
        # A call without the key (Qwen3-VL's get_video_features calls get_image_features
        # positionally) keeps the last record.
        if image_sizes is None or not isinstance(features, (list, tuple)):
            return
        self.clear()
        if len(features) != len(image_sizes):
            return
        for feature, size in zip(features, image_sizes):
            self._sizes[id(feature)] = torch.as_tensor(size)
            self._features.append(feature)

    def image_sizes(self, mm_encoder_outputs: Any) -> Tensor | None:
        """``(I, 2)`` long (or ``(I, ...)``: the recorded ``key``): the size of each image
        whose features ``mm_encoder_outputs`` holds, in its (possibly repeated) order; None
        when there is nothing to map."""
        image = mm_encoder_outputs.get(self.modality) if isinstance(mm_encoder_outputs, dict) else None
        features = getattr(image, "pooler_output", None)
        if not self._sizes or not isinstance(features, (list, tuple)):
            return None
        sizes = [self._sizes.get(id(feature)) for feature in features]
        if any(size is None for size in sizes):
            raise LayoutError(
                f"mm_encoder_outputs: expected the {self.modality} features {self._method} produced "
                f"in this generate() call (to recover {self.key}), got other tensors; pass "
                f"the pixels and {self.key} to the model instead of pre-encoded features"
            )
        return torch.stack(sizes).long()

    def recover(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """``inputs`` with ``key`` (``image_sizes``) restored when ``generate()`` replaced
        the pixels by ``mm_encoder_outputs``."""
        if inputs.get(self.key) is None and inputs.get("mm_encoder_outputs"):
            sizes = self.image_sizes(inputs["mm_encoder_outputs"])
            if sizes is not None:
                return {**inputs, self.key: sizes}
        return inputs
