"""The ``lmms_eval.models`` entry point: lmms-eval calls `manifests` when it builds its
model registry. Importing this module does not import lmms-eval."""

from __future__ import annotations

from typing import Any

__all__ = ["manifests"]


def manifests() -> list[Any]:
    """``--model tokenprune``: `tokenprune.lmms.model.TokenPruneChat` by default,
    `tokenprune.lmms.model.TokenPruneSimple` with ``--force_simple``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(
            model_id="tokenprune",
            chat_class_path="tokenprune.lmms.model.TokenPruneChat",
            simple_class_path="tokenprune.lmms.model.TokenPruneSimple",
        )
    ]
