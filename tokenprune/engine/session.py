"""`prune`: run a `Pruner` inside a VLM's prefill, through forward hooks and a tapped
attention function; leaving the ``with`` block removes every trace.

One prefill, for a model with decoder layers ``0..L-1`` and pruning layer K:

1. the VLM's forward pre-hook reads the inputs: the visual tokens of ``input_ids`` and
   their `Layout` (from the model's adapter);
2. the tapped attention function of layer K-1 computes the attention cues from the
   post-RoPE queries and keys the layer attends with;
3. layer K's forward pre-hook computes the key / hidden cues, runs the pruner, and
   shortens the hidden states, rotary embeddings, position ids and causal mask to the
   text tokens plus the kept visual tokens; layers K+1.. get the same shortened inputs.

Layers K.. therefore write a shorter KV cache. In decoding steps the layers below K use
the model's own mask and layers K.. a mask rebuilt for their shorter cache; the cache's
``get_seq_length()`` (layer 0) keeps ``generate()``'s positions the original ones.

``generate()`` encodes the images before the prefill and drops ``image_sizes``, which the
LLaVA-NeXT layout needs; `images.ImageInputs` recovers them (the one piece that is not
a hook: an instance attribute shadowing ``get_image_features``, removed on exit).
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers.cache_utils import StaticLayer
from transformers.masking_utils import create_causal_mask

from tokenprune import adapters
from tokenprune._values import is_int
from tokenprune.adapters.inputs import input_ids_of
from tokenprune.cues import ATTENTION_CUES, CUE_NAMES, Cues
from tokenprune.engine.anatomy import TextStack, text_stack
from tokenprune.engine.attention import last_query_attention, mean_query_attention
from tokenprune.engine.compact import Compaction, compaction, scatter_candidates
from tokenprune.engine.images import ImageInputs
from tokenprune.engine.tap import AttentionTap
from tokenprune.errors import CueError, LayoutError, SpecError, TokenpruneError
from tokenprune.layout import Layout
from tokenprune.pruner import Pruner
from tokenprune.pruner import pruner as build_pruner
from tokenprune.selection import Keep, Selection

__all__ = ["PruneBlock", "PruneRun", "PrunedSample", "prune"]

#: Models currently inside a `prune` block (hooks must not stack).
_ACTIVE: weakref.WeakSet = weakref.WeakSet()


@dataclass(frozen=True)
class PrunedSample:
    """What the last prefill kept of one sample.

    Attributes:
        selection: the sample's `Selection` (a batch of one over the batch's padded N).
        layout: the sample's `Layout` (a batch of one, same N).
        positions: ``(N,)`` long, each candidate's index in the sample's ``input_ids``
            row, -1 for padding candidates.
        kept_positions: ``(K,)`` long, ``input_ids`` indices of the kept visual tokens,
            ascending.
    """

    selection: Selection
    layout: Layout
    positions: Tensor
    kept_positions: Tensor


@dataclass
class _Prefill:
    """One prefill forward that prunes."""

    visual: Tensor  # (B, L) bool
    positions: Tensor  # (B, N) long, -1 padding
    layout: Layout
    token_mask: Tensor  # (B, L) bool, False for padding
    cues: dict[str, Tensor] = field(default_factory=dict)
    substitute: dict[str, Any] | None = None


@dataclass
class _Decode:
    """A forward that extends a pruned cache."""

    short_mask: Tensor  # (B, L' + new) bool, the 2D mask of layers K..
    substitute: dict[str, Any] | None = None


@dataclass
class _PrunedCache:
    """What decoding needs to know about a cache that a pruned prefill wrote (its layers
    K.. are shorter than layer 0). Stored on the cache object itself as
    ``_CACHE_TAG``, so a ``copy.deepcopy`` of the cache (transformers' prompt-reuse
    pattern) carries it along."""

    layer: int  # K
    prompt_length: int  # L, the prompt length as layer 0 holds it
    short_mask: Tensor  # (B, L') bool


#: Attribute of a cache written by a pruned prefill, holding its `_PrunedCache`.
_CACHE_TAG = "_tokenprune_pruned"


class PruneRun:
    """Handle of a `prune` block.

    Attributes:
        model: the pruned VLM.
        pruner: the `Pruner` in use.
        layer: K, the first layer that sees only the kept tokens.
        selection: the last prefill's batched `Selection` (``indices (B, K)``,
            ``mask (B, N)``, ``scores (B, N)``), or None when it had no visual token.
        layout: the last prefill's batched `Layout` (B, N), or None.
        positions: ``(B, N)`` long, each candidate's ``input_ids`` index, -1 padding.
        kept: ``(B, L')`` long, the ``input_ids`` index of every slot of the shortened
            sequence that layers K.. see (left-padded, -1 for padding slots); the prefill's
            outputs after layer K (logits, hidden states) are laid out along it.
        prefills: number of pruned prefills so far (with ``use_cache=False`` every
            forward of ``generate()`` is one).
    """

    def __init__(
        self, model: nn.Module, pruner: Pruner, layer: int, generator: torch.Generator | None
    ):
        self.model = model
        self.pruner = pruner
        self.layer = layer
        self.generator = generator
        self.selection: Selection | None = None
        self.layout: Layout | None = None
        self.positions: Tensor | None = None
        self.kept: Tensor | None = None
        self.prefills = 0
        self._stack: TextStack = text_stack(model)
        self._signature = inspect.signature(model.forward)
        self._handles: list[RemovableHandle] = []
        self._tap: AttentionTap | None = None
        self._images = ImageInputs(model)
        self._step: _Prefill | _Decode | None = None

    @property
    def selections(self) -> list[PrunedSample]:
        """The last prefill, one `PrunedSample` per sample (empty before any)."""
        if self.selection is None:
            return []
        out = []
        for b in range(self.selection.indices.shape[0]):
            positions = self.positions[b]
            kept = positions[self.selection.mask[b] & (positions >= 0)]
            out.append(PrunedSample(self.selection[b], self.layout[b], positions, kept))
        return out

    # ------------------------------------------------------------------ install
    def _open(self) -> None:
        stack, k = self._stack, self.layer
        self._images.open()
        if self.pruner.requires & ATTENTION_CUES:
            self._tap = AttentionTap(self.model, stack, self._on_attention)
            self._tap.open()
        self._handles.append(
            self.model.register_forward_pre_hook(self._on_model_call, with_kwargs=True)
        )
        self._handles.append(
            self.model.register_forward_hook(self._on_model_return, always_call=True)
        )
        for index in range(k, stack.num_layers):
            hook = self._on_pruning_layer if index == k else self._on_later_layer
            self._handles.append(
                stack.layers[index].register_forward_pre_hook(hook, with_kwargs=True)
            )

    def _close(self) -> None:
        try:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
        finally:
            try:
                if self._tap is not None:
                    self._tap.close()
            finally:
                self._images.close()
            self._step = None

    # -------------------------------------------------------------------- hooks
    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs = self._bind(args, kwargs)
        cache = inputs.get("cache", inputs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        self._step = self._prefill(inputs, cache) if past == 0 else self._decode(inputs, cache)

    def _on_model_return(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._step = None

    def _on_attention(self, module: nn.Module, query: Tensor, key: Tensor, scaling: float) -> None:
        step = self._step
        if not isinstance(step, _Prefill) or module is not self._stack.attention(self.layer - 1):
            return
        requires = self.pruner.requires
        if "attention" in requires:
            step.cues["attention"] = last_query_attention(query, key, step.token_mask, scaling)
        if requires & {"text_attention", "self_attention"}:
            step.cues.update(_fitprune_cues(query, key, step, scaling))

    def _on_pruning_layer(self, layer: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        step = self._step
        if step is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        if isinstance(step, _Prefill):
            hidden, step.substitute = self._prune(hidden, kwargs, step)
            args, kwargs = _with_hidden(hidden, args, kwargs)
        else:
            mask = create_causal_mask(
                config=self._stack.config,
                inputs_embeds=hidden,
                attention_mask=step.short_mask,
                cache=_cache_of(kwargs),
                position_ids=kwargs.get("position_ids"),
                layer_idx=self.layer,
            )
            step.substitute = {"attention_mask": mask}
        return args, {**kwargs, **step.substitute}

    def _on_later_layer(self, layer: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        step = self._step
        if step is None or step.substitute is None:
            return None
        return args, {**kwargs, **step.substitute}

    # ------------------------------------------------------------------- steps
    def _bind(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        extra = {
            name: bound.pop(name)
            for name, p in self._signature.parameters.items()
            if p.kind is p.VAR_KEYWORD and name in bound
        }
        for more in extra.values():
            bound.update(more)
        return bound

    def _prefill(self, inputs: dict[str, Any], cache: Any) -> _Prefill | None:
        # Every prefill replaces the last one's record, also when it prunes nothing, and
        # a cache being refilled from empty (e.g. after reset()) is no longer pruned.
        if cache is not None and getattr(cache, _CACHE_TAG, None) is not None:
            delattr(cache, _CACHE_TAG)
        self.selection = self.layout = self.positions = self.kept = None
        if inputs.get("input_ids") is None and not _has_images(inputs):
            return None
        input_ids = input_ids_of(inputs)
        visual = adapters.visual_token_mask(self.model, input_ids)
        if not bool(visual.any()):
            return None
        _check_prunable(inputs, cache)
        if inputs.get("image_sizes") is None and inputs.get("mm_encoder_outputs"):
            sizes = self._images.image_sizes(inputs["mm_encoder_outputs"])
            if sizes is not None:
                inputs = {**inputs, "image_sizes": sizes}
        layout = adapters.layout(self.model, **inputs).to(input_ids.device)
        positions = _candidate_positions(visual, layout)
        attention_mask = inputs.get("attention_mask")
        token_mask = (
            torch.ones_like(visual) if attention_mask is None else attention_mask.to(torch.bool)
        )
        if token_mask.shape != visual.shape:
            raise LayoutError(
                f"attention_mask: expected a 2D mask of shape {tuple(visual.shape)} like "
                f"input_ids, got {tuple(token_mask.shape)}"
            )
        return _Prefill(visual, positions, layout, token_mask)

    def _decode(self, inputs: dict[str, Any], cache: Any) -> _Decode | None:
        pruned = getattr(cache, _CACHE_TAG, None)
        if pruned is None:
            return None  # a cache no pruned prefill wrote: the model runs as usual
        if pruned.layer != self.layer:
            raise TokenpruneError(
                f"past_key_values: expected a cache pruned at layer {self.layer} (this block's "
                f"layer), got one pruned at layer {pruned.layer}"
            )
        attention_mask = inputs.get("attention_mask")
        if attention_mask is None:
            new = (
                inputs.get("input_ids")
                if inputs.get("input_ids") is not None
                else inputs["inputs_embeds"]
            ).shape[1]
            total = cache.get_seq_length() + new
            attention_mask = torch.ones(
                pruned.short_mask.shape[0], total, dtype=torch.bool, device=pruned.short_mask.device
            )
        new_columns = attention_mask[:, pruned.prompt_length :].to(torch.bool)
        return _Decode(torch.cat([pruned.short_mask, new_columns], dim=1))

    def _prune(self, hidden: Tensor, kwargs: dict, step: _Prefill) -> tuple[Tensor, dict[str, Any]]:
        """Select the kept tokens from ``hidden (B, L, H)`` entering layer K; return the
        shortened hidden states ``(B, L', H)`` and the other inputs of layers K.."""
        selection = self.pruner(self._cues(hidden, step))
        keep = step.token_mask & (
            ~step.visual | scatter_candidates(selection.mask, step.positions, step.visual.shape[1])
        )
        plan = compaction(keep)
        short_hidden, substitute = _shorten(plan, hidden, kwargs, self._stack.config, self.layer)
        cache = _cache_of(kwargs)
        if cache is not None:
            setattr(cache, _CACHE_TAG, _PrunedCache(self.layer, keep.shape[1], plan.mask))
        self.selection, self.layout, self.positions, self.kept = (
            selection,
            step.layout,
            step.positions,
            plan.source,
        )
        self.prefills += 1
        return short_hidden, substitute

    def _cues(self, hidden: Tensor, step: _Prefill) -> Cues:
        requires = self.pruner.requires
        missing = sorted((requires & ATTENTION_CUES) - step.cues.keys())
        if missing:
            raise CueError(
                f"{missing[0]}: expected layer {self.layer - 1}'s attention to be captured, but "
                f"the language model did not call its attention function through transformers' "
                f"AttentionInterface (attention implementation "
                f"{self._stack.config._attn_implementation!r})"
            )
        cues: dict[str, Tensor] = {}
        index = step.positions.clamp(min=0)
        for name in sorted(requires & ATTENTION_CUES):
            cues[name] = step.cues[name].gather(1, index).masked_fill(step.positions < 0, 0.0)
        if requires & {"keys", "hidden"}:
            candidates = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            if "hidden" in requires:
                cues["hidden"] = candidates
            if "keys" in requires:
                # The raw input, no norm and no RoPE, as the AdaptPrune code does.
                cues["keys"] = self._stack.attention(self.layer).k_proj(candidates)
        return Cues(step.layout, generator=self.generator, **cues)


def _with_hidden(hidden: Tensor, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A decoder layer's call arguments with ``hidden_states`` replaced."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _has_images(inputs: dict[str, Any]) -> bool:
    # generate() passes mm_encoder_outputs={} for a prompt without images.
    return any(
        inputs.get(key) is not None and not (isinstance(inputs[key], dict) and not inputs[key])
        for key in ("pixel_values", "mm_encoder_outputs")
    )


def _check_prunable(inputs: dict[str, Any], cache: Any) -> None:
    """Refuse, before anything runs, the inputs a pruned prefill cannot honour."""
    if any(isinstance(layer, StaticLayer) for layer in getattr(cache, "layers", ())):
        raise TokenpruneError(
            f"past_key_values: expected a dynamic cache (the default), got {type(cache).__name__} "
            "with fixed-size (static) layers, which assume every layer stores every token; "
            "drop cache_implementation='static' inside a tokenprune.prune block"
        )
    if inputs.get("labels") is not None:
        raise TokenpruneError(
            "labels: a pruned forward returns logits for the kept tokens only (laid out along "
            "run.kept), so the model cannot compute a loss against full-length labels; call it "
            "without labels and compare logits with labels.gather(1, run.kept.clamp(min=0)) "
            "where run.kept >= 0"
        )


def _cache_of(kwargs: dict) -> Any:
    return kwargs.get("cache", kwargs.get("past_key_values"))


def _candidate_positions(visual: Tensor, layout: Layout) -> Tensor:
    """``(B, N)`` long: sequence index of each candidate, -1 for padding candidates.

    Candidates are the visual tokens in ``input_ids`` order (the adapters' contract);
    this checks that the layout describes exactly them.
    """
    counts = visual.sum(dim=1)
    valid = layout.num_valid().to(counts.device)
    if layout.batch_size != visual.shape[0] or not torch.equal(counts, valid):
        raise LayoutError(
            f"layout: expected {counts.tolist()} valid candidates per sample (the visual tokens "
            f"of input_ids), got {valid.tolist()} from the adapter"
        )
    n = layout.num_tokens
    length = visual.shape[1]
    order = torch.where(visual, torch.arange(length, device=visual.device), length)
    positions = order.sort(dim=1).values[:, :n]
    return torch.where(positions < length, positions, torch.full_like(positions, -1))


def _fitprune_cues(query: Tensor, key: Tensor, step: _Prefill, scaling: float) -> dict[str, Tensor]:
    """Text-to-token and visual-to-token mean attention, ``(B, L)`` each."""
    text = step.token_mask & ~step.visual
    weights = torch.stack([text, step.visual]).float()
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1)
    text_attention, self_attention = mean_query_attention(
        query, key, step.token_mask, weights, scaling
    )
    return {"text_attention": text_attention, "self_attention": self_attention}


def _shorten(
    plan: Compaction, hidden: Tensor, kwargs: dict, config: Any, layer: int
) -> tuple[Tensor, dict[str, Any]]:
    """The inputs of layers K.. over the kept tokens: hidden states ``(B, L', H)``, and
    the rotary embeddings, position ids and causal mask (rebuilt by the model's own mask
    function) that every layer K.. receives."""
    short_hidden = plan.gather(hidden)
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    short_positions = plan.positions(position_ids)
    substitute: dict[str, Any] = {"position_ids": short_positions}
    rotary = kwargs.get("position_embeddings")
    if rotary is not None:
        substitute["position_embeddings"] = tuple(plan.gather(t) for t in rotary)
    substitute["attention_mask"] = create_causal_mask(
        config=config,
        inputs_embeds=short_hidden,
        attention_mask=plan.mask,
        cache=_cache_of(kwargs),
        position_ids=short_positions,
        layer_idx=layer,
    )
    return short_hidden, substitute


def _resolve(spec: str | Pruner, keep: Keep | None) -> Pruner:
    if isinstance(spec, Pruner):
        return spec if keep is None else spec.with_keep(keep)
    return build_pruner(spec, keep=keep)


def _check(stack: TextStack, pruner: Pruner, k: int) -> None:
    """Refuse a ``layer`` / pruner pair this language model cannot run."""
    requires = pruner.requires
    if not is_int(k) or not 0 <= int(k) < stack.num_layers:
        raise SpecError(
            f"layer: expected an int in [0, {stack.num_layers - 1}] (the first of the "
            f"model's {stack.num_layers} decoder layers to see only the kept tokens), got {k!r}"
        )
    unknown = sorted(requires - set(CUE_NAMES))
    if unknown:
        raise CueError(
            f"{unknown[0]}: pruner {pruner.spec!r} needs cue(s) {unknown} that the engine "
            f"cannot capture; it captures {', '.join(CUE_NAMES)}"
        )
    attention = sorted(requires & ATTENTION_CUES)
    if attention and k == 0:
        raise CueError(
            f"{attention[0]}: pruner {pruner.spec!r} needs attention of the layer before "
            f"the pruning layer, but layer=0 has none; use layer >= 1"
        )
    if "keys" in requires and not isinstance(
        getattr(stack.attention(k), "k_proj", None), nn.Module
    ):
        raise CueError(
            f"keys: pruner {pruner.spec!r} needs the keys of layer {k}, but its attention "
            f"{type(stack.attention(k)).__name__} has no `k_proj` projection"
        )


def prune(
    model: nn.Module,
    pruner: str | Pruner,
    keep: Keep | None = None,
    layer: int = 2,
    generator: torch.Generator | None = None,
) -> PruneBlock:
    """Prune visual tokens inside ``model``'s prefill for the duration of a ``with`` block.

    ```python
    with tokenprune.prune(model, "adaptprune", keep=0.1, layer=2) as run:
        out = model.generate(**inputs, max_new_tokens=32)
    run.selections[0].kept_positions    # input_ids indices of the kept tokens
    ```

    Layers ``0..layer-1`` see every token; from ``layer`` on (and in their KV cache) each
    sample holds its text tokens and the visual tokens the pruner kept, at their original
    rotary positions. Works with ``generate()`` (greedy, sampling, beams; with or without
    a dynamic cache, including a ``copy.deepcopy`` of a pruned prompt cache), left-padded
    batches and any attention implementation the language model calls through
    transformers' ``AttentionInterface``. Prompts without visual tokens run untouched.
    With ``use_cache=False`` every forward is a prefill and is pruned.

    Args:
        model: a transformers VLM with a registered adapter (``llava``, ``llava_next``,
            ``internvl``, or a plugin's).
        pruner: a recipe name, spec string or `Pruner`.
        keep: kept fraction in (0, 1] of each sample's visual tokens (floored, at least
            1) or a count; overrides a `Pruner`'s own ``keep`` when given.
        layer: K, the first decoder layer that sees only the kept tokens.
        generator: random source for random strategies.

    Returns:
        a reusable `PruneBlock`; each ``with`` yields a fresh `PruneRun` holding that
        block's selections.

    Raises:
        SpecError: bad ``pruner`` / ``keep``, ``layer`` out of range, or a ``generator``
            that is not a ``torch.Generator``.
        CueError: the pruner needs a cue this model / layer cannot give.
        UnsupportedModelError: no adapter for the model, or a language model the engine
            cannot hook.
        TokenpruneError: inside the block, a static cache, ``labels``, or a cache pruned
            at another layer.
    """
    return PruneBlock(model, _resolve(pruner, keep), layer, generator)


class PruneBlock:
    """The context manager `prune` returns: checked when built, reusable, not nestable
    on one model. Entering installs the hooks and yields a new `PruneRun`; leaving
    removes them, also after an exception."""

    def __init__(
        self, model: nn.Module, pruner: Pruner, layer: int, generator: torch.Generator | None
    ) -> None:
        adapters.adapter_for(model)
        _check(text_stack(model), pruner, layer)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise SpecError(f"generator: expected a torch.Generator or None, got {generator!r}")
        self.model, self.pruner, self.layer, self.generator = model, pruner, int(layer), generator
        self._run: PruneRun | None = None

    def __enter__(self) -> PruneRun:
        if self.model in _ACTIVE:
            raise TokenpruneError(
                f"model: expected a model outside any other tokenprune.prune block, got "
                f"{type(self.model).__name__} already being pruned"
            )
        run = PruneRun(self.model, self.pruner, self.layer, self.generator)
        _ACTIVE.add(self.model)
        try:
            run._open()
        except BaseException:
            self._leave(run)
            raise
        self._run = run
        return run

    def __exit__(self, *exc_info: object) -> None:
        run, self._run = self._run, None
        if run is not None:
            self._leave(run)

    def _leave(self, run: PruneRun) -> None:
        try:
            run._close()
        finally:
            _ACTIVE.discard(self.model)
