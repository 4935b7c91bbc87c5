"""Built-in adapters, registered through the same hook as third-party ones."""

from __future__ import annotations

from tokenprune.adapters import internvl, llava, llava_next
from tokenprune.hookspecs import hookimpl
from tokenprune.registry import Adapter


@hookimpl
def tokenprune_adapters() -> list[Adapter]:
    return [llava.ADAPTER, llava_next.ADAPTER, internvl.ADAPTER]
