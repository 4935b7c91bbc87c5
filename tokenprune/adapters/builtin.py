"""Built-in adapters, registered through the same hooks as third-party ones."""

from __future__ import annotations

from typing import Any

from tokenprune.adapters.base import Adapter
from tokenprune.adapters.internvl import InternVL
from tokenprune.adapters.llava import Llava
from tokenprune.adapters.llava_next import LlavaNext
from tokenprune.adapters.llava_onevision import LlavaOnevision
from tokenprune.adapters.qwen_vl import QwenVL
from tokenprune.hookspecs import hookimpl


@hookimpl
def tokenprune_adapters() -> list[type[Adapter]]:
    return [Llava, LlavaNext, InternVL, QwenVL, LlavaOnevision]


@hookimpl(trylast=True)
def tokenprune_adapter(model: Any) -> Adapter | None:
    """The default choice: the one registered adapter class whose ``matches`` is True."""
    from tokenprune.adapters import matching_adapter

    return matching_adapter(model)
