"""Parse spec strings: ``"score | transform(k=v) | ... | selector(k=v)"``."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from tokenprune.errors import SpecError

__all__ = ["StageSpec", "parse_spec"]


@dataclass(frozen=True)
class StageSpec:
    """One ``name(k=v, ...)`` stage of a spec string."""

    name: str
    kwargs: dict[str, object] = field(default_factory=dict)


def parse_spec(spec: str) -> list[StageSpec]:
    """Split ``spec`` at ``|`` and parse each stage as ``name`` or ``name(k=v, ...)``.

    Values are Python literals (numbers, strings, None, True/False, tuples, lists).

    Raises:
        SpecError: empty stages, positional arguments, repeated keywords, non-literal
            values, bad syntax.
    """
    if not isinstance(spec, str):
        raise SpecError(f"spec: expected a string, got {type(spec).__name__}")
    stages = []
    for i, text in enumerate(spec.split("|")):
        text = text.strip()
        if not text:
            raise SpecError(f"spec: stage {i} of {spec!r} is empty (expected 'name' or 'name(k=v)')")
        try:
            node = ast.parse(text, mode="eval").body
        except SyntaxError:
            raise SpecError(
                f"spec: stage {i} {text!r} is not 'name' or 'name(key=value, ...)'"
            ) from None
        if isinstance(node, ast.Name):
            stages.append(StageSpec(node.id))
            continue
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            raise SpecError(f"spec: stage {i} {text!r} is not 'name' or 'name(key=value, ...)'")
        if node.args:
            raise SpecError(
                f"spec: stage {i} {text!r} has positional arguments; write them as key=value"
            )
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise SpecError(f"spec: stage {i} {text!r}: '**' is not supported")
            if kw.arg in kwargs:
                raise SpecError(
                    f"spec: stage {i} {text!r}: expected each keyword once, got {kw.arg!r} twice"
                )
            try:
                kwargs[kw.arg] = ast.literal_eval(kw.value)
            except (ValueError, TypeError):  # TypeError: an unhashable dict key, {[1]: 2}
                raise SpecError(
                    f"spec: stage {i} {text!r}: value of {kw.arg!r} must be a literal "
                    f"(number, string, None, True/False, tuple), got {ast.unparse(kw.value)!r}"
                ) from None
        stages.append(StageSpec(node.func.id, kwargs))
    return stages
