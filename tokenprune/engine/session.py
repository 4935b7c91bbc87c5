"""`prune`: run pruners inside a VLM's prefill, through forward hooks and a tapped attention
function; leaving the ``with`` block removes every trace.

A schedule has one or more prune points (`tokenprune.engine.schedule`). One prefill:

1. the VLM's forward pre-hook reads the inputs: the candidates (the adapter's
   ``visual_mask`` of ``input_ids``) and their `Layout`, and sizes every stage's budget
   from the ORIGINAL visual-token counts;
2. at ``"input"``: the language model's forward pre-hook captures the cues from its
   ``inputs_embeds``, runs the pruner and hands the language model the shortened
   embeddings, 2D mask and position ids (original, or renumbered with
   ``positions="compact"``): dropped tokens never reach a layer or the KV cache;
3. at a decoder layer: the tapped attention function of the layer before it feeds the
   attention cue sources; the layer's forward pre-hook captures the other cues, runs the
   pruner and shortens the hidden states, rotary embeddings, position ids and causal
   mask; the layers after it get the same shortened inputs until the next point.

In decoding steps every point's layers get a mask rebuilt for their shorter cache and the
position clock continues where the prefill left it (the original one, or the compact one).
The adapter supplies every family fact (`tokenprune.adapters.base.Adapter`); cue sources
are registered (`tokenprune.capture`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers.cache_utils import StaticLayer
from transformers.masking_utils import create_causal_mask

from tokenprune import adapters
from tokenprune.adapters.base import Adapter, Point
from tokenprune.adapters.inputs import input_ids_of
from tokenprune.capture.base import Capture, CueSource
from tokenprune.cues import Cues
from tokenprune.engine.compact import (
    Compaction,
    compaction,
    is_right_padded,
    last_real,
    scatter_candidates,
)
from tokenprune.engine.generate_modes import GenerateGuard
from tokenprune.engine.merge import merge_into_kept
from tokenprune.engine.schedule import POSITIONS, Stage, schedule
from tokenprune.engine.tap import AttentionTap
from tokenprune.engine.window import sliding_window_of, slot_indices, window_mask_function
from tokenprune.errors import CueError, LayoutError, SpecError, TokenpruneError
from tokenprune.layout import Layout
from tokenprune.pruner import Pruner
from tokenprune.registry import get_registry
from tokenprune.selection import Keep, Selection

__all__ = ["PruneBlock", "PruneRun", "PrunedSample", "StageRecord", "prune"]

#: Models currently inside a `prune` block (hooks must not stack).
_ACTIVE: weakref.WeakSet = weakref.WeakSet()


@dataclass(frozen=True)
class PrunedSample:
    """What one prune point of the last prefill kept of one sample.

    Attributes:
        selection: the sample's `Selection` (a batch of one over the batch's padded N).
        layout: the sample's `Layout` of the point's candidates (a batch of one, same N).
        seq_index: ``(N,)`` long, each candidate's index in the sample's ``input_ids``
            row, -1 for padding candidates.
        kept_seq_index: ``(K,)`` long, ``input_ids`` indices of the kept visual tokens,
            ascending.
    """

    selection: Selection
    layout: Layout
    seq_index: Tensor
    kept_seq_index: Tensor

    @property
    def positions(self) -> Tensor:
        """Deprecated name of `seq_index`."""
        return self.seq_index

    @property
    def kept_positions(self) -> Tensor:
        """Deprecated name of `kept_seq_index`."""
        return self.kept_seq_index


@dataclass(frozen=True)
class StageRecord:
    """What one prune point did in the last prefill (batched).

    Attributes:
        point: ``"input"`` or the decoder layer index.
        pruner: the stage's `Pruner`.
        selection: `Selection` over the point's candidates: ``indices (B, K)``,
            ``mask (B, N)``, ``scores (B, N)``.
        layout: `Layout` of the point's candidates (B, N): all visual tokens at the first
            point, the survivors of the earlier points later on.
        seq_index: ``(B, N)`` long, each candidate's ``input_ids`` index, -1 padding.
        kept: ``(B, L')`` long, the ``input_ids`` index of every slot of the sequence the
            layers after the point see (-1 for padding slots); outputs computed after the
            point (logits, hidden states) are laid out along it.
    """

    point: Point
    pruner: Pruner
    selection: Selection
    layout: Layout
    seq_index: Tensor
    kept: Tensor

    @property
    def samples(self) -> list[PrunedSample]:
        """One `PrunedSample` per sample."""
        out = []
        for b in range(self.selection.mask.shape[0]):
            seq_index = self.seq_index[b]
            kept = seq_index[self.selection.mask[b] & (seq_index >= 0)]
            out.append(PrunedSample(self.selection[b], self.layout[b], seq_index, kept))
        return out


@dataclass
class _Prefill:
    """One prefill forward that prunes: the sequence as the next point will see it."""

    inputs: dict[str, Any]
    layout: Layout  # the original candidates
    budgets: list[Tensor]  # per stage, (B,) long
    token_mask: Tensor  # (B, L) bool, False for padding slots
    visual: Tensor  # (B, L) bool, candidate slots
    seq_index: Tensor  # (B, L) long, input_ids index of each slot
    candidate: Tensor  # (B, L) long, original candidate index of each slot, -1 if none
    prompt_length: int  # L of input_ids
    stage: int = 0  # the next stage to run
    capture: Capture | None = None
    substitute: dict[str, Any] | None = None  # decoder-layer kwargs after the last point
    masks: dict[Point, Tensor] = field(default_factory=dict)  # 2D masks of each point
    indices: dict[Point, Tensor] = field(default_factory=dict)  # input_ids index of each point's slots
    shift: Tensor | None = None  # (B,) compact-position offset of decoding


@dataclass
class _Decode:
    """A forward that extends a pruned cache."""

    pruned: _PrunedCache
    new_columns: Tensor  # (B, T) bool, the attention mask of the tokens after the prompt
    substitute: dict[str, Any] | None = None


@dataclass
class _PrunedCache:
    """What decoding needs to know about a cache that a pruned prefill wrote. Stored on
    the cache object itself as ``_CACHE_TAG``, so a ``copy.deepcopy`` of the cache
    (transformers' prompt-reuse pattern) carries it along."""

    points: tuple[Point, ...]
    positions: str
    prompt_length: int  # L, the prompt length as input_ids has it
    masks: dict[Point, Tensor]  # point -> (B, L') bool, the prompt slots its layers hold
    shift: Tensor | None  # (B,) long, tokens dropped at "input" (compact positions)
    indices: dict[Point, Tensor] = field(default_factory=dict)  # point -> (B, L') input_ids index, -1 padding

    @property
    def layer0_length(self) -> int:
        """The prompt length layer 0's cache holds."""
        mask = self.masks.get("input")
        return self.prompt_length if mask is None else mask.shape[1]


#: Attribute of a cache written by a pruned prefill, holding its `_PrunedCache`.
_CACHE_TAG = "_tokenprune_pruned"


class PruneRun:
    """Handle of a `prune` block.

    Attributes:
        model: the pruned VLM.
        stages: the schedule (`tokenprune.engine.schedule.Stage` per point, in order).
        positions: ``"original"`` or ``"compact"``.
        records: the last prefill, one `StageRecord` per point (empty before any, or
            when it had no visual token).
        prefills: number of pruned prefills so far (with ``use_cache=False`` every
            forward of ``generate()`` is one).
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        stages: tuple[Stage, ...],
        positions: str,
        generator: torch.Generator | None,
    ):
        self.model = model
        self.adapter = adapter
        self.stages = stages
        self.positions = positions
        self.generator = generator
        self.records: list[StageRecord] = []
        self.prefills = 0
        self._layers = {s.point: i for i, s in enumerate(stages) if s.point != "input"}
        self._signature = inspect.signature(model.forward)
        self._text_signature = inspect.signature(adapter.text.model.forward)
        self._handles: list[RemovableHandle] = []
        self._tap: AttentionTap | None = None
        self._sources = [_sources_for(stage) for stage in stages]
        self._opened: list[Any] = []
        self._generate = GenerateGuard(model)
        self._window = sliding_window_of(adapter.text.config)
        # Only the thread that entered the block is pruned; each thread has its own step.
        self._owner = threading.get_ident()
        self._local = threading.local()

    @property
    def _step(self) -> _Prefill | _Decode | None:
        return getattr(self._local, "step", None)

    @_step.setter
    def _step(self, step: _Prefill | _Decode | None) -> None:
        self._local.step = step

    # ----------------------------------------------------------- last prefill
    @property
    def pruner(self) -> Pruner:
        """The last stage's `Pruner` (the only one of a one-point block)."""
        return self.stages[-1].pruner

    @property
    def layer(self) -> Point:
        """The last stage's point (the only one of a one-point block)."""
        return self.stages[-1].point

    def _last(self, name: str) -> Any:
        return getattr(self.records[-1], name) if self.records else None

    @property
    def selection(self) -> Selection | None:
        """The last point's batched `Selection` of the last prefill, or None."""
        return self._last("selection")

    @property
    def layout(self) -> Layout | None:
        """The last point's batched candidate `Layout`, or None."""
        return self._last("layout")

    @property
    def seq_index(self) -> Tensor | None:
        """``(B, N)`` long: the last point's candidates' ``input_ids`` indices, or None."""
        return self._last("seq_index")

    @property
    def kept(self) -> Tensor | None:
        """``(B, L')`` long: the ``input_ids`` index of every slot after the last point
        (-1 padding); the prefill's logits are laid out along it. None before any."""
        return self._last("kept")

    @property
    def samples(self) -> list[PrunedSample]:
        """The last point of the last prefill, one `PrunedSample` per sample."""
        return self.records[-1].samples if self.records else []

    @property
    def selections(self) -> list[PrunedSample]:
        """Deprecated name of `samples`."""
        return self.samples

    # ------------------------------------------------------------------ install
    def _open(self) -> None:
        adapter, text = self.adapter, self.adapter.text
        adapter.open()
        self._opened.append(adapter)
        self._generate.open()
        self._opened.append(self._generate)
        for sources in self._sources:
            for source in sources:
                source.open(adapter)
                self._opened.append(source)
        if any(s.uses_attention for sources in self._sources for s in sources):
            self._tap = AttentionTap(
                self.model, text.config, text.config_key, self._on_attention, adapter.attention(0)
            )
            self._tap.open()
        self._handles.append(
            self.model.register_forward_pre_hook(self._on_model_call, with_kwargs=True)
        )
        self._handles.append(
            self.model.register_forward_hook(self._on_model_return, always_call=True)
        )
        if self.stages[0].point == "input":
            self._handles.append(
                text.model.register_forward_pre_hook(self._on_language_model, with_kwargs=True)
            )
        if self._layers:
            for index in range(min(self._layers), text.num_layers):
                hook = (
                    functools.partial(self._on_point, index)
                    if index in self._layers
                    else self._on_later_layer
                )
                self._handles.append(
                    text.layers[index].register_forward_pre_hook(hook, with_kwargs=True)
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
                for opened in reversed(self._opened):
                    opened.close()
                self._opened.clear()
            self._step = None

    # -------------------------------------------------------------------- hooks
    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if threading.get_ident() != self._owner:
            return  # another thread's call runs the model as usual
        inputs = _bind(self._signature, args, kwargs)
        cache = _cache_of(inputs)
        past = cache.get_seq_length() if cache is not None else 0
        self._step = self._prefill(inputs, cache) if past == 0 else self._decode(inputs, cache)

    def _on_model_return(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._step = None

    def _on_attention(self, module: nn.Module, query: Tensor, key: Tensor, scaling: float) -> None:
        step = self._step
        if not isinstance(step, _Prefill) or step.stage >= len(self.stages):
            return
        point = self.stages[step.stage].point
        if point == "input" or module is not self.adapter.attention(point - 1):
            return
        # Without grad: a checkpointed layer must save the same tensors when it is
        # recomputed in backward (where no cue is taken), and a selection has no gradient.
        with torch.no_grad():
            for source in self._sources[step.stage]:
                if source.uses_attention:
                    source.on_attention(step.capture, query, key, scaling)

    def _on_language_model(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        step = self._step
        if isinstance(step, _Prefill) and step.stage < len(self.stages):
            if self.stages[step.stage].point != "input":
                return None
            inputs = _bind(self._text_signature, args, kwargs)
            embeds = inputs.get("inputs_embeds")
            if embeds is None:
                raise TokenpruneError(
                    f"layer: 'input' needs the language model ({type(module).__name__}) to "
                    f"receive inputs_embeds, got input_ids only"
                )
            short, replace = self._prune_input(embeds, inputs, step)
            return (), {**inputs, **replace, "inputs_embeds": short}
        if isinstance(step, _Decode) and "input" in step.pruned.masks:
            inputs = _bind(self._text_signature, args, kwargs)
            return (), {**inputs, **self._decode_input(inputs, step)}
        return None

    def _on_point(self, point: int, layer: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        step = self._step
        if step is None:
            return None
        index = self._layers[point]
        hidden = args[0] if args else kwargs["hidden_states"]
        if isinstance(step, _Prefill):
            if step.stage != index:
                return None
            hidden, step.substitute = self._prune_layer(hidden, kwargs, step)
            args, kwargs = _with_hidden(hidden, args, kwargs)
        else:
            mask2d = torch.cat([step.pruned.masks[point], step.new_columns], dim=1)
            position_ids = kwargs.get("position_ids")
            mask = _causal_mask(
                config=self.adapter.text.config,
                inputs_embeds=hidden,
                attention_mask=mask2d,
                cache=_cache_of(kwargs),
                position_ids=None
                if position_ids is None
                else self.adapter.mask_positions(position_ids),
                layer_idx=point,
                and_mask_function=self._window_mask(
                    step.pruned.indices[point], step.pruned.prompt_length, mask2d.shape[1]
                ),
            )
            step.substitute = {"attention_mask": mask}
        return args, {**kwargs, **step.substitute}

    def _on_later_layer(self, layer: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        step = self._step
        if step is None or step.substitute is None:
            return None
        return args, {**kwargs, **step.substitute}

    # ------------------------------------------------------------------- steps
    def _prefill(self, inputs: dict[str, Any], cache: Any) -> _Prefill | None:
        # Every prefill replaces the last one's record, also when it prunes nothing, and
        # a cache being refilled from empty (e.g. after reset()) is no longer pruned.
        if cache is not None and getattr(cache, _CACHE_TAG, None) is not None:
            delattr(cache, _CACHE_TAG)
        self.records = []
        if inputs.get("input_ids") is None and not _has_images(inputs):
            return None
        input_ids = input_ids_of(inputs)
        visual = self.adapter.visual_mask(input_ids)
        if not bool(visual.any()):
            return None
        _check_prunable(inputs, cache)
        self._check_checkpointing()
        inputs = self.adapter.recover_inputs(inputs)
        layout = self.adapter.layout(**inputs).to(input_ids.device)
        attention_mask = inputs.get("attention_mask")
        token_mask = (
            torch.ones_like(visual) if attention_mask is None else attention_mask.to(torch.bool)
        )
        if token_mask.shape != visual.shape:
            raise LayoutError(
                f"attention_mask: expected a 2D mask of shape {tuple(visual.shape)} like "
                f"input_ids, got {tuple(token_mask.shape)}"
            )
        self._check_window(visual.shape[1])
        visual, layout = _keep_last_token(visual, layout, token_mask)
        candidate = _candidate_of_slot(visual, layout)
        num_valid = layout.num_valid()
        budgets = [stage.pruner.budget(num_valid) for stage in self.stages]
        length = input_ids.shape[1]
        step = _Prefill(
            inputs=inputs,
            layout=layout,
            budgets=budgets,
            token_mask=token_mask,
            visual=visual,
            seq_index=torch.arange(length, device=visual.device).expand_as(visual),
            candidate=candidate,
            prompt_length=length,
        )
        step.capture = self._capture(step)
        return step

    def _check_checkpointing(self) -> None:
        """Refuse to prune at a decoder layer whose gradient checkpointing runs the layer's
        forward hooks inside the checkpoint (transformers 5.17's
        ``GradientCheckpointingLayer.__call__``): backward would recompute the layers from
        the point on after the pruned forward has ended, on unpruned inputs. 5.24
        checkpoints ``forward`` only, so the hooks run once, outside."""
        if not self._layers or not torch.is_grad_enabled():
            return
        text = self.adapter.text
        for index in range(min(self._layers), text.num_layers):
            layer = text.layers[index]
            if (
                getattr(layer, "gradient_checkpointing", False)
                and layer.training
                and type(layer).__call__ is not nn.Module.__call__
            ):
                raise TokenpruneError(
                    f"model: expected gradient checkpointing that recomputes only the decoder "
                    f"layers' forward, got transformers {transformers.__version__}'s, which runs "
                    f"layer {index}'s forward hooks again in backward, after the pruned forward "
                    "has ended, so the layers from the prune point on would be recomputed on "
                    "unpruned inputs; use transformers 5.24 or later, prune at layer='input', "
                    "turn checkpointing off (model.gradient_checkpointing_disable()) or run "
                    "without grad"
                )

    def _check_window(self, length: int) -> None:
        """Refuse a sliding window that cannot be counted over the original sequence: one
        the attention kernel applies by itself (flash attention), or one the language model
        builds over a sequence shortened at ``"input"``."""
        window = self._window
        if window is None or length <= window:
            return
        implementation = self.adapter.text.config._attn_implementation
        if "flash" in implementation or self.stages[0].point == "input":
            where = "layer='input'" if self.stages[0].point == "input" else repr(implementation)
            raise TokenpruneError(
                f"model: a sliding-window language model (sliding_window={window}) with a "
                f"prompt of {length} tokens needs the window counted over the original "
                f"sequence, which {where} cannot do; prune at a decoder layer with "
                "attn_implementation 'sdpa' or 'eager'"
            )

    def _window_mask(self, indices: Tensor, prompt_length: int, total: int) -> Any:
        """The ``and_mask_function`` that keeps a sliding window measured over the
        original sequence in shortened layers (None when there is no window or it cannot
        bite: every key is within it). ``indices (B, L')``: input_ids index of each
        prompt slot; ``total``: slots so far (prompt + generated)."""
        generated = total - indices.shape[1]
        if self._window is None or prompt_length + generated <= self._window:
            return None
        return window_mask_function(slot_indices(indices, prompt_length, total), self._window)

    def _capture(self, step: _Prefill) -> Capture:
        """The `Capture` of the next point, over the current slots."""
        return Capture(
            point=self.stages[step.stage].point,
            adapter=self.adapter,
            inputs=step.inputs,
            token_mask=step.token_mask,
            visual=step.visual,
            # The first point's candidates are the layout's N (a last prompt token that is
            # visual stays in the layout, invalid, see _keep_last_token).
            candidates=_slots_of_candidates(step.visual, step.layout.num_tokens if step.stage == 0 else None),
            seq_index=step.seq_index,
            last=last_real(step.token_mask),
        )

    def _decode(self, inputs: dict[str, Any], cache: Any) -> _Decode | None:
        pruned = getattr(cache, _CACHE_TAG, None)
        if pruned is None:
            return None  # a cache no pruned prefill wrote: the model runs as usual
        points = tuple(s.point for s in self.stages)
        if pruned.points != points or pruned.positions != self.positions:
            raise TokenpruneError(
                f"past_key_values: expected a cache pruned at {list(points)} with positions="
                f"{self.positions!r} (this block's), got one pruned at {list(pruned.points)} "
                f"with positions={pruned.positions!r}"
            )
        for point, mask in pruned.masks.items():
            if point == "input":
                continue
            expected = pruned.layer0_length - mask.shape[1]
            got = cache.get_seq_length() - cache.get_seq_length(point)
            if got != expected:
                raise TokenpruneError(
                    f"past_key_values: expected a pruned cache whose layers {point}.. hold "
                    f"{expected} tokens fewer than layer 0, got {got} fewer: it was cut back to "
                    "one length (crop(), as speculative decoding does), which a pruned cache "
                    "cannot be"
                )
        new_ids = inputs.get("input_ids")
        # A generated token may be a placeholder id; without image inputs to scatter the
        # model embeds it like any token, as it does unpruned.
        if (
            new_ids is not None
            and _has_images(inputs, _VISUAL_INPUTS)
            and bool(self.adapter.visual_mask(new_ids).any())
        ):
            raise TokenpruneError(
                "input_ids: expected no visual tokens in a forward that extends a pruned cache "
                "(the prune selected from the prompt of the first forward; a prompt fed in "
                "pieces, as chunked prefill does, cannot be pruned), got some; send the whole "
                "prompt in one forward"
            )
        attention_mask = inputs.get("attention_mask")
        batch = next(iter(pruned.masks.values())).shape[0]
        device = next(iter(pruned.masks.values())).device
        if attention_mask is None:
            generated = cache.get_seq_length() - pruned.layer0_length
            new = (
                inputs.get("input_ids")
                if inputs.get("input_ids") is not None
                else inputs["inputs_embeds"]
            ).shape[1]
            new_columns = torch.ones(batch, generated + new, dtype=torch.bool, device=device)
        else:
            new_columns = attention_mask[:, pruned.prompt_length :].to(torch.bool)
        return _Decode(pruned, new_columns)

    def _decode_input(self, inputs: dict[str, Any], step: _Decode) -> dict[str, Any]:
        """The language model's mask and position ids in a decoding step after ``"input"``."""
        pruned = step.pruned
        replace: dict[str, Any] = {
            "attention_mask": torch.cat([pruned.masks["input"], step.new_columns], dim=1)
        }
        position_ids = inputs.get("position_ids")
        if position_ids is not None and pruned.shift is not None:
            replace["position_ids"] = position_ids - pruned.shift.view(-1, 1)
        elif position_ids is None and pruned.shift is None:
            # The model would count positions from its (shorter) cache: continue the
            # original clock instead.
            embeds = inputs.get("inputs_embeds")
            cache = _cache_of(inputs)
            new = embeds.shape[1] if embeds is not None else inputs["input_ids"].shape[1]
            past = cache.get_seq_length() if cache is not None else 0
            offset = pruned.prompt_length - pruned.layer0_length
            start = past + offset
            replace["position_ids"] = torch.arange(
                start, start + new, device=step.new_columns.device
            ).unsqueeze(0)
        return replace

    # ------------------------------------------------------------------ pruning
    def _select(self, step: _Prefill, hidden: Tensor) -> tuple[Selection, Compaction, Tensor]:
        """Run the current stage on ``hidden (B, L, H)`` at its point; return the
        selection, the compaction of the current slots and ``hidden`` with the
        selection's merges applied (itself when it merges nothing)."""
        stage = self.stages[step.stage]
        capture = step.capture
        capture.hidden = hidden
        index = capture.candidates
        cues = self._cues(step)
        layout = cues.layout
        selection = stage.pruner.select(cues, step.budgets[step.stage])
        if selection.merge_into is not None:
            hidden = merge_into_kept(hidden, selection.merge_into, selection.merge_weight, index)
        length = step.visual.shape[1]
        keep = step.token_mask & (
            ~step.visual | scatter_candidates(selection.mask, index, length)
        )
        plan = compaction(keep, right_padded=is_right_padded(step.token_mask))
        seq_index = capture.seq_index.gather(1, index.clamp(min=0)).masked_fill(index < 0, -1)
        kept = plan.gather(step.seq_index).masked_fill(~plan.mask, -1)
        self.records.append(StageRecord(stage.point, stage.pruner, selection, layout, seq_index, kept))
        # The sequence the next point sees.
        step.token_mask = plan.mask
        step.visual = plan.gather(step.visual) & plan.mask
        step.seq_index = kept
        step.candidate = plan.gather(step.candidate).masked_fill(~plan.mask, -1)
        step.masks[stage.point] = plan.mask
        step.indices[stage.point] = kept
        step.stage += 1
        if step.stage < len(self.stages):
            step.capture = self._capture(step)
        else:
            self.prefills += 1
        return selection, plan, hidden

    def _cues(self, step: _Prefill) -> Cues:
        """The current stage's `Cues`: its candidates' layout and what its cue sources
        capture at the point (the host-side cue assembly of a prefill)."""
        capture = step.capture
        index = capture.candidates
        original = torch.where(
            index >= 0, step.candidate.gather(1, index.clamp(min=0)), torch.full_like(index, -1)
        )
        layout = step.layout if step.stage == 0 else step.layout.take(original)
        tensors: dict[str, Tensor] = {}
        with torch.no_grad():
            for source in self._sources[step.stage]:
                tensors.update(source.capture(capture))
        builtin = {k: v for k, v in tensors.items() if k in _CUE_FIELDS}
        extra = {k: v for k, v in tensors.items() if k not in _CUE_FIELDS}
        return Cues.trusted(layout, generator=self.generator, extra=extra, **builtin)

    def _prune_input(
        self, embeds: Tensor, inputs: dict[str, Any], step: _Prefill
    ) -> tuple[Tensor, dict[str, Any]]:
        """Shorten the language model's inputs at ``"input"``."""
        adapter = self.adapter
        position_ids = adapter.position_ids(inputs, embeds.shape[1], embeds.device)
        _, plan, embeds = self._select(step, embeds)
        short_positions = plan.positions(position_ids)
        if self.positions == "compact":
            # Decoding continues on the compact clock: generate() counts the original
            # prompt's tokens, so each sample's dropped tokens are subtracted from then on.
            step.shift = inputs_real_tokens(inputs, embeds) - plan.mask.sum(dim=1)
            short_positions = adapter.compact_positions(plan.mask, short_positions)
        replace = {"attention_mask": plan.mask, "position_ids": short_positions}
        replace.update(adapter.shorten_inputs("input", inputs, plan))
        self._tag(inputs, step)
        return plan.gather(embeds), replace

    def _prune_layer(
        self, hidden: Tensor, kwargs: dict, step: _Prefill
    ) -> tuple[Tensor, dict[str, Any]]:
        """Shorten the inputs of the decoder layers from the current point on."""
        adapter = self.adapter
        point = self.stages[step.stage].point
        current = {**kwargs, **(step.substitute or {})}
        position_ids = adapter.position_ids(current, hidden.shape[1], hidden.device)
        _, plan, hidden = self._select(step, hidden)
        short_hidden = plan.gather(hidden)
        short_positions = plan.positions(position_ids)
        substitute: dict[str, Any] = {"position_ids": short_positions}
        rotary = current.get("position_embeddings")
        if rotary is not None:
            substitute["position_embeddings"] = tuple(plan.gather(t, dim=-2) for t in rotary)
        substitute["attention_mask"] = _causal_mask(
            config=adapter.text.config,
            inputs_embeds=short_hidden,
            attention_mask=plan.mask,
            cache=_cache_of(kwargs),
            position_ids=adapter.mask_positions(short_positions),
            layer_idx=point,
            and_mask_function=self._window_mask(step.seq_index, step.prompt_length, plan.mask.shape[1]),
        )
        substitute.update(adapter.shorten_inputs(point, current, plan))
        self._tag(kwargs, step)
        return short_hidden, substitute

    def _tag(self, kwargs: dict, step: _Prefill) -> None:
        cache = _cache_of(kwargs)
        if cache is not None and step.stage == len(self.stages):
            tag = _PrunedCache(
                points=tuple(s.point for s in self.stages),
                positions=self.positions,
                prompt_length=step.prompt_length,
                masks=dict(step.masks),
                shift=step.shift,
                indices=dict(step.indices),
            )
            setattr(cache, _CACHE_TAG, tag)


_CUE_FIELDS = frozenset({"attention", "keys", "hidden", "text_attention", "self_attention"})


def inputs_real_tokens(inputs: dict[str, Any], embeds: Tensor) -> Tensor:
    """``(B,)`` long: real (non-padding) tokens of the language model's prompt."""
    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return torch.full((embeds.shape[0],), embeds.shape[1], device=embeds.device)
    return mask.to(torch.bool).sum(dim=1)


def _sources_for(stage: Stage) -> list[CueSource]:
    """One instance of every registered source that provides a cue the stage's pruner
    requires (each source once)."""
    registry = get_registry()
    classes: list[type] = []
    for name in sorted(stage.pruner.requires):
        if not registry.has("cue", name):
            known = ", ".join(registry.names("cue"))
            raise CueError(
                f"{name}: pruner {stage.pruner.spec!r} needs cue {name!r}, which no cue source "
                f"provides (registered cues: {known}); install the plugin that provides it"
            )
        cls = registry.get("cue", name).cls
        if cls not in classes:
            classes.append(cls)
    return [cls() for cls in classes]


def _bind(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = signature.bind_partial(*args, **kwargs).arguments
    extra = {
        name: bound.pop(name)
        for name, p in signature.parameters.items()
        if p.kind is p.VAR_KEYWORD and name in bound
    }
    for more in extra.values():
        bound.update(more)
    return bound


def _with_hidden(hidden: Tensor, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A decoder layer's call arguments with ``hidden_states`` replaced."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


#: Inputs that carry images (or videos) to scatter into placeholders.
_IMAGE_INPUTS = ("pixel_values", "mm_encoder_outputs")
_VISUAL_INPUTS = (*_IMAGE_INPUTS, "pixel_values_videos")


def _has_images(inputs: dict[str, Any], keys: tuple[str, ...] = _IMAGE_INPUTS) -> bool:
    # generate() passes mm_encoder_outputs={} for a prompt without images.
    return any(
        inputs.get(key) is not None and not (isinstance(inputs[key], dict) and not inputs[key])
        for key in keys
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


#: The installed transformers' name for the KV cache argument: ``cache`` since transformers
#: renamed it (5.24 has it and still accepts ``past_key_values``, deprecated), else
#: ``past_key_values`` (5.17, whose models ignore an unknown ``cache=``).
_CACHE_ARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def _cache_of(kwargs: dict) -> Any:
    """The KV cache among a forward's arguments, under a name the installed transformers
    reads: a ``cache=`` that transformers 5.17 ignores is not the model's cache."""
    cache = kwargs.get(_CACHE_ARG)
    return kwargs.get("past_key_values") if cache is None else cache


def _causal_mask(*, cache: Any, **kwargs: Any) -> Any:
    return create_causal_mask(**kwargs, **{_CACHE_ARG: cache})


def _slots_of_candidates(visual: Tensor, n: int | None = None) -> Tensor:
    """``(B, N)`` long: the slots of the True entries of ``visual (B, L)``, in order, -1
    padding; N = ``n`` or the most in a sample."""
    length = visual.shape[1]
    if n is None:
        n = int(visual.sum(dim=1).max()) if visual.numel() else 0
    order = torch.where(visual, torch.arange(length, device=visual.device), length)
    slots = order.sort(dim=1).values[:, :n]
    return torch.where(slots < length, slots, torch.full_like(slots, -1))


def _keep_last_token(visual: Tensor, layout: Layout, token_mask: Tensor) -> tuple[Tensor, Layout]:
    """A prompt that ends with a visual token (``[bos, t, t, <image> x 576]``) keeps that
    token: the next token's logits come from it. It stops being a candidate (its
    layout entry becomes invalid, like padding) and is kept like a text token.

    Returns ``visual (B, L)`` and the layout, changed only for such rows.
    """
    last = last_real(token_mask)  # (B,)
    ends = visual.gather(1, last.unsqueeze(1)).squeeze(1) & token_mask.any(dim=1)
    if not bool(ends.any()):
        return visual, layout
    rows = torch.arange(visual.shape[0], device=visual.device)
    visual = visual.clone()
    visual[rows[ends], last[ends]] = False
    # Candidates are the visual tokens in order, so the last one is candidate count - 1.
    count = layout.num_valid().to(visual.device)
    valid = layout.valid.clone()
    valid[rows[ends], (count - 1)[ends]] = False
    return visual, dataclasses.replace(layout, valid=valid)


def _candidate_of_slot(visual: Tensor, layout: Layout) -> Tensor:
    """``(B, L)`` long: the candidate index of each visual slot, -1 elsewhere.

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
    rank = visual.long().cumsum(dim=1) - 1
    return torch.where(visual, rank, torch.full_like(rank, -1))


def _check(adapter: Adapter, stages: tuple[Stage, ...], positions: str) -> None:
    """Refuse a schedule this model cannot run, before anything is installed."""
    if positions not in POSITIONS:
        raise SpecError(f"positions: expected one of {', '.join(map(repr, POSITIONS))}, got {positions!r}")
    if positions == "compact" and stages[0].point != "input":
        raise SpecError(
            "positions: 'compact' renumbers the kept tokens before any layer runs, so it needs "
            f"a first prune point layer='input', got {stages[0].point!r} (layers below a decoder "
            "point have already run at the original positions)"
        )
    for stage in stages:
        adapter.check_point(stage.point)
        for source in _sources_for(stage):
            source.check(stage.point, adapter)


def prune(
    model: nn.Module,
    pruner: str | Pruner | None = None,
    keep: Keep | None = None,
    layer: Point | dict = 2,
    generator: torch.Generator | None = None,
    positions: str = "original",
) -> PruneBlock:
    """Prune visual tokens inside ``model``'s prefill for the duration of a ``with`` block.

    ```python
    with tokenprune.prune(model, "adaptprune", keep=0.1, layer=2) as run:
        out = model.generate(**inputs, max_new_tokens=32)
    run.samples[0].kept_seq_index    # input_ids indices of the kept tokens
    ```

    Prune points (``layer``):

    - an int: decoder layers ``0..layer-1`` see every token; from ``layer`` on (and in
      their KV cache) each sample holds its text tokens and the kept visual tokens;
    - ``"input"``: the projected visual embeddings are pruned before decoder layer 0, so
      dropped tokens never reach any layer or the KV cache (the point a serving engine
      can use);
    - a dict ``{point: (pruner, keep), ...}`` (or ``{point: pruner}`` with ``keep=``, or
      ``{point: keep}`` with ``pruner=``): one stage per point, each seeing only the
      survivors of the earlier ones, each ``keep`` a fraction of the sample's ORIGINAL
      visual tokens (``{2: ("fastv", 0.5), 16: ("fastv", 0.25)}``: PyramidDrop-like).

    Kept tokens keep their original position ids (1-D or M-RoPE) unless
    ``positions="compact"`` (``"input"`` only) renumbers them; decoding continues on the
    matching clock. Works with ``generate()`` (greedy, sampling, beams; with or without a
    dynamic cache, including a ``copy.deepcopy`` of a pruned prompt cache), padded batches
    and any attention implementation the language model calls through transformers'
    ``AttentionInterface``. Prompts without visual tokens run untouched. With
    ``use_cache=False`` every forward is a prefill and is pruned.

    The last prompt token always survives (when it is visual it is not a candidate).
    Sliding-window language models keep their window over the original sequence. Only
    the calls of the thread that entered the block are pruned; cues are computed without
    grad, so backward (also with gradient checkpointing) works; transformers 5.17's
    checkpointing runs forward hooks again in backward, so there it works at
    ``layer="input"`` only and a decoder-layer point is refused.

    Args:
        model: a transformers VLM with a registered adapter (``llava``, ``llava_next``,
            ``internvl``, or a plugin's).
        pruner: a recipe name, spec string or `Pruner`.
        keep: kept fraction in (0, 1] of each sample's visual tokens (floored, at least
            1) or a count; overrides a `Pruner`'s own ``keep`` when given.
        layer: the prune point(s), see above.
        generator: random source for random strategies.
        positions: ``"original"`` (default) or ``"compact"``.

    Returns:
        a reusable `PruneBlock`; each ``with`` yields a fresh `PruneRun` holding that
        block's records.

    Raises:
        SpecError: bad ``pruner`` / ``keep`` / ``layer`` / ``positions``, or a
            ``generator`` that is not a ``torch.Generator``.
        CueError: a pruner needs a cue this model / point cannot give.
        UnsupportedModelError: no adapter for the model, or a language model the engine
            cannot hook.
        TokenpruneError: inside the block, a static cache, ``labels``, a cache pruned
            with another schedule or cut back (``crop()``), ``generate()`` with chunked
            prefill or speculative decoding (``prefill_chunk_size``,
            ``prompt_lookup_num_tokens``, ``assistant_model``), visual tokens fed to a
            pruned cache, or (transformers 5.17) a decoder-layer point in a training-mode
            forward with grad and gradient checkpointing on.

    """
    adapter = adapters.adapter_for(model)
    stages = schedule(pruner, keep, layer, adapter.text.num_layers)
    _check(adapter, stages, positions)
    return PruneBlock(model, adapter, stages, positions, generator)


class PruneBlock:
    """The context manager `prune` returns: checked when built, reusable, not nestable
    on one model. Entering installs the hooks and yields a new `PruneRun`; leaving
    removes them, also after an exception."""

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        stages: tuple[Stage, ...],
        positions: str,
        generator: torch.Generator | None,
    ) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise SpecError(
                f"generator: expected a torch.Generator or None, got {type(generator).__name__}"
            )
        self.model, self.adapter, self.stages = model, adapter, stages
        self.positions, self.generator = positions, generator
        self._run: PruneRun | None = None

    @property
    def pruner(self) -> Pruner:
        return self.stages[-1].pruner

    @property
    def layer(self) -> Point:
        return self.stages[-1].point

    def __enter__(self) -> PruneRun:
        if self.model in _ACTIVE:
            raise TokenpruneError(
                f"model: expected a model outside any other tokenprune.prune block, got "
                f"{type(self.model).__name__} already being pruned"
            )
        run = PruneRun(self.model, self.adapter, self.stages, self.positions, self.generator)
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
