"""The ``--model_args`` of ``--model tokenprune``: which lmms-eval model to wrap and how to
prune it, checked before any model is loaded.

lmms-eval splits ``--model_args`` at commas outside quotes and brackets and turns each
``key=value`` into a bool, int, float or string (``"0.1"`` -> 0.1, ``"57"`` -> 57,
``"true"`` -> True). A pruner is named in one of three ways:

- ``recipe=adaptprune``: a registered recipe (no commas, no quotes needed);
- ``spec="attention | gaussian(sigma=12) | soft_nms(radius=5, spatial=1.5)"``: a spec
  string in double or single quotes, so that its commas stay inside it (the quotes are
  removed here); in a shell, wrap the whole ``--model_args`` in the other kind of quotes;
- ``spec_file=PATH``: a text file holding the spec string (any characters, any lmms-eval
  version).

    >>> options = parse({"base": "llava_hf", "pretrained": "ckpt", "recipe": "adaptprune",
    ...                  "keep": 0.1, "layer": 2})
    >>> options.spec, options.keep, options.layer, options.base_args
    ('adaptprune', 0.1, 2, {'pretrained': 'ckpt'})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenprune.errors import SpecError

__all__ = ["BASES", "PruneOptions", "parse"]

#: lmms-eval's own Hugging Face model classes that ``base=`` may name, and the transformers
#: families each serves.
BASES: dict[str, str] = {
    "llava_hf": "LLaVA-1.5 and LLaVA-NeXT (LlavaForConditionalGeneration, LlavaNextForConditionalGeneration)",
    "internvl_hf": "InternVL (InternVLForConditionalGeneration)",
    "qwen2_5_vl": "Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration)",
}
#: The keys this plugin reads; every other key goes to the base model class.
OWN_KEYS = ("base", "recipe", "spec", "spec_file", "keep", "layer", "positions", "seed")


@dataclass(frozen=True)
class PruneOptions:
    """Checked ``--model_args``.

    Attributes:
        base: the lmms-eval model id to wrap, a key of `BASES`.
        spec: recipe name or spec string for `tokenprune.prune`.
        keep: kept fraction in (0, 1] or count >= 1 of each sample's visual tokens.
        layer: prune point, a decoder layer index >= 0 or ``"input"``.
        positions: ``"original"`` or ``"compact"``.
        seed: seed of the generator random strategies draw from.
        base_args: the remaining arguments, passed to the base class unchanged.
    """

    base: str
    spec: str
    keep: float | int
    layer: int | str
    positions: str = "original"
    seed: int = 0
    base_args: dict[str, Any] = field(default_factory=dict)


def parse(args: dict[str, Any]) -> PruneOptions:
    """Check ``args`` (``--model_args`` as lmms-eval parsed them) and split off this
    plugin's own keys. Raises `SpecError` naming the argument, what was expected and what
    was received; nothing is loaded before the check passes."""
    args = dict(args)
    base = args.pop("base", None)
    if base not in BASES:
        raise SpecError(f"base: expected one of {', '.join(sorted(BASES))}, got {base!r}")
    spec = _spec(args.pop("recipe", None), args.pop("spec", None), args.pop("spec_file", None))
    keep = _keep(args.pop("keep", None))
    layer = _layer(args.pop("layer", 2))
    positions = args.pop("positions", "original")
    if positions not in ("original", "compact"):
        raise SpecError(f"positions: expected 'original' or 'compact', got {positions!r}")
    seed = args.pop("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f"seed: expected an int >= 0, got {seed!r}")
    _check_pruner(spec, keep)
    if "pretrained" not in args:
        raise SpecError("pretrained: expected the checkpoint (a folder or hub id) of the base model, got nothing")
    return PruneOptions(base, spec, keep, layer, positions, seed, args)


def _spec(recipe: Any, spec: Any, spec_file: Any) -> str:
    given = {k: v for k, v in (("recipe", recipe), ("spec", spec), ("spec_file", spec_file)) if v is not None}
    if len(given) != 1:
        raise SpecError(
            "recipe / spec / spec_file: expected exactly one of them (a recipe name, a quoted "
            f"spec string, or a file holding one), got {sorted(given) or 'none'}"
        )
    (key, value), = given.items()
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{key}: expected a non-empty string, got {value!r}")
    if key == "spec_file":
        path = Path(value)
        if not path.is_file():
            raise SpecError(f"spec_file: expected a readable file holding a spec string, got {value!r}")
        value = path.read_text()
    elif key == "spec":
        value = _unquote(value)
    if key == "recipe" and any(c in value for c in "|(),=\"'"):
        raise SpecError(f"recipe: expected a recipe name such as 'adaptprune' (use spec= for a spec string), got {value!r}")
    text = " ".join(value.split())
    if not text:
        raise SpecError(f"{key}: expected a non-empty spec, got {value!r}")
    return text


def _check_pruner(spec: str, keep: float | int) -> None:
    # builds the pruner once so that an unknown recipe or a bad spec fails before loading
    from tokenprune.pruner import pruner

    pruner(spec, keep=keep)


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if text[:1] in "\"'" or text[-1:] in "\"'":
        raise SpecError(f"spec: expected a string in matching quotes, got {text!r}")
    return text


def _keep(keep: Any) -> float | int:
    if keep is None:
        raise SpecError("keep: expected a fraction in (0, 1] such as 0.1 or a count >= 1 such as 57, got nothing")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise SpecError(f"keep: expected a fraction in (0, 1] such as 0.1 or a count >= 1 such as 57, got {keep!r}")
    if isinstance(keep, int) and keep < 1:
        raise SpecError(f"keep: expected a count >= 1 (or a fraction written with a point, such as 1.0), got {keep!r}")
    if isinstance(keep, float) and not 0.0 < keep <= 1.0:
        raise SpecError(f"keep: expected a fraction in (0, 1] (or a whole count such as 57), got {keep!r}")
    return keep


def _layer(layer: Any) -> int | str:
    if layer == "input":
        return layer
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise SpecError(f"layer: expected a decoder layer index >= 0 or 'input', got {layer!r}")
    return layer
