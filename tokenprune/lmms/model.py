"""``--model tokenprune``: one of lmms-eval's own Hugging Face model classes, pruned.

Imported only by lmms-eval (through the ``lmms_eval.models`` entry point, see
`tokenprune.lmms.entry`); it imports lmms-eval.

The base class (``base=llava_hf``, ``internvl_hf`` or ``qwen2_5_vl``) loads the model and
processor from the remaining ``--model_args`` and builds every sample's prompt and inputs
exactly as it does without tokenprune. Each ``generate_until`` runs in three passes:

1. record: the base answers each request alone (batch size 1) while its model's
   ``generate`` only records the call (`tokenprune.lmms.batching`);
2. generate: the recorded calls run in left-padded batches of ``--batch_size`` inside a
   `tokenprune.prune` block, timing each prefill and reading how many visual tokens each
   sample kept (the first batch runs once untimed before, so that compiling the selectors
   is not counted);
3. replay: the base answers each request again and its ``generate`` returns that sample's
   row of the batch, so decoding and post-processing are the base's own.

Per sample, lmms-eval's logged ``token_counts`` carry ``visual_tokens``,
``kept_visual_tokens`` and ``prefill_seconds`` (the sample's share of its batch's
prefill); the run's ``throughput`` summary carries their means (``avg_...``) and the
generate time of the pruned batches.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts, unwrap_generation_output
from lmms_eval.api.model import lmms
from lmms_eval.models import get_model
from lmms_eval.models.model_utils import gen_metrics
from torch import Tensor
from tqdm import tqdm

import tokenprune
from tokenprune.errors import SpecError, TokenpruneError
from tokenprune.lmms import batching
from tokenprune.lmms.options import parse

__all__ = ["PrunedTokenCounts", "TokenPruneChat", "TokenPruneSimple"]


@dataclass
class PrunedTokenCounts(TokenCounts):
    """lmms-eval's per-sample token counts plus what pruning did to the sample."""

    visual_tokens: int | None = None
    kept_visual_tokens: int | None = None
    prefill_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = super().to_dict()
        for key in ("visual_tokens", "kept_visual_tokens", "prefill_seconds"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass
class _Sample:
    """What the generate pass measured for one call."""

    output: Tensor
    visual: int
    kept: int
    prefill_seconds: float
    generate_seconds: float


class _TokenPrune(lmms):
    """Wraps an lmms-eval model class; subclasses fix simple or chat mode."""

    def __init__(self, batch_size: int | str = 1, max_batch_size: Any = None, **model_args: Any) -> None:
        super().__init__()
        self.options = parse(model_args)
        self.batch_size_per_gpu = _batch_size(batch_size)
        base_class = get_model(self.options.base, force_simple=self.is_simple)
        if base_class.is_simple != self.is_simple:
            mode = "simple (--force_simple)" if self.is_simple else "chat"
            raise SpecError(f"base: expected a model with a {mode} class in lmms-eval, got {self.options.base!r} without one")
        # The base answers one request per call; batching is done here (see the module doc).
        self._base = base_class(batch_size=1, **self.options.base_args)
        self.task_dict = self._base.task_dict
        model = self._base.model
        device = model.get_input_embeddings().weight.device
        self._generator = torch.Generator(device=device).manual_seed(self.options.seed)
        self._warm = False
        self._block = tokenprune.prune(
            model,
            self.options.spec,
            keep=self.options.keep,
            layer=self.options.layer,
            generator=self._generator,
            positions=self.options.positions,
        )

    # ------------------------------------------------------------ lmms-eval interface
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        history = len(gen_metrics._THROUGHPUT_METRICS_HISTORY)
        calls = [self._record(request) for request in requests]
        samples = self._generate(calls)
        texts = [self._replay(request, call, sample) for request, call, sample in zip(requests, calls, samples)]
        # the base logged its own (meaningless) timings for the record and replay passes
        del gen_metrics._THROUGHPUT_METRICS_HISTORY[history:]
        self._log_metrics(calls, samples)
        results = []
        for text, call, sample in zip(texts, calls, samples):
            counts = PrunedTokenCounts(
                input_tokens=call.length,
                output_tokens=sample.output.shape[1] - call.length,
                visual_tokens=sample.visual,
                kept_visual_tokens=sample.kept,
                prefill_seconds=sample.prefill_seconds,
            )
            results.append(GenerationResult(text=text, token_counts=counts))
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[Any]:
        """The base's own multi-round loop, each of its ``generate`` calls pruned alone."""
        history = len(gen_metrics._THROUGHPUT_METRICS_HISTORY)
        calls: list[batching.Call] = []
        samples: list[_Sample] = []

        def live(**kwargs: Any) -> Tensor:
            calls.append(batching.split_call(kwargs))
            samples.extend(self._run_batch([calls[-1]]))
            return samples[-1].output

        out = self._call_base(self._base.generate_until_multi_round, requests, live)
        del gen_metrics._THROUGHPUT_METRICS_HISTORY[history:]
        self._log_metrics(calls, samples)
        return out

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise TokenpruneError(
            "request type: expected generate_until or generate_until_multi_round under "
            "--model tokenprune, got loglikelihood (the engine prunes generate(); a forward "
            "with labels is refused, see docs/limitations.md)"
        )

    # ------------------------------------------------------------------ the passes
    def _record(self, request: Instance) -> batching.Call:
        recorded: list[batching.Call] = []

        def record(**kwargs: Any) -> Tensor:
            recorded.append(batching.split_call(kwargs))
            ids = kwargs["input_ids"]
            return torch.cat([ids, ids[:, -1:]], dim=1)

        self._call_base(self._base.generate_until, [_fresh(request)], record, quiet=True)
        if len(recorded) != 1:
            raise TokenpruneError(f"base generate calls: expected 1 per request, got {len(recorded)}")
        return recorded[0]

    def _replay(self, request: Instance, call: batching.Call, sample: _Sample) -> Any:
        def replay(**kwargs: Any) -> Tensor:
            if not torch.equal(kwargs["input_ids"].cpu(), call.inputs["input_ids"].cpu()):
                raise TokenpruneError("replay: expected the recorded prompt again, got another one")
            return sample.output

        (out,) = self._call_base(self._base.generate_until, [_fresh(request)], replay, quiet=True)
        return unwrap_generation_output(out)[0]

    def _generate(self, calls: list[batching.Call]) -> list[_Sample]:
        samples: list[_Sample | None] = [None] * len(calls)
        groups = batching.batches(calls, self.batch_size)
        if groups and not self._warm:
            # compiles the selectors (seconds) outside the timed prefills
            self._run_batch([calls[i] for i in groups[0]])
            self._warm = True
        for group in tqdm(groups, desc="tokenprune", disable=self.rank != 0):
            for i, sample in zip(group, self._run_batch([calls[i] for i in group])):
                samples[i] = sample
        return samples  # type: ignore[return-value]

    def _run_batch(self, calls: list[batching.Call]) -> list[_Sample]:
        model = self._base.model
        inputs = batching.merge(calls)
        options = calls[0].options
        timer = _PrefillTimer(model)
        # in the multi-round loop the base's generate is shadowed (`_call_base`): run the
        # model's own here, guarded by the prune block
        shadow = vars(model).pop("generate", None)
        try:
            with torch.inference_mode(), timer, self._block as run:
                output = model.generate(**inputs, **options)
                timer.stop()
        finally:
            if shadow is not None:
                model.generate = shadow
        rows = batching.split(output, calls, options.get("eos_token_id"))
        visual, kept = _counts(run, len(calls))
        n = len(calls)
        return [
            _Sample(row, v, k, timer.seconds / n, timer.total / n)
            for row, v, k in zip(rows, visual, kept)
        ]

    # ------------------------------------------------------------------ helpers
    def _call_base(self, method: Any, requests: list[Instance], generate: Any, quiet: bool = False) -> Any:
        """``method(requests)`` of the base while its model's ``generate`` is ``generate``.

        Some base classes catch any error of ``generate`` and answer "" instead: an error
        raised there is raised again here once the base returns.
        """
        model = self._base.model
        errors: list[Exception] = []

        def guarded(**kwargs: Any) -> Any:
            try:
                return generate(**kwargs)
            except Exception as error:
                errors.append(error)
                raise

        rank = self._base._rank
        model.generate = guarded  # shadows the class method for the base's calls
        if quiet:
            # the base's per-request progress bar shows on rank 0 only; one bar is shown here
            self._base._rank = -1
        try:
            out = method(requests)
        finally:
            del model.generate
            self._base._rank = rank
        if errors:
            raise errors[0]
        return out

    def _log_metrics(self, calls: list[batching.Call], samples: list[_Sample]) -> None:
        if not samples:
            return
        n = len(samples)
        new = sum(s.output.shape[1] - c.length for c, s in zip(calls, samples))
        seconds = sum(s.generate_seconds for s in samples)
        gen_metrics.log_metrics(
            total_elapsed_time=seconds,
            total_gen_tokens=new,
            avg_speed=new / seconds if seconds > 0 else 0.0,
            additional_metrics={
                "total_requests": n,
                "visual_tokens": sum(s.visual for s in samples) / n,
                "kept_visual_tokens": sum(s.kept for s in samples) / n,
                "prefill_seconds": sum(s.prefill_seconds for s in samples) / n,
            },
        )

    # ------------------------------------------------------ delegated to the base
    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def model(self) -> Any:
        return self._base.model

    @property
    def rank(self) -> int:
        return self._base.rank

    @property
    def world_size(self) -> int:
        return self._base.world_size

    def __getattr__(self, name: str) -> Any:
        # accelerator, device, tokenizer, config, chat_template ...: the base's
        if name.startswith("__") or name == "_base":
            raise AttributeError(name)
        return getattr(self._base, name)

    def clean(self) -> None:
        self._base.clean()


class TokenPruneChat(_TokenPrune):
    """``--model tokenprune`` (lmms-eval's default, chat messages)."""

    is_simple = False


class TokenPruneSimple(_TokenPrune):
    """``--model tokenprune --force_simple`` (text prompt and visuals)."""

    is_simple = True


class _PrefillTimer:
    """Wall time of the model's first forward (the prefill) and of the whole ``with``
    block until `stop`; waits for the GPU at each end."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.seconds = 0.0
        self.total = 0.0
        self._begin = 0.0
        self._start: float | None = None
        self._done = False
        self._handles: list[Any] = []

    def __enter__(self) -> _PrefillTimer:
        self._handles = [
            self.model.register_forward_pre_hook(self._before),
            self.model.register_forward_hook(self._after),
        ]
        _sync()
        self._begin = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def stop(self) -> None:
        _sync()
        self.total = time.perf_counter() - self._begin

    def _before(self, module: Any, args: Any) -> None:
        if self._start is None:
            _sync()
            self._start = time.perf_counter()

    def _after(self, module: Any, args: Any, output: Any) -> None:
        if self._start is not None and not self._done:
            _sync()
            self.seconds = time.perf_counter() - self._start
            self._done = True


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _counts(run: Any, batch: int) -> tuple[list[int], list[int]]:
    """Visual tokens at the first prune point and kept after the last, per sample of a
    batch of ``batch`` (beam search expands each sample to several identical rows)."""
    if not run.records:
        return [0] * batch, [0] * batch
    first = run.records[0].seq_index
    rows = first.shape[0] // batch
    visual = (first[::rows] >= 0).sum(dim=1).tolist()
    kept = [len(sample.kept_seq_index) for sample in run.samples[::rows]]
    return visual, kept


def _fresh(request: Instance) -> Instance:
    """A copy whose argument dicts (generation kwargs) the base may change freely."""
    fresh = copy.copy(request)
    fresh.arguments = tuple(copy.deepcopy(a) if isinstance(a, dict) else a for a in request.arguments)
    return fresh


def _batch_size(value: int | str) -> int:
    text = str(value)
    if not text.isdigit() or int(text) < 1:
        raise SpecError(f"batch_size: expected a whole number >= 1 (auto sizes are not supported), got {value!r}")
    return int(text)

