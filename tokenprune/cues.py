"""What strategies may read: the `Cues` of one prefill for B samples of N candidate tokens."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from tokenprune._batch_index import sample_slice
from tokenprune.errors import CueError
from tokenprune.layout import Layout

__all__ = ["ATTENTION_CUES", "CUE_NAMES", "Cues"]

#: The built-in cue names (fields of `Cues`); plugins add more (``tokenprune.available("cue")``).
CUE_NAMES = ("attention", "keys", "hidden", "text_attention", "self_attention")
#: The cues taken from the attention of the layer before the pruning layer.
ATTENTION_CUES = frozenset({"attention", "text_attention", "self_attention"})


@dataclass(frozen=True, eq=False)
class Cues:
    """Inputs of a pruner. Every tensor cue is optional; a strategy that needs a missing
    one raises `CueError` naming it.

    Attributes:
        layout: where the N candidate tokens sit (`Layout`, batch B).
        attention: ``(B, N)`` attention of the last prompt token to each candidate at
            the layer before pruning, post-softmax, mean over heads (FastV's cue).
        keys: ``(B, N, D)`` key vectors of the candidates at the pruning layer (heads
            concatenated); similarity strategies use their cosine.
        hidden: ``(B, N, H)`` hidden states entering the pruning layer.
        text_attention: ``(B, N)`` mean attention of the text tokens to each candidate
            (FitPrune's image-text cross attention).
        self_attention: ``(B, N)`` mean attention of the candidates to each candidate
            (FitPrune's image self attention).
        generator: random source of random strategies; seed it for reproducible results.
        extra: further cues by name (those of plugin cue sources, e.g. ``{"my_cue": t}``),
            each a tensor whose first dimension is B; read them with ``cues.require(name,
            by)`` or as attributes (``cues.my_cue``).
    """

    layout: Layout
    attention: Tensor | None = None
    keys: Tensor | None = None
    hidden: Tensor | None = None
    text_attention: Tensor | None = None
    self_attention: Tensor | None = None
    generator: torch.Generator | None = None
    extra: Mapping[str, Tensor] = field(default_factory=dict)

    @classmethod
    def trusted(
        cls,
        layout: Layout,
        generator: torch.Generator | None = None,
        extra: Mapping[str, Tensor] | None = None,
        **tensors: Tensor,
    ) -> Cues:
        """Build without checks: for the engine, whose cues are shaped by construction."""
        cues = object.__new__(cls)
        values: dict[str, Any] = {name: None for name in CUE_NAMES}
        values.update(tensors, layout=layout, generator=generator)
        values["extra"] = MappingProxyType(dict(extra or {}))
        for name, value in values.items():
            object.__setattr__(cues, name, value)
        return cues

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: the extra cues.
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"'Cues' object has no attribute {name!r}")

    def __post_init__(self) -> None:
        if not isinstance(self.layout, Layout):
            raise CueError(f"layout: expected a tokenprune.Layout, got {type(self.layout).__name__}")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise CueError(
                f"generator: expected a torch.Generator or None, got {type(self.generator).__name__}"
            )
        b, n = self.layout.batch_size, self.layout.num_tokens
        for name in ("attention", "text_attention", "self_attention"):
            _check_tensor(name, getattr(self, name), (b, n), self.layout.device)
        for name in ("keys", "hidden"):
            _check_tensor(name, getattr(self, name), (b, n, None), self.layout.device)
        if not isinstance(self.extra, Mapping):
            raise CueError(f"extra: expected a mapping of cue name to tensor, got {type(self.extra).__name__}")
        for name, value in self.extra.items():
            if not isinstance(name, str) or name in CUE_NAMES or name in {f.name for f in fields(self)}:
                raise CueError(f"extra: expected names other than Cues fields, got {name!r}")
            if not isinstance(value, Tensor) or value.dim() < 1 or value.shape[0] != b:
                raise CueError(
                    f"extra[{name!r}]: expected a tensor whose first dimension is B={b}, got "
                    f"{tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__}"
                )
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    @property
    def batch_size(self) -> int:
        return self.layout.batch_size

    @property
    def num_tokens(self) -> int:
        return self.layout.num_tokens

    @property
    def device(self) -> torch.device:
        return self.layout.device

    def available(self) -> frozenset[str]:
        """Names of the tensor cues that are present."""
        builtin = {name for name in CUE_NAMES if getattr(self, name) is not None}
        return frozenset(builtin | set(self.extra))

    def get(self, name: str) -> Tensor | None:
        """The cue ``name`` (built-in or extra), or None."""
        if name in CUE_NAMES:
            return getattr(self, name)
        return self.extra.get(name)

    def require(self, name: str, by: str) -> Tensor:
        """The cue ``name``, or a `CueError` saying that strategy ``by`` needs it."""
        value = self.get(name)
        if value is None:
            present = sorted(self.available()) or ["none"]
            raise CueError(
                f"{name}: strategy '{by}' needs the '{name}' cue, but Cues has only "
                f"{', '.join(present)}; pass {name}=... to Cues (the engine captures it "
                f"automatically when a pruner requires it)"
            )
        return value

    def __getitem__(self, index: int | slice) -> Cues:
        """Sample ``index`` (kept as a batch of one) or a slice of samples."""
        index = sample_slice(index, self.batch_size)
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (Tensor, Layout)):
                value = value[index]
            values[f.name] = value
        values["extra"] = {name: t[index] for name, t in self.extra.items()}
        return Cues.trusted(**values)


def _check_tensor(name: str, t: Tensor | None, shape: tuple, device: torch.device) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise CueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    expected = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        raise CueError(f"{name}: expected shape {expected} to match the layout, got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise CueError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if t.device != device:
        raise CueError(f"{name}: expected device {device} (the layout's), got {t.device}")
